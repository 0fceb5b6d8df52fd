"""Multi-exit losses: the detached teacher terms carry no gradient into the teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exitnas.training import LOSSES


def test_self_distillation_does_not_pull_the_deepest_exit_towards_the_students() -> None:
    torch.manual_seed(0)
    y = torch.randint(0, 5, (6,))
    logits = [torch.randn(6, 5, requires_grad=True) for _ in range(3)]
    LOSSES.get("self-distill")(logits, y, None, 0.5, 0.0).backward()
    # The deepest exit's gradient is that of its own cross-entropy alone (scaled by 1/3 exits).
    deep = logits[-1].detach().clone().requires_grad_(True)
    (F.cross_entropy(deep, y) / 3).backward()
    torch.testing.assert_close(logits[-1].grad, deep.grad)
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in logits[:-1])


def test_in_place_distillation_teacher_gets_no_gradient() -> None:
    y = torch.randint(0, 5, (4,))
    teacher = torch.randn(4, 5, requires_grad=True)
    student = [torch.randn(4, 5, requires_grad=True)]
    LOSSES.get("plain")(student, y, teacher.detach(), 0.5, 0.0).backward()
    assert teacher.grad is None and student[0].grad is not None
