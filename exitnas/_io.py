"""File helpers: atomic writes (a reader sees the old file or the new one, never half of one), JSON reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from exitnas._errors import UserError

__all__ = ["atomic_write", "atomic_write_bytes", "read_json"]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Let ``write(tmp_path)`` produce the file beside ``path``, fsync it, then rename it into place.

    Taking a path (not a file object) lets libraries that only write to paths (safetensors,
    TorchScript, ONNX) write atomically too. On any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
