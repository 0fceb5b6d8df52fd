from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pytest
import torch

TINY = ["--set", "data.name=digits", "--set", "space.channels=[8,16]", "--set", "space.depths=[1,2]",
        "--set", "space.widths=[0.5,1.0]", "--set", "space.ratios=[0.0,1.0]", "--set", "train.epochs=1",
        "--set", "train.batch_size=128", "--set", "train.device=cpu", "--set", "train.progress=false"]


def _fast_dir(fallback: Path) -> Path:
    """A folder on tmpfs when there is one: SQLite and Optuna's journal fsync every commit, and on
    this machine's disk that costs ~20 ms each (a 20-trial search makes ~800): 29 s instead of 8 s."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path(tempfile.mkdtemp(prefix="exitnas-results-", dir="/dev/shm"))
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    d = _fast_dir(tmp_path / "fast")
    yield d
    if d != tmp_path / "fast":
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class SearchedStudy:
    root: Path
    storage: str
    checkpoint: Path
    study: str = "exitnas"


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchedStudy]:
    """A tiny supernet trained on digits and searched for 20 trials, through the CLI (in process)."""
    from exitnas.cli import main

    torch.set_num_threads(1)
    fallback = tmp_path_factory.mktemp("searched")
    root = _fast_dir(fallback)
    run = root / "run"
    assert main(["train", *TINY, "--set", f"train.out={run}"]) == 0
    storage = f"sqlite:///{run / 'study.db'}"
    assert main(["search", *TINY, "--set", f"train.out={run}", "--checkpoint", str(run / "supernet.pt"),
                 "--storage", storage, "--trials", "20", "--set", "search.progress=false",
                 "--set", "search.recal_images=500"]) == 0
    yield SearchedStudy(root, storage, run / "supernet.pt")
    if root != fallback:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_study(fast_tmp: Path) -> Callable[..., tuple[str, optuna.Study]]:
    """A hand-made exitnas-shaped study: ``values`` (accuracy, MMACs) per trial, optional constraints."""

    def make(values: list[tuple[float, float]], constraints: list[float] | None = None, name: str = "s",
             url: str | None = None, attrs: dict[str, Any] | None = None) -> tuple[str, optuna.Study]:
        from optuna.distributions import FloatDistribution

        from exitnas._storage import open_storage

        url = url or f"sqlite:///{fast_tmp / 'hand.db'}"
        study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name=name,
                                    directions=["maximize", "minimize"])
        for i, v in enumerate(values):
            system = {"constraints:budget": constraints[i]} if constraints is not None else {}
            study.add_trial(optuna.trial.create_trial(
                values=list(v), params={"thr_0_0": 0.5}, distributions={"thr_0_0": FloatDistribution(0, 1)},
                user_attrs={"tag": i, **(attrs or {})}, system_attrs=system))
        return url, study

    return make
