"""Every CLI option says what it does; every subcommand has a description and an example."""

from __future__ import annotations

import argparse

import pytest

from exitnas.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_option_has_help_and_every_command_an_example(name: str) -> None:
    p = _subcommands()[name]
    missing = [a.dest for a in p._actions if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"exitnas {name}: options without help: {missing}"
    assert p.description and len(p.description) > 40
    assert p.epilog and p.epilog.startswith("examples:\n") and f"exitnas {name}" in p.epilog
    for line in p.epilog.splitlines()[1:]:  # each example parses as written
        argv = line.split(">")[0].split()[1:]  # a shell redirection is not an argument
        assert argv[0] == name
        build_parser().parse_args(argv)


def test_help_prints(capsys: pytest.CaptureFixture[str]) -> None:
    for name in _subcommands():
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([name, "--help"])
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out
