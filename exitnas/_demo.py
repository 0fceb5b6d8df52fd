"""``exitnas demo``: the whole pipeline on the built-in digits data, in minutes on a CPU.

Train a small supernet once → search archs and thresholds (Optuna, SQLite) → HTML report →
export the best trade-off. Every path it writes is printed at the end.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from exitnas._config import load_config

__all__ = ["run_demo", "demo_overrides", "written_since"]


def demo_overrides(out: Path, quick: bool) -> list[str]:
    """A small space and short budgets sized for 8×8 digits on two CPU cores."""
    return [
        "data.name=digits",
        "data.val_size=0.2",
        "space.channels=[16,32,64]",
        "space.depths=[1,2,3]",
        f"train.epochs={3 if quick else 30}",
        "train.batch_size=64",
        "train.lr=0.1",
        "train.sandwich_random=1",
        f"train.out={out / 'supernet'}",
        f"search.storage=sqlite:///{out / 'study.db'}",
        "search.study=demo",
        f"search.trials={12 if quick else 200}",
        "search.recal_images=500",
    ]


def written_since(out: Path, since: float) -> list[Path]:
    """Files under ``out`` written at or after ``since`` (a ``time.time()``), SQLite's side files left out."""
    return sorted(p for p in out.rglob("*")
                  if p.is_file() and p.stat().st_mtime >= since and not p.name.endswith(("-wal", "-shm", "-journal")))


def run_demo(out: Path, quick: bool = False) -> int:
    from exitnas.data import load_dataset
    from exitnas.experiment import Experiment
    from exitnas.results import CHOICE_RULE, build_report, export_trial
    from exitnas.search import format_front, run_search
    from exitnas.training import train_supernet

    t0, started = time.perf_counter(), time.time()
    out = Path(out)
    if (out / "study.db").exists():
        (out / "study.db").unlink()  # a fresh study each run: the demo is not a resume
        shutil.rmtree(out / "report" / "artifacts", ignore_errors=True)  # the old study's artifacts
    cfg = load_config(None, demo_overrides(out, quick))
    splits = load_dataset(cfg.data)
    print(f"[1/4] training a supernet once on {splits.name}: {len(splits.train_y)} train / "
          f"{len(splits.val_y)} val / {len(splits.test_y)} test images")
    trained = train_supernet(cfg, splits=splits, force=True)  # each demo run starts anew, as its study does
    print(f"[2/4] searching {cfg.search.trials} archs + thresholds on val (Optuna {cfg.search.sampler}, "
          f"{cfg.search.storage})")
    front = run_search(cfg, exp=Experiment(cfg, trained.checkpoint, splits=splits))
    print(format_front(front))
    print(f"[3/4] writing the report (test numbers for the front; the chosen trial is {CHOICE_RULE})")
    report = build_report(cfg.search.storage, cfg.search.study, str(trained.checkpoint), out / "report")
    chosen = report.chosen_trial
    point = next(p for p in report.tests if p.trial == chosen)
    static = report.curves.static
    print(f"  trial {chosen}: test accuracy {point.test_accuracy:.4f} at {point.test_cost:.3f} expected MMACs "
          f"(static largest subnet: {static.accuracy:.4f} at {static.macs / 1e6:.3f} MMACs)")
    print(f"[4/4] exporting trial {chosen} (inherited weights, TorchScript, ONNX)")
    export_trial(cfg.search.storage, cfg.search.study, chosen, out / "export", force=True)
    # File times come from the kernel's coarse clock, a few ms behind time.time(): a margin.
    paths = written_since(out, started - 0.05)
    print(f"done in {time.perf_counter() - t0:.0f} s; {len(paths)} files (report/artifacts/ holds the report and "
          "its figures as Optuna artifacts). wrote:")
    for p in paths:
        print(f"  {p}")
    print(f"open {report.html}, or inspect the study and the report (pip install optuna-dashboard): "
          f"optuna-dashboard {cfg.search.storage} --artifact-dir {report.artifact_dir}")
    return 0
