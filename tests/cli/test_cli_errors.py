"""The CLI on bad input: exit status 2, one line ``exitnas: error: ...``, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--set", "space.channels=[8, 16]", "--set", "space.depths=[1, 2]", "--set", "space.widths=[0.5, 1.0]",
        "--set", "space.ratios=[0.0, 1.0]", "--set", "space.heads=[linear]", "--set", "train.batch_size=64",
        "--set", "train.epochs=0.1", "--set", "train.sandwich_random=0", "--set", "train.device=cpu",
        "--set", "train.progress=false"]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "exitnas", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("exitnas: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny supernet trained two steps on digits into ``<dir>/run`` (in this process: the
    CLI's own training path is not what these tests check, and a process costs seconds)."""
    from exitnas._config import load_config
    from exitnas.training import train_supernet

    cwd = tmp_path_factory.mktemp("trained")
    overrides = [v for v in TINY if v != "--set"] + [f"train.out={cwd / 'run'}"]
    result = train_supernet(load_config(None, overrides))
    assert result.steps == 2
    assert sorted(p.name for p in (cwd / "run").iterdir()) == ["config.yaml", "supernet.pt"]
    return cwd


def test_list_names_the_registered_parts(tmp_path: Path) -> None:
    proc = _run(tmp_path, "list")
    assert proc.returncode == 0, proc.stderr
    words = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert {"msr-resnet", "linear", "msdnet", "plain", "digits"} <= words
    for title in ("search spaces:", "exit heads:", "losses:", "datasets:"):
        assert title in proc.stdout


def test_unknown_config_key(tmp_path: Path) -> None:
    proc = _run(tmp_path, "train", "--set", "train.lrr=0.1", "--set", "train.out=out")
    _assert_user_error(proc, "train.lrr", "'lr'")
    assert not (tmp_path / "out").exists()


def test_wrong_type_in_config_file(tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text("train:\n  lr: fast\n  out: out\n")
    proc = _run(tmp_path, "train", "--config", "exp.yaml")
    _assert_user_error(proc, "train.lr must be a number", "'fast'")
    assert not (tmp_path / "out").exists()


def test_missing_dataset_path(tmp_path: Path) -> None:
    proc = _run(tmp_path, "train", "--set", "data.name=cifar10", "--set", "data.root=/nonexistent",
                "--set", "train.out=out")
    _assert_user_error(proc, "cifar10", "/nonexistent")
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    proc = _run(tmp_path, "train", "--config", "nope.yaml")
    _assert_user_error(proc, "nope.yaml", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_resume_onto_another_space(trained: Path) -> None:
    before = _tree(trained / "run")
    proc = _run(trained, "train", *TINY, "--set", "space.channels=[8, 24]", "--set", "train.out=run",
                "--resume")
    _assert_user_error(proc, "another search space", "channels")
    # the checkpoint and its config are untouched, and no temporary file is left behind
    assert _tree(trained / "run") == before


def test_resume_onto_a_malicious_checkpoint(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "supernet.pt").write_bytes(pickle.dumps({"format": 1, "space": {}, "model": Evil()}))
    before = _tree(tmp_path / "run")
    proc = _run(tmp_path, "train", *TINY, "--set", "train.out=run", "--resume")
    _assert_user_error(proc, "cannot be read safely")
    assert _tree(tmp_path / "run") == before
    assert not (tmp_path / "pwned").exists()
