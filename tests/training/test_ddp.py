"""Two CPU processes under torchrun (gloo) train one supernet: identical weights, one writer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from exitnas.training import load_checkpoint

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _hash(state: dict[str, torch.Tensor]) -> str:
    # the same digest as _ddp_worker.state_hash
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_ranks_end_identical_and_only_rank0_saves(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world"] == 2 for r in reports)
    assert all(r["steps"] == 4 for r in reports)
    assert reports[0]["param_hash"] == reports[1]["param_hash"], "weights diverged: gradients were not averaged"
    assert reports[0]["buffer_hash"] == reports[1]["buffer_hash"], "BN running statistics diverged across ranks"
    assert reports[0]["hash"] == reports[1]["hash"]
    # checkpoint_every=2 over 4 steps: rank 0 saves at 2 and 4, rank 1 never
    assert reports[0]["saves"] == [2, 4] and reports[1]["saves"] == []

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "supernet.pt"]
    state = load_checkpoint(run / "supernet.pt")
    assert state["step"] == 4
    assert _hash(state["model"]) == reports[0]["hash"]
