"""``exitnas search`` with the local backend: trials, their attributes, resume, cache reuse,
the journal storage, every registered sampler and MMAC budgets."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from exitnas._samplers import SAMPLERS
from exitnas.cli import main
from exitnas.experiment import Experiment
from exitnas.search import DIRECTIONS, METRIC_NAMES, ArchObjective, create_or_load_study, suggest_arch
from exitnas.search_space import ArchConfig, SearchSpace

N_TRIALS = 6


def _load(url: str, name: str = "test") -> optuna.Study:
    from exitnas._storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def _param_names(space: SearchSpace) -> set[str]:
    names = {f"{k}_{s}" for k in ("depth", "width") for s in range(space.num_stages)}
    names |= {f"{k}_{s}_{b}" for k in ("ratio", "exit", "head", "thr") for s, b in space.candidate_exits()}
    return names


def _params(space: SearchSpace, *, depth: int, width: float, ratio: float, exit_on: int, thr: float,
            head: str = "linear") -> dict[str, Any]:
    """A full parameter set of the static Optuna space: the same choice for every stage/slot."""
    p: dict[str, Any] = {}
    for s in range(space.num_stages):
        p[f"depth_{s}"], p[f"width_{s}"] = depth, width
    for s, b in space.candidate_exits():
        p[f"ratio_{s}_{b}"], p[f"exit_{s}_{b}"], p[f"head_{s}_{b}"], p[f"thr_{s}_{b}"] = ratio, exit_on, head, thr
    return p


def _check_trial(t: optuna.trial.FrozenTrial, space: SearchSpace, val_images: int) -> None:
    arch = ArchConfig.from_dict(t.user_attrs["arch"])
    space.validate(arch)
    k = arch.num_exits
    # The stored arch and thresholds are exactly what the trial's parameters decode to.
    again, thresholds = suggest_arch(FixedTrial(t.params), space)
    assert again == arch
    assert t.user_attrs["thresholds"] == pytest.approx(thresholds.tolist(), abs=1e-6)
    assert len(t.user_attrs["thresholds"]) == k - 1
    acc = t.user_attrs["exit_accuracy"]
    assert len(acc) == k and all(0.0 <= a <= 1.0 for a in acc)
    hist = t.user_attrs["exit_histogram"]
    assert len(hist) == k and sum(hist) == val_images and min(hist) >= 0
    mmacs = t.user_attrs["exit_mmacs"]
    assert len(mmacs) == k and all(a < b for a, b in zip([0.0] + mmacs, mmacs))
    # The objectives follow from the breakdown: expected cost = Σ P(exit k)·cost_k.
    assert 0.0 <= t.values[0] <= 1.0
    assert t.values[1] == pytest.approx(sum(h * m for h, m in zip(hist, mmacs)) / val_images, rel=1e-6)
    assert isinstance(t.user_attrs["cache_reused"], bool)


@pytest.fixture(scope="module")
def searched(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CLI search of N_TRIALS trials into an SQLite file (kept read-only by the tests)."""
    db = tmp_path_factory.mktemp("local") / "study.db"
    argv = ["search", "--checkpoint", trained.checkpoint, "--storage", f"sqlite:///{db}", "--study", "test",
            "--trials", str(N_TRIALS), "--set", "search.progress=false", "--set", "search.recal_images=256"]
    assert main(argv) == 0
    return db


