"""``exitnas retrain``: train an exported arch on its own, refit thresholds on val, report test."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from exitnas._config import TrainConfig
from exitnas._errors import UserError
from exitnas.data import ImageSplits
from exitnas.evaluators import TRAIN_CACHE_IMAGES, exit_costs, fit_subnet_ensemble
from exitnas.experiment import Experiment
from exitnas.results._export import ExportResult, write_export
from exitnas.results._export_eval import ExportEvaluation, evaluate_export
from exitnas.runtime import load_export
from exitnas.search_space import ArchConfig, GateUse, Measured, SearchSpace, StaticNet, Supernet

__all__ = ["RetrainResult", "retrain_export", "untrained_net"]


@dataclass(frozen=True)
class RetrainResult:
    export: ExportResult
    test_accuracy: float
    test_expected_mmacs: float
    val_accuracy: float
    val_expected_mmacs: float
    thresholds: list[float]
    epochs: float
    seconds: float


@dataclass(frozen=True)
class _Schedule:
    """How long and how fast one retraining runs."""

    epochs: float
    lr: float
    scratch: bool
    seed: int


def untrained_net(meta: dict[str, Any]) -> StaticNet:
    """The arch of an export (its ``arch.json`` contents) as a freshly initialised net: what
    ``exitnas retrain`` trains from scratch."""
    return Supernet(SearchSpace.from_dict(meta["space"])).to_static(ArchConfig.from_dict(meta["arch"]))


def retrain_export(arch_json: str | Path, out: str | Path, *, scratch: bool = True, epochs: float | None = None,
                   lr: float | None = None, seed: int = 0, progress: bool = True) -> RetrainResult:
    """Train the exported arch (from scratch, or fine-tune its inherited weights) with the
    multi-exit loss, refit its thresholds (and exit policy) on val for the export's val expected MACs, and
    write a new export with test accuracy and expected MACs.

    The experiment's training options apply as in supernet training: ``train.loss``,
    ``train.routing`` (DFS partitions each non-final exit) and ``train.gate_cost``.
    """
    t0 = time.perf_counter()
    model, meta = load_export(arch_json)
    exp = Experiment.from_export(meta, arch_json)
    tc = exp.cfg.train
    sched = _schedule(tc, scratch, epochs, lr, seed)
    splits, device = exp.splits, exp.device
    torch.manual_seed(seed)
    random.seed(seed)
    net = (untrained_net(meta) if scratch else model.net).to(device).requires_grad_(True).train()
    _train(net, tc, splits, device, sched, progress)
    net.eval()
    # An exit ensemble is fitted after the exits are trained, on training images (as the evaluator does).
    pick = torch.randperm(len(splits.train_x), generator=torch.Generator().manual_seed(seed))[:TRAIN_CACHE_IMAGES]
    fit_subnet_ensemble(net, splits.train_x[pick], splits.train_y[pick], splits.mean, splits.std, device=device)

    costs = exit_costs(net.cpu(), tuple(splits.train_x.shape[1:]))
    net.to(device)
    ev = evaluate_export(net, ArchConfig.from_dict(meta["arch"]), splits, costs.macs, **_budget(meta),
                         kind=meta.get("confidence", "maxprob"), device=device, seed=seed,
                         policy=meta.get("policy", "threshold"))
    new_meta = _retrained_meta(meta, ev, costs.to_dict(), sched, str(arch_json))
    export = write_export(out, net, new_meta, list(splits.mean), list(splits.std), exp.input_shape)
    test, val = ev.metrics["test"], ev.metrics["val"]
    return RetrainResult(export, test["accuracy"], test["expected_mmacs"], val["accuracy"], val["expected_mmacs"],
                         list(ev.thresholds), sched.epochs, time.perf_counter() - t0)


def _budget(meta: dict[str, Any]) -> dict[str, Any]:
    """The export's val expected cost, in its search's unit: the budget the refit thresholds keep to."""
    val = meta["metrics"]["val"]
    if meta.get("exit_ms") is not None:  # a latency search: its ms per exit still hold (same arch)
        return {"budget_ms": float(val["expected_ms"]), "exit_ms": meta["exit_ms"]}
    return {"budget_macs": float(val["expected_mmacs"]) * 1e6}


def _schedule(tc: TrainConfig, scratch: bool, epochs: float | None, lr: float | None, seed: int) -> _Schedule:
    """The run's epochs and base learning rate: the recipe the supernet was trained with (the
    export's ``experiment.train``), a tenth of its lr to fine-tune; ``epochs``/``lr`` override."""
    epochs = tc.epochs if epochs is None else epochs
    if epochs <= 0:
        raise UserError("--epochs must be positive")
    base_lr = lr if lr is not None else (tc.lr if scratch else tc.lr * 0.1)
    return _Schedule(epochs, base_lr, scratch, seed)


