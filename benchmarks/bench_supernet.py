"""Elastic overhead: one training step of a subnet run inside the Supernet vs. as its static module.

For the default space (stages of 32/64/128 channels, 32×32×3 inputs, 10 classes) and a few
archs (largest, smallest, three random ones, seeded), time one training step — forward of all
the arch's exits, summed cross-entropy, backward, SGD step — on the CPU, once through
``Supernet.forward(x, arch)`` and once through ``Supernet.to_static(arch)``. Supernet and
static steps are interleaved (ABBA order) so that drift in the machine's load hits both.
Reports median and interquartile range per path and the ratio of medians (target ≤ 1.15),
prints a table and writes it into ``benchmarks/RESULTS.md`` (only this benchmark's section).

With ``--device cuda`` (or ``--sandwich`` on a CPU) it measures the trainer's own sandwich
step instead (see ``_train_speed``): images/s per batch size, GPU kernels busy, kernels and
pageable copies per step, sandwich step over the same subnets as static nets (targets, issue
14: kernels busy ≥ 70% at the default GPU batch, sandwich/static ≤ 1.3, ≥ 3× the 1,300–2,300
images/s measured at batch 256 before), and with ``--equal-time S`` the validation accuracy of
supernets trained S seconds at each batch size on CIFAR-10 (``--data-root``).

Usage: ``.venv/bin/python benchmarks/bench_supernet.py [--repeats 10] [--no-write]``;
``python3 benchmarks/bench_supernet.py --device cuda [--equal-time 90 --data-root PATH]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exitnas.search_space import ArchConfig, SearchSpace, Supernet, build_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment, environment_line, loadavg, write_section  # noqa: E402
from _train_speed_report import sandwich_main  # noqa: E402

SECTION = "## bench_supernet: elastic overhead (CPU)"
RESULTS = Path(__file__).with_name("RESULTS.md")
TARGET = 1.15


@dataclass(frozen=True)
class Row:
    name: str
    arch: ArchConfig
    repeats: int
    sup: list[float]
    sta: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.sup) / statistics.median(self.sta)

    @property
    def paired(self) -> float:
        """Median of the per-pair ratios: each pair ran back to back, so it shares the load."""
        return statistics.median(a / b for a, b in zip(self.sup, self.sta))


def _iqr(ts: list[float]) -> float:
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[2] - q[0]


def _step_fn(forward: Callable[[Tensor], list[Tensor]], params: list[nn.Parameter], x: Tensor,
             y: Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(z, y) for z in forward(x))
        loss.backward()  # type: ignore[union-attr]
        opt.step()

    return step


def _time(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_arch(net: Supernet, name: str, arch: ArchConfig, x: Tensor, y: Tensor, repeats: int, warmup: int,
               budget_s: float) -> Row:
    static = net.to_static(arch).train()
    sup = _step_fn(lambda t: net(t, arch), list(net.parameters()), x, y)
    sta = _step_fn(static, list(static.parameters()), x, y)
    t_pair = 0.0
    for _ in range(warmup):
        t_pair = _time(sup) + _time(sta)
    # Keep the whole benchmark within its time: large archs get fewer (but at least 5) pairs.
    n = max(5, min(repeats, int(budget_s / max(t_pair, 1e-9))))
    ts_sup: list[float] = []
    ts_sta: list[float] = []
    for i in range(n):
        # ABBA: alternate which path goes first, so a drift in load does not favour one
        if i % 2 == 0:
            ts_sup.append(_time(sup))
            ts_sta.append(_time(sta))
        else:
            ts_sta.append(_time(sta))
            ts_sup.append(_time(sup))
    return Row(name, arch, n, ts_sup, ts_sta)


def _archs(space: SearchSpace, seed: int) -> list[tuple[str, ArchConfig]]:
    rng = random.Random(seed)
    out = [("largest", space.largest()), ("smallest", space.smallest())]
    out += [(f"random-{i}", space.sample(rng)) for i in range(3)]
    return out


def _describe(a: ArchConfig) -> str:
    """Compact arch: depths, widths, per-stage ratios (blocks split by commas), exit count."""
    def num(v: float) -> str:
        return f"{v:g}".lstrip("0") if 0 < v < 1 else f"{v:g}"

    ratios = " / ".join(",".join(num(r) for r in row) for row in a.ratios)
    return (f"d={''.join(map(str, a.depths))} w={','.join(num(w) for w in a.widths)} "
            f"r={ratios} exits={a.num_exits}")


def _table(rows: list[Row]) -> str:
    head = ("| arch | config | pairs | supernet ms (median ± IQR) | static ms (median ± IQR) | ratio "
            "| paired ratio |\n|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        ms = [1e3 * statistics.median(r.sup), 1e3 * _iqr(r.sup), 1e3 * statistics.median(r.sta), 1e3 * _iqr(r.sta)]
        flag = "" if r.ratio <= TARGET else " ⚠"
        lines.append(f"| {r.name} | {_describe(r.arch)} | {r.repeats} | {ms[0]:.1f} ± {ms[1]:.1f} "
                     f"| {ms[2]:.1f} ± {ms[3]:.1f} | {r.ratio:.3f}{flag} | {r.paired:.3f} |")
    return "\n".join(lines)


def _contention_note(load: tuple[str, str]) -> str:
    """A warning when other jobs shared the cores (1-min load above the torch thread count)."""
    try:
        busy = max(float(v.split()[0]) for v in load) > torch.get_num_threads()
    except (ValueError, IndexError):
        return ""
    if not busy:
        return ""
    return (" The cores were shared with other jobs during this run (1-min load above the thread count): "
            "threads then wait on each other at every op, which inflates per-op overhead and the spread, "
            "so these ratios are noisy; rerun on an idle machine before trusting a row.")


def _section(rows: list[Row], args: argparse.Namespace, wall_s: float, load: tuple[str, str]) -> str:
    worst = max(r.ratio for r in rows)
    verdict = "meets" if worst <= TARGET else "misses"
    return "\n".join([
        SECTION,
        "",
        f"One training step (forward of the arch's exits + summed CE + backward + SGD step), batch {args.batch}, "
        f"32×32×3 inputs, space `msr-resnet` channels (32, 64, 128), depths (1–4), widths (.5, .75, 1), "
        f"ratios (0–1), heads (linear, msdnet); supernet and `to_static` steps interleaved, "
        f"{args.warmup} warm-up pairs; ratio = median supernet / median static; target ≤ {TARGET}.",
        "",
        f"- {environment_line(environment())}",
        f"- 1/5/15-min load average {load[0]} at start, {load[1]} at end; benchmark wall time {wall_s:.0f} s",
        "",
        _table(rows),
        "",
        f"Worst ratio {worst:.3f}: {verdict} the ≤ {TARGET} target." + _contention_note(load),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="interleaved supernet/static pairs per arch (most)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up pairs per arch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the random archs and of the weights")
    p.add_argument("--budget-s", type=float, default=25.0, help="timed seconds per arch (caps the pairs, min 5)")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not update {RESULTS.name}")
    p.add_argument("--device", default="cpu", help="cpu: elastic overhead per arch; cuda: the sandwich step")
    p.add_argument("--sandwich", action="store_true", help="measure the sandwich step on this device")
    p.add_argument("--batches", default=None, help="sandwich batch sizes, comma-separated "
                   "(default 256,1024,2048 on a GPU, 32,64 on a CPU)")
    p.add_argument("--equal-time", type=float, default=0.0, metavar="S",
                   help="also train S seconds per batch size on CIFAR-10 and compare validation accuracy")
    p.add_argument("--data-root", default=None, help="cifar10-jpeg tar or folder for --equal-time")
    args = p.parse_args(argv)
    if args.sandwich or args.device != "cpu":
        return sandwich_main(args)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0, load0 = time.perf_counter(), loadavg()
    space = build_space("msr-resnet", in_channels=3, num_classes=10, channels=(32, 64, 128))
    net = Supernet(space).train()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    rows = []
    for name, arch in _archs(space, args.seed):
        row = bench_arch(net, name, arch, x, y, args.repeats, args.warmup, args.budget_s)
        rows.append(row)
        print(f"{name:<9} {_describe(arch):<56} supernet {1e3 * statistics.median(row.sup):8.1f} ms  "
              f"static {1e3 * statistics.median(row.sta):8.1f} ms  ratio {row.ratio:.3f} (paired {row.paired:.3f})",
              flush=True)
    text = _section(rows, args, time.perf_counter() - t0, (load0, loadavg()))
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, text.split("\n", 1)[1])
        print(f"wrote section to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
