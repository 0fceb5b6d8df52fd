"""Supernet training speed on one device, measured on the trainer's own step.

- images/s of sandwich training (4 subnets a step) at each batch size, the device synchronised
  before and after the timed steps, so queued work is counted;
- on a GPU, from a profile of a few steps: kernels busy (the union of kernel intervals per
  step over the unprofiled step time), kernels and pageable host-to-device copies per step;
  on a CPU, top-level aten ops per step (what each would launch on a GPU);
- a sandwich step against the same four subnets trained as static nets (``to_static``), same
  loss, distillation and optimiser, interleaved (ABAB) on one batch;
- (``equal_time``) validation accuracy of supernets trained for the same wall time at several
  batch sizes, learning rate scaled linearly (0.2 per 256 images), the largest subnet's last
  exit after BN recalibration: how the default GPU batch size is chosen.

Used by ``bench_supernet.py --device cuda`` (and ``--sandwich`` on a CPU) and by ``gpu_check.py``.
Benchmarks may reach into the trainer (``_Run``): they time its real step, not a copy of it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from exitnas._config import load_config
from exitnas.data import ImageSplits, normalize
from exitnas.evaluators import recalibrated_subnet
from exitnas.training import load_supernet, train_supernet
from exitnas.training._losses import LOSSES
from exitnas.training._trainer import _Run, sandwich_archs

BASE_LR, BASE_BATCH = 0.2, 256


@dataclass(frozen=True)
class Speed:
    batch: int
    images_per_s: float
    step_ms: float
    kernel_share: float | None  # GPU only
    kernels_per_step: float | None  # GPU only
    pageable_copies_per_step: float | None  # GPU only
    ops_per_step: float  # top-level aten ops (the CPU-side calls a GPU step launches from)
    sandwich_ms: float
    static_ms: float

    @property
    def sandwich_over_static(self) -> float:
        return self.sandwich_ms / self.static_ms


def random_splits(n: int, size: int = 32) -> ImageSplits:
    """``n`` random uint8 images standing in for CIFAR-10 (speed does not depend on the pixels)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    y = torch.arange(n) % 10
    return ImageSplits("random", x, y, x[:512], y[:512], x[:512], y[:512], 10, (0.5,) * 3, (0.25,) * 3)


def scaled_lr(batch: int) -> float:
    """The linear scaling rule (Goyal et al.): 0.2 per 256 images."""
    return BASE_LR * batch / BASE_BATCH


def open_run(device: str, batch: int, splits: ImageSplits, out: Path, extra: tuple[str, ...] = ()) -> _Run:
    cfg = load_config(None, [f"train.device={device}", f"train.batch_size={batch}", f"train.lr={scaled_lr(batch)}",
                             "train.progress=false", f"train.out={out}", *extra])
    return _Run.open(cfg, splits)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(run: _Run) -> Any:
    """Batches without end (epochs one after another)."""
    epoch = 0
    while True:
        yield from run.loader.epoch(epoch)
        epoch += 1


def warm_up(run: _Run, steps: int) -> None:
    """First steps allocate memory and (on a GPU) autotune convolutions: not timed."""
    batches = _batches(run)
    for s in range(steps):
        run.step(*next(batches), s)
    _sync(run.device)


def images_per_s(run: _Run, steps: int, warmup: int) -> float:
    warm_up(run, warmup)
    batches = _batches(run)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        run.step(*next(batches), s)
    _sync(run.device)
    return steps * run.loader.batch_size / (time.perf_counter() - t0)


