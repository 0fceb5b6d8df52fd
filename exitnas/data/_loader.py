"""Batches for training: a device-resident loader, and a DataLoader for data too large for it.

Small image sets (CIFAR is 150 MB as uint8) fit on a GPU whole, so the fast path keeps
them there and augments a whole batch with a few tensor ops, as airbench does: no worker
processes, no per-image Python. The DataLoader path does the same augmentation per image.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["GpuBatchLoader", "make_dataloader", "normalize"]


def normalize(
    x_uint8: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Scale uint8 images to float32 ``(x / 255 - mean) / std``, on the images' device.

    Computed as ``x * scale + shift`` with per-channel float32 constants: one multiply and one
    add, each correctly rounded on every device, so a batch is bit-identical on CPU and GPU
    (a division by a scalar is a multiply by its reciprocal on CUDA, and a division on the CPU).

    Args:
        x_uint8: Images N×C×H×W (or one image C×H×W), uint8.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel standard deviation in [0, 1] units.
    """
    return _affine(x_uint8, *_scale_shift(mean, std, x_uint8.device))


def _scale_shift(mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``1 / (255 std)`` and ``-mean / std`` (C×1×1 float32 on ``device``)."""
    m = torch.as_tensor(mean, dtype=torch.float64).cpu().reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).cpu().reshape(-1, 1, 1)
    scale, shift = (1.0 / (255.0 * s)).float(), (-m / s).float()
    return scale.to(device), shift.to(device)


def _affine(x_uint8: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x_uint8.to(torch.float32).mul_(scale).add_(shift)


def _seed_of(*words: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence is a good hash)."""
    state = np.random.SeedSequence([w % 2**64 for w in words]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1  # torch.Generator.manual_seed takes a signed 64-bit int


# Domain tags keep the permutation and augmentation streams apart for equal words.
_PERM, _AUG = 0, 1


def _draw_crop_flip(n: int, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """A batch's random numbers, 3×N int64 on the CPU: row offsets, column offsets, mirror (0/1)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen) if pad > 0 else torch.zeros(n, dtype=torch.int64)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen) if pad > 0 else torch.zeros(n, dtype=torch.int64)
    mirror = (torch.rand(n, generator=gen) < 0.5).long() if flip else torch.zeros(n, dtype=torch.int64)
    return torch.stack([dy, dx, mirror])


def _crop_flip_batch(
    x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a batch N×C×H×W.

    Random numbers come from the CPU generator ``gen``, so a batch is the same on CPU and GPU.
    """
    return _apply_crop_flip(x, _draw_crop_flip(x.shape[0], gen, pad, flip).to(x.device), pad, flip)


def _apply_crop_flip(x: torch.Tensor, rand: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Crop and flip ``x`` (N×C×H×W) as ``rand`` (3×N, on ``x``'s device, see _draw_crop_flip) says."""
    n, c, h, w = x.shape
    if pad > 0:
        dy, dx = rand[0], rand[1]
        padded = F.pad(x, (pad, pad, pad, pad))
        # One gather for the whole batch: image i reads rows dy[i]..dy[i]+h-1 and columns
        # dx[i]..dx[i]+w-1 of its padded copy.
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        x = torch.where(rand[2].bool()[:, None, None, None], x.flip(3), x)
    return x


class GpuBatchLoader:
    """The whole uint8 dataset on one device, cut into augmented, normalized batches.

    Batches are a function of ``(seed, epoch, batch index)`` alone, so training resumed at
    batch ``k`` of an epoch sees exactly the batches it would have seen without stopping.

    Args:
        x: Images N×C×H×W, uint8 (on any device; copied to ``device`` once).
        y: Labels N, integer.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel standard deviation in [0, 1] units.
        batch_size: Images per batch.
        device: Where the data lives and batches are made.
        augment: Random crop and flip; off for evaluation.
        pad: Zero padding of the random crop (4 for 32×32 CIFAR, 1 for 8×8 digits; 0: no crop).
        flip: Random horizontal flip (off for digits, where mirrored digits mean other things).
        shuffle: New order every epoch; off keeps the stored order.
        drop_last: Drop the last, smaller batch.
        seed: Seed of the order and the augmentation.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
        if y.shape != x.shape[:1]:
            raise ValueError(f"y must have {x.shape[0]} labels, got shape {tuple(y.shape)}")
        if batch_size <= 0 or pad < 0:
            raise ValueError(f"batch_size must be positive and pad non-negative, got {batch_size}, {pad}")
        self.device = torch.device(device)
        self.x = x.to(self.device).contiguous()
        self.y = y.to(self.device, torch.int64)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._scale, self._shift = _scale_shift(self.mean, self.std, self.device)  # on the device once
        self.batch_size = batch_size
        self.augment, self.pad, self.flip = augment, pad, flip
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of one epoch, from batch ``start_batch`` on.

        Args:
            epoch: Epoch number; with the seed it fixes the order and augmentation.
            start_batch: First batch to yield, to resume an interrupted epoch.

        Yields:
            ``(x, y)``: normalized float32 images N×C×H×W and int64 labels, on the device.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        n = self.x.shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed_of(self.seed, epoch, _PERM))
            order = _to_device(torch.randperm(n, generator=gen), self.device)
        else:
            order = torch.arange(n, device=self.device)
        if self.augment:  # the epoch's random numbers, drawn per batch, copied to the device at once
            rand = _to_device(self._draw(epoch, start_batch, n), self.device)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            xb = self.x[idx]
            if self.augment:
                at = (b - start_batch) * self.batch_size
                xb = _apply_crop_flip(xb, rand[:, at : at + len(idx)], self.pad, self.flip)
            yield _affine(xb, self._scale, self._shift), self.y[idx]

    def _draw(self, epoch: int, start_batch: int, n: int) -> torch.Tensor:
        """Random numbers of batches ``start_batch``… of ``epoch`` side by side (3×images): each
        batch's from its own seed, so a resumed epoch draws what the whole epoch would."""
        parts = [torch.zeros(3, 0, dtype=torch.int64)]
        for b in range(start_batch, len(self)):
            size = min(self.batch_size, n - b * self.batch_size)
            gen = torch.Generator().manual_seed(_seed_of(self.seed, epoch, _AUG, b))
            parts.append(_draw_crop_flip(size, gen, self.pad, self.flip))
        return torch.cat(parts, dim=1)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (on the CPU) on ``device``: through pinned memory without waiting, for a GPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


class _AugmentedImages(Dataset):
    """Per-image version of the loader's augmentation, for :func:`make_dataloader`."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float], std: Sequence[float],
        augment: bool, pad: int, flip: bool, seed: int,
    ) -> None:
        self.x, self.y = x.contiguous(), y.to(torch.int64)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment, self.pad, self.flip, self.seed = augment, pad, flip, seed
        self._gen: torch.Generator | None = None
        self._pid = -1

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]
        if self.augment:
            img = _crop_flip_batch(img[None], self._generator(), self.pad, self.flip)[0]
        return normalize(img, self.mean, self.std), self.y[i]

    def _generator(self) -> torch.Generator:
        # One generator per process: a forked worker must not replay its parent's stream.
        # Workers take DataLoader's per-worker seed, itself drawn from the loader's seeded
        # generator, so runs with the same seed augment alike.
        if self._gen is None or self._pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            seed = info.seed if info is not None else _seed_of(self.seed, _AUG)
            self._gen = torch.Generator().manual_seed(seed % 2**63)
            self._pid = os.getpid()
        return self._gen

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_gen"], state["_pid"] = None, -1  # spawned workers make their own
        return state


def make_dataloader(
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    *,
    augment: bool,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    pad: int = 4,
    flip: bool = True,
    drop_last: bool = False,
) -> DataLoader:
    """A ``torch.utils.data.DataLoader`` with the same augmentation, done per image.

    For data too large to keep on the device. Order and worker seeds come from a generator
    seeded with ``seed``; batches are on the CPU.

    Args:
        x: Images N×C×H×W, uint8, on the CPU.
        y: Labels N.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel standard deviation in [0, 1] units.
        batch_size: Images per batch.
        augment: Random crop with zero padding ``pad`` and, if ``flip``, horizontal flip.
        shuffle: New order every epoch.
        num_workers: Worker processes (0 decodes in the main process).
        seed: Seed of the order and the augmentation.
        pad: Zero padding of the random crop.
        flip: Random horizontal flip.
        drop_last: Drop the last, smaller batch.
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"x must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
    dataset = _AugmentedImages(x, y, mean, std, augment, pad, flip, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(_seed_of(seed, _PERM)),
        persistent_workers=False,
    )
