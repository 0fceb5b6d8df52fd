"""One rank of the two-process CPU training run of ``test_ddp.py`` (started by torchrun).

Usage: ``torchrun --nproc_per_node=2 --standalone _ddp_worker.py OUT_DIR``. Trains a tiny
supernet on digits with the gloo backend, then writes ``OUT_DIR/rank<r>.json`` with a hash of
that rank's final weights and buffers and the number of checkpoints the rank saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

import exitnas.training._trainer as trainer
from exitnas._config import load_config
from exitnas.search_space import Supernet
from exitnas.training._dist import shutdown_distributed

STEPS = 4


def state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    cfg = load_config(None, [
        "space.channels=[8, 16]", "space.depths=[1, 2]", "space.widths=[0.5, 1.0]",
        "space.ratios=[0.0, 1.0]", "space.heads=[linear, msdnet]",
        "train.batch_size=64", f"train.epochs={STEPS / 20!r}",  # digits: 20 batches of 64 an epoch
        "train.sandwich_random=1", "train.checkpoint_every=2", "train.device=cpu",
        "train.progress=false", f"train.out={out / 'run'}",
    ])

    # Instrumentation only: remember the Supernet this rank trains, and count its saves.
    models: list[Supernet] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: models.append(m) if isinstance(m, Supernet) and not models else None
    )
    saves: list[int] = []
    real_save = trainer.save_checkpoint

    def counting_save(path: Path, state: dict) -> None:
        saves.append(int(state["step"]))
        real_save(path, state)

    trainer.save_checkpoint = counting_save
    result = trainer.train_supernet(cfg)
    hook.remove()

    assert models, "the supernet never ran"
    report = {
        "rank": rank,
        "world": int(os.environ["WORLD_SIZE"]),
        "steps": result.steps,
        "hash": state_hash(models[0].state_dict()),
        "param_hash": state_hash(dict(models[0].named_parameters())),
        "buffer_hash": state_hash(dict(models[0].named_buffers())),
        "saves": saves,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
