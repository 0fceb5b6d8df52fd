"""Datasets read from arrays: scikit-learn's digits and CIFAR in its python-pickle layout."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from exitnas._errors import UserError
from exitnas.data._splits import (
    DATASETS,
    DataConfig,
    ImageSplits,
    make_splits,
    stratified_holdout,
)

__all__ = ["load_cifar10", "load_cifar100", "load_digits"]

# The digits test split must never move, whatever seed a run uses, so that test
# accuracies of different runs compare; hence a constant seed of its own.
_DIGITS_TEST_SEED = 20_240_601
_DIGITS_TEST_FRACTION = 0.2


#: CIFAR-10's class names by label (its batches.meta holds the same).
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@DATASETS.register("digits", doc="scikit-learn handwritten digits, 8×8 grayscale, 10 classes (built in)")
def load_digits(cfg: DataConfig) -> ImageSplits:
    """scikit-learn's 1,797 handwritten digits: 8×8 grayscale, 10 classes, no download."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other dataset uses.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_holdout(y, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED, what="test split")
    return make_splits("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, cfg,
                       tuple(str(d) for d in range(10)))


@DATASETS.register("cifar10", doc="CIFAR-10, python-pickle layout (data.root = cifar-10-batches-py)")
def load_cifar10(cfg: DataConfig) -> ImageSplits:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch`` under ``cfg.root``."""
    folder = _find_cifar_folder(cfg, "cifar10", "cifar-10-batches-py", "data_batch_1")
    batches = [_read_pickle(folder / f"data_batch_{i}", "cifar10") for i in range(1, 6)]
    test = _read_pickle(folder / "test_batch", "cifar10")
    train_x = np.concatenate([_images(b, "cifar10") for b in batches])
    train_y = np.concatenate([_labels(b, b"labels", "cifar10") for b in batches])
    test_x, test_y = _images(test, "cifar10"), _labels(test, b"labels", "cifar10")
    return make_splits("cifar10", train_x, train_y, test_x, test_y, 10, cfg, _CIFAR10_CLASSES)


@DATASETS.register("cifar100", doc="CIFAR-100 fine labels, pickle layout (data.root = cifar-100-python)")
def load_cifar100(cfg: DataConfig) -> ImageSplits:
    """CIFAR-100 (100 fine labels) from ``train`` and ``test`` under ``cfg.root``."""
    folder = _find_cifar_folder(cfg, "cifar100", "cifar-100-python", "train")
    train = _read_pickle(folder / "train", "cifar100")
    test = _read_pickle(folder / "test", "cifar100")
    return make_splits(
        "cifar100",
        _images(train, "cifar100"),
        _labels(train, b"fine_labels", "cifar100"),
        _images(test, "cifar100"),
        _labels(test, b"fine_labels", "cifar100"),
        100,
        cfg,
    )


def _find_cifar_folder(cfg: DataConfig, name: str, subfolder: str, marker: str) -> Path:
    """The folder holding ``marker``: ``cfg.root`` itself or its standard subfolder."""
    hint = f"point data.root at the extracted {subfolder} folder"
    if cfg.root is None:
        raise UserError(f"dataset {name}: data.root is not set; {hint}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset {name}: {root} is not a folder; {hint}")
    for folder in (root, root / subfolder):
        if (folder / marker).is_file():
            return folder
    raise UserError(f"dataset {name}: no {marker} under {root}; {hint}")


def _read_pickle(path: Path, name: str) -> dict[bytes, object]:
    if not path.is_file():
        raise UserError(f"dataset {name}: missing {path}; the CIFAR folder is incomplete, extract it again")
    # CIFAR's official python release is a set of pickles written by Python 2; reading
    # them with encoding="bytes" is the standard way, and the only way to get its arrays.
    # The unpickler admits only the few numpy globals an array needs: a crafted file
    # cannot call anything else (os.system, eval, ...).
    with path.open("rb") as f:
        try:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        except _Refused as exc:
            raise UserError(f"dataset {name}: {path} is refused ({exc}); extract the archive again") from None
        except Exception as exc:  # a truncated or foreign file; say which one
            raise UserError(f"dataset {name}: cannot read {path} ({exc}); extract the archive again") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise UserError(f"dataset {name}: {path} is not a CIFAR batch (no b'data' key)")
    return batch


def _array_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array refers to, under the module names numpy 1 and 2 write."""
    import codecs

    from numpy._core import multiarray, numeric

    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                         ("_codecs", "encode"): codecs.encode}  # bytes at protocol ≤ 2
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct  # protocol ≤ 4
        found[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return found


class _Refused(pickle.UnpicklingError):
    """A pickle that names a global a CIFAR batch never holds."""


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler for plain data (dict, list, bytes, str, numbers) and numpy arrays only."""

    _allowed = _array_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise _Refused(f"it refers to {module}.{name}, which a CIFAR batch never holds")
        return found


def _images(batch: dict[bytes, object], name: str) -> np.ndarray:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"dataset {name}: a batch holds data of shape {data.shape}, expected N×3072")
    # Rows are stored channel-major (1024 red, then green, then blue), i.e. already C×H×W.
    return data.reshape(-1, 3, 32, 32)


def _labels(batch: dict[bytes, object], key: bytes, name: str) -> np.ndarray:
    if key not in batch:
        raise UserError(f"dataset {name}: a batch has no {key.decode()} key; is this the right CIFAR?")
    return np.asarray(batch[key], dtype=np.int64)
