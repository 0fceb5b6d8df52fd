"""``SearchSpace``: the choices, sampling, validation and size; a registry of spaces."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

from exitnas._errors import UserError
from exitnas._registry import Registry
from exitnas.search_space._arch import ArchConfig
from exitnas.search_space._combine import COMBINERS
from exitnas.search_space._ensemble import ENSEMBLES
from exitnas.search_space._gate import GATES
from exitnas.search_space._heads import HEADS

__all__ = ["ArchBlock", "SearchSpace", "SPACES", "build_space"]


class ArchBlock(NamedTuple):
    """One active block of an arch, as :meth:`SearchSpace.walk` yields it.

    Attributes:
        stage, block: Its position (block 0 is the stage's first, which takes the stride).
        c_in, c_out: Its active input and output channels (the first block's input is the stem's).
        ratio: The 5×5 share of its convs.
        exit: Index of the exit at its end in ``arch.exits``, or ``None``.
        head: That exit's head type, or ``None``.
    """

    stage: int
    block: int
    c_in: int
    c_out: int
    ratio: float
    exit: int | None
    head: str | None

    @property
    def first(self) -> bool:
        return self.block == 0


@dataclass(frozen=True)
class SearchSpace:
    """The choices of a multi-scale residual search space.

    Attributes:
        name: Registry name of the space (stored in every arch and checkpoint).
        in_channels: Image channels.
        num_classes: Classes of every exit head.
        channels: Full width of each stage (the stem has the first stage's width).
        strides: Stride of each stage's first block.
        depth_choices: Allowed active-block counts of a stage.
        width_choices: Allowed width multipliers of a stage.
        ratio_choices: Allowed 5×5 shares of a block's convs.
        head_choices: Allowed exit head types.
        combine: How an exit builds on the exit before it (``none``, ``boost``, ``ztw``;
            see ``_combine``); one choice for the whole space, fixed at training.
        gate: ``emg`` lets a per-sample gate grow each 3×3 channel to 5×5 (EMGNet's dynamic
            mode, see ``_gate``); ``none`` keeps the searched static split.
        ensemble: ``geometric`` gives every subnet Zero Time Waste's ensemble of its exits,
            fitted per subnet on training images (see ``_ensemble``); ``none`` does not.
    """

    name: str
    in_channels: int
    num_classes: int
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    depth_choices: tuple[int, ...]
    width_choices: tuple[float, ...]
    ratio_choices: tuple[float, ...]
    head_choices: tuple[str, ...]
    combine: str = "none"
    gate: str = "none"
    ensemble: str = "none"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides):
            raise UserError(f"space: {len(self.channels)} stage widths but {len(self.strides)} strides")
        for field in ("depth_choices", "width_choices", "ratio_choices", "head_choices"):
            if not getattr(self, field):
                raise UserError(f"space.{field} is empty")
        if min(self.depth_choices) < 1:
            raise UserError("space.depth_choices must be >= 1")
        if not all(0 < w <= 1 for w in self.width_choices):
            raise UserError("space.width_choices must lie in (0, 1]")
        if not all(0 <= r <= 1 for r in self.ratio_choices):
            raise UserError("space.ratio_choices must lie in [0, 1]")
        for h in self.head_choices:
            HEADS.get(h)
        COMBINERS.get(self.combine)
        GATES.get(self.gate)
        ENSEMBLES.get(self.ensemble)

    # -- shape ---------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.channels)

    @property
    def max_depth(self) -> int:
        return max(self.depth_choices)

    def stage_channels(self, stage: int, width: float) -> int:
        """Active channels of ``stage`` at width multiplier ``width`` (a prefix of the full width)."""
        return max(1, int(round(width * self.channels[stage])))

    def stem_channels(self, arch: ArchConfig) -> int:
        """Output channels of ``arch``'s stem (its first stage's width)."""
        return self.stage_channels(0, arch.widths[0])

    def walk(self, arch: ArchConfig) -> Iterator[ArchBlock]:
        """``arch``'s active blocks in network order, with their channels and exits: the one
        stage/block walk that the supernet, ``to_static`` and the latency table share."""
        exits = {pos: k for k, pos in enumerate(arch.exits)}
        c_in = self.stem_channels(arch)
        for s, d in enumerate(arch.depths):
            c = self.stage_channels(s, arch.widths[s])
            for b in range(d):
                k = exits.get((s, b))
                yield ArchBlock(s, b, c_in, c, arch.ratios[s][b], k, None if k is None else arch.heads[k])
                c_in = c

    def candidate_exits(self) -> list[tuple[int, int]]:
        """Every block end of the supernet, each a candidate exit with its own heads."""
        return [(s, b) for s in range(self.num_stages) for b in range(self.max_depth)]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def matches(self, d: dict[str, Any]) -> bool:
        """Whether ``d`` (a stored :meth:`to_dict`) is this space; fields added since default."""
        try:
            return SearchSpace.from_dict(d) == self
        except (TypeError, ValueError):  # UserError is a ValueError: not a space at all
            return False

    # -- archs ---------------------------------------------------------------------------
    def _arch(self, depths: list[int], widths: list[float], ratios: list[list[float]],
              exits: list[tuple[int, int]], heads: list[str]) -> ArchConfig:
        return ArchConfig(self.name, tuple(depths), tuple(widths), tuple(tuple(r) for r in ratios),
                          tuple(exits), tuple(heads))

    def largest(self, head: str | None = None, all_exits: bool = True) -> ArchConfig:
        """Deepest, widest, all-5×5 subnet; with an exit at every block by default."""
        return self._uniform(self.max_depth, max(self.width_choices), max(self.ratio_choices), head, all_exits)

    def smallest(self, head: str | None = None, all_exits: bool = False) -> ArchConfig:
        """Shallowest, narrowest, all-3×3 subnet; only the final exit by default."""
        return self._uniform(min(self.depth_choices), min(self.width_choices), min(self.ratio_choices),
                             head, all_exits)

    def _uniform(self, d: int, w: float, r: float, head: str | None, all_exits: bool) -> ArchConfig:
        head = head or self.head_choices[0]
        depths = [d] * self.num_stages
        blocks = [(s, b) for s in range(self.num_stages) for b in range(d)]
        exits = blocks if all_exits else blocks[-1:]
        return self._arch(depths, [w] * self.num_stages, [[r] * d for d in depths], exits, [head] * len(exits))

    def sample(self, rng: random.Random, exit_prob: float = 0.5) -> ArchConfig:
        """A uniformly random subnet; each non-final block end is an exit with ``exit_prob``."""
        depths = [rng.choice(self.depth_choices) for _ in range(self.num_stages)]
        widths = [rng.choice(self.width_choices) for _ in range(self.num_stages)]
        ratios = [[rng.choice(self.ratio_choices) for _ in range(d)] for d in depths]
        blocks = [(s, b) for s, d in enumerate(depths) for b in range(d)]
        exits = [p for p in blocks[:-1] if rng.random() < exit_prob] + [blocks[-1]]
        heads = [rng.choice(self.head_choices) for _ in exits]
        return self._arch(depths, widths, ratios, exits, heads)

    def with_random_exits(self, arch: ArchConfig, rng: random.Random, exit_prob: float = 0.5) -> ArchConfig:
        """The same backbone with exits drawn as :meth:`sample` draws them (new random heads)."""
        blocks = arch.block_positions()
        exits = [p for p in blocks[:-1] if rng.random() < exit_prob] + [blocks[-1]]
        return arch.replace(exits=tuple(exits), heads=tuple(rng.choice(self.head_choices) for _ in exits))

    def with_all_exits(self, arch: ArchConfig, rng: random.Random | None = None) -> ArchConfig:
        """The same backbone with an exit at every active block (heads kept, new ones random)."""
        blocks = arch.block_positions()
        old = dict(zip(arch.exits, arch.heads))
        pick = (lambda: rng.choice(self.head_choices)) if rng else (lambda: self.head_choices[0])
        heads = [old.get(p) or pick() for p in blocks]
        return arch.replace(exits=tuple(blocks), heads=tuple(heads))

    def validate(self, arch: ArchConfig) -> ArchConfig:
        """Return ``arch`` if it belongs to this space, else raise a :class:`UserError` naming the field."""
        if arch.space != self.name:
            raise UserError(f"arch.space is {arch.space!r} but the search space is {self.name!r}")
        if len(arch.depths) != self.num_stages:
            raise UserError(f"arch has {len(arch.depths)} stages; space {self.name!r} has {self.num_stages}")
        for s in range(self.num_stages):
            _member(arch.depths[s], self.depth_choices, f"depths[{s}]")
            _member(arch.widths[s], self.width_choices, f"widths[{s}]")
            for b, r in enumerate(arch.ratios[s]):
                _member(r, self.ratio_choices, f"ratios[{s}][{b}]")
        for i, h in enumerate(arch.heads):
            _member(h, self.head_choices, f"heads[{i}]")
        return arch

    def size(self) -> int:
        """Number of distinct archs (backbone choices × exit subsets × head types)."""
        n_w, n_r, n_h = len(self.width_choices), len(self.ratio_choices), len(self.head_choices)
        total = 0
        for depths in itertools.product(self.depth_choices, repeat=self.num_stages):
            n = sum(depths)
            # every block: a ratio; every non-final block: no exit or one of n_h heads; final: a head
            total += n_r**n * (1 + n_h) ** (n - 1) * n_h
        return total * n_w**self.num_stages


def _member(v: Any, choices: tuple[Any, ...], name: str) -> None:
    if v not in choices:
        raise UserError(f"arch.{name} = {v!r} is not one of the space's choices {list(choices)}")


#: Search spaces by name; each factory takes keyword options (see :func:`build_space`).
SPACES: Registry[Callable[..., SearchSpace]] = Registry("search space")


@SPACES.register("msr-resnet", "multi-scale residual net: elastic depth, width, 5x5/3x3 ratio, exits")
def msr_resnet(
    *,
    in_channels: int,
    num_classes: int,
    channels: tuple[int, ...] = (32, 64, 128),
    strides: tuple[int, ...] | None = None,
    depths: tuple[int, ...] = (1, 2, 3, 4),
    widths: tuple[float, ...] = (0.5, 0.75, 1.0),
    ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    heads: tuple[str, ...] = ("linear", "msdnet"),
    combine: str = "none",
    gate: str = "none",
    ensemble: str = "none",
) -> SearchSpace:
    """The default space for small images (CIFAR's 32×32; stages halve the resolution)."""
    strides = strides or (1,) + (2,) * (len(channels) - 1)
    return SearchSpace("msr-resnet", in_channels, num_classes, tuple(channels), tuple(strides),
                       tuple(depths), tuple(float(w) for w in widths), tuple(float(r) for r in ratios),
                       tuple(heads), combine, gate, ensemble)


def build_space(name: str, *, in_channels: int, num_classes: int, **options: Any) -> SearchSpace:
    """Build a registered space; unknown options raise a :class:`UserError`."""
    factory = SPACES.get(name)
    try:
        return factory(in_channels=in_channels, num_classes=num_classes, **options)
    except TypeError as e:
        raise UserError(f"space {name!r}: {e}") from None
