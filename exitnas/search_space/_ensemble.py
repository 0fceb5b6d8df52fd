"""Zero Time Waste's geometric ensembling of a subnet's exits (Wołczyk et al. 2021).

Exit k's ensemble prediction is a weighted product of the probabilities of exits 0..k:

    q_k(x) ∝ exp(b_k) · Π_{i≤k} p_i(x)^{w_ki},   i.e.  logits_k = Σ_{i≤k} w_ki · log p_i(x) + b_k,

with weights ``w_ki ≥ 0`` and a bias per class ``b_k``. The exits are trained first; the
ensemble is fitted afterwards, per subnet, on training images with the network frozen
(:func:`fit_ensemble`). It starts as the identity (``w_kk = 1``, the rest 0): each exit's
prediction and confidence are then exactly its own.

``space.ensemble: geometric`` gives every subnet an ensemble; the evaluator fits it after
BatchNorm recalibration, on the training images of the "train" exit cache (never on val
or test), and the export carries it.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exitnas._registry import Registry

__all__ = ["ENSEMBLES", "GeometricEnsemble", "fit_ensemble"]

#: Exit ensembles by name (``space.ensemble``).
ENSEMBLES: Registry[str] = Registry("exit ensemble")
ENSEMBLES.register("none", "each exit predicts on its own (after its combiner)")("none")
ENSEMBLES.register("geometric", "Zero Time Waste: exit k predicts a weighted product of exits 0..k, fitted "
                                "on training images")("geometric")


class GeometricEnsemble(nn.Module):
    """``forward(logp, k)``: exit k's ensemble logits from the log-probabilities of exits 0..k.

    ``logp`` is a list of N×C log-softmaxes, exit 0 first; ``weight`` is K×K (lower
    triangle used, kept ≥ 0 by the fit), ``bias`` K×C.
    """

    def __init__(self, num_exits: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(num_exits))
        self.bias = nn.Parameter(torch.zeros(num_exits, num_classes))

    def forward(self, logp: List[Tensor], k: int) -> Tensor:
        out = self.bias[k] + self.weight[k, 0] * logp[0]
        for i in range(1, k + 1):
            out = out + self.weight[k, i] * logp[i]
        return out


@torch.enable_grad()
def fit_ensemble(ensemble: GeometricEnsemble, logits: List[Tensor], labels: Tensor, steps: int = 300,
                 lr: float = 0.05) -> List[float]:
    """Fit ``ensemble`` to exits' ``logits`` (K lists of N×C, the frozen network's) on ``labels``.

    Minimises the sum over exits of the ensemble's cross-entropy with Adam (full batch, a fixed
    number of steps: deterministic); weights are clipped at zero after each step and only the
    lower triangle is used. Returns the loss per exit after fitting.
    """
    logp = [F.log_softmax(z.detach().float(), dim=1) for z in logits]
    k = len(logp)
    opt = torch.optim.Adam(ensemble.parameters(), lr=lr)
    tril = torch.tril(torch.ones(k, k, dtype=torch.bool, device=ensemble.weight.device))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(ensemble(logp, j), labels) for j in range(k))
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        with torch.no_grad():
            ensemble.weight.clamp_(min=0).masked_fill_(~tril, 0.0)
    with torch.no_grad():
        return [float(F.cross_entropy(ensemble(logp, j), labels)) for j in range(k)]
