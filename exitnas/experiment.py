"""The composition root: one experiment, opened once, shared by every command.

An :class:`Experiment` holds the resolved config, the data, the search space, the device and
the trained supernet, and is the only place that builds an :class:`~exitnas.evaluators.Evaluator`,
a latency table or a supernet. ``exitnas search``, ``evaluate``, ``report``, ``export``,
``retrain`` and ``profile`` open one (from a config, a checkpoint, a study or an export) and
so measure an arch the same way: the same recalibration images, confidence, seed and device.

Everything heavy is built on first use: ``Experiment.from_config(cfg).space`` loads the data
(the space is sized by its channels and classes) but no supernet.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exitnas._check import check_config, load_checked_config
from exitnas._config import ExperimentConfig
from exitnas._errors import UserError
from exitnas.data import ImageSplits, load_dataset
from exitnas.evaluators import Evaluator, LatencyTable
from exitnas.search_space import SearchSpace, Supernet
from exitnas.training import check_space, load_checkpoint, load_supernet, resolve_device, space_for

__all__ = ["COST_UNITS", "CostUnit", "Experiment", "checkpoint_of"]


@dataclass(frozen=True)
class CostUnit:
    """What the second objective counts: its metric name, unit and scale from the policy's numbers.

    Attributes:
        objective: ``macs`` or ``latency`` (``search.objective``).
        metric: The study's metric name (what optuna-dashboard shows).
        unit: The unit every table, figure and export labels it with.
        scale: Policy numbers (MACs, or ms from a latency table) × scale = the value in ``unit``.
    """

    objective: str
    metric: str
    unit: str
    scale: float


COST_UNITS = {
    "macs": CostUnit("macs", "expected_MMACs", "MMACs", 1e-6),
    "latency": CostUnit("latency", "expected_ms", "ms", 1.0),
}


def checkpoint_of(cfg: ExperimentConfig) -> Path:
    """The supernet checkpoint a config names: ``search.checkpoint``, else ``<train.out>/supernet.pt``."""
    return Path(cfg.search.checkpoint or Path(cfg.train.out) / "supernet.pt")


class Experiment:
    """One experiment's config, data, space, device and supernet, each built once on first use.

    Args:
        cfg: The resolved config.
        checkpoint: The trained supernet (default: :func:`checkpoint_of`); needed only by
            :attr:`supernet` and :attr:`evaluator`.
        device: Where subnets run (default: ``train.device``; ``auto`` takes the GPU if there is one).
        splits: Already loaded data to reuse (it must be ``cfg.data``'s).
        use_cache_dir: Keep exit caches in ``search.cache_dir``; commands that only read a
            study (report, export) use the folder only if it already exists.
    """

    def __init__(self, cfg: ExperimentConfig, checkpoint: str | Path | None = None, *, device: str | None = None,
                 splits: ImageSplits | None = None, use_cache_dir: bool = True) -> None:
        check_config(cfg)  # every registered name, whichever way the config came (file, study, export)
        self.cfg = cfg
        self.checkpoint = Path(checkpoint) if checkpoint is not None else checkpoint_of(cfg)
        self._device_name = device or cfg.train.device
        self._use_cache_dir = use_cache_dir
        if splits is not None:
            self.__dict__["splits"] = splits  # functools.cached_property reads the instance dict first

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, config: str | Path | None = None, overrides: tuple[str, ...] = (),
                        *, device: str | None = None) -> Experiment:
        """The experiment a checkpoint was trained with; ``config`` (a YAML file) replaces it and
        ``overrides`` (``section.key=value``) apply to either."""
        state = load_checkpoint(checkpoint)
        cfg = load_checked_config(config, overrides, base=None if config else state["config"])
        return cls(cfg, checkpoint, device=device)

    @classmethod
    def from_study(cls, study_attrs: dict[str, Any], study_name: str, checkpoint: str | Path | None = None, *,
                   device: str | None = None) -> Experiment:
        """The experiment a study searched, from its user attributes: its config (data,
        recalibration, confidence, seed) and, unless ``checkpoint`` is given, its supernet.

        The training recipe (``train``: epochs, lr, loss, ...) is the one the supernet was
        trained with, from its checkpoint, where the study's config says otherwise: an export
        carries it, and ``exitnas retrain`` trains with it."""
        path = _study_checkpoint(study_attrs, study_name, checkpoint)
        state = load_checkpoint(path)
        raw = _with_training_recipe(study_attrs.get("config") or state["config"], state["config"])
        exp = cls(ExperimentConfig.from_dict(raw), path, device=device, use_cache_dir=False)
        theirs = study_attrs.get("exitnas_space")
        if theirs is not None and not exp.space.matches(theirs):
            raise UserError(f"study {study_name!r} searched another search space than its config describes")
        if not exp.space.matches(state["space"]):
            raise UserError(f"checkpoint {path} is of another search space than study {study_name!r}; "
                            "pass the supernet the study searched")
        return exp

    @classmethod
    def from_export(cls, meta: dict[str, Any], where: str | Path, *, device: str | None = None) -> Experiment:
        """The experiment an export records (``arch.json``'s ``experiment``): its data and training."""
        if "experiment" not in meta:
            raise UserError(f"{where} does not record its experiment (data and training); re-export the trial")
        return cls(ExperimentConfig.from_dict(meta["experiment"]), None, device=device, use_cache_dir=False)

    # -- the parts -----------------------------------------------------------------------------
    @functools.cached_property
    def splits(self) -> ImageSplits:
        return load_dataset(self.cfg.data)

    @functools.cached_property
    def space(self) -> SearchSpace:
        """The config's search space, sized for the data's channels and classes."""
        return space_for(self.cfg, self.splits)

    @functools.cached_property
    def device(self) -> torch.device:
        return resolve_device(self._device_name)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.splits.train_x.shape[1:]
        return int(c), int(h), int(w)

    @functools.cached_property
    def supernet(self) -> Supernet:
        """The trained supernet, checked against the config's space, on :attr:`device`."""
        if not self.checkpoint.is_file():
            raise UserError(f"checkpoint {self.checkpoint} does not exist; train first or set search.checkpoint")
        net, _ = load_supernet(self.checkpoint, self.space, map_location=self.device)
        return net

    def check_checkpoint(self) -> None:
        """Fail early, without loading any weights, if the checkpoint is missing or of another space."""
        if not self.checkpoint.is_file():
            raise UserError(f"checkpoint {self.checkpoint} does not exist; train first or set search.checkpoint")
        check_space(load_checkpoint(self.checkpoint), self.space, self.checkpoint)

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        """The one evaluator of this experiment: ``search.recal_images``, ``confidence``, ``seed``
        and ``cache_dir`` as the search uses them."""
        sc = self.cfg.search
        cache_dir = sc.cache_dir if sc.cache_dir and (self._use_cache_dir or Path(sc.cache_dir).is_dir()) else None
        return Evaluator(self.supernet, self.splits, recal_images=sc.recal_images, kind=sc.confidence,
                         cache_dir=cache_dir, device=self.device, seed=sc.seed)

    @property
    def cost(self) -> CostUnit:
        """What the search's second objective counts (``search.objective``)."""
        return COST_UNITS[self.cfg.search.objective]

    @functools.cached_property
    def latency(self) -> LatencyTable | None:
        """``search.latency_table``, checked against this space (None unless the objective is latency)."""
        sc = self.cfg.search
        if sc.objective != "latency":
            return None
        if not sc.latency_table:
            raise UserError("search.objective latency needs a table: exitnas profile --out lut.json, "
                            "then --latency-table lut.json")
        table = LatencyTable.load(sc.latency_table)
        table.exit_latency(self.space, self.space.smallest())  # fails early if of another space
        return table


#: ``train`` keys that say where and how a run goes, not what it learns: not part of the recipe.
_RUN_KEYS = frozenset({"device", "threads", "out", "progress", "checkpoint_every", "log_every"})


def _with_training_recipe(config: dict[str, Any], trained_with: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a raw config dict) with the training recipe of ``trained_with`` (a checkpoint's
    config): every ``train`` key but :data:`_RUN_KEYS`."""
    recipe = {k: v for k, v in (trained_with.get("train") or {}).items() if k not in _RUN_KEYS}
    return {**config, "train": {**(config.get("train") or {}), **recipe}}


def _study_checkpoint(attrs: dict[str, Any], study: str, checkpoint: str | Path | None) -> Path:
    """``checkpoint`` if given, else the one the search recorded on the study; it must exist."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")
        return path
    recorded = attrs.get("checkpoint")
    if not recorded:
        raise UserError(f"study {study!r} records no supernet checkpoint; pass --checkpoint")
    path = Path(recorded)
    if not path.is_file():
        raise UserError(f"checkpoint {path} recorded by study {study!r} does not exist; pass --checkpoint")
    return path
