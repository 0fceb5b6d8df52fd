"""The exit cache keeps each exit's logits and the labels (for exit policies); older caches
still load, and an older file on disk is not found under today's key (it is rebuilt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from exitnas.data import ImageSplits, normalize
from exitnas.evaluators import Evaluator, ExitCache, ExitCacheStore
from exitnas.evaluators._cache import _digest
from exitnas.search_space import SearchSpace, Supernet


def test_cache_keeps_logits_and_labels(space: SearchSpace, splits: ImageSplits, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ev = Evaluator(Supernet(space).eval(), splits, recal_images=256, batch_size=256)
    arch = space.largest()
    cache = ev.cache(arch, "val")
    with torch.no_grad():
        outs = ev.subnet(arch)(normalize(splits.val_x, splits.mean, splits.std))
    assert cache.logits is not None and cache.logits.dtype == np.float16
    assert cache.logits.shape == (arch.num_exits, len(splits.val_y), 10)
    np.testing.assert_allclose(cache.logits, torch.stack(outs).numpy(), rtol=1e-2, atol=1e-2)
    assert cache.labels.tolist() == splits.val_y.tolist()
    cache.save(tmp_path / "c.npz")
    back = ExitCache.load(tmp_path / "c.npz")
    assert np.array_equal(back.logits, cache.logits) and np.array_equal(back.labels, cache.labels)


def test_older_caches_load_without_logits_and_are_not_found_on_disk(space: SearchSpace, tmp_path: Path) -> None:
    arch = space.largest()
    k = arch.num_exits
    old = ExitCache(arch, np.zeros((k, 3), np.float32), np.zeros((k, 3), bool), np.arange(float(k)))
    old.save(tmp_path / "old.npz")
    back = ExitCache.load(tmp_path / "old.npz")
    assert back.logits is None and back.labels is None
    # A file written under the key of the format before logits is not today's cache.
    old.save(tmp_path / f"{_digest(arch.to_json(), 'val', 'maxprob', 'w')}.npz")
    assert ExitCacheStore(tmp_path, weights_id="w").get(arch, "val", "maxprob") is None
