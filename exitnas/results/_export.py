"""``exitnas export``: a chosen trial → arch.json, weights, TorchScript and ONNX files."""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from safetensors.torch import save_file

from exitnas._errors import UserError
from exitnas._io import atomic_write
from exitnas.results._export_eval import split_metrics
from exitnas.results._model import (
    EXPORT_FORMAT,
    EarlyExitModel,
    _AllExits,
    deploy_model,
    sha256_file,
)
from exitnas.search_space import ArchConfig, StaticNet

__all__ = ["ExportResult", "export_trial", "library_versions", "load_trial", "write_export"]


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    arch_json: Path
    weights: Path
    torchscript: Path
    onnx: Path | None


def library_versions() -> dict[str, str]:
    import numpy

    import exitnas

    return {"exitnas": exitnas.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def load_trial(storage: str, study_name: str, number: int | None) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """A COMPLETE trial of a stored study (``None``: the report's choice, CHOICE_RULE)."""
    from exitnas._storage import open_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage, heartbeat=False))
    except KeyError:
        raise UserError(f"no study named {study_name!r} in {storage}") from None
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    if not complete:
        raise UserError(f"study {study_name!r} has no complete trial yet; run exitnas search first")
    if number is None:
        from exitnas.results._evaluate import choose_trial
        from exitnas.results._front import load_front

        number = choose_trial(load_front(storage, study_name))
    if number not in complete:
        raise UserError(f"study {study_name!r} has no complete trial {number}")
    return study, complete[number]


def export_trial(storage: str, study_name: str, number: int | None, out: str | Path,
                 checkpoint: str | None = None, onnx: bool = True) -> ExportResult:
    """Export one trial: recalibrated inherited weights, its thresholds and provenance."""
    from exitnas._config import ExperimentConfig
    from exitnas.data import load_dataset
    from exitnas.evaluators import Evaluator
    from exitnas.training import load_supernet, space_for

    study, trial = load_trial(storage, study_name, number)
    checkpoint = checkpoint or study.user_attrs.get("checkpoint")
    if not checkpoint:
        raise UserError(f"study {study_name!r} does not name its supernet checkpoint; pass --checkpoint")
    cfg = ExperimentConfig.from_dict(study.user_attrs["config"]) if "config" in study.user_attrs else None
    supernet, state = load_supernet(checkpoint)
    if cfg is None:
        cfg = ExperimentConfig.from_dict(state["config"])
    splits = load_dataset(cfg.data)
    space = space_for(cfg, splits)
    if space.to_dict() != supernet.space.to_dict():
        raise UserError(f"checkpoint {checkpoint} is of another search space than study {study_name!r}")
    arch = space.validate(ArchConfig.from_dict(trial.user_attrs["arch"]))
    thresholds = [float(t) for t in trial.user_attrs.get("thresholds", [])]
    ev = Evaluator(supernet, splits, recal_images=cfg.search.recal_images, kind=cfg.search.confidence,
                   seed=cfg.search.seed)
    net = ev.subnet(arch)
    metrics = {split: split_metrics(cache, thresholds) for split, cache in ev.caches(arch, ("val", "test")).items()}
    costs = ev.costs(arch)

    meta = {
        "arch": arch.to_dict(),
        "thresholds": thresholds,
        "confidence": cfg.search.confidence,
        "space": space.to_dict(),
        "experiment": cfg.to_dict(),
        "costs": costs.to_dict(),
        "metrics": metrics,
        "provenance": {
            "source": "inherited from the supernet (BN recalibrated)",
            "storage": storage, "study": study_name, "trial": trial.number,
            "values": {"val_accuracy": trial.values[0], "expected_MMACs": trial.values[1]},
            "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
            "bn_recalibration_images": len(ev.recal_x),
        },
    }
    return write_export(out, net, meta, list(splits.mean), list(splits.std), tuple(splits.train_x.shape[1:]), onnx)


def write_export(out: str | Path, net: StaticNet, meta: dict[str, Any], mean: list[float], std: list[float],
                 input_shape: tuple[int, ...], onnx: bool = True) -> ExportResult:
    """Write weights, TorchScript, ONNX and ``arch.json`` (``meta`` + file hashes) into ``out``.

    ``arch.json`` is written last: a folder whose arch.json exists holds a complete export.
    """
    arch = ArchConfig.from_dict(meta["arch"])
    thresholds = [float(t) for t in meta["thresholds"]]
    net = net.cpu().eval().requires_grad_(False)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    model = EarlyExitModel(net, thresholds, mean, std, meta.get("confidence", "maxprob")).eval()
    weights = d / "weights.safetensors"
    state_dict = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state_dict, p))
    ts_path = d / "model.torchscript.pt"
    # The deployed runtime (BatchNorm folded, channels-last, frozen), the one the latency table times.
    atomic_write(ts_path, lambda p: torch.jit.save(deploy_model(model), p))
    if onnx and importlib.util.find_spec("onnx") is None:
        print("exitnas: the onnx package is not installed (pip install onnx); skipping model.onnx")
        onnx = False
    onnx_path = d / "model.onnx" if onnx else None
    if onnx_path is not None:
        x = torch.rand(1, *input_shape)
        names = [f"exit{k}" for k in range(arch.num_exits)]
        atomic_write(onnx_path, lambda p: torch.onnx.export(
            _AllExits(model), (x,), p, input_names=["image"], output_names=names, dynamo=False,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}))
    files: dict[str, Any] = {
        "weights": {"name": weights.name, "sha256": sha256_file(weights)},
        "torchscript": {"name": ts_path.name, "sha256": sha256_file(ts_path)},
    }
    if onnx_path is not None:
        files["onnx"] = {"name": onnx_path.name, "sha256": sha256_file(onnx_path),
                         "outputs": "logits of every exit (apply the thresholds outside)"}
    full = {
        "format": EXPORT_FORMAT,
        **meta,
        "input": {"shape": list(input_shape), "range": "[0, 1] floats (uint8 / 255)"},
        "mean": mean,
        "std": std,
        "files": files,
    }
    full["provenance"] = {**meta.get("provenance", {}), "versions": library_versions(),
                          "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    arch_json = d / "arch.json"
    atomic_write(arch_json, lambda p: Path(p).write_text(json.dumps(full, indent=1)))
    return ExportResult(d, arch_json, weights, ts_path, onnx_path)
