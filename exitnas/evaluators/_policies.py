"""Exit policies beside one confidence threshold per exit, fit on val and applied to test.

Every policy here maps an exit cache to a *score* per non-final exit and image in [0, 1] and
leaves at the first exit whose score reaches that exit's threshold, so the threshold arithmetic
(:class:`~exitnas.evaluators.ExitPolicy`: accuracy, expected cost, histogram, per-image extra
MACs) serves them all. A policy differs in its score and in the threshold vectors ("settings")
it offers; every setting is fit on val only. A budgeted curve then picks, per budget, the
setting most accurate on val within the budget (on val) and reports it on test.

Policies (``POLICIES``): ``threshold`` (max-softmax or entropy confidence, as the cache has it),
``temperature`` (Guo et al. 2017), ``patience`` (PABEE, Zhou et al. 2020) and ``decider`` (a
learned per-exit decider, in the spirit of learned exit policies such as Scardapane et al. 2020
and EPNet, Dai et al. 2020) and ``ensemble`` (Zero Time Waste's geometric ensemble of the exits,
Wołczyk et al. 2021, fit on val: the one policy that also changes what an exit answers). They
need each exit's logits (:attr:`ExitCache.logits`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitnas._confidence import confidence
from exitnas._registry import Registry
from exitnas.evaluators._cache import ExitCache
from exitnas.evaluators._policy import ExitPolicy, PolicyResult
from exitnas.evaluators._protocols import DEFAULT_P_SWEEP, CurvePoint, fit_budgeted_thresholds
from exitnas.search_space import Candidate, GeometricEnsemble, fit_ensemble

__all__ = ["CURVE_BUDGETS", "POLICIES", "FittedPolicy", "Policy", "agreement_runs", "candidate_result", "decide",
           "decision_macs", "exit_features", "fit_policy", "fit_searched", "leave_targets", "policy_curve", "softmax"]

#: Global thresholds (one value for every exit) a score policy offers besides the budgeted-batch
#: fits: these val quantiles of its scores.
GLOBAL_QUANTILES = np.linspace(0.0, 1.0, 41)


def softmax(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``logits / temperature`` (float64)."""
    z = logits.astype(np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _logits(cache: ExitCache) -> np.ndarray:
    if cache.logits is None:
        raise ValueError("this exit cache has no logits (built by an older exitnas): rebuild it")
    return cache.logits


def agreement_runs(cache: ExitCache) -> np.ndarray:
    """K×N: how many exits in a row, ending at exit k, predict the same class as exit k."""
    pred = _logits(cache).argmax(axis=-1)
    run = np.ones(pred.shape, dtype=np.int64)
    for k in range(1, len(pred)):
        run[k] = np.where(pred[k] == pred[k - 1], run[k - 1] + 1, 1)
    return run


# -- policies ---------------------------------------------------------------------------------
class Policy(ABC):
    """A score per non-final exit and image, and the threshold vectors it offers, fit on val."""

    #: Extra MACs per exit of the decision beyond the threshold rule's softmax (an estimate, at
    #: most this at any exit of a net of ``num_exits``): the policy's own cost.
    def decision_macs(self, num_classes: int, num_exits: int = 1) -> int:
        return 0

    def answers(self, cache: ExitCache) -> ExitCache:
        """``cache`` as the policy answers it: the same by default; a policy that changes what an
        exit predicts (``ensemble``) returns its own logits, confidences and correctness."""
        return cache

    def val_answers(self, val: ExitCache) -> ExitCache:
        """:meth:`answers` on the val cache the policy was fit on (out-of-fold where it learns)."""
        return self.answers(val)

    def fit(self, val: ExitCache, out_of_fold: bool = True) -> None:
        """Fit whatever the score needs on ``val`` (nothing by default); a learning policy also
        keeps out-of-fold val scores for its settings unless ``out_of_fold`` is false (a search
        trial, whose threshold is searched, needs only the fit)."""

    def state(self) -> dict[str, Any]:
        """What :meth:`fit` learnt, JSON-able (a candidate's ``params`` keep it)."""
        return {}

    def load(self, state: dict[str, Any]) -> Policy:
        """Take back :meth:`state`'s output instead of fitting; returns ``self``."""
        return self

    def searched(self, values: np.ndarray, num_exits: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The thresholds (K-1) and parameters of what a trial searched (``search.exit_rule`` set
        to this policy): by default one threshold per non-final exit, searched as they are."""
        return np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0), {}

    @abstractmethod
    def scores(self, cache: ExitCache) -> np.ndarray:
        """(K-1)×N scores in [0, 1] of the non-final exits; higher = leave sooner."""

    def val_scores(self, val: ExitCache) -> np.ndarray:
        """The scores on the val cache the policy was fit on (out-of-fold where it learns)."""
        return self.scores(val)

    def settings(self, val: ExitCache, val_scores: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
        """S×(K-1) thresholds fit on val and each one's parameters: by default Huang et al.'s
        budgeted-batch fits (one per p) and one global threshold at each of the scores' val quantiles."""
        scored = _with_scores(self.val_answers(val), val_scores)
        bb = np.stack([fit_budgeted_thresholds(scored, p) for p in DEFAULT_P_SWEEP])
        glob = np.quantile(val_scores, GLOBAL_QUANTILES) if val_scores.size else np.ones(1)
        glob[0] = 0.0  # every image leaves at exit 0, whatever scores the policy gives later
        thr = np.concatenate([bb, np.repeat(glob[:, None], val.num_exits - 1, axis=1)])
        params = [{"p": float(p)} for p in DEFAULT_P_SWEEP] + [{"tau": float(t)} for t in glob]
        return np.clip(thr, 0.0, 1.0), params


POLICIES: Registry[type[Policy]] = Registry("exit policy")


@POLICIES.register("threshold", "one confidence threshold per exit (MSDNet; the cache's max-softmax or entropy)")
class ThresholdPolicy(Policy):
    """Leave at the first exit whose confidence reaches its threshold (Huang et al. 2018, MSDNet)."""

    def scores(self, cache: ExitCache) -> np.ndarray:
        return cache.confidence[:-1].astype(np.float64)


@POLICIES.register("temperature", "per-exit temperature scaling fit on val (Guo et al. 2017), then thresholds")
class TemperaturePolicy(Policy):
    """Per-exit temperature calibration, then thresholds on the calibrated max-softmax.

    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017: one
    scalar ``T_k`` per exit minimising the val negative log-likelihood of ``softmax(z / T_k)``.
    Calibrated confidences are comparable across exits, which is what one global threshold needs.
    """

    #: The temperatures searched (log-spaced): a 1-D convex-ish NLL, a fine grid is exact enough.
    GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))

    def __init__(self) -> None:
        self.temperatures: np.ndarray | None = None

    def decision_macs(self, num_classes: int, num_exits: int = 1) -> int:
        return num_classes  # one multiply per logit

    def fit(self, val: ExitCache, out_of_fold: bool = True) -> None:
        if val.labels is None:
            raise ValueError("temperature calibration needs the cache's labels: rebuild the cache")
        z = _logits(val)
        temps = []
        for k in range(val.num_exits):
            nll = [_nll(z[k], val.labels, t) for t in self.GRID]
            temps.append(float(self.GRID[int(np.argmin(nll))]))
        self.temperatures = np.array(temps)

    def state(self) -> dict[str, Any]:
        return {"temperatures": [] if self.temperatures is None else self.temperatures.tolist()}

    def load(self, state: dict[str, Any]) -> Policy:
        self.temperatures = np.asarray(state["temperatures"], dtype=np.float64)
        return self

    def scores(self, cache: ExitCache) -> np.ndarray:
        if self.temperatures is None:
            raise ValueError("fit the temperature policy on val first")
        z = _logits(cache)[:-1]
        return softmax(z, self.temperatures[:-1, None, None]).max(axis=-1)


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits.astype(np.float64) / t
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float((lse - z[np.arange(len(labels)), labels]).mean())


