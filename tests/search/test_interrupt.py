"""Ctrl-C and trial errors: one line on stderr, exit 130, the running trial marked FAIL, the
error's full text in the trial's record (never Optuna's traceback on stderr)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import optuna
import pytest
from optuna.trial import TrialState

from exitnas._errors import UserError
from exitnas._trial_errors import ERROR_ATTR, one_line_trial_errors, recording_errors


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += self.format(record).splitlines()


@pytest.fixture
def optuna_log() -> Iterator[_Lines]:
    """Everything Optuna logs, as the lines its handler would print."""
    one_line_trial_errors()
    handler = _Lines()
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        optuna.logging.set_verbosity(level)


def _fail_with(err: BaseException) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        raise err

    return objective


def test_a_trial_error_is_one_line_and_its_full_text_is_recorded(optuna_log: _Lines) -> None:
    study = optuna.create_study()
    with pytest.raises(ValueError):
        study.optimize(recording_errors(_fail_with(ValueError("bad\nvalue"))), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL
    assert "Traceback" in trial.user_attrs[ERROR_ATTR] and "ValueError: bad" in trial.user_attrs[ERROR_ATTR]
    assert len(optuna_log.lines) == 1, optuna_log.lines
    assert optuna_log.lines[0].startswith("trial 0 failed: ValueError: bad value")
    assert "Traceback" not in optuna_log.lines[0]


@pytest.mark.parametrize("err", [KeyboardInterrupt(), UserError("one line")])
def test_an_error_that_ends_the_search_is_not_logged(optuna_log: _Lines, err: BaseException) -> None:
    """The command line says it (``exitnas: interrupted`` / ``exitnas: error: ...``), once."""
    study = optuna.create_study()
    with pytest.raises(type(err)):
        study.optimize(recording_errors(_fail_with(err)), n_trials=1)
    assert study.trials[0].state == TrialState.FAIL
    assert type(err).__name__ in study.trials[0].user_attrs[ERROR_ATTR]
    assert optuna_log.lines == []


def test_other_optuna_warnings_pass(optuna_log: _Lines) -> None:
    study = optuna.create_study()
    study.optimize(lambda t: float("nan"), n_trials=1)  # a value Optuna refuses: its own one line
    assert len(optuna_log.lines) == 1 and "nan" in optuna_log.lines[0]


def test_ctrl_c_during_search(search_args: Callable[..., list[str]], tmp_path: Path, env: dict[str, str]) -> None:
    log = tmp_path / "study.log"
    url = f"journal:///{log}"
    argv = search_args(url, "--trials", "500", "--set", "search.recal_images=1000")
    proc = subprocess.Popen([sys.executable, "-m", "exitnas", *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        storage = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and log.stat().st_size:
                storage = storage or optuna.storages.JournalStorage(
                    optuna.storages.journal.JournalFileBackend(str(log)))
                study = optuna.load_study(study_name="test", storage=storage)
                if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["exitnas: interrupted"], err
    study = optuna.load_study(study_name="test", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(log))))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.RUNNING not in states, states  # the trial Ctrl-C stopped is marked FAIL
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert all("KeyboardInterrupt" in t.user_attrs[ERROR_ATTR] for t in failed)
