"""Atomic checkpoints that load without unpickling (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from exitnas._errors import UserError
from exitnas.search_space import SearchSpace

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "check_space"]

CHECKPOINT_FORMAT = 1


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; give the mode open() would
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    _atomic(Path(path), lambda f: f.write(data))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts only) atomically."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    _atomic(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never runs pickled code."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a foreign file before refusing it; the
            # one-line error below is what the user should see, not a warning beside it.
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a bad file to the user
        raise UserError(
            f"checkpoint {p} cannot be read safely ({_load_failure(e)}); exitnas loads only tensors and "
            "plain data, never pickled objects: use a checkpoint written by `exitnas train`"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "space" not in state:
        raise UserError(f"checkpoint {p} is not an exitnas supernet checkpoint")
    return state


def _load_failure(e: Exception) -> str:
    """The informative line of a ``torch.load`` error, without torch's advice to set
    ``weights_only=False`` (the one thing a user handed a file must not do)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or ln.startswith(("Unsupported", "Trying to load")):
            return ln[:160]
    if lines and not lines[0].startswith("Weights only load failed"):
        return lines[0][:160]
    return type(e).__name__


def check_space(state: dict[str, Any], space: SearchSpace, path: str | Path) -> None:
    """Raise a :class:`UserError` if the checkpoint was trained on another search space."""
    theirs = state["space"]
    ours = space.to_dict()
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        k = diff[0]
        raise UserError(
            f"checkpoint {path} is of another search space ({k}: {theirs.get(k)} there, {ours.get(k)} here); "
            "use the config it was trained with"
        )
