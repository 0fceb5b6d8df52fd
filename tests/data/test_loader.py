"""Loaders: shapes, normalization, determinism, exact resume and what augmentation does."""

from __future__ import annotations

import pytest
import torch

from exitnas.data import GpuBatchLoader, make_dataloader, normalize

H = W = 8
# Pixel (h, w) holds 1 + h*W + w: every pixel is distinct and none is the padding zero.
PATTERN = (1 + torch.arange(H * W, dtype=torch.uint8)).reshape(1, 1, H, W)


def _data(n: int = 37, c: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """n copies of the pattern (channel k adds 100*k), labelled by their index."""
    x = PATTERN.repeat(n, c, 1, 1) + 100 * torch.arange(c, dtype=torch.uint8)[None, :, None, None]
    return x.contiguous(), torch.arange(n)


def _loader(x: torch.Tensor, y: torch.Tensor, **kw: object) -> GpuBatchLoader:
    args: dict[str, object] = dict(batch_size=8, pad=2, seed=5)
    args.update(kw)
    return GpuBatchLoader(x, y, (0.0,) * x.shape[1], (1.0,) * x.shape[1], **args)  # type: ignore[arg-type]


def _raw(xb: torch.Tensor) -> torch.Tensor:
    """Undo normalize with mean 0, std 1: back to integer pixel values."""
    return (xb * 255).round().to(torch.int64)


def _offset_of(img: torch.Tensor, src: torch.Tensor, pad: int) -> tuple[int, int] | None:
    """The (dy, dx) shift under which ``img`` is ``src`` cropped from its zero-padded copy."""
    padded = torch.nn.functional.pad(src, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if torch.equal(padded[:, dy : dy + H, dx : dx + W], img):
                return dy - pad, dx - pad
    return None


# ---------------------------------------------------------------------------------- normalize


def test_normalize_values_dtype_and_shapes() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1).repeat(2, 1, 2, 2)
    out = normalize(x, (0.0, 0.2, 0.5), (1.0, 0.5, 0.25))
    assert out.dtype == torch.float32 and out.shape == x.shape and out.device == x.device
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.0, 2.0], abs=1e-6)  # float32 rounding
    assert torch.equal(normalize(x[0], (0.0, 0.2, 0.5), (1.0, 0.5, 0.25)), out[0])  # one C×H×W image
    assert x.dtype == torch.uint8  # input untouched


def test_normalize_is_the_exact_formula_within_float32_rounding() -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(1, 3, 1, 1)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    exact = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).reshape(-1, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).reshape(-1, 1, 1)
    assert (normalize(x, mean, std).double() - exact).abs().max() < 1e-6


# ---------------------------------------------------------------------------------- GpuBatchLoader


def test_len_and_batch_shapes() -> None:
    x, y = _data(37)
    assert len(_loader(x, y)) == 4
    assert len(_loader(x, y, drop_last=False)) == 5
    batches = list(_loader(x, y, drop_last=False).epoch(0))
    assert [len(b[0]) for b in batches] == [8, 8, 8, 8, 5]
    xb, yb = batches[0]
    assert xb.shape == (8, 2, H, W) and xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_no_augment_no_shuffle_is_normalized_data() -> None:
    x, y = _data(20)
    mean, std = (0.3, 0.6), (0.2, 0.1)
    loader = GpuBatchLoader(x, y, mean, std, 6, augment=False, shuffle=False, drop_last=False)
    xs, ys = zip(*loader.epoch(3))
    assert torch.equal(torch.cat(xs), normalize(x, mean, std)) and torch.equal(torch.cat(ys), y)


def test_every_sample_once_per_epoch() -> None:
    x, y = _data(37)
    x[:, 0, 0, 0] = torch.arange(37, dtype=torch.uint8)  # tag each image with its label
    loader = GpuBatchLoader(x, y, (0.0, 0.0), (1.0, 1.0), 8, augment=False, drop_last=False, seed=1)
    for epoch in (0, 1):
        xs, ys = zip(*loader.epoch(epoch))
        labels = torch.cat(ys)
        assert sorted(labels.tolist()) == list(range(37))
        assert torch.equal(_raw(torch.cat(xs))[:, 0, 0, 0], labels)  # images travel with labels
    assert not torch.equal(torch.cat([b[1] for b in loader.epoch(0)]), torch.arange(37))


def test_drop_last_gives_full_distinct_batches() -> None:
    x, y = _data(37)
    labels = torch.cat([yb for _, yb in _loader(x, y).epoch(0)])
    assert len(labels) == 32 and len(set(labels.tolist())) == 32


