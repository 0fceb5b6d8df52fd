"""Latency on the target device: a lookup table per block choice and head, at batch size 1.

``exitnas profile`` measures every block choice (stage, first block or not, input and output
channels, 5×5 ratio), the stem, every exit head and the exit decision (confidence, compare,
drop the samples that left), with warm-up, synchronisation and repeats, and stores mean,
spread and count with the device, torch version and date. An arch's latency of leaving at
exit k is then a sum of table entries, and expected latency is Σ_k P(exit k)·latency_k —
the same arithmetic as expected MACs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from exitnas._errors import UserError
from exitnas.search_space import ArchConfig, SearchSpace, StaticNet, Supernet

__all__ = ["LatencyTable", "profile_space", "time_call", "LUT_FORMAT"]

LUT_FORMAT = 1


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 10, repeats: int = 30,
              inner: int = 5) -> dict[str, float]:
    """Median, mean and spread (IQR) of one call, in milliseconds.

    Each of ``repeats`` samples times ``inner`` back-to-back calls (synchronised on CUDA),
    after ``warmup`` untimed calls.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "mean_ms": statistics.fmean(samples),
            "iqr_ms": q[2] - q[0], "count": len(samples) * inner}


def _block_key(s: int, first: bool, c_in: int, c_out: int, r: float) -> str:
    return f"block|s{s}|{'first' if first else 'rest'}|{c_in}>{c_out}|r{r:g}"


def _head_key(head: str, s: int, c: int) -> str:
    return f"head|{head}|s{s}|{c}"


@dataclass(frozen=True)
class LatencyTable:
    """Measured latencies (ms) by op key, with where and when they were measured."""

    entries: dict[str, dict[str, float]]
    space: dict[str, Any]
    image_size: int
    device: str
    device_name: str
    torch_version: str
    date: str
    stat: str = "median_ms"
    context_factor: float = 1.0

    def ms(self, key: str) -> float:
        try:
            return float(self.entries[key][self.stat])
        except KeyError:
            raise UserError(f"latency table has no entry {key!r}; profile this search space again") from None

    def exit_latency(self, space: SearchSpace, arch: ArchConfig) -> list[float]:
        """Cumulative ms of leaving at each exit: stem + blocks so far + heads and decisions so far."""
        if space.to_dict() != self.space:
            raise UserError("latency table was measured for another search space; run exitnas profile for this one")
        modules = self._module_latency(space, arch)
        decision = self.ms("decision")
        return [self.context_factor * m + decision * (k + 1) for k, m in enumerate(modules)]

    def _module_latency(self, space: SearchSpace, arch: ArchConfig) -> list[float]:
        """Cumulative ms of stem, blocks and heads up to each exit, as measured in isolation."""
        out, total = [], self.ms(f"stem|{space.stage_channels(0, arch.widths[0])}")
        exits = dict(zip(arch.exits, arch.heads))
        c_in = space.stage_channels(0, arch.widths[0])
        for s, d in enumerate(arch.depths):
            c = space.stage_channels(s, arch.widths[s])
            for b in range(d):
                total += self.ms(_block_key(s, b == 0, c_in, c, arch.ratios[s][b]))
                c_in = c
                if (s, b) in exits:
                    total += self.ms(_head_key(exits[s, b], s, c))
                    out.append(total)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": LUT_FORMAT, "entries": self.entries, "space": self.space, "image_size": self.image_size,
                "device": self.device, "device_name": self.device_name, "torch_version": self.torch_version,
                "date": self.date, "stat": self.stat, "context_factor": self.context_factor}

    def save(self, path: str | Path) -> None:
        from exitnas.training import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"latency table {p} does not exist; make one with exitnas profile")
        try:
            d = json.loads(p.read_text())
            if d.get("format") != LUT_FORMAT:
                raise ValueError("format")
            return cls(d["entries"], d["space"], int(d["image_size"]), d["device"], d["device_name"],
                       d["torch_version"], d["date"], d.get("stat", "median_ms"), float(d.get("context_factor", 1.0)))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"latency table {p} is not an exitnas latency table; make one with exitnas profile") from None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


