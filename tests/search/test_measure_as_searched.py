"""Every command measures an arch as the search that chose it did: one Experiment, one Evaluator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from exitnas.cli import main
from exitnas.experiment import Experiment
from exitnas.results import open_study


def test_evaluate_on_a_study_reproduces_the_trials_stored_numbers(trained: Any, search_args: Callable[..., list[str]],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Settings that differ from the checkpoint's own config: evaluate must take them from the study.
    assert main(search_args(url, "--trials", "3", "--sampler", "random", "--set", "search.confidence=entropy",
                            "--set", "search.seed=3")) == 0
    study = open_study(url, "test")
    exp = Experiment.from_study(study.user_attrs, "test")
    ev = exp.evaluator
    assert (ev.kind, len(ev.recal_x), exp.cfg.search.seed) == ("entropy", 256, 3)
    for t in study.get_trials():
        arch_json = tmp_path / f"arch{t.number}.json"
        arch_json.write_text(json.dumps(t.user_attrs["arch"]))
        out = tmp_path / f"eval{t.number}.json"
        thr = ",".join(repr(v) for v in t.user_attrs["thresholds"])
        argv = ["evaluate", "--storage", url, "--arch", str(arch_json), "--out", str(out)]
        assert main(argv + (["--thresholds", thr] if thr else [])) == 0, capsys.readouterr().err
        got = json.loads(out.read_text())
        assert got["confidence"] == "entropy"
        if thr:
            assert got["thresholds_val"]["accuracy"] == t.values[0]
            assert got["thresholds_val"]["expected_macs"] / 1e6 == pytest.approx(t.values[1], rel=1e-12)
        else:
            assert got["anytime"]["val"][-1]["accuracy"] == t.values[0]


def test_evaluate_needs_a_checkpoint_or_a_study(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--arch", "largest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint" in err[0] and "--storage" in err[0]
