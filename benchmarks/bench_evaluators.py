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
import datetime  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from exitnas.data import DataConfig, ImageSplits, load_dataset, normalize  # noqa: E402
from exitnas.evaluators import Evaluator, ExitCache, ExitPolicy, exit_costs  # noqa: E402
from exitnas.search_space import ArchConfig, SearchSpace, Supernet, build_space  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## bench_evaluators"


# -- environment -------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return (out.stdout.strip() or "none") + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "none"


def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


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
                  batch_size: int) -> float:
    net = supernet.to_static(arch).eval()  # built outside the timed region
    t0 = time.perf_counter()
    for x in images:
        for i in range(0, len(x), batch_size):
            net(normalize(x[i : i + batch_size], splits.mean, splits.std))
    return time.perf_counter() - t0


def bench_evaluate(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    splits, source = _data(args.val_images)
    space: SearchSpace = build_space("msr-resnet", in_channels=3, num_classes=10)
    torch.manual_seed(0)
    supernet = Supernet(space).eval()  # random weights: only the time matters
    rng = random.Random(0)
    archs = {"largest": space.largest(), "smallest": space.smallest(),
             "random-1": space.sample(rng), "random-2": space.sample(rng)}
    batch = 500
    print(f"(a) data {source}: {args.recal_images} recalibration + {len(splits.val_y)} val images, batch {batch}, "
          f"{args.threads} torch threads, {args.repeats} repeats interleaved")

    def evaluate(arch: ArchConfig) -> tuple[float, Evaluator]:
        ev = Evaluator(supernet, splits, recal_images=args.recal_images, batch_size=batch)  # fresh store
        t0 = time.perf_counter()
        ev.caches(arch, ("val",))
        return time.perf_counter() - t0, ev

    times: dict[str, dict[str, list[float]]] = {k: {"eval": [], "bare": [], "costs": []} for k in archs}
    # warm-up: allocator, oneDNN primitives, fvcore import
    evaluate(space.smallest())
    for rep in range(args.repeats):
        order = list(archs.items()) if rep % 2 == 0 else list(reversed(archs.items()))
        for name, arch in order:
            t_eval, ev = evaluate(arch)
            images = [ev.recal_x, splits.val_x]
            t_bare = _bare_forward(supernet, arch, images, splits, batch)
            net = supernet.to_static(arch)
            t0 = time.perf_counter()
            exit_costs(net, (3, 32, 32))
            t_costs = time.perf_counter() - t0
            for key, v in (("eval", t_eval), ("bare", t_bare), ("costs", t_costs)):
                times[name][key].append(v)
            print(f"  rep {rep} {name:<9} evaluate {t_eval:7.2f} s  bare {t_bare:7.2f} s  "
                  f"costs {t_costs:5.2f} s  ratio {t_eval / t_bare:.2f}", flush=True)

    rows = []
    for name, arch in archs.items():
        t = {k: statistics.median(v) for k, v in times[name].items()}
        ratios = [e / b for e, b in zip(times[name]["eval"], times[name]["bare"])]
        no_cost = [(e - c) / b for e, c, b in zip(times[name]["eval"], times[name]["costs"], times[name]["bare"])]
        macs = exit_costs(supernet.to_static(arch), (3, 32, 32)).macs
        rows.append({
            "arch": name, "exits": arch.num_exits, "mmacs": macs[-1] / 1e6,
            "evaluate_s": t["eval"], "bare_s": t["bare"], "costs_s": t["costs"],
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_no_costs": statistics.median(no_cost),
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


def bench_thresholds(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    cache = synthetic_cache()
    rng = np.random.default_rng(1)
    batches = [rng.random((1000, cache.num_exits - 1)) for _ in range(args.threshold_batches)]
    print(f"(b) {cache.num_samples} samples × {cache.num_exits} exits, batches of 1000 vectors, 1 thread")
    out: dict[str, object] = {"samples": cache.num_samples, "exits": cache.num_exits}

    policy = ExitPolicy(cache)
    t0 = time.perf_counter()
    policy.evaluate(batches[0][:1], method="bitset")  # builds the tables
    out["table_build_s"] = time.perf_counter() - t0

    def rate(method: str, run: Callable[[np.ndarray], object], n: int) -> float:
        run(batches[0])  # warm-up
        per = []
        for t in batches[:n]:
            t0 = time.perf_counter()
            run(t)
            per.append(time.perf_counter() - t0)
        r = 1000 / statistics.median(per)
        print(f"  {method:<6} {r:>12,.0f} vectors/s  (median of {len(per)} batches: {statistics.median(per) * 1e3:.2f} ms)")
        return r

    out["bitset_per_s"] = rate("bitset", lambda t: policy.evaluate(t, method="bitset"), len(batches))
    out["dense_per_s"] = rate("dense", lambda t: policy.evaluate(t, method="dense"), min(5, len(batches)))
    a, b = policy.evaluate(batches[0], method="bitset"), policy.evaluate(batches[0], method="dense")
    assert np.array_equal(a.histogram, b.histogram), "bitset and dense disagree"
    return out


# -- report --------------------------------------------------------------------------------------
def render(a: dict[str, object] | None, b: dict[str, object], meta: dict[str, str]) -> str:
    lines = [SECTION, ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    if a is not None:
        lines += ["", f"(a) One arch: `Evaluator.caches(arch, (\"val\",))`, fresh store (to_static + BN recalibration "
                  f"on {a['recal_images']} training images + val pass + per-exit costs) against a bare eval-mode "
                  f"no-grad forward of the same `to_static` subnet over the same {a['recal_images']} + "
                  f"{a['val_images']} images. Default space (channels 32/64/128), random weights, data: "
                  f"{a['source']}, {a['val_images']} val images (of 5,000, to keep the run short), batch {a['batch']}, "
                  f"{a['threads']} torch threads, median of {a['repeats']} interleaved repeats. Target ≤ 1.3×.", ""]
        lines += ["| arch | exits | MMACs | evaluate (s) | bare forward (s) | ratio (min–max) | costs alone (s) "
                  "| ratio without costs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in a["rows"]:  # type: ignore[attr-defined]
            lines.append(f"| {r['arch']} | {r['exits']} | {r['mmacs']:.1f} | {r['evaluate_s']:.2f} | {r['bare_s']:.2f} "
                         f"| {r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {r['costs_s']:.2f} "
                         f"| {r['ratio_no_costs']:.2f} |")
    lines += ["", f"(b) Threshold vectors per second, synthetic cache of {b['samples']} samples × {b['exits']} exits, "
              "batches of 1,000 random vectors, one thread. Target (bitset) ≥ 100,000/s.", "",
              "| method | vectors/s |", "|---|---:|",
              f"| bitset | {b['bitset_per_s']:,.0f} |", f"| dense | {b['dense_per_s']:,.0f} |", "",
              f"Bitset table build (once per cache): {b['table_build_s']:.3f} s.", ""]
    return "\n".join(lines)


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) only this benchmark's section; other sections stay as they are."""
    old = path.read_text() if path.is_file() else "# exitnas benchmark results\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        kept = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = "\n".join(lines[:start]).rstrip("\n"), "\n".join(lines[end:])
        kept = before + "\n\n" + text + ("\n" + after if after else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(kept.rstrip("\n") + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--val-images", type=int, default=500,
                        help="val images per pass (of 5,000; fewer keeps the run short on 2 cores)")
    parser.add_argument("--recal-images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for part (a)")
    parser.add_argument("--threshold-batches", type=int, default=30)
    parser.add_argument("--skip-a", action="store_true", help="only the threshold benchmark (b)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    meta = {
        "device": f"CPU {_cpu_model()} ({os.cpu_count()} cores visible)",
        "threads": f"{args.threads} torch threads for (a), 1 for (b)",
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "commit": _commit(), "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    t0 = time.perf_counter()
    a = None if args.skip_a else bench_evaluate(args)
    b = bench_thresholds(args)
    meta["benchmark wall time"] = f"{time.perf_counter() - t0:.0f} s"
    text = render(a, b, meta)
    print()
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote the {SECTION} section of {RESULTS}")


if __name__ == "__main__":
    main()
