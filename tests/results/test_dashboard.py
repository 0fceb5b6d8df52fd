"""The real optuna-dashboard serves a study written by exitnas (over its HTTP API, on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_dashboard_serves_study_metric_names_arch_and_report(searched) -> None:  # type: ignore[no-untyped-def]
    from exitnas.results import build_report

    report = build_report(searched.storage, searched.study, None, searched.root / "dashboard-report", device="cpu",
                          max_points=2)
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    port = _free_port()
    proc = subprocess.Popen([exe, searched.storage, "--host", "127.0.0.1", "--port", str(port),
                             "--artifact-dir", str(report.artifact_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        studies = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited: {proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            try:
                studies = _get(f"{base}/studies")
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        listed = studies["study_summaries"] if "study_summaries" in studies else studies["studies"]
        names = {s["study_name"]: s["study_id"] for s in listed}
        assert searched.study in names
        detail = _get(f"{base}/studies/{names[searched.study]}?after=0")
        assert detail["objective_names"] == ["val_accuracy", "expected_MMACs"]
        trials = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert trials
        attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
        assert "arch" in attrs
        arch = json.loads(attrs["arch"]) if isinstance(attrs["arch"], str) else attrs["arch"]
        assert set(arch) >= {"depths", "widths", "ratios", "exits", "heads"}
        # the report's artifacts, served with the --artifact-dir that `exitnas report` prints
        artifact = f"http://127.0.0.1:{port}/artifacts/{names[searched.study]}/{report.artifact_ids['report.html']}"
        with urllib.request.urlopen(artifact, timeout=10) as r:
            assert r.read() == report.html.read_bytes()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
