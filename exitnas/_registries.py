"""Every registry: listed by ``exitnas list``, and the config keys whose values they hold.

This module sits above every package that registers parts (it imports them all), so only
the CLI and :mod:`exitnas._check` import it.
"""

from __future__ import annotations

from typing import Any

from exitnas._registry import Registry
from exitnas._samplers import SAMPLERS
from exitnas.data import DATASETS
from exitnas.evaluators import EXIT_RULES
from exitnas.search_space import COMBINERS, ENSEMBLES, GATES, HEADS, ROUTINGS, SPACES
from exitnas.training import LOSSES

__all__ = ["all_registries", "config_names"]


def all_registries() -> list[tuple[str, Registry[Any]]]:
    """``(title, registry)`` for ``exitnas list``."""
    return [("search spaces", SPACES), ("exit heads", HEADS),
            ("exit combiners (space.combine)", COMBINERS),
            ("exit ensembles (space.ensemble)", ENSEMBLES), ("feature routings (train.routing)", ROUTINGS),
            ("multi-scale gates (space.gate)", GATES),
            ("losses", LOSSES), ("samplers", SAMPLERS),
            ("exit rules (search.exit_rule)", EXIT_RULES),
            ("datasets", DATASETS)]


def config_names() -> list[tuple[str, Registry[Any]]]:
    """``(section.key, registry)`` for every config value that names a registered part."""
    return [("data.name", DATASETS), ("space.name", SPACES), ("space.heads", HEADS),
            ("space.combine", COMBINERS), ("space.gate", GATES), ("space.ensemble", ENSEMBLES),
            ("train.loss", LOSSES), ("train.routing", ROUTINGS),
            ("search.sampler", SAMPLERS), ("search.exit_rule", EXIT_RULES)]
