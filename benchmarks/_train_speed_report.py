"""``bench_supernet.py --device cuda`` / ``--sandwich``: run ``_train_speed`` and write its section."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from _env import environment, environment_line, loadavg, write_section
from _train_speed import Speed, equal_time, measure, random_splits

from exitnas.data import DataConfig, load_dataset

#: Issue 14's figures before this work (H200, commit 6996dd8, batch 256): 1,300-2,300 images/s.
BEFORE_IPS = (1300.0, 2300.0)
TARGETS = {"kernel_share": 0.70, "sandwich_over_static": 1.3, "speedup": 3.0}


def sandwich_main(args: argparse.Namespace) -> int:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    torch.set_num_threads(args.threads)
    gpu = device.startswith("cuda")
    batches = [int(b) for b in (args.batches or ("256,1024,2048" if gpu else "32,64")).split(",")]
    t0, load0 = time.perf_counter(), loadavg()
    splits = random_splits(8192 if gpu else 1024)
    speeds: list[Speed] = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in batches:
            sp = measure(device, b, splits, Path(tmp), steps=30 if gpu else 4, warmup=5 if gpu else 1,
                         profiled=5 if gpu else 1, pairs=10 if gpu else 3)
            speeds.append(sp)
            print(_row(sp), flush=True)
        acc = {}
        if args.equal_time > 0:
            data = load_dataset(DataConfig(name="cifar10-jpeg", root=args.data_root, val_size=5000))
            acc = equal_time(device, args.equal_time, batches, {s.batch: s.images_per_s for s in speeds}, data,
                             Path(tmp))
    section = f"## bench_supernet: sandwich training step ({'GPU' if gpu else 'CPU'})"
    text = _section(section, speeds, acc, args, device, time.perf_counter() - t0, (load0, loadavg()))
    print()
    print(text)
    Path(tempfile.gettempdir(), "bench_supernet_sandwich.json").write_text(
        json.dumps({"speeds": [asdict(s) for s in speeds], "equal_time": acc}, indent=1))
    if not args.no_write:
        write_section(section, text.split("\n", 1)[1])
    return 0


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _row(s: Speed) -> str:
    return (f"batch {s.batch:5d}: {s.images_per_s:8.0f} images/s, step {s.step_ms:7.1f} ms, kernels busy "
            f"{_fmt(s.kernel_share, '.0%')}, kernels/step {_fmt(s.kernels_per_step, '.0f')}, pageable copies/step "
            f"{_fmt(s.pageable_copies_per_step, '.1f')}, aten ops/step {s.ops_per_step:.0f}, sandwich "
            f"{s.sandwich_ms:.1f} ms vs static {s.static_ms:.1f} ms ({s.sandwich_over_static:.2f}x)")


def _section(title: str, speeds: list[Speed], acc: dict[int, dict[str, float]], args: argparse.Namespace,
             device: str, wall_s: float, load: tuple[str, str]) -> str:
    lines = [title, "",
             "The trainer's own step (`_Run.step`: largest, smallest and 2 random subnets, every block-end exit, "
             "in-place distillation, fused SGD on a GPU), default space, 32×32 random images; lr 0.2 per 256 "
             "images. Kernels busy = union of kernel intervals per step (profiled steps) / unprofiled step time.",
             "", f"- {environment_line(environment(device))}",
             f"- 1/5/15-min load average {load[0]} at start, {load[1]} at end; wall time {wall_s:.0f} s", "",
             "| batch | images/s | step ms | kernels busy | kernels/step | pageable H2D/step | aten ops/step "
             "| sandwich ms | static ms | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in speeds:
        lines.append(f"| {s.batch} | {s.images_per_s:.0f} | {s.step_ms:.1f} | {_fmt(s.kernel_share, '.0%')} | "
                     f"{_fmt(s.kernels_per_step, '.0f')} | {_fmt(s.pageable_copies_per_step, '.1f')} | "
                     f"{s.ops_per_step:.0f} | {s.sandwich_ms:.1f} | {s.static_ms:.1f} | "
                     f"{s.sandwich_over_static:.2f} |")
    if acc:
        lines += ["", f"Trained {args.equal_time:g} s per batch size on CIFAR-10 JPEG (45k/5k), lr scaled linearly, "
                      "warm-up a tenth of the run; largest subnet, last exit, val accuracy after BN recalibration:",
                  "", "| batch | steps | train s | val accuracy |", "|---:|---:|---:|---:|"]
        lines += [f"| {b} | {r['steps']:.0f} | {r['train_s']:.0f} | {r['val_accuracy']:.4f} |" for b, r in acc.items()]
    if device.startswith("cuda"):
        lines += ["", f"Targets (issue 14): kernels busy ≥ {TARGETS['kernel_share']:.0%} at the default GPU batch, "
                      f"sandwich/static ≤ {TARGETS['sandwich_over_static']}, ≥ {TARGETS['speedup']:g}× the "
                      f"{BEFORE_IPS[0]:,.0f}–{BEFORE_IPS[1]:,.0f} images/s at batch 256 before (= "
                      f"{TARGETS['speedup'] * BEFORE_IPS[1]:,.0f} images/s against the upper figure)."]
    else:
        lines += ["", "On a CPU only the op counts and the sandwich/static ratio mean anything; the GPU targets "
                      "are read from a `--device cuda` run."]
    return "\n".join(lines) + "\n"
