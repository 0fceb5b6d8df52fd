"""Time the evaluators: one arch's exit cache against a bare forward, and threshold evaluations/s.

Run from the repository root: ``.venv/bin/python benchmarks/bench_evaluators.py``.

(a) ``Evaluator.caches(arch, ("val",))`` with a fresh store — ``to_static``, BN recalibration
    on 2,000 training images, the val pass, and the per-exit costs it computes on the way —
    against a bare eval-mode, no-grad forward of the same ``to_static`` subnet over the same
    images (recalibration images + val images, same batch size, uint8 → float included).
    Target: ≤ 1.3×. The fvcore cost tracing is also timed on its own and reported separately.
(b) Threshold vectors evaluated per second on one cached arch (10,000 samples, 4 exits,
    synthetic), one thread, batches of 1,000 random vectors. Target (bitset): ≥ 100,000/s.

The figures go to the ``## bench_evaluators`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread for numpy before it is imported (part b runs on one core);
# torch's intra-op threads for part (a) are set explicitly below.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _env import RESULTS, environment, loadavg, write_section  # noqa: E402  (benchmarks/_env.py)

from exitnas.data import DataConfig, ImageSplits, load_dataset, normalize  # noqa: E402
from exitnas.evaluators import Evaluator, ExitCache, ExitPolicy, exit_costs  # noqa: E402
from exitnas.search_space import ArchConfig, SearchSpace, Supernet, build_space  # noqa: E402

SECTION = "## bench_evaluators"


class _Clock:
    """Wall and CPU (process, all threads) seconds of a block. On a shared machine the CPU
    time is the steadier figure: other processes stretch the wall time, not the work done."""

    def __enter__(self) -> _Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


# -- (a) one arch: evaluator vs bare forward -------------------------------------------------
def _data(val_images: int) -> tuple[ImageSplits, str]:
    try:
        splits = load_dataset(DataConfig(name="cifar10-jpeg", val_size=5000))
        source = "cifar10-jpeg"
    except Exception as e:  # noqa: BLE001 - fall back to random CIFAR-shaped images
        print(f"cifar10-jpeg not available ({str(e).splitlines()[0][:100]}); using random 3×32×32 images")
        g = torch.Generator().manual_seed(0)

        def rand(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g))

        (tx, ty), (vx, vy), (sx, sy) = rand(45000), rand(5000), rand(1000)
        splits = ImageSplits("random", tx, ty, vx, vy, sx, sy, 10, (0.5,) * 3, (0.25,) * 3)
        source = "random images (cifar10-jpeg missing)"
    if val_images < len(splits.val_y):
        splits = dataclasses.replace(splits, val_x=splits.val_x[:val_images].contiguous(),
                                     val_y=splits.val_y[:val_images].contiguous())
    return splits, source


@torch.no_grad()
def _bare_forward(supernet: Supernet, arch: ArchConfig, images: list[torch.Tensor], splits: ImageSplits,
                  batch_size: int) -> _Clock:
    net = supernet.to_static(arch).eval()  # built outside the timed region
    with _Clock() as clock:
        for x in images:
            for i in range(0, len(x), batch_size):
                net(normalize(x[i : i + batch_size], splits.mean, splits.std))
    return clock


def bench_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    splits, source = _data(args.val_images)
    space: SearchSpace = build_space("msr-resnet", in_channels=3, num_classes=10)
    torch.manual_seed(0)
    supernet = Supernet(space).eval()  # random weights: only the time matters
    rng = random.Random(0)
    archs = {"largest": space.largest(), "smallest": space.smallest(),
             "random-1": space.sample(rng), "random-2": space.sample(rng)}
    archs = {k: v for k, v in archs.items() if k in args.archs}
    batch = 500
    print(f"(a) data {source}: {args.recal_images} recalibration + {len(splits.val_y)} val images, batch {batch}, "
          f"{args.threads} torch threads, {args.repeats} repeats interleaved")

    def evaluate(arch: ArchConfig) -> tuple[_Clock, Evaluator]:
        ev = Evaluator(supernet, splits, recal_images=args.recal_images, batch_size=batch)  # fresh store
        with _Clock() as clock:
            ev.caches(arch, ("val",))
        return clock, ev

    keys = ("eval", "bare", "costs")
    wall: dict[str, dict[str, list[float]]] = {a: {k: [] for k in keys} for a in archs}
    cpu: dict[str, dict[str, list[float]]] = {a: {k: [] for k in keys} for a in archs}
    evaluate(space.smallest())  # warm-up: allocator, oneDNN primitives, fvcore import
    for rep in range(args.repeats):
        # alternate both the arch order and which of the pair runs first, against drifting load
        order = list(archs.items()) if rep % 2 == 0 else list(reversed(archs.items()))
        for name, arch in order:
            recal_x = Evaluator(supernet, splits, recal_images=args.recal_images).recal_x
            images = [recal_x, splits.val_x]
            if rep % 2 == 0:
                c_eval, _ = evaluate(arch)
                c_bare = _bare_forward(supernet, arch, images, splits, batch)
            else:
                c_bare = _bare_forward(supernet, arch, images, splits, batch)
                c_eval, _ = evaluate(arch)
            net = supernet.to_static(arch)
            with _Clock() as c_costs:
                exit_costs(net, (3, 32, 32))
            for key, c in (("eval", c_eval), ("bare", c_bare), ("costs", c_costs)):
                wall[name][key].append(c.wall)
                cpu[name][key].append(c.cpu)
            print(f"  rep {rep} {name:<9} evaluate {c_eval.wall:6.2f} s (cpu {c_eval.cpu:6.2f})  "
                  f"bare {c_bare.wall:6.2f} s (cpu {c_bare.cpu:6.2f})  costs {c_costs.wall:5.2f} s  "
                  f"ratio {c_eval.wall / c_bare.wall:.2f} (cpu {c_eval.cpu / c_bare.cpu:.2f})", flush=True)

    def ratios(t: dict[str, list[float]], minus_costs: bool = False) -> list[float]:
        return [(e - (c if minus_costs else 0.0)) / b for e, b, c in zip(t["eval"], t["bare"], t["costs"])]

    rows = []
    for name, arch in archs.items():
        macs = exit_costs(supernet.to_static(arch), (3, 32, 32)).macs
        rw, rc = ratios(wall[name]), ratios(cpu[name])
        rows.append({
            "arch": name, "exits": arch.num_exits, "mmacs": macs[-1] / 1e6,
            "evaluate_s": statistics.median(wall[name]["eval"]), "bare_s": statistics.median(wall[name]["bare"]),
            "costs_s": statistics.median(wall[name]["costs"]),
            "evaluate_cpu_s": statistics.median(cpu[name]["eval"]), "bare_cpu_s": statistics.median(cpu[name]["bare"]),
            "ratio": statistics.median(rw), "ratio_min": min(rw), "ratio_max": max(rw),
            "ratio_cpu": statistics.median(rc), "ratio_cpu_min": min(rc), "ratio_cpu_max": max(rc),
            "ratio_cpu_no_costs": statistics.median(ratios(cpu[name], True)),
        })
    return {"source": source, "val_images": len(splits.val_y), "recal_images": args.recal_images,
            "batch": batch, "threads": args.threads, "repeats": args.repeats, "rows": rows}


# -- (b) threshold evaluations per second ------------------------------------------------------
def synthetic_cache(n: int = 10_000, k: int = 4, seed: int = 0) -> ExitCache:
    """Later exits more confident and more often right; right answers follow confidence."""
    rng = np.random.default_rng(seed)
    conf = np.clip(rng.beta(2 + np.arange(k)[:, None] * 1.5, 2, size=(k, n)), 0, 1).astype(np.float32)
    correct = rng.random((k, n)) < 0.15 + 0.8 * conf
    arch = ArchConfig("msr-resnet", (k,), (1.0,), ((0.0,) * k,), tuple((0, b) for b in range(k)), ("linear",) * k)
    return ExitCache(arch, conf, correct, np.cumsum(np.full(k, 10e6)))


def bench_thresholds(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    cache = synthetic_cache()
    rng = np.random.default_rng(1)
    batches = [rng.random((1000, cache.num_exits - 1)) for _ in range(args.threshold_batches)]
    print(f"(b) {cache.num_samples} samples × {cache.num_exits} exits, batches of 1000 vectors, 1 thread")
    out: dict[str, Any] = {"samples": cache.num_samples, "exits": cache.num_exits}

    policy = ExitPolicy(cache)
    t0 = time.perf_counter()
    policy.evaluate(batches[0][:1], method="bitset")  # builds the tables
    out["table_build_s"] = time.perf_counter() - t0

    def rate(method: str, run: Callable[[np.ndarray], object], n: int) -> tuple[float, float]:
        run(batches[0])  # warm-up
        wall, cpu = [], []
        for t in batches[:n]:
            with _Clock() as c:
                run(t)
            wall.append(c.wall)
            cpu.append(c.cpu)
        rw, rc = 1000 / statistics.median(wall), 1000 / statistics.median(cpu)
        print(f"  {method:<6} {rw:>10,.0f} vectors/s wall, {rc:>10,.0f} CPU "
              f"(median of {len(wall)} batches: {statistics.median(wall) * 1e3:.2f} ms)")
        return rw, rc

    out["bitset_per_s"], out["bitset_per_cpu_s"] = rate("bitset", lambda t: policy.evaluate(t, method="bitset"),
                                                        len(batches))
    out["dense_per_s"], out["dense_per_cpu_s"] = rate("dense", lambda t: policy.evaluate(t, method="dense"),
                                                      min(5, len(batches)))
    a, b = policy.evaluate(batches[0], method="bitset"), policy.evaluate(batches[0], method="dense")
    assert np.array_equal(a.histogram, b.histogram), "bitset and dense disagree"
    return out


# -- report --------------------------------------------------------------------------------------
def render(a: dict[str, Any] | None, b: dict[str, Any], meta: dict[str, str]) -> str:
    lines = [f"- {k}: {v}" for k, v in meta.items()]
    if a is not None:
        n_recal, n_val = a["recal_images"], a["val_images"]
        fewer = " (of 5,000, to keep the run short)" if n_val < 5000 else ""
        lines += ["", f"(a) One arch: `Evaluator.caches(arch, (\"val\",))`, fresh store (to_static + BN "
                  f"recalibration on {n_recal} training images + val pass + per-exit costs) against a bare "
                  f"eval-mode no-grad forward of the same `to_static` subnet over the same {n_recal} + {n_val} "
                  f"images. Default space (channels 32/64/128), random weights, data: {a['source']}, {n_val} val "
                  f"images{fewer}, batch {a['batch']}, {a['threads']} torch threads, median of {a['repeats']} "
                  "interleaved repeats. Target ≤ 1.3×.", ""]
        lines += ["| arch | exits | MMACs | evaluate (s) | bare forward (s) | ratio, wall (min–max) "
                  "| evaluate CPU (s) | bare CPU (s) | ratio, CPU (min–max) | costs alone (s) "
                  "| ratio CPU without costs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in a["rows"]:
            lines.append(
                f"| {r['arch']} | {r['exits']} | {r['mmacs']:.1f} | {r['evaluate_s']:.2f} | {r['bare_s']:.2f} "
                f"| {r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {r['evaluate_cpu_s']:.2f} "
                f"| {r['bare_cpu_s']:.2f} | {r['ratio_cpu']:.2f} ({r['ratio_cpu_min']:.2f}–{r['ratio_cpu_max']:.2f}) "
                f"| {r['costs_s']:.2f} | {r['ratio_cpu_no_costs']:.2f} |")
        lines += ["", "CPU = process time over all threads; on a shared machine it is the steadier of the two. "
                  f"Recalibration images are {n_recal / (n_recal + n_val):.0%} of the images timed here "
                  f"({n_recal / (n_recal + 5000):.0%} with all 5,000 val images); they run in train mode, whose "
                  "BatchNorm also computes batch statistics, so thin subnets (where BN is a large share of the "
                  "work) show the highest ratio. `--archs smallest --val-images 5000` times the full-val setting."]
    lines += ["", f"(b) Threshold vectors per second, synthetic cache of {b['samples']} samples × {b['exits']} exits, "
              "batches of 1,000 random vectors, one thread. Target (bitset) ≥ 100,000/s.", "",
              "| method | vectors/s (wall) | vectors/s (CPU time) |", "|---|---:|---:|",
              f"| bitset | {b['bitset_per_s']:,.0f} | {b['bitset_per_cpu_s']:,.0f} |",
              f"| dense | {b['dense_per_s']:,.0f} | {b['dense_per_cpu_s']:,.0f} |", "",
              f"Bitset table build (once per cache): {b['table_build_s']:.3f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--val-images", type=int, default=500,
                        help="val images per pass (of 5,000; fewer keeps the run short on 2 cores)")
    parser.add_argument("--recal-images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for part (a)")
    parser.add_argument("--archs", nargs="+", default=["largest", "smallest", "random-1", "random-2"],
                        choices=["largest", "smallest", "random-1", "random-2"], help="archs timed in part (a)")
    parser.add_argument("--threshold-batches", type=int, default=30)
    parser.add_argument("--skip-a", action="store_true", help="only the threshold benchmark (b)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # so that the environment line shows part (a)'s threads
    meta = environment()
    meta["threads"] = f"{args.threads} torch threads for (a), 1 for (b)"
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    t0 = time.perf_counter()
    a = None if args.skip_a else bench_evaluate(args)
    b = bench_thresholds(args)
    meta["load at end"] = loadavg()
    meta["benchmark wall time"] = f"{time.perf_counter() - t0:.0f} s"
    text = render(a, b, meta)
    print()
    print(SECTION + "\n\n" + text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote the {SECTION} section of {RESULTS}")


if __name__ == "__main__":
    main()
