"""Supernet training on digits: it learns, resumes exactly, and its checkpoints are safe."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from exitnas._config import ExperimentConfig, load_config
from exitnas._errors import ExitnasWarning, UserError
from exitnas.data import DataConfig, GpuBatchLoader, ImageSplits, load_dataset
from exitnas.search_space import Supernet
from exitnas.training import load_checkpoint, load_supernet, save_checkpoint, space_for, train_supernet

BATCH = 64
TINY_SPACE = ["space.channels=[8, 16]", "space.depths=[1, 2]", "space.widths=[0.5, 1.0]",
              "space.ratios=[0.0, 1.0]", "space.heads=[linear]"]


@pytest.fixture(scope="module")
def splits() -> ImageSplits:
    return load_dataset(DataConfig(name="digits"))


def _cfg(out: Path, splits: ImageSplits, steps: int, *extra: str) -> ExperimentConfig:
    """A tiny run of exactly ``steps`` optimiser steps (epochs given as a fraction)."""
    per_epoch = len(splits.train_y) // BATCH
    return load_config(None, [
        *TINY_SPACE,
        f"train.batch_size={BATCH}",
        f"train.epochs={steps / per_epoch!r}",
        "train.warmup_epochs=0.1",
        "train.sandwich_random=1",
        "train.checkpoint_every=1000",
        "train.device=cpu",
        "train.progress=false",
        f"train.out={out}",
        *extra,
    ])


def _batch_loss(model: Supernet, splits: ImageSplits, cfg: ExperimentConfig) -> float:
    """Summed CE of the largest subnet's exits on a fixed batch, with batch statistics."""
    space = space_for(cfg, splits)
    loader = GpuBatchLoader(splits.train_x, splits.train_y, splits.mean, splits.std, 256,
                            augment=False, shuffle=False)
    x, y = next(iter(loader.epoch(0)))
    model.train()
    with torch.no_grad():
        return float(sum(F.cross_entropy(z, y) for z in model(x, space.largest())))


def test_training_lowers_the_loss_and_writes_results(tmp_path: Path, splits: ImageSplits) -> None:
    # MSDNet's conv heads learn within a few SGD steps; pooled linear heads on 8 channels
    # barely move in 25 steps (the loss stays near chance), which would test nothing.
    cfg = _cfg(tmp_path / "run", splits, 25, "space.heads=[msdnet]", "train.lr=0.5")
    torch.manual_seed(cfg.train.seed)
    fresh = Supernet(space_for(cfg, splits))
    before = _batch_loss(fresh, splits, cfg)

    result = train_supernet(cfg, splits=splits)
    assert result.steps == 25 and result.checkpoint == tmp_path / "run" / "supernet.pt"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "supernet.pt"]
    # the resolved config written next to the checkpoint reads back as the same config
    assert load_config(tmp_path / "run" / "config.yaml") == cfg

    model, state = load_supernet(result.checkpoint, space_for(cfg, splits))
    assert state["step"] == 25
    after = _batch_loss(model, splits, cfg)
    assert after < 0.8 * before, (before, after)


