"""The config's own checks: every value in its declared range, every number finite, typed flags."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from exitnas._config import (
    ExperimentConfig,
    Range,
    SearchConfig,
    SpaceConfig,
    TrainConfig,
    check_field,
    load_config,
)
from exitnas._errors import UserError
from exitnas.cli import main

#: (key, a value outside its range): issue 16's list, one or more per field.
OUT_OF_RANGE = [
    ("train.epochs", 0), ("train.epochs", -1), ("train.batch_size", 0), ("train.batch_size", -4),
    ("train.lr", 0), ("train.lr", -0.1), ("train.momentum", 5), ("train.momentum", 1), ("train.momentum", -0.1),
    ("train.weight_decay", -1e-4), ("train.warmup_epochs", -1), ("train.label_smoothing", 2),
    ("train.label_smoothing", 1), ("train.label_smoothing", -0.1), ("train.sandwich_random", -1),
    ("train.distill", -0.5), ("train.dfs_beta", 0), ("train.dfs_beta", 1), ("train.dfs_beta", 1.5),
    ("train.gate_cost", -1), ("train.crop_pad", -1), ("train.checkpoint_every", 0), ("train.checkpoint_every", -5),
    ("space.channels", [8, 0]), ("space.channels", []), ("space.depths", [0, 1]), ("space.depths", []),
    ("space.widths", [0.0, 1.0]), ("space.widths", [1.5]), ("space.ratios", [-0.5]), ("space.ratios", [1.5]),
    ("space.heads", []),
    ("search.trials", 0), ("search.workers", 0), ("search.recal_images", 0), ("search.gpus_per_worker", -1),
    ("search.budget_mmacs", 0), ("search.budget_mmacs", -1), ("search.seed", -1), ("search.seed", 2**32),
    ("data.val_size", 0), ("data.val_size", 1.0), ("data.seed", -1),
]


def _float_fields() -> list[str]:
    """Every float-valued key of the config (tuples of floats included)."""
    keys = []
    for section, cls in typing.get_type_hints(ExperimentConfig).items():
        hints = typing.get_type_hints(cls)
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if "float" in str(hints[f.name])]
    return keys


def _cli_fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exitnas: error: "), lines
    return lines[0]


@pytest.mark.parametrize(("key", "bad"), OUT_OF_RANGE, ids=[f"{k}={v}" for k, v in OUT_OF_RANGE])
def test_out_of_range_is_refused_at_load(key: str, bad: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={bad}"])
    monkeypatch.chdir(tmp_path)
    for command in (["train"], ["search"], ["profile", "--out", "lut.json"]):
        line = _cli_fails([*command, "--set", f"{key}={bad}"], capsys)
        assert key in line
    assert list(tmp_path.iterdir()) == []


def test_every_float_is_covered() -> None:
    assert {"train.epochs", "train.lr", "train.momentum", "space.widths", "space.ratios", "search.budget_mmacs",
            "search.gpus_per_worker", "data.val_size"} <= set(_float_fields())


@pytest.mark.parametrize("key", _float_fields())
@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_are_refused_for_every_float(key: str, bad: str) -> None:
    value = f"[{bad}]" if key.startswith("space.") else bad
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as e:
        load_config(None, [f"{key}={value}"])
    assert "\n" not in str(e.value)


def test_range_message_names_key_value_and_range() -> None:
    with pytest.raises(UserError, match=r"^train\.momentum must lie in \[0, 1\), got 5\.0$"):
        load_config(None, ["train.momentum=5"])
    with pytest.raises(UserError, match=r"^train\.epochs must be > 0, got 0\.0$"):
        load_config(None, ["train.epochs=0"])
    with pytest.raises(UserError, match=r"^space\.channels\[1\] must be >= 1, got 0$"):
        load_config(None, ["space.channels=[8, 0]"])
    with pytest.raises(UserError, match=r"^train\.epochs must be a finite number, got nan$"):
        load_config(None, ["train.epochs=.nan"])


def test_sections_check_themselves_however_built() -> None:
    with pytest.raises(UserError, match="train.lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(UserError, match="search.trials"):
        dataclasses.replace(SearchConfig(), trials=0)
    with pytest.raises(UserError, match=r"space\.widths\[0\]"):
        SpaceConfig(widths=(float("nan"),))
    with pytest.raises(UserError, match="search.objective 'maks' is not one of macs, latency .did you mean 'macs'"):
        SearchConfig(objective="maks")


def test_defaults_and_edges_are_accepted() -> None:
    cfg = ExperimentConfig()
    assert cfg == ExperimentConfig.from_dict(cfg.to_dict())
    edges = load_config(None, ["train.momentum=0", "train.label_smoothing=0", "train.warmup_epochs=0",
                               "train.sandwich_random=0", "train.distill=0", "train.crop_pad=0", "train.gate_cost=0",
                               "space.widths=[1]", "space.ratios=[0, 1]", "search.gpus_per_worker=0",
                               "search.budget_mmacs=null", "train.epochs=0.01", "train.checkpoint_every=1"])
    assert edges.train.momentum == 0.0 and edges.search.budget_mmacs is None


@pytest.mark.parametrize(("spec", "inside", "outside"), [
    ("[0, 1)", [0, 0.5], [1, -0.1]), ("(0, 1]", [1, 0.5], [0, 1.1]), ("(0, 1)", [0.5], [0, 1]),
    ("[0, 1]", [0, 1], [-0.1, 1.1]), (">= 1", [1, 9], [0.99]), ("> 0", [1e-9], [0, -1]),
])
def test_range(spec: str, inside: list[float], outside: list[float]) -> None:
    r = Range.parse(spec)
    assert all(v in r for v in inside) and not any(v in r for v in outside)
    assert "x" not in r  # type: ignore[operator]
    with pytest.raises(ValueError):
        Range.parse("between 0 and 1")


def test_check_field_for_a_flag_that_stands_in_for_a_field() -> None:
    check_field(TrainConfig, "epochs", None, key="--epochs")
    check_field(TrainConfig, "epochs", 2.0, key="--epochs")
    with pytest.raises(UserError, match=r"^--epochs must be > 0, got -1\.0$"):
        check_field(TrainConfig, "epochs", -1.0, key="--epochs")
    with pytest.raises(UserError, match=r"^--lr must be a finite number, got inf$"):
        check_field(TrainConfig, "lr", float("inf"), key="--lr")


def test_flags_are_typed_values_not_yaml() -> None:
    cfg = load_config(None, ["search.study=abc", "search.trials=5"],
                      flags={"search.study": "2024", "search.storage": "journal:///x: y.log", "search.workers": 3})
    assert cfg.search.study == "2024"  # as a --set value it would be the int 2024, refused
    assert cfg.search.storage == "journal:///x: y.log"
    assert (cfg.search.trials, cfg.search.workers) == (5, 3)
    with pytest.raises(UserError, match="search.study must be a string, got 2024"):
        load_config(None, ["search.study=2024"])
    with pytest.raises(UserError, match="search.workers must be >= 1"):
        load_config(None, flags={"search.workers": 0})


# -- --print-config ---------------------------------------------------------------------------
def test_print_config_comments_every_key_and_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exitnas._config import FIELD_DOCS, ExperimentConfig
    from exitnas.cli import main

    default = ExperimentConfig()
    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(default)
            for f in dataclasses.fields(getattr(default, s.name))}
    assert keys == set(FIELD_DOCS)  # a new key needs its line
    assert main(["train", "--print-config", "--set", "search.storage=journal:///a #b.log"]) == 0
    text = capsys.readouterr().out
    for key in keys:
        section, name = key.split(".")
        line = next(line for line in text.splitlines() if line.startswith(f"  {name}:") and FIELD_DOCS[key] in line)
        assert line.endswith(f"# {FIELD_DOCS[key]}")
    (tmp_path / "exp.yaml").write_text(text)
    assert load_config(tmp_path / "exp.yaml") == load_config(None, ["search.storage=journal:///a #b.log"])
