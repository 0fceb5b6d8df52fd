"""``exitnas search`` flags are typed values applied to the config (not YAML re-parsed), and
Optuna's log level is the CLI's to set, not the library's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import optuna
import pytest

from exitnas.cli import main
from exitnas.results import load_front


def test_flags_are_applied_as_typed_values(search_args: Callable[..., list[str]], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # "2024" parsed as YAML is an int and was refused as a study name; "1e3" would be a float.
    assert main(search_args(url, "--study", "2024", "--trials", "1", "--gpus-per-worker", "0")) == 0
    assert "Pareto front of study '2024'" in capsys.readouterr().out
    assert optuna.get_all_study_names(url) == ["2024"]
    assert main(search_args(url, "--study", "1e3", "--trials", "1")) == 0
    assert sorted(optuna.get_all_study_names(url)) == ["1e3", "2024"]


def test_a_flag_out_of_range_is_one_line_and_writes_nothing(search_args: Callable[..., list[str]], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "study.db"
    for flag, value in (("--workers", "0"), ("--trials", "0"), ("--gpus-per-worker", "-1"),
                        ("--gpus-per-worker", "nan"), ("--sampler", "nsga3")):
        assert main(search_args(f"sqlite:///{db}", flag, value)) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("exitnas: error: "), lines
        assert "search." + flag[2:].replace("-", "_") in lines[0]
        assert not db.exists()


def test_the_cli_quiets_optuna_and_the_library_leaves_its_level(search_args: Callable[..., list[str]],
                                                                tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        assert main(search_args(url, "--trials", "1")) == 0
        assert optuna.logging.get_verbosity() == logging.WARNING
        optuna.logging.set_verbosity(optuna.logging.INFO)
        load_front(url, "test")  # reads the study through the library: the caller's level stays
        assert optuna.logging.get_verbosity() == logging.INFO
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
