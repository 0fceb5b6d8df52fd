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


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # The tensors in the tests are tiny, and with two threads every op waits at an OpenMP
    # barrier for a thread that another process on the same two cores may hold: measured
    # 20 ms instead of 0.07 ms per 8-channel conv.
    torch.set_num_threads(1)
