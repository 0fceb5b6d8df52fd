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


# 3 exits × 6 samples, the cache the policy and protocol tests compute their answers on by hand.
# Confidences are binary fractions, so float32 storage is exact and a threshold equal to a
# confidence means exactly that value.
HAND_CONF = [
    [0.875, 0.25, 0.625, 0.5, 0.9375, 0.125],
    [0.375, 0.75, 0.6875, 0.4375, 1.0, 0.5],
    [0.5, 0.875, 0.8125, 0.625, 1.0, 0.6875],
]
HAND_CORRECT = [
    [1, 0, 0, 1, 1, 0],
    [0, 1, 1, 0, 1, 0],
    [1, 1, 0, 1, 1, 0],  # sample 5 is never right
]
HAND_MACS = [1, 2, 4]


@pytest.fixture
def hand_cache() -> ExitCache:
    return _make_cache(HAND_CONF, HAND_CORRECT, HAND_MACS)


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
