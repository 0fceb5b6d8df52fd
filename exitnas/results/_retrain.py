"""``exitnas retrain``: train an exported arch on its own, refit thresholds on val, report test."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from exitnas._errors import UserError
from exitnas.evaluators import (
    ExitCache,
    ExitPolicy,
    build_exit_cache,
    exit_costs,
    fit_budgeted_thresholds,
)
from exitnas.evaluators._evaluator import TRAIN_CACHE_IMAGES, fit_subnet_ensemble
from exitnas.evaluators._protocols import DEFAULT_P_SWEEP
from exitnas.results._export import ExportResult, write_export
from exitnas.runtime import load_export
from exitnas.search_space import ArchConfig, GateUse, SearchSpace, StaticNet, Supernet

__all__ = ["RetrainResult", "retrain_export", "refit_thresholds"]


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


def refit_thresholds(val: ExitCache, budget_macs: float, n_random: int = 20000, seed: int = 0) -> np.ndarray:
    """The thresholds with the best val accuracy whose expected MACs stay within ``budget_macs``.

    Candidates: MSDNet's budgeted-batch fits over the p sweep plus random vectors, all
    evaluated at once on the cache (no forward pass). Falls back to the cheapest candidate
    when none fits the budget.
    """
    k = val.num_exits
    if k == 1:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    cands = np.concatenate([np.stack([fit_budgeted_thresholds(val, p) for p in DEFAULT_P_SWEEP]),
                            rng.random((n_random, k - 1))])
    r = ExitPolicy(val).evaluate(cands)
    ok = r.expected_macs <= budget_macs * (1 + 1e-9)
    if not ok.any():
        return cands[int(np.argmin(r.expected_macs))]
    score = np.where(ok, r.accuracy, -1.0)
    best = np.flatnonzero(score == score.max())
    return cands[best[np.argmin(r.expected_macs[best])]]


def retrain_export(arch_json: str | Path, out: str | Path, *, scratch: bool = True, epochs: float | None = None,
                   lr: float | None = None, seed: int = 0, progress: bool = True) -> RetrainResult:
    """Train the exported arch (from scratch, or fine-tune its inherited weights) with the
    multi-exit loss, refit its thresholds on val for the export's val expected MACs, and
    write a new export with test accuracy and expected MACs.

    The experiment's training options apply as in supernet training: ``train.loss``,
    ``train.routing`` (DFS partitions each non-final exit) and ``train.gate_cost``.
    """
    from exitnas._config import ExperimentConfig
    from exitnas.data import load_dataset
    from exitnas.training._trainer import (
        LOSSES,
        gate_penalty,
        lr_at,
        make_optimizer,
        resolve_device,
        train_loader,
    )

    t0 = time.perf_counter()
    model, meta = load_export(arch_json)
    if "experiment" not in meta:
        raise UserError(f"{arch_json} does not record its experiment (data and training); re-export the trial")
    cfg = ExperimentConfig.from_dict(meta["experiment"])
    tc = cfg.train
    epochs = tc.epochs if epochs is None else epochs
    if epochs <= 0:
        raise UserError("--epochs must be positive")
    space = SearchSpace.from_dict(meta["space"])
    arch = ArchConfig.from_dict(meta["arch"])
    splits = load_dataset(cfg.data)
    device = resolve_device(tc.device)
    torch.manual_seed(seed)
    random.seed(seed)
    net: StaticNet = Supernet(space).to_static(arch) if scratch else model.net
    net = net.to(device).requires_grad_(True).train()

    loader = train_loader(tc, splits, device, seed)
    spe = len(loader)
    total = max(1, round(epochs * spe))
    warmup = min(total, round(tc.warmup_epochs * spe)) if scratch else 0
    base_lr = (lr if lr is not None else (tc.lr if scratch else tc.lr * 0.1))
    opt = make_optimizer(net, tc, base_lr)
    loss_fn = LOSSES.get(tc.loss)
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    bar = tqdm(total=total, desc="retrain" + (" (scratch)" if scratch else " (fine-tune)"), unit="step",
               disable=not progress, dynamic_ncols=True)
    step = 0
    with GateUse(net) as gates:  # a gated net pays train.gate_cost for the rings it switches on
        while step < total:
            for x, y in loader.epoch(step // spe, step % spe):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, warmup, base_lr)
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
    net.eval()
    # An exit ensemble is fitted after the exits are trained, on training images (as the evaluator does).
    pick = torch.randperm(len(splits.train_x), generator=torch.Generator().manual_seed(seed))[:TRAIN_CACHE_IMAGES]
    fit_subnet_ensemble(net, splits.train_x[pick], splits.train_y[pick], splits.mean, splits.std, device=device)

    costs = exit_costs(net.cpu(), tuple(splits.train_x.shape[1:]))
    net.to(device)
    kind = meta.get("confidence", "maxprob")
    caches = {s: build_exit_cache(net, arch, getattr(splits, f"{s}_x"), getattr(splits, f"{s}_y"), splits.mean,
                                  splits.std, costs.macs, kind, device=device) for s in ("val", "test")}
    budget = float(meta["metrics"]["val"]["expected_mmacs"]) * 1e6
    thresholds = refit_thresholds(caches["val"], budget, seed=seed)
    res = {s: ExitPolicy(c).evaluate(thresholds) for s, c in caches.items()}
    metrics: dict[str, Any] = {
        s: {"accuracy": float(r.accuracy[0]), "expected_mmacs": float(r.expected_macs[0]) / 1e6,
            "exit_histogram": r.histogram[0].tolist(), "exit_accuracy": [float(a) for a in caches[s].exit_accuracy()]}
        for s, r in res.items()
    }
    new_meta = {k: v for k, v in meta.items() if k not in ("format", "files", "input", "mean", "std")}
    new_meta.update(thresholds=[float(t) for t in thresholds], costs=costs.to_dict(), metrics=metrics)
    new_meta["provenance"] = {
        **meta.get("provenance", {}),
        "source": "retrained from scratch" if scratch else "fine-tuned from the inherited weights",
        "retrain": {"epochs": epochs, "lr": base_lr, "seed": seed, "from": str(arch_json),
                    "thresholds_refit_on": "val", "mmacs_budget": budget / 1e6},
    }
    export = write_export(out, net, new_meta, list(splits.mean), list(splits.std), tuple(splits.train_x.shape[1:]))
    return RetrainResult(export, metrics["test"]["accuracy"], metrics["test"]["expected_mmacs"],
                         metrics["val"]["accuracy"], metrics["val"]["expected_mmacs"],
                         [float(t) for t in thresholds], epochs, time.perf_counter() - t0)
