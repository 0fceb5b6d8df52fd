"""ArchConfig: round trips, hashing, immutability and errors that name the bad field."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from exitnas._errors import UserError
from exitnas.search_space import ARCH_FORMAT_VERSION, ArchConfig, build_space


def _space() -> Any:
    return build_space("msr-resnet", in_channels=1, num_classes=3, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 0.5, 1.0), heads=("linear", "msdnet"))


def _arch() -> ArchConfig:
    return ArchConfig(
        space="msr-resnet",
        depths=(2, 1),
        widths=(0.5, 1.0),
        ratios=((0.0, 0.5), (1.0,)),
        exits=((0, 0), (1, 0)),
        heads=("msdnet", "linear"),
    )


def _dict(**changes: Any) -> dict[str, Any]:
    d = _arch().to_dict()
    d.update(changes)
    return d


# -- round trips ------------------------------------------------------------------------------
def test_to_dict_is_plain_json() -> None:
    d = _arch().to_dict()
    assert d == {
        "space": "msr-resnet",
        "depths": [2, 1],
        "widths": [0.5, 1.0],
        "ratios": [[0.0, 0.5], [1.0]],
        "exits": [[0, 0], [1, 0]],
        "heads": ["msdnet", "linear"],
        "version": ARCH_FORMAT_VERSION,
    }
    assert json.loads(json.dumps(d)) == d


def test_dict_and_json_round_trip() -> None:
    space = _space()
    rng = random.Random(0)
    archs = [_arch(), space.largest(), space.smallest()] + [space.sample(rng) for _ in range(20)]
    for a in archs:
        assert ArchConfig.from_dict(a.to_dict()) == a
        assert ArchConfig.from_json(a.to_json()) == a
        # through a real JSON text too: tuples became lists, and come back as tuples
        b = ArchConfig.from_dict(json.loads(json.dumps(a.to_dict())))
        assert b == a and hash(b) == hash(a)
        assert isinstance(b.ratios[0], tuple) and isinstance(b.exits[0], tuple)


def test_version_defaults_when_absent() -> None:
    d = _arch().to_dict()
    del d["version"]
    assert ArchConfig.from_dict(d) == _arch()


def test_integer_widths_and_ratios_read_as_floats() -> None:
    a = ArchConfig.from_dict(_dict(widths=[1, 1], ratios=[[0, 1], [1]]))
    assert a.widths == (1.0, 1.0) and all(isinstance(w, float) for w in a.widths)
    assert a == ArchConfig.from_dict(_dict(widths=[1.0, 1.0], ratios=[[0.0, 1.0], [1.0]]))


# -- hashing and immutability --------------------------------------------------------------------
def test_hashable_and_usable_as_dict_key() -> None:
    a, b = _arch(), ArchConfig.from_dict(_arch().to_dict())
    assert a == b and a is not b
    cache = {a: "cached"}
    assert cache[b] == "cached"
    assert len({a, b, a.replace(heads=("linear", "linear"))}) == 2


def test_frozen() -> None:
    a = _arch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.depths = (1, 1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.version = 2  # type: ignore[misc]
    # and its fields are tuples, so nothing inside can be mutated either
    assert isinstance(a.depths, tuple) and all(isinstance(r, tuple) for r in a.ratios)


def test_replace_validates() -> None:
    with pytest.raises(UserError, match="ratios"):
        _arch().replace(depths=(1, 1))


# -- errors name the field ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ratios": [[0.0, "big"], [1.0]]}, r"ratios\[0\]\[1\]"),
        ({"ratios": [[0.0, 0.5], ["x"]]}, r"ratios\[1\]\[0\]"),
        ({"ratios": [[0.0, 0.5], [True]]}, r"ratios\[1\]\[0\]"),
        ({"ratios": [[0.0, 0.5], 1.0]}, r"ratios\[1\]"),
        ({"depths": [2, "1"]}, r"depths\[1\]"),
        ({"depths": [2.0, 1]}, r"depths\[0\]"),
        ({"widths": [0.5, None]}, r"widths\[1\]"),
        ({"widths": 0.5}, r"widths"),
        ({"exits": [[0, 0], [1]]}, r"exits\[1\]"),
        ({"exits": [[0, 0], [1, "0"]]}, r"exits\[1\]\[1\]"),
        ({"heads": ["msdnet", 3]}, r"heads\[1\]"),
        ({"space": 7}, r"space"),
    ],
)
def test_from_dict_error_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(UserError, match=field):
        ArchConfig.from_dict(_dict(**changes))


def test_from_dict_rejects_wrong_version() -> None:
    with pytest.raises(UserError, match="version"):
        ArchConfig.from_dict(_dict(version=ARCH_FORMAT_VERSION + 1))


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(UserError, match="'colour'"):
        ArchConfig.from_dict(_dict(colour="red"))
    d = _dict()
    del d["exits"]
    with pytest.raises(UserError, match="'exits'"):
        ArchConfig.from_dict(d)
    with pytest.raises(UserError, match="mapping"):
        ArchConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_from_json_rejects_bad_text() -> None:
    with pytest.raises(UserError, match="JSON"):
        ArchConfig.from_json("{not json")


def test_exits_must_end_at_the_final_block() -> None:
    # the last active block is (1, 0); an arch that stops before it has no final classifier
    with pytest.raises(UserError, match="last active block"):
        ArchConfig.from_dict(_dict(exits=[[0, 0], [0, 1]], heads=["linear", "linear"]))
    with pytest.raises(UserError, match="last active block"):
        ArchConfig.from_dict(_dict(exits=[[0, 1]], heads=["linear"]))


def test_exit_errors() -> None:
    with pytest.raises(UserError, match=r"exits\[0\].*not an active block"):
        ArchConfig.from_dict(_dict(exits=[[0, 2], [1, 0]]))
    with pytest.raises(UserError, match=r"exits\[1\].*out of order"):
        ArchConfig.from_dict(_dict(exits=[[0, 1], [0, 0], [1, 0]], heads=["linear"] * 3))
    with pytest.raises(UserError, match="exits is empty"):
        ArchConfig.from_dict(_dict(exits=[], heads=[]))


def test_heads_length_must_match_exits() -> None:
    with pytest.raises(UserError, match="heads has 1 entries for 2 exits"):
        ArchConfig.from_dict(_dict(heads=["linear"]))
    with pytest.raises(UserError, match="heads has 3 entries for 2 exits"):
        ArchConfig.from_dict(_dict(heads=["linear"] * 3))


def test_shape_errors() -> None:
    with pytest.raises(UserError, match=r"ratios\[0\] has 1 entries for depth 2"):
        ArchConfig.from_dict(_dict(ratios=[[0.0], [1.0]]))
    with pytest.raises(UserError, match="widths has 1 entries for 2 stages"):
        ArchConfig.from_dict(_dict(widths=[1.0]))
    with pytest.raises(UserError, match=r"depths\[1\] = 0"):
        ArchConfig.from_dict(_dict(depths=[2, 0], ratios=[[0.0, 0.5], []], exits=[[0, 1]], heads=["linear"]))


def test_block_positions() -> None:
    assert _arch().block_positions() == [(0, 0), (0, 1), (1, 0)]
    assert _arch().num_exits == 2
