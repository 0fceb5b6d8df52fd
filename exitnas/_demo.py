"""``exitnas demo``: the pipeline end to end on the built-in digits data, in minutes on a CPU."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from exitnas._config import load_config

__all__ = ["run_demo", "demo_overrides"]


def demo_overrides(out: Path, quick: bool) -> list[str]:
    """A small space and short training sized for 8×8 digits on two CPU cores."""
    return [
        "data.name=digits",
        "space.channels=[16,32,64]",
        "space.depths=[1,2,3]",
        f"train.epochs={4 if quick else 20}",
        "train.batch_size=64",
        "train.lr=0.1",
        "train.sandwich_random=1",
        f"train.out={out / 'supernet'}",
    ]


def run_demo(out: Path, quick: bool = False) -> int:
    """Train a supernet on digits, evaluate archs on val/test, write results; print the paths."""
    from exitnas.data import load_dataset
    from exitnas.evaluators import Evaluator, anytime, budgeted_batch, oracle
    from exitnas.training import atomic_write_bytes, space_for, train_supernet

    t0 = time.perf_counter()
    cfg = load_config(None, demo_overrides(out, quick))
    splits = load_dataset(cfg.data)
    print(f"[1/2] training a supernet on {splits.name}: {len(splits.train_y)} train / "
          f"{len(splits.val_y)} val / {len(splits.test_y)} test images")
    result = train_supernet(cfg, splits=splits)
    from exitnas.training import load_supernet

    supernet, _ = load_supernet(result.checkpoint, space_for(cfg, splits))
    ev = Evaluator(supernet, splits)
    print("[2/2] evaluating the largest and smallest subnets (BN recalibrated, thresholds fit on val)")
    report = {}
    for name, arch in (("largest", supernet.space.largest()), ("smallest", supernet.space.smallest(all_exits=True))):
        c = ev.caches(arch, ("val", "test"))
        bb = budgeted_batch(c["val"], c["test"])
        report[name] = {
            "arch": arch.to_dict(),
            "anytime_test": [asdict(p) for p in anytime(c["test"])],
            "budgeted_batch_test": [asdict(p) for p in bb],
            "oracle_test": asdict(oracle(c["test"])),
        }
        final = anytime(c["test"])[-1]
        print(f"  {name:<8} final exit: test accuracy {final.accuracy:.4f} at {final.macs / 1e6:.3f} MMACs; "
              f"budgeted batch p=0.5: {_at(bb, 0.5)}")
    path = out / "demo.json"
    atomic_write_bytes(path, json.dumps(report, indent=1).encode())
    print(f"done in {time.perf_counter() - t0:.0f} s. wrote:\n  {result.checkpoint}\n  "
          f"{result.checkpoint.parent / 'config.yaml'}\n  {path}")
    return 0


def _at(points: list, p: float) -> str:  # type: ignore[type-arg]
    best = min(points, key=lambda q: abs(q.param - p))
    return f"accuracy {best.accuracy:.4f} at {best.macs / 1e6:.3f} MMACs"
