"""``benchmarks/bench_policies.py`` end to end on a tiny digits supernet: every policy's curve,
the targets, the deployed latency and the page, written to its run folder and not to RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_measures_every_policy_and_writes_its_page(tmp_path: Path) -> None:
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_policies.py"), "--data", "digits",
                           "--epochs", "1", "--archs", "1", "--trials", "4", "--seeds", "1", "--no-write", "--out",
                           str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "policies.json").read_text())
    rows = saved["rows"]
    assert len(rows) == 3  # the two fixed archs and one random
    for row in rows.values():
        assert set(row["accuracy"]) == {"threshold", "temperature", "patience", "decider", "ensemble", "oracle",
                                        "oracle of the ensemble's answers", "decider fit on test (in-sample ceiling)"}
        assert len(row["budgets_mmacs"]) == 21
    assert {n for r in rows.values() if "latency" in r for n in r["latency"]} == {"threshold", "temperature",
                                                                                  "patience", "decider", "ensemble"}
    # Every exit rule searched, its front measured on test under its own policy.
    assert set(saved["rules"]) == {"threshold", "share", "ensemble", "policy"}
    assert all(len(r["runs"]) == 1 and r["runs"][0]["test"] for r in saved["rules"].values())
    for line in ("gap closed ≥ 50%", "in-sample ceiling of its features", "decision cost ≤ 1%",
                 "batch-1 latency with the policy within 5%", "Per budget (the best policy", "Exit rule: mean test HV"):
        assert line in proc.stdout
    assert (out / "policies.html").stat().st_size > 100_000  # plotly.js inlined: opens offline
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == results