@POLICIES.register("patience", "leave when the last k exits agree on the class (PABEE, Zhou et al. 2020)")
class PatiencePolicy(Policy):
    """Patience-based early exit: leave at the first exit where the last ``k`` exits (itself
    included) predict the same class; if none, at the final exit.

    Zhou, Xu, Ge, McAuley, Xu, Wei, "BERT Loses Patience: Fast and Robust Inference with Early
    Exit", NeurIPS 2020 (PABEE; their patience t is ``k - 1`` here). ``k`` is the one parameter:
    the settings are k = 2 … K.
    """

    def decision_macs(self, num_classes: int, num_exits: int = 1) -> int:
        return 0  # an argmax the threshold rule's max already gives, and one comparison

    def scores(self, cache: ExitCache) -> np.ndarray:
        return agreement_runs(cache)[:-1] / cache.num_exits

    def settings(self, val: ExitCache, val_scores: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
        ks = range(2, val.num_exits + 1)
        return np.stack([self.thresholds(k, val.num_exits) for k in ks]), [{"k": float(k)} for k in ks]

    def searched(self, values: np.ndarray, num_exits: int) -> tuple[np.ndarray, dict[str, Any]]:
        """A searched patience (``values`` holds it once per non-final exit), capped at K."""
        if num_exits < 2:  # one exit: nothing to decide
            return np.empty(0), {}
        k = int(min(int(round(float(values[0]))), num_exits))
        return self.thresholds(k, num_exits), {"k": k}

    @staticmethod
    def thresholds(k: int, num_exits: int) -> np.ndarray:
        """The threshold vector of patience ``k`` on the scores ``run / K`` (run/K ≥ (k - 0.5)/K
        ⇔ run ≥ k, safe from rounding)."""
        return np.full(num_exits - 1, (k - 0.5) / num_exits)


def exit_features(cache: ExitCache) -> np.ndarray:
    """K×N×F features each exit already has when it decides, from its own and earlier exits' outputs.

    Per exit k: max probability, top-2 margin, ``1 - H/log C``, agreement with exit k-1's class,
    the agreement run length / K, exit k-1's max probability, the highest max probability of
    exits < k, the mean max probability of exits ≤ k, and exit k's probability of exit k-1's class
    (features of earlier exits are 0 at exit 0).
    """
    p = softmax(_logits(cache))
    top2 = np.sort(p, axis=-1)[..., -2:]
    maxp, margin = top2[..., 1], top2[..., 1] - top2[..., 0]
    ent = 1.0 - (-(p * np.log(np.clip(p, 1e-12, None))).sum(-1)) / np.log(p.shape[-1])
    pred = p.argmax(-1)
    prev_pred = np.concatenate([pred[:1], pred[:-1]])
    agree = np.zeros_like(maxp)
    agree[1:] = pred[1:] == pred[:-1]
    prev_max = np.zeros_like(maxp)
    prev_max[1:] = maxp[:-1]
    best_before = np.zeros_like(maxp)
    best_before[1:] = np.maximum.accumulate(maxp, axis=0)[:-1]
    mean_so_far = np.cumsum(maxp, axis=0) / np.arange(1, len(maxp) + 1)[:, None]
    p_prev_class = np.take_along_axis(p, prev_pred[..., None], axis=-1)[..., 0]
    p_prev_class[0] = maxp[0]
    runs = agreement_runs(cache) / cache.num_exits
    return np.stack([maxp, margin, ent, agree, runs, prev_max, best_before, mean_so_far, p_prev_class], axis=-1)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 25) -> np.ndarray:
    """Weights (standardisation folded in: mean, std, then w with the bias last) of an
    L2-regularised logistic regression, by Newton's method."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.zeros(xs.shape[1])
    reg = np.full(xs.shape[1], l2 * len(x))
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(iters):
        q = 1.0 / (1.0 + np.exp(-xs @ w))
        grad = xs.T @ (q - y) + reg * w
        hess = (xs * (q * (1 - q))[:, None]).T @ xs + np.diag(reg + 1e-9)
        w = w - np.linalg.solve(hess, grad)
    return np.concatenate([mu, sd, w])


def _predict_logistic(model: np.ndarray, x: np.ndarray) -> np.ndarray:
    f = x.shape[-1]
    mu, sd, w = model[:f], model[f : 2 * f], model[2 * f :]
    return 1.0 / (1.0 + np.exp(-(((x - mu) / sd) @ w[:-1] + w[-1])))


def leave_targets(cache: ExitCache) -> np.ndarray:
    """(K-1)×N: whether leaving at exit k loses nothing (exit k is right, or no later exit is)."""
    ok = cache.correct
    later = np.flip(np.logical_or.accumulate(np.flip(ok, 0), axis=0), 0)  # some exit ≥ k is right
    return ok[:-1] | ~later[1:]


@POLICIES.register("decider", "a logistic decider per exit on the features it has there, trained on val "
                              "to predict that leaving loses nothing")
class DeciderPolicy(Policy):
    """A learned decider per exit: logistic regression on :func:`exit_features`, trained on val
    to predict "this exit is right, or no later exit is" (leaving loses nothing), its
    probability thresholded (one global cost threshold τ swept, and budgeted-batch fits).

    Learned exit deciders: Scardapane, Comminiello, Scarpiniti, Baccarelli, Uncini, "Differentiable
    Branching in Deep Networks for Fast Inference", ICASSP 2020; Dai, Wu, Peng, "EPNet: Learning
    to Exit with Flexible Multi-Branch Network", CIKM 2020. Here it is trained after the network,
    on val only; the val scores the settings are fit on are out-of-fold (two folds), so choosing
    a setting on val is not choosing on the decider's own training images.
    """

    FOLDS = 2

    def __init__(self) -> None:
        self.models: list[np.ndarray] | None = None
        self._oof: np.ndarray | None = None

    def decision_macs(self, num_classes: int, num_exits: int = 1) -> int:
        f = 9  # exit_features
        # entropy (p·log p per class, and the log), standardise and dot product, the bias
        return 2 * num_classes + 3 * f + 1

    def fit(self, val: ExitCache, out_of_fold: bool = True) -> None:
        x, y = exit_features(val)[:-1], leave_targets(val).astype(np.float64)
        self.models = [_fit_logistic(x[k], y[k]) for k in range(len(x))]
        if not out_of_fold:
            return
        fold = np.random.default_rng(0).permutation(val.num_samples) % self.FOLDS
        oof = np.empty(y.shape)
        for f in range(self.FOLDS):
            tr, te = fold != f, fold == f
            for k in range(len(x)):
                oof[k, te] = _predict_logistic(_fit_logistic(x[k, tr], y[k, tr]), x[k, te])
        self._oof = oof

    def state(self) -> dict[str, Any]:
        return {"models": [m.tolist() for m in self.models or []]}

    def searched(self, values: np.ndarray, num_exits: int) -> tuple[np.ndarray, dict[str, Any]]:
        """A searched cost threshold τ on the decider's probability, the same at every exit."""
        if num_exits < 2:  # one exit: nothing to decide
            return np.empty(0), {}
        tau = float(np.clip(values[0], 0.0, 1.0))
        return np.full(num_exits - 1, tau), {"tau": tau}

    def load(self, state: dict[str, Any]) -> Policy:
        self.models = [np.asarray(m, dtype=np.float64) for m in state["models"]]
        return self

    def scores(self, cache: ExitCache) -> np.ndarray:
        if self.models is None:
            raise ValueError("fit the decider policy on val first")
        x = exit_features(cache)
        out = np.empty((cache.num_exits - 1, cache.num_samples))  # (K-1)×N, also 0×N for one exit
        for k, m in enumerate(self.models):
            out[k] = _predict_logistic(m, x[k])
        return out

    def val_scores(self, val: ExitCache) -> np.ndarray:
        return self._oof if self._oof is not None else self.scores(val)


