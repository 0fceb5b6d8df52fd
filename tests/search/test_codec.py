"""The trial codec: what the objective stores is what the codec reads back, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

from exitnas._errors import UserError
from exitnas._trial_codec import CANDIDATE_ATTR, decode_trial
from exitnas.experiment import Experiment
from exitnas.search import ArchObjective, create_or_load_study
from exitnas.search_space import ArchConfig, Candidate, Measured


def _study(make_cfg: Callable[..., Any], trained: Any, tmp_path: Path, n: int, **search: Any) -> tuple[Any, Any]:
    exp = Experiment(make_cfg(f"sqlite:///{tmp_path / 'codec.db'}", sampler="random", **search), trained.checkpoint)
    study = create_or_load_study(exp)
    study.optimize(ArchObjective.for_experiment(exp), n_trials=n)
    return exp, study


@pytest.mark.parametrize("rule", ["threshold", "bof", "share", "temperature", "patience", "decider", "ensemble",
                                  "policy"])
def test_stored_candidate_is_what_the_codec_decodes(rule: str, trained: Any, make_cfg: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    exp, study = _study(make_cfg, trained, tmp_path, 4, exit_rule=rule)
    for t in study.get_trials():
        stored = Candidate.from_dict(t.user_attrs[CANDIDATE_ATTR])
        assert stored.measured == Measured(t.values[0], t.values[1], "MMACs", "val")
        assert stored.exit_rule == rule and stored.confidence == exp.cfg.search.confidence
        again = decode_trial(t.number, t.params, t.user_attrs, exp.space, exit_rule=rule,
                             measured=stored.measured)
        assert again == stored  # arch, exact thresholds, confidence, rule, measured values
        assert Candidate.from_dict(stored.to_dict()) == stored


def test_a_stored_arch_that_its_params_do_not_give_is_refused(trained: Any, make_cfg: Callable[..., Any],
                                                               tmp_path: Path) -> None:
    exp, study = _study(make_cfg, trained, tmp_path, 1)
    t = study.get_trials()[0]
    arch = ArchConfig.from_dict(t.user_attrs["arch"])
    other = exp.space.largest() if arch != exp.space.largest() else exp.space.smallest()
    attrs = {**t.user_attrs, "arch": other.to_dict()}
    with pytest.raises(UserError, match="do not give"):
        decode_trial(t.number, t.params, attrs, exp.space)
    with pytest.raises(UserError, match="cannot be read"):
        decode_trial(t.number, {k: v for k, v in t.params.items() if k != "depth_0"}, t.user_attrs, exp.space)


def test_candidate_checks_its_thresholds(trained: Any) -> None:
    arch = trained.space.largest()
    k = arch.num_exits - 1
    assert Candidate(arch, (0.5,) * k).cost_unit == "MMACs"
    assert Candidate(arch, (float("inf"),) + (0.5,) * (k - 1)).thresholds[0] == float("inf")  # a closed exit
    for bad in ((0.5,) * (k + 1), (1.5,) + (0.5,) * (k - 1), (float("nan"),) * k, (-float("inf"),) * k):
        with pytest.raises(UserError):
            Candidate(arch, bad)
    with pytest.raises(UserError, match="confidence"):
        Candidate(arch, (0.5,) * k, confidence="margin")


def test_fixed_trial_of_a_live_trial_gives_its_arch(trained: Any, make_cfg: Callable[..., Any], tmp_path: Path) -> None:
    _, study = _study(make_cfg, trained, tmp_path, 2)
    for t in study.get_trials():
        cand = decode_trial(t.number, t.params, {}, trained.space)
        assert cand.arch.to_dict() == t.user_attrs["arch"]
        assert list(cand.thresholds) == t.user_attrs["thresholds"]
    assert isinstance(study, optuna.Study)


def test_share_rule_drops_the_exits_no_val_image_leaves_at(trained: Any, make_cfg: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    exp = Experiment(make_cfg(f"sqlite:///{tmp_path / 'share.db'}", sampler="random", exit_rule="share"),
                     trained.checkpoint)
    study = create_or_load_study(exp)
    # Every candidate exit on, the first one sends everyone out: no image reaches the others.
    fixed = {f"exit_{s}_{b}": 1 for s, b in exp.space.candidate_exits()}
    first = exp.space.candidate_exits()[0]
    study.enqueue_trial({**fixed, f"share_{first[0]}_{first[1]}": 1.0})
    study.optimize(ArchObjective.for_experiment(exp), n_trials=1)
    t = study.get_trials()[0]
    stored = Candidate.from_dict(t.user_attrs[CANDIDATE_ATTR])
    assert stored.arch.exits[0] == first and stored.arch.num_exits == 2  # first exit + the final one
    assert t.user_attrs["exit_histogram"] == [trained.val_images, 0]
    # The cost is the smaller arch's: every image pays the first exit's prefix only.
    assert t.values[1] == pytest.approx(t.user_attrs["exit_mmacs"][0])
    assert decode_trial(t.number, t.params, t.user_attrs, exp.space, exit_rule="share",
                        measured=stored.measured) == stored


def test_candidate_policy_and_params_keep_the_old_format(trained: Any) -> None:
    arch = trained.space.largest()
    k = arch.num_exits - 1
    plain = Candidate(arch, (0.5,) * k)
    assert plain.to_dict()["format"] == 1 and "policy" not in plain.to_dict()  # as before policies existed
    old = {key: v for key, v in plain.to_dict().items() if key not in ("exit_rule", "measured", "format")}
    assert Candidate.from_dict(old) == plain and Candidate.from_dict(old).policy == "threshold"
    pat = Candidate(arch, (0.25,) * k, exit_rule="patience", policy="patience", params={"k": 2})
    d = pat.to_dict()
    assert d["format"] == 2 and d["policy"] == "patience" and d["params"] == {"k": 2}
    assert Candidate.from_dict(d) == pat
    with pytest.raises(UserError, match="params"):
        Candidate.from_dict({**d, "params": [1, 2]})
