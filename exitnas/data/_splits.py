"""Data config, the train/val/test splits every dataset returns, and the dataset registry."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from exitnas._errors import UserError
from exitnas._registry import Registry

__all__ = [
    "DATASETS",
    "DataConfig",
    "ImageSplits",
    "load_dataset",
    "make_splits",
    "stratified_holdout",
]


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to hold out validation images.

    Attributes:
        name: Registry name of the dataset (see ``exitnas list``).
        root: Path for file-based datasets (a folder, or the tar for ``cifar10-jpeg``).
        val_size: Validation images held out of the training images: an ``int`` is a
            count, a ``float`` a fraction in (0, 1).
        seed: Seed of the train/val split (the test split never depends on it).
        cache_dir: Where decoded arrays are cached; by default ``<root>/.exitnas-cache``
            for an image folder and ``.cache/exitnas`` for ``cifar10-jpeg``.
        channels: Channels per image the network sees: ``None`` follows the images (1 when
            every image is grayscale, else 3); 1 turns colour images to grayscale (ITU-R 601
            luma, as PIL's ``convert("L")``); 3 repeats a grayscale channel.
    """

    name: str = "digits"
    root: str | None = None
    val_size: int | float = 0.1
    seed: int = 0
    cache_dir: str | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        # bool is an int subclass; ``val_size: true`` in YAML is a mistake, not "1 image".
        vs = self.val_size
        if isinstance(vs, bool) or not isinstance(vs, (int, float)):
            raise UserError(f"data.val_size must be an int or a float, got {vs!r}")
        if isinstance(vs, float) and not 0.0 < vs < 1.0:
            raise UserError(f"data.val_size {vs} as a fraction must be in (0, 1)")
        if isinstance(vs, int) and vs <= 0:
            raise UserError(f"data.val_size {vs} as a count must be positive")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserError(f"data.seed must be an int, got {self.seed!r}")
        if self.seed < 0:  # numpy's generators refuse negative seeds
            raise UserError(f"data.seed must be >= 0, got {self.seed}")
        if self.channels not in (None, 1, 3):
            raise UserError(f"data.channels must be 1, 3 or empty (follow the images), got {self.channels!r}")

    def to_dict(self) -> dict[str, object]:
        """Plain dict, for writing the resolved config next to results."""
        return dataclasses.asdict(self)


