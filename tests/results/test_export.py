"""Export → load → the same outputs as the supernet; TorchScript and ONNX agree; bad files stop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exitnas._errors import UserError
from exitnas.results._export import export_trial, load_trial
from exitnas.runtime import load_export
from exitnas.search_space import ArchConfig
from exitnas.training import load_checkpoint, load_supernet


@pytest.fixture(scope="module")
def exported(searched, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("export")
    study, trial = load_trial(searched.storage, searched.study, None)
    # Module fixtures run before the autouse one-thread fixture: the count the tests see, set here.
    torch.set_num_threads(1)
    r = export_trial(searched.storage, searched.study, trial.number, out, str(searched.checkpoint))
    return r, trial


def test_export_writes_every_file_with_hashes(exported) -> None:  # type: ignore[no-untyped-def]
    r, trial = exported
    meta = json.loads(r.arch_json.read_text())
    for key in ("weights", "torchscript", "onnx"):
        assert (r.directory / meta["files"][key]["name"]).is_file()
    prov = meta["provenance"]
    assert prov["trial"] == trial.number and len(prov["checkpoint_sha256"]) == 64
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["threads"] == torch.get_num_threads()  # results can differ between thread counts
    assert meta["classes"] == [str(d) for d in range(10)]  # digits, named by label
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(trial.values[0])
    assert 0.0 <= meta["metrics"]["test"]["accuracy"] <= 1.0
    assert not list(r.directory.glob(".*.tmp"))


def test_loaded_export_matches_supernet_at_every_exit(exported, searched) -> None:  # type: ignore[no-untyped-def]
    """The export holds the recalibrated inherited weights: same outputs as the supernet's
    subnet after the same recalibration, at every exit, with no supernet needed to load it."""
    from exitnas._config import ExperimentConfig
    from exitnas.data import load_dataset
    from exitnas.evaluators import Evaluator

    r, trial = exported
    model, meta = load_export(r.directory)
    cfg = ExperimentConfig.from_dict(meta["experiment"])
    splits = load_dataset(cfg.data)
    supernet, _ = load_supernet(searched.checkpoint)
    arch = ArchConfig.from_dict(meta["arch"])
    ev = Evaluator(supernet, splits, recal_images=cfg.search.recal_images, seed=cfg.search.seed)
    ref = ev.subnet(arch)
    x = splits.test_x[:16].float() / 255
    with torch.no_grad():
        expected = supernet(torch.as_tensor((x - model.mean) / model.std), arch)
        got = model.all_exits(x)
        recal = ref((x - model.mean) / model.std)
    assert len(got) == arch.num_exits
    for a, b in zip(got, recal):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Same structure and weights as the supernet path (BN statistics differ: recalibrated).
    assert all(a.shape == b.shape for a, b in zip(got, expected))


def test_torchscript_and_onnx_give_the_same_logits(exported) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    r, _ = exported
    model, meta = load_export(r.directory)
    x = torch.rand(5, *meta["input"]["shape"])
    ref = model.all_exits(x)
    ts = torch.jit.load(str(r.torchscript))
    # The TorchScript file is the deployed runtime (BatchNorm folded into the convs, frozen):
    # the same logits up to float rounding, and no BatchNorm left in it.
    assert "batch_norm" not in ts.code
    for a, b in zip(ts.all_exits(x), ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    sess = ort.InferenceSession(str(r.onnx), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"image": x.numpy()})
    assert len(outs) == len(ref)
    for a, b in zip(outs, ref):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=1e-4)
    logits, exit_idx = ts(x[:1])
    logits2, exit2 = model(x[:1])
    torch.testing.assert_close(logits, logits2, atol=1e-4, rtol=1e-4)
    assert int(exit_idx) == int(exit2)
    torch.testing.assert_close(ts.thresholds, model.thresholds)  # kept as an attribute, not folded away


def test_early_exit_model_stops_computing_at_batch_size_one(exported) -> None:  # type: ignore[no-untyped-def]
    r, _ = exported
    model, meta = load_export(r.directory)
    net = model.net
    if net.num_exits < 2:
        pytest.skip("the exported trial has one exit")  # pragma: no cover - depends on the search
    calls: list[int] = []
    for k, seg in enumerate(net.segments):
        seg.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    model.thresholds.zero_()  # every sample is confident enough at exit 0
    _, exit_idx = model(torch.rand(1, *meta["input"]["shape"]))
    assert int(exit_idx) == 0 and calls == [0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exitnas", *args], capture_output=True, text=True, timeout=300)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["bad-json", "hand-edited-arch", "weights-corrupted", "weights-missing",
                                    "thresholds-out-of-range", "policy-unknown", "policy-params-malformed"])
def test_damaged_export_is_refused_with_one_line(exported, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    r, _ = exported
    d = _copy(r.directory, tmp_path / "copy")
    meta_path = d / "arch.json"
    meta = json.loads(meta_path.read_text())
    if damage == "bad-json":
        meta_path.write_text(meta_path.read_text()[:-20])
    elif damage == "hand-edited-arch":
        meta["arch"]["widths"][0] = 0.123
        meta_path.write_text(json.dumps(meta))
    elif damage == "weights-corrupted":
        blob = bytearray((d / "weights.safetensors").read_bytes())
        blob[-10] ^= 0xFF
        (d / "weights.safetensors").write_bytes(bytes(blob))
    elif damage == "weights-missing":
        (d / "weights.safetensors").unlink()
    elif damage.startswith("policy"):
        params = {"models": [[1.0, 2.0]]} if damage == "policy-params-malformed" else {}
        meta.update(format=2, policy="decider" if params else "oracle", params=params)
        meta_path.write_text(json.dumps(meta))
    else:
        meta["thresholds"] = [1.5] * len(meta["thresholds"]) or [1.5]
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError):
        load_export(d)
    proc = _cli("retrain", str(meta_path), "--epochs", "0.01", "--out", str(tmp_path / "never"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exitnas: error:"), proc.stderr
    assert not (tmp_path / "never").exists()


def test_retrain_reports_test_accuracy_and_refits_within_budget(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from exitnas.results._retrain import retrain_export

    r, _ = exported
    meta = json.loads(r.arch_json.read_text())
    res = retrain_export(r.arch_json, tmp_path / "re", scratch=False, epochs=0.2, progress=False)
    assert 0.0 <= res.test_accuracy <= 1.0
    assert res.val_expected_mmacs <= meta["metrics"]["val"]["expected_mmacs"] + 1e-9
    model, new_meta = load_export(tmp_path / "re")
    assert new_meta["provenance"]["source"].startswith("fine-tuned")
    assert new_meta["metrics"]["test"]["accuracy"] == pytest.approx(res.test_accuracy)


def test_export_carries_the_supernet_training_recipe(searched, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A study whose config says other training than its checkpoint's: the export (and so
    retrain) takes the checkpoint's recipe; where and how to run stays the study's."""
    from exitnas.experiment import Experiment
    from exitnas.results import open_study

    study = open_study(searched.storage, searched.study)
    attrs = dict(study.user_attrs)
    trained = load_checkpoint(searched.checkpoint)["config"]["train"]
    attrs["config"] = {**attrs["config"], "train": {**attrs["config"]["train"], "epochs": 60.0, "lr": 0.7,
                                                    "device": "cpu", "out": "elsewhere"}}
    assert attrs["classes"] == load_checkpoint(searched.checkpoint)["classes"] == [str(d) for d in range(10)]
    assert attrs["threads"] >= 1 and load_checkpoint(searched.checkpoint)["threads"] >= 1
    exp = Experiment.from_study(attrs, searched.study, searched.checkpoint)
    assert (exp.cfg.train.epochs, exp.cfg.train.lr) == (trained["epochs"], trained["lr"])
    assert exp.cfg.train.out == "elsewhere"