def test_deterministic_given_seed_and_epoch() -> None:
    x, y = _data(37)
    a = list(_loader(x, y).epoch(2))
    b = list(_loader(x, y).epoch(2))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    other_epoch = list(_loader(x, y).epoch(3))
    other_seed = list(_loader(x, y, seed=6).epoch(2))
    assert not torch.equal(a[0][1], other_epoch[0][1])
    assert not torch.equal(a[0][1], other_seed[0][1])


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_resume_mid_epoch_is_exact(k: int) -> None:
    x, y = _data(37)
    full = list(_loader(x, y).epoch(1))
    tail = list(_loader(x, y).epoch(1, start_batch=k))
    assert len(tail) == len(full) - k
    for (xa, ya), (xb, yb) in zip(full[k:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bad_start_batch() -> None:
    x, y = _data(37)
    with pytest.raises(ValueError, match="start_batch"):
        next(_loader(x, y).epoch(0, start_batch=5))


def test_crop_shifts_content_and_pads_with_zeros() -> None:
    x, y = _data(64)
    loader = _loader(x, y, pad=2, flip=False, batch_size=64)
    (xb, _), = loader.epoch(0)
    raw = _raw(xb)
    offsets = [_offset_of(img, x[0].to(torch.int64), 2) for img in raw]
    assert None not in offsets  # every image is a crop of its zero-padded source
    assert len(set(offsets)) > 10  # per-sample offsets, not one for the whole batch
    shifted = [i for i, o in enumerate(offsets) if o != (0, 0)]
    assert shifted and all((raw[i] == 0).any() for i in shifted)  # padding zeros came in


def test_padding_zero_is_zero_pixel_after_normalize() -> None:
    x, y = _data(32)
    mean, std = (0.5, 0.25), (0.5, 0.25)
    loader = GpuBatchLoader(x, y, mean, std, 32, pad=3, flip=False, seed=2)
    (xb, _), = loader.epoch(0)
    zero = normalize(torch.zeros(1, 2, 1, 1, dtype=torch.uint8), mean, std)
    assert torch.isclose(xb, zero.expand_as(xb)).any()


def test_flip_flips_some_and_only_horizontally() -> None:
    x, y = _data(64)
    (xb, _), = _loader(x, y, pad=0, flip=True, batch_size=64).epoch(0)
    raw, src = _raw(xb), x[0].to(torch.int64)
    same = [torch.equal(img, src) for img in raw]
    mirrored = [torch.equal(img, src.flip(-1)) for img in raw]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54


def test_flip_off_and_pad_zero_leave_images_alone() -> None:
    x, y = _data(16)
    (xb, _), = _loader(x, y, pad=0, flip=False, batch_size=16).epoch(0)
    assert torch.equal(_raw(xb), x.to(torch.int64))


def test_inputs_are_validated() -> None:
    x, y = _data(8)
    with pytest.raises(ValueError, match="uint8"):
        GpuBatchLoader(x.float(), y, (0.0,), (1.0,), 4)
    with pytest.raises(ValueError, match="labels"):
        GpuBatchLoader(x, y[:3], (0.0,), (1.0,), 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches() -> None:
    x, y = _data(37)
    cpu = list(_loader(x, y).epoch(4))
    gpu = list(_loader(x, y, device="cuda").epoch(4))
    assert gpu[0][0].is_cuda and gpu[0][1].is_cuda
    for (xa, ya), (xb, yb) in zip(cpu, gpu):
        assert torch.equal(xa, xb.cpu()) and torch.equal(ya, yb.cpu())


# ---------------------------------------------------------------------------------- DataLoader path


def test_dataloader_without_augment_is_normalized_data() -> None:
    x, y = _data(20)
    mean, std = (0.3, 0.6), (0.2, 0.1)
    dl = make_dataloader(x, y, mean, std, 6, augment=False, shuffle=False)
    xs, ys = zip(*dl)
    assert torch.cat(xs).dtype == torch.float32
    assert torch.allclose(torch.cat(xs), normalize(x, mean, std)) and torch.equal(torch.cat(ys), y)


def test_dataloader_augments_like_the_batch_loader() -> None:
    x, y = _data(64)
    dl = make_dataloader(x, y, (0.0, 0.0), (1.0, 1.0), 64, augment=True, shuffle=True, pad=2, seed=3)
    (xb, yb), = list(dl)
    assert sorted(yb.tolist()) == list(range(64))
    src = x[0].to(torch.int64)
    offsets = [_offset_of(img, src, 2) or _offset_of(img.flip(-1), src, 2) for img in _raw(xb)]
    assert None not in offsets and len(set(offsets)) > 10


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_is_deterministic_given_seed(workers: int) -> None:
    x, y = _data(24)

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dl = make_dataloader(
            x, y, (0.0, 0.0), (1.0, 1.0), 8, augment=True, shuffle=True, num_workers=workers, seed=seed
        )
        return list(dl)

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
