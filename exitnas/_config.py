"""Experiment configuration: YAML → validated, frozen dataclasses → code.

One file describes an experiment, one section per part; ``--set section.key=value`` flags
override it. Every default is visible in ``exitnas train --print-config``. A bad key or
value raises :class:`UserError` naming it (``train.lr must be a number, got 'fast'``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from exitnas._errors import UserError
from exitnas.data import DataConfig

__all__ = ["ExperimentConfig", "SearchConfig", "SpaceConfig", "TrainConfig", "load_config", "parse_overrides"]


@dataclass(frozen=True)
class SpaceConfig:
    """Which search space, and its choices (``exitnas list`` shows the registered spaces)."""

    name: str = "msr-resnet"
    channels: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 2, 3, 4)
    widths: tuple[float, ...] = (0.5, 0.75, 1.0)
    ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    heads: tuple[str, ...] = ("linear", "msdnet")
    combine: str = "none"
    gate: str = "none"
    ensemble: str = "none"

    def options(self) -> dict[str, Any]:
        """Keyword options of the space factory."""
        d = dataclasses.asdict(self)
        del d["name"]
        return d


@dataclass(frozen=True)
class TrainConfig:
    """Supernet training: sandwich sampling, in-place distillation, SGD with a cosine schedule.

    ``crop_pad`` and ``flip`` left empty follow the images: pad = size/8 (4 for 32×32),
    flips only for images of 32 px or more (a flipped digit is another digit).
    """

    epochs: float = 60.0
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    sandwich_random: int = 2
    distill: float = 0.5
    loss: str = "plain"
    routing: str = "shared"
    dfs_beta: float = 0.5
    gate_cost: float = 1.0
    exit_sets: str = "auto"
    augment: bool = True
    crop_pad: int | None = None
    flip: bool | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    out: str = "runs/exp"
    progress: bool = True


@dataclass(frozen=True)
class SearchConfig:
    """Optuna search of archs and thresholds (storage URL, sampler, budget, backend)."""

    storage: str = "sqlite:///runs/exp/study.db"
    study: str = "exitnas"
    sampler: str = "nsga2"
    trials: int = 200
    objective: str = "macs"
    latency_table: str | None = None
    budget_mmacs: float | None = None
    backend: str = "local"
    workers: int = 1
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    seed: int = 0
    recal_images: int = 2000
    confidence: str = "maxprob"
    exit_rule: str = "threshold"
    cache_dir: str | None = None
    checkpoint: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _build(cls, d, "")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML file (else ``base``, else the defaults) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = copy.deepcopy(base) if base else {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {p} must hold a mapping of sections")
    for key, value in parse_overrides(overrides):
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key}: {part} is not a section")
        node[leaf] = value
    return ExperimentConfig.from_dict(raw)


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.lr=0.1", ...]`` → ``[("train.lr", 0.1), ...]`` (values parsed as YAML)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} must look like section.key=value")
        try:
            out.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError:
            out.append((key.strip(), value))
    return out


# -- the generic, typed dict → dataclass conversion ---------------------------------------
def _build(cls: type, d: Any, where: str) -> Any:
    name = where.rstrip(".") or "config"
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(f"{name} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(sorted(fields))}"
            raise UserError(f"unknown config key '{where}{key}'{hint}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in d.items()}
    return cls(**kwargs)


def _coerce(tp: Any, v: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, name + ".")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, name)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{name}: bad value {v!r}")
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        if not isinstance(v, (list, tuple)):
            raise UserError(f"{name} must be a list, got {v!r}")
        return tuple(_coerce(item, x, f"{name}[{i}]") for i, x in enumerate(v))
    if tp is bool:
        if not isinstance(v, bool):
            raise UserError(f"{name} must be true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{name} must be an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{name} must be a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise UserError(f"{name} must be a string, got {v!r}")
        return v
    raise TypeError(f"config type {tp!r} of {name} is not supported")


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists of choices on one line: readable ``--print-config``."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
