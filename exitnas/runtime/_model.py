"""The exported early-exit model, and loading an export without any supernet checkpoint."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from exitnas._errors import UserError
from exitnas._io import read_json
from exitnas.runtime._deploy import channels_last, deploy
from exitnas.runtime._early_exit import EarlyExitRuntime
from exitnas.runtime._scores import DEPLOYED_POLICIES
from exitnas.search_space import ArchConfig, SearchSpace, StaticNet, Supernet, gated_modules, ring_mask

__all__ = ["EXPORT_FORMAT", "POLICY_EXPORT_FORMAT", "AllExits", "EarlyExitModel", "deploy_model", "load_export",
           "sha256_file", "static_skeleton"]

EXPORT_FORMAT = 1
#: The format of an export whose exits decide by another policy than ``threshold`` (``policy``
#: and ``params`` in ``arch.json``): an exitnas that knows only format 1 refuses it rather than
#: running thresholds on confidences the policy never meant.
POLICY_EXPORT_FORMAT = 2


class EarlyExitModel(EarlyExitRuntime):
    """A subnet with its exit policy: images in [0, 1] → (logits, exit index) per sample.

    ``forward`` stops at the first exit whose score (the confidence, or the policy's: see
    :class:`~exitnas.runtime.EarlyExitRuntime`) reaches its threshold; samples that left are dropped
    from the batch, so at batch size 1 later blocks never run (and a single image skips the
    batch bookkeeping, see :class:`~exitnas.runtime.EarlyExitRuntime`).
    ``all_exits`` returns every exit's logits (what the ONNX file computes). TorchScript
    compiles it as is; :func:`deploy_model` is the form the export writes (BatchNorm folded,
    frozen).
    """

    def __init__(self, net: StaticNet, thresholds: List[float], mean: List[float], std: List[float],
                 kind: str = "maxprob", policy: str = "threshold", params: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(net, thresholds, kind, policy, params)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self._run(self._normalise(x))

    @torch.jit.export
    def all_exits(self, x: Tensor) -> List[Tensor]:
        return self.net(self._normalise(x))

    def _normalise(self, x: Tensor) -> Tensor:
        # The same ops as runtime.Normalise, which the latency table times with the stem.
        return channels_last((x - self.mean) / self.std)


def deploy_model(model: EarlyExitModel) -> torch.jit.ScriptModule:
    """``model`` as the export writes it: BatchNorm folded, channels-last, scripted and frozen
    (``exitnas.runtime.deploy``; the runtime the latency table times). ``forward``, ``all_exits``
    and ``thresholds`` are kept; the weights become constants of the graph."""
    return deploy(model, ("all_exits", "thresholds"))


class AllExits(nn.Module):
    """What the ONNX file holds: every exit's logits (ONNX has no data-dependent early stop)."""

    def __init__(self, model: EarlyExitModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.model.all_exits(x))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (the export records one per file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def static_skeleton(space: SearchSpace, arch: ArchConfig) -> StaticNet:
    """The module structure of ``arch`` (weights to be loaded): no trained supernet involved."""
    # Built on the meta device, the supernet and the copies allocate nothing; the result is
    # materialised empty, for load_state_dict to fill.
    with torch.device("meta"):
        net = Supernet(space).to_static(arch)
    net = net.to_empty(device="cpu")
    with torch.no_grad():  # constants that are not in the state dict (the gates' ring masks)
        for m in gated_modules(net):
            m.mask.copy_(ring_mask())
    return net


def load_export(directory: str | Path) -> tuple[EarlyExitModel, dict[str, Any]]:
    """Load ``arch.json`` + ``weights.safetensors`` of an export; checks hashes and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    meta_path = d / "arch.json" if d.is_dir() else d
    d = meta_path.parent
    meta = read_json(meta_path, "{path} does not exist; point at an export folder or its arch.json",
                     "{path} is not valid JSON ({error}); re-export the trial")
    if not isinstance(meta, dict) or meta.get("format") not in (EXPORT_FORMAT, POLICY_EXPORT_FORMAT):
        raise UserError(f"{meta_path} is not an exitnas export (format {EXPORT_FORMAT} or {POLICY_EXPORT_FORMAT})")
    try:
        space = SearchSpace.from_dict(meta["space"])
        arch = space.validate(ArchConfig.from_dict(meta["arch"]))
        thresholds = [float(t) for t in meta["thresholds"]]
        mean, std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
        kind = str(meta.get("confidence", "maxprob"))
        policy, params = str(meta.get("policy", "threshold")), meta.get("params") or {}
        if policy not in DEPLOYED_POLICIES:
            raise ValueError(f"unknown exit policy {policy!r}")
        weights = d / meta["files"]["weights"]["name"]
        _check_metrics(meta["metrics"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise UserError(f"{meta_path}: {e}") from None
        raise UserError(f"{meta_path} is missing or has a malformed field ({e}); re-export the trial") from None
    # +inf closes an exit (the budgeted-batch fit's closed exits, see evaluators.CLOSED).
    if len(thresholds) != arch.num_exits - 1 or not all(0.0 <= t <= 1.0 or t == math.inf for t in thresholds):
        raise UserError(f"{meta_path}: thresholds must be {arch.num_exits - 1} numbers in [0, 1] (or inf)")
    _check_files(meta, d, meta_path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights} cannot be read ({e})") from None
    net = static_skeleton(space, arch)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{weights} does not fit the arch in {meta_path.name} ({str(e).splitlines()[0]})") from None
    net.requires_grad_(False)  # an inference model
    try:
        model = EarlyExitModel(net.eval(), thresholds, mean, std, kind, policy, params).eval()
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{meta_path}: the {policy!r} policy's params are malformed ({e}); "
                        "re-export the trial") from None
    return model, meta


def _check_metrics(metrics: Any) -> None:
    """An export's ``metrics``: accuracy and expected MMACs on val and test (retraining reads them)."""
    for split in ("val", "test"):
        m = metrics[split]
        if not all(isinstance(m[k], (int, float)) for k in ("accuracy", "expected_mmacs")):
            raise TypeError(f"metrics.{split} must hold numbers")


def _check_files(meta: dict[str, Any], d: Path, meta_path: Path) -> None:
    """Every file ``arch.json`` lists exists beside it and has its recorded SHA-256."""
    files = meta["files"]
    for role, entry in files.items():
        try:
            name, digest = str(entry["name"]), str(entry["sha256"])
        except (KeyError, TypeError):
            raise UserError(f"{meta_path}: files.{role} has no name or sha256; re-export the trial") from None
        path = d / name
        if Path(name).name != name:  # a name like ../x would reach outside the export folder
            raise UserError(f"{meta_path}: files.{role} names {name!r}, not a file of the export folder")
        if not path.is_file():
            raise UserError(f"{path} does not exist; re-export the trial")
        if sha256_file(path) != digest:
            raise UserError(f"{path} does not match its sha256 in {meta_path.name}; the file was changed or corrupted")
