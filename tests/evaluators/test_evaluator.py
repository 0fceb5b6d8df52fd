"""Evaluator: caches against a manual computation, memoisation in memory and on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from exitnas._confidence import confidence
from exitnas._errors import UserError
from exitnas.data import DataConfig, ImageSplits, load_dataset, normalize
from exitnas.evaluators import Evaluator, ExitCache, ExitCacheStore
from exitnas.search_space import ArchConfig, SearchSpace, Supernet

RECAL = dict(recal_images=256, batch_size=256)


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(space)
    for m in net.modules():  # zero-init residual BNs would make every block an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def arch(space: SearchSpace) -> ArchConfig:
    return space.largest().replace(heads=("linear", "msdnet", "linear", "msdnet"))


def _same(a: ExitCache, b: ExitCache) -> bool:
    return (a.arch == b.arch and a.kind == b.kind and np.array_equal(a.confidence, b.confidence)
            and np.array_equal(a.correct, b.correct) and np.array_equal(a.macs, b.macs))


def test_cache_equals_manual_computation(supernet: Supernet, splits: ImageSplits, arch: ArchConfig) -> None:
    ev = Evaluator(supernet, splits, **RECAL)
    cache = ev.cache(arch, "val")
    net = ev.subnet(arch)
    with torch.no_grad():
        outs = net(normalize(splits.val_x, splits.mean, splits.std))
    conf = np.stack([torch.softmax(z, -1).max(-1).values.numpy() for z in outs])
    correct = np.stack([(z.argmax(-1) == splits.val_y).numpy() for z in outs])
    assert cache.arch == arch and cache.kind == "maxprob"
    assert cache.confidence.shape == (4, len(splits.val_y)) and cache.confidence.dtype == np.float32
    assert np.allclose(cache.confidence, conf, atol=1e-6)
    assert np.array_equal(cache.correct, correct)
    assert cache.macs.tolist() == list(ev.costs(arch).macs)
    assert 0 < cache.correct.mean() < 1  # a random net: some right, most wrong


def test_static_subnet_matches_supernet_after_recalibration(supernet: Supernet, splits: ImageSplits,
                                                           arch: ArchConfig) -> None:
    # the cache is of the recalibrated copy: the supernet keeps its own statistics
    ev = Evaluator(supernet, splits, **RECAL)
    x = normalize(splits.val_x[:32], splits.mean, splits.std)
    with torch.no_grad():
        plain = supernet.to_static(arch).eval()(x)
        sup = supernet(x, arch)
        recal = ev.subnet(arch)(x)
    for a, b, c in zip(plain, sup, recal):
        assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(a, c, atol=1e-3)


def test_memo_in_memory(supernet: Supernet, splits: ImageSplits, arch: ArchConfig, space: SearchSpace) -> None:
    ev = Evaluator(supernet, splits, **RECAL)
    a = ev.cache(arch)
    assert ev.forward_passes == 1
    assert ev.cache(arch) is a
    assert ev.caches(arch, ("val",))["val"] is a
    assert ev.forward_passes == 1
    both = ev.caches(arch, ("val", "test"))  # only test is new: one more pass
    assert ev.forward_passes == 2 and both["val"] is a
    assert both["test"].num_samples == len(splits.test_y)
    ev.caches(space.smallest(), ("val", "test"))  # one recalibration serves both splits
    assert ev.forward_passes == 3
    ev.costs(arch)
    assert ev.forward_passes == 3


def test_on_disk_store_reused_for_same_weights_only(supernet: Supernet, splits: ImageSplits, arch: ArchConfig,
                                                    tmp_path: Path) -> None:
    first = Evaluator(supernet, splits, cache_dir=str(tmp_path), **RECAL)
    made = first.caches(arch, ("val", "test"))
    assert len(list(tmp_path.glob("*.npz"))) == 2

    again = Evaluator(supernet, splits, cache_dir=str(tmp_path), **RECAL)
    got = again.caches(arch, ("val", "test"))
    assert again.forward_passes == 0
    assert _same(got["val"], made["val"]) and _same(got["test"], made["test"])

    other = copy.deepcopy(supernet)
    with torch.no_grad():
        other.stages[1][0].conv1.weight[0, 0, 0, 0] += 1e-3
    changed = Evaluator(other, splits, cache_dir=str(tmp_path), **RECAL)
    changed.cache(arch)
    assert changed.forward_passes == 1
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_on_disk_store_not_reused_for_other_data(supernet: Supernet, splits: ImageSplits, arch: ArchConfig,
                                                 tmp_path: Path) -> None:
    Evaluator(supernet, splits, cache_dir=str(tmp_path), **RECAL).cache(arch)
    # same weights, another validation split
    other_split = load_dataset(DataConfig(val_size=0.2))
    ev = Evaluator(supernet, other_split, cache_dir=str(tmp_path), **RECAL)
    cache = ev.cache(arch)
    assert ev.forward_passes == 1 and cache.num_samples == len(other_split.val_y)
    # same weights and data, other recalibration images
    ev = Evaluator(supernet, splits, cache_dir=str(tmp_path), recal_images=128, batch_size=256)
    ev.cache(arch)
    assert ev.forward_passes == 1


def test_supernet_unchanged_by_evaluation(supernet: Supernet, splits: ImageSplits, arch: ArchConfig) -> None:
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    Evaluator(supernet, splits, **RECAL).caches(arch, ("val", "test"))
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_entropy_confidence_in_unit_interval(supernet: Supernet, splits: ImageSplits, arch: ArchConfig) -> None:
    ev = Evaluator(supernet, splits, kind="entropy", **RECAL)
    cache = ev.cache(arch)
    assert cache.kind == "entropy"
    assert np.all((cache.confidence >= 0) & (cache.confidence <= 1))
    maxprob = Evaluator(supernet, splits, **RECAL).cache(arch)
    assert np.array_equal(cache.correct, maxprob.correct)  # same predictions, other confidence
    assert not np.allclose(cache.confidence, maxprob.confidence)


@pytest.mark.parametrize("c", [2, 3, 7, 10, 1000])
def test_entropy_of_uniform_and_one_hot_logits(c: int) -> None:
    uniform = confidence(torch.zeros(3, c), "entropy")
    assert torch.all((uniform >= 0) & (uniform <= 1))
    assert torch.allclose(uniform, torch.zeros(3), atol=1e-6)
    sure = confidence(torch.tensor([[200.0] + [0.0] * (c - 1)]), "entropy")
    assert torch.all((sure >= 0) & (sure <= 1)) and float(sure[0]) == pytest.approx(1.0)


def test_cache_save_load_round_trip(supernet: Supernet, splits: ImageSplits, arch: ArchConfig,
                                    tmp_path: Path) -> None:
    cache = Evaluator(supernet, splits, **RECAL).cache(arch)
    cache.save(tmp_path / "c.npz")
    back = ExitCache.load(tmp_path / "c.npz")
    assert _same(back, cache)
    assert back.correct.dtype == bool and back.macs.dtype == np.float64


def test_store_keys(arch: ArchConfig, tmp_path: Path) -> None:
    c = ExitCache(arch, np.zeros((4, 3), np.float32), np.zeros((4, 3), bool), np.arange(4.0))
    store = ExitCacheStore(tmp_path, weights_id="w1")
    store.put(c, "val")
    assert store.get(arch, "val", "maxprob") is c
    assert store.get(arch, "test", "maxprob") is None
    assert store.get(arch, "val", "entropy") is None
    assert _same(ExitCacheStore(tmp_path, weights_id="w1").get(arch, "val", "maxprob"), c)  # type: ignore[arg-type]
    assert ExitCacheStore(tmp_path, weights_id="w2").get(arch, "val", "maxprob") is None
    assert ExitCacheStore(None).get(arch, "val", "maxprob") is None


def test_bad_inputs(supernet: Supernet, splits: ImageSplits, arch: ArchConfig) -> None:
    ev = Evaluator(supernet, splits, **RECAL)
    with pytest.raises(ValueError, match="unknown split"):
        ev.caches(arch, ("holdout",))
    with pytest.raises(UserError, match="ratios"):
        ev.cache(arch.replace(ratios=((0.5, 1.0), (1.0, 1.0))))
    assert ev.forward_passes == 0
