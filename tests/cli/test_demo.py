"""`exitnas demo` end to end (reduced: --quick), as the README's first command runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_prints_what_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "exitnas", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = [Path(line.strip()) for line in proc.stdout.split("wrote:")[1].splitlines() if line.startswith("  ")]
    names = {p.name for p in listed}
    assert {"supernet.pt", "config.yaml", "study.db", "report.html", "arch.json", "weights.safetensors",
            "model.torchscript.pt", "model.onnx"} <= names
    for p in listed:
        assert p.is_file() and p.stat().st_size > 0, p
    # every file the demo wrote is listed (SQLite's side files aside), the count with them
    on_disk = {p for p in out.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    assert set(listed) == on_disk and f"; {len(listed)} files (" in proc.stdout
    assert {"summary.json", "plotly.min.js", "front.html"} <= names
    assert "--artifact-dir" in proc.stdout
    meta = json.loads((out / "export" / "arch.json").read_text())
    assert 0.0 < meta["metrics"]["test"]["accuracy"] <= 1.0
    assert "optuna-dashboard sqlite:///" in proc.stdout