@POLICIES.register("ensemble", "Zero Time Waste's geometric ensemble of each exit with the earlier ones, fit on "
                               "val, then thresholds on its confidence (it changes what an exit answers)")
class EnsemblePolicy(Policy):
    """Each exit answers with a weighted product of its own and the earlier exits' probabilities,
    fit on val; then one confidence threshold per exit on that answer.

    Wołczyk, Wójcik, Bałazy, Podolak, Tabor, Śmieja, Trzciński, "Zero Time Waste: Recycling
    Predictions in Early Exit Neural Networks", NeurIPS 2021: exit k's logits become
    ``b_k + Σ_{i≤k} w_ki · log p_i`` (``search_space.GeometricEnsemble``, weights ≥ 0). ZTW fits
    the ensemble on training images; here it is fit on val, after the network, so it also
    recalibrates each exit (its temperature and class biases) to images the net did not train
    on. Unlike the other policies it changes an exit's prediction as well as when an image
    leaves, so it can pass the budgeted oracle of the exits' own answers. The val answers the
    settings are fit on are out-of-fold (two folds), as the decider's scores are.
    """

    FOLDS = 2

    def __init__(self) -> None:
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self._oof: ExitCache | None = None
        self._last: tuple[ExitCache, ExitCache] | None = None  # the last cache answered, and its answers

    def decision_macs(self, num_classes: int, num_exits: int = 1) -> int:
        # The log-softmax (an exp and a log per class) and one multiply-add per class per exit so far.
        return (num_exits + 2) * num_classes

    def fit(self, val: ExitCache, out_of_fold: bool = True) -> None:
        if val.labels is None:
            raise ValueError("the ensemble is fit on the cache's labels: rebuild the cache")
        self.weight, self.bias = _fit_geometric(_logits(val), val.labels)
        self._last = None
        if not out_of_fold:
            return
        fold = np.random.default_rng(0).permutation(val.num_samples) % self.FOLDS
        z = np.empty(_logits(val).shape, dtype=np.float32)
        for f in range(self.FOLDS):
            w, b = _fit_geometric(_logits(val)[:, fold != f], val.labels[fold != f])
            z[:, fold == f] = _geometric(w, b, _logits(val)[:, fold == f])
        self._oof = _answered(val, z)

    def state(self) -> dict[str, Any]:
        if self.weight is None or self.bias is None:
            return {}
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist()}

    def load(self, state: dict[str, Any]) -> Policy:
        self.weight = np.asarray(state["weight"], dtype=np.float64)
        self.bias = np.asarray(state["bias"], dtype=np.float64)
        self._last = None
        return self

    def answers(self, cache: ExitCache) -> ExitCache:
        if self.weight is None or self.bias is None:
            raise ValueError("fit the ensemble policy on val first")
        # Scoring a cache asks for its answers and its scores: the ensemble is worked out once.
        if self._last is None or self._last[0] is not cache:
            self._last = (cache, _answered(cache, _geometric(self.weight, self.bias, _logits(cache))))
        return self._last[1]

    def val_answers(self, val: ExitCache) -> ExitCache:
        return self._oof if self._oof is not None else self.answers(val)

    def scores(self, cache: ExitCache) -> np.ndarray:
        return self.answers(cache).confidence[:-1].astype(np.float64)

    def val_scores(self, val: ExitCache) -> np.ndarray:
        return self.val_answers(val).confidence[:-1].astype(np.float64)


