"""The report of a real (tiny) study: the data behind each figure, the HTML file, artifacts, the CLI."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from exitnas.cli import main
from exitnas.evaluators import POLICIES, accuracy_at
from exitnas.results import ReportResult, build_report, choose_trial, hypervolume_2d, load_front
from exitnas.results._figures import plot_curves

FIGURES = ("front", "curves", "progress", "histogram")


def _most_exits(storage: str) -> int:
    """A complete trial with the most exits, so the curves have more than one point."""
    front = load_front(storage)
    return max(front.trials, key=lambda t: (t.num_exits, -t.number)).number


@pytest.fixture(scope="module")
def report(searched: Any) -> ReportResult:
    return build_report(searched.storage, searched.study, None, searched.root / "report",
                        trial=_most_exits(searched.storage), device="cpu")


@pytest.fixture(scope="module")
def stored(searched: Any) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=searched.study, storage=searched.storage)
    return study.get_trials(states=(TrialState.COMPLETE,))


def test_front_points_are_the_stored_ones(report: ReportResult, stored: list[optuna.trial.FrozenTrial],
                                          searched: Any) -> None:
    front = report.front
    assert {(t.number, t.accuracy, t.cost) for t in front.trials} == {(t.number, *t.values) for t in stored}
    study = optuna.load_study(study_name=searched.study, storage=searched.storage)
    assert set(front.pareto) == {t.number for t in study.best_trials}
    assert [front.trial(n).cost for n in front.pareto] == sorted(front.trial(n).cost for n in front.pareto)
    by_number = {t.number: t for t in stored}
    for t in front.trials:
        assert t.user_attrs == by_number[t.number].user_attrs


def test_test_numbers(report: ReportResult, searched: Any) -> None:
    n_test = sum(report.histogram.test_counts)
    measured = {p.trial for p in report.tests}
    assert set(report.front.pareto[:12]) <= measured and report.chosen_trial in measured
    for p in report.tests:
        assert 0.0 <= p.test_accuracy <= 1.0 and 0.0 <= p.val_accuracy <= 1.0
        # measured as the search did (same data, recalibration, confidence): the stored val number again
        assert p.val_accuracy_rerun == pytest.approx(p.val_accuracy, abs=1e-12)
        assert p.exit_mmacs[0] - 1e-9 <= p.test_cost <= p.exit_mmacs[-1] + 1e-9
        assert sum(p.test_histogram) == n_test and len(p.test_histogram) == p.arch.num_exits
        assert p.on_front == (p.trial in report.front.pareto)
        assert p.arch.to_dict() == report.front.trial(p.trial).user_attrs["arch"]
    assert report.val_gap == pytest.approx(0.0, abs=1e-12)


def test_curves_stay_below_the_oracle(report: ReportResult) -> None:
    c = report.curves
    assert c.trial == report.chosen_trial and c.arch.num_exits >= 2
    assert len(c.budgeted_batch) > 1 and len(c.anytime) == c.arch.num_exits
    for p in (*c.budgeted_batch, *c.anytime, c.searched):
        assert 0.0 <= p.accuracy <= c.oracle.accuracy + 1e-12
    lo, hi = c.anytime[0].macs, c.anytime[-1].macs
    for p in c.budgeted_batch:
        assert lo - 1e-6 <= p.macs <= hi + 1e-6
    by_p = sorted(c.budgeted_batch, key=lambda p: p.param)
    assert by_p[0].macs <= by_p[-1].macs  # small p sends samples out early: cheaper
    searched_point = next(p for p in report.tests if p.trial == c.trial)
    assert c.searched.accuracy == searched_point.test_accuracy
    # The budgeted oracle is the ceiling at every cost, and ends at the oracle's accuracy, cheaper.
    assert c.budgeted_oracle[-1].accuracy == pytest.approx(c.oracle.accuracy)
    assert c.budgeted_oracle[-1].macs <= c.oracle.macs + 1e-6
    policies = dict(c.policies)
    assert set(policies) == set(POLICIES) and all(policies.values())
    # The ensemble changes what an exit answers, so the exits' own oracle does not bound it.
    bounded = (q for name, pts in policies.items() if name != "ensemble" for q in pts)
    for p in (*c.budgeted_batch, *c.anytime, c.searched, *bounded):
        assert p.accuracy <= (accuracy_at(list(c.budgeted_oracle), p.macs + 1e-6) or 0.0) + 1e-12


def test_the_curves_figure_draws_every_policy_beside_the_budgeted_oracle(report: ReportResult) -> None:
    names = [t.name for t in plot_curves(report.curves).data]
    assert "budgeted oracle (ceiling of any policy that keeps the exits' answers)" in names
    assert "thresholds, chosen per budget on val" in names and "decider policy" in names
    assert {"temperature policy", "patience policy"} <= set(names)


def test_baselines(report: ReportResult) -> None:
    c = report.curves
    space = c.stage_arch  # the largest backbone, an exit at each stage end
    assert c.static_arch.exits == (c.static_arch.block_positions()[-1],)
    assert c.static_arch.depths == space.depths and c.static_arch.widths == space.widths
    assert [b for _, b in space.exits] == [space.depths[0] - 1] * len(space.depths)
    assert set(space.heads) == {"linear"}
    assert 0.0 <= c.static.accuracy <= 1.0 and c.static.macs > 0
    for p in c.stage_budgeted_batch:
        assert 0.0 <= p.accuracy <= c.stage_oracle.accuracy + 1e-12


def test_progress_and_histogram(report: ReportResult) -> None:
    prog = report.progress
    assert prog.trial_numbers == tuple(range(20))
    assert all(b >= a for a, b in zip(prog.hypervolume, prog.hypervolume[1:]))
    pts = [(1 - report.front.trial(n).accuracy, report.front.trial(n).cost) for n in report.front.pareto]
    assert prog.hypervolume[-1] == pytest.approx(hypervolume_2d(pts, prog.reference))
    h = report.histogram
    assert h.trial == report.chosen_trial
    assert list(h.val_counts) == report.front.trial(h.trial).user_attrs["exit_histogram"]
    assert len(h.labels) == len(h.test_counts) == len(h.val_counts)


def test_html_is_self_contained(report: ReportResult) -> None:
    from plotly.offline import get_plotlyjs

    text = report.html.read_text()
    assert get_plotlyjs()[:2000] in text and text.count("plotly.js v") == 1
    assert '<script src="http' not in text
    for name in FIGURES:
        assert f'id="fig-{name}"' in text
        assert report.figures[name].is_file()
    assert f'<tr class="chosen"><td>{report.chosen_trial}' in text
    assert not list(report.html.parent.rglob("*.tmp"))
    summary = json.loads(report.summary.read_text())
    assert summary["chosen"] == report.chosen_trial and summary["pareto"] == list(report.front.pareto)
    assert summary["threads"] >= 1 and f"({summary['threads']} threads)" in text


def test_figure_files_work_offline(report: ReportResult) -> None:
    from plotly.offline import get_plotlyjs

    from exitnas.results._report import PLOTLY_JS

    folder = report.figures["front"].parent
    assert (folder / PLOTLY_JS).read_text() == get_plotlyjs()  # one copy beside the figures
    for path in report.figures.values():
        text = path.read_text()
        local, cdn = text.index(f'src="{PLOTLY_JS}"'), text.index("cdn.plot.ly")
        assert local < cdn < text.index("Plotly.newPlot")  # the CDN only where the file is missing
        assert "window.Plotly ||" in text and '<script charset="utf-8" src="https://' not in text


def test_cost_axes_are_log_scaled(report: ReportResult) -> None:
    from exitnas.results._figures import plot_curves, plot_front

    front = plot_front(report.front, report.tests, report.curves)
    assert front.layout.xaxis.type == "log" and "MMACs" in front.layout.xaxis.title.text
    assert plot_curves(report.curves).layout.xaxis.type == "log"


def test_table_has_one_row_per_distinct_result_and_a_legend(report: ReportResult) -> None:
    from dataclasses import replace

    from exitnas.results._report import TABLE_LEGEND, _table

    text = report.html.read_text()
    table = text[text.index("<table>"):text.index("</table>")]
    distinct = {(p.val_accuracy, p.val_cost, p.test_accuracy, p.test_cost) for p in report.tests}
    assert table.count("<tr") - 1 == len(distinct)
    assert html.escape(TABLE_LEGEND) in text
    p = report.tests[0]
    twins = _table((replace(p, trial=90), p, replace(p, trial=91)), chosen=p.trial, unit="MMACs")
    assert twins.count("<tr") == 2 and f"<td>{p.trial} (+2: 90, 91)</td>" in twins


def test_artifacts_are_attached_to_the_study(report: ReportResult, searched: Any) -> None:
    study = optuna.load_study(study_name=searched.study, storage=searched.storage)
    metas = {m.artifact_id: m for m in optuna.artifacts.get_all_artifact_meta(study)}
    expected = {"report.html", *(f"{n}.html" for n in FIGURES)}
    assert set(report.artifact_ids) == expected
    for filename, artifact_id in report.artifact_ids.items():
        assert metas[artifact_id].filename == filename and metas[artifact_id].mimetype == "text/html"
        written = report.html if filename == "report.html" else report.figures[filename.removesuffix(".html")]
        assert (report.html.parent / "artifacts" / artifact_id).read_bytes() == written.read_bytes()


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_report_with_the_default_rule(searched: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["report", "--storage", searched.storage, "--study", searched.study, "--out", str(out),
                 "--no-artifacts"]) == 0
    captured = capsys.readouterr()
    chosen = choose_trial(load_front(searched.storage))
    assert f"curves of trial {chosen}" in captured.out and f"wrote {out / 'report.html'}" in captured.out
    assert captured.err == ""
    assert json.loads((out / "summary.json").read_text())["rule"] is not None


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exitnas: error: "), lines
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(("args", "needle"), [
    (["--storage", "mysql://x/y"], "not a storage URL"),
    (["--storage", "sqlite:///{root}/missing.db"], "does not exist"),
    (["--storage", "{storage}", "--study", "nope"], "'nope' is not in"),
    (["--storage", "{storage}", "--trial", "999"], "trial 999 is not a complete trial"),
    (["--storage", "{storage}", "--checkpoint", "{root}/nope.pt"], "does not exist"),
])
def test_cli_bad_input(searched: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                       needle: str) -> None:
    out = tmp_path / "out"
    args = [a.format(root=tmp_path, storage=searched.storage) for a in args]
    assert main(["report", *args, "--out", str(out)]) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()  # nothing half-written
    assert not (tmp_path / "missing.db").exists()


def test_cli_empty_study_and_no_checkpoint(make_study: Callable[..., Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = make_study([], name="empty")
    assert main(["report", "--storage", url, "--study", "empty", "--out", str(tmp_path / "a")]) == 2
    _one_error_line(capsys, "no complete trial")
    make_study([(0.5, 1.0)], name="bare", url=url)  # a study no search recorded a checkpoint on
    assert main(["report", "--storage", url, "--study", "bare", "--out", str(tmp_path / "b")]) == 2
    _one_error_line(capsys, "records no supernet checkpoint", "--checkpoint")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
