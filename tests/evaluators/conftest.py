from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from exitnas.evaluators import ExitCache
from exitnas.search_space import ArchConfig, SearchSpace, build_space


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Overrides the root fixture of the same name: the tensors here are tiny, and a second
    # OpenMP thread on a shared two-core machine only adds barrier waits.
    torch.set_num_threads(1)


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
    conf = rng.random((k, n))
    if ties:
        conf = np.round(conf * 8) / 8  # 9 distinct values: plenty of ties, and 0 and 1 themselves
    correct = rng.random((k, n)) < 0.3 + 0.6 * conf
    macs = np.cumsum(rng.integers(1, 100, size=k)).astype(np.float64)
    return _make_cache(conf, correct, macs)


def _tiny_space(**overrides: object) -> SearchSpace:
    opts: dict[str, object] = dict(channels=(8, 16), depths=(1, 2), widths=(0.5, 1.0), ratios=(0.0, 1.0),
                                   heads=("linear", "msdnet"))
    opts.update(overrides)
    return build_space("msr-resnet", in_channels=1, num_classes=10, **opts)


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


@pytest.fixture
def tiny_space() -> Callable[..., SearchSpace]:
    return _tiny_space
