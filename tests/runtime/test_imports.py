"""The runtime package stands below the evaluators: a deployment imports no search, training or results code."""

from __future__ import annotations

import subprocess
import sys

BASE = {"_config", "_errors", "_io", "_registry", "_confidence", "_samplers", "_storage"}


def test_runtime_imports_only_base_data_and_search_space() -> None:
    code = "import sys, exitnas.runtime; print(*sorted(m for m in sys.modules if m.startswith('exitnas.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    parts = {m.split(".")[1] for m in out.split()}
    assert "runtime" in parts
    assert parts <= BASE | {"runtime", "search_space", "data"}, parts