# eq=False: the generated __eq__ would compare tensors, whose ``==`` is elementwise.
@dataclass(frozen=True, eq=False)
class ImageSplits:
    """Train, validation and test images of one dataset, as uint8 tensors.

    Attributes:
        name: Dataset name.
        train_x: uint8 images, N×C×H×W, contiguous.
        train_y: int64 labels, N.
        val_x: Held-out validation images (taken from the training images).
        val_y: Their labels.
        test_x: Test images, untouched by any split.
        test_y: Their labels.
        num_classes: Number of classes.
        mean: Per-channel mean of ``train_x`` in [0, 1] units.
        std: Per-channel standard deviation of ``train_x`` in [0, 1] units.
        classes: Class names by label (a folder dataset's sorted folder names; else the
            dataset's names, or the labels written out).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.classes:  # frozen: set once here, so every ImageSplits names its classes
            object.__setattr__(self, "classes", tuple(str(i) for i in range(self.num_classes)))
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{split}_x must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise ValueError(f"{split}_y must be int64 of length {x.shape[0]}")

    @property
    def in_channels(self) -> int:
        """Channels per image (1 for grayscale, 3 for RGB)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Image height in pixels (all datasets here are square)."""
        return int(self.train_x.shape[2])


DATASETS: Registry[Callable[[DataConfig], ImageSplits]] = Registry("dataset")


def load_dataset(cfg: DataConfig) -> ImageSplits:
    """Load the dataset ``cfg.name`` and split validation images off its training set.

    Raises:
        UserError: Unknown name, missing files, or a ``val_size`` that does not fit.
    """
    return DATASETS.get(cfg.name)(cfg)


def stratified_holdout(
    labels: np.ndarray, size: int | float, seed: int, *, what: str = "val_size"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out), holding out ``size`` items class by class.

    Every class gives up about the same share of its items, for any ``size`` (even one
    smaller than the number of classes, where scikit-learn's splitter refuses).

    Args:
        labels: Integer labels, one per item.
        size: Items to hold out: an ``int`` count or a ``float`` fraction in (0, 1).
        seed: Seed of the random order; the same seed gives the same split.
        what: Name of the setting, for the error message.

    Returns:
        Sorted index arrays ``(kept, held_out)``.
    """
    n = len(labels)
    count = round(size * n) if isinstance(size, float) else int(size)
    if not 0 < count < n:
        raise UserError(
            f"{what}={size!r} leaves {n - count} of {n} training images; "
            f"use a count in 1..{n - 1} or a fraction in (0, 1)"
        )
    order = np.random.default_rng(seed).permutation(n)
    ordered = labels[order]
    # Rank of each item inside its class (in the random order), as a fraction of the
    # class size; taking the lowest fractions first takes every class proportionally.
    _, inverse, counts = np.unique(ordered, return_inverse=True, return_counts=True)
    rank = np.empty(n, dtype=np.int64)
    for c in range(len(counts)):
        members = np.flatnonzero(inverse == c)
        rank[members] = np.arange(len(members))
    key = (rank + 0.5) / counts[inverse]
    held = order[np.argsort(key, kind="stable")[:count]]
    kept_mask = np.ones(n, dtype=bool)
    kept_mask[held] = False
    return np.flatnonzero(kept_mask), np.sort(held)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images N×C×H×W, in [0, 1] units.

    A 256-bin histogram per channel avoids a float copy of the whole set (550 MB for
    CIFAR-10 train as float32) and is exact.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        # A constant channel would divide by zero in normalize(); 1.0 leaves it centred.
        stds.append(float(var.sqrt()) if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def make_splits(
    name: str,
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    test_x: np.ndarray | torch.Tensor,
    test_y: np.ndarray | torch.Tensor,
    num_classes: int,
    cfg: DataConfig,
    classes: Sequence[str] = (),
) -> ImageSplits:
    """Hold validation images out of the training images, give them ``cfg.channels`` and
    compute train statistics.

    Args:
        name: Dataset name.
        train_x: uint8 N×C×H×W training images (before the validation split).
        train_y: Integer labels of the training images.
        test_x: uint8 test images.
        test_y: Integer labels of the test images.
        num_classes: Number of classes.
        cfg: Supplies ``val_size``, ``seed`` and ``channels``.
        classes: Class names by label (default: the labels written out).
    """
    tx, ty = with_channels(_as_uint8(train_x), cfg.channels), _as_int64(train_y)
    kept, held = stratified_holdout(ty.numpy(), cfg.val_size, cfg.seed, what=f"dataset {name}: val_size")
    kept_t, held_t = torch.from_numpy(kept), torch.from_numpy(held)
    train_x_t = tx[kept_t].contiguous()
    mean, std = channel_stats(train_x_t)
    return ImageSplits(
        name=name,
        train_x=train_x_t,
        train_y=ty[kept_t].contiguous(),
        val_x=tx[held_t].contiguous(),
        val_y=ty[held_t].contiguous(),
        test_x=with_channels(_as_uint8(test_x), cfg.channels),
        test_y=_as_int64(test_y),
        num_classes=num_classes,
        mean=mean,
        std=std,
        classes=tuple(classes),
    )


def with_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 images N×C×H×W with ``channels`` channels (``None``: as they are)."""
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    # ITU-R 601-2 luma in integers, as PIL's convert("L"): (299 R + 587 G + 114 B) / 1000, rounded.
    r, g, b = (x[:, c : c + 1].to(torch.int32) for c in range(3))
    return ((r * 299 + g * 587 + b * 114 + 500) // 1000).to(torch.uint8).contiguous()


def _as_uint8(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {t.dtype}")
    return t.contiguous()


def _as_int64(y: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64).contiguous()
