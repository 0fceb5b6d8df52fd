"""One self-contained HTML report of a study, its figures, and their Optuna artifacts."""

from __future__ import annotations

import datetime
import html
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from exitnas._errors import UserError
from exitnas._io import atomic_write_bytes
from exitnas.experiment import Experiment
from exitnas.results import _evaluate as ev
from exitnas.results._figures import (
    plot_curves,
    plot_front,
    plot_histogram,
    plot_progress,
)
from exitnas.results._front import FrontInfo, load_front, open_study
from exitnas.results._hypervolume import ProgressInfo, get_progress_info

__all__ = ["PLOTLY_JS", "REPORT_NAME", "VAL_GAP_WARN", "ReportResult", "build_report", "default_out_dir"]

REPORT_NAME = "report.html"
#: plotly.js beside the figure files (``figures/``), which load it from there.
PLOTLY_JS = "plotly.min.js"
#: A val accuracy measured again that differs more than this from the stored one is flagged:
#: beyond GPU nondeterminism, it means another supernet or other data than the search's.
VAL_GAP_WARN = 0.005


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote and the numbers behind it.

    Attributes:
        html: The report file.
        figures: Figure name → its own HTML file (plotly.js from ``figures/plotly.min.js``, else the CDN).
        summary: JSON file with the front table and the chosen trial's curves.
        artifact_ids: Optuna artifact id of each uploaded file, by file name.
        chosen_trial: Trial whose curves and histogram are drawn.
        front, tests, curves, progress, histogram: The info objects behind the figures.
    """

    html: Path
    figures: dict[str, Path]
    summary: Path
    artifact_ids: dict[str, str]
    chosen_trial: int
    front: FrontInfo
    tests: tuple[ev.TestPoint, ...]
    curves: ev.CurvesInfo
    progress: ProgressInfo
    histogram: ev.HistogramInfo

    @property
    def artifact_dir(self) -> Path:
        """Where the uploaded artifacts are stored: optuna-dashboard serves them given
        ``--artifact-dir`` this folder (without it, it answers HTTP 400)."""
        return self.html.parent / "artifacts"

    @property
    def val_gap(self) -> float:
        """Largest |val accuracy measured here − stored|: 0 when the report measures as the search
        did; more means other weights, data or numerics than the search's."""
        return max(abs(p.val_accuracy_rerun - p.val_accuracy) for p in self.tests)


def default_out_dir(storage_url: str, study_name: str) -> Path:
    """``report-<study>`` beside a SQLite or journal file, else in the current folder."""
    from exitnas._storage import storage_path

    path = storage_path(storage_url)
    return (path.parent if path is not None else Path()) / f"report-{study_name}"


def build_report(storage_url: str, study_name: str | None, checkpoint: str | Path | None = None,
                 out_dir: str | Path | None = None, trial: int | None = None, *, device: str | None = None,
                 max_points: int = ev.MAX_POINTS, upload: bool = True) -> ReportResult:
    """Measure a study's chosen trials on test and write one HTML report with its figures.

    Everything the user can get wrong (URL, study, trial, checkpoint) is checked before
    anything is written. The front is read from the database; test numbers use the
    stored thresholds; the chosen trial (``trial``, else :data:`~exitnas.results.CHOICE_RULE`)
    gets the protocol curves and the exit histogram.

    Args:
        storage_url: The study's storage URL.
        study_name: The study (None: the storage's only study).
        checkpoint: The supernet the study searched (None: the one the study recorded).
        out_dir: Output folder (None: ``report-<study>`` beside the database file).
        trial: The trial to draw curves for (None: the default rule).
        device: Where subnets run (default: the experiment's ``train.device``).
        max_points: Pareto trials measured on test, spread along the cost axis.
        upload: Attach the report and figures to the study as Optuna artifacts
            (``<out_dir>/artifacts``). Each call uploads new ones; earlier ones stay.

    Raises:
        UserError: Bad URL, unknown study, no complete trial, a trial not in the study,
            a missing or foreign checkpoint.
    """
    from exitnas._io import check_output_dir

    front = load_front(storage_url, study_name)
    out = check_output_dir(out_dir if out_dir is not None else default_out_dir(storage_url, front.study_name),
                           "--out")
    chosen = ev.choose_trial(front, trial)
    exp = Experiment.from_study(front.study_user_attrs, front.study_name, checkpoint, device=device)
    evaluator, ckpt = exp.evaluator, exp.checkpoint

    tests = tuple(ev.get_test_info(front, evaluator, ev.spread_points(front, max_points, include=(chosen,))))
    curves = ev.get_curves_info(front, evaluator, chosen)
    progress = get_progress_info(front)
    histogram = ev.get_histogram_info(front, next(p for p in tests if p.trial == chosen))
    figures = {
        "front": plot_front(front, tests, curves),
        "curves": plot_curves(curves),
        "histogram": plot_histogram(histogram),
        "progress": plot_progress(progress, front.cost_unit),
    }

    gap = max(abs(p.val_accuracy_rerun - p.val_accuracy) for p in tests)
    meta = {"checkpoint": str(ckpt), "chosen": chosen, "rule": None if trial is not None else ev.CHOICE_RULE,
            "val_gap": gap, "max_points": max_points, "threads": torch.get_num_threads()}
    report, summary = out / REPORT_NAME, out / "summary.json"
    fig_paths = _write_figures(out, figures)
    atomic_write_bytes(report, render_html(front, tests, figures, meta).encode())
    atomic_write_bytes(summary, json.dumps(_summary(front, tests, curves, progress, meta), indent=1).encode())

    ids: dict[str, str] = {}
    if upload:
        ids = _upload(storage_url, front.study_name, [report, *fig_paths.values()], out / "artifacts")
    return ReportResult(report, fig_paths, summary, ids, chosen, front, tests, curves, progress, histogram)


