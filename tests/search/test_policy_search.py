"""Searching an exit policy with the arch: the policy is the study's, its parameter the trial's,
what the trial stores reproduces its objectives, and an export of a trial runs its policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from exitnas._trial_codec import CANDIDATE_ATTR
from exitnas.evaluators import POLICY_RULES, SEARCHED_POLICIES, candidate_result
from exitnas.experiment import Experiment
from exitnas.results import export_trial, retrain_export
from exitnas.runtime import load_export
from exitnas.search import ArchObjective, create_or_load_study
from exitnas.search_space import Candidate


def _search(make_cfg: Callable[..., Any], trained: Any, tmp_path: Path, rule: str, n: int = 3) -> tuple[Any, Any, str]:
    url = f"sqlite:///{tmp_path / f'{rule}.db'}"
    exp = Experiment(make_cfg(url, sampler="random", exit_rule=rule), trained.checkpoint)
    study = create_or_load_study(exp)
    study.optimize(ArchObjective.for_experiment(exp), n_trials=n)
    return exp, study, url


@pytest.mark.parametrize("rule", POLICY_RULES)
def test_a_policy_study_suggests_only_its_parameters_and_stores_what_reproduces_them(
        rule: str, trained: Any, make_cfg: Callable[..., Any], tmp_path: Path) -> None:
    exp, study, _ = _search(make_cfg, trained, tmp_path, rule)
    own = {"temperature": "thr_", "ensemble": "thr_", "patience": "patience", "decider": "tau"}[rule]
    for t in study.get_trials():
        names = set(t.params)
        assert any(n.startswith(own) for n in names)
        assert not names & {"beta", "tau", "patience"} - {own}
        assert not any(n.startswith(("thr_", "share_")) for n in names) or own == "thr_"
        cand = Candidate.from_dict(t.user_attrs[CANDIDATE_ATTR])
        assert cand.policy == rule and cand.exit_rule == rule
        res = candidate_result(cand, exp.evaluator.cache(cand.arch, "val"))
        assert float(res.accuracy[0]) == t.values[0]
        assert float(res.expected_cost[0]) / 1e6 == pytest.approx(t.values[1], rel=1e-12)
        if cand.arch.num_exits == 1:  # nothing to decide; the ensemble still recalibrates the one answer
            assert cand.thresholds == ()
            assert set(cand.params) <= {"models", "temperatures", "weight", "bias"}
            assert cand.params.get("models", []) == [] and (("weight" in cand.params) == (rule == "ensemble"))
            continue
        if rule == "patience":
            k = min(t.params["patience"], cand.arch.num_exits)
            assert cand.params == {"k": k}
            assert np.allclose(cand.thresholds, (k - 0.5) / cand.arch.num_exits)
        if rule == "decider":
            assert cand.params["tau"] == t.params["tau"] and len(cand.params["models"]) == cand.arch.num_exits - 1


def test_patience_trial_leaves_where_k_exits_agree(trained: Any, make_cfg: Callable[..., Any], tmp_path: Path) -> None:
    exp, study, _ = _search(make_cfg, trained, tmp_path, "patience", n=6)
    assert any(len(t.user_attrs["exit_histogram"]) > 2 for t in study.get_trials())
    for t in study.get_trials():
        cand = Candidate.from_dict(t.user_attrs[CANDIDATE_ATTR])
        cache = exp.evaluator.cache(cand.arch, "val")
        if cache.num_exits == 1:
            continue
        pred = cache.logits.argmax(-1)
        k, want = cand.params["k"], []
        for n in range(cache.num_samples):  # the rule, spelled out image by image
            run, leave = 0, cache.num_exits - 1
            for e in range(cache.num_exits - 1):
                run = run + 1 if e and pred[e, n] == pred[e - 1, n] else 1
                if run >= k:
                    leave = e
                    break
            want.append(leave)
        assert t.user_attrs["exit_histogram"] == np.bincount(want, minlength=cache.num_exits).tolist()


@pytest.mark.parametrize("rule", POLICY_RULES)
def test_an_exported_policy_trial_leaves_where_the_search_measured(rule: str, trained: Any,
                                                                   make_cfg: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    exp, study, url = _search(make_cfg, trained, tmp_path, rule, n=24)
    multi = [t for t in study.get_trials() if len(t.user_attrs["exit_histogram"]) > 1
             and sum(1 for h in t.user_attrs["exit_histogram"] if h) > 1]
    assert multi, "no trial left at two exits: the check would mean nothing"
    trial = multi[0]
    res = export_trial(url, "test", trial.number, tmp_path / "out", onnx=False)
    model, meta = load_export(res.directory)
    cand = Candidate.from_dict(trial.user_attrs[CANDIDATE_ATTR])
    assert meta["policy"] == rule and meta["params"] == cand.params
    assert meta["metrics"]["val"]["accuracy"] == trial.values[0]
    assert meta["metrics"]["val"]["expected_mmacs"] == pytest.approx(trial.values[1], rel=1e-12)
    # The deployed TorchScript model at batch size 1 leaves where the cache's decision says.
    cache = exp.evaluator.cache(cand.arch, "val")
    want = _policy_exits(cand, cache)
    deployed = torch.jit.load(str(res.torchscript))
    x = exp.splits.val_x[:64].float() / 255
    got = [int(deployed(x[n : n + 1])[1]) for n in range(len(x))]
    agree = np.mean(np.array(got) == want[: len(x)])
    assert agree >= 0.95  # float16 cached logits against the float32 runtime: ties at a threshold
    batch_exits = model(x)[1].numpy()
    assert np.mean(batch_exits == want[: len(x)]) >= 0.95
    if rule == "decider":  # retraining refits the policy on val, within the export's val budget
        again = retrain_export(res.arch_json, tmp_path / "retrained", scratch=False, epochs=0.05, progress=False)
        _, meta2 = load_export(again.export.directory)
        assert meta2["policy"] == "decider" and len(meta2["params"]["models"]) == cand.arch.num_exits - 1
        assert meta2["params"]["models"] != meta["params"]["models"]  # fit anew to the retrained net
        # Every image out at exit 0 is among the settings and fits: the refit keeps to the budget.
        assert again.val_expected_mmacs <= meta["metrics"]["val"]["expected_mmacs"] * (1 + 1e-9)


def _policy_exits(cand: Candidate, cache: Any) -> np.ndarray:
    """Per image, the exit the candidate's policy sends it to on ``cache`` (the evaluators' numbers)."""
    from exitnas.evaluators import POLICIES

    scores = POLICIES.get(cand.policy)().load(cand.params).scores(cache)
    passed = scores >= np.asarray(cand.thresholds)[:, None]
    return np.where(passed.any(0), passed.argmax(0), cache.num_exits - 1)


def test_the_policy_rule_searches_the_policy_per_trial_and_each_trial_runs_its_own(
        trained: Any, make_cfg: Callable[..., Any], tmp_path: Path) -> None:
    exp, study, url = _search(make_cfg, trained, tmp_path, "policy", n=24)
    chosen = set()
    for t in study.get_trials():
        # A static space: every trial suggests the policy and every policy's parameters.
        assert {"policy", "patience", "tau"} <= set(t.params) and any(n.startswith("thr_") for n in t.params)
        cand = Candidate.from_dict(t.user_attrs[CANDIDATE_ATTR])
        assert cand.exit_rule == "policy" and cand.policy == t.params["policy"]
        chosen.add(cand.policy)
        res = candidate_result(cand, exp.evaluator.cache(cand.arch, "val"))
        assert float(res.accuracy[0]) == t.values[0]
        assert float(res.expected_cost[0]) / 1e6 == pytest.approx(t.values[1], rel=1e-12)
        if cand.arch.num_exits > 1 and cand.policy == "threshold":  # searched as they are, one per exit
            assert np.allclose(cand.thresholds, [t.params[f"thr_{s}_{b}"] for s, b in cand.arch.exits[:-1]])
        if cand.arch.num_exits > 1 and cand.policy == "decider":
            assert cand.params["tau"] == t.params["tau"]
    assert chosen == set(SEARCHED_POLICIES)  # 24 random trials draw every policy
    learned = [t for t in study.get_trials() if t.params["policy"] == "decider" and len(t.user_attrs["thresholds"])]
    assert learned, "no decider trial with two exits: the export check would mean nothing"
    res = export_trial(url, "test", learned[0].number, tmp_path / "out", onnx=False)  # a mixed study's decider trial
    _, meta = load_export(res.directory)
    assert meta["policy"] == "decider" and meta["params"]["tau"] == learned[0].params["tau"]


def test_a_mixed_policy_study_reports_each_trial_under_its_own_policy(
        trained: Any, make_cfg: Callable[..., Any], tmp_path: Path) -> None:
    from exitnas.results import build_report

    exp, study, url = _search(make_cfg, trained, tmp_path, "policy", n=16)
    rep = build_report(url, None, trained.checkpoint, tmp_path / "report", upload=False)
    by_trial = {t.number: t for t in study.get_trials()}
    assert len({p.policy for p in rep.tests}) >= 2, "the reported trials run one policy: the check means little"
    for p in rep.tests:
        t = by_trial[p.trial]
        assert p.policy == t.params["policy"]
        assert p.val_accuracy_rerun == t.values[0]  # the policy measured again gives the stored value
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [q["policy"] for q in summary["points"]] == [p.policy for p in rep.tests]
    assert "<th>exit policy</th>" in (tmp_path / "report" / "report.html").read_text()
