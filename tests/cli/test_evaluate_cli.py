"""``exitnas evaluate`` on a tiny checkpoint: a table and JSON, and one-line errors with status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exitnas.cli import main

TINY = ["--set", "space.channels=[8,16]", "--set", "space.depths=[1,2]"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("evaluate-cli")
    rc = main(["train", *TINY, "--set", "train.epochs=1", "--set", "train.batch_size=128",
               "--set", f"train.out={out}", "--set", "train.progress=false"])
    assert rc == 0
    return out / "supernet.pt"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("exitnas: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_largest_prints_table_and_writes_json(checkpoint: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    rc, stdout, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", "largest",
                           "--thresholds", "0.5,0.6,0.7", "--out", str(out))
    assert rc == 0, err
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["exit", "position"])
    rows = lines[header + 1 : header + 5]
    assert [r.split()[0] for r in rows] == ["0", "1", "2", "3"]  # largest: an exit at each of 4 blocks
    assert any(line.startswith("oracle (test)") for line in lines)
    assert "classes (digits): 0 0, 1 1, 2 2, 3 3, 4 4, 5 5, 6 6, 7 7, 8 8, 9 9" in lines
    bb = lines.index("budgeted batch on test (thresholds fit on val for exit shares ∝ p^k):")
    assert lines[bb + 1].split()[:3] == ["p", "MMACs", "test"]
    table = lines[bb + 2 : next(i for i, line in enumerate(lines) if line.startswith("oracle (test)"))]
    assert len(table) == len(json.loads(out.read_text())["budgeted_batch_test"]) > 1
    assert any(line.startswith("thresholds on test") for line in lines)
    assert lines[-1] == f"wrote {out}"

    result: dict[str, Any] = json.loads(out.read_text())
    assert result["arch"]["depths"] == [2, 2]
    assert result["classes"] == [str(d) for d in range(10)] and result["threads"] >= 1
    macs = result["costs"]["macs"]
    assert len(macs) == 4 and macs == sorted(macs)
    assert [p["macs"] for p in result["anytime"]["test"]] == macs
    assert len(result["budgeted_batch_test"]) == 40
    assert 0 <= result["oracle_test"]["accuracy"] <= 1
    t = result["thresholds_test"]
    assert t["thresholds"] == [0.5, 0.6, 0.7]
    assert sum(t["histogram"]) == sum(result["oracle_test"]["histogram"]) > 0  # every test sample
    # Every exit policy on test, at five val budgets, beside the budgeted oracle.
    pol = next(i for i, line in enumerate(lines) if line.startswith("exit policies on test (fit on val;"))
    assert set(lines[pol + 1].split()) == {"MMACs", "threshold", "temperature", "patience", "decider", "ensemble",
                                           "oracle"}
    assert all(len(line.split()) == 7 for line in lines[pol + 2 : pol + 7])
    assert set(result["policies_test"]) == {"threshold", "temperature", "patience", "decider", "ensemble"}
    assert result["budgeted_oracle_test"][-1]["accuracy"] == pytest.approx(result["oracle_test"]["accuracy"])


def test_smallest_and_arch_file_default_out(checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", "smallest")
    assert rc == 0, err
    default = checkpoint.with_name("evaluate.json")
    arch = json.loads(default.read_text())["arch"]
    assert len(arch["exits"]) == 1
    # an arch.json export (arch under an "arch" key) is read too
    f = tmp_path / "arch.json"
    f.write_text(json.dumps({"arch": arch, "note": "exported"}))
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", str(f), "--out", str(tmp_path / "o.json"))
    assert rc == 0, err


def _largest(checkpoint: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "largest.json"
    assert _run(capsys, "--checkpoint", str(checkpoint), "--arch", "largest", "--out", str(out))[0] == 0
    arch: dict[str, Any] = json.loads(out.read_text())["arch"]
    return arch


def test_arch_outside_space(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = _largest(checkpoint, capsys, tmp_path)
    arch["ratios"][1][0] = 0.3
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(arch))
    out = tmp_path / "never.json"
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", str(f), "--out", str(out))
    _assert_one_line_error(rc, err, "ratios[1][0]", "0.3")
    assert not out.exists()


def test_arch_missing_field(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = _largest(checkpoint, capsys, tmp_path)
    del arch["widths"]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(arch))
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", str(f))
    _assert_one_line_error(rc, err, "missing field 'widths'")


@pytest.mark.parametrize("text,needle", [("{not json", "not valid JSON"), ("[1, 2]", "mapping")])
def test_arch_file_not_an_arch(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               text: str, needle: str) -> None:
    f = tmp_path / "bad.json"
    f.write_text(text)
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", str(f))
    _assert_one_line_error(rc, err, needle)


def test_missing_arch_file(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", str(tmp_path / "nope.json"))
    _assert_one_line_error(rc, err, "does not exist")


def test_checkpoint_of_another_space(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", "largest",
                      "--set", "space.channels=[4,8]", "--set", "space.depths=[1,2]")
    _assert_one_line_error(rc, err, "another search space", "channels")


@pytest.mark.parametrize("thresholds,needle", [
    ("0.5,0.5", "got 2 thresholds for an arch with 4 exits"),
    ("0.5,0.5,0.5,0.5", "got 4 thresholds"),
    ("0.5,1.5,0.5", "[0, 1]"),
    ("-0.1,0.5,0.5", "[0, 1]"),
    ("0.5,high,0.5", "comma-separated numbers"),
])
def test_bad_thresholds(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        thresholds: str, needle: str) -> None:
    out = tmp_path / "never.json"
    # "--thresholds=…" so that a leading minus is not read as an option
    rc, _, err = _run(capsys, "--checkpoint", str(checkpoint), "--arch", "largest", f"--thresholds={thresholds}",
                      "--out", str(out))
    _assert_one_line_error(rc, err, needle)
    assert not out.exists()


def test_nonexistent_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "--checkpoint", str(tmp_path / "missing.pt"), "--arch", "largest")
    _assert_one_line_error(rc, err, "does not exist")


def test_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    bad = tmp_path / "supernet.pt"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rc, _, err = _run(capsys, "--checkpoint", str(bad), "--arch", "largest")
    _assert_one_line_error(rc, err, "cannot be read")


def test_exit_status_from_a_real_process(tmp_path: Path) -> None:
    # the console path end to end: status 2 and a single stderr line, no traceback
    p = subprocess.run([sys.executable, "-m", "exitnas", "evaluate", "--checkpoint", str(tmp_path / "x.pt"),
                        "--arch", "largest"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"exitnas: error: checkpoint {tmp_path / 'x.pt'} does not exist"]
