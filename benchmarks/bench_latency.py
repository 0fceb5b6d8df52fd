"""Latency table accuracy and realised early-exit speed-up at batch size 1 (issue: latency).

1. ``profile_space`` measures every block choice, head and the exit decision of the default
   space (32/64/128 channels, 32×32×3) into a table.
2. For 30+ random archs, thresholds are fit on a few hundred images (budgeted batch, a random
   p per arch, so exits really happen), then each image runs through the exported
   early-exit model at batch size 1 (it really stops) and the mean wall time per image is
   compared with the table's prediction for the same images' exits:
   Kendall τ (target ≥ 0.9) and mean absolute percentage error (target ≤ 10%).
3. Realised speed-up per arch: (static largest subnet's latency / early-exit latency) ÷
   (its MACs / expected MACs); target ≥ 0.8 on CPU.

Weights are random (timing does not depend on them); images are CIFAR-10 JPEG test images when
the tar is available, else random. Usage: ``python benchmarks/bench_latency.py [--archs 30]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment, environment_line, write_section  # noqa: E402

from exitnas.evaluators import build_exit_cache, exit_costs, fit_budgeted_thresholds  # noqa: E402
from exitnas.evaluators._latency import profile_space  # noqa: E402
from exitnas.evaluators._policy import ExitPolicy  # noqa: E402
from exitnas.search_space import Supernet, build_space  # noqa: E402

HEADING = "## bench_latency: latency table and realised early-exit speed-up"


def _images(n: int) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...], str]:
    try:
        from exitnas.data import DataConfig, load_dataset

        s = load_dataset(DataConfig(name="cifar10-jpeg", val_size=5000))
        return s.test_x[:n], s.mean, s.std, f"{n} CIFAR-10 JPEG test images"
    except Exception:  # noqa: BLE001 - the tar is optional here
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), (0.5,) * 3, (0.25,) * 3,
                f"{n} random images (CIFAR-10 JPEG tar not found)")


def _kendall_tau(a: list[float], b: list[float]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]))
    return 2 * s / (n * (n - 1))


@torch.no_grad()
def _per_image_ms(fn, x: torch.Tensor, passes: int) -> float:  # type: ignore[no-untyped-def]
    """Mean ms per image at batch size 1 over all images, median of ``passes`` passes."""
    for i in range(min(20, len(x))):
        fn(x[i : i + 1])
    runs = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for i in range(len(x)):
            fn(x[i : i + 1])
        runs.append((time.perf_counter() - t0) * 1e3 / len(x))
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", type=int, default=30)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    space = build_space("msr-resnet", in_channels=3, num_classes=10)
    t0 = time.perf_counter()
    table = profile_space(space, 32, device, repeats=args.repeats, progress=True)
    profile_s = time.perf_counter() - t0
    supernet = Supernet(space).eval()
    raw, mean, std, what = _images(args.images)
    x = ((raw.float() / 255) - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    labels = torch.zeros(len(raw), dtype=torch.long)

    static_arch = space.largest(all_exits=False)
    static_net = supernet.to_static(static_arch).eval()
    static_ms = _per_image_ms(lambda v: static_net(v), x, args.passes)
    static_macs = exit_costs(static_net, (3, 32, 32)).macs[-1]

    rng = random.Random(0)
    rows = []
    for i in range(args.archs):
        arch = space.sample(rng, exit_prob=0.3)
        while arch.num_exits < 2:
            arch = space.sample(rng, exit_prob=0.3)
        net = supernet.to_static(arch).eval()
        macs = exit_costs(net, (3, 32, 32)).macs
        cache = build_exit_cache(net, arch, raw, labels, mean, std, macs)
        p = rng.uniform(0.3, 1.5)
        thr = fit_budgeted_thresholds(cache, p)
        lat = table.exit_latency(space, arch)
        predicted = float(ExitPolicy(cache, lat).evaluate(thr).expected_macs[0])
        exp_macs = float(ExitPolicy(cache).evaluate(thr).expected_macs[0])
        t = torch.tensor(thr, dtype=torch.float32)
        measured = _per_image_ms(lambda v: net.early_exit(v, t), x, args.passes)
        speedup = (static_ms / measured) / (static_macs / exp_macs)
        rows.append((i, arch.num_exits, p, exp_macs / 1e6, predicted, measured, speedup))
        print(f"arch {i:2d}: {arch.num_exits} exits, p={p:.2f}, {exp_macs / 1e6:7.2f} MMACs, "
              f"predicted {predicted:.3f} ms, measured {measured:.3f} ms, realised speed-up ratio {speedup:.2f}")
    pred = [r[4] for r in rows]
    meas = [r[5] for r in rows]
    tau = _kendall_tau(pred, meas)
    mape = 100 * statistics.fmean(abs(p - m) / m for p, m in zip(pred, meas))
    speed = [r[6] for r in rows]
    env = environment("cpu")
    lines = [
        environment_line(env),
        "",
        f"Default space (channels 32/64/128, depths 1–4, 32×32×3), random weights; {what}; batch size 1; "
        f"{args.threads} torch thread(s). Table: {len(table.entries)} ops, median of {args.repeats}×5 calls "
        f"after warm-up, profiled in {profile_s:.0f} s. Measured = mean wall ms per image of "
        f"`StaticNet.early_exit` over the images (median of {args.passes} passes); predicted = Σ_k P(exit k)·"
        "latency_k from the table for the same images' exits.",
        "",
        "What limits the realised speed-up at batch size 1 on this CPU: every op pays a fixed dispatch cost "
        "(~10–30 µs) whatever its size, so a cheap early exit (a few MMACs) costs far more than its share of "
        "MACs, and the largest subnet's big convs run at a better FLOP rate than the small ones. The ratio "
        "rises with the share of MACs in large layers; BN folding, TorchScript freezing or CUDA graphs per "
        "segment (on a GPU) cut the per-op cost and are the next steps.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| Kendall τ, predicted vs measured ({len(rows)} archs) | {tau:.3f} | ≥ 0.9 |",
        f"| mean absolute percentage error | {mape:.1f}% | ≤ 10% |",
        f"| realised speed-up ratio, median (min–max) | {statistics.median(speed):.2f} "
        f"({min(speed):.2f}–{max(speed):.2f}) | ≥ 0.8 (CPU) |",
        f"| static largest subnet | {static_ms:.3f} ms, {static_macs / 1e6:.1f} MMACs | |",
        f"| table: in-context factor (fit on 8 other archs), exit decision | {table.context_factor:.3f}, "
        f"{table.ms('decision'):.3f} ms | |",
        "",
        "| arch | exits | p | expected MMACs | predicted ms | measured ms | speed-up ratio |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.2f} |" for r in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
