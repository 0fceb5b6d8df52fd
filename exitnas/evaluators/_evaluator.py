"""``Evaluator``: a trained supernet + data → recalibrated subnets, exit caches and costs.

It knows nothing of the search: the search asks it for an :class:`ExitCache` and costs of
an arch and does the threshold arithmetic itself.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import torch

from exitnas.data import ImageSplits, normalize
from exitnas.evaluators._cache import ExitCache, ExitCacheStore, build_exit_cache
from exitnas.evaluators._cost import ExitCosts, exit_costs
from exitnas.evaluators._recalibrate import recalibrated_subnet
from exitnas.search_space import ArchConfig, StaticNet, Supernet, fit_ensemble

__all__ = ["Evaluator", "weights_digest"]

SPLITS = ("train", "val", "test")
#: Training images (from the recalibration subset) in the "train" exit cache, for rules that
#: need exit statistics on training data (the bag-of-features exit rule).
TRAIN_CACHE_IMAGES = 1000


@torch.no_grad()
def fit_subnet_ensemble(net: StaticNet, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                        std: tuple[float, ...], batch_size: int = 500, device: torch.device | str = "cpu") -> None:
    """Fit ``net``'s exit ensemble (if it has one) to its exits on training ``images`` (uint8)."""
    if net.ensemble is None:
        return
    was_training = net.training
    net.eval()
    outs: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device), mean, std)
        outs.append(net(x, ensemble=False))  # the exits, before the ensemble
    logits = [torch.cat([o[k] for o in outs]) for k in range(net.num_exits)]
    fit_ensemble(net.ensemble, logits, labels.to(device))  # full-batch Adam: no randomness
    net.train(was_training)


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (keys on-disk caches to the weights)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _data_digest(splits: ImageSplits, recal_x: torch.Tensor, batch_size: int) -> str:
    """A short hash of the recalibration images, val and test, and the BN batch size (the
    recalibrated statistics average per-batch variances, so they depend on it)."""
    h = hashlib.sha256(repr((splits.mean, splits.std, batch_size)).encode())
    for t in (recal_x, splits.val_x, splits.val_y, splits.test_x, splits.test_y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Evaluator:
    """Measures archs of one trained supernet on one dataset.

    Args:
        supernet: The trained supernet (left unchanged: subnets are recalibrated copies).
        splits: The data; recalibration uses training images, caches use val (and test;
            "train" is the first ``TRAIN_CACHE_IMAGES`` recalibration images).
        recal_images: Training images for BatchNorm recalibration (a fixed random subset).
        kind: Confidence measure, ``maxprob`` or ``entropy``.
        cache_dir: Folder for exit caches on disk (memory only when None).
        device: Where subnets run.
    """

    def __init__(self, supernet: Supernet, splits: ImageSplits, *, recal_images: int = 2000,
                 batch_size: int = 500, kind: str = "maxprob", cache_dir: str | None = None,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.supernet = supernet.eval()
        self.space = supernet.space
        self.splits = splits
        self.kind = kind
        self.batch_size = batch_size
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        n = min(recal_images, len(splits.train_x))
        pick = torch.randperm(len(splits.train_x), generator=g)[:n]
        self.recal_x, self.recal_y = splits.train_x[pick], splits.train_y[pick]
        # On disk a cache is only valid for these weights, these images and this recalibration.
        store_id = f"{weights_digest(supernet)}-{_data_digest(splits, self.recal_x, batch_size)}" if cache_dir else ""
        self.store = ExitCacheStore(cache_dir, store_id)
        self._costs: dict[ArchConfig, ExitCosts] = {}
        self.forward_passes = 0  # subnets built and run (a threshold-only change adds none)

    def subnet(self, arch: ArchConfig) -> StaticNet:
        """``to_static(arch)`` with recalibrated BatchNorm, in eval mode; its exit ensemble,
        if the space has one, fitted on the "train" images."""
        self.space.validate(arch)
        net = recalibrated_subnet(self.supernet, arch, self.recal_x, self.splits.mean, self.splits.std,
                                  self.batch_size, self.device)
        x, y = self._split("train")
        fit_subnet_ensemble(net, x, y, self.splits.mean, self.splits.std, self.batch_size, self.device)
        return net

    def costs(self, arch: ArchConfig, net: StaticNet | None = None) -> ExitCosts:
        """Per-exit cumulative MACs and parameters (memoised by arch)."""
        if arch not in self._costs:
            net = net if net is not None else self.supernet.to_static(self.space.validate(arch))
            shape = tuple(self.splits.train_x.shape[1:])
            self._costs[arch] = exit_costs(net, shape)
        return self._costs[arch]

    def caches(self, arch: ArchConfig, splits: Iterable[str] = ("val",)) -> dict[str, ExitCache]:
        """Exit caches of ``arch`` on the named splits; one recalibration serves them all."""
        splits = tuple(splits)
        for s in splits:
            if s not in SPLITS:
                raise ValueError(f"unknown split {s!r}")
        out = {s: self.store.get(arch, s, self.kind) for s in splits}
        todo = [s for s, c in out.items() if c is None]
        if todo:
            net = self.subnet(arch)
            macs = np.asarray(self.costs(arch, net).macs, dtype=np.float64)
            for s in todo:
                x, y = self._split(s)
                cache = build_exit_cache(net, arch, x, y, self.splits.mean, self.splits.std, macs,
                                         self.kind, self.batch_size, self.device)
                self.store.put(cache, s)
                out[s] = cache
            self.forward_passes += 1
        return out  # type: ignore[return-value]

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.recal_x[:TRAIN_CACHE_IMAGES], self.recal_y[:TRAIN_CACHE_IMAGES]
        return getattr(self.splits, f"{split}_x"), getattr(self.splits, f"{split}_y")

    def cache(self, arch: ArchConfig, split: str = "val") -> ExitCache:
        return self.caches(arch, (split,))[split]
