"""The harness of ``benchmarks/headline.py``: settings, the run folder, step logs, resumable steps, ``main``.

A run lives in one ``--out`` folder. Its settings (budgets, trial counts) are fixed by the
first command into it (``settings.json``); each step writes ``<step>.json`` (status, figures,
wall time summed over the commands it took), so a step that is done is skipped and one that
ran out of time (:meth:`Run.left`) continues where it stopped. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tarfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _env import RESULTS, environment

from exitnas._config import ExperimentConfig, load_config
from exitnas._errors import UserError
from exitnas._io import atomic_write_bytes

SECTION = "## headline: CIFAR-10, searched exits against hand-placed exits"
NSGA2_STUDY, RANDOM_STUDY = "headline-nsga2", "headline-random"
STEPS = ("train", "resnet18", "search", "baselines", "retrain", "kendall", "evaluate")

INCOMPLETE = 3  # exit status: stopped at a checkpoint, run the same command again

#: A small space for --smoke (seconds per epoch on a CPU); the full run uses the default space.
SMOKE_SPACE = ["space.channels=[8,16,32]", "space.depths=[1,2]", "space.widths=[0.5,1.0]",
               "space.ratios=[0.0,0.5,1.0]", "train.batch_size=64", "search.recal_images=200"]
SMOKE_IMAGES = {"train": 40, "test": 10}  # per class, copied out of the tar


# -- JSON files of a run ------------------------------------------------------------------------------------
def save_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def point_json(p: Any) -> dict[str, Any]:
    """A :class:`~exitnas.evaluators.CurvePoint` as JSON, costs in MMACs."""
    return {"mmacs": p.macs / 1e6, "accuracy": p.accuracy, "param": p.param,
            "thresholds": list(p.thresholds), "histogram": list(p.histogram)}


# -- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What a run measures; fixed by the first command into an --out folder."""

    smoke: bool
    train_minutes: float
    resnet_minutes: float
    retrain_minutes: float
    max_epochs: float | None  # cap on budget-derived epochs (smoke: 1)
    trials: int
    kendall_archs: int
    kendall_epochs: float
    seed: int
    overrides: tuple[str, ...]

    @classmethod
    def defaults(cls, smoke: bool) -> dict[str, Any]:
        if smoke:
            return {"train_minutes": 0.2, "resnet_minutes": 0.1, "retrain_minutes": 0.1, "max_epochs": 1.0,
                    "trials": 10, "kendall_archs": 3, "kendall_epochs": 0.5, "seed": 0, "overrides": ()}
        return {"train_minutes": 8.0, "resnet_minutes": None, "retrain_minutes": None, "max_epochs": None,
                "trials": 500, "kendall_archs": 8, "kendall_epochs": 15.0, "seed": 0, "overrides": ()}


def resolve_settings(out: Path, smoke: bool, given: dict[str, Any]) -> Settings:
    """Stored settings of ``out``, else the defaults with the given flags; a conflict stops."""
    path = out / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        stored["overrides"] = tuple(stored["overrides"])
        if stored["smoke"] != smoke:
            raise UserError(f"{out} holds a {'smoke' if stored['smoke'] else 'full'} run; use another --out")
        for k, v in given.items():
            if v is not None and v != stored[k]:
                raise UserError(f"{out} was started with {k}={stored[k]!r}, not {v!r}; use another --out")
        return Settings(**stored)
    d = Settings.defaults(smoke)
    d.update({k: v for k, v in given.items() if v is not None})
    # ResNet-18 and the retrained arch get the supernet's wall time unless told otherwise.
    d["resnet_minutes"] = d["resnet_minutes"] or d["train_minutes"]
    d["retrain_minutes"] = d["retrain_minutes"] or d["train_minutes"]
    s = Settings(smoke=smoke, **d)
    out.mkdir(parents=True, exist_ok=True)
    save_json(path, dataclasses.asdict(s))
    return s


