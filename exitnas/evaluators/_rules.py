"""Exit rules: what a trial searches for the exits' thresholds.

``threshold`` searches each threshold itself; ``share`` searches, per exit, the share of the
remaining val images that leave there and maps it to a threshold on val; ``bof`` is the
bag-of-features rule (Passalis et al. 2020), one hyperparameter for every exit.

Bag-of-features: a sample leaves exit k when its confidence exceeds ``β × (mean confidence of exit k on
training images)``. The means come from the subnet's exit cache on training images (the
recalibration subset, never validation or test); ``β`` is the only knob, searched or fit
to a budget on validation.
"""

from __future__ import annotations

import numpy as np

from exitnas._registry import Registry
from exitnas.evaluators._cache import ExitCache
from exitnas.evaluators._policy import ExitPolicy
from exitnas.search_space import ArchConfig

__all__ = ["BOF_BETA_RANGE", "EXIT_RULES", "POLICY_RULES", "SEARCHED_POLICIES", "bof_thresholds", "drop_exits",
           "fit_bof_beta", "leaving_exits", "share_thresholds"]

#: Exit rules by name (``search.exit_rule``): what a trial suggests for the exits' thresholds.
EXIT_RULES: Registry[str] = Registry("exit rule")
EXIT_RULES.register("threshold", "a confidence threshold per exit, each searched (default)")("threshold")
EXIT_RULES.register("bof", "bag-of-features rule: one searched beta; leave when confidence >= "
                           "beta x the exit's mean confidence on training images")("bof")
EXIT_RULES.register("share", "per exit, the searched share of the remaining val images that leave there, "
                             "mapped to a threshold on val; exits no val image leaves at are dropped")("share")
EXIT_RULES.register("temperature", "temperature-calibrated max-softmax (fit on val), a threshold per exit "
                                   "searched")("temperature")
EXIT_RULES.register("patience", "leave when the last k exits agree (PABEE); k searched")("patience")
EXIT_RULES.register("decider", "a logistic decider per exit fit on val; its probability threshold searched")("decider")
EXIT_RULES.register("ensemble", "Zero Time Waste's geometric ensemble of the exits fit on val, a threshold per "
                                "exit on its confidence searched")("ensemble")
EXIT_RULES.register("policy", "the exit policy searched per trial with the arch (threshold, temperature, patience, "
                              "decider or ensemble), and its parameters")("policy")
#: The exit rules that search an exit policy's parameter (the candidate's ``policy`` is the rule's name).
POLICY_RULES = ("temperature", "patience", "decider", "ensemble")
#: The policies the ``policy`` rule chooses among, per trial.
SEARCHED_POLICIES = ("threshold", *POLICY_RULES)
#: The searched range of the bag-of-features rule's beta.
BOF_BETA_RANGE = (0.5, 1.5)


def bof_thresholds(train_cache: ExitCache, beta: float | np.ndarray) -> np.ndarray:
    """Thresholds of the non-final exits: ``β`` × each exit's mean training confidence.

    Capped at 1 (confidences lie in [0, 1]; exitnas's rule is "confidence ≥ threshold", so
    a capped exit still lets out the samples it is certain of).
    """
    means = train_cache.confidence.mean(axis=1)[:-1].astype(np.float64)
    return np.minimum(1.0, np.asarray(beta, dtype=np.float64) * means)


def fit_bof_beta(train_cache: ExitCache, val_cache: ExitCache, budget_macs: float,
                 betas: np.ndarray | None = None) -> float:
    """The smallest ``β`` (earliest exits) whose expected MACs on ``val_cache`` fit ``budget_macs``.

    Expected MACs fall as ``β`` falls, so this is the most accurate setting within the budget
    up to the grid (``betas``, default 0.50…2.00 in steps of 0.005). If none fits, the
    smallest ``β`` of the grid is returned.
    """
    betas = np.arange(0.5, 2.0001, 0.005) if betas is None else np.asarray(betas, dtype=np.float64)
    thr = bof_thresholds(train_cache, betas[:, None])  # B × (exits − 1)
    res = ExitPolicy(val_cache).evaluate(thr)
    fits = np.flatnonzero(res.expected_cost <= budget_macs)
    return float(betas[fits[-1]]) if len(fits) else float(betas[0])


def share_thresholds(val: ExitCache, shares: np.ndarray | list[float]) -> np.ndarray:
    """Thresholds of the non-final exits that let ``shares[k]`` of the val images still in the
    network leave at exit k (the ``share`` rule).

    At exit k the ``m = ⌊share·remaining⌋`` most confident remaining images leave: the threshold
    is the m-th highest remaining confidence (ties may let a few more out). ``m = 0`` gives a
    threshold just above every remaining confidence, capped at 1; with no image left the
    threshold is 1. Every step of a share by 1/remaining changes which images leave, unlike a
    raw threshold, whose whole range below the lowest confidence means "everyone leaves".
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.shape != (val.num_exits - 1,) or not np.all((shares >= 0) & (shares <= 1)):
        raise ValueError(f"need {val.num_exits - 1} shares in [0, 1], got {shares.tolist()}")
    left = np.ones(val.num_samples, dtype=bool)
    out = np.ones(val.num_exits - 1)
    for k, share in enumerate(shares):
        conf = np.sort(val.confidence[k][left])[::-1]
        m = int(np.floor(share * conf.size + 1e-9))  # 1e-9: a share of exactly j/n means j images
        if conf.size == 0:
            continue
        out[k] = float(conf[m - 1]) if m > 0 else min(1.0, float(np.nextafter(conf[0], np.float32(2.0))))
        left &= val.confidence[k] < out[k]
    return out


def leaving_exits(cache: ExitCache, thresholds: np.ndarray | list[float]) -> np.ndarray:
    """K bools: whether at least one of the cache's images leaves at each exit (the final exit
    is always kept: it is the end of the network)."""
    exits = ExitPolicy(cache).exits(thresholds)
    keep = np.bincount(exits, minlength=cache.num_exits) > 0
    keep[-1] = True
    return keep


def drop_exits(arch: ArchConfig, keep: np.ndarray | list[bool]) -> ArchConfig:
    """``arch`` with only the exits where ``keep`` is true (the final one always stays), their
    heads with them: a dropped exit's head is not built, so it costs nothing."""
    keep = list(bool(v) for v in keep)
    if len(keep) != arch.num_exits:
        raise ValueError(f"need {arch.num_exits} keep flags, got {len(keep)}")
    keep[-1] = True
    return arch.replace(exits=tuple(p for p, k in zip(arch.exits, keep) if k),
                        heads=tuple(h for h, k in zip(arch.heads, keep) if k))
