"""The thread policy: a default that does not oversubscribe, set once by every computing command."""

from __future__ import annotations

import os

import pytest
import torch

from exitnas._config import load_config
from exitnas._errors import UserError
from exitnas._threads import default_threads, physical_cores, set_threads
from exitnas.cli import build_parser

COMPUTING = ("train", "search", "evaluate", "report", "export", "retrain", "profile", "demo")


def test_physical_cores_are_at_most_the_allowed_cpus() -> None:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= physical_cores() <= allowed


def test_default_honours_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    for bad in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert default_threads() == physical_cores()


def test_set_threads_sets_torch_and_returns_the_count() -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        assert torch.get_num_interop_threads() >= 1  # set once per process; a later call keeps it
    finally:
        torch.set_num_threads(before)


def test_config_key_is_checked() -> None:
    assert load_config(None, ["train.threads=2"]).train.threads == 2
    assert load_config(None).train.threads is None
    with pytest.raises(UserError, match="train.threads must be >= 1"):
        load_config(None, ["train.threads=0"])


@pytest.mark.parametrize("command", COMPUTING)
def test_every_computing_command_takes_threads(command: str) -> None:
    required = {"evaluate": ["--arch", "largest"], "retrain": ["a/arch.json"], "profile": ["--out", "l.json"],
                "export": ["--storage", "sqlite:///x.db", "--study", "s", "--out", "o"],
                "report": ["--storage", "sqlite:///x.db"]}
    args = build_parser().parse_args([command, *required.get(command, []), "--threads", "1"])
    assert args.threads == 1


def test_threads_flag_is_applied_and_checked(tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> None:
    from exitnas.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["retrain", str(tmp_path), "--threads", "0"]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
        assert main(["retrain", str(tmp_path / "none.json"), "--threads", "2"]) == 2  # no export: one line
        assert torch.get_num_threads() == 2  # applied before the command's work
    finally:
        torch.set_num_threads(before)