def test_export_bad_input(searched, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for args in (["--study", "nope"], ["--study", searched.study, "--trial", "99999"]):
        proc = _cli("export", "--storage", searched.storage, *args, "--out", str(tmp_path / "x"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().startswith("exitnas: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_an_existing_export_is_not_overwritten_unasked(tiny_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from exitnas.results import check_export_out

    d = tiny_export(tmp_path / "export")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(UserError, match=r"already holds an export \(arch\.json\).*--force"):
        check_export_out(d)
    assert check_export_out(d, force=True) == d
    assert check_export_out(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "weights.safetensors").write_bytes(b"x")  # what a killed export leaves
    with pytest.raises(UserError, match=r"weights\.safetensors"):
        check_export_out(tmp_path / "half")
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_a_killed_re_export_leaves_no_old_arch_json(tiny_export, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """arch.json names the files and is written last; an old one is removed first, so a re-export
    that dies halfway leaves a folder without arch.json, never an old one beside new weights."""
    import exitnas.results._export as export_module

    d = tiny_export(tmp_path / "export")
    assert (d / "arch.json").is_file()

    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "deploy_model", killed)  # dies after the weights are written
    with pytest.raises(KeyboardInterrupt):
        tiny_export(d)
    assert sorted(p.name for p in d.iterdir()) == ["weights.safetensors"]
    with pytest.raises(UserError, match="arch.json does not exist"):
        load_export(d)
