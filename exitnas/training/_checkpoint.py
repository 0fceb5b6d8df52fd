"""Atomic checkpoints that load without unpickling (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from exitnas._errors import UserError
from exitnas._io import atomic_write, atomic_write_bytes
from exitnas.search_space import SearchSpace

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "atomic_write_bytes", "check_recipe", "check_space"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts only) atomically."""
    state = {"format": CHECKPOINT_FORMAT, **state}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(path, write)


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
    problem = _contents_problem(state)
    if problem:
        raise UserError(f"checkpoint {p} is damaged: {problem}; train it again (exitnas train)")
    return state


def _contents_problem(state: dict[str, Any]) -> str | None:
    """What a loaded checkpoint lacks for every command that reads one (None: nothing)."""
    model = state.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        return "no 'model' weights"
    if not isinstance(state.get("config"), dict):
        return "no 'config' section"
    if not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        return "no 'step' count"
    space = state.get("space")
    try:
        if not isinstance(space, dict):
            raise TypeError("not a mapping")
        SearchSpace.from_dict(space)
    except (TypeError, ValueError) as e:  # UserError is a ValueError
        return f"its 'space' is malformed ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return None


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
    if not space.matches(theirs):
        diff = (sorted(k for k in ours if k in theirs and theirs[k] != ours[k])
                or sorted(set(theirs) ^ set(ours)))
        k = diff[0]
        raise UserError(
            f"checkpoint {path} is of another search space ({k}: {theirs.get(k)} there, {ours.get(k)} here); "
            "use the config it was trained with"
        )


#: Settings that do not change what training computes: a resumed run may change them.
_NOT_RECIPE = {"train": {"out", "progress", "checkpoint_every", "log_every", "device"}, "data": {"root", "cache_dir"}}


def check_recipe(state: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Raise a :class:`UserError` naming the first ``train``/``data`` setting of ``config`` (a
    config as a dict of sections) that differs from the one the checkpoint was trained with.

    Resuming with another batch size, learning rate, seed or length would give a run that is
    neither the old recipe nor the new one. A setting the checkpoint predates is not compared.
    """
    theirs = state.get("config", {})
    for section, skip in _NOT_RECIPE.items():
        old, new = theirs.get(section) or {}, config.get(section) or {}
        for key in sorted(set(old) & set(new) - skip):
            if old[key] != new[key]:
                raise UserError(f"--resume: {section}.{key} is {new[key]!r} here but {path} was trained with "
                                f"{old[key]!r}; resume with the same recipe, or train anew with --force")


def load_weights(module: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state["model"])``; weights that do not fit → :class:`UserError`."""
    try:
        module.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path}: its weights do not fit its search space ({first}); "
                        "train it again") from None
