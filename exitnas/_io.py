"""File helpers: atomic writes (a reader sees the old file or the new one, never half of one), JSON reads."""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from exitnas._errors import UserError

__all__ = ["atomic_write", "atomic_write_bytes", "check_output_dir", "check_output_file", "read_json",
           "remove_stale_temp_files"]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Let ``write(tmp_path)`` produce the file beside ``path``, fsync it, then rename it into place.

    Taking a path (not a file object) lets libraries that only write to paths (safetensors,
    TorchScript, ONNX) write atomically too. On any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{_owner()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; give the mode open() would
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: A temporary file of another writer that is older than this is stale whoever wrote it.
STALE_AFTER_S = 24 * 3600


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _owner() -> str:
    """``host-pid`` of this process: a later run on the same host can tell a dead writer's file."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left beside it; return them.

    A temporary file is named ``.NAME.HOST-PID.XXXX.tmp``: it is stale when its writer ran on this
    host and is gone, or when it is older than :data:`STALE_AFTER_S` (a writer on another host,
    or a name from before PIDs were recorded). A live writer's file is left alone.
    """
    path = Path(path)
    removed = []
    pattern = f"{glob.escape(_temp_prefix(path))}*.tmp"  # a name with [ or * is matched as it is
    for tmp in path.parent.glob(pattern) if path.parent.is_dir() else ():
        owner = tmp.name[len(_temp_prefix(path)):].split(".")[0]
        host, _, pid = owner.rpartition("-")
        try:
            dead = host == _owner().rpartition("-")[0] and pid.isdigit() and not _alive(int(pid))
            if dead or time.time() - tmp.stat().st_mtime > STALE_AFTER_S:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove: either way nothing to do
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def check_output_dir(path: str | Path, what: str) -> Path:
    """Raise a :class:`UserError` unless ``path`` is, or can be created as, a writable folder.

    Nothing is created: this runs before any work, so that a bad path costs nothing.
    ``what`` names the setting in the message (e.g. ``--out`` or ``train.out``).
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file; a folder is needed there")
    _check_writable_ancestor(p, what)
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """Raise a :class:`UserError` unless ``path`` can be written as a file (nothing is created)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; a file name is needed there")
    _check_writable_ancestor(p.parent, what, of=p)
    return p


def _check_writable_ancestor(p: Path, what: str, of: Path | None = None) -> None:
    """The nearest existing ancestor of ``p`` (``p`` itself if it exists) is a writable folder."""
    named = of or p
    node = p
    while not node.exists() and node != node.parent:
        node = node.parent
    if not node.is_dir():
        raise UserError(f"{what} {named}: {node} is a file, so no folder can be made under it")
    if not os.access(node, os.W_OK | os.X_OK):
        raise UserError(f"{what} {named}: {node} is not writable")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda p: Path(p).write_bytes(data))


def read_json(path: Path, missing: str, invalid: str) -> Any:
    """The JSON value in the file ``path``; a :class:`UserError` if it is missing or not JSON.

    ``missing`` and ``invalid`` are the errors' messages, formatted with ``path`` and (for
    ``invalid``) ``error``, the parser's complaint.
    """
    if not path.is_file():
        raise UserError(missing.format(path=path))
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(invalid.format(path=path, error=e)) from None