def test_search_stores_complete_trials_with_their_breakdown(searched: Path, trained: Any) -> None:
    study = _load(f"sqlite:///{searched}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * N_TRIALS
    assert study.metric_names == METRIC_NAMES
    assert [d.name.lower() for d in study.directions] == DIRECTIONS
    assert study.user_attrs["exitnas_space"] == trained.space.to_dict()
    for t in trials:
        _check_trial(t, trained.space, trained.val_images)


def test_every_trial_suggests_the_same_parameters(searched: Path, trained: Any) -> None:
    trials = _load(f"sqlite:///{searched}").get_trials()
    expected = _param_names(trained.space)
    assert all(set(t.params) == expected for t in trials)
    assert all(set(t.distributions) == expected for t in trials)


def test_cli_prints_the_pareto_front(tmp_path: Path, search_args: Callable[..., list[str]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(search_args(f"sqlite:///{tmp_path / 's.db'}", "--trials", "2")) == 0
    out = capsys.readouterr().out
    assert "Pareto front of study 'test'" in out and "val acc" in out


def test_same_study_name_resumes(searched: Path, tmp_path: Path, search_args: Callable[..., list[str]]) -> None:
    db = tmp_path / "resumed.db"
    # SQLite's backup API, not a file copy: in WAL mode recent commits may still be in study.db-wal.
    with closing(sqlite3.connect(searched)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    before = {t.number: t for t in _load(f"sqlite:///{db}").get_trials()}
    assert main(search_args(f"sqlite:///{db}", "--trials", str(N_TRIALS + 3))) == 0
    after = _load(f"sqlite:///{db}").get_trials()
    assert [t.state for t in after] == [TrialState.COMPLETE] * (N_TRIALS + 3)
    for t in after[:N_TRIALS]:
        old = before[t.number]
        assert (t.params, t.values, t.user_attrs, t.datetime_complete) == (
            old.params, old.values, old.user_attrs, old.datetime_complete)
    # A study already at its count runs nothing more.
    assert main(search_args(f"sqlite:///{db}", "--trials", str(N_TRIALS))) == 0
    assert len(_load(f"sqlite:///{db}").get_trials()) == N_TRIALS + 3


def test_threshold_only_change_reuses_the_exit_cache(trained: Any, make_cfg: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    cfg = make_cfg(f"sqlite:///{tmp_path / 'cache.db'}")
    exp = Experiment(cfg, trained.checkpoint)
    study = create_or_load_study(exp)
    space = exp.space
    a = _params(space, depth=2, width=1.0, ratio=0.0, exit_on=1, thr=0.0)
    b = {**a, **{k: 1.0 for k in a if k.startswith("thr_")}}
    assert {k for k in a if a[k] != b[k]} <= {k for k in a if k.startswith("thr_")}
    study.enqueue_trial(a)
    study.enqueue_trial(b)
    study.optimize(ArchObjective.for_experiment(exp), n_trials=2)
    first, second = study.get_trials()
    assert first.user_attrs["arch"] == second.user_attrs["arch"]
    assert first.user_attrs["cache_reused"] is False
    assert second.user_attrs["cache_reused"] is True
    assert exp.evaluator.forward_passes == 1
    # Threshold 0: everyone leaves at the first exit; threshold 1: (almost) no one leaves early.
    assert first.user_attrs["exit_histogram"][0] == trained.val_images
    assert second.values[1] > first.values[1]
    _check_trial(second, space, trained.val_images)


def test_journal_storage(trained: Any, tmp_path: Path, search_args: Callable[..., list[str]]) -> None:
    url = f"journal:///{tmp_path / 'study.log'}"
    assert main(search_args(url, "--trials", "3")) == 0
    study = _load(url)
    assert isinstance(study._storage, optuna.storages.JournalStorage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    assert study.metric_names == METRIC_NAMES
    for t in study.get_trials():
        _check_trial(t, trained.space, trained.val_images)


# Enough trials that the sampler's own model, not its random start-up, picks the last ones
# (TPE and GP start with 10 random trials, NSGA-II with a population of 20).
_SAMPLER_TRIALS = {"tpe": 12, "gp": 12, "nsga2": 22}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_searches_the_static_space(sampler: str, trained: Any, tmp_path: Path,
                                                 search_args: Callable[..., list[str]]) -> None:
    n = _SAMPLER_TRIALS.get(sampler, 4)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(search_args(url, "--trials", str(n), "--sampler", sampler)) == 0
    trials = _load(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    expected = _param_names(trained.space)
    for t in trials:
        assert set(t.params) == expected
        _check_trial(t, trained.space, trained.val_images)


def test_budget_is_a_constraint_and_the_front_keeps_to_it(trained: Any, make_cfg: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    probe = Experiment(make_cfg(url), trained.checkpoint)
    space = probe.space
    small = _params(space, depth=1, width=0.5, ratio=0.0, exit_on=0, thr=0.5)
    large = _params(space, depth=2, width=1.0, ratio=1.0, exit_on=0, thr=0.5)
    # With every early exit off, a trial costs its final exit's MACs.
    cost = {name: probe.evaluator.costs(suggest_arch(FixedTrial(p), space)[0]).macs[-1] / 1e6
            for name, p in (("small", small), ("large", large))}
    budget = (cost["small"] + cost["large"]) / 2
    cfg = make_cfg(url, budget_mmacs=budget, sampler="random")
    exp = Experiment(cfg, trained.checkpoint)
    study = create_or_load_study(exp)
    study.enqueue_trial(small)
    study.enqueue_trial(large)
    study.optimize(ArchObjective.for_experiment(exp), n_trials=8)
    trials = study.get_trials()
    for t in trials:
        assert t.constraints == {"mmacs_over_budget": pytest.approx(t.values[1] - budget)}
        assert t.system_attrs["constraints:mmacs_over_budget"] == pytest.approx(t.values[1] - budget)
    assert trials[0].values[1] == pytest.approx(cost["small"]) and trials[0].values[1] <= budget
    assert trials[1].values[1] == pytest.approx(cost["large"]) and trials[1].values[1] > budget
    feasible = [t for t in trials if t.values[1] <= budget]
    best = study.best_trials
    assert best and all(t.values[1] <= budget for t in best)
    assert trials[1].number not in {t.number for t in best}
    # The front is exactly the non-dominated feasible trials.
    pts = np.array([(-t.values[0], t.values[1]) for t in feasible])
    on_front = {t.number for t, p in zip(feasible, pts)
                if not any((q <= p).all() and (q < p).any() for q in pts)}
    assert {t.number for t in best} == on_front


def test_retry_lost_trials_fails_a_dead_workers_running_trial_and_requeues_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The journal file has no heartbeats: the Ray driver fails a dead worker's trial itself."""
    import optuna

    from exitnas._config import ExperimentConfig
    from exitnas._storage import open_storage
    from exitnas.search import retry_lost_trials

    url = f"journal:///{tmp_path / 'study.log'}"
    cfg = ExperimentConfig.from_dict({"search": {"storage": url, "study": "s"}})
    study = optuna.create_study(study_name="s", storage=open_storage(url), directions=["maximize", "minimize"])
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, [0.5, 1.0])
    other = study.ask()
    other.set_user_attr("worker", "alive")
    lost = study.ask()
    lost.set_user_attr("worker", "dead")
    x = lost.suggest_float("x", 0, 1)
    assert retry_lost_trials(cfg, "dead") == 1
    trials = {t.number: t for t in optuna.load_study(study_name="s", storage=open_storage(url)).trials}
    assert trials[done.number].state == optuna.trial.TrialState.COMPLETE
    assert trials[other.number].state == optuna.trial.TrialState.RUNNING
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials.values() if t.state == optuna.trial.TrialState.WAITING]
    assert len(retry) == 1 and retry[0].system_attrs["fixed_params"] == {"x": x}
    assert retry[0].user_attrs["retry_of"] == lost.number


def test_bof_exit_rule_searches_one_beta_and_derives_the_thresholds(trained: Any, tmp_path: Path,
                                                                    search_args: Callable[..., list[str]]) -> None:
    url = f"sqlite:///{tmp_path / 'bof.db'}"
    assert main(search_args(url, "--trials", "4", "--set", "search.exit_rule=bof")) == 0
    trials = _load(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    names = {n for n in _param_names(trained.space) if not n.startswith("thr_")} | {"beta"}
    for t in trials:
        assert set(t.params) == names
        means = t.user_attrs["train_confidence"]
        assert len(means) == len(t.user_attrs["arch"]["exits"])
        expected = [min(1.0, t.params["beta"] * m) for m in means[:-1]]
        assert t.user_attrs["thresholds"] == pytest.approx(expected, abs=1e-5)
        # The objectives are those of the stored thresholds on validation (as for any trial).
        hist, mmacs = t.user_attrs["exit_histogram"], t.user_attrs["exit_mmacs"]
        assert t.values[1] == pytest.approx(sum(h * m for h, m in zip(hist, mmacs)) / trained.val_images, rel=1e-6)
    # A study searched with one exit rule is not resumed with another.
    assert main(search_args(url, "--trials", "5")) == 2
