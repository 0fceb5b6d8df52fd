"""Experiment configuration: YAML → validated, frozen dataclasses → code.

One file describes an experiment, one section per part; ``--set section.key=value`` flags
override it. Every default is visible in ``exitnas train --print-config``. A bad key or
value raises :class:`UserError` naming it (``train.lr must be a number, got 'fast'``).

Each section checks its own values whenever it is built, however it is built (YAML, a
stored dict, a direct call): every number is finite, and the allowed range or the closed set
of choices is declared beside the field (``field(metadata=within("[0, 1)"))``). Names that
registries hold (datasets, spaces, heads, losses, samplers, ...) are checked one layer up, by
:func:`exitnas._check.check_config`, which can see every registry.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Union

import yaml

from exitnas._confidence import CONFIDENCES
from exitnas._errors import UserError
from exitnas._registry import did_you_mean
from exitnas.data import DataConfig

__all__ = ["BACKENDS", "EXIT_SETS", "OBJECTIVES", "ExperimentConfig", "Range", "SearchConfig", "SpaceConfig",
           "TrainConfig", "check_field", "load_config", "parse_overrides"]

#: ``train.exit_sets``: which exits each sampled subnet trains (see ``training.sandwich_archs``).
EXIT_SETS = ("auto", "all", "sampled")
#: ``search.objective``: what the second objective measures.
OBJECTIVES = ("macs", "latency")
#: ``search.backend``: where the trials run.
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Range:
    """Allowed numbers, written as in maths: ``[0, 1)``, ``(0, 1]``, ``>= 1`` or ``> 0``."""

    text: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    @classmethod
    def parse(cls, text: str) -> Range:
        """``"[0, 1)"`` → the half-open unit interval; ``">= 1"`` → the numbers from 1 up."""
        bound = re.fullmatch(r"(>=|>)\s*(\S+)", text)
        if bound:
            return cls(text, lo=float(bound[2]), lo_open=bound[1] == ">")
        interval = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", text)
        if not interval:
            raise ValueError(f"range {text!r} is neither an interval nor a lower bound")
        return cls(text, float(interval[2]), float(interval[3]), interval[1] == "(", interval[4] == ")")

    def __contains__(self, v: object) -> bool:
        if not isinstance(v, (int, float)):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def describe(self) -> str:
        """``be > 0`` or ``lie in [0, 1)``: what a message says the value must do."""
        return f"be {self.text}" if self.text[0] in "<>" else f"lie in {self.text}"


def within(spec: str) -> dict[str, Any]:
    """Field metadata: numbers (or each number of a tuple) must lie in ``spec`` (see :class:`Range`)."""
    return {"range": Range.parse(spec)}


def one_of(choices: tuple[str, ...]) -> dict[str, Any]:
    """Field metadata: the value must be one of ``choices`` (a closed set no registry extends)."""
    return {"choices": choices}


def check_field(cls: type[_Checked], name: str, value: Any, key: str | None = None) -> None:
    """Check ``value`` as field ``name`` of section ``cls`` would be (e.g. a CLI flag that overrides it).

    Raises:
        UserError: Naming ``key`` (default ``section.name``): ``value`` is not finite, out of
            the field's range, or not one of its choices.
    """
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[name]  # type: ignore[arg-type]
    _check_value(key or f"{cls.section}.{name}", value, meta)


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value}")
    rng: Range | None = meta.get("range")
    if rng is not None and value is not None and value not in rng:
        raise UserError(f"{key} must {rng.describe()}, got {value!r}")
    choices: tuple[str, ...] | None = meta.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"{key} {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")


class _Checked:
    """A config section that checks its fields' declared ranges and choices when built."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key, value = f"{self.section}.{f.name}", getattr(self, f.name)
            if not isinstance(value, tuple):
                _check_value(key, value, f.metadata)
                continue
            if not value:
                raise UserError(f"{key} must not be empty")
            for i, item in enumerate(value):
                _check_value(f"{key}[{i}]", item, f.metadata)


