"""The bag-of-features exit rule: thresholds are β × each exit's mean confidence on training images,
and fitting β to a budget on validation keeps to it."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from exitnas.data import ImageSplits
from exitnas.evaluators import Evaluator, ExitCache, ExitPolicy, bof_thresholds, fit_bof_beta
from exitnas.evaluators._evaluator import TRAIN_CACHE_IMAGES
from exitnas.search_space import SearchSpace, Supernet


def test_thresholds_are_beta_times_the_mean_training_confidence(make_cache: Callable[..., ExitCache]) -> None:
    train = make_cache([[0.2, 0.4, 0.6], [0.5, 0.7, 0.9], [1.0, 1.0, 1.0]], [[1, 1, 1]] * 3, [1, 2, 3])
    np.testing.assert_allclose(bof_thresholds(train, 1.0), [0.4, 0.7])
    np.testing.assert_allclose(bof_thresholds(train, 1.5), [0.6, 1.0])  # 1.05 capped at 1
    np.testing.assert_allclose(bof_thresholds(train, np.array([[0.5], [2.0]])), [[0.2, 0.35], [0.8, 1.0]])


def test_fit_beta_keeps_to_the_budget_and_spends_it(random_cache: Callable[..., ExitCache]) -> None:
    rng = np.random.default_rng(0)
    train, val = random_cache(rng, 4, 400, ties=False), random_cache(rng, 4, 400, ties=False)
    for budget in np.linspace(val.macs[0], val.macs[-1], 7)[1:-1]:
        beta = fit_bof_beta(train, val, budget)
        spent = ExitPolicy(val).evaluate(bof_thresholds(train, beta)).expected_cost[0]
        assert spent <= budget
        # The next β of the grid would overspend (or the grid ends): β is as large as the budget allows.
        if beta + 0.005 <= 2.0:
            more = ExitPolicy(val).evaluate(bof_thresholds(train, beta + 0.005)).expected_cost[0]
            assert more > budget or bool((bof_thresholds(train, beta + 0.005) >= 1).all())


def test_train_cache_uses_training_images_only(space: SearchSpace, splits: ImageSplits) -> None:
    torch.manual_seed(0)
    ev = Evaluator(Supernet(space).eval(), splits, recal_images=256, batch_size=256)
    arch = space.largest()
    caches = ev.caches(arch, ("train", "val"))
    assert ev.forward_passes == 1  # one recalibration serves both
    assert caches["train"].num_samples == min(TRAIN_CACHE_IMAGES, 256)
    assert caches["val"].num_samples == len(splits.val_y)
    # The train images are recalibration images, drawn from the training split.
    train_rows = {bytes(t.numpy().tobytes()) for t in splits.train_x}
    assert all(bytes(t.numpy().tobytes()) in train_rows for t in ev.recal_x[:8])
    with pytest.raises(ValueError):
        ev.caches(arch, ("holdout",))
