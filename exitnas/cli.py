"""``exitnas`` command line: demo | list | train | evaluate.

Every user-fixable problem is a :class:`~exitnas.UserError`: one line on stderr
(``exitnas: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from exitnas._errors import ExitnasWarning, UserError

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
    result = train_supernet(cfg, resume=args.resume)
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
    out = Path(args.out) if args.out else exp.checkpoint.with_name("evaluate.json")
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
    from exitnas.results import build_report
    from exitnas.results._report import VAL_GAP_WARN

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
    from exitnas.results._export import export_trial

    _apply_threads(args)
    r = export_trial(args.storage, args.study, args.trial, args.out, args.checkpoint, onnx=not args.no_onnx)
    print(f"exported to {r.directory}:")
    for p in (r.arch_json, r.weights, r.torchscript, r.onnx):
        if p is not None:
            print(f"  {p}")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from exitnas._config import TrainConfig, check_field
    from exitnas.results._retrain import retrain_export

    for flag in ("epochs", "lr"):  # they stand in for train.epochs and train.lr: the same ranges
        check_field(TrainConfig, flag, getattr(args, flag), key=f"--{flag}")
    _apply_threads(args)
    arch_json = Path(args.arch_json)
    out = Path(args.out) if args.out else arch_json.parent.parent / (arch_json.parent.name + "-retrained")
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

    exp = Experiment(load_checked_config(args.config, args.overrides), device=args.device)
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
    return run_demo(Path(args.out), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    from exitnas import __version__

    parser = argparse.ArgumentParser(prog="exitnas", description="Search early-exit neural networks.")
    parser.add_argument("--version", action="version", version=f"exitnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train, evaluate and report a small supernet on the built-in digits data")
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    p.add_argument("--quick", action="store_true", help="a smaller run (for tests)")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("list", help="list registered search spaces, exit heads, losses and datasets")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("train", help="train a supernet once")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from <train.out>/supernet.pt")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("search", help="search archs and thresholds with Optuna (locally or on Ray)")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="supernet checkpoint (default: <train.out>/supernet.pt)")
    p.add_argument("--storage", help="sqlite:///FILE.db, journal:///FILE.log or postgresql://...")
    p.add_argument("--study", help="study name (the same name resumes it)")
    p.add_argument("--backend", choices=["local", "ray"])
    p.add_argument("--workers", type=int, help="Ray workers")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--trials", type=int, help="complete trials the study should reach")
    p.add_argument("--sampler", help="nsga2 (default), tpe, gp, random")
    p.add_argument("--objective", choices=["macs", "latency"])
    p.add_argument("--latency-table", help="lut.json from exitnas profile (for --objective latency)")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("profile", help="measure block and head latencies at batch size 1 into a table")
    _add_config_args(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="lut.json to write")
    p.add_argument("--repeats", type=int, default=30)
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("report", help="HTML report of a study: front, test numbers, curves, progress")
    p.add_argument("--storage", required=True, help="the study's storage URL")
    p.add_argument("--study", help="study name (default: the storage's only study)")
    p.add_argument("--checkpoint", help="supernet checkpoint (default: the one the study was searched on)")
    p.add_argument("--out", help="folder to write (default: report-<study> beside the database file)")
    p.add_argument("--trial", type=int, help="trial to draw curves for (default: the most accurate Pareto "
                   "point at or below the front's median expected cost)")
    p.add_argument("--no-artifacts", action="store_true", help="do not attach the files to the study")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="export a trial: arch.json, weights, TorchScript and ONNX")
    p.add_argument("--storage", required=True, help="the study's storage URL")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--trial", type=int, help="trial number (default: the report's choice: the most accurate "
                   "Pareto point at or below the front's median expected cost)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--checkpoint", help="supernet checkpoint (default: the one the study was searched on)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("retrain", help="train an exported arch on its own, refit thresholds, report test")
    p.add_argument("arch_json", help="arch.json of an export")
    p.add_argument("--out", help="folder for the retrained export (default: <export>-retrained)")
    p.add_argument("--finetune", action="store_true", help="start from the inherited weights (default: scratch)")
    p.add_argument("--epochs", type=float, help="default: the experiment's train.epochs")
    p.add_argument("--lr", type=float, help="default: train.lr (scratch) or a tenth of it (fine-tune)")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_retrain)

    p = sub.add_parser("evaluate", help="evaluate one architecture of a trained supernet")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="supernet checkpoint (supernet.pt; default with --storage: the study's)")
    p.add_argument("--storage", help="measure as this study's search did (its data, recalibration, confidence)")
    p.add_argument("--study", help="with --storage: the study (default: the storage's only study)")
    p.add_argument("--arch", required=True, help="ArchConfig JSON file (or 'largest' / 'smallest')")
    p.add_argument("--thresholds", help="comma-separated thresholds, one per non-final exit")
    p.add_argument("--out", help="JSON file for the results (default: next to the checkpoint)")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_evaluate)
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
    import optuna

    parser = build_parser()
    args = parser.parse_args(argv)
    # Once, here: the library leaves Optuna's log level to whoever calls it. The CLI's
    # progress bar and one-line errors replace Optuna's per-trial INFO lines.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with warnings.catch_warnings():  # restores showwarning for an in-process caller
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return func(args)
    except UserError as e:
        print(f"exitnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("exitnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
