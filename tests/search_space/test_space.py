"""SearchSpace: sampling, largest/smallest, validation and size."""

from __future__ import annotations

import itertools
import random

import pytest

from exitnas._errors import UserError
from exitnas.search_space import SPACES, ArchConfig, SearchSpace, build_space


def _tiny(**kw: object) -> SearchSpace:
    opts: dict[str, object] = dict(channels=(8, 16), depths=(1, 2), widths=(0.5, 1.0), ratios=(0.0, 1.0),
                                   heads=("linear", "msdnet"))
    opts.update(kw)
    return build_space("msr-resnet", in_channels=3, num_classes=4, **opts)


def _enumerate(space: SearchSpace) -> set[ArchConfig]:
    """Every arch of ``space``, built field by field (independently of ``size``)."""
    out: set[ArchConfig] = set()
    for depths in itertools.product(space.depth_choices, repeat=space.num_stages):
        blocks = [(s, b) for s, d in enumerate(depths) for b in range(d)]
        for widths in itertools.product(space.width_choices, repeat=space.num_stages):
            for flat in itertools.product(space.ratio_choices, repeat=len(blocks)):
                it = iter(flat)
                ratios = tuple(tuple(next(it) for _ in range(d)) for d in depths)
                for on in itertools.product((False, True), repeat=len(blocks) - 1):
                    exits = tuple(p for p, keep in zip(blocks[:-1], on) if keep) + (blocks[-1],)
                    for heads in itertools.product(space.head_choices, repeat=len(exits)):
                        out.add(ArchConfig(space.name, depths, widths, ratios, exits, heads))
    return out


def test_registered() -> None:
    assert "msr-resnet" in SPACES
    with pytest.raises(UserError, match="unknown search space 'nope'"):
        build_space("nope", in_channels=3, num_classes=10)
    with pytest.raises(UserError, match="space 'msr-resnet'"):
        build_space("msr-resnet", in_channels=3, num_classes=10, colours=3)


def test_largest_smallest_sample_are_valid() -> None:
    space = _tiny(ratios=(0.0, 0.5, 1.0))
    big, small = space.largest(), space.smallest()
    assert space.validate(big) is big and space.validate(small) is small
    assert big.depths == (2, 2) and big.widths == (1.0, 1.0) and set(sum(big.ratios, ())) == {1.0}
    assert big.exits == ((0, 0), (0, 1), (1, 0), (1, 1))
    assert small.depths == (1, 1) and small.widths == (0.5, 0.5) and set(sum(small.ratios, ())) == {0.0}
    assert small.exits == ((1, 0),)
    assert space.largest(all_exits=False).exits == ((1, 1),)
    assert space.largest(head="msdnet").heads == ("msdnet",) * 4
    rng = random.Random(0)
    for _ in range(50):
        space.validate(space.sample(rng))


def test_sample_is_reproducible() -> None:
    space = _tiny()
    a = [space.sample(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = random.Random(3), random.Random(3)
    assert [space.sample(rng1) for _ in range(10)] == [space.sample(rng2) for _ in range(10)]


def test_with_all_exits() -> None:
    space = _tiny()
    a = space.sample(random.Random(1), exit_prob=0.0)
    assert a.num_exits == 1
    full = space.with_all_exits(a)
    assert full.exits == tuple(a.block_positions())
    assert full.heads[-1] == a.heads[-1]  # existing heads are kept
    assert full.depths == a.depths and full.ratios == a.ratios and full.widths == a.widths
    space.validate(full)
    space.validate(space.with_all_exits(a, random.Random(0)))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"depths": (3, 1), "ratios": ((0.0,) * 3, (0.0,)), "exits": ((1, 0),), "heads": ("linear",)},
         r"depths\[0\] = 3"),
        ({"widths": (0.5, 0.75)}, r"widths\[1\] = 0\.75"),
        ({"ratios": ((0.0,), (0.25,))}, r"ratios\[1\]\[0\] = 0\.25"),
        ({"heads": ("bof",)}, r"heads\[0\] = 'bof'"),
        ({"space": "other"}, r"arch\.space is 'other'"),
    ],
)
def test_validate_names_the_field(changes: dict[str, object], field: str) -> None:
    space = _tiny()
    bad = space.smallest().replace(**changes)
    with pytest.raises(UserError, match=field):
        space.validate(bad)


def test_validate_rejects_other_stage_count() -> None:
    space = _tiny()
    three = ArchConfig("msr-resnet", (1, 1, 1), (1.0,) * 3, ((0.0,),) * 3, ((2, 0),), ("linear",))
    with pytest.raises(UserError, match="3 stages"):
        space.validate(three)


def test_size_equals_brute_force_enumeration() -> None:
    space = _tiny()
    archs = _enumerate(space)
    assert space.size() == len(archs)
    for a in random.Random(0).sample(sorted(archs, key=lambda a: a.to_json()), 50):
        space.validate(a)
    # one head type: the non-final exits are just on/off
    one_head = _tiny(heads=("linear",), widths=(1.0,))
    assert one_head.size() == len(_enumerate(one_head))


def test_samples_lie_in_the_enumeration() -> None:
    space = _tiny()
    archs = _enumerate(space)
    rng = random.Random(0)
    assert all(space.sample(rng) in archs for _ in range(100))
    assert space.largest() in archs and space.smallest() in archs


def test_sampling_covers_every_choice() -> None:
    space = _tiny(ratios=(0.0, 0.5, 1.0))
    rng = random.Random(0)
    samples = [space.sample(rng) for _ in range(400)]
    for s in range(space.num_stages):
        assert {a.depths[s] for a in samples} == set(space.depth_choices)
        assert {a.widths[s] for a in samples} == set(space.width_choices)
        for b in range(space.max_depth):
            assert {a.ratios[s][b] for a in samples if a.depths[s] > b} == set(space.ratio_choices)
    for p in space.candidate_exits():
        assert {h for a in samples for e, h in zip(a.exits, a.heads) if e == p} == set(space.head_choices)
    # an exit at a non-final block is sometimes on and sometimes off
    with_first = sum((0, 0) in a.exits for a in samples)
    assert 0 < with_first < len(samples)
    assert len(set(samples)) > 300


def test_space_round_trip_and_errors() -> None:
    space = _tiny()
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(UserError, match="width_choices"):
        _tiny(widths=(0.0, 1.0))
    with pytest.raises(UserError, match="ratio_choices"):
        _tiny(ratios=(1.5,))
    with pytest.raises(UserError, match="depth_choices"):
        _tiny(depths=())
    with pytest.raises(UserError, match="unknown exit head 'nope'"):
        _tiny(heads=("nope",))


def test_stage_channels_are_a_prefix() -> None:
    space = _tiny()
    assert space.stage_channels(0, 0.5) == 4 and space.stage_channels(1, 1.0) == 16
    assert space.candidate_exits() == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_walk_yields_each_active_block_with_its_channels_and_exit() -> None:
    space = _tiny()
    arch = ArchConfig("msr-resnet", depths=(2, 1), widths=(0.5, 1.0), ratios=((0.0, 0.5), (1.0,)),
                      exits=((0, 1), (1, 0)), heads=("msdnet", "linear"))
    assert space.stem_channels(arch) == 4
    blocks = list(space.walk(arch))
    assert [(b.stage, b.block, b.c_in, b.c_out, b.ratio, b.exit, b.head) for b in blocks] == [
        (0, 0, 4, 4, 0.0, None, None),
        (0, 1, 4, 4, 0.5, 0, "msdnet"),
        (1, 0, 4, 16, 1.0, 1, "linear"),
    ]
    assert [b.first for b in blocks] == [True, False, True]
