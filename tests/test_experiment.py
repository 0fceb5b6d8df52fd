"""``Experiment``: the one composition root; every way of opening one checks and measures the same."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from exitnas._config import ExperimentConfig, load_config
from exitnas._errors import UserError
from exitnas.experiment import COST_UNITS, Experiment, checkpoint_of

TINY = ["data.name=digits", "space.channels=[8,16]", "space.depths=[1,2]", "train.epochs=0.2",
        "train.batch_size=128", "train.progress=false", "search.recal_images=128", "search.confidence=entropy"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> ExperimentConfig:
    from exitnas.training import train_supernet

    torch.set_num_threads(1)
    cfg = load_config(None, TINY + [f"train.out={tmp_path_factory.mktemp('exp')}"])
    train_supernet(cfg)
    return cfg


def test_parts_are_built_once_and_follow_the_config(trained: ExperimentConfig) -> None:
    exp = Experiment(trained)
    assert exp.checkpoint == checkpoint_of(trained) == Path(trained.train.out) / "supernet.pt"
    assert exp.splits is exp.splits and exp.evaluator is exp.evaluator and exp.supernet is exp.supernet
    assert exp.space.in_channels == exp.splits.in_channels == exp.input_shape[0]
    ev = exp.evaluator
    # The evaluator measures as the search does: its recalibration images, confidence and seed.
    assert (len(ev.recal_x), ev.kind) == (128, "entropy")
    assert exp.cost == COST_UNITS["macs"] and exp.latency is None
    again = Experiment(trained, splits=exp.splits)
    assert again.splits is exp.splits


def test_from_checkpoint_takes_its_config_and_overrides(trained: ExperimentConfig) -> None:
    exp = Experiment.from_checkpoint(checkpoint_of(trained), overrides=("search.seed=5",))
    assert exp.cfg.search.seed == 5 and exp.cfg.space == trained.space
    with pytest.raises(UserError, match="does not exist"):
        Experiment.from_checkpoint(Path(trained.train.out) / "missing.pt")


def test_every_way_in_checks_registered_names(trained: ExperimentConfig) -> None:
    raw = copy.deepcopy(trained.to_dict())
    raw["search"]["sampler"] = "annealing"
    with pytest.raises(UserError, match="annealing"):
        Experiment(ExperimentConfig.from_dict(raw))
    with pytest.raises(UserError, match="annealing"):
        Experiment.from_study({"config": raw, "checkpoint": str(checkpoint_of(trained))}, "s")
    with pytest.raises(UserError, match="annealing"):
        Experiment.from_export({"experiment": raw}, "arch.json")
    with pytest.raises(UserError, match="does not record its experiment"):
        Experiment.from_export({}, "arch.json")


def test_from_study_refuses_a_supernet_of_another_space(trained: ExperimentConfig, tmp_path: Path) -> None:
    raw = copy.deepcopy(trained.to_dict())
    raw["space"]["channels"] = [8, 32]
    with pytest.raises(UserError, match="another search space"):
        Experiment.from_study({"config": raw, "checkpoint": str(checkpoint_of(trained))}, "s")
    with pytest.raises(UserError, match="records no supernet checkpoint"):
        Experiment.from_study({"config": raw}, "s")


def test_a_missing_checkpoint_is_one_line_and_nothing_loaded(trained: ExperimentConfig, tmp_path: Path) -> None:
    exp = Experiment(trained, tmp_path / "none.pt")
    with pytest.raises(UserError, match="does not exist"):
        exp.check_checkpoint()
    with pytest.raises(UserError, match="does not exist"):
        exp.evaluator  # noqa: B018


def test_latency_objective_needs_its_table(trained: ExperimentConfig) -> None:
    raw = copy.deepcopy(trained.to_dict())
    raw["search"]["objective"] = "latency"
    exp = Experiment(ExperimentConfig.from_dict(raw))
    assert exp.cost.unit == "ms"
    with pytest.raises(UserError, match="needs a table"):
        exp.latency  # noqa: B018
