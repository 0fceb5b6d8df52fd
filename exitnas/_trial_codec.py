"""Trial ↔ candidate: the one codec between Optuna's parameters and exitnas's :class:`Candidate`.

:func:`suggest_arch` is the only place ``trial.suggest_*`` is called. Reading a stored trial
back replays the same function on Optuna's :class:`~optuna.trial.FixedTrial` of its parameters
(:func:`decode_trial`), so the search, the report and the export cannot disagree on what a
trial's parameters mean.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import optuna

from exitnas._errors import UserError
from exitnas.evaluators import BOF_BETA_RANGE, EXIT_RULES, POLICY_RULES, SEARCHED_POLICIES
from exitnas.search_space import ArchConfig, Candidate, Measured, SearchSpace

__all__ = ["CANDIDATE_ATTR", "decode_trial", "suggest_arch", "trial_policy", "write_candidate"]

#: The trial user attribute that holds :meth:`Candidate.to_dict`.
CANDIDATE_ATTR = "candidate"


def suggest_arch(trial: optuna.trial.BaseTrial, space: SearchSpace,
                 exit_rule: str = "threshold") -> tuple[ArchConfig, np.ndarray]:
    """An arch and its thresholds from a trial (a live one, or a :class:`FixedTrial` replaying one).

    The Optuna space is static (DESIGN §5): every trial suggests a ratio for every block
    slot and an on/off, head and threshold for every candidate exit, used or not, so
    evolutionary and relative samplers can learn from all of them. With the ``bof`` exit
    rule the trial suggests one ``beta`` instead of the thresholds, and the returned
    array holds ``beta`` once per non-final exit: multiply it by the exits' mean training
    confidences (:func:`~exitnas.evaluators.bof_thresholds`) to get thresholds. With the
    ``share`` rule it suggests a ``share_{s}_{b}`` per candidate exit and returns the shares
    (:func:`~exitnas.evaluators.share_thresholds` maps them to thresholds on val). A policy's
    rule (``evaluators.POLICY_RULES``) suggests only that policy's parameters — the policy is
    the study's choice, so the space stays static within a study: ``temperature`` and
    ``ensemble`` a threshold per exit on calibrated or ensembled confidence (``thr_{s}_{b}``),
    ``patience`` one ``patience`` k, ``decider`` one ``tau``; the returned array holds them as
    :func:`~exitnas.evaluators.fit_searched` reads them. The ``policy`` rule searches the policy
    too: every trial suggests a ``policy`` (:data:`~exitnas.evaluators.SEARCHED_POLICIES`) and
    every policy's parameters (``thr_{s}_{b}``, ``patience``, ``tau``: a static space), and the
    returned array holds the chosen policy's (:func:`trial_policy` names it).
    """
    EXIT_RULES.get(exit_rule)
    depths = [trial.suggest_categorical(f"depth_{s}", list(space.depth_choices)) for s in range(space.num_stages)]
    widths = [trial.suggest_categorical(f"width_{s}", list(space.width_choices)) for s in range(space.num_stages)]
    ratios, on, heads, thr = {}, {}, {}, {}
    for s, b in space.candidate_exits():
        ratios[s, b] = trial.suggest_categorical(f"ratio_{s}_{b}", list(space.ratio_choices))
        on[s, b] = trial.suggest_categorical(f"exit_{s}_{b}", [0, 1])
        heads[s, b] = trial.suggest_categorical(f"head_{s}_{b}", list(space.head_choices))
        if exit_rule in ("threshold", "share", "temperature", "ensemble", "policy"):
            name = "share" if exit_rule == "share" else "thr"
            thr[s, b] = trial.suggest_float(f"{name}_{s}_{b}", 0.0, 1.0)
    one = exit_rule
    if exit_rule == "policy":
        one = trial.suggest_categorical("policy", list(SEARCHED_POLICIES))
        values = {rule: _ONE_PARAMETER[rule](trial, space) for rule in ("patience", "decider")}
        if one in values:
            thr = {p: values[one] for p in space.candidate_exits()}
    elif exit_rule in _ONE_PARAMETER:
        thr = {p: _ONE_PARAMETER[exit_rule](trial, space) for p in space.candidate_exits()}
    blocks = [(s, b) for s in range(space.num_stages) for b in range(depths[s])]
    exits = [p for p in blocks[:-1] if on[p]] + [blocks[-1]]
    arch = ArchConfig(space.name, tuple(depths), tuple(float(w) for w in widths),
                      tuple(tuple(float(ratios[s, b]) for b in range(depths[s])) for s in range(space.num_stages)),
                      tuple(exits), tuple(heads[p] for p in exits))
    return space.validate(arch), np.array([thr[p] for p in exits[:-1]], dtype=np.float64)


def trial_policy(params: dict[str, Any], exit_rule: str) -> str:
    """The exit policy a trial's candidate runs: the study's rule's, or under the ``policy``
    rule the trial's own ``policy`` parameter."""
    if exit_rule == "policy":
        return str(params["policy"])
    return exit_rule if exit_rule in POLICY_RULES else "threshold"


