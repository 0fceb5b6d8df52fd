"""Datasets of encoded image files: an image folder and the CIFAR-10 JPEG tar.

Decoding tens of thousands of JPEGs takes seconds, so the decoded uint8 arrays are cached
as an ``.npz`` keyed by what the source looked like (file sizes and modification times);
a changed source gets a new key and is decoded again. Images that are all grayscale (PIL
modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) decode to one channel; if any image has
colour, every image decodes to RGB. ``data.channels`` can force either (see ``make_splits``).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from exitnas._errors import UserError
from exitnas._io import atomic_write
from exitnas.data._splits import DATASETS, DataConfig, ImageSplits, make_splits

__all__ = ["find_cifar10_jpeg", "load_cifar10_jpeg", "load_image_folder"]

_SUFFIXES = (".jpg", ".jpeg", ".png")
_SPLITS = ("train", "test")
_TAR_NAME = "cifar10-jpeg.tar.xz"
# Bump when the cache layout or decoding changes, so old caches are not trusted.
_CACHE_VERSION = 1
#: Image folders decoded before grayscale kept one channel had 3: their caches get a new key.
_FOLDER_DECODING = "gray-one-channel"
#: PIL modes without colour: a dataset of only these decodes to one channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

# (class, file name, the file or its bytes): a file is read only when it is decoded.
_Entry = tuple[str, str, Path | bytes]


@dataclass(frozen=True)
class _Decoded:
    """Both splits of a file dataset, images N×C×H×W uint8, classes sorted by name."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]


@DATASETS.register("image-folder", doc="root/{train,test}/<class>/*.jpg|jpeg|png, decoded once and cached")
def load_image_folder(cfg: DataConfig) -> ImageSplits:
    """Images under ``root/train/<class>/`` and ``root/test/<class>/``, classes sorted by name."""
    root = _image_root(cfg)
    files = {split: _list_folder(root, split) for split in _SPLITS}
    stamp = [(str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for s in _SPLITS for p, st in files[s]]
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else root / ".exitnas-cache"
    key = _cache_key("image-folder", _FOLDER_DECODING, str(root.resolve()), stamp)
    decoded = _cached(cache_dir / f"image-folder-{key}.npz", lambda: _decode_folder(root, files))
    return _splits_of("image-folder", decoded, cfg)


@DATASETS.register("cifar10-jpeg", doc="CIFAR-10 as JPEGs (shared/data/cifar10-jpeg.tar.xz), decoded once, cached")
def load_cifar10_jpeg(cfg: DataConfig) -> ImageSplits:
    """CIFAR-10 as JPEGs from the shared tar (or an extracted copy of it), decoded once and cached."""
    source = find_cifar10_jpeg(cfg.root)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path.cwd() / ".cache" / "exitnas"
    if source.is_dir():  # an extracted copy, e.g. carried to another machine
        folder_cfg = DataConfig("image-folder", str(source), cfg.val_size, cfg.seed, str(cache_dir), cfg.channels)
        return _renamed(load_image_folder(folder_cfg), "cifar10-jpeg")
    st = source.stat()
    key = _cache_key("cifar10-jpeg", source.name, st.st_size, st.st_mtime_ns)
    decoded = _cached(cache_dir / f"cifar10-jpeg-{key}.npz", lambda: _decode_tar(source))
    if len(decoded.classes) != 10:
        raise UserError(f"dataset cifar10-jpeg: {source} holds {len(decoded.classes)} classes, expected 10")
    return _splits_of("cifar10-jpeg", decoded, cfg)


def find_cifar10_jpeg(root: str | None) -> Path:
    """Locate the CIFAR-10 JPEG data: ``root`` if given, else the shared data folder.

    Without ``root`` this looks in ``$EXITNAS_SHARED`` (a ``shared`` folder, or its
    ``data`` folder), then for ``shared/data/cifar10-jpeg.tar.xz`` in the current folder
    and each of its parents.

    Args:
        root: The tar, a folder holding it, or an extracted folder with ``train/`` and ``test/``.

    Returns:
        The tar file, or an extracted folder.
    """
    hint = f"set data.root to {_TAR_NAME} (it lives in the project's shared/data folder)"
    if root is not None:
        path = Path(root).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            if (path / _TAR_NAME).is_file():
                return path / _TAR_NAME
            if all((path / split).is_dir() for split in _SPLITS):
                return path
            raise UserError(
                f"dataset cifar10-jpeg: no {_TAR_NAME} and no train/ and test/ under {path}; {hint}"
            )
        raise UserError(f"dataset cifar10-jpeg: {path} does not exist; {hint}")
    for candidate in _default_tar_candidates():
        if candidate.is_file():
            return candidate
    raise UserError(
        f"dataset cifar10-jpeg: no shared/data/{_TAR_NAME} here, in a parent or in $EXITNAS_SHARED; {hint}"
    )


def _default_tar_candidates() -> Iterator[Path]:
    shared = os.environ.get("EXITNAS_SHARED")
    if shared:  # an explicit setting wins over guessing from the current folder
        yield Path(shared).expanduser() / "data" / _TAR_NAME
        yield Path(shared).expanduser() / _TAR_NAME
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        yield folder / "shared" / "data" / _TAR_NAME


def _image_root(cfg: DataConfig) -> Path:
    hint = "point data.root at a folder with train/<class>/ and test/<class>/ image folders"
    if cfg.root is None:
        raise UserError(f"dataset image-folder: data.root is not set; {hint}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset image-folder: {root} is not a folder; {hint}")
    return root


def _list_folder(root: Path, split: str) -> list[tuple[Path, os.stat_result]]:
    """Image files of one split in (class, file name) order, with their stat results."""
    folder = root / split
    if not folder.is_dir():
        raise UserError(
            f"dataset image-folder: no {split}/ folder under {root}; create {folder}/<class>/ with images"
        )
    files = [
        (p, p.stat())
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir())
        for p in sorted(class_dir.iterdir())
        if p.suffix.lower() in _SUFFIXES and p.is_file()
    ]
    if not files:
        raise UserError(
            f"dataset image-folder: no .jpg/.jpeg/.png images in {folder}/<class>/; add images or fix data.root"
        )
    return files


