"""The config checked at load: every name it holds is one that something registers.

:mod:`exitnas._config` checks types, ranges and closed choices as each section is built; it
sits below the packages that register datasets, spaces, heads, losses, samplers and exit
rules, so it cannot see their names. This module can: :func:`load_checked_config` is the one
way every CLI command reads its experiment, so a typo stops with one line before anything is
written (no study created, no folder made).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from exitnas._config import ExperimentConfig, load_config
from exitnas._errors import UserError
from exitnas._registries import config_names
from exitnas._registry import did_you_mean
from exitnas._storage import storage_kind

__all__ = ["check_config", "load_checked_config"]

#: ``train.device``: ``auto`` picks the GPU when there is one.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def load_checked_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                        base: dict[str, Any] | None = None,
                        flags: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """:func:`~exitnas._config.load_config`, then :func:`check_config`: the CLI's one way in."""
    cfg = load_config(path, overrides, base=base, flags=flags)
    check_config(cfg)
    return cfg


def check_config(cfg: ExperimentConfig) -> None:
    """Raise a one-line :class:`UserError` for the first name in ``cfg`` that is not known.

    Checks every registered name (``exitnas list``), the device and the storage URL's
    scheme. Whether a CUDA device is visible, or a database reachable, is left to their use.
    """
    for key, registry in config_names():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        for v in value if isinstance(value, tuple) else (value,):
            if v not in registry:
                raise registry.unknown(v, key)
    device = cfg.train.device
    if not _DEVICE.fullmatch(device):
        raise UserError(f"train.device {device!r} is not a device; use auto, cpu, cuda or cuda:N"
                        f"{did_you_mean(device, ('auto', 'cpu', 'cuda'))}")
    try:
        storage_kind(cfg.search.storage)
    except UserError as e:
        raise UserError(f"search.storage: {e}") from None
