"""The bag-of-features exit rule: thresholds are β × each exit's mean confidence on training images,
and fitting β to a budget on validation keeps to it."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from exitnas.data import ImageSplits
from exitnas.evaluators import (
    Evaluator,
    ExitCache,
    ExitPolicy,
    bof_thresholds,
    drop_exits,
    fit_bof_beta,
    leaving_exits,
    share_thresholds,
)
from exitnas.evaluators._evaluator import TRAIN_CACHE_IMAGES
from exitnas.search_space import ArchConfig, SearchSpace, Supernet


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


# -- the share rule ------------------------------------------------------------------------------
def test_shares_map_to_the_confidence_quantile_of_the_remaining_images(hand_cache: ExitCache) -> None:
    # Exit 0 confidences: 0.875 .25 .625 .5 .9375 .125 → half of 6 = 3 leave (0.9375, 0.875, 0.625).
    thr = share_thresholds(hand_cache, [0.5, 0.5])
    assert thr[0] == 0.625
    # Remaining images 1, 3, 5 have exit-1 confidences .75 .4375 .5: ⌊1.5⌋ = 1 leaves (0.75).
    assert thr[1] == 0.75
    exits = ExitPolicy(hand_cache).exits(thr)
    assert exits.tolist() == [0, 1, 0, 2, 0, 2]
    # Share 1 sends everyone out; share 0 no one (a threshold just above the highest confidence),
    # except images of confidence 1 itself: thresholds are capped at 1 and the rule is "≥".
    assert ExitPolicy(hand_cache).exits(share_thresholds(hand_cache, [1.0, 0.3])).tolist() == [0] * 6
    zero = share_thresholds(hand_cache, [0.0, 0.0])
    assert zero[0] > 0.9375 and zero[1] == 1.0
    assert ExitPolicy(hand_cache).exits(zero).tolist() == [2, 2, 2, 2, 1, 2]
    with pytest.raises(ValueError):
        share_thresholds(hand_cache, [0.5])


def test_every_step_of_a_share_changes_who_leaves(random_cache: Callable[..., ExitCache]) -> None:
    val = random_cache(np.random.default_rng(1), 3, 200, ties=False)
    counts = [int((ExitPolicy(val).exits(share_thresholds(val, [j / 200, 0.0])) == 0).sum()) for j in range(201)]
    assert counts == list(range(201))  # distinct confidences: exactly j images leave at exit 0


def test_exits_no_image_leaves_at_are_dropped_with_their_heads(hand_cache: ExitCache) -> None:
    assert leaving_exits(hand_cache, share_thresholds(hand_cache, [0.5, 0.0])).tolist() == [True, False, True]
    assert leaving_exits(hand_cache, share_thresholds(hand_cache, [1.0, 0.5])).tolist() == [True, False, True]
    arch = ArchConfig("msr-resnet", (3,), (1.0,), ((0.0,) * 3,), ((0, 0), (0, 1), (0, 2)), ("linear", "msdnet", "bof"))
    small = drop_exits(arch, [True, False, False])  # the final exit always stays
    assert small.exits == ((0, 0), (0, 2)) and small.heads == ("linear", "bof")
    assert small.depths == arch.depths
