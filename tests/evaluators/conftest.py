from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from exitnas.data import DataConfig, ImageSplits, load_dataset
from exitnas.evaluators import ExitCache
from exitnas.search_space import ArchConfig, SearchSpace, build_space


def _chain_arch(k: int) -> ArchConfig:
    """A shape-valid arch with ``k`` exits (one stage of ``k`` blocks, an exit at each)."""
    return ArchConfig("msr-resnet", (k,), (1.0,), ((0.0,) * k,), tuple((0, b) for b in range(k)), ("linear",) * k)


def _make_cache(confidence: list[list[float]] | np.ndarray, correct: list[list[int]] | np.ndarray,
               macs: list[float] | np.ndarray, arch: ArchConfig | None = None) -> ExitCache:
    conf = np.asarray(confidence, dtype=np.float32)
    return ExitCache(arch or _chain_arch(conf.shape[0]), conf, np.asarray(correct, dtype=bool),
                     np.asarray(macs, dtype=np.float64))


def _random_cache(rng: np.random.Generator, k: int, n: int, ties: bool = True) -> ExitCache:
    """Random confidences (with many ties when ``ties``), correctness that tends to follow
    confidence, and increasing cumulative MACs."""
    if ties:
        conf = np.round(rng.random((k, n)) * 8) / 8  # 9 values: plenty of ties, and 0 and 1 themselves
    else:  # distinct within each exit, also after the cast to float32
        conf = (np.stack([rng.permutation(n) for _ in range(k)]) + rng.random((k, 1))) / (n + 1)
    correct = rng.random((k, n)) < 0.3 + 0.6 * conf
    macs = np.cumsum(rng.integers(1, 100, size=k)).astype(np.float64)
    return _make_cache(conf, correct, macs)


# Helpers as fixtures: with --import-mode=importlib test modules cannot import conftest.
@pytest.fixture
def chain_arch() -> Callable[[int], ArchConfig]:
    return _chain_arch


@pytest.fixture
def make_cache() -> Callable[..., ExitCache]:
    return _make_cache


@pytest.fixture
def random_cache() -> Callable[..., ExitCache]:
    return _random_cache


# Shared by the evaluator and recalibration tests: digits and a tiny space.
@pytest.fixture(scope="module")
def splits() -> ImageSplits:
    return load_dataset(DataConfig())


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=("linear", "msdnet"))
