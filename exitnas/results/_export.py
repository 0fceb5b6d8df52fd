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
from exitnas._io import atomic_write, check_output_dir
from exitnas.experiment import Experiment
from exitnas.results._export_eval import split_metrics
from exitnas.runtime import EXPORT_FORMAT, POLICY_EXPORT_FORMAT, AllExits, EarlyExitModel, deploy_model, sha256_file
from exitnas.search_space import ArchConfig, Candidate, StaticNet

__all__ = ["EXPORT_FILES", "ExportResult", "check_export_out", "export_trial", "library_versions", "load_trial",
           "write_export"]


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
    from exitnas.results._front import open_study

    study = open_study(storage, study_name)  # a read: a missing database is not created
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
                 checkpoint: str | None = None, onnx: bool = True, device: str | None = None,
                 force: bool = False) -> ExportResult:
    """Export one trial: its candidate, the inherited weights recalibrated as the search did
    (on the experiment's device), the metrics on val and test, and provenance.

    An ``out`` that already holds an export is refused unless ``force`` (see :func:`check_export_out`).
    """
    from exitnas.results._evaluate import trial_candidate
    from exitnas.results._front import load_front

    study, trial = load_trial(storage, study_name, number)
    check_export_out(out, force)
    exp = Experiment.from_study(study.user_attrs, study_name, checkpoint, device=device)
    cand = trial_candidate(load_front(storage, study_name), trial.number, exp.evaluator)
    net = exp.evaluator.subnet(cand.arch)
    exit_ms = trial.user_attrs.get("exit_ms")  # a latency search's ms of leaving at each exit
    meta = {**cand.to_dict(), "classes": list(exp.splits.classes), "space": exp.space.to_dict(),
            "experiment": exp.cfg.to_dict(),
            "costs": exp.evaluator.costs(cand.arch).to_dict(), "metrics": export_metrics(exp, cand, exit_ms)}
    if exit_ms is not None:
        meta["exit_ms"] = [float(v) for v in exit_ms]
    meta["provenance"] = {
        "source": "inherited from the supernet (BN recalibrated)",
        "storage": storage, "study": study_name, "trial": trial.number,
        "values": dict(zip(["val_accuracy", _metric_name(study)], trial.values)),
        "checkpoint": str(exp.checkpoint), "checkpoint_sha256": sha256_file(exp.checkpoint),
        "bn_recalibration_images": len(exp.evaluator.recal_x), "device": str(exp.device),
    }
    s = exp.splits
    return write_export(out, net, meta, list(s.mean), list(s.std), exp.input_shape, onnx)


def _metric_name(study: optuna.Study) -> str:
    return (study.metric_names or ["val_accuracy", "expected_MMACs"])[1]


def export_metrics(exp: Experiment, cand: Candidate, exit_ms: list[float] | None = None) -> dict[str, Any]:
    """Accuracy, expected MMACs (and ms, after a latency search), exit histogram and per-exit
    accuracy of the candidate on val and test."""
    caches = exp.evaluator.caches(cand.arch, ("val", "test"))
    return {split: split_metrics(cache, cand.thresholds, exit_ms, cand.policy, cand.params)
            for split, cache in caches.items()}


#: The files an export folder holds (``arch.json`` names the others and is written last).
EXPORT_FILES = ("arch.json", "weights.safetensors", "model.torchscript.pt", "model.onnx")


def check_export_out(out: str | Path, force: bool = False) -> Path:
    """``out`` can be written, and holds no export (of any completeness) unless ``force``."""
    d = check_output_dir(out, "--out")
    found = [name for name in EXPORT_FILES if (d / name).exists()]
    if found and not force:
        raise UserError(f"--out {d} already holds an export ({found[0]}); choose another folder, or replace it "
                        "with --force")
    return d


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
    # An old export's files go first, arch.json before the rest: a write killed halfway leaves
    # a folder without arch.json (incomplete, and seen to be), never an old arch.json beside new files.
    for name in EXPORT_FILES:
        (d / name).unlink(missing_ok=True)
    policy = meta.get("policy", "threshold")
    model = EarlyExitModel(net, thresholds, mean, std, meta.get("confidence", "maxprob"), policy,
                           meta.get("params")).eval()
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
            AllExits(model), (x,), p, input_names=["image"], output_names=names, dynamo=False,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}))
    files: dict[str, Any] = {
        "weights": {"name": weights.name, "sha256": sha256_file(weights)},
        "torchscript": {"name": ts_path.name, "sha256": sha256_file(ts_path)},
    }
    if onnx_path is not None:
        files["onnx"] = {"name": onnx_path.name, "sha256": sha256_file(onnx_path),
                         "outputs": "logits of every exit (apply the thresholds outside" +
                                    ("" if policy == "threshold" else f", to the {policy} policy's scores") + ")"}
    full = {
        "format": EXPORT_FORMAT if policy == "threshold" else POLICY_EXPORT_FORMAT,
        **{k: v for k, v in meta.items() if k != "format"},
        "input": {"shape": list(input_shape), "range": "[0, 1] floats (uint8 / 255)"},
        "mean": mean,
        "std": std,
        "files": files,
    }
    full["provenance"] = {**meta.get("provenance", {}), "versions": library_versions(),
                          "threads": torch.get_num_threads(),
                          "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    arch_json = d / "arch.json"
    atomic_write(arch_json, lambda p: Path(p).write_text(json.dumps(full, indent=1)))
    return ExportResult(d, arch_json, weights, ts_path, onnx_path)
