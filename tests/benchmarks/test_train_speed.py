"""``benchmarks/_train_speed``: the figures of the training-speed benchmark (and the GPU check)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _train_speed import _union_us, measure, random_splits, scaled_lr  # noqa: E402


def test_kernel_busy_time_is_the_union_of_intervals() -> None:
    assert _union_us([]) == 0.0
    assert _union_us([(0, 10), (5, 12), (20, 25)]) == 17.0  # overlaps count once, gaps not at all
    assert _union_us([(3, 4), (0, 10)]) == 10.0  # a kernel inside another


def test_learning_rate_scales_linearly_from_256() -> None:
    assert scaled_lr(256) == pytest.approx(0.2) and scaled_lr(1024) == pytest.approx(0.8)


def test_measure_on_the_cpu_gives_every_cpu_figure(tmp_path: Path) -> None:
    sp = measure("cpu", 8, random_splits(64, size=16), tmp_path, steps=2, warmup=1, profiled=1, pairs=1)
    assert sp.batch == 8 and sp.images_per_s > 0 and math.isclose(sp.step_ms, 8e3 / sp.images_per_s)
    assert sp.ops_per_step > 100  # a sandwich step of the default space is thousands of ops
    assert sp.sandwich_ms > 0 and sp.static_ms > 0
    assert sp.kernel_share is None and sp.kernels_per_step is None  # GPU-only figures stay empty
