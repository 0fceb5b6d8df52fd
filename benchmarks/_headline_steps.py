"""The steps of ``benchmarks/headline.py`` (all but ``resnet18``, in ``_resnet18.py``).

Each step takes the :class:`~_headline_harness.Run`, skips itself when its ``<step>.json``
says done, and returns False when it stopped at a checkpoint for lack of time. The steps
call the package and time it; what they measure is described in ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _env import RESULTS, write_section
from _headline_harness import (
    NSGA2_STUDY,
    RANDOM_STUDY,
    SECTION,
    Run,
    StepFunction,
    StepLog,
    load_json,
    point_json,
)
from _resnet18 import step_resnet18, steps_per_s
from torch import nn

from exitnas._config import ExperimentConfig
from exitnas._errors import UserError
from exitnas.results import kendall_tau


# -- train: the supernet for a wall-clock budget ------------------------------------------------------
def step_train(run: Run) -> bool:
    from exitnas.training import load_checkpoint, save_checkpoint, train_supernet

    log = run.log("train")
    if log is None:
        return True
    t = time.perf_counter()
    splits = run.splits()
    cfg = run.cfg()
    spe = len(splits.train_y) // cfg.train.batch_size
    print(f"[train] supernet on {len(splits.train_y)} train images, budget {run.s.train_minutes} min "
          f"({spe} steps per epoch); data loaded in {time.perf_counter() - t:.1f} s")
    if "epochs" not in log.data:
        t = time.perf_counter()
        sps = _supernet_speed(run, splits)
        epochs = run.s.train_minutes * 60 * sps / spe
        if run.s.max_epochs is not None:
            epochs = min(epochs, run.s.max_epochs)
        log.save(epochs=epochs, total_steps=max(1, round(epochs * spe)), steps_per_s_measured=sps,
                 calibration_s=time.perf_counter() - t,
                 budget_minutes=run.s.train_minutes, batch_size=cfg.train.batch_size, steps_per_epoch=spe,
                 train_images=len(splits.train_y))
        print(f"  measured {sps:.2f} steps/s → {epochs:.2f} epochs ({log.data['total_steps']} steps)")
    total, sps = log.data["total_steps"], log.data["steps_per_s_measured"]
    step = int(log.data.get("steps_done", 0))
    chunk = max(1, round(60 * sps))  # about a minute of steps between checkpoints
    cfg = run.cfg(epochs=float(log.data["epochs"]), checkpoint_every=chunk)
    while step < total:
        room = int((run.left() - 15) * sps)
        if room < 1:
            log.save(steps_done=step)
            return False
        stop = min(total, step + chunk, step + room)
        t = time.perf_counter()
        res = train_supernet(cfg, resume=True, stop_at_step=stop, splits=splits)
        step = res.steps
        log.save(steps_done=step, last_loss=res.last_loss, images_per_s=res.images_per_s)
        print(f"  step {step}/{total}: loss {res.last_loss:.3f}, {res.images_per_s:.0f} img/s "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    # Training is over: keep the weights only (half the size), so the folder can travel.
    state = load_checkpoint(run.checkpoint)
    slim = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "rng", "format")}
    save_checkpoint(run.checkpoint, slim)
    log.finish(steps_done=step, checkpoint=str(run.checkpoint), checkpoint_mb=run.checkpoint.stat().st_size / 2**20,
               note="optimizer state dropped after training (weights, space, config and step kept)")
    return True


def _supernet_speed(run: Run, splits: Any) -> float:
    """Steady-state sandwich steps per second: a warm-up run, then a timed one (fresh folders)."""
    from exitnas.training import train_supernet

    tmp = run.out / "calibration"
    shutil.rmtree(tmp, ignore_errors=True)
    warm, timed = (1, 3) if run.s.smoke else (5, 40)
    try:
        # Many epochs: the timed steps are all at the warm-up learning rate, which costs the same.
        train_supernet(run.cfg(out=str(tmp / "warm"), epochs=1000.0, checkpoint_every=10**9), stop_at_step=warm,
                       splits=splits)
        res = train_supernet(run.cfg(out=str(tmp / "timed"), epochs=1000.0, checkpoint_every=10**9),
                             stop_at_step=timed, splits=splits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res.images_per_s / run.cfg().train.batch_size


# -- search and baselines -------------------------------------------------------------------------------
def _need_supernet(run: Run) -> None:
    train = load_json(run.out / "train.json")
    if not train or train["status"] != "done":
        raise UserError(f"no trained supernet in {run.out}; run the train step first")


def _need_search(run: Run) -> None:
    search = load_json(run.out / "search.json")
    if not search or search["status"] != "done":
        raise UserError("the search is not finished; run the search step first")


def _run_study(run: Run, log: StepLog, name: str, sampler: str, exp: Any = None) -> tuple[bool, Any]:
    """Run (or resume) one study until it holds ``trials`` complete trials or time runs out."""
    from exitnas.experiment import Experiment
    from exitnas.search import completed, create_or_load_study, pareto_front, run_search

    exp = exp or Experiment(run.cfg(study=name, sampler=sampler), run.checkpoint)
    study = create_or_load_study(exp)
    before, passes = completed(study), exp.evaluator.forward_passes
    remaining = run.s.trials - before
    t = time.perf_counter()
    if remaining > 0 and run.left() > 20:
        run_search(exp.cfg, exp=exp, timeout=run.left() - 15)
    done, dt = completed(study), time.perf_counter() - t
    new = done - before
    runs = log.data.get("search_s", 0.0) + dt
    log.save(study=name, sampler=sampler, trials=done, search_s=runs, storage=run.storage,
             trials_per_min=60 * done / runs if runs > 0 else None,
             archs_measured=log.data.get("archs_measured", 0) + exp.evaluator.forward_passes - passes,
             front_size=len(pareto_front(study)))
    print(f"[{log.data['step']}] study {name} ({sampler}): {done}/{run.s.trials} trials (+{new} in {dt:.0f} s)",
          flush=True)
    return done >= run.s.trials, exp


def step_search(run: Run) -> bool:
    log = run.log("search")
    if log is None:
        return True
    _need_supernet(run)
    complete, _ = _run_study(run, log, NSGA2_STUDY, "nsga2")
    if complete:
        log.finish()
    return complete


def step_baselines(run: Run) -> bool:
    from exitnas.evaluators import anytime, budgeted_batch, oracle
    from exitnas.experiment import Experiment
    from exitnas.results import stage_exit_arch, static_largest_arch

    log = run.log("baselines")
    if log is None:
        return True
    _need_supernet(run)
    exp = None
    if "hand_placed" not in log.data:
        exp = Experiment(run.cfg(study=RANDOM_STUDY, sampler="random"), run.checkpoint)
        ev = exp.evaluator
        static, stage = static_largest_arch(ev.space), stage_exit_arch(ev.space)
        cs, cg = ev.caches(static, ("val", "test")), ev.caches(stage, ("val", "test"))
        hand = {
            "static_largest": {"arch": static.to_dict(), "mmacs": float(cs["test"].macs[-1]) / 1e6,
                               "val_accuracy": float(cs["val"].exit_accuracy()[-1]),
                               "test_accuracy": float(cs["test"].exit_accuracy()[-1])},
            "stage_exits": {"arch": stage.to_dict(), "rule": "MSDNet budgeted batch: thresholds fit on val per p",
                            "budgeted_batch_val": [point_json(p) for p in budgeted_batch(cg["val"], cg["val"])],
                            "budgeted_batch_test": [point_json(p) for p in budgeted_batch(cg["val"], cg["test"])],
                            "anytime_test": [point_json(p) for p in anytime(cg["test"])],
                            "oracle_test": point_json(oracle(cg["test"]))},
        }
        log.save(hand_placed=hand)
        h = hand["static_largest"]
        print(f"[baselines] largest subnet: test {h['test_accuracy']:.4f} at {h['mmacs']:.1f} MMACs")
    complete, _ = _run_study(run, log, RANDOM_STUDY, "random", exp)
    if complete:
        log.finish()
    return complete


# -- retrain and Kendall τ ----------------------------------------------------------------------------
def _static_speed(run: Run, arch_json: Path, splits: Any) -> float:
    """Steps per second of training the exported arch as ``exitnas retrain`` does (fresh weights)."""
    from exitnas.results import untrained_net
    from exitnas.training import LOSSES

    meta = json.loads(arch_json.read_text())
    tc = ExperimentConfig.from_dict(meta["experiment"]).train
    loss_fn = LOSSES.get(tc.loss)

    def build() -> tuple[nn.Module, Callable[..., torch.Tensor], bool]:
        net = untrained_net(meta)
        return net.to(run.device).train(), lambda z, y: loss_fn(z, y, None, 0.0, tc.label_smoothing), False

    return steps_per_s(build, run, splits)


def _export_curves(run: Run, arch_json: Path, splits: Any) -> dict[str, Any]:
    """Budgeted batch, anytime and oracle on test of an exported (retrained) model."""
    from exitnas.results import evaluate_export, load_export
    from exitnas.search_space import ArchConfig

    model, meta = load_export(arch_json)
    ev = evaluate_export(model.net.to(run.device).eval(), ArchConfig.from_dict(meta["arch"]), splits,
                         meta["costs"]["macs"], thresholds=meta["thresholds"],
                         kind=meta.get("confidence", "maxprob"), device=run.device)
    c = ev.curves("test", fit_on="val")
    return {"budgeted_batch_test": [point_json(p) for p in c.budgeted_batch],
            "anytime_test": [point_json(p) for p in c.anytime], "oracle_test": point_json(c.oracle)}


def _retrain(run: Run, arch_json: Path, out: Path, epochs: float) -> dict[str, Any]:
    from exitnas.results import retrain_export

    res = retrain_export(arch_json, out, scratch=True, epochs=epochs, seed=run.s.seed, progress=False)
    meta = json.loads(res.export.arch_json.read_text())
    return {"epochs": epochs, "seconds": res.seconds, "test_accuracy": res.test_accuracy,
            "test_mmacs": res.test_expected_mmacs, "val_accuracy": res.val_accuracy,
            "val_mmacs": res.val_expected_mmacs, "thresholds": res.thresholds,
            "test_final_exit_accuracy": meta["metrics"]["test"]["exit_accuracy"][-1], "export": str(out)}


def step_retrain(run: Run) -> bool:
    from exitnas.results import export_trial

    log = run.log("retrain")
    if log is None:
        return True
    _need_supernet(run)
    _need_search(run)
    splits = run.splits()
    inherited = run.out / "export-chosen"
    if not (inherited / "arch.json").is_file():
        t = time.perf_counter()
        export_trial(run.storage, NSGA2_STUDY, None, inherited, checkpoint=str(run.checkpoint))
        print(f"[retrain] exported the chosen trial in {time.perf_counter() - t:.0f} s")
    meta = json.loads((inherited / "arch.json").read_text())
    if "retrained" not in log.data:
        spe = len(splits.train_y) // run.cfg().train.batch_size
        sps = log.data.get("steps_per_s_measured") or _static_speed(run, inherited / "arch.json", splits)
        log.save(steps_per_s_measured=sps)
        epochs = run.s.retrain_minutes * 60 * sps / spe
        if run.s.max_epochs is not None:
            epochs = min(epochs, run.s.max_epochs)
        # exitnas retrain has no checkpoints: the whole budget (plus data, caches, export) in this command.
        need = run.s.retrain_minutes * 60 + 30
        if run.left() < need:
            print(f"[retrain] needs about {need / 60:.1f} min in one command; {run.left() / 60:.1f} left. "
                  "Run the retrain step in a fresh command.")
            return False
        print(f"[retrain] trial {meta['provenance']['trial']} from scratch: {sps:.2f} steps/s → {epochs:.2f} epochs")
        r = _retrain(run, inherited / "arch.json", run.out / "retrain-chosen", epochs)
        log.save(trial=meta["provenance"]["trial"], steps_per_s_measured=sps, budget_minutes=run.s.retrain_minutes,
                 inherited={"test_accuracy": meta["metrics"]["test"]["accuracy"],
                            "test_mmacs": meta["metrics"]["test"]["expected_mmacs"],
                            "val_accuracy": meta["metrics"]["val"]["accuracy"],
                            "val_mmacs": meta["metrics"]["val"]["expected_mmacs"]},
                 retrained=r)
        print(f"  retrained: test {r['test_accuracy']:.4f} at {r['test_mmacs']:.2f} MMACs "
              f"(inherited {meta['metrics']['test']['accuracy']:.4f} at "
              f"{meta['metrics']['test']['expected_mmacs']:.2f})")
    log.finish(curves=_export_curves(run, run.out / "retrain-chosen" / "arch.json", splits),
               note="both exports pruned to arch.json once measured, so the run folder can travel")
    _prune_export(inherited)
    _prune_export(run.out / "retrain-chosen")
    return True


def kendall_trials(front: Any, n: int) -> list[int]:
    """``n`` trials of distinct archs: spread along the front's MMACs, then (if the front has
    too few distinct archs) spread over the other trials' validation accuracy."""
    def key(t: Any) -> str:
        return json.dumps(t.user_attrs.get("arch"), sort_keys=True)

    def spread(ts: list[Any], k: int) -> list[Any]:
        if len(ts) <= k:
            return ts
        return [ts[i] for i in sorted({round(v) for v in np.linspace(0, len(ts) - 1, k)})]

    seen: set[str] = set()

    def distinct(ts: list[Any]) -> list[Any]:
        out = []
        for t in ts:
            if key(t) not in seen:
                seen.add(key(t))
                out.append(t)
        return out

    picked = spread(distinct(front.pareto_trials), n)
    seen = {key(t) for t in picked}
    if len(picked) < n:
        picked += spread(distinct(sorted(front.trials, key=lambda t: t.accuracy)), n - len(picked))
    return sorted(t.number for t in picked)