# -- one run: paths, config, data, time left -------------------------------------------------------
class Run:
    """The --out folder of one benchmark run and this command's clock."""

    def __init__(self, out: Path, settings: Settings, device: str, data: str | None, max_minutes: float,
                 commit: str | None = None) -> None:
        self.out, self.s, self.data_root = out, settings, data
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible; use cpu or auto")
        self.config_device = device  # what the stored experiment config says (auto stays auto)
        self.env = environment(str(self.device))
        if commit:  # the device machine's copy of the tree has no .git: the caller names the commit
            self.env["commit"] = commit
        self.t0, self.max_s = time.perf_counter(), max_minutes * 60
        self._splits: Any = None

    def left(self) -> float:
        """Seconds this command may still start work in."""
        return self.max_s - (time.perf_counter() - self.t0)

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.out / 'study.db'}"

    @property
    def checkpoint(self) -> Path:
        return self.out / "supernet" / "supernet.pt"

    def cfg(self, study: str = NSGA2_STUDY, sampler: str = "nsga2", **train: Any) -> ExperimentConfig:
        """The experiment: one config for every step (the studies differ in name and sampler)."""
        s = self.s
        ov = ["data.name=cifar10-jpeg", f"data.val_size={100 if s.smoke else 5000}", f"data.seed={s.seed}",
              f"train.device={self.config_device}", f"train.out={self.out / 'supernet'}", "train.progress=false",
              f"train.seed={s.seed}", f"search.storage={self.storage}", f"search.study={study}",
              f"search.sampler={sampler}", f"search.trials={s.trials}", f"search.seed={s.seed}",
              f"search.cache_dir={self.out / 'cache'}", "search.progress=false"]
        if s.smoke:
            ov += SMOKE_SPACE + [f"data.root={self.out / 'smoke-data'}", f"data.cache_dir={self.out / 'data-cache'}"]
        elif self.data_root:
            ov.append(f"data.root={self.data_root}")
        cfg = load_config(None, ov + list(s.overrides))
        if train:
            d = cfg.to_dict()
            d["train"].update(train)
            cfg = ExperimentConfig.from_dict(d)
        return cfg

    def splits(self) -> Any:
        if self._splits is None:
            from exitnas.data import load_dataset

            if self.s.smoke:
                make_smoke_data(self.out / "smoke-data", self.data_root)
            self._splits = load_dataset(self.cfg().data)
        return self._splits

    def log(self, step: str) -> StepLog | None:
        """The step's log, or None when the step is done."""
        log = StepLog(self, step)
        if log.done:
            print(f"[{step}] done earlier ({log.data['wall_s'] / 60:.2f} min); skipping")
            return None
        return log


class StepLog:
    """``<out>/<step>.json``: status, figures and wall time summed over the commands it took."""

    def __init__(self, run: Run, step: str) -> None:
        self.path = run.out / f"{step}.json"
        self.data: dict[str, Any] = load_json(self.path) or {"step": step, "status": "new", "wall_s": 0.0,
                                                              "invocations": []}
        self.done = self.data["status"] == "done"
        self._prior = float(self.data["wall_s"])
        self._t0 = time.perf_counter()
        self._run = run
        self._started = False

    def save(self, **updates: Any) -> None:
        if not self._started:
            self.data["invocations"].append({"device": self._run.env["device"], "date": self._run.env["date"],
                                             "commit": self._run.env["commit"], "wall_s": 0.0})
            self._started = True
        self.data.update(updates)
        if self.data["status"] == "new":
            self.data["status"] = "running"
        elapsed = time.perf_counter() - self._t0
        self.data["wall_s"] = self._prior + elapsed
        self.data["invocations"][-1]["wall_s"] = elapsed
        save_json(self.path, self.data)

    def finish(self, **updates: Any) -> None:
        self.save(status="done", **updates)
        print(f"  done: {self.data['wall_s'] / 60:.2f} min in all")


def make_smoke_data(root: Path, source: str | None) -> None:
    """A few hundred JPEGs copied (not re-encoded) out of the CIFAR-10 tar, as train/ and test/."""
    from exitnas.data import find_cifar10_jpeg

    if (root / "COMPLETE").is_file():
        return
    tar = find_cifar10_jpeg(source)
    if tar.is_dir():
        raise UserError("--smoke copies its images out of cifar10-jpeg.tar.xz; point --data at the tar")
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(tar, "r:*") as t:
        for m in t:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3 or parts[-3] not in SMOKE_IMAGES:
                continue
            split, cls, name = parts[-3:]
            if counts.get((split, cls), 0) >= SMOKE_IMAGES[split] or not name.lower().endswith(".jpg"):
                continue
            data = t.extractfile(m).read()  # type: ignore[union-attr]
            atomic_write_bytes(root / split / cls / name, data)
            counts[split, cls] = counts.get((split, cls), 0) + 1
    (root / "COMPLETE").write_text(json.dumps({f"{s}/{c}": n for (s, c), n in sorted(counts.items())}))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timing a GPU needs it; a CPU has none)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: A step: True when it is done, False when it stopped at a checkpoint (run the command again).
