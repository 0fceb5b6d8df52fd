"""``ExitCache``: per exit, each sample's confidence and correctness, from one pass."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from exitnas._confidence import confidence
from exitnas.data import normalize
from exitnas.search_space import ArchConfig, RingMacs, StaticNet

__all__ = ["ExitCache", "build_exit_cache", "ExitCacheStore"]


@dataclass(frozen=True, eq=False)
class ExitCache:
    """Everything a threshold rule needs about one arch on one split.

    Attributes:
        arch: The architecture.
        confidence: K×N float32, confidence of exit k on sample n (in [0, 1]).
        correct: K×N bool, whether exit k's prediction for sample n is right.
        macs: K cumulative MACs of leaving at exit k (what every sample pays).
        kind: Confidence measure (``maxprob`` or ``entropy``).
        extra_macs: K×N further cumulative MACs of sample n leaving at exit k, for nets whose
            cost depends on the input (EMGNet's gate, see ``search_space._gate``); None if none.
        logits: K×N×C float16 logits of every exit, for exit policies that need more than one
            confidence per exit (``evaluators._policies``); None in caches built before them.
        labels: N true classes (temperature calibration fits them); None in older caches.
    """

    arch: ArchConfig
    confidence: np.ndarray
    correct: np.ndarray
    macs: np.ndarray
    kind: str = "maxprob"
    extra_macs: np.ndarray | None = None
    logits: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def num_exits(self) -> int:
        return int(self.confidence.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.confidence.shape[1])

    def exit_macs(self) -> np.ndarray:
        """Mean MACs of leaving at each exit (``macs`` plus the mean per-sample extra)."""
        if self.extra_macs is None:
            return self.macs
        return self.macs + self.extra_macs.mean(axis=1)

    def exit_accuracy(self) -> np.ndarray:
        """Accuracy of each exit if every sample left there (the anytime curve)."""
        return self.correct.mean(axis=1)

    def save(self, path: str | Path) -> None:
        from exitnas._io import atomic_write_bytes

        buf = io.BytesIO()
        extra = {} if self.extra_macs is None else {"extra_macs": self.extra_macs}
        for name in ("logits", "labels"):
            if getattr(self, name) is not None:
                extra[name] = getattr(self, name)
        np.savez(buf, confidence=self.confidence, correct=self.correct, macs=self.macs,
                 arch=np.array(self.arch.to_json()), kind=np.array(self.kind), **extra)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> ExitCache:
        with np.load(path, allow_pickle=False) as z:
            extra = z["extra_macs"] if "extra_macs" in z.files else None
            logits, labels = (z[k] if k in z.files else None for k in ("logits", "labels"))
            return cls(ArchConfig.from_json(str(z["arch"])), z["confidence"], z["correct"], z["macs"],
                       str(z["kind"]), extra, logits, labels)


@torch.no_grad()
def build_exit_cache(net: StaticNet, arch: ArchConfig, images: Tensor, labels: Tensor,
                     mean: tuple[float, ...], std: tuple[float, ...], macs: np.ndarray | list[int],
                     kind: str = "maxprob", batch_size: int = 1000,
                     device: torch.device | str = "cpu") -> ExitCache:
    """One pass of ``net`` over ``images`` (uint8) → an :class:`ExitCache`.

    ``macs`` are the costs every sample pays; a net with gates adds each sample's own rings
    (``extra_macs``), counted as if it ran alone (batch size 1).
    """
    net.eval()
    conf, correct, extra, logits = [], [], [], []
    with RingMacs(list(net.segments)) as rings:
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
            y = labels[i : i + batch_size].to(device)
            outs = net(x)
            conf.append(torch.stack([confidence(z, kind) for z in outs]).cpu())
            correct.append(torch.stack([z.argmax(-1) == y for z in outs]).cpu())
            logits.append(torch.stack(outs).to(torch.float16).cpu())
            extra.append(rings.take(len(y)))
    extra_macs = None if extra[0] is None else torch.cat(extra, 1).numpy()
    return ExitCache(arch, torch.cat(conf, 1).numpy().astype(np.float32), torch.cat(correct, 1).numpy(),
                     np.asarray(macs, dtype=np.float64), kind, extra_macs, torch.cat(logits, 1).numpy(),
                     labels.cpu().numpy().astype(np.int64))


#: Bumped when caches gain fields: a file of an older format is not found (rebuilt), never half-read.
#: 2: per-exit logits and the labels.
CACHE_FORMAT = "2"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


class ExitCacheStore:
    """Memo of exit caches keyed by (arch, split, confidence, weights), in memory and on disk."""

    def __init__(self, directory: str | Path | None = None, weights_id: str = "") -> None:
        self.directory = Path(directory) if directory else None
        self.weights_id = weights_id
        self._mem: dict[tuple[ArchConfig, str, str], ExitCache] = {}

    def _path(self, arch: ArchConfig, split: str, kind: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{_digest(arch.to_json(), split, kind, self.weights_id, CACHE_FORMAT)}.npz"

    def get(self, arch: ArchConfig, split: str, kind: str) -> ExitCache | None:
        key = (arch, split, kind)
        if key in self._mem:
            return self._mem[key]
        path = self._path(arch, split, kind)
        if path is not None and path.is_file():
            cache = _load_or_warn(path, arch, kind)
            if cache is not None:
                self._mem[key] = cache
                return cache
        return None

    def put(self, cache: ExitCache, split: str) -> None:
        self._mem[(cache.arch, split, cache.kind)] = cache
        path = self._path(cache.arch, split, cache.kind)
        if path is not None:
            cache.save(path)

    def __len__(self) -> int:
        return len(self._mem)




def _load_or_warn(path: Path, arch: ArchConfig, kind: str) -> ExitCache | None:
    """The cache stored at ``path`` if it is a sound cache of ``arch``; else None and a warning
    (the caller computes it again and overwrites the file: a cache is never worth a crash)."""
    try:
        cache = ExitCache.load(path)
        problem = _cache_problem(cache, arch, kind)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways; any of them is a miss
        problem = f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    if problem is None:
        return cache
    warnings.warn(f"exit cache {path} is {problem}; computing it again", stacklevel=3)
    return None


def _cache_problem(cache: ExitCache, arch: ArchConfig, kind: str) -> str | None:
    """Why a loaded cache cannot stand for ``arch`` (None: it can)."""
    if cache.arch != arch or cache.kind != kind:
        return "of another arch or confidence"
    k = arch.num_exits
    conf, correct, macs = cache.confidence, cache.correct, cache.macs
    if conf.ndim != 2 or conf.shape[0] != k or correct.shape != conf.shape or macs.shape != (k,):
        return "of the wrong shape"
    if conf.dtype.kind != "f" or correct.dtype != np.bool_ or macs.dtype.kind not in "fiu":
        return "of the wrong types"
    if not (np.all((conf >= 0) & (conf <= 1)) and np.all(np.isfinite(macs)) and np.all(macs >= 0)):
        return "out of range (confidence outside [0, 1] or bad MACs)"
    extra = cache.extra_macs
    if extra is not None and (extra.shape != conf.shape or not np.all(np.isfinite(extra))):
        return "of the wrong shape (extra MACs)"
    return None
