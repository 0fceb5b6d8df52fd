"""``exitnas search`` on bad input: exit status 2, one line on stderr, nothing written or changed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas.cli import main
from exitnas.search import DIRECTIONS


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect status 2 and one ``exitnas: error:`` line on stderr; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("exitnas: error: ")
    return lines[0]


def test_bad_storage_url(search_args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(search_args("mysql://db.example/x", "--trials", "1"), capsys)
    assert "not a storage URL" in line


def test_unreachable_postgresql(search_args: Callable[..., list[str]], unused_port: int,
                                capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(search_args(f"postgresql://postgres@127.0.0.1:{unused_port}/postgres", "--trials", "1"), capsys)
    assert "cannot be opened" in line or "driver" in line


@pytest.mark.parametrize("case", ["sqlite_ray_workers", "unknown_sampler", "missing_checkpoint_flag",
                                  "missing_checkpoint_config"])
def test_bad_input_writes_no_database(case: str, search_args: Callable[..., list[str]], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    argv = {
        "sqlite_ray_workers": search_args(url, "--backend", "ray", "--workers", "2", "--trials", "2"),
        "unknown_sampler": search_args(url, "--sampler", "annealing", "--trials", "1"),
        "missing_checkpoint_flag": ["search", "--checkpoint", str(tmp_path / "none.pt"), "--storage", url],
        "missing_checkpoint_config": ["search", "--set", f"train.out={tmp_path / 'never'}", "--storage", url],
    }[case]
    line = _fails(argv, capsys)
    hint = {"sqlite_ray_workers": "journal:///", "unknown_sampler": "nsga2", "missing_checkpoint_flag": "none.pt",
            "missing_checkpoint_config": "does not exist"}[case]
    assert hint in line
    assert not db.exists()


def _snapshot(study: optuna.Study) -> tuple[object, ...]:
    trials = [(t.number, t.state, t.values, t.params, t.user_attrs) for t in study.get_trials()]
    return trials, study.directions, study.user_attrs, study.metric_names


def test_existing_study_with_other_objectives_is_left_alone(search_args: Callable[..., list[str]], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    other = optuna.create_study(storage=url, study_name="test", directions=["minimize"])
    other.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=3)
    before = _snapshot(optuna.load_study(study_name="test", storage=url))
    line = _fails(search_args(url, "--trials", "2"), capsys)
    assert "other objectives" in line and "another study name" in line
    study = optuna.load_study(study_name="test", storage=url)
    assert _snapshot(study) == before
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    assert [d.name.lower() for d in study.directions] == ["minimize"]


def test_existing_study_of_another_space_is_left_alone(search_args: Callable[..., list[str]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'space.db'}"
    other = optuna.create_study(storage=url, study_name="test", directions=DIRECTIONS)
    other.set_user_attr("exitnas_space", {"name": "msr-resnet", "channels": [64, 128]})
    before = _snapshot(optuna.load_study(study_name="test", storage=url))
    line = _fails(search_args(url, "--trials", "2"), capsys)
    assert "another search space" in line
    assert _snapshot(optuna.load_study(study_name="test", storage=url)) == before
