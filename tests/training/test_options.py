"""The literature's options end to end: a supernet trained with boosted / cascaded exits, DFS routing,
self-distillation and BoF heads is searched with the BoF exit rule, exported and loaded back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exitnas._config import load_config
from exitnas._errors import UserError
from exitnas.data import DataConfig, load_dataset
from exitnas.results import export_trial, load_export
from exitnas.results._retrain import retrain_export
from exitnas.search import run_search
from exitnas.training import load_supernet, space_for, train_supernet


def optuna_trials(cfg):  # type: ignore[no-untyped-def]
    import optuna

    return optuna.load_study(study_name=cfg.search.study, storage=cfg.search.storage).get_trials()


@pytest.mark.parametrize(("combine", "gate", "ensemble"),
                         [("boost", "none", "none"), ("ztw", "none", "geometric"), ("none", "emg", "none")])
def test_options_train_search_export_and_load(tmp_path: Path, combine: str, gate: str, ensemble: str) -> None:
    cfg = load_config(None, [
        "space.channels=[8, 16]", "space.depths=[1, 2]", "space.widths=[1.0]", "space.ratios=[0.0, 1.0]",
        "space.heads=[linear, bof]", f"space.combine={combine}", f"space.gate={gate}", f"space.ensemble={ensemble}",
        "train.routing=dfs", "train.dfs_beta=0.25", "train.loss=self-distill",
        "train.epochs=0.5", "train.batch_size=64", "train.sandwich_random=1", "train.device=cpu",
        "train.progress=false", f"train.out={tmp_path / 'run'}",
        f"search.storage=sqlite:///{tmp_path / 'study.db'}", "search.trials=3", "search.exit_rule=bof",
        "search.recal_images=128", "search.progress=false",
    ])
    splits = load_dataset(DataConfig(name="digits"))
    train_supernet(cfg, splits=splits)
    front = run_search(cfg)
    assert front
    result = export_trial(cfg.search.storage, cfg.search.study, front[0].trial, tmp_path / "export", onnx=False)
    model, meta = load_export(result.directory)
    assert meta["space"]["combine"] == combine
    assert meta["space"]["gate"] == gate
    # The loaded export is the searched subnet: its exits score on validation what the trial
    # recorded (the evaluator's recalibrated subnet), and the TorchScript file agrees with it.
    trial = next(t for t in optuna_trials(cfg) if t.number == front[0].trial)
    x01 = splits.val_x.float() / 255
    with torch.no_grad():
        ours = model.all_exits(x01)
        scripted = torch.jit.load(str(Path(result.directory) / "model.torchscript.pt"))
        for a, b in zip(scripted.all_exits(x01), ours):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    acc = [float((z.argmax(1) == splits.val_y).float().mean()) for z in ours]
    assert acc == pytest.approx(trial.user_attrs["exit_accuracy"], abs=1.5 / len(splits.val_y))
    supernet, _ = load_supernet(str(tmp_path / "run" / "supernet.pt"), space_for(cfg, splits))
    assert supernet.space.combine == combine
    # The export charges each validation image what the trial charged it (per image with a gate).
    assert meta["metrics"]["val"]["expected_mmacs"] == pytest.approx(trial.values[1])
    base = np.asarray(meta["costs"]["macs"]) / 1e6
    assert np.all(np.asarray(trial.user_attrs["exit_mmacs"]) >= base - 1e-9)
    if gate == "emg":
        assert any("theta" in k for k in supernet.state_dict())
    if ensemble == "geometric":  # fitted, so no longer the identity it starts as
        assert model.net.ensemble is not None
        assert not torch.equal(model.net.ensemble.weight, torch.eye(model.net.num_exits))
    # Retraining keeps the options: DFS routing, the combiner, the gate and its cost.
    re = retrain_export(result.arch_json, tmp_path / "re", scratch=False, epochs=0.3, progress=False)
    assert re.val_expected_mmacs <= meta["metrics"]["val"]["expected_mmacs"] + 1e-9
    model2, meta2 = load_export(tmp_path / "re")
    assert meta2["space"] == meta["space"] and meta2["experiment"]["train"]["routing"] == "dfs"
    assert meta2["metrics"]["test"]["accuracy"] == pytest.approx(re.test_accuracy)


def test_bad_option_names_are_one_line_errors(tmp_path: Path) -> None:
    splits = load_dataset(DataConfig(name="digits"))
    for bad, word in [("space.combine=stacked", "exit combiner"), ("train.routing=split", "feature routing"),
                      ("space.gate=soft", "multi-scale gate")]:
        cfg = load_config(None, [bad, f"train.out={tmp_path}", "train.progress=false"])
        with pytest.raises(UserError, match=word):
            space_for(cfg, splits) if bad.startswith("space") else train_supernet(cfg, splits=splits)
    # Out of range or not a choice: refused when the config is built, before any training.
    for bad, word in [("train.dfs_beta=1.5", "dfs_beta"), ("train.gate_cost=-1", "gate_cost"),
                      ("train.exit_sets=most", "exit_sets")]:
        with pytest.raises(UserError, match=word):
            train_supernet(load_config(None, [bad, f"train.out={tmp_path}", "train.progress=false"]), splits=splits)
        assert not (tmp_path / "supernet.pt").exists()
