"""What every benchmark records beside its figures, and how it writes its RESULTS.md section."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    """Short hash of HEAD, marked when the working tree has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        return (out or "none") + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "none"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def environment(device: str = "cpu") -> dict[str, str]:
    """Device, versions, commit and date, for the line under each section's heading."""
    import numpy

    dev = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else cpu_model()
    return {
        "device": f"{dev} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})",
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": loadavg(),
    }


def environment_line(env: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in env.items())


def write_section(heading: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section under ``heading``; other sections stay as they are."""
    old = path.read_text() if path.is_file() else "# exitnas benchmark results\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    body = heading + "\n\n" + text.strip("\n") + "\n"
    if start is None:
        new = old.rstrip("\n") + "\n\n" + body
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = "\n".join(lines[:start]).rstrip("\n"), "\n".join(lines[end:])
        new = before + "\n\n" + body + ("\n" + after if after else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new.rstrip("\n") + "\n")
    os.replace(tmp, path)

