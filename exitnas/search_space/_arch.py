"""``ArchConfig``: one subnet of a search space, the only thing the parts pass each other."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from exitnas._errors import UserError

__all__ = ["ArchConfig", "ARCH_FORMAT_VERSION"]

ARCH_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ArchConfig:
    """One subnet: depth, width and multi-scale ratios per stage, and its exits.

    Attributes:
        space: Name of the search space the arch belongs to.
        depths: Active blocks per stage (a stage runs its first ``d`` blocks).
        widths: Width multiplier per stage (a narrower stage takes a channel prefix).
        ratios: Per stage, the 5×5 share of each active block's conv channels.
        exits: Exit positions ``(stage, block)`` in network order; the last one is the
            end of the network (the final classifier is always on).
        heads: Exit head type of each exit, same length as ``exits``.
        version: Format version, bumped when the fields change meaning.
    """

    space: str
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    ratios: tuple[tuple[float, ...], ...]
    exits: tuple[tuple[int, int], ...]
    heads: tuple[str, ...]
    version: int = ARCH_FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_shape(self)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchConfig:
        """Build from :meth:`to_dict` output; a bad field raises :class:`UserError` naming it."""
        if not isinstance(d, dict):
            raise UserError(f"arch must be a mapping, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise UserError(f"arch has unknown field {unknown[0]!r}; known fields: {', '.join(sorted(fields))}")
        missing = sorted(fields - {"version"} - set(d))
        if missing:
            raise UserError(f"arch is missing field {missing[0]!r}")
        version = d.get("version", ARCH_FORMAT_VERSION)
        if version != ARCH_FORMAT_VERSION:
            raise UserError(f"arch.version is {version!r}; this exitnas reads version {ARCH_FORMAT_VERSION}")
        try:
            return cls(
                space=_str(d["space"], "space"),
                depths=tuple(_int(v, f"depths[{i}]") for i, v in enumerate(_seq(d["depths"], "depths"))),
                widths=tuple(_num(v, f"widths[{i}]") for i, v in enumerate(_seq(d["widths"], "widths"))),
                ratios=tuple(
                    tuple(_num(v, f"ratios[{s}][{b}]") for b, v in enumerate(_seq(row, f"ratios[{s}]")))
                    for s, row in enumerate(_seq(d["ratios"], "ratios"))
                ),
                exits=tuple(_pos(v, f"exits[{i}]") for i, v in enumerate(_seq(d["exits"], "exits"))),
                heads=tuple(_str(v, f"heads[{i}]") for i, v in enumerate(_seq(d["heads"], "heads"))),
                version=version,
            )
        except (TypeError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"arch is malformed: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise UserError(f"arch is not valid JSON: {e}") from None

    def replace(self, **changes: Any) -> ArchConfig:
        return dataclasses.replace(self, **changes)

    def block_positions(self) -> list[tuple[int, int]]:
        """Every active block as ``(stage, block)``, in network order."""
        return [(s, b) for s, d in enumerate(self.depths) for b in range(d)]


def _check_shape(a: ArchConfig) -> None:
    """Internal consistency that holds for any space (membership is the space's job)."""
    n = len(a.depths)
    if n == 0:
        raise UserError("arch.depths is empty")
    if len(a.widths) != n:
        raise UserError(f"arch.widths has {len(a.widths)} entries for {n} stages")
    if len(a.ratios) != n:
        raise UserError(f"arch.ratios has {len(a.ratios)} rows for {n} stages")
    for s, (d, row) in enumerate(zip(a.depths, a.ratios)):
        if d < 1:
            raise UserError(f"arch.depths[{s}] = {d}: every stage runs at least one block")
        if len(row) != d:
            raise UserError(f"arch.ratios[{s}] has {len(row)} entries for depth {d}")
    if not a.exits:
        raise UserError("arch.exits is empty: the final exit is always on")
    if len(a.heads) != len(a.exits):
        raise UserError(f"arch.heads has {len(a.heads)} entries for {len(a.exits)} exits")
    active = a.block_positions()
    order = {p: i for i, p in enumerate(active)}
    for i, p in enumerate(a.exits):
        if p not in order:
            raise UserError(f"arch.exits[{i}] = {list(p)} is not an active block")
        if i and order[p] <= order[a.exits[i - 1]]:
            raise UserError(f"arch.exits[{i}] = {list(p)} is out of order or repeated")
    if a.exits[-1] != active[-1]:
        raise UserError(f"arch.exits must end at the last active block {list(active[-1])} (the final exit)")


def _seq(v: Any, name: str) -> list[Any]:
    if not isinstance(v, (list, tuple)):
        raise UserError(f"arch.{name} must be a list, got {v!r}")
    return list(v)


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"arch.{name} must be an integer, got {v!r}")
    return v


def _num(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"arch.{name} must be a number, got {v!r}")
    return float(v)


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise UserError(f"arch.{name} must be a string, got {v!r}")
    return v


def _pos(v: Any, name: str) -> tuple[int, int]:
    row = _seq(v, name)
    if len(row) != 2:
        raise UserError(f"arch.{name} must be [stage, block], got {v!r}")
    return (_int(row[0], name + "[0]"), _int(row[1], name + "[1]"))
