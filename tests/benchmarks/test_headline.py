"""``benchmarks/headline.py all --smoke``: every step end to end on a few hundred CIFAR-10 JPEGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exitnas._errors import UserError
from exitnas.data._files import find_cifar10_jpeg

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "headline.py"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def _tar() -> Path | None:
    try:
        tar = find_cifar10_jpeg(None)
    except UserError:
        return None
    return tar if tar.is_file() else None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.skipif(_tar() is None, reason="needs shared/data/cifar10-jpeg.tar.xz (see benchmarks/README.md)")
def test_smoke_run_writes_every_step_summary_and_leaves_results_md_alone(tmp_path: Path) -> None:
    out = tmp_path / "headline"
    before = RESULTS.read_bytes() if RESULTS.is_file() else None
    proc = _run("all", "--smoke", "--out", str(out), "--device", "cpu", "--data", str(_tar()),
                "--trials", "8", "--kendall-archs", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SMOKE RUN" in proc.stdout

    steps = {s: json.loads((out / f"{s}.json").read_text())
             for s in ("train", "resnet18", "search", "baselines", "retrain", "kendall")}
    for name, d in steps.items():
        assert d["status"] == "done", name
        assert d["wall_s"] > 0 and d["invocations"] and d["invocations"][-1]["device"], name
    assert 0 < steps["train"]["epochs"] <= 1.0 and steps["train"]["steps_done"] == steps["train"]["total_steps"]
    assert 500 < steps["resnet18"]["mmacs"] < 600  # ResNet-18 on 32×32: about 555 MMACs
    assert steps["search"]["trials"] == 8 and steps["baselines"]["trials"] == 8
    hand = steps["baselines"]["hand_placed"]
    assert hand["stage_exits"]["budgeted_batch_test"] and hand["static_largest"]["mmacs"] > 0
    assert 0.0 <= steps["retrain"]["retrained"]["test_accuracy"] <= 1.0
    assert steps["retrain"]["curves"]["budgeted_batch_test"]
    assert len(steps["kendall"]["rows"]) == 2 and set(steps["kendall"]["tau"]) == {
        "search_val_vs_retrained_test", "inherited_test_vs_retrained_test", "final_exit_inherited_vs_retrained"}

    info = json.loads((out / "headline.json").read_text())
    assert info["smoke"] and "not a measurement" in info["note"]
    assert info["front_test"] and all(0.0 <= p["test_accuracy"] <= 1.0 and p["test_mmacs"] > 0
                                      for p in info["front_test"])
    assert [t["verdict"] in ("PASS", "MISS") for t in info["targets"]] == [True] * 4
    assert set(info["hypervolume"]["test"]) >= {"searched front (nsga2)", "random search front",
                                                "stage-end exits, budgeted batch"}
    assert info["oracle_curve_test"] and info["chosen"]["budgeted_batch_test"]
    assert (out / "report" / "report.html").is_file() and (out / "headline.html").is_file()
    assert "NOT A MEASUREMENT" in (out / "headline.md").read_text()
    assert (RESULTS.read_bytes() if RESULTS.is_file() else None) == before

    # Done steps are skipped; other budgets on the same folder are refused (exit status 2).
    again = _run("search", "--smoke", "--out", str(out), "--device", "cpu")
    assert again.returncode == 0 and "done earlier" in again.stdout
    other = _run("search", "--smoke", "--out", str(out), "--device", "cpu", "--trials", "9")
    assert other.returncode == 2 and "trials=8" in other.stderr

