"""Train the supernet once: sandwich sampling, in-place distillation, exact resume."""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from exitnas._config import EXIT_SETS, ExperimentConfig, TrainConfig
from exitnas._errors import ExitnasWarning, UserError
from exitnas._io import check_output_dir
from exitnas.data import GpuBatchLoader, ImageSplits, load_dataset
from exitnas.search_space import ROUTINGS, ArchConfig, SearchSpace, Supernet, build_space
from exitnas.training._checkpoint import check_recipe, check_space, load_checkpoint, load_weights, save_checkpoint
from exitnas.training._dist import (
    average_buffers,
    average_gradients,
    broadcast_parameters,
    init_distributed,
)
from exitnas.training._losses import LOSSES

__all__ = ["TrainResult", "gate_penalty", "load_supernet", "lr_at", "make_optimizer", "resolve_device",
           "sandwich_archs", "space_for", "train_loader", "train_supernet", "warn_if_all_warmup"]

CHECKPOINT_NAME = "supernet.pt"


@dataclass(frozen=True)
class TrainResult:
    """What one ``train_supernet`` call did; ``already_complete``: a resumed run that had
    already reached its last step, so nothing was trained."""

    checkpoint: Path
    steps: int
    images_per_s: float
    last_loss: float
    already_complete: bool = False


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA device is visible; use cpu or auto")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device {name!r} is not a device; use auto, cpu or cuda") from None


def space_for(cfg: ExperimentConfig, splits: ImageSplits) -> SearchSpace:
    """The search space the config names, sized for the dataset's channels and classes."""
    return build_space(cfg.space.name, in_channels=splits.in_channels, num_classes=splits.num_classes,
                       **cfg.space.options())


def sandwich_archs(space: SearchSpace, k: int, seed: int, step: int, exit_sets: str = "auto") -> list[ArchConfig]:
    """Largest, smallest and ``k`` random subnets for ``step``, with their exits.

    ``all``: an exit at every block. Exits do not change the backbone, so training every
    block end's head in every sampled subnet costs little and trains every candidate exit.
    ``sampled``: a random exit set per subnet, drawn as the search draws them. ``auto`` is
    ``sampled`` when exits are combined (``space.combine`` boost or ztw: exit k learns to
    correct the exits before it, and with an exit at every block it would learn to correct
    a chain of block-end exits that no searched arch has), else ``all``. Head types are
    drawn per exit. Seeded by (seed, step): every rank, and a resumed run, samples the same.
    """
    if exit_sets not in EXIT_SETS:  # a TrainConfig checks its own; this guards a direct call
        raise UserError(f"train.exit_sets {exit_sets!r} is not one of {', '.join(EXIT_SETS)}")
    rng = random.Random(seed * 1_000_003 + step)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(k)]
    if exit_sets == "sampled" or (exit_sets == "auto" and space.combine != "none"):
        return [space.with_random_exits(a, rng) for a in archs]
    return [space.with_all_exits(a.replace(exits=a.exits[-1:], heads=a.heads[-1:]), rng) for a in archs]


