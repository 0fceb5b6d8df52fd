"""Confidence of an exit's prediction, the quantity thresholds are compared with."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CONFIDENCES", "confidence"]

#: Confidence measures by name; all map logits to [0, 1], higher = more sure.
CONFIDENCES = ("maxprob", "entropy")


def confidence(logits: Tensor, kind: str = "maxprob") -> Tensor:
    """Per-sample confidence in [0, 1] of ``logits`` (N×C).

    ``maxprob`` is the max softmax probability (MSDNet); ``entropy`` is ``1 - H(p)/log C``,
    so that both read "leave when confidence >= threshold".
    """
    p = torch.softmax(logits.float(), dim=-1)
    if kind == "maxprob":
        return p.max(dim=-1).values
    if kind == "entropy":
        h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
        # Rounding can put H a hair above log C (e.g. -2.4e-7 for uniform logits over 7 classes).
        return (1.0 - h / math.log(logits.shape[-1])).clamp_(0.0, 1.0)
    raise ValueError("unknown confidence " + kind + "; known: maxprob, entropy")
