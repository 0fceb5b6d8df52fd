"""Every registry, for ``exitnas list``."""

from __future__ import annotations

from typing import Any

from exitnas._registry import Registry

__all__ = ["all_registries"]


def all_registries() -> list[tuple[str, Registry[Any]]]:
    from exitnas.data import DATASETS
    from exitnas.search import SAMPLERS
    from exitnas.search_space import HEADS, SPACES
    from exitnas.training import LOSSES

    return [("search spaces", SPACES), ("exit heads", HEADS), ("losses", LOSSES), ("samplers", SAMPLERS),
            ("datasets", DATASETS)]
