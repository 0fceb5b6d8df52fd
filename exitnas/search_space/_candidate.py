"""``Candidate``: one searched early-exit network, as the search stores it and every later step reads it.

An :class:`ArchConfig` says which subnet; a candidate adds how its exits decide (thresholds,
confidence measure, exit rule) and what the search measured (accuracy and expected cost on
val, with the cost's unit). The search's objective writes it to its trial; the report, the
export (``arch.json``), :func:`~exitnas.runtime.load_export` and retraining read it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from exitnas._confidence import CONFIDENCES
from exitnas._errors import UserError
from exitnas.search_space._arch import ArchConfig

__all__ = ["CANDIDATE_FORMAT", "Candidate", "Measured"]

CANDIDATE_FORMAT = 1


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
        thresholds: One confidence threshold per non-final exit, in [0, 1], or +inf for an exit
            that takes no image (the bag-of-features rule's thresholds are already β × the exits'
            mean training confidence).
        confidence: ``maxprob`` or ``entropy``.
        exit_rule: ``threshold`` (each threshold searched) or ``bof`` (one β searched).
        measured: Accuracy and expected cost on val, as the search stored them (None before measuring).
    """

    arch: ArchConfig
    thresholds: tuple[float, ...]
    confidence: str = "maxprob"
    exit_rule: str = "threshold"
    measured: Measured | None = None

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
        """JSON-able; the keys ``arch``, ``thresholds`` and ``confidence`` are those of ``arch.json``."""
        return {"format": CANDIDATE_FORMAT, "arch": self.arch.to_dict(), "thresholds": list(self.thresholds),
                "confidence": self.confidence, "exit_rule": self.exit_rule,
                "measured": self.measured.to_dict() if self.measured is not None else None}

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
        measured = d.get("measured")
        return cls(ArchConfig.from_dict(d["arch"]), thresholds, str(d.get("confidence", "maxprob")),
                   str(d.get("exit_rule", "threshold")),
                   Measured.from_dict(measured) if isinstance(measured, dict) else None)
