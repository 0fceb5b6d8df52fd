from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu); none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _mid_gap(conf: torch.Tensor) -> torch.Tensor:
    """A threshold near the median but in the widest gap between the middle confidences, so
    folding BatchNorm (outputs equal up to ~1e-6) cannot move a sample across it."""
    c = conf.sort().values
    n = len(c)
    lo, hi = n // 4, 3 * n // 4
    i = lo + int((c[lo + 1 : hi + 1] - c[lo:hi]).argmax())
    return (c[i] + c[i + 1]) / 2


@pytest.fixture
def mid_gap():  # type: ignore[no-untyped-def]
    """``mid_gap(confidences)``: a threshold about half the samples pass, safe from rounding."""
    return _mid_gap


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # The tensors in the tests are tiny, and with two threads every op waits at an OpenMP
    # barrier for a thread that another process on the same two cores may hold: measured
    # 20 ms instead of 0.07 ms per 8-channel conv.
    torch.set_num_threads(1)
