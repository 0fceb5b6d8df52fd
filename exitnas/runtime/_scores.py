"""The deployed form of an exit policy's score (``evaluators.POLICIES``), one exit at a time.

The evaluators score every exit of a cached split at once, in numpy (float64). A deployed
model decides at each exit as it reaches it, from that exit's logits and a small state the
earlier exits left: :class:`ExitScorer` is that decision in torch (float32), scriptable, the
same arithmetic as the evaluators' policies (a test checks both agree). Its own cost is what
``Policy.decision_macs`` counts: a softmax the threshold rule has anyway, and a few ops on
scalars per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, List, Tuple

import torch
from torch import Tensor, nn

from exitnas._confidence import confidence
from exitnas.search_space import GeometricEnsemble

__all__ = ["DEPLOYED_POLICIES", "FEATURES", "ExitScorer"]

#: The exit policies a deployed model runs.
DEPLOYED_POLICIES = ("threshold", "temperature", "patience", "decider", "ensemble")
#: Features of the learned decider (``evaluators.exit_features``), in that order.
FEATURES = 9


class ExitScorer(nn.Module):
    """Exit k's score in [0, 1] for each image, from exit k's logits and the earlier exits' state.

    ``forward(k, logits, state) → (score, state)``; the image leaves exit k when the score
    reaches that exit's threshold. ``start(n, like)`` is the state before exit 0. The runtime
    first passes each exit's logits through ``answer(k, logits, answers)`` (from
    ``start_answers(n, like)``): the exit's own, except under ``ensemble``, whose answer (and
    confidence) is the geometric ensemble of exits 0..k.

    Args:
        policy: ``threshold`` (the confidence ``kind``), ``temperature`` (max-softmax of the
            logits over exit k's temperature), ``patience`` (the run of equal classes over K) or
            ``decider`` (the learned decider's probability that leaving loses nothing) or
            ``ensemble`` (the confidence of Zero Time Waste's geometric ensemble of exits 0..k).
        num_exits: K, the net's exits.
        kind: The ``threshold`` policy's confidence (``maxprob`` or ``entropy``).
        params: The policy's fitted state as a candidate keeps it (``Candidate.params``):
            ``temperatures`` (K), the decider's ``models`` (K-1 vectors of mean, std, weights
            and bias over the features) or the ensemble's ``weight`` (K×K) and ``bias`` (K×C).
    """

    def __init__(self, policy: str, num_exits: int, kind: str = "maxprob",
                 params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if policy not in DEPLOYED_POLICIES:
            raise ValueError(f"unknown exit policy {policy!r}; known: {', '.join(DEPLOYED_POLICIES)}")
        params = params or {}
        self.policy = policy
        self.kind = kind
        self.num_exits = int(num_exits)
        temps = torch.ones(self.num_exits)
        models = torch.zeros(max(self.num_exits - 1, 1), 3 * FEATURES + 1)
        models[:, FEATURES : 2 * FEATURES] = 1.0  # unit std: harmless when there is no decider
        if policy == "temperature":
            temps = _tensor(params["temperatures"], (self.num_exits,), "temperatures")
        if policy == "decider" and self.num_exits > 1:
            models = _tensor(params["models"], (self.num_exits - 1, 3 * FEATURES + 1), "decider models")
        # The batch-of-one form works on Python floats (see ``one``): the standardisation folded
        # into each exit's weights, z = coef · features + const (never empty lists: TorchScript
        # infers their types from their elements).
        sd = models[:, FEATURES : 2 * FEATURES].double()
        coef = models[:, 2 * FEATURES : 3 * FEATURES].double() / sd
        const = models[:, 3 * FEATURES].double() - (coef * models[:, :FEATURES].double()).sum(1)
        self.coef = coef.tolist()
        self.const = const.tolist()
        self.temps = temps.double().tolist()
        # Under any other policy an ensemble of one class that is never called (TorchScript
        # compiles ``answer`` whatever the policy).
        self.ensemble = GeometricEnsemble(self.num_exits, 1)
        if policy == "ensemble":
            bias = torch.as_tensor(params["bias"], dtype=torch.float32)
            if bias.ndim != 2 or bias.shape[0] != self.num_exits:
                raise ValueError(f"the policy's ensemble bias has shape {tuple(bias.shape)}, not "
                                 f"({self.num_exits}, classes)")
            self.ensemble = GeometricEnsemble(self.num_exits, int(bias.shape[1]))
            self.ensemble.weight.data = _tensor(params["weight"], (self.num_exits, self.num_exits),
                                                "ensemble weights").tril()
            self.ensemble.bias.data = bias
        self.ensemble.requires_grad_(False)
        self.ens_weight = self.ensemble.weight.double().tolist()  # the batch-of-one form's (``answer_one``)
        self.ens_bias = self.ensemble.bias.double().tolist()
        # Row k of the ensemble's state, per exit k: where ``answer`` writes exit k's log-probabilities.
        self.register_buffer("rows", (torch.arange(self.num_exits)[:, None] == torch.arange(self.num_exits)[None, :])
                             .view(self.num_exits, 1, self.num_exits, 1))
        self.register_buffer("temperatures", temps)
        self.register_buffer("mu", models[:, :FEATURES].contiguous())
        self.register_buffer("sd", models[:, FEATURES : 2 * FEATURES].contiguous())
        self.register_buffer("w", models[:, 2 * FEATURES : 3 * FEATURES].contiguous())
        self.register_buffer("b", models[:, 3 * FEATURES].contiguous())

    @torch.jit.export
    def start_answers(self, n: int, like: Tensor) -> Tensor:
        """The ensemble's state before exit 0 of ``n`` images: N×K×C log-probabilities of the
        exits passed, zero until then (N×K×1 and unread under any other policy)."""
        return torch.zeros(n, self.num_exits, self.ensemble.bias.shape[1], device=like.device)

    @torch.jit.export
    def answer(self, k: int, logits: Tensor, answers: Tensor) -> Tuple[Tensor, Tensor]:
        """Exit k's answer and the ensemble's state after it: its own ``logits``, or under
        ``ensemble`` the geometric ensemble of exits 0..k, ``bias_k + Σ_{i≤k} w_ki · log p_i``.
        Out of place, on tensors of fixed shape: a recorded CUDA graph can replay it."""
        if self.policy != "ensemble":
            return logits, answers
        answers = torch.where(self.rows[k], torch.log_softmax(logits.float(), dim=1).unsqueeze(1), answers)
        # The weights past exit k are 0 (lower triangle), and so are those exits' rows.
        return torch.matmul(self.ensemble.weight[k], answers) + self.ensemble.bias[k], answers

    @torch.jit.export
    def answer_one(self, k: int, logits: Tensor, hist: List[float]) -> Tuple[List[float], float]:
        """:meth:`answer` for one image (``logits`` 1×C) in Python floats, with its confidence:
        at batch size 1 some hundred scalar steps cost less than the ensemble's tensor ops.
        ``hist`` holds exits 0..k-1's log-probabilities, one exit after another; exit k's are
        appended. (The log-softmax is one tensor op: the same in Python floats trips an
        internal assert of TorchScript 2.13's interpreter.)"""
        logp = torch.jit.annotate(List[float], torch.log_softmax(logits[0].float(), dim=0).tolist())
        n = len(logp)
        hist.extend(logp)
        w = self.ens_weight[k]
        ans = torch.jit.annotate(List[float], [])
        for c in range(n):
            ans.append(self.ens_bias[k][c])
        for i in range(k + 1):
            if w[i] != 0.0:
                for c in range(n):
                    ans[c] += w[i] * hist[i * n + c]
        top = ans[0]
        for c in range(1, n):
            if ans[c] > top:
                top = ans[c]
        total = 0.0
        plogp = 0.0
        for c in range(n):
            e = math.exp(ans[c] - top)
            total += e
            plogp += e * (ans[c] - top)
        if self.kind == "maxprob":
            return ans, 1.0 / total
        # 1 - H / log C, H = log Σ e^(a - top) - Σ p (a - top); clamped as exitnas._confidence does
        return ans, min(max(1.0 - (math.log(total) - plogp / total) / math.log(n), 0.0), 1.0)

    @torch.jit.export
    def start(self, n: int, like: Tensor) -> Tensor:
        """The state before exit 0 of ``n`` images (on ``like``'s device). Its 5 columns, carried
        from exit to exit: the previous exit's class (−1 before the first), the run of equal
        classes ending there, its max probability, the highest max probability so far, and their sum."""
        state = torch.zeros(n, 5, device=like.device)
        state[:, 0] = -1.0
        return state

    @torch.jit.export
    def start_one(self) -> List[float]:
        """The state before exit 0 of one image, as :meth:`one` takes it."""
        return [-1.0, 0.0, 0.0, 0.0, 0.0]

    @torch.jit.export
    def one(self, k: int, logits: Tensor, state: List[float]) -> Tuple[float, List[float]]:
        """:meth:`forward` for one image (``logits`` 1×C) in Python floats: at batch size 1 a
        handful of scalar steps costs less than the dozen small tensor ops of the batched form.
        Not for ``threshold`` (the runtime compares the confidence tensor itself)."""
        z = torch.jit.annotate(List[float], logits[0].float().tolist())
        scale = 1.0 / self.temps[k] if self.policy == "temperature" else 1.0
        top = z[0]
        pred = 0
        for i in range(1, len(z)):
            if z[i] > top:
                top, pred = z[i], i
        total = 0.0
        second = 0.0
        plogp = 0.0
        for i in range(len(z)):
            e = math.exp((z[i] - top) * scale)
            total += e
            if i != pred and e > second:
                second = e
            plogp += e * (z[i] - top)
        maxp = 1.0 / total
        if self.policy == "temperature":
            return maxp, state
        run = state[1] + 1.0 if float(pred) == state[0] else 1.0
        new_state = [float(pred), run, maxp, max(state[3], maxp), state[4] + maxp]
        if self.policy == "patience":
            return run / self.num_exits, new_state
        # Σ p log p = Σ p (z - top) - log Σ e^(z - top); entropy feature 1 - H / log C.
        ent = 1.0 + (plogp / total - math.log(total)) / math.log(len(z))
        p_prev = maxp
        if k > 0:
            p_prev = math.exp(z[int(state[0])] - top) / total if state[0] >= 0 else 0.0
        x = [maxp, maxp - second / total, ent, 1.0 if run > 1.0 else 0.0, run / self.num_exits, state[2], state[3],
             (state[4] + maxp) / (k + 1), p_prev]
        c = self.coef[k]
        v = self.const[k]
        for i in range(len(c)):
            v += c[i] * x[i]
        v = min(max(v, -60.0), 60.0)  # math.exp overflows past 709 in Python; sigmoid(±60) is 0 or 1 to 1e-26
        return 1.0 / (1.0 + math.exp(-v)), new_state

    def forward(self, k: int, logits: Tensor, state: Tensor) -> Tuple[Tensor, Tensor]:
        if self.policy == "threshold" or self.policy == "ensemble":  # the ensemble's: of its answer
            return confidence(logits, self.kind), state
        if self.policy == "temperature":
            return torch.softmax(logits.float() / self.temperatures[k], dim=-1).max(dim=-1).values, state
        p = torch.softmax(logits.float(), dim=-1)
        maxp, pred = p.max(dim=-1)
        prev_pred, run, prev_max, best, total = state.unbind(1)
        agree = (pred.float() == prev_pred).float()
        run = torch.where(agree > 0, run + 1.0, torch.ones_like(run))
        new_state = torch.stack([pred.float(), run, maxp, torch.maximum(best, maxp), total + maxp], dim=1)
        if self.policy == "patience":
            return run / self.num_exits, new_state
        top2 = p.topk(2, dim=-1).values
        ent = 1.0 - (-(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)) / math.log(p.shape[-1])
        if k == 0:
            p_prev_class = maxp
        else:
            p_prev_class = p.gather(1, prev_pred.clamp_min(0.0).long().unsqueeze(1)).squeeze(1)
        x = torch.stack([maxp, top2[:, 0] - top2[:, 1], ent, agree, run / self.num_exits, prev_max, best,
                         (total + maxp) / (k + 1), p_prev_class], dim=1)
        z = ((x - self.mu[k]) / self.sd[k]) @ self.w[k] + self.b[k]
        return torch.sigmoid(z), new_state


def _tensor(value: Any, shape: tuple[int, ...], what: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if tuple(t.shape) != shape:
        raise ValueError(f"the policy's {what} have shape {tuple(t.shape)}, not {shape}")
    return t