def profile_steps(run: _Run, steps: int, first: int) -> dict[str, float]:
    """Per step: kernel busy time (s), kernels, pageable H2D copies, top-level aten ops."""
    batches = _batches(run)
    on_gpu = run.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    _sync(run.device)
    with profile(activities=acts) as prof:
        for s in range(first, first + steps):
            run.step(*next(batches), s)
        _sync(run.device)
    events = prof.events()
    ops = [e for e in events if e.name.startswith("aten::") and e.device_type == DeviceType.CPU
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    out = {"ops": len(ops) / steps}
    if on_gpu:
        dev = [e for e in events if e.device_type == DeviceType.CUDA]
        kernels = [e for e in dev if not e.name.startswith(("Memcpy", "Memset"))]
        out["kernels"] = len(kernels) / steps
        out["pageable"] = sum("Pageable" in e.name and "HtoD" in e.name for e in dev) / steps
        out["busy_s"] = _union_us([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e6 / steps
    return out


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def sandwich_vs_static(run: _Run, pairs: int, step: int = 0) -> tuple[float, float]:
    """Median seconds of the trainer's sandwich step and of the same subnets as static nets."""
    tc, device = run.cfg.train, run.device
    x, y = next(run.loader.epoch(0))
    archs = sandwich_archs(run.space, tc.sandwich_random, tc.seed, step, tc.exit_sets)
    statics = [run.model.to_static(a).train() for a in archs]
    if device.type == "cuda":
        statics = [s.to(memory_format=torch.channels_last) for s in statics]
    params = [p for s in statics for p in s.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=tc.momentum, nesterov=True, weight_decay=tc.weight_decay,
                          fused=True if device.type == "cuda" else None)
    loss_fn = LOSSES.get(tc.loss)
    xs = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    def static_step() -> None:
        amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        opt.zero_grad(set_to_none=True)
        teacher = None
        for i, net in enumerate(statics):
            with amp:
                logits = net(xs, tc.routing, tc.dfs_beta)
                loss = loss_fn(logits, y, teacher, tc.distill, tc.label_smoothing)
            loss.backward()
            if i == 0:
                teacher = logits[-1].detach()
        opt.step()

    def sandwich_step() -> None:
        run.step(x, y, step)  # the same step number: the same four archs

    def timed(fn: Callable[[], None]) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(2):
        timed(sandwich_step), timed(static_step)
    ts_sand, ts_stat = [], []
    for i in range(pairs):
        first, second = (sandwich_step, static_step) if i % 2 == 0 else (static_step, sandwich_step)
        a, b = timed(first), timed(second)
        ts_sand.append(a if i % 2 == 0 else b)
        ts_stat.append(b if i % 2 == 0 else a)
    return statistics.median(ts_sand), statistics.median(ts_stat)


def measure(device: str, batch: int, splits: ImageSplits, out: Path, *, steps: int, warmup: int,
            profiled: int, pairs: int) -> Speed:
    """Every figure for one batch size (a fresh run each: the measurements do not share state)."""
    ips = images_per_s(open_run(device, batch, splits, out), steps, warmup)
    run = open_run(device, batch, splits, out)
    warm_up(run, warmup)
    prof = profile_steps(run, profiled, warmup)
    sand, stat = sandwich_vs_static(open_run(device, batch, splits, out), pairs)
    step_s = batch / ips
    return Speed(batch, ips, 1e3 * step_s,
                 prof["busy_s"] / step_s if "busy_s" in prof else None, prof.get("kernels"), prof.get("pageable"),
                 prof["ops"], 1e3 * sand, 1e3 * stat)


def equal_time(device: str, seconds: float, batches: list[int], speeds: dict[int, float], splits: ImageSplits,
               out: Path, recal_images: int = 2000) -> dict[int, dict[str, float]]:
    """Train a supernet for ``seconds`` (steps from the measured ``speeds``) at each batch size,
    lr scaled linearly; the largest subnet's last-exit validation accuracy after BN recalibration."""
    results = {}
    n = len(splits.train_y)
    for batch in batches:
        steps = max(1, int(seconds * speeds[batch] / batch))
        cfg = load_config(None, [f"train.device={device}", f"train.batch_size={batch}",
                                 f"train.lr={scaled_lr(batch)}", f"train.epochs={steps * batch / n!r}",
                                 f"train.warmup_epochs={0.1 * steps * batch / n!r}",  # a tenth of every run
                                 "train.progress=false", f"train.out={out / f'b{batch}'}",
                                 "train.checkpoint_every=100000"])
        t0 = time.perf_counter()
        res = train_supernet(cfg, splits=splits, force=True)
        wall = time.perf_counter() - t0
        net, _ = load_supernet(res.checkpoint, map_location=device)
        arch = net.space.largest()
        static = recalibrated_subnet(net, arch, splits.train_x[:recal_images], splits.mean, splits.std,
                                     device=device)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(splits.val_y), 1000):
                xb = normalize(splits.val_x[i : i + 1000].to(device), splits.mean, splits.std)
                correct += int((static(xb)[-1].argmax(1).cpu() == splits.val_y[i : i + 1000]).sum())
        results[batch] = {"steps": float(res.steps), "train_s": wall, "val_accuracy": correct / len(splits.val_y)}
        print(f"equal time, batch {batch}: {res.steps} steps in {wall:.0f} s, largest subnet val accuracy "
              f"{results[batch]['val_accuracy']:.4f}", flush=True)
    return results