@torch.no_grad()
def profile_space(space: SearchSpace, image_size: int, device: torch.device, *, warmup: int = 10,
                  repeats: int = 30, inner: int = 5, progress: bool = True, calibration_archs: int = 8) -> LatencyTable:
    """Measure every block choice, stem, head and the exit decision of ``space`` at batch size 1,
    then fit the in-context factor on ``calibration_archs`` whole subnets."""
    supernet = Supernet(space).eval()
    jobs: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    sizes = [image_size]
    for st in space.strides:
        sizes.append((sizes[-1] + st - 1) // st)
    widths = sorted(set(space.width_choices))
    chans = [sorted({space.stage_channels(s, w) for w in widths}) for s in range(space.num_stages)]
    stem_conv, stem_bn = supernet.stem_conv, supernet.stem_bn
    for c0 in chans[0]:
        m = nn.Sequential(stem_conv.to_static(space.in_channels, c0), stem_bn.to_static(c0), nn.ReLU())
        jobs.append((f"stem|{c0}", m, (1, space.in_channels, image_size, image_size)))
    for s in range(space.num_stages):
        ins = chans[s - 1] if s else chans[0]
        for c in chans[s]:
            for r in space.ratio_choices:
                for c_in in (ins if s else [c]):
                    block = supernet.stages[s][0].to_static(c_in, c, r)
                    jobs.append((_block_key(s, True, c_in, c, r), block, (1, c_in, sizes[s], sizes[s])))
                if space.max_depth > 1:
                    block = supernet.stages[s][1].to_static(c, c, r)
                    jobs.append((_block_key(s, False, c, c, r), block, (1, c, sizes[s + 1], sizes[s + 1])))
            for h in space.head_choices:
                head = supernet.heads[f"s{s}b0"][h].to_static(c)
                jobs.append((_head_key(h, s, c), head, (1, c, sizes[s + 1], sizes[s + 1])))
    entries: dict[str, dict[str, float]] = {}
    for key, module, shape in tqdm(jobs, desc=f"profile ({device.type})", unit="op", disable=not progress):
        module = module.to(device).eval()
        x = torch.randn(shape, device=device)
        entries[key] = time_call(lambda: module(x), device, warmup, repeats, inner)
    entries["decision"] = _time_decision(space.num_classes, device, warmup, repeats, inner)
    table = LatencyTable(entries, space.to_dict(), image_size, device.type, _device_name(device), torch.__version__,
                         _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    factor = _context_factor(table, space, supernet, image_size, device, warmup, repeats, inner, calibration_archs)
    return dataclasses.replace(table, context_factor=factor)


def _context_factor(table: LatencyTable, space: SearchSpace, supernet: Supernet, image_size: int,
                    device: torch.device, warmup: int, repeats: int, inner: int, n: int) -> float:
    """Measured ÷ summed-isolated latency of whole subnets (all exits run), median over ``n`` archs.

    Modules timed alone, each on its own warm input, run faster than in a sequence where every
    block meets new activations and weights; this factor, fit on a few calibration archs
    (their own seed), carries that into the table's predictions.
    """
    if n <= 0:
        return 1.0
    rng = random.Random(20_241_129)
    x = torch.randn(1, space.in_channels, image_size, image_size, device=device)
    ratios = []
    for _ in range(n):
        arch = space.sample(rng)
        net = supernet.to_static(arch).to(device).eval()
        measured = time_call(lambda: net(x), device, warmup, repeats, inner)[table.stat]
        ratios.append(measured / table._module_latency(space, arch)[-1])
    return float(statistics.median(ratios))


class _Logits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _time_decision(num_classes: int, device: torch.device, warmup: int, repeats: int, inner: int) -> dict[str, float]:
    """Per-exit cost of StaticNet.early_exit besides its modules: confidence, compare, bookkeeping.

    Timed through the real method on a net whose segments and heads do nothing (the input is
    already logits-shaped), divided by its number of exits; nobody leaves, the common path.
    """
    k = 8
    net = StaticNet([nn.Identity() for _ in range(k)], [_Logits() for _ in range(k)]).to(device).eval()
    logits = torch.randn(1, num_classes, device=device)
    t = torch.full((k - 1,), 2.0, device=device)
    r = time_call(lambda: net.early_exit(logits, t), device, warmup, repeats, inner)
    return {**{key: v / k for key, v in r.items() if key.endswith("_ms")}, "count": r["count"]}
