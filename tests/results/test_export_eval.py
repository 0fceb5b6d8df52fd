"""``evaluate_export``: an exported net's caches, thresholds (given or refit) and metrics."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from exitnas._config import ExperimentConfig
from exitnas.data import DataConfig, load_dataset
from exitnas.evaluators import ExitPolicy, anytime, budgeted_batch, exit_costs, oracle
from exitnas.results import evaluate_export, export_trial, load_export, refit_thresholds, split_metrics
from exitnas.search_space import ArchConfig, Supernet, build_space


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    """A random-weight subnet with three exits on the digits data (timing-free, seconds)."""
    torch.manual_seed(0)
    splits = load_dataset(DataConfig(name="digits"))
    space = build_space("msr-resnet", in_channels=splits.in_channels, num_classes=splits.num_classes,
                        channels=[8, 16], depths=[1, 2], widths=[0.5, 1.0], ratios=[0.0, 1.0])
    arch = space.sample(random.Random(3), exit_prob=1.0)
    net = Supernet(space).to_static(arch).eval()
    return net, arch, splits, exit_costs(net, tuple(splits.train_x.shape[1:])).macs


def test_given_thresholds_give_the_policys_metrics_on_each_split(tiny) -> None:  # type: ignore[no-untyped-def]
    net, arch, splits, macs = tiny
    thr = [0.6] * (arch.num_exits - 1)
    ev = evaluate_export(net, arch, splits, macs, thresholds=thr)
    assert set(ev.caches) == set(ev.metrics) == {"val", "test"} and ev.thresholds == tuple(thr)
    for split, cache in ev.caches.items():
        assert cache.num_samples == len(getattr(splits, f"{split}_y"))
        r = ExitPolicy(cache).evaluate(thr)
        m = ev.metrics[split]
        assert m == split_metrics(cache, thr)
        assert m["accuracy"] == pytest.approx(float(r.accuracy[0]))
        assert m["expected_mmacs"] == pytest.approx(float(r.expected_cost[0]) / 1e6)
        assert m["exit_histogram"] == r.histogram[0].tolist() and sum(m["exit_histogram"]) == cache.num_samples
        assert m["exit_accuracy"] == pytest.approx(cache.exit_accuracy().tolist())


def test_budget_refits_on_val_within_the_budget(tiny) -> None:  # type: ignore[no-untyped-def]
    net, arch, splits, macs = tiny
    budget = 0.5 * (macs[0] + macs[-1])
    ev = evaluate_export(net, arch, splits, macs, budget_macs=budget, seed=1)
    assert ev.metrics["val"]["expected_mmacs"] <= budget / 1e6 * (1 + 1e-9)
    assert np.allclose(ev.thresholds, refit_thresholds(ev.caches["val"], budget, seed=1))


def test_curves_are_the_protocols_on_the_caches(tiny) -> None:  # type: ignore[no-untyped-def]
    net, arch, splits, macs = tiny
    ev = evaluate_export(net, arch, splits, macs, thresholds=[0.5] * (arch.num_exits - 1))
    c = ev.curves()
    assert c.split == "test" and c.fit_on == "val"
    assert list(c.budgeted_batch) == budgeted_batch(ev.caches["val"], ev.caches["test"])
    assert list(c.anytime) == anytime(ev.caches["test"]) and c.oracle == oracle(ev.caches["test"])


def test_thresholds_or_budget_exactly_one(tiny) -> None:  # type: ignore[no-untyped-def]
    net, arch, splits, macs = tiny
    with pytest.raises(ValueError, match="either thresholds or budget_macs"):
        evaluate_export(net, arch, splits, macs)
    with pytest.raises(ValueError, match="either thresholds or budget_macs"):
        evaluate_export(net, arch, splits, macs, thresholds=[0.5] * (arch.num_exits - 1), budget_macs=1e6)
    with pytest.raises(ValueError, match="val split"):
        evaluate_export(net, arch, splits, macs, budget_macs=1e6, on=("test",))


def test_an_export_re_measured_gives_its_recorded_metrics(searched, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The loaded export measured again with its own thresholds reproduces the metrics written
    by ``exitnas export`` (which measured the supernet's recalibrated subnet)."""
    r = export_trial(searched.storage, searched.study, None, tmp_path / "export", str(searched.checkpoint),
                     onnx=False)
    model, meta = load_export(r.directory)
    splits = load_dataset(ExperimentConfig.from_dict(meta["experiment"]).data)
    ev = evaluate_export(model.net, ArchConfig.from_dict(meta["arch"]), splits, meta["costs"]["macs"],
                         thresholds=meta["thresholds"], kind=meta["confidence"])
    for split in ("val", "test"):
        got, want = ev.metrics[split], meta["metrics"][split]
        n = len(getattr(splits, f"{split}_y"))
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1.5 / n)
        assert got["expected_mmacs"] == pytest.approx(want["expected_mmacs"], rel=0.02)
        assert got["exit_accuracy"] == pytest.approx(want["exit_accuracy"], abs=1.5 / n)