def _fit_geometric(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The geometric ensemble's K×K weights and K×C biases fit to ``logits`` (K×N×C) on ``labels``."""
    ens = GeometricEnsemble(logits.shape[0], logits.shape[-1])
    fit_ensemble(ens, [torch.from_numpy(z.astype(np.float32)) for z in logits], torch.from_numpy(labels).long())
    return ens.weight.detach().double().numpy(), ens.bias.detach().double().numpy()


def _geometric(weight: np.ndarray, bias: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """K×N×C ensemble logits: exit k's ``bias_k + Σ_{i≤k} weight_ki · log_softmax(logits_i)`` (float32)."""
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    out = np.einsum("ki,inc->knc", np.tril(weight), logp) + bias[:, None, :]
    return out.astype(np.float32)


def _answered(cache: ExitCache, logits: np.ndarray) -> ExitCache:
    """``cache`` with every exit answering ``logits`` (K×N×C): its confidences and correctness too."""
    conf = np.stack([confidence(torch.from_numpy(z), cache.kind).numpy() for z in logits]).astype(np.float32)
    correct = logits.argmax(-1) == np.asarray(cache.labels)[None, :]
    return dataclasses.replace(cache, logits=logits.astype(np.float16), confidence=conf, correct=correct)


# -- fitting and measuring --------------------------------------------------------------------
def decision_macs(policy: Policy, cache: ExitCache) -> np.ndarray:
    """K cumulative MACs of the policy's own decisions up to each exit: one per exit passed
    (the final exit decides nothing)."""
    per = policy.decision_macs(_logits(cache).shape[-1], cache.num_exits) if cache.num_exits > 1 else 0
    return per * np.minimum(np.arange(1, cache.num_exits + 1), cache.num_exits - 1).astype(np.float64)


def _with_scores(cache: ExitCache, scores: np.ndarray, policy: Policy | None = None) -> ExitCache:
    """``cache`` whose non-final confidences are ``scores`` (the final row only pads) and whose
    MACs include ``policy``'s decisions (:func:`decision_macs`)."""
    conf = np.concatenate([scores, np.ones((1, cache.num_samples))]).astype(np.float64)
    macs = cache.macs if policy is None else cache.macs + decision_macs(policy, cache)
    return dataclasses.replace(cache, confidence=conf, macs=macs)


def _scored(policy: Policy, cache: ExitCache) -> ExitCache:
    """``cache`` as ``policy`` answers it, its confidences replaced by the policy's scores."""
    return _with_scores(policy.answers(cache), policy.scores(cache), policy)


@dataclass(frozen=True)
class FittedPolicy:
    """A policy fit on val: its settings and what each gives on val.

    Attributes:
        name: The policy's name in :data:`POLICIES`.
        policy: The fitted policy.
        thresholds: S×(K-1) threshold vectors on the policy's scores.
        params: Each setting's parameters (``p``, ``tau`` or ``k``).
        val: Accuracy, expected cost and histogram of every setting on val.
    """

    name: str
    policy: Policy
    thresholds: np.ndarray
    params: tuple[dict[str, float], ...]
    val: PolicyResult

    def apply(self, cache: ExitCache, costs: np.ndarray | None = None) -> PolicyResult:
        """Every setting on another cache of the same arch (test): nothing is refit."""
        return ExitPolicy(_scored(self.policy, cache), costs).evaluate(self.thresholds)

    def choose(self, budget: float) -> int | None:
        """The setting most accurate on val whose val expected cost is within ``budget`` (the
        cheapest on a tie); None when none fits."""
        fits = np.flatnonzero(self.val.expected_cost <= budget)
        if not len(fits):
            return None
        best = self.val.accuracy[fits].max()
        tied = fits[self.val.accuracy[fits] == best]
        return int(tied[np.argmin(self.val.expected_cost[tied])])

    def budget_curve(self, test: PolicyResult, budgets: np.ndarray | list[float]) -> list[CurvePoint | None]:
        """Per budget, the val-chosen setting (:meth:`choose`) measured on ``test`` (None: none fits)."""
        out: list[CurvePoint | None] = []
        for b in budgets:
            i = self.choose(float(b))
            out.append(None if i is None else CurvePoint(
                float(test.expected_cost[i]), float(test.accuracy[i]), float(b),
                tuple(float(v) for v in self.thresholds[i]), tuple(int(v) for v in test.histogram[i])))
        return out


def fit_policy(name: str, val: ExitCache, costs: np.ndarray | None = None) -> FittedPolicy:
    """Policy ``name`` (see :data:`POLICIES`) fit on ``val``, every setting measured there.

    Args:
        name: A registered policy.
        val: The val exit cache (with logits).
        costs: Cumulative cost per exit (default the cache's MACs; e.g. latencies).
    """
    policy = POLICIES.get(name)()
    policy.fit(val)
    scores = policy.val_scores(val)
    thresholds, params = policy.settings(val, scores)
    res = ExitPolicy(_with_scores(policy.val_answers(val), scores, policy), costs).evaluate(thresholds)
    return FittedPolicy(name, policy, thresholds, tuple(params), res)


def fit_searched(name: str, values: np.ndarray, val: ExitCache) -> tuple[np.ndarray, dict[str, Any]]:
    """Policy ``name`` fit on ``val``, then a trial's searched ``values`` → its thresholds and the
    candidate's ``params`` (the fitted state and the searched parameter)."""
    policy = POLICIES.get(name)()
    policy.fit(val, out_of_fold=False)
    thresholds, searched = policy.searched(values, val.num_exits)
    return thresholds, {**policy.state(), **searched}


def decide(cache: ExitCache, thresholds: np.ndarray | list[float] | tuple[float, ...], policy: str = "threshold",
           params: dict[str, Any] | None = None, costs: np.ndarray | None = None) -> PolicyResult:
    """Accuracy, expected cost and histogram of one exit decision on ``cache``: ``thresholds``
    on confidence (``threshold`` policy) or on ``policy``'s score with the state it was fit to
    on val (``params``, as a candidate keeps them): nothing is refit. The policy's own MACs
    (:func:`decision_macs`) are counted in the cache's MACs, not in ``costs`` (e.g. latencies)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if policy == "threshold":
        return ExitPolicy(cache, costs).evaluate(t)
    fitted = POLICIES.get(policy)().load(params or {})
    return ExitPolicy(_scored(fitted, cache), costs).evaluate(t)


def candidate_result(cand: Candidate, cache: ExitCache, costs: np.ndarray | None = None) -> PolicyResult:
    """:func:`decide` with a candidate's thresholds, policy and fitted state."""
    return decide(cache, cand.thresholds, cand.policy, cand.params, costs)


#: Budgets of a policy curve: a grid this long from the first exit's val cost to the final exit's.
CURVE_BUDGETS = 21


def policy_curve(name: str, val: ExitCache, test: ExitCache, budgets: np.ndarray | list[float] | None = None,
                 fitted: FittedPolicy | None = None) -> list[CurvePoint]:
    """Policy ``name`` fit on ``val``; at each budget, the setting chosen on val (most accurate
    within it) measured on ``test``: the policy's budgeted curve, in MACs. Budgets no setting
    meets on val are left out; so are repeats of one setting. Empty for a single-exit arch.

    Args:
        name: A registered policy.
        val, test: The arch's exit caches (with logits).
        budgets: Expected-MACs budgets on val (default :data:`CURVE_BUDGETS` evenly from the
            first exit's val MACs to the final exit's).
        fitted: The policy already fit on ``val`` (default: fit here).
    """
    if val.num_exits < 2:
        return []
    fitted = fitted or fit_policy(name, val)
    lo, hi = float(val.exit_macs()[0]), float(val.exit_macs()[-1])
    grid = np.linspace(lo, hi, CURVE_BUDGETS) if budgets is None else np.asarray(budgets, dtype=np.float64)
    out: list[CurvePoint] = []
    for p in fitted.budget_curve(fitted.apply(test), grid):
        if p is not None and (not out or p.thresholds != out[-1].thresholds or p.macs != out[-1].macs):
            out.append(p)
    return out
