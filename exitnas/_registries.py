"""Every registry, for ``exitnas list``."""

from __future__ import annotations

from typing import Any

from exitnas._registry import Registry

__all__ = ["all_registries"]


def all_registries() -> list[tuple[str, Registry[Any]]]:
    from exitnas._samplers import SAMPLERS
    from exitnas.data import DATASETS
    from exitnas.evaluators import EXIT_RULES
    from exitnas.search_space import COMBINERS, ENSEMBLES, GATES, HEADS, ROUTINGS, SPACES
    from exitnas.training import LOSSES

    return [("search spaces", SPACES), ("exit heads", HEADS),
            ("exit combiners (space.combine)", COMBINERS),
            ("exit ensembles (space.ensemble)", ENSEMBLES), ("feature routings (train.routing)", ROUTINGS),
            ("multi-scale gates (space.gate)", GATES),
            ("losses", LOSSES), ("samplers", SAMPLERS),
            ("exit rules (search.exit_rule)", EXIT_RULES),
            ("datasets", DATASETS)]
