"""Headline benchmark: searched early-exit networks against hand-placed exits on CIFAR-10.

The whole pipeline on the CIFAR-10 JPEG data (data config ``cifar10-jpeg``, 45,000 train /
5,000 val held out of the training images / 10,000 test), in resumable steps:

``train``      the supernet, for a fixed wall-clock budget (``--train-minutes``, 8): a short
               measured throughput fixes the epochs, then training runs in checkpointed chunks;
``resnet18``   the reference: a standard ResNet-18 (torchvision layout, 3×3 stem, no max-pool),
               same data, augmentation, optimiser and wall time (``--resnet-minutes``);
``search``     NSGA-II over archs + thresholds on the validation split, ``--trials`` trials;
``baselines``  with the same supernet weights: random search with the same trial budget, the
               static largest subnet, and exits at every stage end with MSDNet's
               budgeted-batch thresholds (fit on val);
``retrain``    the chosen trial (the report's rule) exported, then retrained from scratch for
               ``--retrain-minutes`` (as the supernet); its thresholds refit on val, its
               budgeted-batch curve on test;
``kendall``    ``--kendall-archs`` (8) archs of the front retrained from scratch for
               ``--kendall-epochs`` each: Kendall τ of inherited against retrained accuracy;
``evaluate``   test accuracy and expected MACs of every point of the front, budgeted-batch
               curves on test (chosen arch and baselines), the oracle curve, hypervolumes, the
               targets (PASS/MISS), exitnas's HTML report (``<out>/report/report.html``), a
               comparison page (``<out>/headline.html``) and the ``## headline`` section of
               ``benchmarks/RESULTS.md``;
``all``        the steps above in that order.

Usage (from the repository root)::

    python benchmarks/headline.py STEP [STEP ...] --out runs/headline [--device auto|cuda|cpu] [--smoke]

Every step reads what earlier steps wrote under ``--out`` (supernet checkpoint, the Optuna
study in ``study.db``, ``<step>.json``) and writes its own ``<step>.json`` atomically, with
the wall time it took (on the GPU machine, its GPU minutes), summed over the commands it
took. A step that is done is skipped. One command stops starting work when
``--max-minutes`` (9) are spent, leaves a checkpoint, and exits with status 3: run the same
command again to continue. Budgets and trial counts are fixed on the first command into an
``--out`` folder (``settings.json``); a later command that names other ones stops.

``--smoke`` runs everything tiny on a CPU (400 training images copied out of the tar, one
epoch or less, 10 trials; a few minutes on two cores) into ``--out`` only: it never writes
``benchmarks/RESULTS.md``, and its outputs are marked SMOKE, not a measurement.

On the GPU machine (device tool: Python 3.12 with torch, but no optuna, sqlalchemy, fvcore or
plotly; nothing can be downloaded there; each command at most 10 minutes; a machine stays warm
30 s after a call and keeps ``runs/headline`` while warm). Here, once::

    ../shared/tools/device-pack --data    # wheels + cifar10-jpeg.tar.xz into .device/ (about 35 MB)

Every device ``run`` carries ``.device`` (plus ``runs/headline-in`` to continue a run from an
earlier session, see below) and its command is::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit 1;
    if [ -d runs/headline-in ] && [ ! -d runs/headline ]; then
      mkdir -p runs && cat runs/headline-in/headline.tgz.* | tar -xzf - -C runs; fi;
    python3 benchmarks/headline.py STEPS --out runs/headline --device cuda --data .device/data/cifar10-jpeg.tar.xz \
      --commit "COMMIT";
    rc=$?; tar -czf - -C runs --exclude=headline/cache --exclude=headline/report/artifacts \
      --exclude='*.onnx' --exclude='*.torchscript.pt' headline | split -b 15m - $OUT/headline.tgz.; exit $rc

with COMMIT what ``git rev-parse --short HEAD`` says here (add "+ uncommitted changes" when
``git status`` shows any: the copy sent to the device has no ``.git``), and STEPS, one command
each (about 8–9 minutes with the default budgets): ``train``; ``resnet18``; ``search baselines``
(again while it exits with 3); ``retrain``; ``kendall`` (again while it exits with 3);
``evaluate``. With a 15-minute device budget per session that is several sessions (a warm
machine keeps ``runs/headline``, so the next command within 30 s needs nothing extracted).
After each call, here::

    rm -rf runs/headline-in && mkdir -p runs/headline-in && cp FILES_AT/headline.tgz.* runs/headline-in/
    rm -rf runs/headline && cat runs/headline-in/headline.tgz.* | tar -xzf - -C runs    # to look at it

and once ``evaluate`` has run on the device, ``python benchmarks/headline.py publish --out
runs/headline`` copies its section (device, versions, commit and GPU minutes as measured there)
into ``benchmarks/RESULTS.md`` here. Sizes: the finished supernet checkpoint keeps its weights
only (about 22 MB; the optimiser state is dropped once training is done) and the exports of the
retrain and kendall steps are pruned to their ``arch.json`` once measured, so ``.device`` and
``runs/headline-in`` fit the 64 MiB a run carries. Mid-training checkpoints (with optimiser
state) are larger: finish ``train`` and ``resnet18`` on one machine (one command, or the next
within 30 s).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
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
from _env import RESULTS, environment, write_section
from _headline_report import (
    NSGA2_STUDY,
    RANDOM_STUDY,
    SECTION,
    STEPS,
    load_json,
    point_json,
    save_json,
)
from torch import nn

from exitnas._config import ExperimentConfig, load_config
from exitnas._errors import UserError
from exitnas._io import atomic_write, atomic_write_bytes
from exitnas.results import kendall_tau

INCOMPLETE = 3  # exit status: stopped at a checkpoint, run the same command again

#: A small space for --smoke (seconds per epoch on a CPU); the full run uses the default space.
SMOKE_SPACE = ["space.channels=[8,16,32]", "space.depths=[1,2]", "space.widths=[0.5,1.0]",
               "space.ratios=[0.0,0.5,1.0]", "train.batch_size=64", "search.recal_images=200"]
SMOKE_IMAGES = {"train": 40, "test": 10}  # per class, copied out of the tar


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
    from exitnas.data._files import find_cifar10_jpeg

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- train: the supernet for a wall-clock budget ------------------------------------------------------
def step_train(run: Run) -> bool:
    from exitnas.training import load_checkpoint, save_checkpoint, train_supernet

    log = run.log("train")
    if log is None:
        return True
    t = time.perf_counter()
    splits = run.splits()
    cfg = run.cfg()
    spe = len(splits.train_y) // cfg.train.batch_size
    print(f"[train] supernet on {len(splits.train_y)} train images, budget {run.s.train_minutes} min "
          f"({spe} steps per epoch); data loaded in {time.perf_counter() - t:.1f} s")
    if "epochs" not in log.data:
        t = time.perf_counter()
        sps = _supernet_speed(run, splits)
        epochs = run.s.train_minutes * 60 * sps / spe
        if run.s.max_epochs is not None:
            epochs = min(epochs, run.s.max_epochs)
        log.save(epochs=epochs, total_steps=max(1, round(epochs * spe)), steps_per_s_measured=sps,
                 calibration_s=time.perf_counter() - t,
                 budget_minutes=run.s.train_minutes, batch_size=cfg.train.batch_size, steps_per_epoch=spe,
                 train_images=len(splits.train_y))
        print(f"  measured {sps:.2f} steps/s → {epochs:.2f} epochs ({log.data['total_steps']} steps)")
    total, sps = log.data["total_steps"], log.data["steps_per_s_measured"]
    step = int(log.data.get("steps_done", 0))
    chunk = max(1, round(60 * sps))  # about a minute of steps between checkpoints
    cfg = run.cfg(epochs=float(log.data["epochs"]), checkpoint_every=chunk)
    while step < total:
        room = int((run.left() - 15) * sps)
        if room < 1:
            log.save(steps_done=step)
            return False
        stop = min(total, step + chunk, step + room)
        t = time.perf_counter()
        res = train_supernet(cfg, resume=True, stop_at_step=stop, splits=splits)
        step = res.steps
        log.save(steps_done=step, last_loss=res.last_loss, images_per_s=res.images_per_s)
        print(f"  step {step}/{total}: loss {res.last_loss:.3f}, {res.images_per_s:.0f} img/s "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    # Training is over: keep the weights only (half the size), so the folder can travel.
    state = load_checkpoint(run.checkpoint)
    slim = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "rng", "format")}
    save_checkpoint(run.checkpoint, slim)
    log.finish(steps_done=step, checkpoint=str(run.checkpoint), checkpoint_mb=run.checkpoint.stat().st_size / 2**20,
               note="optimizer state dropped after training (weights, space, config and step kept)")
    return True


def _supernet_speed(run: Run, splits: Any) -> float:
    """Steady-state sandwich steps per second: a warm-up run, then a timed one (fresh folders)."""
    from exitnas.training import train_supernet

    tmp = run.out / "calibration"
    shutil.rmtree(tmp, ignore_errors=True)
    warm, timed = (1, 3) if run.s.smoke else (5, 40)
    try:
        # Many epochs: the timed steps are all at the warm-up learning rate, which costs the same.
        train_supernet(run.cfg(out=str(tmp / "warm"), epochs=1000.0, checkpoint_every=10**9), stop_at_step=warm,
                       splits=splits)
        res = train_supernet(run.cfg(out=str(tmp / "timed"), epochs=1000.0, checkpoint_every=10**9),
                             stop_at_step=timed, splits=splits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res.images_per_s / run.cfg().train.batch_size


# -- resnet18: the reference network -------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3×3 convs, a 1×1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y))
        return (y + self.downsample(x)).relu()


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 images: torchvision's layout with a 3×3 stride-1 stem and no max-pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _amp(device: torch.device) -> Any:
    return torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _train_steps(model: nn.Module, loss_of: Callable[[Any, torch.Tensor], torch.Tensor], loader: Any,
                 opt: torch.optim.Optimizer, lr: Callable[[int], float], start: int, stop: int,
                 channels_last: bool) -> float:
    """Optimiser steps ``start``..``stop`` (the loader's batches are a function of the step alone)."""
    spe, step, last = len(loader), start, float("nan")
    model.train()
    while step < stop:
        for x, y in loader.epoch(step // spe, step % spe):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr(step)
            with _amp(x.device):
                loss = loss_of(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= stop:
                break
        last = float(loss.detach())
    return last


def _steps_per_s(make: Callable[[], tuple[nn.Module, Callable[..., torch.Tensor], bool]], run: Run,
                 splits: Any) -> float:
    """Steady-state optimiser steps per second of a freshly built model (warm-up, then timed)."""
    from exitnas.training import make_optimizer, train_loader

    model, loss_of, cl = make()
    tc = run.cfg().train
    loader = train_loader(tc, splits, run.device, run.s.seed)
    opt = make_optimizer(model, tc, 1e-4)
    warm, timed = (1, 2) if run.s.smoke else (5, 30)
    _train_steps(model, loss_of, loader, opt, lambda s: 1e-4, 0, warm, cl)
    _sync(run.device)
    t = time.perf_counter()
    _train_steps(model, loss_of, loader, opt, lambda s: 1e-4, warm, warm + timed, cl)
    _sync(run.device)
    return timed / (time.perf_counter() - t)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Any, device: torch.device) -> float:
    from exitnas.data import normalize

    model.eval()
    right = 0
    for i in range(0, len(x), 1000):
        xb = normalize(x[i : i + 1000].to(device), splits.mean, splits.std)
        with _amp(device):
            right += int((model(xb).argmax(-1) == y[i : i + 1000].to(device)).sum())
    return right / len(x)


def _save_torch(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def step_resnet18(run: Run) -> bool:
    from exitnas.evaluators import count_macs
    from exitnas.training import lr_at, make_optimizer, train_loader

    log = run.log("resnet18")
    if log is None:
        return True
    splits = run.splits()
    tc = run.cfg().train
    dev, cl = run.device, run.device.type == "cuda"
    spe = len(splits.train_y) // tc.batch_size

    def build() -> tuple[nn.Module, Callable[..., torch.Tensor], bool]:
        torch.manual_seed(run.s.seed)
        m = ResNet18(splits.num_classes, splits.in_channels).to(dev)
        m = m.to(memory_format=torch.channels_last) if cl else m
        return m, lambda z, y: nn.functional.cross_entropy(z.float(), y, label_smoothing=tc.label_smoothing), cl

    if "epochs" not in log.data:
        sps = _steps_per_s(build, run, splits)
        epochs = run.s.resnet_minutes * 60 * sps / spe
        if run.s.max_epochs is not None:
            epochs = min(epochs, run.s.max_epochs)
        mmacs = count_macs(ResNet18(splits.num_classes, splits.in_channels).eval(),
                           torch.zeros(1, *splits.train_x.shape[1:])) / 1e6
        log.save(epochs=epochs, total_steps=max(1, round(epochs * spe)), steps_per_s_measured=sps, mmacs=mmacs,
                 budget_minutes=run.s.resnet_minutes, batch_size=tc.batch_size, lr=tc.lr,
                 model="ResNet-18, torchvision layout, 3x3 stride-1 stem, no max-pool")
        print(f"[resnet18] {mmacs:.1f} MMACs; measured {sps:.2f} steps/s → {epochs:.2f} epochs")
    total, sps = log.data["total_steps"], log.data["steps_per_s_measured"]
    model, loss_of, _ = build()
    opt = make_optimizer(model, tc, tc.lr)
    ckpt = run.out / "resnet18" / "checkpoint.pt"
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    loader = train_loader(tc, splits, dev, run.s.seed)
    warmup = min(total, round(tc.warmup_epochs * spe))
    chunk = max(1, round(60 * sps))
    while step < total:
        room = int((run.left() - 15) * sps)
        if room < 1:
            return False
        stop = min(total, step + chunk, step + room)
        loss = _train_steps(model, loss_of, loader, opt, lambda s: lr_at(s, total, warmup, tc.lr), step, stop, cl)
        step = stop
        _save_torch(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step})
        log.save(steps_done=step, last_loss=loss)
        print(f"  step {step}/{total}: loss {loss:.3f}", flush=True)
    acc = _accuracy(model, splits.test_x, splits.test_y, splits, dev)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # 90 MB; the figures are in resnet18.json
    print(f"  ResNet-18 test accuracy {acc:.4f}")
    log.finish(steps_done=step, test_accuracy=acc)
    return True


# -- search and baselines -------------------------------------------------------------------------------
def _need_supernet(run: Run) -> None:
    train = load_json(run.out / "train.json")
    if not train or train["status"] != "done":
        raise UserError(f"no trained supernet in {run.out}; run the train step first")


def _run_study(run: Run, log: StepLog, name: str, sampler: str, ctx: Any = None) -> tuple[bool, Any]:
    """Run (or resume) one study until it holds ``trials`` complete trials or time runs out."""
    import optuna

    from exitnas.search import SearchContext, completed, create_or_load_study

    cfg = run.cfg(study=name, sampler=sampler)
    ctx = ctx or SearchContext.build(cfg, str(run.checkpoint))
    study = create_or_load_study(cfg, ctx.evaluator.space)
    before, passes = completed(study), ctx.evaluator.forward_passes
    remaining = run.s.trials - before
    t = time.perf_counter()
    if remaining > 0 and run.left() > 20:
        stop = optuna.study.MaxTrialsCallback(run.s.trials, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(ctx.objective, n_trials=remaining, timeout=run.left() - 15, callbacks=[stop],
                       gc_after_trial=False)
    done, dt = completed(study), time.perf_counter() - t
    new = done - before
    runs = log.data.get("search_s", 0.0) + dt
    log.save(study=name, sampler=sampler, trials=done, search_s=runs, storage=run.storage,
             trials_per_min=60 * done / runs if runs > 0 else None,
             archs_measured=log.data.get("archs_measured", 0) + ctx.evaluator.forward_passes - passes,
             front_size=len(study.best_trials))
    print(f"[{log.data['step']}] study {name} ({sampler}): {done}/{run.s.trials} trials (+{new} in {dt:.0f} s)",
          flush=True)
    return done >= run.s.trials, ctx


def step_search(run: Run) -> bool:
    log = run.log("search")
    if log is None:
        return True
    _need_supernet(run)
    complete, _ = _run_study(run, log, NSGA2_STUDY, "nsga2")
    if complete:
        log.finish()
    return complete


def step_baselines(run: Run) -> bool:
    from exitnas.evaluators import anytime, budgeted_batch, oracle
    from exitnas.results import stage_exit_arch, static_largest_arch
    from exitnas.search import SearchContext

    log = run.log("baselines")
    if log is None:
        return True
    _need_supernet(run)
    ctx = None
    if "hand_placed" not in log.data:
        ctx = SearchContext.build(run.cfg(study=RANDOM_STUDY, sampler="random"), str(run.checkpoint))
        ev = ctx.evaluator
        static, stage = static_largest_arch(ev.space), stage_exit_arch(ev.space)
        cs, cg = ev.caches(static, ("val", "test")), ev.caches(stage, ("val", "test"))
        hand = {
            "static_largest": {"arch": static.to_dict(), "mmacs": float(cs["test"].macs[-1]) / 1e6,
                               "val_accuracy": float(cs["val"].exit_accuracy()[-1]),
                               "test_accuracy": float(cs["test"].exit_accuracy()[-1])},
            "stage_exits": {"arch": stage.to_dict(), "rule": "MSDNet budgeted batch: thresholds fit on val per p",
                            "budgeted_batch_val": [point_json(p) for p in budgeted_batch(cg["val"], cg["val"])],
                            "budgeted_batch_test": [point_json(p) for p in budgeted_batch(cg["val"], cg["test"])],
                            "anytime_test": [point_json(p) for p in anytime(cg["test"])],
                            "oracle_test": point_json(oracle(cg["test"]))},
        }
        log.save(hand_placed=hand)
        h = hand["static_largest"]
        print(f"[baselines] largest subnet: test {h['test_accuracy']:.4f} at {h['mmacs']:.1f} MMACs")
    complete, _ = _run_study(run, log, RANDOM_STUDY, "random", ctx)
    if complete:
        log.finish()
    return complete


# -- retrain and Kendall τ ----------------------------------------------------------------------------
def _static_speed(run: Run, arch_json: Path, splits: Any) -> float:
    """Steps per second of training the exported arch as ``exitnas retrain`` does (fresh weights)."""
    from exitnas.results import untrained_net
    from exitnas.training import LOSSES

    meta = json.loads(arch_json.read_text())
    tc = ExperimentConfig.from_dict(meta["experiment"]).train
    loss_fn = LOSSES.get(tc.loss)

    def build() -> tuple[nn.Module, Callable[..., torch.Tensor], bool]:
        net = untrained_net(meta)
        return net.to(run.device).train(), lambda z, y: loss_fn(z, y, None, 0.0, tc.label_smoothing), False

    return _steps_per_s(build, run, splits)


def _export_curves(run: Run, arch_json: Path, splits: Any) -> dict[str, Any]:
    """Budgeted batch, anytime and oracle on test of an exported (retrained) model."""
    from exitnas.results import evaluate_export, load_export
    from exitnas.search_space import ArchConfig

    model, meta = load_export(arch_json)
    ev = evaluate_export(model.net.to(run.device).eval(), ArchConfig.from_dict(meta["arch"]), splits,
                         meta["costs"]["macs"], thresholds=meta["thresholds"],
                         kind=meta.get("confidence", "maxprob"), device=run.device)
    c = ev.curves("test", fit_on="val")
    return {"budgeted_batch_test": [point_json(p) for p in c.budgeted_batch],
            "anytime_test": [point_json(p) for p in c.anytime], "oracle_test": point_json(c.oracle)}


def _retrain(run: Run, arch_json: Path, out: Path, epochs: float) -> dict[str, Any]:
    from exitnas.results import retrain_export

    res = retrain_export(arch_json, out, scratch=True, epochs=epochs, seed=run.s.seed, progress=False)
    meta = json.loads(res.export.arch_json.read_text())
    return {"epochs": epochs, "seconds": res.seconds, "test_accuracy": res.test_accuracy,
            "test_mmacs": res.test_expected_mmacs, "val_accuracy": res.val_accuracy,
            "val_mmacs": res.val_expected_mmacs, "thresholds": res.thresholds,
            "test_final_exit_accuracy": meta["metrics"]["test"]["exit_accuracy"][-1], "export": str(out)}


def step_retrain(run: Run) -> bool:
    from exitnas.results import export_trial

    log = run.log("retrain")
    if log is None:
        return True
    _need_supernet(run)
    if not load_json(run.out / "search.json") or load_json(run.out / "search.json")["status"] != "done":
        raise UserError("the search is not finished; run the search step first")
    splits = run.splits()
    inherited = run.out / "export-chosen"
    if not (inherited / "arch.json").is_file():
        t = time.perf_counter()
        export_trial(run.storage, NSGA2_STUDY, None, inherited, checkpoint=str(run.checkpoint))
        print(f"[retrain] exported the chosen trial in {time.perf_counter() - t:.0f} s")
    meta = json.loads((inherited / "arch.json").read_text())
    if "retrained" not in log.data:
        spe = len(splits.train_y) // run.cfg().train.batch_size
        sps = log.data.get("steps_per_s_measured") or _static_speed(run, inherited / "arch.json", splits)
        log.save(steps_per_s_measured=sps)
        epochs = run.s.retrain_minutes * 60 * sps / spe
        if run.s.max_epochs is not None:
            epochs = min(epochs, run.s.max_epochs)
        # exitnas retrain has no checkpoints: the whole budget (plus data, caches, export) in this command.
        need = run.s.retrain_minutes * 60 + 30
        if run.left() < need:
            print(f"[retrain] needs about {need / 60:.1f} min in one command; {run.left() / 60:.1f} left. "
                  "Run the retrain step in a fresh command.")
            return False
        print(f"[retrain] trial {meta['provenance']['trial']} from scratch: {sps:.2f} steps/s → {epochs:.2f} epochs")
        r = _retrain(run, inherited / "arch.json", run.out / "retrain-chosen", epochs)
        log.save(trial=meta["provenance"]["trial"], steps_per_s_measured=sps, budget_minutes=run.s.retrain_minutes,
                 inherited={"test_accuracy": meta["metrics"]["test"]["accuracy"],
                            "test_mmacs": meta["metrics"]["test"]["expected_mmacs"],
                            "val_accuracy": meta["metrics"]["val"]["accuracy"],
                            "val_mmacs": meta["metrics"]["val"]["expected_mmacs"]},
                 retrained=r)
        print(f"  retrained: test {r['test_accuracy']:.4f} at {r['test_mmacs']:.2f} MMACs "
              f"(inherited {meta['metrics']['test']['accuracy']:.4f} at "
              f"{meta['metrics']['test']['expected_mmacs']:.2f})")
    log.finish(curves=_export_curves(run, run.out / "retrain-chosen" / "arch.json", splits),
               note="both exports pruned to arch.json once measured, so the run folder can travel")
    _prune_export(inherited)
    _prune_export(run.out / "retrain-chosen")
    return True


def kendall_trials(front: Any, n: int) -> list[int]:
    """``n`` trials of distinct archs: spread along the front's MMACs, then (if the front has
    too few distinct archs) spread over the other trials' validation accuracy."""
    def key(t: Any) -> str:
        return json.dumps(t.user_attrs.get("arch"), sort_keys=True)

    def spread(ts: list[Any], k: int) -> list[Any]:
        if len(ts) <= k:
            return ts
        return [ts[i] for i in sorted({round(v) for v in np.linspace(0, len(ts) - 1, k)})]

    seen: set[str] = set()

    def distinct(ts: list[Any]) -> list[Any]:
        out = []
        for t in ts:
            if key(t) not in seen:
                seen.add(key(t))
                out.append(t)
        return out

    picked = spread(distinct(front.pareto_trials), n)
    seen = {key(t) for t in picked}
    if len(picked) < n:
        picked += spread(distinct(sorted(front.trials, key=lambda t: t.accuracy)), n - len(picked))
    return sorted(t.number for t in picked)


def _prune_export(folder: Path) -> None:
    """Keep an export's arch.json (metrics, provenance); its model files are not needed again."""
    for f in folder.iterdir():
        if f.name != "arch.json":
            f.unlink()


def step_kendall(run: Run) -> bool:
    from exitnas.results import export_trial, load_front

    if run.s.kendall_archs <= 0:
        print("[kendall] --kendall-archs 0: skipped")
        return True
    log = run.log("kendall")
    if log is None:
        return True
    if not load_json(run.out / "search.json") or load_json(run.out / "search.json")["status"] != "done":
        raise UserError("the search is not finished; run the search step first")
    front = load_front(run.storage, NSGA2_STUDY)
    trials = log.data.get("trials") or kendall_trials(front, run.s.kendall_archs)
    rows: dict[str, Any] = log.data.get("rows", {})
    log.save(trials=trials, rows=rows, epochs=run.s.kendall_epochs)
    print(f"[kendall] {len(trials)} archs, {run.s.kendall_epochs} epochs each from scratch: trials {trials}")
    last = 0.0
    for n in trials:
        if str(n) in rows:
            continue
        if run.left() < max(30.0, 1.3 * last):
            return False
        t = time.perf_counter()
        folder = run.out / "kendall" / f"trial-{n}"
        if not (folder / "inherited" / "arch.json").is_file():
            export_trial(run.storage, NSGA2_STUDY, n, folder / "inherited", checkpoint=str(run.checkpoint))
        meta = json.loads((folder / "inherited" / "arch.json").read_text())
        r = _retrain(run, folder / "inherited" / "arch.json", folder / "retrained", run.s.kendall_epochs)
        rows[str(n)] = {"inherited_val_accuracy": front.trial(n).accuracy, "val_mmacs": front.trial(n).mmacs,
                        "inherited_test_accuracy": meta["metrics"]["test"]["accuracy"],
                        "inherited_test_final_exit_accuracy": meta["metrics"]["test"]["exit_accuracy"][-1],
                        **{f"retrained_{k}": v for k, v in r.items() if k not in ("thresholds", "export")}}
        last = time.perf_counter() - t
        log.save(rows=rows, note="exports pruned to arch.json (their figures are in rows)")
        _prune_export(folder / "inherited")  # after the save: a rerun must not find a pruned export undone
        _prune_export(folder / "retrained")
        print(f"  trial {n}: inherited test {rows[str(n)]['inherited_test_accuracy']:.4f}, retrained "
              f"{r['test_accuracy']:.4f} ({last:.0f} s)", flush=True)
    vals = [rows[str(n)] for n in trials]
    tau = {
        "search_val_vs_retrained_test": kendall_tau([v["inherited_val_accuracy"] for v in vals],
                                                    [v["retrained_test_accuracy"] for v in vals]),
        "inherited_test_vs_retrained_test": kendall_tau([v["inherited_test_accuracy"] for v in vals],
                                                        [v["retrained_test_accuracy"] for v in vals]),
        "final_exit_inherited_vs_retrained": kendall_tau([v["inherited_test_final_exit_accuracy"] for v in vals],
                                                         [v["retrained_test_final_exit_accuracy"] for v in vals]),
    }
    print("  Kendall τ: " + ", ".join(f"{k} {v:.3f}" for k, v in tau.items()))
    log.finish(tau=tau)
    return True


# -- evaluate ------------------------------------------------------------------------------------------
def step_evaluate(run: Run) -> bool:
    from _headline_report import evaluate

    for step in ("train", "search", "baselines"):
        d = load_json(run.out / f"{step}.json")
        if not d or d["status"] != "done":
            raise UserError(f"the {step} step is not finished; run it first")
    evaluate(run)
    return True


def step_publish(run: Run) -> bool:
    """Write the evaluated section into benchmarks/RESULTS.md here (after a device run)."""
    md = run.out / "headline.md"
    if run.s.smoke:
        raise UserError("a smoke run is not a measurement; nothing to publish")
    if not md.is_file():
        raise UserError(f"no {md}; run the evaluate step first")
    text = md.read_text()
    write_section(SECTION, text.split("\n", 1)[1] if text.startswith(SECTION) else text)
    print(f"[publish] {md} → the {SECTION!r} section of {RESULTS}")
    return True


STEP_FUNCTIONS: dict[str, Callable[[Run], bool]] = {
    "train": step_train, "resnet18": step_resnet18, "search": step_search, "baselines": step_baselines,
    "retrain": step_retrain, "kendall": step_kendall, "evaluate": step_evaluate, "publish": step_publish,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
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
    a = p.parse_args(argv)
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
            if not STEP_FUNCTIONS[step](run):
                print(f"stopped at a checkpoint in step {step} after {(time.perf_counter() - run.t0) / 60:.1f} min; "
                      "run the same command again to continue")
                return INCOMPLETE
    except UserError as e:
        print(f"headline: error: {e}", file=sys.stderr)
        return 2
    if not settings.smoke and "evaluate" in steps:
        print(f"wrote the {SECTION!r} section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