StepFunction = Callable[["Run"], bool]


def _parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="+", choices=STEPS + ("all", "publish"), metavar="STEP",
                   help=f"one or more of {', '.join(STEPS)}; all (those in order); publish (copy the "
                        "evaluated section into benchmarks/RESULTS.md, measuring nothing)")
    p.add_argument("--out", type=Path, default=Path("runs/headline"), help="the run's folder (default runs/headline)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (default auto)")
    p.add_argument("--data", help="cifar10-jpeg.tar.xz or an extracted copy (default: shared/data, found upwards)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run into --out only; not a measurement")
    p.add_argument("--commit", help="the commit to record, where the tree has no .git (the device machine's copy)")
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="stop starting work after this many minutes of this command (default 9)")
    g = p.add_argument_group("settings, fixed on the first command into --out")
    g.add_argument("--train-minutes", type=float, help="supernet training budget (default 8)")
    g.add_argument("--resnet-minutes", type=float, help="ResNet-18 training budget (default: the supernet's)")
    g.add_argument("--retrain-minutes", type=float,
                   help="retraining budget of the chosen arch (default: the supernet's)")
    g.add_argument("--max-epochs", type=float, help="cap on the budget-derived epochs (default none; smoke 1)")
    g.add_argument("--trials", type=int, help="trials of each study (default 500; smoke 10)")
    g.add_argument("--kendall-archs", type=int, help="archs retrained for Kendall τ (default 8; 0 skips)")
    g.add_argument("--kendall-epochs", type=float, help="epochs of each of those retrainings (default 15)")
    g.add_argument("--seed", type=int, help="seed of data split, training and search (default 0)")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="an exitnas config override, e.g. --set train.lr=0.1 (repeatable)")
    return p


def main(argv: list[str] | None, step_functions: dict[str, StepFunction], description: str) -> int:
    """Parse the command line, fix the settings, and run the steps named (each resumable)."""
    a = _parser(description).parse_args(argv)
    steps = STEPS if "all" in a.steps else tuple(s for s in STEPS + ("publish",) if s in a.steps)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    given = {"train_minutes": a.train_minutes, "resnet_minutes": a.resnet_minutes,
             "retrain_minutes": a.retrain_minutes, "max_epochs": a.max_epochs, "trials": a.trials,
             "kendall_archs": a.kendall_archs, "kendall_epochs": a.kendall_epochs, "seed": a.seed,
             "overrides": tuple(a.overrides) if a.overrides else None}
    try:
        settings = resolve_settings(a.out, a.smoke, given)
        if settings.smoke:
            # Tiny tensors: with two threads on a shared 2-core machine every op waits at an
            # OpenMP barrier (measured 100x slower sandwich steps); one thread avoids it.
            torch.set_num_threads(1)
        run = Run(a.out, settings, a.device, a.data, a.max_minutes, a.commit)
        banner = "SMOKE RUN (tiny data, CPU-sized budgets): not a measurement. " if settings.smoke else ""
        print(f"{banner}headline → {a.out}: steps {', '.join(steps)}; {run.env['device']}; torch "
              f"{run.env['torch']}; commit {run.env['commit']}", flush=True)
        for step in steps:
            if not step_functions[step](run):
                print(f"stopped at a checkpoint in step {step} after {(time.perf_counter() - run.t0) / 60:.1f} min; "
                      "run the same command again to continue")
                return INCOMPLETE
    except UserError as e:
        print(f"headline: error: {e}", file=sys.stderr)
        return 2
    if not settings.smoke and "evaluate" in steps:
        print(f"wrote the {SECTION!r} section of {RESULTS}")
    return 0