def _write_figures(out: Path, figures: dict[str, go.Figure]) -> dict[str, Path]:
    """Each figure's own page under ``out/figures``, with one plotly.js beside them."""
    paths = {name: out / "figures" / f"{name}.html" for name in figures}
    atomic_write_bytes(out / "figures" / PLOTLY_JS, get_plotlyjs().encode())
    for name, fig in figures.items():
        atomic_write_bytes(paths[name], figure_html(fig).encode())
    return paths


# -- HTML ----------------------------------------------------------------------------------------
def figure_html(fig: go.Figure) -> str:
    """One figure's page, offline: plotly.js from :data:`PLOTLY_JS` beside it (one copy per
    report, not 4.8 MB in each figure), or from plotly's CDN where that file is missing (the
    copy optuna-dashboard serves as an artifact)."""
    page = pio.to_html(fig, include_plotlyjs="directory", full_html=True)
    local = f'<script charset="utf-8" src="{PLOTLY_JS}"></script>'
    cdn = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    fallback = f"<script>window.Plotly || document.write('<script src=\"{cdn}\"><\\/script>')</script>"
    if local not in page:  # pragma: no cover - a plotly release that writes the tag otherwise
        raise RuntimeError(f"plotly wrote no {local} tag")
    return page.replace(local, local + fallback, 1)


def render_html(front: FrontInfo, tests: tuple[ev.TestPoint, ...], figures: dict[str, go.Figure],
                meta: dict[str, Any]) -> str:
    """The report page: plotly.js inline once in the head, every figure after it, the table."""
    import plotly

    import exitnas

    e = html.escape
    versions = f"exitnas {exitnas.__version__}, torch {torch.__version__} ({meta['threads']} threads), " \
               f"optuna {optuna.__version__}, plotly {plotly.__version__}"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_complete = len(front.trials)
    chosen = meta["chosen"]
    why = f"the default rule: {e(meta['rule'])}" if meta["rule"] else "chosen with --trial"
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
        f"<title>exitnas report: {e(front.study_name)}</title>",
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "tr.chosen{background:#fff3c4}.note{color:#555}</style>",
        "</head><body>",
        f"<h1>exitnas report: study {e(front.study_name)}</h1>",
        f"<p class=\"note\">storage {e(front.storage_url)} · supernet {e(meta['checkpoint'])} · "
        f"{n_complete} complete of {front.num_trials} trials · {len(front.pareto)} on the Pareto front"
        f"{' (feasible only)' if front.has_constraints else ''} · {e(when)} · {e(versions)}</p>",
        "<p class=\"note\">Search and thresholds saw only the validation split; test numbers apply the "
        "stored thresholds unchanged (budgeted-batch curves fit theirs on val).</p>",
        f"<p>Curves and histogram: trial {chosen}, {why}.</p>",
        *([f"<p><b>Warning:</b> validation accuracy measured again differs from the stored one by up to "
           f"{meta['val_gap']:.4f}: is this the supernet (and data) the study searched?</p>"]
          if meta["val_gap"] > VAL_GAP_WARN else []),
        f"<h2>Pareto front: {len(tests)} trials measured on test</h2>",
        f"<p class=\"note\">Up to {meta['max_points']} of the {len(front.pareto)} Pareto trials, spread along "
        f"{front.cost_unit}, "
        "and the chosen trial; trials with the same numbers share a row. This page carries plotly.js "
        "inline and works offline; the figure files beside it load the plotly.min.js next to them.</p>",
        _table(tests, chosen, front.cost_unit),
    ]
    titles = {"front": "Front and baselines", "curves": f"Trial {chosen}: protocols on test",
              "histogram": f"Trial {chosen}: exit histogram", "progress": "Search progress"}
    for name, fig in figures.items():
        parts.append(f"<h2>{e(titles.get(name, name))}</h2>")
        parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{name}",
                                 default_height="480px"))
    parts.append("</body></html>")
    return "\n".join(parts)


