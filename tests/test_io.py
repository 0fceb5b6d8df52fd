"""File helpers: output paths checked before work, atomic writes, no temporary file outliving its writer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exitnas._errors import UserError
from exitnas._io import (
    STALE_AFTER_S,
    atomic_write,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
    remove_stale_temp_files,
)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_output_dir_checks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert check_output_dir(tmp_path, "--out") == tmp_path
    with pytest.raises(UserError, match=r"--out .*file is a file; a folder is needed"):
        check_output_dir(tmp_path / "file", "--out")
    with pytest.raises(UserError, match=r"train.out .*file/sub: .*file is a file"):
        check_output_dir(tmp_path / "file" / "sub", "train.out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created


def test_output_file_checks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    check_output_file(tmp_path / "new" / "lut.json", "--out")
    check_output_file(tmp_path / "file", "--out")  # an existing file may be replaced
    with pytest.raises(UserError, match=r"--out .* is a folder; a file name is needed"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(UserError, match=r"is a file, so no folder"):
        check_output_file(tmp_path / "file" / "lut.json", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="is not writable"):
            check_output_dir(locked / "out", "--out")
        with pytest.raises(UserError, match="is not writable"):
            check_output_file(locked / "lut.json", "--out")
    finally:
        locked.chmod(0o700)


def test_killed_write_leaves_a_temp_file_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    code = ("import os, sys; from pathlib import Path; from exitnas._io import atomic_write\n"
            "def write(p):\n    Path(p).write_bytes(b'half'); os.kill(os.getpid(), 9)\n"
            "atomic_write(sys.argv[1], write)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert len(_temps(tmp_path)) == 1 and not target.exists()  # what a killed writer leaves
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole" and _temps(tmp_path) == []


def test_a_live_writers_temp_file_is_kept(tmp_path: Path) -> None:
    import socket

    host = socket.gethostname().split(".")[0]
    live = tmp_path / f".a.bin.{host}-{os.getpid()}.x1.tmp"  # this very process: alive
    other_host = tmp_path / ".a.bin.elsewhere-1.x2.tmp"  # another machine's writer, recent
    old_style = tmp_path / ".a.bin.abc123.tmp"  # before PIDs were recorded, recent
    stale = tmp_path / ".a.bin.abc456.tmp"
    for p in (live, other_host, old_style, stale):
        p.write_bytes(b"x")
    past = time.time() - STALE_AFTER_S - 60
    os.utime(stale, (past, past))
    assert remove_stale_temp_files(tmp_path / "a.bin") == [stale]
    assert _temps(tmp_path) == sorted(p.name for p in (live, other_host, old_style))


def test_atomic_write_failure_removes_its_temp_file(tmp_path: Path) -> None:
    def fail(p: str) -> None:
        Path(p).write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f", fail)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_a_name_with_glob_characters(tmp_path: Path) -> None:
    stale = tmp_path / ".a[1].json.abc.tmp"
    other = tmp_path / ".a1.json.abc.tmp"  # what an unescaped [1] would match
    for p in (stale, other):
        p.write_bytes(b"x")
        os.utime(p, (0, 0))
    assert remove_stale_temp_files(tmp_path / "a[1].json") == [stale]
    assert other.exists()
