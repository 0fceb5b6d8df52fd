"""``exitnas evaluate``: one arch of an experiment's supernet → a per-exit table and a JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitnas._errors import UserError
from exitnas._io import atomic_write_bytes
from exitnas.evaluators import (
    POLICIES,
    CurvePoint,
    ExitCache,
    ExitPolicy,
    accuracy_at,
    anytime,
    budgeted_batch,
    budgeted_oracle,
    fit_policy,
    oracle,
    policy_curve,
)
from exitnas.experiment import Experiment
from exitnas.search_space import ArchConfig, SearchSpace

__all__ = ["evaluate_arch", "read_arch"]


def read_arch(spec: str, space: SearchSpace) -> ArchConfig:
    """An arch from a JSON file (an ``arch.json`` export with an ``arch`` key works too),
    or ``largest`` / ``smallest``; checked against ``space``."""
    if spec == "largest":
        return space.largest()
    if spec == "smallest":
        return space.smallest()
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"arch file {path} does not exist (or use 'largest' / 'smallest')")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"arch file {path} is not valid JSON: {e}") from None
    if isinstance(d, dict) and isinstance(d.get("arch"), dict):
        d = d["arch"]
    return space.validate(ArchConfig.from_dict(d))


def evaluate_arch(exp: Experiment, arch: ArchConfig, thresholds: np.ndarray | None, out: Path) -> dict[str, Any]:
    """Measure ``arch`` as the search measures it (the experiment's recalibration, confidence and
    seed): per-exit accuracy and MACs, the field's protocols on test, and ``thresholds`` if given.
    Prints a table and writes the numbers to ``out`` (JSON)."""
    ev = exp.evaluator
    caches = ev.caches(arch, ("val", "test"))
    val, test = caches["val"], caches["test"]
    costs = ev.costs(arch)
    budgeted_batch_points = budgeted_batch(val, test)
    result: dict[str, Any] = {
        "arch": arch.to_dict(),
        "checkpoint": str(exp.checkpoint),
        "classes": list(exp.splits.classes),
        "threads": torch.get_num_threads(),
        "confidence": ev.kind,
        "costs": costs.to_dict(),
        "anytime": {"val": [asdict(p) for p in anytime(val)], "test": [asdict(p) for p in anytime(test)]},
        "oracle_test": asdict(oracle(test)),
        "budgeted_batch_test": [asdict(p) for p in budgeted_batch_points],
    }
    print(f"classes ({exp.splits.name}): " + ", ".join(f"{i} {c}" for i, c in enumerate(exp.splits.classes)))
    _print_exits(arch, costs.params, val, test)
    _print_budgeted_batch(budgeted_batch_points)
    orc = result["oracle_test"]
    print(f"oracle (test): accuracy {orc['accuracy']:.4f} at {orc['macs'] / 1e6:.3f} MMACs")
    if arch.num_exits > 1:
        result.update(_policies(val, test))
    if thresholds is not None:
        result.update(_with_thresholds(thresholds, caches))
    atomic_write_bytes(out, json.dumps(result, indent=1, default=_jsonable).encode())
    return result


def _print_exits(arch: ArchConfig, params: tuple[int, ...], val: ExitCache, test: ExitCache) -> None:
    print(f"arch: {arch.to_json()}")
    print(f"{'exit':>4} {'position':>9} {'head':>7} {'MMACs':>9} {'params':>9} {'val acc':>8} {'test acc':>8}")
    for k, (pos, head) in enumerate(zip(arch.exits, arch.heads)):
        print(f"{k:>4} {str(list(pos)):>9} {head:>7} {test.exit_macs()[k] / 1e6:>9.3f} {params[k]:>9} "
              f"{val.exit_accuracy()[k]:>8.4f} {test.exit_accuracy()[k]:>8.4f}")


def _print_budgeted_batch(points: list[CurvePoint]) -> None:
    """Huang et al.'s budgeted-batch curve: thresholds fit on val so that exit k takes a share ∝ pᵏ."""
    print("budgeted batch on test (thresholds fit on val for exit shares ∝ p^k):")
    print(f"{'p':>6} {'MMACs':>9} {'test acc':>8}  test samples per exit")
    for p in sorted(points, key=lambda p: p.macs):
        print(f"{p.param:>6.3g} {p.macs / 1e6:>9.3f} {p.accuracy:>8.4f}  {' '.join(map(str, p.histogram))}")


#: The budgets ``exitnas evaluate`` prints the policies at: shares of the first→final exit range.
POLICY_BUDGETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _policies(val: ExitCache, test: ExitCache) -> dict[str, Any]:
    """Every exit policy's budgeted test curve (fit on val, the setting per budget chosen on val)
    beside the budgeted oracle; printed at :data:`POLICY_BUDGETS`."""
    lo, hi = float(val.exit_macs()[0]), float(val.exit_macs()[-1])
    budgets = [lo + f * (hi - lo) for f in POLICY_BUDGETS]
    ceiling = budgeted_oracle(test)
    rows: dict[str, list[float | None]] = {}
    curves: dict[str, list[CurvePoint]] = {}
    for name in POLICIES:
        fitted = fit_policy(name, val)  # once per policy: its printed points and its whole curve
        rows[name] = [None if p is None else p.accuracy for p in fitted.budget_curve(fitted.apply(test), budgets)]
        curves[name] = policy_curve(name, val, test, fitted=fitted)
    print("exit policies on test (fit on val; at each val budget the setting chosen on val; - : none fits):")
    print(f"{'MMACs':>9} " + " ".join(f"{n:>11}" for n in rows) + f" {'oracle':>11}")
    for i, b in enumerate(budgets):
        cells = [rows[n][i] for n in rows] + [accuracy_at(ceiling, b)]
        print(f"{b / 1e6:>9.3f} " + " ".join(f"{'-' if a is None else f'{a:.4f}':>11}" for a in cells))
    return {"policies_test": {n: [asdict(p) for p in pts] for n, pts in curves.items()},
            "budgeted_oracle_test": [asdict(p) for p in ceiling]}


def _with_thresholds(thresholds: np.ndarray, caches: dict[str, ExitCache]) -> dict[str, Any]:
    out = {}
    for split, cache in caches.items():
        r = ExitPolicy(cache).evaluate(thresholds)
        out[f"thresholds_{split}"] = {
            "thresholds": thresholds.tolist(), "accuracy": float(r.accuracy[0]),
            "expected_macs": float(r.expected_cost[0]), "histogram": r.histogram[0].tolist(),
        }
        print(f"thresholds on {split}: accuracy {r.accuracy[0]:.4f}, expected "
              f"{r.expected_cost[0] / 1e6:.3f} MMACs, exits {r.histogram[0].tolist()}")
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)