def _equal_states(a: Any, b: Any, where: str = "") -> None:
    """Recursive ``torch.equal`` over nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _equal_states(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _equal_states(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_is_exact(tmp_path: Path, splits: ImageSplits) -> None:
    n = 6
    a = _cfg(tmp_path / "a", splits, n)
    b = _cfg(tmp_path / "b", splits, n)
    train_supernet(a, splits=splits)

    stopped = train_supernet(b, splits=splits, stop_at_step=3)
    assert stopped.steps == 3 and load_checkpoint(stopped.checkpoint)["step"] == 3
    resumed = train_supernet(b, splits=splits, resume=True)
    assert resumed.steps == n

    sa, sb = load_checkpoint(tmp_path / "a" / "supernet.pt"), load_checkpoint(tmp_path / "b" / "supernet.pt")
    assert sa["step"] == sb["step"] == n
    for key in ("model", "optimizer", "scheduler"):
        _equal_states(sa[key], sb[key], key)
    # and the run really moved away from where it stopped
    mid = train_supernet(_cfg(tmp_path / "c", splits, n), splits=splits, stop_at_step=3)
    sm = load_checkpoint(mid.checkpoint)["model"]
    assert any(not torch.equal(sm[k], sa["model"][k]) for k in sm if sm[k].is_floating_point())


def test_resuming_a_finished_run_says_it_is_complete(tmp_path: Path, splits: ImageSplits,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from exitnas.cli import main

    cfg = _cfg(tmp_path / "run", splits, 3)
    assert not train_supernet(cfg, splits=splits).already_complete
    again = train_supernet(cfg, splits=splits, resume=True)
    assert again.already_complete and again.steps == 3
    assert main(["train", "--config", str(tmp_path / "run" / "config.yaml"), "--resume", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "already complete at step 3" in out and "images/s" not in out


def test_a_run_that_is_all_warm_up_is_warned_about(tmp_path: Path, splits: ImageSplits,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from exitnas.cli import main

    cfg = _cfg(tmp_path / "run", splits, 2, "train.warmup_epochs=1")
    with pytest.warns(ExitnasWarning, match="whole run is warm-up and the learning rate never decays"):
        train_supernet(cfg, splits=splits)
    # the CLI shows it as one line, as it shows errors (--force: the first run's checkpoint is there)
    assert main(["train", "--config", str(tmp_path / "run" / "config.yaml"), "--threads", "1", "--force"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("exitnas: warning: train.warmup_epochs 1 >= the run's")]


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path: Path, splits: ImageSplits) -> None:
    out = tmp_path / "run"
    cfg = _cfg(out, splits, 4, "train.checkpoint_every=1")
    train_supernet(cfg, splits=splits)
    # a checkpoint every step, each through a temporary file: none is left behind
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "supernet.pt"]
    state = torch.load(out / "supernet.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4
    assert {"model", "optimizer", "scheduler", "rng", "space", "config"} <= set(state)
    assert state["space"] == space_for(cfg, splits).to_dict()


def test_failed_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"space": {}, "step": 1, "w": torch.ones(3)})
    old = path.read_bytes()

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"space": {}, "step": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_checkpoint_of_another_space_is_refused(tmp_path: Path, splits: ImageSplits) -> None:
    cfg = _cfg(tmp_path / "run", splits, 1)
    result = train_supernet(cfg, splits=splits)
    other = space_for(_cfg(tmp_path / "x", splits, 1, "space.channels=[8, 24]"), splits)
    with pytest.raises(UserError, match="another search space.*channels"):
        load_supernet(result.checkpoint, other)
    model, _ = load_supernet(result.checkpoint)  # without a space: the checkpoint's own
    assert model.space == space_for(cfg, splits)


class _Evil:
    """Unpickling this would run ``os.system``: a checkpoint must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_checkpoint_is_refused_without_running(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "supernet.pt"
    payload = {"format": 1, "space": {}, "model": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UserError, match="cannot be read safely") as err:
        load_checkpoint(path)
    if how == "torch.save":
        assert "system" in str(err.value)  # names what it refused
    assert "weights_only" not in str(err.value)  # and never advises turning the guard off
    with pytest.raises(UserError, match="cannot be read safely"):
        load_supernet(path)
    assert not marker.exists()


def test_missing_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an exitnas supernet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(UserError, match="cannot be read safely"):
        load_checkpoint(tmp_path / "junk.pt")


def test_sandwich_exit_sets_follow_the_combiner() -> None:
    from dataclasses import replace

    from exitnas.search_space import build_space
    from exitnas.training import sandwich_archs

    plain = build_space("msr-resnet", in_channels=3, num_classes=10, channels=(8, 16), depths=(2, 3))
    boost = replace(plain, combine="boost")
    for step in range(20):
        # Independent exits: every block end of every subnet trains its head.
        for a in sandwich_archs(plain, 2, 0, step):
            assert list(a.exits) == a.block_positions()
        # Combined exits: the exit sets the search draws, so exit k learns the chains it will see.
        for a in sandwich_archs(boost, 2, 0, step):
            assert a.exits[-1] == a.block_positions()[-1]
            assert set(a.exits) <= set(a.block_positions())
            assert len(a.heads) == len(a.exits)
    # Chosen explicitly: sampled sets for independent exits too, every block for combined ones.
    for step in range(5):
        assert [a.exits for a in sandwich_archs(plain, 2, 0, step, "sampled")] == \
            [a.exits for a in sandwich_archs(boost, 2, 0, step)]
        assert all(list(a.exits) == a.block_positions() for a in sandwich_archs(boost, 2, 0, step, "all"))
    with pytest.raises(UserError, match="exit_sets"):
        sandwich_archs(plain, 2, 0, 0, "some")
    sets = {a.exits for step in range(20) for a in sandwich_archs(boost, 2, 0, step)}
    assert len(sets) > 5
    assert any(len(a.exits) < len(a.block_positions()) for s in range(20) for a in sandwich_archs(boost, 2, 0, s))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_existing_checkpoint_is_not_overwritten_unasked(tmp_path: Path, splits: ImageSplits) -> None:
    out = tmp_path / "run"
    cfg = _cfg(out, splits, 2)
    train_supernet(cfg, splits=splits)
    before = _tree(out)
    with pytest.raises(UserError, match=r"supernet\.pt exists; continue it with --resume, or .* --force"):
        train_supernet(cfg, splits=splits)
    assert _tree(out) == before
    again = train_supernet(_cfg(out, splits, 1), splits=splits, force=True)
    assert again.steps == 1 and load_checkpoint(again.checkpoint)["step"] == 1


@pytest.mark.parametrize(("key", "value"), [("train.lr", "0.05"), ("train.batch_size", "32"), ("train.seed", "1"),
                                            ("train.sandwich_random", "0"), ("train.label_smoothing", "0.1"),
                                            ("data.val_size", "0.2"), ("data.seed", "4")])
def test_resume_refuses_a_changed_recipe(tmp_path: Path, splits: ImageSplits, key: str, value: str) -> None:
    out = tmp_path / "run"
    train_supernet(_cfg(out, splits, 4), splits=splits, stop_at_step=2)
    before = _tree(out)
    with pytest.raises(UserError, match=rf"--resume: {key} is .* but .*supernet\.pt was trained with") as info:
        train_supernet(_cfg(out, splits, 4, f"{key}={value}"), splits=splits, resume=True)
    assert "\n" not in str(info.value)
    assert _tree(out) == before


def test_resume_accepts_changes_that_do_not_change_the_result(tmp_path: Path, splits: ImageSplits) -> None:
    out = tmp_path / "run"
    train_supernet(_cfg(out, splits, 4), splits=splits, stop_at_step=2)
    resumed = train_supernet(_cfg(out, splits, 4, "train.checkpoint_every=1", "train.progress=true"),
                             splits=splits, resume=True)
    assert resumed.steps == 4


def test_resume_refuses_a_changed_length(tmp_path: Path, splits: ImageSplits) -> None:
    out = tmp_path / "run"
    train_supernet(_cfg(out, splits, 4), splits=splits, stop_at_step=2)
    with pytest.raises(UserError, match=r"train\.epochs"):
        train_supernet(_cfg(out, splits, 8), splits=splits, resume=True)
