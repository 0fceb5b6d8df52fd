"""Latency table: profiling, arithmetic of exit latencies, search objective, bad tables."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exitnas._errors import UserError
from exitnas.evaluators import ExitCache, ExitPolicy
from exitnas.evaluators._latency import RUNTIME, LatencyTable, profile_space, time_call
from exitnas.search_space import build_space


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    return build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                       widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=("linear", "msdnet"))


@pytest.fixture(scope="module")
def table(space, tmp_path_factory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    t = profile_space(space, 8, torch.device("cpu"), warmup=1, repeats=3, inner=1, progress=False)
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    t.save(path)
    return LatencyTable.load(path)


def test_profile_covers_every_choice_with_provenance(space, table) -> None:  # type: ignore[no-untyped-def]
    # stem per width, blocks per (stage, first/rest, c_in, c_out, ratio), heads per (type, stage, width)
    n_stem = 2
    n_first = 2 * 2 + 2 * 2 * 2  # stage 0: c_in = c_out; stage 1: every input width
    n_rest = 2 * 2 * 2
    n_heads = 2 * 2 * 2
    loop = 4 + 4  # call, early_exit, leave, decision, and the decision of each other exit policy
    assert len(table.entries) == n_stem + n_first + n_rest + n_heads + loop
    for e in table.entries.values():
        assert e["median_ms"] >= 0 and e["count"] == 3 and e["iqr_ms"] >= 0
    assert table.device == "cpu" and table.torch_version == torch.__version__ and table.date
    assert table.runtime == RUNTIME  # timed as the export runs, not as eager modules


def test_exit_latency_is_a_sum_of_table_entries(space, table) -> None:  # type: ignore[no-untyped-def]
    arch = space.largest()  # depth 2 per stage, every block an exit
    lat = table.exit_latency(space, arch)
    modules = table._module_latency(space, arch)
    assert len(lat) == arch.num_exits and all(b > a for a, b in pairwise(modules))
    e = {k: v["median_ms"] for k, v in table.entries.items()}
    h = "head|linear"
    f = table.context_factor
    assert 0.0 < f < 10.0  # fit on whole deployed subnets at profile time (3 timings each here: loose)
    call = e["call"]  # paid once per model run, not once per module
    first = (e["stem|8"] - call) + (e["block|s0|first|8>8|r1"] - call) + (e[f"{h}|s0|8"] - call)
    assert lat[0] == pytest.approx(f * first + e["leave"])  # leaving before the final exit
    second = first + (e["block|s0|rest|8>8|r1"] - call) + (e[f"{h}|s0|8"] - call)
    assert lat[1] == pytest.approx(f * second + e["leave"] + e["decision"])
    assert lat[-1] == pytest.approx(f * modules[-1] + e["early_exit"] + (arch.num_exits - 1) * e["decision"])
    for policy in ("temperature", "patience", "decider"):  # each policy pays its own decisions
        own = table.exit_latency(space, arch, policy)
        assert own[-1] == pytest.approx(lat[-1] + (arch.num_exits - 1) * (e[f"decision|{policy}"] - e["decision"]))


def test_expected_latency_uses_the_same_policy_arithmetic(space, table) -> None:  # type: ignore[no-untyped-def]
    arch = space.largest()
    lat = np.array(table.exit_latency(space, arch))
    rng = np.random.default_rng(0)
    cache = ExitCache(arch, rng.random((arch.num_exits, 50)).astype(np.float32),
                      rng.random((arch.num_exits, 50)) < 0.5, np.arange(1, arch.num_exits + 1, dtype=float))
    t = np.full(arch.num_exits - 1, 0.5)
    exits = ExitPolicy(cache).exits(t)
    got = ExitPolicy(cache, lat).evaluate(t).expected_cost[0]
    assert got == pytest.approx(lat[exits].mean())


def test_table_of_another_space_or_malformed_is_refused(space, table, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = build_space("msr-resnet", in_channels=1, num_classes=10, channels=(4, 8), depths=(1, 2))
    with pytest.raises(UserError):
        table.exit_latency(other, other.largest())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 99}))
    with pytest.raises(UserError):
        LatencyTable.load(bad)
    # A format-1 table (eager timings) would mispredict the deployed runtime: refused, saying why.
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**table.to_dict(), "format": 1}))
    with pytest.raises(UserError, match="format 1.*profile again"):
        LatencyTable.load(old)
    bad.write_text("not json")
    with pytest.raises(UserError, match="not an exitnas latency table"):
        LatencyTable.load(bad)
    with pytest.raises(UserError):
        LatencyTable.load(tmp_path / "missing.json")


def test_profile_measures_its_own_noise(table) -> None:  # type: ignore[no-untyped-def]
    assert set(table.noise) == {"median_relative_iqr", "repeat_change"}
    assert all(v >= 0 for v in table.noise.values())


def test_noisy_timings_are_warned_about() -> None:
    import warnings

    from exitnas._errors import ExitnasWarning
    from exitnas.evaluators._latency import NOISE_WARN, measure_noise, warn_if_noisy

    entries = {"a": {"median_ms": 1.0, "iqr_ms": 0.1}, "b": {"median_ms": 2.0, "iqr_ms": 1.0},
               "c": {"median_ms": 4.0, "iqr_ms": 0.4}}
    noise = measure_noise(entries, first=1.0, again=1.3)
    assert noise == pytest.approx({"median_relative_iqr": 0.1, "repeat_change": 0.3})
    with pytest.warns(ExitnasWarning, match=r"noisy \(spread 10% of the median; one op timed again 30% off\)"):
        warn_if_noisy(noise)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_noisy({"median_relative_iqr": NOISE_WARN / 2, "repeat_change": NOISE_WARN / 2})


def test_time_call_counts_and_orders() -> None:
    x = torch.randn(64, 64)
    small = time_call(lambda: x @ x, torch.device("cpu"), warmup=1, repeats=5, inner=2)
    assert small["count"] == 10 and small["median_ms"] > 0


TINY = ["--set", "data.name=digits", "--set", "space.channels=[8,16]", "--set", "space.depths=[1,2]",
        "--set", "space.widths=[0.5,1.0]", "--set", "space.ratios=[0.0,1.0]", "--set", "train.epochs=0.5",
        "--set", "train.batch_size=128", "--set", "train.device=cpu", "--set", "train.progress=false",
        "--set", "search.progress=false", "--set", "search.recal_images=200"]


@pytest.mark.slow
def test_search_with_latency_objective(tmp_path: Path) -> None:
    import optuna

    from exitnas.cli import main

    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", f"train.out={out}"]) == 0
    lut = tmp_path / "lut.json"
    assert main(["profile", *TINY, "--out", str(lut), "--repeats", "3"]) == 0
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ckpt = str(out / "supernet.pt")
    assert main(["search", "--checkpoint", ckpt, "--storage", url, "--study", "lat", "--trials", "4",
                 "--objective", "latency", "--latency-table", str(lut), "--set", "search.progress=false"]) == 0
    study = optuna.load_study(study_name="lat", storage=url)
    assert study.metric_names == ["val_accuracy", "expected_ms"]
    table = LatencyTable.load(lut)
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert len(t.user_attrs["exit_ms"]) == len(t.user_attrs["arch"]["exits"])
        # Σ P(exit k)·ms_k: within the exits' range up to rounding (shares sum to 1 ± an ulp).
        assert min(t.user_attrs["exit_ms"]) - 1e-9 <= t.values[1] <= max(t.user_attrs["exit_ms"]) + 1e-9
        assert t.values[1] != pytest.approx(t.user_attrs["expected_MMACs"])
    assert table.device == "cpu"
    _report_and_export_in_ms(url, tmp_path, study)
    # The same study searched for MACs now has other objectives: refused, untouched.
    assert main(["search", "--checkpoint", ckpt, "--storage", url, "--study", "lat", "--trials", "6",
                 "--set", "search.progress=false"]) == 2
    assert len(optuna.load_study(study_name="lat", storage=url).trials) == 4
    # Latency without a table is a clear error.
    assert main(["search", "--checkpoint", ckpt, "--storage", url, "--study", "lat2", "--trials", "2",
                 "--objective", "latency", "--set", "search.progress=false"]) == 2
    assert "lat2" not in optuna.get_all_study_names(storage=url)


def _report_and_export_in_ms(url: str, tmp_path: Path, study: Any) -> None:
    """After a latency search every later step speaks ms: front, table, figure, export."""
    from exitnas.results import build_report, export_trial, load_export, retrain_export

    r = build_report(url, "lat", out_dir=tmp_path / "report", upload=False)
    assert r.front.cost_unit == "ms"
    stored = {t.number: t for t in study.get_trials()}
    for p in r.tests:
        t = stored[p.trial]
        assert p.val_cost == t.values[1]  # the stored ms, not MMACs
        assert min(t.user_attrs["exit_ms"]) - 1e-9 <= p.test_cost <= max(t.user_attrs["exit_ms"]) + 1e-9
    html = r.html.read_text()
    assert "<th>val ms</th>" in html and "<th>val MMACs</th>" not in html
    assert "expected ms" in r.figures["front"].read_text()  # the front's cost axis title
    e = export_trial(url, "lat", r.chosen_trial, tmp_path / "export", onnx=False)
    _, meta = load_export(e.directory)
    t = stored[r.chosen_trial]
    assert meta["measured"] == {"accuracy": t.values[0], "cost": t.values[1], "unit": "ms", "split": "val"}
    assert meta["exit_ms"] == t.user_attrs["exit_ms"]
    assert meta["metrics"]["val"]["expected_ms"] == pytest.approx(t.values[1], rel=1e-12)
    assert meta["provenance"]["values"] == {"val_accuracy": t.values[0], "expected_ms": t.values[1]}
    # Retraining refits its thresholds to the export's budget in ms, not in MMACs.
    r2 = retrain_export(e.arch_json, tmp_path / "retrained", epochs=0.3, progress=False)
    _, meta2 = load_export(r2.export.directory)
    budget = meta["metrics"]["val"]["expected_ms"]
    assert meta2["provenance"]["retrain"]["ms_budget"] == budget
    assert "mmacs_budget" not in meta2["provenance"]["retrain"]
    assert meta2["metrics"]["val"]["expected_ms"] <= budget * (1 + 1e-9)
    assert meta2["measured"]["unit"] == "ms"
    assert meta2["measured"]["cost"] == meta2["metrics"]["val"]["expected_ms"]
