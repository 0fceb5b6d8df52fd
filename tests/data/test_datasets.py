"""Datasets: layouts, splits, statistics, caching and the errors a user sees."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exitnas._errors import UserError
from exitnas.data import DATASETS, DataConfig, ImageSplits, _files, load_dataset

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------- helpers


def _rows(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """Each (image, label) as bytes, to compare splits as multisets."""
    flat = torch.cat([x.reshape(len(x), -1).to(torch.int64), y[:, None]], dim=1).numpy()
    return sorted(r.tobytes() for r in flat)


def _check_partition(s: ImageSplits, all_x: torch.Tensor, all_y: torch.Tensor) -> None:
    """train + val together are exactly the original training images."""
    assert _rows(torch.cat([s.train_x, s.val_x]), torch.cat([s.train_y, s.val_y])) == _rows(all_x, all_y)


def _unique_images(n: int, start: int, c: int = 3, hw: int = 32) -> np.ndarray:
    """uint8 images N×C×H×W whose first two pixels spell their global index, so all differ."""
    x = np.random.default_rng(start).integers(0, 256, (n, c, hw, hw), dtype=np.uint8)
    idx = np.arange(start, start + n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = idx % 256, idx // 256
    return x


def _write_pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _fake_cifar10(folder: Path, per_batch: int = 6, test: int = 5) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = _unique_images(per_batch, start=b * 100)
        y = (np.arange(per_batch) + b) % 10
        _write_pickle(folder / f"data_batch_{b}", {b"data": x.reshape(per_batch, -1), b"labels": y.tolist()})
        xs.append(x)
        ys.append(y)
    xt = _unique_images(test, start=10_000)
    _write_pickle(folder / "test_batch", {b"data": xt.reshape(test, -1), b"labels": list(range(test))})
    return np.concatenate(xs), np.concatenate(ys)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _fake_folder(root: Path, size: int = 6) -> dict[str, np.ndarray]:
    """3 classes (created out of name order), 4 train and 2 test PNGs each; returns the images."""
    written = {}
    for k, cls in enumerate(["zebra", "ant", "moose"]):
        for split, count in (("train", 4), ("test", 2)):
            for i in range(count):
                arr = np.full((size, size, 3), 10 * k + i, dtype=np.uint8)
                arr[0, 0] = (k, i, 200)
                _png(root / split / cls / f"{i:02d}.png", arr)
                written[f"{split}/{cls}/{i:02d}"] = arr
    return written


# ---------------------------------------------------------------------------------- registry


def test_registered_names() -> None:
    assert list(DATASETS) == ["cifar10", "cifar10-jpeg", "cifar100", "digits", "image-folder"]
    assert all(doc for _, doc in DATASETS.describe())


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(UserError, match="digits"):
        load_dataset(DataConfig(name="mnist"))


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.0, 1.5, True, "0.1", None])
def test_bad_val_size_is_a_user_error(bad: object) -> None:
    with pytest.raises(UserError, match="val_size"):
        DataConfig(val_size=bad)  # type: ignore[arg-type]


def test_val_size_larger_than_train_is_a_user_error() -> None:
    with pytest.raises(UserError, match="val_size"):
        load_dataset(DataConfig(val_size=5000))


# ---------------------------------------------------------------------------------- digits


def test_digits_shapes_and_partition() -> None:
    from sklearn.datasets import load_digits

    s = load_dataset(DataConfig())
    assert (s.name, s.num_classes, s.in_channels, s.image_size) == ("digits", 10, 1, 8)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (1294, 144, 359)
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.is_contiguous()
        assert x.shape[1:] == (1, 8, 8)
    assert int(s.train_x.max()) == 255 and int(s.train_x.min()) == 0
    raw = load_digits()
    all_x = torch.from_numpy(np.rint(raw.images * 255 / 16).astype(np.uint8)[:, None])
    all_y = torch.from_numpy(raw.target.astype(np.int64))
    together = _rows(torch.cat([s.train_x, s.val_x, s.test_x]), torch.cat([s.train_y, s.val_y, s.test_y]))
    assert together == _rows(all_x, all_y)
    # Stratified: every class is in val and test.
    assert set(s.val_y.tolist()) == set(range(10)) == set(s.test_y.tolist())


def test_digits_test_split_ignores_seed_and_val_follows_it() -> None:
    a = load_dataset(DataConfig(seed=0, val_size=100))
    b = load_dataset(DataConfig(seed=1, val_size=100))
    c = load_dataset(DataConfig(seed=0, val_size=100))
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.val_x, b.val_x)
    assert torch.equal(a.val_x, c.val_x) and torch.equal(a.train_x, c.train_x)
    assert len(a.val_x) == 100


def test_mean_std_come_from_train_only() -> None:
    s = load_dataset(DataConfig(val_size=0.3))
    train = s.train_x.double() / 255
    assert s.mean == pytest.approx((float(train.mean()),), abs=1e-9)
    assert s.std == pytest.approx((float(train.std(unbiased=False)),), abs=1e-9)
    everything = torch.cat([s.train_x, s.val_x]).double() / 255
    assert s.mean[0] != pytest.approx(float(everything.mean()), abs=1e-9)


# ---------------------------------------------------------------------------------- CIFAR pickles


def test_cifar10_layout_split_and_subfolder(tmp_path: Path) -> None:
    x, y = _fake_cifar10(tmp_path / "cifar-10-batches-py")
    s = load_dataset(DataConfig("cifar10", root=str(tmp_path), val_size=7, seed=3))
    assert (s.num_classes, s.in_channels, s.image_size) == (10, 3, 32)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (23, 7, 5)
    _check_partition(s, torch.from_numpy(x), torch.from_numpy(y))
    # Rows are channel-major: the image of test row 0 is that row reshaped to 3×32×32.
    assert torch.equal(s.test_x[0], torch.from_numpy(_unique_images(1, start=10_000)[0]))
    assert s.test_y.tolist() == [0, 1, 2, 3, 4]
    mean = (s.train_x.double() / 255).mean(dim=(0, 2, 3))
    assert s.mean == pytest.approx(tuple(mean.tolist()), abs=1e-9)


def test_cifar10_train_val_test_disjoint(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    s = load_dataset(DataConfig("cifar10", root=str(tmp_path), val_size=0.2))
    ids = [set(map(tuple, x[:, 0, 0, :2].tolist())) for x in (s.train_x, s.val_x, s.test_x)]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 35


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    x = _unique_images(12, start=0)
    train = {b"data": x.reshape(12, -1), b"fine_labels": list(range(50, 62)), b"coarse_labels": [0] * 12}
    _write_pickle(tmp_path / "train", train)
    test = {b"data": _unique_images(3, 500).reshape(3, -1), b"fine_labels": [99, 0, 1]}
    _write_pickle(tmp_path / "test", test)
    s = load_dataset(DataConfig("cifar100", root=str(tmp_path), val_size=2))
    assert s.num_classes == 100 and s.test_y.tolist() == [99, 0, 1]
    _check_partition(s, torch.from_numpy(x), torch.arange(50, 62))


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("no-root", "data.root is not set"),
        ("missing", "is not a folder"),
        ("empty", "no data_batch_1 under"),
        ("incomplete", "missing .*data_batch_4"),
        ("garbage", "cannot read"),
    ],
)
def test_cifar10_errors(tmp_path: Path, setup: str, pattern: str) -> None:
    root: str | None = str(tmp_path)
    if setup == "no-root":
        root = None
    elif setup == "missing":
        root = str(tmp_path / "nope")
    elif setup == "incomplete":
        _fake_cifar10(tmp_path / "c")
        (tmp_path / "c" / "data_batch_4").unlink()
    elif setup == "garbage":
        _fake_cifar10(tmp_path / "c")
        (tmp_path / "c" / "test_batch").write_bytes(b"not a pickle")
    if setup in ("incomplete", "garbage"):
        root = str(tmp_path / "c")
    with pytest.raises(UserError, match=pattern) as info:
        load_dataset(DataConfig("cifar10", root=root))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- image folder


def test_image_folder_decodes_sorted_classes(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    written = _fake_folder(root)
    s = load_dataset(DataConfig("image-folder", root=str(root), val_size=3))
    assert (s.num_classes, s.in_channels, s.image_size) == (3, 3, 6)
    assert (len(s.train_x) + len(s.val_x), len(s.test_x)) == (12, 6)
    # Classes are sorted by name: ant=0, moose=1, zebra=2; test keeps (class, file) order.
    assert s.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    expected = torch.from_numpy(written["test/moose/01"]).permute(2, 0, 1)
    assert torch.equal(s.test_x[3], expected)
    assert any((root / ".exitnas-cache").glob("image-folder-*.npz"))


def test_image_folder_second_load_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_folder(tmp_path)
    cache = tmp_path / "cache"
    first = load_dataset(DataConfig("image-folder", root=str(tmp_path), cache_dir=str(cache)))

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(_files, "_decode_folder", no_decoding)
    second = load_dataset(DataConfig("image-folder", root=str(tmp_path), cache_dir=str(cache)))
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    # Changing a file changes the key, so the stale cache is not used.
    target = tmp_path / "train" / "ant" / "00.png"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(DataConfig("image-folder", root=str(tmp_path), cache_dir=str(cache)))


def test_image_folder_grayscale_and_jpeg_become_rgb(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.fromarray(np.full((5, 5), 90, np.uint8)).save(folder / "g.png")  # mode L
            Image.fromarray(np.full((5, 5, 3), 30, np.uint8)).save(folder / "c.JPG", quality=95)
    s = load_dataset(DataConfig("image-folder", root=str(tmp_path), val_size=1))
    assert s.in_channels == 3 and s.test_x.shape == (4, 3, 5, 5)
    assert int(s.test_x[1].float().mean().round()) == 90  # class a, g.png after c.JPG


def test_grayscale_folder_keeps_one_channel_unless_set(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(2):
                (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((5, 5), 40 * i + 7, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    s = load_dataset(DataConfig("image-folder", root=str(tmp_path), val_size=1))
    assert s.in_channels == 1 and s.test_x.shape == (4, 1, 5, 5) and s.classes == ("a", "b")
    assert s.test_x[1].unique().tolist() == [47]
    rgb = load_dataset(DataConfig("image-folder", root=str(tmp_path), val_size=1, channels=3))
    assert rgb.in_channels == 3 and torch.equal(rgb.test_x[:, 1], s.test_x[:, 0])


def test_colour_to_one_channel_is_pil_luma(tmp_path: Path) -> None:
    written = _fake_folder(tmp_path)
    s = load_dataset(DataConfig("image-folder", root=str(tmp_path), val_size=3, channels=1))
    assert s.in_channels == 1 and s.classes == ("ant", "moose", "zebra")
    luma = np.asarray(Image.fromarray(written["test/moose/01"]).convert("L"))
    assert torch.equal(s.test_x[3, 0], torch.from_numpy(luma))


def test_class_names_and_the_channels_key(tmp_path: Path) -> None:
    assert load_dataset(DataConfig("digits")).classes == tuple("0123456789")
    assert load_dataset(DataConfig("digits", channels=3)).in_channels == 3
    with pytest.raises(UserError, match="data.channels must be 1, 3 or empty"):
        DataConfig("digits", channels=2)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("missing-test", "no test/ folder"),
        ("empty-train", "no .jpg/.jpeg/.png images"),
        ("mixed-sizes", r"odd\.png is 7×6 but the others are 6×6"),
        ("broken", r"cannot decode .*bad\.png"),
        ("test-only-class", r"test classes \['yak'\] have no training images"),
    ],
)
def test_image_folder_errors(tmp_path: Path, setup: str, pattern: str) -> None:
    _fake_folder(tmp_path)
    if setup == "missing-test":
        for p in sorted((tmp_path / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (tmp_path / "test").rmdir()
    elif setup == "empty-train":
        for p in (tmp_path / "train").rglob("*.png"):
            p.unlink()
    elif setup == "mixed-sizes":
        _png(tmp_path / "train" / "moose" / "odd.png", np.zeros((6, 7, 3), np.uint8))
    elif setup == "broken":
        (tmp_path / "train" / "ant" / "bad.png").write_bytes(b"not an image")
    elif setup == "test-only-class":
        _png(tmp_path / "test" / "yak" / "0.png", np.zeros((6, 6, 3), np.uint8))
    with pytest.raises(UserError, match=pattern) as info:
        load_dataset(DataConfig("image-folder", root=str(tmp_path)))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- cifar10-jpeg


def _fake_jpeg_tar(path: Path, train: int = 3, test: int = 1) -> None:
    """A tiny tar shaped like cifar10-jpeg.tar.xz, under a top folder, with a README."""
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with tarfile.open(path, "w:xz") as tf:
        _add(tf, "top/README.md", b"hello")
        for split, count in (("test", test), ("train", train)):  # test first: order must not matter
            for k, cls in enumerate(classes):
                for i in range(count):
                    buf = io.BytesIO()
                    img = Image.fromarray(np.full((32, 32, 3), 20 * k + i, np.uint8))
                    img.save(buf, format="JPEG", quality=95)
                    _add(tf, f"top/{split}/{cls}/{i:04d}.jpg", buf.getvalue())


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_cifar10_jpeg_from_a_tar(tmp_path: Path) -> None:
    tar = tmp_path / "cifar10-jpeg.tar.xz"
    _fake_jpeg_tar(tar)
    cache = tmp_path / "cache"
    s = load_dataset(DataConfig("cifar10-jpeg", root=str(tar), val_size=10, cache_dir=str(cache)))
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (20, 10, 10)
    assert s.test_y.tolist() == list(range(10)) and s.name == "cifar10-jpeg"
    assert abs(int(s.test_x[4].float().mean().round()) - 80) <= 2  # deer: JPEG is close, not exact
    assert len(list(cache.glob("cifar10-jpeg-*.npz"))) == 1
    # A folder holding the tar works too, and hits the cache.
    again = load_dataset(DataConfig("cifar10-jpeg", root=str(tmp_path), val_size=10, cache_dir=str(cache)))
    assert torch.equal(again.train_x, s.train_x)


def test_cifar10_jpeg_extracted_folder(tmp_path: Path) -> None:
    tar = tmp_path / "c.tar.xz"
    _fake_jpeg_tar(tar, train=2)
    with tarfile.open(tar, "r:xz") as tf:
        tf.extractall(tmp_path / "x", filter="data")
    root = str(tmp_path / "x" / "top")
    s = load_dataset(DataConfig("cifar10-jpeg", root=root, val_size=5, cache_dir=str(tmp_path)))
    assert (s.name, s.num_classes, len(s.test_x)) == ("cifar10-jpeg", 10, 10)
    assert len(s.train_x) + len(s.val_x) == 20


def test_cifar10_jpeg_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    tar = tmp_path / "shared" / "data" / "cifar10-jpeg.tar.xz"
    tar.write_bytes(b"")
    monkeypatch.delenv("EXITNAS_SHARED", raising=False)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert _files.find_cifar10_jpeg(None) == tar.resolve()
    other = tmp_path / "elsewhere"
    (other / "data").mkdir(parents=True)
    (other / "data" / "cifar10-jpeg.tar.xz").write_bytes(b"")
    monkeypatch.setenv("EXITNAS_SHARED", str(other))
    assert _files.find_cifar10_jpeg(None) == other / "data" / "cifar10-jpeg.tar.xz"


def test_cifar10_jpeg_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXITNAS_SHARED", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no shared/data/cifar10-jpeg.tar.xz"):
        load_dataset(DataConfig("cifar10-jpeg"))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(DataConfig("cifar10-jpeg", root=str(tmp_path / "missing.tar.xz")))
    with pytest.raises(UserError, match="no cifar10-jpeg.tar.xz and no train/"):
        load_dataset(DataConfig("cifar10-jpeg", root=str(tmp_path)))
    (tmp_path / "bad.tar.xz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read"):
        load_dataset(DataConfig("cifar10-jpeg", root=str(tmp_path / "bad.tar.xz"), cache_dir=str(tmp_path)))


def _real_tar() -> Path | None:
    shared = os.environ.get("EXITNAS_SHARED")
    candidates = [Path(shared) / "data" / "cifar10-jpeg.tar.xz"] if shared else []
    candidates += [p / "shared" / "data" / "cifar10-jpeg.tar.xz" for p in (REPO, *REPO.parents)]
    return next((p for p in candidates if p.is_file()), None)


@pytest.mark.slow
@pytest.mark.skipif(
    _real_tar() is None, reason="cifar10-jpeg.tar.xz not found in $EXITNAS_SHARED/data or shared/data above the repo"
)
def test_real_cifar10_jpeg() -> None:
    tar = _real_tar()
    # The repo's ignored .cache/ keeps the decoded arrays between runs (decoding takes ~10 s).
    cache = REPO / ".cache" / "exitnas"
    s = load_dataset(DataConfig("cifar10-jpeg", root=str(tar), val_size=5000, cache_dir=str(cache)))
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (45000, 5000, 10000)
    assert s.train_x.shape[1:] == (3, 32, 32) and s.num_classes == 10
    assert torch.bincount(s.val_y).tolist() == [500] * 10
    assert torch.bincount(s.test_y).tolist() == [1000] * 10
    assert s.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)
