"""Latency on the target device: a lookup table per block choice and head, at batch size 1.

``exitnas profile`` measures every block choice (stage, first block or not, input and output
channels, 5×5 ratio), the stem (with the input normalisation), every exit head and the exit
decision (confidence, compare, drop the samples that left), with warm-up, synchronisation and
repeats, and stores mean, spread and count with the device, torch version and date. Each is
timed as it runs in the exported model: BatchNorm folded, channels-last, frozen TorchScript
(``exitnas.runtime.deploy``), so the table predicts the deployed runtime, not eager PyTorch.

An arch's latency of leaving at exit k is then a sum of table entries (each less the fixed
cost of calling a deployed module, which the whole model pays once), plus the early-exit
loop's own cost, and expected latency is Σ_k P(exit k)·latency_k — the same arithmetic as
expected MACs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from exitnas._errors import ExitnasWarning, UserError
from exitnas.runtime import DEPLOYED_POLICIES, FEATURES, Normalise, channels_last, deploy, deploy_early_exit
from exitnas.search_space import ArchConfig, GeometricEnsemble, SearchSpace, StaticNet, Supernet

__all__ = ["LUT_FORMAT", "NOISE_WARN", "RUNTIME", "LatencyTable", "measure_noise", "profile_space", "time_call",
           "warn_if_noisy"]

#: Format 2: entries timed through the deployed runtime, with ``call``, ``early_exit``,
#: ``leave`` and ``decision`` entries. Format 1 tables timed eager modules and are refused.
LUT_FORMAT = 2
#: What the table's entries were timed as (``exitnas.runtime.deploy``).
RUNTIME = "BatchNorm folded, channels-last, frozen TorchScript"
#: The statistic an entry's noise is measured against.
TIMED_STAT = "median_ms"
#: Noise above this share of the median (spread of the repeats, or one op timed again) is warned about;
#: on an idle machine both stay near a few percent.
NOISE_WARN = 0.15


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
    runtime: str = RUNTIME
    noise: dict[str, float] = dataclasses.field(default_factory=dict)

    def ms(self, key: str) -> float:
        try:
            return float(self.entries[key][self.stat])
        except KeyError:
            raise UserError(f"latency table has no entry {key!r}; profile this search space again") from None

    def exit_latency(self, space: SearchSpace, arch: ArchConfig, policy: str = "threshold") -> list[float]:
        """Ms of leaving at each exit: the early-exit loop's own cost (of reaching the final
        exit, or of leaving before it), one decision per exit passed (the exit ``policy``'s:
        ``decision|<policy>`` where it is not ``threshold``), and stem + blocks + heads so far
        (times the in-context factor)."""
        _check_static(space)
        if not space.matches(self.space):
            raise UserError("latency table was measured for another search space; run exitnas profile for this one")
        modules = self._module_latency(space, arch)
        final, leave = self.ms("early_exit"), self.ms("leave")
        decision = self.ms("decision" if policy == "threshold" else f"decision|{policy}")
        last = len(modules) - 1
        return [self.context_factor * m + (final if k == last else leave) + decision * k
                for k, m in enumerate(modules)]

    def _module_latency(self, space: SearchSpace, arch: ArchConfig) -> list[float]:
        """Cumulative ms of stem, blocks and heads up to each exit, as measured in isolation,
        each less the cost of calling a deployed module (inside one model it is paid once)."""
        call = self.ms("call")
        out, total = [], self.ms(f"stem|{space.stem_channels(arch)}") - call
        for blk in space.walk(arch):
            total += self.ms(_block_key(blk.stage, blk.first, blk.c_in, blk.c_out, blk.ratio)) - call
            if blk.head is not None:
                total += self.ms(_head_key(blk.head, blk.stage, blk.c_out)) - call
                out.append(total)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": LUT_FORMAT, "entries": self.entries, "space": self.space, "image_size": self.image_size,
                "device": self.device, "device_name": self.device_name, "torch_version": self.torch_version,
                "date": self.date, "stat": self.stat, "context_factor": self.context_factor, "runtime": self.runtime,
                "noise": self.noise}

    def save(self, path: str | Path) -> None:
        from exitnas._io import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"latency table {p} does not exist; make one with exitnas profile")
        try:
            d = json.loads(p.read_text())
            fmt = d.get("format")
        except (ValueError, AttributeError):
            fmt = None
        if fmt == 1:
            raise UserError(f"latency table {p} is format 1 (timed eager PyTorch, not the deployed runtime); "
                            "profile again with exitnas profile")
        try:
            if fmt != LUT_FORMAT:
                raise ValueError("format")
            table = cls(d["entries"], d["space"], int(d["image_size"]), d["device"], d["device_name"],
                        d["torch_version"], d["date"], d.get("stat", "median_ms"), float(d["context_factor"]),
                        str(d["runtime"]), dict(d.get("noise", {})))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"latency table {p} is not an exitnas latency table; "
                            "make one with exitnas profile") from None
        problem = table._problem()
        if problem:
            raise UserError(f"latency table {p} {problem}; make it again with exitnas profile")
        return table

    def _problem(self) -> str | None:
        """What makes a loaded table unusable (None: nothing): every entry's statistic must be a
        finite, non-negative number of ms, and the in-context factor a finite positive one."""
        if not isinstance(self.entries, dict) or not isinstance(self.space, dict):
            return "has no entries or no space"
        for key, entry in self.entries.items():
            value = entry.get(self.stat) if isinstance(entry, dict) else None
            if not _is_ms(value):
                return f"has a bad {self.stat} for {key!r} ({value!r}; expected a number of ms ≥ 0)"
        if not (_is_ms(self.context_factor) and self.context_factor > 0) or self.image_size <= 0:
            return f"has a bad context_factor ({self.context_factor!r}) or image_size ({self.image_size!r})"
        return None


def _is_ms(value: Any) -> bool:
    """A finite, non-negative number (not a bool, not a string of digits)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


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


