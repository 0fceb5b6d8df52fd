"""Training the supernet once (sandwich sampling, in-place distillation, checkpoints, DDP)."""

from __future__ import annotations

from exitnas.training._checkpoint import (
    atomic_write_bytes,
    check_space,
    load_checkpoint,
    save_checkpoint,
)
from exitnas.training._losses import LOSSES, plain_loss
from exitnas.training._trainer import (
    TrainResult,
    gate_penalty,
    load_supernet,
    lr_at,
    make_optimizer,
    resolve_device,
    sandwich_archs,
    space_for,
    train_loader,
    train_supernet,
    warn_if_all_warmup,
)

__all__ = [
    "LOSSES",
    "TrainResult",
    "atomic_write_bytes",
    "check_space",
    "gate_penalty",
    "load_checkpoint",
    "load_supernet",
    "lr_at",
    "make_optimizer",
    "plain_loss",
    "resolve_device",
    "sandwich_archs",
    "save_checkpoint",
    "space_for",
    "train_loader",
    "train_supernet",
    "warn_if_all_warmup",
]