def _prune_export(folder: Path) -> None:
    """Keep an export's arch.json (metrics, provenance); its model files are not needed again."""
    for f in folder.iterdir():
        if f.name != "arch.json":
            f.unlink()


def step_kendall(run: Run) -> bool:
    from exitnas.results import export_trial, load_front

    if run.s.kendall_archs <= 0:
        print("[kendall] --kendall-archs 0: skipped")
        return True
    log = run.log("kendall")
    if log is None:
        return True
    _need_search(run)
    front = load_front(run.storage, NSGA2_STUDY)
    trials = log.data.get("trials") or kendall_trials(front, run.s.kendall_archs)
    rows: dict[str, Any] = log.data.get("rows", {})
    log.save(trials=trials, rows=rows, epochs=run.s.kendall_epochs)
    print(f"[kendall] {len(trials)} archs, {run.s.kendall_epochs} epochs each from scratch: trials {trials}")
    last = 0.0
    for n in trials:
        if str(n) in rows:
            continue
        if run.left() < max(30.0, 1.3 * last):
            return False
        t = time.perf_counter()
        folder = run.out / "kendall" / f"trial-{n}"
        if not (folder / "inherited" / "arch.json").is_file():
            export_trial(run.storage, NSGA2_STUDY, n, folder / "inherited", checkpoint=str(run.checkpoint))
        meta = json.loads((folder / "inherited" / "arch.json").read_text())
        r = _retrain(run, folder / "inherited" / "arch.json", folder / "retrained", run.s.kendall_epochs)
        rows[str(n)] = {"inherited_val_accuracy": front.trial(n).accuracy, "val_mmacs": front.trial(n).cost,
                        "inherited_test_accuracy": meta["metrics"]["test"]["accuracy"],
                        "inherited_test_final_exit_accuracy": meta["metrics"]["test"]["exit_accuracy"][-1],
                        **{f"retrained_{k}": v for k, v in r.items() if k not in ("thresholds", "export")}}
        last = time.perf_counter() - t
        log.save(rows=rows, note="exports pruned to arch.json (their figures are in rows)")
        _prune_export(folder / "inherited")  # after the save: a rerun must not find a pruned export undone
        _prune_export(folder / "retrained")
        print(f"  trial {n}: inherited test {rows[str(n)]['inherited_test_accuracy']:.4f}, retrained "
              f"{r['test_accuracy']:.4f} ({last:.0f} s)", flush=True)
    vals = [rows[str(n)] for n in trials]
    tau = {
        "search_val_vs_retrained_test": kendall_tau([v["inherited_val_accuracy"] for v in vals],
                                                    [v["retrained_test_accuracy"] for v in vals]),
        "inherited_test_vs_retrained_test": kendall_tau([v["inherited_test_accuracy"] for v in vals],
                                                        [v["retrained_test_accuracy"] for v in vals]),
        "final_exit_inherited_vs_retrained": kendall_tau([v["inherited_test_final_exit_accuracy"] for v in vals],
                                                         [v["retrained_test_final_exit_accuracy"] for v in vals]),
    }
    print("  Kendall τ: " + ", ".join(f"{k} {v:.3f}" for k, v in tau.items()))
    log.finish(tau=tau)
    return True


# -- evaluate ------------------------------------------------------------------------------------------
def step_evaluate(run: Run) -> bool:
    from _headline_report import evaluate

    for step in ("train", "search", "baselines"):
        d = load_json(run.out / f"{step}.json")
        if not d or d["status"] != "done":
            raise UserError(f"the {step} step is not finished; run it first")
    evaluate(run)
    return True


def step_publish(run: Run) -> bool:
    """Write the evaluated section into benchmarks/RESULTS.md here (after a device run)."""
    md = run.out / "headline.md"
    if run.s.smoke:
        raise UserError("a smoke run is not a measurement; nothing to publish")
    if not md.is_file():
        raise UserError(f"no {md}; run the evaluate step first")
    text = md.read_text()
    write_section(SECTION, text.split("\n", 1)[1] if text.startswith(SECTION) else text)
    print(f"[publish] {md} → the {SECTION!r} section of {RESULTS}")
    return True


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "train": step_train, "resnet18": step_resnet18, "search": step_search, "baselines": step_baselines,
    "retrain": step_retrain, "kendall": step_kendall, "evaluate": step_evaluate, "publish": step_publish,
}