def _check_static(space: SearchSpace) -> None:
    if space.gate != "none":
        raise UserError(f"latency tables time fixed blocks, but space.gate {space.gate!r} changes a block's "
                        "cost per input; search space.gate emg with search.objective macs")


@torch.no_grad()
def profile_space(space: SearchSpace, image_size: int, device: torch.device, *, warmup: int = 10,
                  repeats: int = 30, inner: int = 5, progress: bool = True, calibration_archs: int = 8) -> LatencyTable:
    """Measure every block choice, stem, head and the exit decision of ``space`` at batch size 1,
    each through the deployed runtime, then fit the in-context factor on ``calibration_archs``
    whole subnets."""
    _check_static(space)
    supernet = Supernet(space).eval()
    jobs: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    sizes = [image_size]
    for st in space.strides:
        sizes.append((sizes[-1] + st - 1) // st)
    widths = sorted(set(space.width_choices))
    chans = [sorted({space.stage_channels(s, w) for w in widths}) for s in range(space.num_stages)]
    stem_conv, stem_bn = supernet.stem_conv, supernet.stem_bn
    normalise = Normalise([0.5] * space.in_channels, [0.25] * space.in_channels)
    for c0 in chans[0]:
        m = nn.Sequential(normalise, stem_conv.to_static(space.in_channels, c0), stem_bn.to_static(c0), nn.ReLU())
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
    jobs.append(("call", nn.Identity(), (1, chans[0][0], image_size, image_size)))
    entries: dict[str, dict[str, float]] = {}
    for key, module, shape in tqdm(jobs, desc=f"profile ({device.type})", unit="op", disable=not progress):
        entries[key] = time_call(_deployed_call(module, shape, device), device, warmup, repeats, inner)
    entries.update(_time_early_exit(space, device, warmup, repeats, inner))
    # The first op timed once more, at the end: a machine whose load changed meanwhile shows here.
    key, module, shape = jobs[0]
    again = time_call(_deployed_call(module, shape, device), device, warmup, repeats, inner)[TIMED_STAT]
    noise = measure_noise(entries, entries[key][TIMED_STAT], again)
    warn_if_noisy(noise)
    table = LatencyTable(entries, space.to_dict(), image_size, device.type, _device_name(device), torch.__version__,
                         _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), noise=noise)
    factor = _context_factor(table, space, supernet, image_size, device, warmup, repeats, inner, calibration_archs)
    return dataclasses.replace(table, context_factor=factor)


def _deployed_call(module: nn.Module, shape: tuple[int, ...], device: torch.device) -> Callable[[], Any]:
    deployed = deploy(module.to(device).eval())
    x = channels_last(torch.randn(shape, device=device))  # what the op before it hands on
    return lambda: deployed(x)


def measure_noise(entries: dict[str, dict[str, float]], first: float, again: float) -> dict[str, float]:
    """How far a table's own timings can be trusted: the median over entries of spread ÷ median
    (IQR of the repeats), and the change of one op timed at the start and again at the end."""
    spreads = [e["iqr_ms"] / e[TIMED_STAT] for e in entries.values() if e.get(TIMED_STAT, 0) > 0 and "iqr_ms" in e]
    return {"median_relative_iqr": float(statistics.median(spreads)) if spreads else 0.0,
            "repeat_change": abs(again - first) / first if first > 0 else 0.0}


def warn_if_noisy(noise: dict[str, float], limit: float = NOISE_WARN) -> None:
    """Warn when either noise figure is above ``limit`` (a share of the median)."""
    spread, change = noise.get("median_relative_iqr", 0.0), noise.get("repeat_change", 0.0)
    if max(spread, change) > limit:
        warnings.warn(f"the latency timings are noisy (spread {spread:.0%} of the median; one op timed again "
                      f"{change:.0%} off): is the machine busy? profile again when it is idle, or with fewer "
                      "--threads", ExitnasWarning, stacklevel=2)


