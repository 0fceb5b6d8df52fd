"""Every registered name in the config is checked at load, by every command, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitnas._check import check_config, load_checked_config
from exitnas._config import ExperimentConfig, load_config
from exitnas._errors import UserError
from exitnas._registries import config_names
from exitnas.cli import main

#: (key, a typo, the name it should suggest or None): every name-valued field of the config.
TYPOS = [
    ("data.name", "digitz", "digits"), ("space.name", "msr-resnte", "msr-resnet"),
    ("space.heads", "[linear, msdnte]", "msdnet"), ("space.combine", "bost", "boost"),
    ("space.gate", "emgg", "emg"), ("space.ensemble", "geometrc", "geometric"),
    ("train.loss", "plian", "plain"), ("train.routing", "sharde", "shared"),
    ("train.exit_sets", "alll", "all"), ("train.device", "cdua", "cuda"), ("train.device", "gpu", None),
    ("search.sampler", "nsga3", "nsga2"), ("search.objective", "latncy", "latency"),
    ("search.backend", "rya", "ray"), ("search.exit_rule", "bfo", "bof"),
    ("search.confidence", "entropi", "entropy"), ("search.confidence", "bogus", None),
    ("search.storage", "mysql://db.example/x", None),
]

COMMANDS = [["train"], ["search"], ["profile", "--out", "lut.json"]]


def test_every_registry_backed_key_has_a_case() -> None:
    assert {k for k, _ in config_names()} <= {k for k, _, _ in TYPOS}


@pytest.mark.parametrize(("key", "typo", "near"), TYPOS, ids=[f"{k}={t}" for k, t, _ in TYPOS])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_typo_in_a_name_stops_every_command_at_load(key: str, typo: str, near: str | None, command: list[str],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the defaults write runs/exp/ (checkpoint, study.db) here
    assert main([*command, "--set", f"{key}={typo}"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exitnas: error: "), lines
    assert key in lines[0]
    if near is not None:
        assert f"(did you mean {near!r}?)" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no study, no folder, no file


def test_a_typo_in_the_config_file_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "exp.yaml").write_text("train:\n  loss: plian\n")
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--config", "exp.yaml", "--study", "s"]) == 2
    err = capsys.readouterr().err
    assert err == "exitnas: error: unknown loss 'plian' for train.loss (did you mean 'plain'?); " \
                  "known: plain, self-distill\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_check_config_accepts_the_defaults_and_every_device_form() -> None:
    check_config(ExperimentConfig())
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        check_config(load_config(None, [f"train.device={device}"]))
    for storage in ("sqlite:///a.db", "journal:///a.log", "b.jsonl", "postgresql://u@h:1/d"):
        check_config(load_config(None, [f"search.storage={storage}"]))


def test_load_checked_config_checks_what_load_config_leaves() -> None:
    load_config(None, ["train.loss=plian"])  # the base loader cannot see the registries
    with pytest.raises(UserError, match=r"^unknown loss 'plian' for train\.loss \(did you mean 'plain'\?\)"):
        load_checked_config(None, ["train.loss=plian"])
    with pytest.raises(UserError, match="for search.sampler"):
        load_checked_config(None, flags={"search.sampler": "annealing"})