def gate_penalty(gate_use: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """Share of the gated convs' ring MACs the gates switched on (mean per sample), in [0, 1]."""
    used = torch.stack([u for u, _ in gate_use]).sum()
    return used / sum(total for _, total in gate_use)


def warn_if_all_warmup(tc: TrainConfig, epochs: float) -> None:
    """Warn when the warm-up lasts the whole run: the learning rate would only rise, never decay."""
    if 0 < epochs <= tc.warmup_epochs:
        warnings.warn(f"train.warmup_epochs {tc.warmup_epochs:g} >= the run's {epochs:g} epochs: the whole run is "
                      "warm-up and the learning rate never decays; lower train.warmup_epochs", ExitnasWarning,
                      stacklevel=2)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_supernet(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    stop_at_step: int | None = None,
    splits: ImageSplits | None = None,
    force: bool = False,
) -> TrainResult:
    """Train the supernet of ``cfg`` and write ``<train.out>/supernet.pt``.

    Args:
        cfg: The experiment.
        resume: Continue from ``<train.out>/supernet.pt`` if it exists.
        stop_at_step: Stop (with a checkpoint) after this many steps, as an interruption would.
        splits: Already loaded data (else loaded from ``cfg.data``).
        force: Train anew over an existing checkpoint (without it, and without ``resume``, an
            existing checkpoint is refused: nothing finished is overwritten unasked).

    Raises:
        UserError: ``train.out`` cannot be written, holds a checkpoint and neither ``resume``
            nor ``force`` is given, or (``resume``) holds one of another space or recipe.
    """
    _check_options(cfg.train)
    _check_out(cfg.train.out, resume, force)
    run = _Run.open(cfg, splits)
    step = run.resume() if resume and run.ckpt_path.exists() else 0
    if step >= run.total:  # a finished run resumed: nothing to train, and its config.yaml stays
        return TrainResult(run.ckpt_path, step, 0.0, float("nan"), already_complete=True)
    warn_if_all_warmup(cfg.train, cfg.train.epochs)
    broadcast_parameters(run.model, run.info)
    if run.info.is_main:
        run.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        (run.ckpt_path.parent / "config.yaml").write_text(cfg.to_yaml())
    end = run.total if stop_at_step is None else min(run.total, stop_at_step)
    return run.loop(step, end)


def _check_out(out: str, resume: bool, force: bool) -> None:
    """``out`` is a writable folder, and its checkpoint (if any) is resumed or replaced only if asked."""
    ckpt = check_output_dir(out, "train.out") / CHECKPOINT_NAME
    if ckpt.exists() and not (resume or force):
        raise UserError(f"{ckpt} exists; continue it with --resume, or train anew over it with --force")


def _check_options(tc: TrainConfig) -> None:
    # Its values are in range (a TrainConfig checks them when built), but a caller may have
    # built the config without exitnas._check: resolve its names before anything is written.
    LOSSES.get(tc.loss)
    ROUTINGS.get(tc.routing)


@dataclass
class _Run:
    """One training run's parts: where it runs, the model, its optimiser, schedule and data."""

    cfg: ExperimentConfig
    info: Any  # the distributed setting (rank, world size)
    device: torch.device
    space: SearchSpace
    model: Supernet
    opt: torch.optim.Optimizer
    sched: Any
    loader: GpuBatchLoader
    total: int
    ckpt_path: Path
    classes: tuple[str, ...]

    @classmethod
    def open(cls, cfg: ExperimentConfig, splits: ImageSplits | None) -> _Run:
        tc = cfg.train
        info = init_distributed("cuda" if resolve_device(tc.device).type == "cuda" else "cpu")
        device = resolve_device(tc.device, info.local_rank)
        splits = splits or load_dataset(cfg.data)
        space = space_for(cfg, splits)
        torch.manual_seed(tc.seed)
        model = Supernet(space).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            # A subnet's conv shapes recur (a few widths and ratios per block): autotune each once.
            torch.backends.cudnn.benchmark = True
        opt = make_optimizer(model, tc, tc.lr)
        if tc.batch_size % info.world:
            raise UserError(f"train.batch_size {tc.batch_size} does not split over {info.world} processes")
        loader = train_loader(tc, splits, device, tc.seed)
        spe = len(loader)
        if spe == 0:
            raise UserError(f"train.batch_size {tc.batch_size} is larger than the {len(splits.train_y)} "
                            "training images")
        total = max(1, round(tc.epochs * spe))
        warmup = min(total, round(tc.warmup_epochs * spe))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, warmup, 1.0))
        return cls(cfg, info, device, space, model, opt, sched, loader, total, Path(tc.out) / CHECKPOINT_NAME,
                   splits.classes)

    def resume(self) -> int:
        """Load the checkpoint's model, optimiser, schedule and RNG states; return its step."""
        state = load_checkpoint(self.ckpt_path, map_location=self.device)
        check_space(state, self.space, self.ckpt_path)
        check_recipe(state, yaml.safe_load(self.cfg.to_yaml()), self.ckpt_path)
        missing = [k for k in ("optimizer", "scheduler", "rng") if k not in state]
        if missing:
            raise UserError(f"checkpoint {self.ckpt_path} has no {missing[0]!r} state to resume from; "
                            "train anew with --force")
        load_weights(self.model, state, self.ckpt_path)
        kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.opt.param_groups]
        self.opt.load_state_dict(state["optimizer"])
        for group, mine in zip(self.opt.param_groups, kernels):  # a GPU run's fused update stays on the GPU
            group.update(mine)
        self.sched.load_state_dict(state["scheduler"])
        # RNG states are CPU byte tensors whatever map_location moved them to.
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([t.cpu() for t in state["rng"]["cuda"]])
        return int(state["step"])

    def save(self, step: int) -> None:
        state = _state(self.model, self.opt, self.sched, self.space, self.cfg, step, self.total)
        save_checkpoint(self.ckpt_path, {**state, "classes": list(self.classes)})

    def loop(self, step: int, end: int) -> TrainResult:
        """Train from ``step`` to ``end``, with a progress bar and checkpoints.

        The loss stays on the device and is read (a host synchronisation) only every
        ``train.log_every`` steps and at a checkpoint, so the host runs ahead of the GPU.
        """
        tc, info, spe = self.cfg.train, self.info, len(self.loader)
        bar = tqdm(total=end, initial=step, desc="train supernet", unit="step",
                   disable=not (tc.progress and info.is_main), dynamic_ncols=True)
        self.model.train()
        loss_sum, since, last_loss = torch.zeros((), device=self.device), 0, float("nan")
        seen, t0 = 0, time.perf_counter()
        while step < end:
            epoch, start = divmod(step, spe)
            for x, y in self.loader.epoch(epoch, start_batch=start):
                if info.world > 1:
                    x, y = x[info.rank :: info.world], y[info.rank :: info.world]
                loss_sum += self.step(x, y, step)
                step, since, seen = step + 1, since + 1, seen + len(y) * info.world
                saving = info.is_main and (step % tc.checkpoint_every == 0 or step == end)
                if since >= tc.log_every or saving or step >= end:
                    last_loss, since = float(loss_sum) / since, 0
                    loss_sum.zero_()
                    bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                bar.update(1)
                if saving:
                    self.save(step)
                if step >= end:
                    break
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # images/s counts finished work, not queued work
        ips = seen / max(1e-9, time.perf_counter() - t0)
        if info.is_main and not self.ckpt_path.exists():
            self.save(step)
        return TrainResult(self.ckpt_path, step, ips, last_loss)

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """One sandwich step: largest, smallest and random subnets, gradients summed; the mean
        loss, a 0-d tensor on the device (reading it would wait for the GPU)."""
        tc, model = self.cfg.train, self.model
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        self.opt.zero_grad(set_to_none=True)
        teacher, losses = None, []
        for i, arch in enumerate(sandwich_archs(self.space, tc.sandwich_random, tc.seed, step, tc.exit_sets)):
            with amp:
                gate_use: list[tuple[torch.Tensor, float]] = []
                logits = model(x, arch, tc.routing, tc.dfs_beta, gate_use)
                loss = LOSSES.get(tc.loss)(logits, y, teacher, tc.distill, tc.label_smoothing)
                if gate_use:
                    loss = loss + tc.gate_cost * gate_penalty(gate_use)
            loss.backward()
            if i == 0:
                teacher = logits[-1].detach()
            losses.append(loss.detach())
        average_gradients(model, self.info)
        average_buffers(model, self.info)
        self.opt.step()
        self.sched.step()
        return torch.stack(losses).float().mean()