#: What the table's last two columns hold (shown under it).
TABLE_LEGEND = ("exits: how many, then each exit's (stage, block), counted from 0, in network order; "
                "test exit histogram: test samples leaving at each of those exits, first to last.")


def _table(tests: tuple[ev.TestPoint, ...], chosen: int, unit: str) -> str:
    """One row per distinct result: trials whose val and test numbers are all equal share one
    (the chosen trial first), as ``exitnas search`` prints its front."""
    groups: dict[tuple[float, float, float, float], list[ev.TestPoint]] = {}
    for p in sorted(tests, key=lambda p: p.trial != chosen):  # the chosen trial leads its group
        groups.setdefault((p.val_accuracy, p.val_cost, p.test_accuracy, p.test_cost), []).append(p)
    head = ("trial", "val acc", "test acc", f"val {unit}", f"test {unit}", "exits", "exit policy",
            "test exit histogram")
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for group in sorted(groups.values(), key=lambda g: (g[0].val_cost, g[0].trial)):
        p = group[0]
        cls = " class=\"chosen\"" if p.trial == chosen else ""
        mark = "" if p.on_front else " (off front)"
        same = f" (+{len(group) - 1}: {', '.join(str(q.trial) for q in group[1:])})" if len(group) > 1 else ""
        exits = " ".join(f"({s},{b})" for s, b in p.arch.exits)
        cells = (f"{p.trial}{mark}{same}", f"{p.val_accuracy:.4f}", f"{p.test_accuracy:.4f}", f"{p.val_cost:.3f}",
                 f"{p.test_cost:.3f}", f"{p.arch.num_exits}: {exits}", p.policy, " ".join(map(str, p.test_histogram)))
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    rows.append(f"<p class=\"note\">{html.escape(TABLE_LEGEND)}</p>")
    return "\n".join(rows)


def _summary(front: FrontInfo, tests: tuple[ev.TestPoint, ...], curves: ev.CurvesInfo, progress: ProgressInfo,
             meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "study": front.study_name, "storage": front.storage_url, **meta,
        "pareto": list(front.pareto), "points": [p.to_dict() for p in tests],
        "curves": {
            "arch": curves.arch.to_dict(),
            "budgeted_batch_test": [asdict(p) for p in curves.budgeted_batch],
            "anytime_test": [asdict(p) for p in curves.anytime],
            "oracle_test": asdict(curves.oracle), "searched_test": asdict(curves.searched),
            "static_largest_test": asdict(curves.static), "static_largest_arch": curves.static_arch.to_dict(),
            "stage_exits_budgeted_batch_test": [asdict(p) for p in curves.stage_budgeted_batch],
            "stage_exits_arch": curves.stage_arch.to_dict(),
            "budgeted_oracle_test": [asdict(p) for p in curves.budgeted_oracle],
            "policies_test": {name: [asdict(p) for p in points] for name, points in curves.policies},
        },
        "hypervolume": {"trials": list(progress.trial_numbers), "values": list(progress.hypervolume),
                        "reference": list(progress.reference)},
    }


# -- artifacts -----------------------------------------------------------------------------------
def _upload(storage_url: str, study_name: str, files: list[Path], base: Path) -> dict[str, str]:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    base.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(base_path=str(base))
    study = open_study(storage_url, study_name)
    ids = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for f in files:
            try:
                ids[f.name] = upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=study)
            except Exception as err:  # noqa: BLE001 - read-only database, full disk: the files are written
                raise UserError(f"report written to {f.parent}, but uploading {f.name} as an artifact "
                                f"failed ({' '.join(str(err).split())[:160]}); rerun with --no-artifacts") from None
    return ids
