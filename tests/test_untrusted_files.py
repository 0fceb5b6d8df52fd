"""Files a user was handed: a crafted pickle never runs, wherever exitnas reads a file, and a
file that is not what it claims is refused with one line naming it (or, for a cache, recomputed)."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from exitnas._errors import UserError
from exitnas.search_space import ArchConfig, Supernet, build_space

MakeExport = Callable[[Path], Path]


class _Payload:
    """Unpickling this runs ``touch marker``: what a crafted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _crafted(marker: Path) -> bytes:
    return pickle.dumps({b"data": _Payload(marker), b"labels": [0]})


def _space():  # type: ignore[no-untyped-def]
    return build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=("linear",))


def _arch() -> ArchConfig:
    return ArchConfig("msr-resnet", (1, 1), (1.0, 1.0), ((0.0,), (1.0,)), ((0, 0), (1, 0)), ("linear", "linear"))


def _rehash(folder: Path, role: str) -> None:
    from exitnas.runtime import sha256_file

    meta = json.loads((folder / "arch.json").read_text())
    meta["files"][role]["sha256"] = sha256_file(folder / meta["files"][role]["name"])
    (folder / "arch.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------- each place a file is read


def _cifar(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.data import DataConfig, load_dataset

    for i in range(1, 6):
        (tmp / f"data_batch_{i}").write_bytes(blob)
    (tmp / "test_batch").write_bytes(blob)
    load_dataset(DataConfig("cifar10", root=str(tmp)))


def _checkpoint_pickle(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.training import load_checkpoint

    (tmp / "supernet.pt").write_bytes(blob)
    load_checkpoint(tmp / "supernet.pt")


def _checkpoint_torch(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.training import load_checkpoint

    torch.save({"format": 1, "payload": _Bytes(blob)}, tmp / "supernet.pt")
    load_checkpoint(tmp / "supernet.pt")


class _Bytes:
    """Pickles as the crafted payload itself (what torch.save would put in a checkpoint's data.pkl)."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pickle.loads, (self.blob,))


def _exit_cache(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.evaluators import ExitCacheStore

    store = ExitCacheStore(tmp)
    path = store._path(_arch(), "val", "maxprob")
    assert path is not None
    np.savez(path, confidence=np.array([_Bytes(blob)], dtype=object), arch=np.array(_arch().to_json()))
    with pytest.warns(UserWarning, match="computing it again"):
        assert store.get(_arch(), "val", "maxprob") is None
    raise UserError("refused")  # a cache miss, as the table below expects of every place


def _export_weights(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.runtime import load_export

    d = make_export(tmp / "export")
    (d / "weights.safetensors").write_bytes(blob)
    _rehash(d, "weights")
    load_export(d)


def _export_torchscript(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.runtime import load_export

    d = make_export(tmp / "export")
    torch.save({"x": _Bytes(blob)}, d / "model.torchscript.pt")
    load_export(d)  # refused: the file does not match its recorded hash


def _latency_table(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.evaluators import LatencyTable

    (tmp / "lut.json").write_bytes(blob)
    LatencyTable.load(tmp / "lut.json")


def _journal(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas._storage import open_storage

    (tmp / "study.log").write_bytes(blob + b"\n" + blob + b"\n")
    open_storage(f"journal:///{tmp / 'study.log'}")


def _sqlite(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.results import load_front

    (tmp / "study.db").write_bytes(blob)
    load_front(f"sqlite:///{tmp / 'study.db'}")


def _config(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas._config import load_config

    (tmp / "exp.yaml").write_bytes(blob)
    load_config(tmp / "exp.yaml")


def _arch_file(tmp: Path, blob: bytes, make_export: MakeExport) -> None:
    from exitnas.results import read_arch

    (tmp / "arch.json").write_bytes(blob)
    read_arch(str(tmp / "arch.json"), _space())


PLACES: dict[str, Callable[[Path, bytes, MakeExport], None]] = {
    "cifar-batch": _cifar, "checkpoint-pickle": _checkpoint_pickle, "checkpoint-torch": _checkpoint_torch,
    "exit-cache": _exit_cache, "export-weights": _export_weights, "export-torchscript": _export_torchscript,
    "latency-table": _latency_table, "journal": _journal, "sqlite": _sqlite, "config": _config,
    "arch-json": _arch_file,
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_crafted_pickle_never_runs(tmp_path: Path, place: str, tiny_export: MakeExport) -> None:
    marker = tmp_path / "PWNED"
    blob = _crafted(marker)
    with pytest.raises(UserError) as info:
        PLACES[place](tmp_path, blob, tiny_export)
    assert "\n" not in str(info.value)
    assert not marker.exists(), f"{place}: the crafted pickle ran"


def test_the_payload_does_run_when_unpickled(tmp_path: Path) -> None:
    """The payload is real: a plain pickle.loads runs it (so the tests above prove something)."""
    marker = tmp_path / "PWNED"
    pickle.loads(_crafted(marker))
    assert marker.exists()


def test_cifar_batch_refusal_names_the_global(tmp_path: Path, tiny_export: MakeExport) -> None:
    marker = tmp_path / "PWNED"
    with pytest.raises(UserError, match=r"data_batch_1 is refused .*(posix|os)\.system"):
        _cifar(tmp_path, _crafted(marker), tiny_export)


def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path: Path) -> None:
    from exitnas.data import DataConfig, load_dataset

    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x = np.full((4, 3072), i, dtype=np.uint8)
        batch = {b"batch_label": b"b", b"data": x, b"labels": [i % 10] * 4, b"filenames": [b"f"] * 4}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=i % 6))
    s = load_dataset(DataConfig("cifar10", root=str(tmp_path), val_size=4))
    assert len(s.train_y) + len(s.val_y) == 20 and len(s.test_y) == 4


# ---------------------------------------------------------------------------- files not what they claim


def test_config_not_utf8(tmp_path: Path) -> None:
    from exitnas._config import load_config

    (tmp_path / "exp.yaml").write_bytes(b"train:\n  lr: \xff\xfe\n")
    with pytest.raises(UserError, match=r"exp.yaml is not UTF-8"):
        load_config(tmp_path / "exp.yaml")


@pytest.mark.parametrize("damage", ["no-model", "no-config", "space-not-a-dict", "space-unknown-key",
                                    "weights-do-not-fit"])
def test_damaged_checkpoint_is_one_line(tmp_path: Path, damage: str) -> None:
    from exitnas.training import load_checkpoint, load_supernet, save_checkpoint

    space = _space()
    state = {"model": Supernet(space).state_dict(), "config": {}, "space": space.to_dict(), "step": 1}
    if damage == "no-model":
        del state["model"]
    elif damage == "no-config":
        del state["config"]
    elif damage == "space-not-a-dict":
        state["space"] = [1, 2]
    elif damage == "space-unknown-key":
        state["space"] = {**space.to_dict(), "bogus": 1}
    else:
        state["model"] = {"stem.weight": torch.zeros(1)}
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(UserError, match=r"checkpoint .*c\.pt") as info:
        load_supernet(tmp_path / "c.pt") if damage == "weights-do-not-fit" else load_checkpoint(tmp_path / "c.pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b'{"op_code": 0, "worker_id": "a"}\n{"op_code": 1}\n{"partial'])
def test_a_journal_is_accepted(tmp_path: Path, content: bytes) -> None:
    from exitnas._storage import check_journal_file

    (tmp_path / "j.log").write_bytes(content)
    check_journal_file(tmp_path / "j.log")


@pytest.mark.parametrize("content", [b"hello\n", b'{"a": 1}\n', b"[1, 2]\n", b"\xff\xfe\n", b"\n"])
def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path, content: bytes) -> None:
    from exitnas._storage import open_storage

    (tmp_path / "j.log").write_bytes(content)
    with pytest.raises(UserError, match=r"j\.log is not an Optuna journal"):
        open_storage(f"journal:///{tmp_path / 'j.log'}")
    assert (tmp_path / "j.log").read_bytes() == content


@pytest.mark.parametrize("entry", ['"fast"', "null", "-1", "NaN", "Infinity", "true", '[1]'])
def test_latency_table_with_a_bad_value_is_refused(tmp_path: Path, entry: str) -> None:
    from exitnas.evaluators import LatencyTable
    from exitnas.evaluators._latency import LUT_FORMAT

    text = json.dumps({"format": LUT_FORMAT, "entries": {"call": {"median_ms": 0.0}, "leave": {"median_ms": 1}},
                       "space": {}, "image_size": 8, "device": "cpu", "device_name": "x", "torch_version": "2",
                       "date": "d", "stat": "median_ms", "context_factor": 1.0, "runtime": "r"})
    (tmp_path / "lut.json").write_text(text)
    assert LatencyTable.load(tmp_path / "lut.json").ms("leave") == 1.0
    (tmp_path / "lut.json").write_text(text.replace('"median_ms": 1}', f'"median_ms": {entry}}}'))
    with pytest.raises(UserError, match=r"lut\.json has a bad median_ms for 'leave'"):
        LatencyTable.load(tmp_path / "lut.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong-shape", "out-of-range", "other-arch"])
def test_damaged_exit_cache_is_recomputed_with_a_warning(tmp_path: Path, damage: str) -> None:
    from exitnas.evaluators import ExitCache, ExitCacheStore

    arch = _arch()
    good = ExitCache(arch, np.full((2, 5), 0.5, np.float32), np.ones((2, 5), bool), np.array([1.0, 2.0]))
    store = ExitCacheStore(tmp_path)
    store.put(good, "val")
    path = store._path(arch, "val", "maxprob")
    assert path is not None and ExitCacheStore(tmp_path).get(arch, "val", "maxprob") is not None
    bad = good
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "wrong-shape":
        bad = ExitCache(arch, np.full((3, 5), 0.5, np.float32), np.ones((3, 5), bool), np.array([1.0, 2.0, 3.0]))
    elif damage == "out-of-range":
        bad = ExitCache(arch, np.full((2, 5), 7.0, np.float32), np.ones((2, 5), bool), np.array([1.0, 2.0]))
    else:
        other = ArchConfig("msr-resnet", (1, 2), (1.0, 1.0), ((0.0,), (1.0, 0.0)), ((0, 0), (1, 1)),
                           ("linear", "linear"))
        bad = ExitCache(other, good.confidence, good.correct, good.macs)
    if bad is not good:
        bad.save(path)
    with pytest.warns(UserWarning, match="exit cache .* computing it again"):
        assert ExitCacheStore(tmp_path).get(arch, "val", "maxprob") is None
    store = ExitCacheStore(tmp_path)
    store.put(good, "val")  # the recomputed cache overwrites the damaged file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ExitCacheStore(tmp_path).get(arch, "val", "maxprob") is not None


@pytest.mark.parametrize("damage", ["no-metrics", "metrics-not-numbers", "torchscript-changed",
                                    "file-outside-folder", "threshold-above-1", "threshold-negative"])
def test_damaged_export_names_the_file(tmp_path: Path, damage: str, tiny_export: MakeExport) -> None:
    from exitnas.runtime import load_export

    d = tiny_export(tmp_path / "export")
    meta = json.loads((d / "arch.json").read_text())
    if damage == "no-metrics":
        del meta["metrics"]
    elif damage == "metrics-not-numbers":
        meta["metrics"]["val"]["accuracy"] = "high"
    elif damage == "torchscript-changed":
        with open(d / "model.torchscript.pt", "ab") as f:
            f.write(b"x")
    elif damage == "file-outside-folder":
        meta["files"]["weights"]["name"] = "../weights.safetensors"
    else:
        meta["thresholds"] = [1.5 if damage == "threshold-above-1" else -0.1]
    (d / "arch.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as info:
        load_export(d)
    msg = str(info.value)
    assert "\n" not in msg and ("arch.json" in msg or "model.torchscript.pt" in msg), msg