def _context_factor(table: LatencyTable, space: SearchSpace, supernet: Supernet, image_size: int,
                    device: torch.device, warmup: int, repeats: int, inner: int, n: int) -> float:
    """Measured ÷ summed-isolated module latency of whole deployed subnets, median over ``n`` archs.

    Each subnet runs as the exported model does, with thresholds no sample reaches (every
    exit runs); the loop's own cost (``early_exit``, ``decision``) is taken off before
    dividing. Modules timed alone, each on its own warm input, run a little faster than in a
    sequence where every block meets new activations and weights; this factor, fit on a few
    calibration archs (their own seed), carries that into the table's predictions.
    """
    if n <= 0:
        return 1.0
    rng = random.Random(20_241_129)
    x = torch.rand(1, space.in_channels, image_size, image_size, device=device)
    c = space.in_channels
    ratios = []
    for _ in range(n):
        arch = space.sample(rng)
        k = arch.num_exits
        model = deploy_early_exit(supernet.to_static(arch).to(device).eval(), [2.0] * (k - 1),
                                  mean=[0.5] * c, std=[0.25] * c)
        measured = time_call(lambda: model(x), device, warmup, repeats, inner)[table.stat]
        loop = table.ms("early_exit") + table.ms("decision") * (k - 1)
        ratios.append((measured - loop) / table._module_latency(space, arch)[-1])
    return float(statistics.median(ratios))


class _Logits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _time_early_exit(space: SearchSpace, device: torch.device, warmup: int, repeats: int,
                     inner: int) -> dict[str, dict[str, float]]:
    """The deployed early-exit loop's own cost besides its modules, at batch size 1.

    Timed on nets whose segments and heads do nothing (the input is already logits-shaped):
    ``early_exit`` is a one-exit net's run (the call, set-up, the final exit); ``leave`` is
    a two-exit net's whose image leaves at exit 0 (the call, set-up, a decision that leaves);
    ``decision`` is each further exit passed (confidence, compare, the combiner if the space
    has one), from 1 and ``k`` = 8 exits that nobody leaves.
    """
    k = 8
    logits = torch.randn(1, space.num_classes, device=device)
    times = []
    for n, threshold in ((1, 2.0), (2, 0.0), (k, 2.0)):
        model = deploy_early_exit(_identity_net(space, n).to(device), [threshold] * (n - 1))
        times.append(time_call(lambda: model(logits), device, warmup, repeats, inner))
    one, leave, many = times
    out = {"early_exit": one, "leave": leave, "decision": _per_decision(many, one, k)}
    for policy in DEPLOYED_POLICIES[1:]:  # each exit policy's own decision, the same way
        model = deploy_early_exit(_identity_net(space, k).to(device), [2.0] * (k - 1), policy=policy,
                                  params=_timing_params(k, space.num_classes))
        out[f"decision|{policy}"] = _per_decision(time_call(lambda: model(logits), device, warmup, repeats, inner),
                                                  one, k)
    return out


def _per_decision(many: dict[str, float], one: dict[str, float], k: int) -> dict[str, float]:
    """The time of one decision: ``k`` exits that nobody leaves, less the one-exit run, over ``k - 1``."""
    per = {key: max(many[key] - one[key], 0.0) / (k - 1) for key in ("median_ms", "mean_ms")}
    return {**per, "iqr_ms": many["iqr_ms"] / (k - 1), "count": many["count"]}


def _timing_params(k: int, num_classes: int) -> dict[str, list]:
    """Fitted-state stand-ins of every policy for ``k`` exits: timing does not depend on the values
    (the ensemble's weights are all used: exit j's answer sums exits 0..j, as a fitted one can)."""
    model = [0.0] * FEATURES + [1.0] * FEATURES + [0.0] * (FEATURES + 1)
    return {"temperatures": [1.0] * k, "models": [model] * (k - 1),
            "weight": [[1.0] * k for _ in range(k)], "bias": [[0.0] * num_classes for _ in range(k)]}


def _identity_net(space: SearchSpace, n: int) -> StaticNet:
    segments: list[nn.Module] = [nn.Identity() for _ in range(n)]
    heads: list[nn.Module] = [_Logits() for _ in range(n)]
    from exitnas.search_space import COMBINERS

    # The combiner runs at every exit but the first (see search_space/_combine.py).
    combiners = [COMBINERS.get("none")(space.num_classes)]
    combiners += [COMBINERS.get(space.combine)(space.num_classes) for _ in range(n - 1)]
    ensemble = GeometricEnsemble(n, space.num_classes) if space.ensemble == "geometric" else None
    return StaticNet(segments, heads, combiners, ensemble)
