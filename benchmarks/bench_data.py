"""Time the data path: cifar10-jpeg decode vs cached load, and loader throughput.

Run from the repository root: ``python benchmarks/bench_data.py [--device cuda]``.
The cold load decodes into a temporary cache, so it never disturbs ``.cache/exitnas``.
It prints its figures (no RESULTS.md section); on the GPU machine see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time

import torch

from exitnas.data import DataConfig, GpuBatchLoader, load_dataset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"torch {torch.__version__}, python {platform.python_version()}, device {device}, commit {commit or 'none'}")

    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig("cifar10-jpeg", val_size=5000, cache_dir=cache)
        t0 = time.perf_counter()
        splits = load_dataset(cfg)  # decodes and writes the cache
        print(f"cold load (decode + cache write): {time.perf_counter() - t0:.2f} s")
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            load_dataset(cfg)
            warm.append(time.perf_counter() - t0)
        print(f"cached load: median {statistics.median(warm):.3f} s, min {min(warm):.3f}, max {max(warm):.3f}")

    loader = GpuBatchLoader(
        splits.train_x, splits.train_y, splits.mean, splits.std, args.batch_size, device=device
    )
    for _ in loader.epoch(0):  # warm-up: allocator, kernels
        pass
    times = []
    for epoch in range(1, 1 + args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        for xb, _ in loader.epoch(epoch):
            pass
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    n = len(loader) * args.batch_size
    print(f"GpuBatchLoader epoch ({n} images, augment): median {med:.3f} s ({n / med:,.0f} img/s), "
          f"min {min(times):.3f}, max {max(times):.3f}")


if __name__ == "__main__":
    main()
