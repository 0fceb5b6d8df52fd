"""``exitnas evaluate``: one arch of a trained supernet → a table and a JSON file."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from exitnas._errors import UserError
from exitnas.search_space import ArchConfig, SearchSpace

__all__ = ["run_evaluate", "read_arch"]


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


def run_evaluate(args: argparse.Namespace) -> int:
    from exitnas._config import load_config
    from exitnas.data import load_dataset
    from exitnas.evaluators import (
        Evaluator,
        ExitPolicy,
        anytime,
        budgeted_batch,
        check_thresholds,
        oracle,
    )
    from exitnas.training import load_supernet, resolve_device
    from exitnas.training._checkpoint import load_checkpoint

    state = load_checkpoint(args.checkpoint)
    # Overrides apply to the given config, else to the one the checkpoint was trained with.
    cfg = load_config(args.config, args.overrides, base=None if args.config else state["config"])
    splits = load_dataset(cfg.data)
    from exitnas.training import space_for

    space = space_for(cfg, splits)
    supernet, _ = load_supernet(args.checkpoint, space)
    arch = read_arch(args.arch, space)
    thresholds = None
    if args.thresholds:
        try:
            values = [float(v) for v in args.thresholds.split(",")]
        except ValueError:
            raise UserError(f"--thresholds {args.thresholds!r} must be comma-separated numbers") from None
        thresholds = check_thresholds(values, arch.num_exits)[0]
    ev = Evaluator(supernet, splits, device=resolve_device(cfg.train.device))
    caches = ev.caches(arch, ("val", "test"))
    val, test = caches["val"], caches["test"]
    costs = ev.costs(arch)
    result: dict[str, Any] = {
        "arch": arch.to_dict(),
        "checkpoint": str(args.checkpoint),
        "costs": costs.to_dict(),
        "anytime": {"val": [asdict(p) for p in anytime(val)], "test": [asdict(p) for p in anytime(test)]},
        "oracle_test": asdict(oracle(test)),
        "budgeted_batch_test": [asdict(p) for p in budgeted_batch(val, test)],
    }
    print(f"arch: {arch.to_json()}")
    print(f"{'exit':>4} {'position':>9} {'head':>7} {'MMACs':>9} {'params':>9} {'val acc':>8} {'test acc':>8}")
    for k, (pos, head) in enumerate(zip(arch.exits, arch.heads)):
        print(f"{k:>4} {str(list(pos)):>9} {head:>7} {test.exit_macs()[k] / 1e6:>9.3f} {costs.params[k]:>9} "
              f"{val.exit_accuracy()[k]:>8.4f} {test.exit_accuracy()[k]:>8.4f}")
    orc = result["oracle_test"]
    print(f"oracle (test): accuracy {orc['accuracy']:.4f} at {orc['macs'] / 1e6:.3f} MMACs")
    if thresholds is not None:
        for split, cache in (("val", val), ("test", test)):
            r = ExitPolicy(cache).evaluate(thresholds)
            result[f"thresholds_{split}"] = {
                "thresholds": thresholds.tolist(), "accuracy": float(r.accuracy[0]),
                "expected_macs": float(r.expected_macs[0]), "histogram": r.histogram[0].tolist(),
            }
            print(f"thresholds on {split}: accuracy {r.accuracy[0]:.4f}, expected "
                  f"{r.expected_macs[0] / 1e6:.3f} MMACs, exits {r.histogram[0].tolist()}")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("evaluate.json")
    from exitnas.training import atomic_write_bytes

    atomic_write_bytes(out, json.dumps(result, indent=1, default=_jsonable).encode())
    print(f"wrote {out}")
    return 0


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)
