from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Overrides the root fixture of the same name. The tensors here are tiny, and with two
    # threads every op waits at an OpenMP barrier for a thread that another process on the
    # same two cores may hold: measured 20 ms instead of 0.07 ms per 8-channel conv.
    torch.set_num_threads(1)