def _train(net: StaticNet, tc: TrainConfig, splits: ImageSplits, device: torch.device, sched: _Schedule,
           progress: bool) -> None:
    """The optimiser steps: the experiment's multi-exit loss, routing and gate cost."""
    from exitnas.training import LOSSES, gate_penalty, lr_at, make_optimizer, train_loader, warn_if_all_warmup

    if sched.scratch:  # fine-tuning has no warm-up
        warn_if_all_warmup(tc, sched.epochs)
    loader = train_loader(tc, splits, device, sched.seed)
    spe = len(loader)
    total = max(1, round(sched.epochs * spe))
    warmup = min(total, round(tc.warmup_epochs * spe)) if sched.scratch else 0
    opt = make_optimizer(net, tc, sched.lr)
    loss_fn = LOSSES.get(tc.loss)
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    bar = tqdm(total=total, desc="retrain" + (" (scratch)" if sched.scratch else " (fine-tune)"), unit="step",
               disable=not progress, dynamic_ncols=True)
    step = 0
    with GateUse(net) as gates:  # a gated net pays train.gate_cost for the rings it switches on
        while step < total:
            for x, y in loader.epoch(step // spe, step % spe):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, warmup, sched.lr)
                with amp:
                    loss = loss_fn(net(x, tc.routing, tc.dfs_beta, ensemble=False), y, None, 0.0,
                                   tc.label_smoothing)
                    use = gates.take()
                    if use:
                        loss = loss + tc.gate_cost * gate_penalty(use)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if step >= total:
                    break
    bar.close()


def _retrained_meta(meta: dict[str, Any], ev: ExportEvaluation, costs: dict[str, Any], sched: _Schedule,
                    source: str) -> dict[str, Any]:
    """The new export's ``arch.json`` contents: the old ones with refit thresholds, new costs and
    metrics, and the candidate's measured values (val) now the retrained net's."""
    new_meta = {k: v for k, v in meta.items() if k not in ("format", "files", "input", "mean", "std")}
    new_meta.update(thresholds=list(ev.thresholds), costs=costs, metrics=ev.metrics)
    if new_meta.get("policy", "threshold") != "threshold":
        new_meta["params"] = ev.params  # the policy refit on val with the thresholds
    val, budget = ev.metrics["val"], _budget(meta)
    unit, key = ("ms", "expected_ms") if "budget_ms" in budget else ("MMACs", "expected_mmacs")
    new_meta["measured"] = Measured(val["accuracy"], val[key], unit).to_dict()
    new_meta["provenance"] = {
        **meta.get("provenance", {}),
        "source": "retrained from scratch" if sched.scratch else "fine-tuned from the inherited weights",
        "retrain": {"epochs": sched.epochs, "lr": sched.lr, "seed": sched.seed, "from": source,
                    "threads": torch.get_num_threads(),
                    "thresholds_refit_on": "val" + ("" if meta.get("policy", "threshold") == "threshold"
                                                    else f" (with the {meta['policy']} policy)"),
                    **({"ms_budget": budget["budget_ms"]} if "budget_ms" in budget
                       else {"mmacs_budget": budget["budget_macs"] / 1e6})},
    }
    return new_meta
