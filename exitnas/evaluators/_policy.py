"""Exit policy: threshold vectors → exit per sample, accuracy, expected MACs, histogram.

Pure arithmetic on an :class:`ExitCache`: no network runs. Many threshold vectors are
evaluated at once; for large batches each exit's "confidence ≥ t" sets are precomputed as
bitsets (one row per possible count of leaving samples), so a threshold vector costs a few
word-wise ANDs and popcounts instead of a pass over every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exitnas._errors import UserError
from exitnas.evaluators._cache import ExitCache

__all__ = ["PolicyResult", "ExitPolicy", "check_thresholds", "read_thresholds"]


@dataclass(frozen=True)
class PolicyResult:
    """Results of T threshold vectors.

    Attributes:
        accuracy: T, fraction of samples right at the exit they left at.
        expected_cost: T, mean cost per sample (Σ_k P(exit k)·cost_k), in the unit of the
            policy's costs: MACs by default, ms when the policy was given latencies.
        histogram: T×K, number of samples leaving at each exit.
    """

    accuracy: np.ndarray
    expected_cost: np.ndarray
    histogram: np.ndarray


def check_thresholds(thresholds: np.ndarray | list[float] | tuple[float, ...], num_exits: int) -> np.ndarray:
    """As a T×(K-1) float array; wrong length or values outside [0, 1] → :class:`UserError`.

    +inf is allowed too: it closes its exit ("confidence ≥ inf" never holds, not even at
    confidence 1.0, which a threshold of 1.0 lets out). The budgeted-batch fit closes an exit
    whose quota is 0 this way.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != num_exits - 1:
        got = t.shape[-1] if t.ndim else 0
        raise UserError(f"got {got} thresholds for an arch with {num_exits} exits; "
                        f"give one per non-final exit ({num_exits - 1})")
    if not np.all(((t >= 0) & (t <= 1)) | (t == np.inf)):
        raise UserError("thresholds must lie in [0, 1] (or be inf: a closed exit)")
    return t


def read_thresholds(text: str | None, num_exits: int) -> np.ndarray | None:
    """Comma-separated thresholds (a CLI flag) as one vector, checked; None when not given."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--thresholds {text!r} must be comma-separated numbers") from None
    return check_thresholds(values, num_exits)[0]


class ExitPolicy:
    """The threshold rule "leave at the first exit whose confidence ≥ its threshold" on a cache."""

    def __init__(self, cache: ExitCache, costs: np.ndarray | list[float] | None = None) -> None:
        """``costs``: cumulative cost of each exit (default: the cache's MACs, plus each
        sample's own extra MACs where the cache has them; or e.g. latencies)."""
        self.cache = cache
        self.costs = cache.macs if costs is None else np.asarray(costs, dtype=np.float64)
        self.extra = cache.extra_macs if costs is None else None
        if self.costs.shape != (cache.num_exits,):
            raise ValueError(f"costs must have one entry per exit ({cache.num_exits})")
        self._tables: list[np.ndarray] | None = None

    # -- one vector, per sample ------------------------------------------------------------
    def exits(self, thresholds: np.ndarray | list[float]) -> np.ndarray:
        """Exit index of every sample for one threshold vector."""
        t = check_thresholds(thresholds, self.cache.num_exits)[0]
        c = self.cache.confidence
        hit = np.ones((c.shape[0], c.shape[1]), dtype=bool)
        hit[:-1] = c[:-1] >= t[:, None]
        return hit.argmax(axis=0)

    # -- many vectors -----------------------------------------------------------------------
    def evaluate(self, thresholds: np.ndarray | list[float], method: str = "auto") -> PolicyResult:
        """Accuracy, expected MACs and exit histogram of each threshold vector (T×(K-1))."""
        t = check_thresholds(thresholds, self.cache.num_exits)
        if method == "auto":
            method = "bitset" if len(t) >= 64 and self.extra is None else "dense"
        extra = np.zeros(len(t))
        if method == "dense":
            hist, right, extra = self._dense(t)
        elif method != "bitset":
            raise ValueError(f"unknown method {method!r}")
        elif self.extra is not None:
            raise ValueError("per-sample MACs need the dense method")
        else:
            hist, right = self._bitset(t)
        n = self.cache.num_samples
        return PolicyResult(right.sum(1) / n, (hist @ self.costs + extra) / n, hist)

    def _dense(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Histogram, right answers and summed per-sample extra MACs (T), in chunks of vectors."""
        c, ok = self.cache.confidence, self.cache.correct
        k, n = c.shape
        hists, rights, extras = [], [], []
        for lo in range(0, len(t), 256):
            tc = t[lo : lo + 256]
            hit = np.ones((len(tc), k, n), dtype=bool)
            hit[:, :-1] = c[None, :-1] >= tc[:, :, None]
            first = hit.argmax(axis=1)  # T×N
            onehot = first[:, None, :] == np.arange(k)[None, :, None]  # T×K×N
            hists.append(onehot.sum(2))
            rights.append((onehot & ok[None]).sum(2))
            extras.append(np.zeros(len(tc)) if self.extra is None else
                          np.take_along_axis(self.extra, first, axis=0).sum(1))
        return np.concatenate(hists), np.concatenate(rights), np.concatenate(extras)

    def _build_tables(self) -> list[np.ndarray]:
        c = self.cache.confidence
        n = c.shape[1]
        tables = []
        for k in range(c.shape[0] - 1):
            rank = np.empty(n, dtype=np.int64)
            rank[np.argsort(-c[k], kind="stable")] = np.arange(n)
            rows = []
            for lo in range(0, n + 1, 512):  # chunks keep the bool matrix small
                m = np.arange(lo, min(n + 1, lo + 512))[:, None]
                rows.append(_pack(m > rank[None, :]))
            tables.append(np.concatenate(rows))
        return tables

    def _bitset(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._tables is None:
            self._tables = self._build_tables()
            self._asc = [np.sort(row) for row in self.cache.confidence[:-1]]
            self._ok = [_pack(row[None, :])[0] for row in self.cache.correct]
            self._all = _pack(np.ones((1, self.cache.num_samples), dtype=bool))[0]
        n = self.cache.num_samples
        k = self.cache.num_exits
        hist = np.empty((len(t), k), dtype=np.int64)
        right = np.empty((len(t), k), dtype=np.int64)
        remaining = np.broadcast_to(self._all, (len(t), len(self._all))).copy()
        for j in range(k - 1):
            m = n - np.searchsorted(self._asc[j], t[:, j], side="left")  # samples with conf ≥ t
            leave = self._tables[j][m] & remaining
            hist[:, j] = np.bitwise_count(leave).sum(1)
            right[:, j] = np.bitwise_count(leave & self._ok[j]).sum(1)
            remaining &= ~leave
        hist[:, -1] = np.bitwise_count(remaining).sum(1)
        right[:, -1] = np.bitwise_count(remaining & self._ok[-1]).sum(1)
        return hist, right


def _pack(bits: np.ndarray) -> np.ndarray:
    """Rows of bools → rows of uint64 words (zero-padded)."""
    n = bits.shape[1]
    pad = (-n) % 64
    if pad:
        bits = np.concatenate([bits, np.zeros((bits.shape[0], pad), dtype=bool)], axis=1)
    return np.packbits(bits, axis=1, bitorder="little").view(np.uint64)