#: Rules that search one parameter for all exits: its suggestion.
_ONE_PARAMETER: dict[str, Callable[[optuna.trial.BaseTrial, SearchSpace], float]] = {
    "bof": lambda trial, space: trial.suggest_float("beta", *BOF_BETA_RANGE),
    "patience": lambda trial, space: trial.suggest_int("patience", 2, len(space.candidate_exits()) + 1),
    "decider": lambda trial, space: trial.suggest_float("tau", 0.0, 1.0),
}


def write_candidate(trial: optuna.Trial, candidate: Candidate) -> None:
    """Store ``candidate`` on its trial; ``arch`` and ``thresholds`` also on their own for the dashboard."""
    trial.set_user_attr(CANDIDATE_ATTR, candidate.to_dict())
    trial.set_user_attr("arch", candidate.arch.to_dict())
    trial.set_user_attr("thresholds", list(candidate.thresholds))


def decode_trial(number: int, params: dict[str, Any], user_attrs: dict[str, Any], space: SearchSpace, *,
                 exit_rule: str = "threshold", confidence: str = "maxprob",
                 measured: Measured | None = None) -> Candidate:
    """The candidate a stored trial evaluated, its arch replayed from its parameters.

    Thresholds come from the same replay under the ``threshold`` rule (exact, as sampled); every
    other rule's depend on a cache, so they are read from the stored candidate (with a policy's
    fitted state, ``params``),
    and so is the ``share`` rule's arch (the replayed one less the exits no val image left at).
    A stored arch that is not the replayed one (or, under ``share``, the replayed one less some
    exits) means the study was searched on another space (or edited): :class:`UserError`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a value outside today's choices is caught by validate
        try:
            arch, thr = suggest_arch(optuna.trial.FixedTrial(params), space, exit_rule)
        except (ValueError, KeyError) as e:
            raise UserError(f"trial {number} cannot be read as an arch of this search space ({e})") from None
    stored = user_attrs.get(CANDIDATE_ATTR) or {}
    if "arch" in user_attrs:
        given = ArchConfig.from_dict(user_attrs["arch"])
        if given != arch and not (exit_rule == "share" and _drops_exits_of(given, arch)):
            raise UserError(f"trial {number} stores an arch that its parameters do not give; "
                            "was the study searched on another search space?")
        arch = given
    if exit_rule != "threshold":
        thr = np.asarray(stored.get("thresholds", user_attrs.get("thresholds", [])), dtype=np.float64)
    confidence = str(stored.get("confidence", confidence))
    policy = trial_policy(params, exit_rule)
    return Candidate(arch, tuple(float(t) for t in thr), confidence, exit_rule, measured, policy,
                     dict(stored.get("params") or {}))


def _drops_exits_of(pruned: ArchConfig, arch: ArchConfig) -> bool:
    """Whether ``pruned`` is ``arch`` with some non-final exits (and their heads) left out."""
    kept = dict(zip(arch.exits, arch.heads))
    return (pruned.replace(exits=arch.exits, heads=arch.heads) == arch and pruned.exits[-1:] == arch.exits[-1:]
            and all(kept.get(p) == h for p, h in zip(pruned.exits, pruned.heads))
            and list(pruned.exits) == sorted(pruned.exits))
