"""Multi-exit losses by name (issue-level options from the literature plug in here)."""

from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor

from exitnas._registry import Registry

__all__ = ["LOSSES", "MultiExitLoss", "plain_loss", "self_distill_loss"]

#: ``loss(exit_logits, targets, teacher_logits, distill, label_smoothing) -> scalar``.
MultiExitLoss = Callable[[list[Tensor], Tensor, Optional[Tensor], float, float], Tensor]
LOSSES: Registry[MultiExitLoss] = Registry("loss")


@LOSSES.register("plain", "equal-weight cross-entropy at every exit (MSDNet), + in-place distillation")
def plain_loss(logits: list[Tensor], y: Tensor, teacher: Optional[Tensor], distill: float,
               label_smoothing: float = 0.0) -> Tensor:
    """Mean over exits of CE, mixed with KL to ``teacher`` (the largest subnet's final exit).

    A mean rather than MSDNet's sum keeps the step size independent of how many exits a
    sampled subnet has. ``teacher`` is None for the largest subnet itself.
    """
    total = logits[0].new_zeros(())
    for z in logits:
        ce = F.cross_entropy(z.float(), y, label_smoothing=label_smoothing)
        if teacher is None or distill <= 0:
            total = total + ce
        else:
            kd = F.kl_div(F.log_softmax(z.float(), -1), F.softmax(teacher.float(), -1), reduction="batchmean")
            total = total + (1 - distill) * ce + distill * kd
    return total / len(logits)


@LOSSES.register("self-distill", "CE at every exit + distillation of each exit from the subnet's own deepest exit")
def self_distill_loss(logits: list[Tensor], y: Tensor, teacher: Optional[Tensor], distill: float,
                      label_smoothing: float = 0.0) -> Tensor:
    """Self-distillation: earlier exits learn from the same subnet's deepest exit, detached.

    The deepest exit itself learns from the labels, mixed with in-place distillation from
    ``teacher`` (the largest subnet) when there is one; the detach keeps the students' KL term
    from pulling the deepest exit towards them.
    """
    deepest = logits[-1]
    own = deepest.detach().float()
    total = plain_loss([deepest], y, teacher, distill, label_smoothing)
    for z in logits[:-1]:
        ce = F.cross_entropy(z.float(), y, label_smoothing=label_smoothing)
        kd = F.kl_div(F.log_softmax(z.float(), -1), F.softmax(own, -1), reduction="batchmean")
        total = total + (1 - distill) * ce + distill * kd
    return total / len(logits)
