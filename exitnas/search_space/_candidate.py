"""``Candidate``: one searched early-exit network, as the search stores it and every later step reads it.

An :class:`ArchConfig` says which subnet; a candidate adds how its exits decide (thresholds,
confidence measure, exit rule, exit policy and its parameters) and what the search measured
(accuracy and expected cost on val, with the cost's unit). The search's objective writes it to
its trial; the report, the export (``arch.json``), :func:`~exitnas.runtime.load_export` and retraining read it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from exitnas._confidence import CONFIDENCES
from exitnas._errors import UserError
from exitnas.search_space._arch import ArchConfig

__all__ = ["CANDIDATE_FORMAT", "Candidate", "Measured"]

CANDIDATE_FORMAT = 1
#: The format of a candidate whose exits decide by another policy than confidence thresholds
#: (its thresholds are on that policy's score, not on a confidence).
POLICY_FORMAT = 2


@dataclass(frozen=True)
class Measured:
    """A candidate's accuracy and expected cost on one split, with the cost's unit.

    Attributes:
        accuracy: Fraction of the split's images right at the exit they left at.
        cost: Expected cost per image (Σ_k P(exit k)·cost_k) in ``unit``.
        unit: ``MMACs`` or ``ms`` (the search's second objective).
        split: Which images (``val`` for what the search saw).
    """

    accuracy: float
    cost: float
    unit: str = "MMACs"
    split: str = "val"

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "cost": self.cost, "unit": self.unit, "split": self.split}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measured:
        try:
            return cls(float(d["accuracy"]), float(d["cost"]), str(d["unit"]), str(d.get("split", "val")))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"measured values {d!r} lack accuracy, cost or unit") from None


@dataclass(frozen=True)
class Candidate:
    """An arch, its exit decisions and what the search measured of it.

    Attributes:
        arch: The subnet.
        thresholds: One threshold per non-final exit, in [0, 1] or +inf for an exit that takes no
            image: on the exit's confidence under the ``threshold`` policy (the bag-of-features
            rule's are already β × the exits' mean training confidence), else on the policy's
            score (``evaluators.POLICIES``).
        confidence: ``maxprob`` or ``entropy``.
        exit_rule: How the search chose the thresholds (``search.exit_rule``: ``threshold``,
            ``share``, ``bof``, or a policy's own rule).
        measured: Accuracy and expected cost on val, as the search stored them (None before measuring).
        policy: The exit policy (``threshold``: leave where confidence ≥ threshold; see
            ``evaluators.POLICIES`` for the others).
        params: What the policy needs besides the thresholds, fit on val (JSON-able: e.g. the
            patience ``k``, or the decider's weights); empty for ``threshold``.
    """

    arch: ArchConfig
    thresholds: tuple[float, ...]
    confidence: str = "maxprob"
    exit_rule: str = "threshold"
    measured: Measured | None = None
    policy: str = "threshold"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.thresholds) != self.arch.num_exits - 1:
            raise UserError(f"a candidate with {self.arch.num_exits} exits needs {self.arch.num_exits - 1} "
                            f"thresholds, got {len(self.thresholds)}")
        # +inf closes an exit (MSDNet's budgeted batch gives an exit with no quota no image).
        if not all(isinstance(t, float) and (0.0 <= t <= 1.0 or t == math.inf) for t in self.thresholds):
            raise UserError(f"thresholds must lie in [0, 1] (or be inf: a closed exit), got {list(self.thresholds)}")
        if self.confidence not in CONFIDENCES:
            raise UserError(f"unknown confidence {self.confidence!r}; known: {', '.join(CONFIDENCES)}")

    @property
    def cost_unit(self) -> str:
        return self.measured.unit if self.measured is not None else "MMACs"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; the keys ``arch``, ``thresholds`` and ``confidence`` are those of ``arch.json``.

        A ``threshold``-policy candidate is written as before policies existed (format 1); another
        policy adds ``policy`` and ``params`` (format 2)."""
        d = {"format": CANDIDATE_FORMAT, "arch": self.arch.to_dict(), "thresholds": list(self.thresholds),
             "confidence": self.confidence, "exit_rule": self.exit_rule,
             "measured": self.measured.to_dict() if self.measured is not None else None}
        if self.policy != "threshold" or self.params:
            d.update(format=POLICY_FORMAT, policy=self.policy, params=self.params)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        """From :meth:`to_dict` output or an ``arch.json`` (which holds the same keys among others)."""
        if not isinstance(d, dict) or not isinstance(d.get("arch"), dict):
            raise UserError("a candidate needs an 'arch' mapping")
        raw = d.get("thresholds", [])
        try:
            thresholds = tuple(float(t) for t in raw)
        except (TypeError, ValueError):
            raise UserError(f"thresholds must be a list of numbers, got {raw!r}") from None
        measured, params = d.get("measured"), d.get("params") or {}
        if not isinstance(params, dict):
            raise UserError(f"a candidate's params must be a mapping, got {params!r}")
        return cls(ArchConfig.from_dict(d["arch"]), thresholds, str(d.get("confidence", "maxprob")),
                   str(d.get("exit_rule", "threshold")),
                   Measured.from_dict(measured) if isinstance(measured, dict) else None,
                   str(d.get("policy", "threshold")), dict(params))
