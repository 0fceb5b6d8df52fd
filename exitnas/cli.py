"""``exitnas`` command line: demo | list | train | evaluate.

Every user-fixable problem is a :class:`~exitnas.UserError`: one line on stderr
(``exitnas: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from exitnas._errors import ExitnasWarning, UserError
from exitnas._io import check_output_dir, check_output_file

if TYPE_CHECKING:
    from exitnas._config import ExperimentConfig
    from exitnas.experiment import Experiment

__all__ = ["main"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML file (defaults apply to what it leaves out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.epochs=5 (repeatable)")


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads torch uses (default: train.threads, else OMP_NUM_THREADS, else the "
                        "physical cores this process may use); results can differ in the last digits between counts")


def _apply_threads(args: argparse.Namespace, cfg: ExperimentConfig | None = None) -> None:
    """Once per command, before any work: ``--threads``, else the config's ``train.threads``, else the default."""
    from exitnas._config import TrainConfig, check_field
    from exitnas._threads import set_threads

    check_field(TrainConfig, "threads", args.threads, key="--threads")
    set_threads(args.threads if args.threads is not None else cfg.train.threads if cfg is not None else None)


def _cmd_list(args: argparse.Namespace) -> int:
    from exitnas._registries import all_registries

    for title, reg in all_registries():
        print(f"{title}:")
        for name, doc in reg.describe():
            print(f"  {name:<16} {doc}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from exitnas._check import load_checked_config
    from exitnas.training import train_supernet

    cfg = load_checked_config(args.config, args.overrides)
    if args.print_config:
        from exitnas._config import commented_yaml

        print(commented_yaml(cfg), end="")
        return 0
    _apply_threads(args, cfg)
    result = train_supernet(cfg, resume=args.resume, force=args.force)
    if result.already_complete:
        print(f"already complete at step {result.steps} (train.epochs {cfg.train.epochs:g}); nothing to train; "
              f"checkpoint: {result.checkpoint}")
        return 0
    print(f"trained {result.steps} steps at {result.images_per_s:.0f} images/s; checkpoint: {result.checkpoint}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from exitnas.evaluators import read_thresholds
    from exitnas.results import evaluate_arch, read_arch

    exp = _open_experiment(args)
    _apply_threads(args, exp.cfg)
    arch = read_arch(args.arch, exp.space)
    out = check_output_file(args.out or exp.checkpoint.with_name("evaluate.json"), "--out")
    evaluate_arch(exp, arch, read_thresholds(args.thresholds, arch.num_exits), out)
    print(f"wrote {out}")
    return 0


def _open_experiment(args: argparse.Namespace) -> Experiment:
    """The experiment a study searched (``--storage``/``--study``), else a checkpoint's own."""
    from exitnas.experiment import Experiment

    if args.storage:
        from exitnas.results import open_study

        if args.config or args.overrides:
            raise UserError("--config and --set do not apply with --storage: the study records its experiment")
        study = open_study(args.storage, args.study)
        return Experiment.from_study(study.user_attrs, study.study_name, args.checkpoint)
    if not args.checkpoint:
        raise UserError("give --checkpoint (a trained supernet) or --storage (a study that searched one)")
    return Experiment.from_checkpoint(args.checkpoint, args.config, tuple(args.overrides))


#: ``exitnas search`` flags that set ``search.<flag>`` (typed by argparse, applied as they are).
_SEARCH_FLAGS = ("storage", "study", "backend", "workers", "ray_address", "gpus_per_worker", "trials", "sampler",
                 "objective", "checkpoint", "latency_table")


def _cmd_search(args: argparse.Namespace) -> int:
    from exitnas._check import load_checked_config
    from exitnas.search import format_front, run_search

    flags = {f"search.{k}": getattr(args, k) for k in _SEARCH_FLAGS if getattr(args, k) is not None}
    base = _checkpoint_config(args.checkpoint) if args.config is None else None
    cfg = load_checked_config(args.config, args.overrides, base=base, flags=flags)
    _apply_threads(args, cfg)
    front = run_search(cfg)
    print(f"Pareto front of study {cfg.search.study!r} ({cfg.search.storage}):")
    print(format_front(front))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from exitnas.results import VAL_GAP_WARN, build_report

    _apply_threads(args)
    r = build_report(args.storage, args.study, args.checkpoint, args.out, trial=args.trial,
                     upload=not args.no_artifacts)
    print(f"report of study {r.front.study_name!r}: {len(r.front.pareto)} Pareto trials, "
          f"{len(r.tests)} measured on test; curves of trial {r.chosen_trial}")
    print(f"wrote {r.html}")
    for path in (*r.figures.values(), r.summary):
        print(f"  {path}")
    if r.artifact_ids:
        print(f"attached {len(r.artifact_ids)} artifacts to the study; to see them in optuna-dashboard:\n"
              f"  optuna-dashboard {args.storage} --artifact-dir {r.artifact_dir}")
    if r.val_gap > VAL_GAP_WARN:
        print(f"exitnas: warning: val accuracy measured again differs from the stored one by up to "
              f"{r.val_gap:.4f}; is --checkpoint the supernet the study searched?", file=sys.stderr)
    return 0


def _checkpoint_config(checkpoint: str | None) -> dict | None:  # type: ignore[type-arg]
    """The experiment a checkpoint was trained with (its data and space), if one is given."""
    if checkpoint is None:
        return None
    from exitnas.training import load_checkpoint

    return load_checkpoint(checkpoint)["config"]


def _cmd_export(args: argparse.Namespace) -> int:
    from exitnas.results import export_trial

    _apply_threads(args)
    r = export_trial(args.storage, args.study, args.trial, args.out, args.checkpoint, onnx=not args.no_onnx,
                     force=args.force)
    print(f"exported to {r.directory}:")
    for p in (r.arch_json, r.weights, r.torchscript, r.onnx):
        if p is not None:
            print(f"  {p}")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from exitnas._config import TrainConfig, check_field
    from exitnas.results import check_export_out, retrain_export

    for flag in ("epochs", "lr"):  # they stand in for train.epochs and train.lr: the same ranges
        check_field(TrainConfig, flag, getattr(args, flag), key=f"--{flag}")
    _apply_threads(args)
    arch_json = Path(args.arch_json)
    out = check_export_out(args.out or arch_json.parent.parent / (arch_json.parent.name + "-retrained"), args.force)
    r = retrain_export(arch_json, out, scratch=not args.finetune, epochs=args.epochs, lr=args.lr, seed=args.seed)
    print(f"retrained ({'fine-tuned' if args.finetune else 'from scratch'}, {r.epochs:g} epochs, {r.seconds:.0f} s): "
          f"test accuracy {r.test_accuracy:.4f} at {r.test_expected_mmacs:.3f} expected MMACs "
          f"(thresholds refit on val: accuracy {r.val_accuracy:.4f} at {r.val_expected_mmacs:.3f} MMACs)")
    print(f"wrote {r.export.directory}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from exitnas._check import load_checked_config
    from exitnas.evaluators import profile_space
    from exitnas.experiment import Experiment

    cfg = load_checked_config(args.config, args.overrides)
    check_output_file(args.out, "--out")
    exp = Experiment(cfg, device=args.device)
    _apply_threads(args, exp.cfg)
    table = profile_space(exp.space, exp.splits.image_size, exp.device, repeats=args.repeats)
    table.save(args.out)
    noise = table.noise
    print(f"measured {len(table.entries)} ops on {table.device_name} (timing spread {noise['median_relative_iqr']:.0%} "
          f"of the median; an op timed again {noise['repeat_change']:.0%} off); wrote {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from exitnas._demo import run_demo

    _apply_threads(args)
    return run_demo(check_output_dir(args.out, "--out"), quick=args.quick)


def _add_study_args(p: argparse.ArgumentParser, *, storage: str, study: str, checkpoint: str,
                    storage_required: bool = False, study_required: bool = False, trial: str | None = None) -> None:
    """The options that name a study and its supernet, shared by search, report, export and evaluate."""
    p.add_argument("--storage", required=storage_required, help=storage)
    p.add_argument("--study", required=study_required, help=study)
    if trial is not None:
        p.add_argument("--trial", type=int, help=trial)
    p.add_argument("--checkpoint", help=checkpoint)


def _add_stored_trial_args(p: argparse.ArgumentParser, *, study: str, named: bool, trial: str, out: str) -> None:
    """report and export: a stored study, one of its trials, its supernet and where to write;
    ``named``: the study and the folder must be given (export), else they have defaults (report)."""
    _add_study_args(p, storage="the study's storage URL", study=study, storage_required=True,
                    study_required=named, trial=trial,
                    checkpoint="supernet checkpoint (default: the one the study was searched on)")
    p.add_argument("--out", required=named, help=out)


#: ``--storage`` help: the URL rule (README, "Storage and several workers").
_STORAGE_URLS = ("sqlite:///relative.db (four slashes: absolute), journal:///FILE.log for several workers, "
                 "or postgresql://USER@HOST:PORT/DB")
_CHOSEN = "the most accurate Pareto point at or below the front's median expected cost"


#: Each subcommand's one-line help, description and examples (its ``--help`` and epilog).
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "train, search, report and export a small supernet on the built-in digits data",
        "The whole pipeline in a few minutes on a CPU: train a small supernet once, search archs and "
        "thresholds, write the report and export the chosen trial; prints every file it wrote.",
        "  exitnas demo\n  exitnas demo --out /tmp/demo --threads 1",
    ),
    "list": (
        "list registered search spaces, exit heads, losses, samplers and datasets",
        "Every registered name a config may use, with one line on what it does.",
        "  exitnas list",
    ),
    "train": (
        "train a supernet once",
        "Train the config's supernet (sandwich sampling, in-place distillation) into "
        "<train.out>/supernet.pt, with its resolved config.yaml beside it.",
        "  exitnas train --print-config > exp.yaml\n  exitnas train --config exp.yaml\n"
        "  exitnas train --config exp.yaml --set train.epochs=5 --resume",
    ),
    "search": (
        "search archs and thresholds with Optuna (locally or on Ray)",
        "Search subnets and exit thresholds of a trained supernet for the front of val accuracy "
        "against expected cost; every trial is stored in the study (the same name resumes it).",
        "  exitnas search --checkpoint runs/exp/supernet.pt --storage sqlite:///runs/exp/study.db --trials 200\n"
        "  exitnas search --config exp.yaml --backend ray --workers 4 --storage journal:///runs/exp/study.log",
    ),
    "profile": (
        "measure block and head latencies at batch size 1 into a table",
        "Time every block choice, the stem, every head and the exit decision through the deployed "
        "runtime, and warn when the machine is too noisy for the numbers to hold.",
        "  exitnas profile --config exp.yaml --device cpu --threads 1 --out lut.json",
    ),
    "report": (
        "HTML report of a study: front, test numbers, curves, progress",
        "Read the front from the database, measure the chosen points on test with their stored "
        "thresholds, and write report.html (offline), figures and summary.json; the files are also "
        "attached to the study (optuna-dashboard --artifact-dir <out>/artifacts shows them).",
        "  exitnas report --storage sqlite:///runs/exp/study.db\n"
        "  exitnas report --storage sqlite:///runs/exp/study.db --study c10 --trial 42 --out r42",
    ),
    "export": (
        "export a trial: arch.json, weights, TorchScript and ONNX",
        "Write one trial as a deployable model: arch.json (arch, thresholds, metrics, class names, "
        "provenance), the inherited weights, a TorchScript early-exit model and an ONNX file.",
        "  exitnas export --storage sqlite:///runs/exp/study.db --study c10 --out runs/exp/best\n"
        "  exitnas export --storage sqlite:///runs/exp/study.db --study c10 --trial 42 --out t42",
    ),
    "retrain": (
        "train an exported arch on its own, refit thresholds, report test",
        "Train an export's arch alone with the recipe its supernet was trained with (from scratch, "
        "or fine-tune the inherited weights), refit the thresholds on val to the export's expected "
        "cost, and write a new export with test numbers.",
        "  exitnas retrain runs/exp/t42/arch.json\n  exitnas retrain runs/exp/t42/arch.json --finetune --epochs 5",
    ),
    "evaluate": (
        "evaluate one architecture of a trained supernet",
        "Measure one arch as the search does: per-exit accuracy and MACs, the budgeted-batch and "
        "anytime protocols and the oracle on test, and given thresholds; writes the numbers as JSON.",
        "  exitnas evaluate --checkpoint runs/exp/supernet.pt --arch largest\n"
        "  exitnas evaluate --storage sqlite:///runs/exp/study.db --arch arch.json --thresholds 0.9,0.8",
    ),
}


def _subparser(sub: Any, name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    help, description, examples = _COMMANDS[name]
    # Raw text keeps the examples one per line; the description is wrapped here.
    p = sub.add_parser(name, help=help, description=textwrap.fill(description, 88), epilog="examples:\n" + examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _add_demo_and_list(sub: Any) -> None:
    p = _subparser(sub, "demo", _cmd_demo)
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smaller run, 3 epochs and 12 trials (for tests)")
    _add_threads_arg(p)
    _subparser(sub, "list", _cmd_list)


def _add_train(sub: Any) -> None:
    p = _subparser(sub, "train", _cmd_train)
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from <train.out>/supernet.pt")
    p.add_argument("--force", action="store_true", help="train anew over an existing <train.out>/supernet.pt")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, each key commented, and exit")
    _add_threads_arg(p)


def _add_search(sub: Any) -> None:
    p = _subparser(sub, "search", _cmd_search)
    _add_config_args(p)
    _add_study_args(p, storage=f"where trials are stored: {_STORAGE_URLS}",
                    study="study name (the same name resumes it)",
                    checkpoint="supernet checkpoint (default: <train.out>/supernet.pt; without --config its "
                               "config is the experiment's)")
    p.add_argument("--backend", choices=["local", "ray"], help="run trials in this process or on Ray workers")
    p.add_argument("--workers", type=int, help="Ray workers (with --backend ray), each running trials")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs each Ray worker takes (fractions share a GPU)")
    p.add_argument("--trials", type=int, help="complete trials the study should reach")
    p.add_argument("--sampler", help="nsga2 (default), tpe, gp or random")
    p.add_argument("--objective", choices=["macs", "latency"],
                   help="second objective: expected MACs, or expected latency from --latency-table")
    p.add_argument("--latency-table", help="lut.json from exitnas profile (for --objective latency)")
    _add_threads_arg(p)


def _add_profile(sub: Any) -> None:
    p = _subparser(sub, "profile", _cmd_profile)
    _add_config_args(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--out", required=True, help="lut.json to write")
    p.add_argument("--repeats", type=int, default=30,
                   help="timed samples per op (each 5 calls; median and spread kept; default: %(default)s)")
    _add_threads_arg(p)


def _add_report_and_export(sub: Any) -> None:
    p = _subparser(sub, "report", _cmd_report)
    _add_stored_trial_args(p, study="study name (default: the storage's only study)", named=False,
                           trial=f"trial to draw curves for (default: {_CHOSEN})",
                           out="folder to write (default: report-<study> beside the database file)")
    p.add_argument("--no-artifacts", action="store_true", help="do not attach the files to the study")
    _add_threads_arg(p)
    p = _subparser(sub, "export", _cmd_export)
    _add_stored_trial_args(p, study="study name", named=True, out="folder to write",
                           trial=f"trial number (default: the report's choice: {_CHOSEN})")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    p.add_argument("--force", action="store_true", help="replace an export already in --out")
    _add_threads_arg(p)


def _add_retrain(sub: Any) -> None:
    p = _subparser(sub, "retrain", _cmd_retrain)
    p.add_argument("arch_json", help="arch.json of an export")
    p.add_argument("--out", help="folder for the retrained export (default: <export>-retrained)")
    p.add_argument("--finetune", action="store_true", help="start from the inherited weights (default: scratch)")
    p.add_argument("--epochs", type=float, help="default: the supernet's train.epochs")
    p.add_argument("--lr", type=float, help="default: the supernet's train.lr (scratch) or a tenth of it (fine-tune)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an export already in --out")
    _add_threads_arg(p)


def _add_evaluate(sub: Any) -> None:
    p = _subparser(sub, "evaluate", _cmd_evaluate)
    _add_config_args(p)
    _add_study_args(p, storage="measure as this study's search did (its data, recalibration, confidence)",
                    study="with --storage: the study (default: the storage's only study)",
                    checkpoint="supernet checkpoint (supernet.pt; default with --storage: the study's)")
    p.add_argument("--arch", required=True, help="ArchConfig JSON file (or 'largest' / 'smallest')")
    p.add_argument("--thresholds", help="comma-separated thresholds, one per non-final exit")
    p.add_argument("--out", help="JSON file for the results (default: next to the checkpoint)")
    _add_threads_arg(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``exitnas`` parser: one subcommand per step, each with a description and examples."""
    from exitnas import __version__

    parser = argparse.ArgumentParser(prog="exitnas", description="Search early-exit neural networks.",
                                     epilog="start with: exitnas demo (a few minutes on a CPU); "
                                            "exitnas <command> --help shows a command's options and examples")
    parser.add_argument("--version", action="version", version=f"exitnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo_and_list, _add_train, _add_search, _add_profile, _add_report_and_export, _add_retrain,
                _add_evaluate):
        add(sub)
    return parser


def _one_line_warnings(shown_before: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints exitnas's own warnings as one line, as errors are,
    and hands others to ``shown_before``."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, ExitnasWarning):
            print(f"exitnas: warning: {message}", file=sys.stderr)
        else:
            shown_before(message, category, *args, **kwargs)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except UserError as e:
        print(f"exitnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # anywhere, imports included; a running trial is already marked FAIL
        print("exitnas: interrupted", file=sys.stderr)
        return 130


def _run(argv: Sequence[str] | None) -> int:
    import optuna

    from exitnas._trial_errors import one_line_trial_errors

    args = build_parser().parse_args(argv)
    # Once, here: the library leaves Optuna's log level to whoever calls it. The CLI's
    # progress bar and one-line errors replace Optuna's per-trial INFO lines and tracebacks.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    one_line_trial_errors()
    func: Callable[[argparse.Namespace], int] = args.func
    with warnings.catch_warnings():  # restores showwarning for an in-process caller
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