@dataclass(frozen=True)
class SpaceConfig(_Checked):
    """Which search space, and its choices (``exitnas list`` shows the registered spaces)."""

    section: ClassVar[str] = "space"
    name: str = "msr-resnet"
    channels: tuple[int, ...] = field(default=(32, 64, 128), metadata=within(">= 1"))
    depths: tuple[int, ...] = field(default=(1, 2, 3, 4), metadata=within(">= 1"))
    widths: tuple[float, ...] = field(default=(0.5, 0.75, 1.0), metadata=within("(0, 1]"))
    ratios: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata=within("[0, 1]"))
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
class TrainConfig(_Checked):
    """Supernet training: sandwich sampling, in-place distillation, SGD with a cosine schedule.

    ``crop_pad`` and ``flip`` left empty follow the images: pad = size/8 (4 for 32×32),
    flips only for images of 32 px or more (a flipped digit is another digit).
    """

    section: ClassVar[str] = "train"
    epochs: float = field(default=60.0, metadata=within("> 0"))
    batch_size: int = field(default=256, metadata=within(">= 1"))
    lr: float = field(default=0.2, metadata=within("> 0"))
    momentum: float = field(default=0.9, metadata=within("[0, 1)"))
    weight_decay: float = field(default=5e-4, metadata=within(">= 0"))
    warmup_epochs: float = field(default=1.0, metadata=within(">= 0"))
    label_smoothing: float = field(default=0.0, metadata=within("[0, 1)"))
    sandwich_random: int = field(default=2, metadata=within(">= 0"))
    distill: float = field(default=0.5, metadata=within(">= 0"))
    loss: str = "plain"
    routing: str = "shared"
    dfs_beta: float = field(default=0.5, metadata=within("(0, 1)"))
    gate_cost: float = field(default=1.0, metadata=within(">= 0"))
    exit_sets: str = field(default="auto", metadata=one_of(EXIT_SETS))
    augment: bool = True
    crop_pad: int | None = field(default=None, metadata=within(">= 0"))
    flip: bool | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = field(default=None, metadata=within(">= 1"))
    checkpoint_every: int = field(default=500, metadata=within(">= 1"))
    out: str = "runs/exp"
    progress: bool = True


@dataclass(frozen=True)
class SearchConfig(_Checked):
    """Optuna search of archs and thresholds (storage URL, sampler, budget, backend)."""

    section: ClassVar[str] = "search"
    storage: str = "sqlite:///runs/exp/study.db"
    study: str = "exitnas"
    sampler: str = "nsga2"
    trials: int = field(default=200, metadata=within(">= 1"))
    objective: str = field(default="macs", metadata=one_of(OBJECTIVES))
    latency_table: str | None = None
    budget_mmacs: float | None = field(default=None, metadata=within("> 0"))
    backend: str = field(default="local", metadata=one_of(BACKENDS))
    workers: int = field(default=1, metadata=within(">= 1"))
    ray_address: str | None = None
    gpus_per_worker: float = field(default=0.0, metadata=within(">= 0"))
    seed: int = field(default=0, metadata=within("[0, 4294967296)"))  # what Optuna's samplers accept
    recal_images: int = field(default=2000, metadata=within(">= 1"))
    confidence: str = field(default="maxprob", metadata=one_of(CONFIDENCES))
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
                base: dict[str, Any] | None = None, flags: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML file (else ``base``, else the defaults), then apply overrides and flags.

    Args:
        path: Experiment YAML file.
        overrides: ``section.key=value`` strings (``--set``); values are parsed as YAML.
        base: Raw config dict to start from when there is no file (e.g. a checkpoint's).
        flags: Typed values by ``section.key`` (CLI flags), applied last and as they are: a
            study named ``2024`` stays the string ``"2024"``.

    Raises:
        UserError: A missing or malformed file, an unknown key, a wrong type, a value out of
            its range. Registered names are not checked here (see ``exitnas._check``).
    """
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
    for key, value in [*parse_overrides(overrides), *(flags or {}).items()]:
        _set(raw, key, value)
    return ExperimentConfig.from_dict(raw)


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: {part} is not a section")
    node[leaf] = value


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
            hint = did_you_mean(key, fields) or f"; known: {', '.join(sorted(fields))}"
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
        return float(v)  # finiteness is the section's check, for configs built any way
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
