"""A training step on a GPU never waits for it: no host synchronisation, no pageable copy.

A step that reads its loss, copies a pageable CPU tensor, or calls an op whose output size
depends on the data (``nonzero``) stops the host until the GPU catches up: with ~3,000
launches a step the GPU then idles between steps (issue 14 measured kernels busy 23% of the
time). ``torch.cuda.set_sync_debug_mode("error")`` turns each such call into an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exitnas._config import load_config
from exitnas.data import ImageSplits
from exitnas.training._trainer import _Run


def _splits(n: int = 512) -> ImageSplits:
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 10
    return ImageSplits("random", x, y, x[:64], y[:64], x[:64], y[:64], 10, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.gpu
@pytest.mark.parametrize("extra", [[], ["space.gate=emg"], ["space.combine=boost"], ["train.routing=dfs"]])
def test_a_sandwich_step_and_its_batches_never_synchronise(tmp_path: Path, extra: list[str]) -> None:
    cfg = load_config(None, ["train.device=cuda", "train.batch_size=64", "train.progress=false",
                             f"train.out={tmp_path}", *extra])
    run = _Run.open(cfg, _splits())
    batches = run.loader.epoch(0)
    loss = run.step(*next(batches), 0)  # the first step may allocate and autotune
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            loss = loss + run.step(*next(batches), step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.is_cuda and torch.isfinite(loss)