def _decode_folder(root: Path, files: dict[str, list[tuple[Path, os.stat_result]]]) -> _Decoded:
    entries = {split: [(p.parent.name, str(p), p) for p, _ in files[split]] for split in _SPLITS}
    return _decode_entries(entries, f"dataset image-folder ({root})")


def _decode_tar(path: Path) -> _Decoded:
    """Decode ``<top?>/{train,test}/<class>/*.jpg`` straight from the tar, without extracting."""
    entries: dict[str, list[_Entry]] = {split: [] for split in _SPLITS}
    try:
        # Read members in archive order: an xz stream cannot seek, so random access would
        # decompress the archive again for every member.
        with tarfile.open(path, mode="r:xz") as tf:
            for member in tf:
                parts = member.name.split("/")
                is_image = len(parts) >= 3 and parts[-3] in _SPLITS and parts[-1].lower().endswith(_SUFFIXES)
                if member.isfile() and is_image:
                    data = tf.extractfile(member).read()  # type: ignore[union-attr]
                    entries[parts[-3]].append((parts[-2], member.name, data))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"dataset cifar10-jpeg: cannot read {path} ({exc}); copy the tar again") from None
    for split in _SPLITS:
        if not entries[split]:
            raise UserError(f"dataset cifar10-jpeg: no {split}/<class>/*.jpg in {path}; is it the right tar?")
        entries[split].sort(key=lambda e: (e[0], e[1]))  # archive order is not guaranteed
    return _decode_entries(entries, f"dataset cifar10-jpeg ({path})")


def _decode_entries(entries: dict[str, list[_Entry]], what: str) -> _Decoded:
    """Decode the entries of both splits into arrays, labels from sorted class names."""
    classes = tuple(sorted({cls for cls, _, _ in entries["train"]}))
    unknown = sorted({cls for cls, _, _ in entries["test"]} - set(classes))
    if unknown:
        raise UserError(
            f"{what}: test classes {unknown} have no training images; add them to train/ or remove them"
        )
    index = {cls: i for i, cls in enumerate(classes)}
    xs, ys = [], []
    shape: tuple[int, ...] | None = None
    gray = True
    for split in _SPLITS:
        x, shape, split_gray = _decode_images(entries[split], shape, what)
        xs.append(x)
        ys.append(np.array([index[cls] for cls, _, _ in entries[split]], dtype=np.int64))
        gray = gray and split_gray
    if gray:  # converted to RGB, a grayscale image is its one channel three times: keep one
        xs = [np.ascontiguousarray(x[:, :1]) for x in xs]
    return _Decoded(xs[0], ys[0], xs[1], ys[1], classes)


def _decode_images(
    entries: list[_Entry], shape: tuple[int, ...] | None, what: str
) -> tuple[np.ndarray, tuple[int, ...], bool]:
    """Decode images to one N×3×H×W uint8 array; all must have ``shape`` (H×W×3) or the first's.
    Also returns whether every image was grayscale."""
    out: np.ndarray | None = None
    gray = True
    for i, (_, name, source) in enumerate(entries):
        try:
            data = source.read_bytes() if isinstance(source, Path) else source
            with Image.open(io.BytesIO(data)) as im:
                gray = gray and im.mode in _GRAY_MODES
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{what}: cannot decode {name} ({exc}); remove or replace it") from None
        if shape is None:
            shape = arr.shape
        if arr.shape != shape:
            raise UserError(
                f"{what}: {name} is {arr.shape[1]}×{arr.shape[0]} but the others are "
                f"{shape[1]}×{shape[0]}; resize all images to one size"
            )
        if out is None:
            out = np.empty((len(entries), *shape), dtype=np.uint8)
        out[i] = arr
    assert out is not None and shape is not None  # callers pass non-empty lists
    # Decoded as N×H×W×C; the models want channels first.
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), shape, gray


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(repr((_CACHE_VERSION, *parts)).encode()).hexdigest()[:16]


def _cached(path: Path, decode: Callable[[], _Decoded]) -> _Decoded:
    """Load decoded arrays from ``path``, or decode them and write ``path`` atomically."""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                classes = tuple(str(c) for c in z["classes"])
                return _Decoded(z["train_x"], z["train_y"], z["test_x"], z["test_y"], classes)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache is decoded again and overwritten
    d = decode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, savez would append .npz to it
            np.savez(f, train_x=d.train_x, train_y=d.train_y, test_x=d.test_x, test_y=d.test_y,
                     classes=np.array(d.classes))

    try:
        # Written to a temporary name and renamed, so a crash never leaves half a cache; a
        # killed writer's temporary file is removed by the next run's write.
        atomic_write(path, write)
    except OSError as exc:  # a read-only data folder still works, just without a cache
        warnings.warn(f"could not write the dataset cache {path}: {exc}; set data.cache_dir", stacklevel=2)
    return d


def _splits_of(name: str, decoded: _Decoded, cfg: DataConfig) -> ImageSplits:
    d = decoded
    return make_splits(name, d.train_x, d.train_y, d.test_x, d.test_y, len(d.classes), cfg, d.classes)


def _renamed(splits: ImageSplits, name: str) -> ImageSplits:
    return replace(splits, name=name)
