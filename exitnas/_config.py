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

__all__ = ["BACKENDS", "EXIT_SETS", "FIELD_DOCS", "OBJECTIVES", "ExperimentConfig", "Range", "SearchConfig",
           "SpaceConfig", "TrainConfig", "check_field", "commented_yaml", "load_config", "parse_overrides"]

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
    log_every: int = field(default=50, metadata=within(">= 1"))
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


#: One line per key, for ``exitnas train --print-config`` (a test checks every key has one).
FIELD_DOCS: dict[str, str] = {
    "data.name": "dataset: digits (built in), cifar10, cifar100, image-folder, cifar10-jpeg (exitnas list)",
    "data.root": "folder (or tar) of a file dataset; image-folder: root/train/<class>/, root/test/<class>/",
    "data.val_size": "validation images held out of train: a count, or a fraction in (0, 1)",
    "data.seed": "seed of the train/val split (the test split never moves)",
    "data.cache_dir": "where decoded images are cached (default: <root>/.exitnas-cache)",
    "data.channels": "1 or 3; empty: follow the images (1 when all are grayscale)",
    "space.name": "search space (exitnas list)",
    "space.channels": "channels of each stage at width 1.0",
    "space.depths": "blocks a stage may run",
    "space.widths": "width choices: a share of each stage's channels",
    "space.ratios": "5x5 share choices of each block's conv (the rest is 3x3)",
    "space.heads": "exit head types the search may pick (linear, msdnet, bof)",
    "space.combine": "none | boost | ztw: how an exit uses the exits before it",
    "space.gate": "none | emg: EMGNet's per-image gate of the 5x5 rings",
    "space.ensemble": "none | geometric: Zero Time Waste's ensemble of exits",
    "train.epochs": "passes over the training images",
    "train.batch_size": "images per step (split over torchrun processes)",
    "train.lr": "peak learning rate (SGD, Nesterov momentum, cosine decay)",
    "train.momentum": "SGD momentum",
    "train.weight_decay": "on conv and linear weights only",
    "train.warmup_epochs": "linear warm-up before the cosine decay (keep it below epochs)",
    "train.label_smoothing": "label smoothing of every exit's cross-entropy",
    "train.sandwich_random": "random subnets per step, besides the largest and the smallest",
    "train.distill": "weight of in-place distillation from the largest subnet",
    "train.loss": "plain | self-distill (exitnas list)",
    "train.routing": "shared | dfs (Deep Feature Surgery)",
    "train.dfs_beta": "with routing dfs: the share of channels each exit owns",
    "train.gate_cost": "with space.gate emg: price of the 5x5 rings a gate switches on",
    "train.exit_sets": "auto | all | sampled: which exits each sampled subnet trains",
    "train.augment": "random crop and flip of training images",
    "train.crop_pad": "crop padding in pixels (empty: image side / 8)",
    "train.flip": "horizontal flips (empty: only for images of 32 px or more; a mirrored digit is another)",
    "train.seed": "seed of weights, sampling and data order",
    "train.device": "auto (the GPU if there is one) | cpu | cuda | cuda:N",
    "train.threads": "CPU threads (empty: the physical cores, or OMP_NUM_THREADS); --threads overrides",
    "train.checkpoint_every": "steps between checkpoints",
    "train.log_every": "steps between loss readings (each waits for the GPU; the bar shows their mean)",
    "train.out": "folder for supernet.pt and config.yaml",
    "train.progress": "show a progress bar",
    "search.storage": "sqlite:///relative.db, sqlite:////absolute.db, journal:///FILE.log or postgresql://...",
    "search.study": "study name (the same name resumes it)",
    "search.sampler": "nsga2 | tpe | gp | random",
    "search.trials": "complete trials the study should reach",
    "search.objective": "macs | latency: what the second objective measures",
    "search.latency_table": "lut.json from exitnas profile (objective latency)",
    "search.budget_mmacs": "a constraint: expected MMACs at most this (empty: none)",
    "search.backend": "local | ray",
    "search.workers": "Ray workers (backend ray)",
    "search.ray_address": "join this Ray cluster (empty: start a local one)",
    "search.gpus_per_worker": "GPUs each Ray worker takes",
    "search.seed": "sampler seed",
    "search.recal_images": "training images each subnet's BatchNorm is recalibrated on",
    "search.confidence": "maxprob | entropy: an exit's confidence",
    "search.exit_rule": "threshold | share | bof | temperature | patience | decider | ensemble | policy: "
                        "how a trial decides where images leave (policy: the exit policy searched per trial)",
    "search.cache_dir": "folder for exit caches shared between runs (empty: none)",
    "search.checkpoint": "supernet to search (empty: <train.out>/supernet.pt)",
    "search.progress": "show a progress bar",
}


def commented_yaml(cfg: ExperimentConfig) -> str:
    """``cfg`` as YAML with each key's :data:`FIELD_DOCS` line as a comment (``--print-config``);
    it reads back as the same config."""
    lines = ["# exitnas experiment: every key and its value. The defaults train the full space for",
             "# 60 epochs: an hour-long job on a CPU. `exitnas demo` runs a small setting in minutes."]
    for section, values in cfg.to_dict().items():
        lines.append(f"{section}:")
        for key, value in values.items():
            text = yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, width=10_000).rstrip("\n")
            lines.append(f"  {text:<40} # {FIELD_DOCS.get(f'{section}.{key}', '')}".rstrip(" #"))
    return "\n".join(lines) + "\n"


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
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"config file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        except OSError as e:
            raise UserError(f"config file {p} cannot be read ({e.strerror})") from None
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