def make_optimizer(model: nn.Module, tc: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on conv and linear weights only, not on BN
    scales and biases. On a GPU the fused kernel updates every parameter in a few launches
    (the supernet has ~200 parameters: a per-parameter update is ~1,000 launches a step)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    on_cuda = all(p.is_cuda for p in model.parameters())
    return torch.optim.SGD([{"params": decay, "weight_decay": tc.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=tc.momentum, nesterov=True, fused=True if on_cuda else None)


def train_loader(tc: TrainConfig, splits: ImageSplits, device: torch.device, seed: int) -> GpuBatchLoader:
    """The training images on ``device`` with the config's augmentation.

    ``crop_pad`` and ``flip`` left empty follow the images: pad = size/8, flips for 32 px and more.
    """
    pad = tc.crop_pad if tc.crop_pad is not None else max(1, splits.image_size // 8)
    flip = tc.flip if tc.flip is not None else splits.image_size >= 32
    return GpuBatchLoader(splits.train_x, splits.train_y, splits.mean, splits.std, tc.batch_size,
                          device=device, augment=tc.augment, pad=pad, flip=flip, seed=seed)


def _state(model: Supernet, opt: torch.optim.Optimizer, sched: Any, space: SearchSpace,
           cfg: ExperimentConfig, step: int, total: int) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng,
        "step": step,
        "total_steps": total,
        "space": space.to_dict(),
        "config": yaml.safe_load(cfg.to_yaml()),
        "threads": torch.get_num_threads(),  # the count this run trained with (results can differ by it)
    }


def load_supernet(path: str | Path, space: SearchSpace | None = None,
                  map_location: str | torch.device = "cpu") -> tuple[Supernet, dict[str, Any]]:
    """A trained supernet from its checkpoint (checked against ``space`` when given)."""
    state = load_checkpoint(path, map_location)
    sp = SearchSpace.from_dict(state["space"])
    if space is not None:
        check_space(state, space, path)
    model = Supernet(sp)
    load_weights(model, state, path)
    return model.to(map_location).eval(), state
