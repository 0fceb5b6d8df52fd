"""The early-exit runtime: a ``StaticNet`` with its exit policy, and its deployed form.

:class:`EarlyExitRuntime` gives a single image an early-exit loop without a batch's
bookkeeping; :func:`deploy_early_exit` is that runtime as ``_deploy.deploy`` makes it
(BatchNorm folded, channels-last, frozen TorchScript), what the latency table times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, List

import torch
from torch import Tensor, nn

from exitnas._confidence import confidence
from exitnas.runtime._deploy import Normalise, channels_last, deploy
from exitnas.runtime._scores import ExitScorer
from exitnas.search_space import NoCombine

__all__ = ["EarlyExitRuntime", "deploy_early_exit", "plain_exits"]


def plain_exits(net: nn.Module) -> bool:
    """Whether each exit's logits are its head's own: no combiner (boost, ZTW) and no ensemble
    carries state from one exit to the next, so an exit can run and be judged alone."""
    return (all(isinstance(c, NoCombine) for c in getattr(net, "combiners", []))
            and getattr(net, "ensemble", None) is None)


class EarlyExitRuntime(nn.Module):
    """A ``StaticNet`` with its exit policy: ``_run(x)`` → (logits, exit index) per sample.

    A batch of one image takes a loop of its own: it stops at the first exit whose score
    reaches its threshold and returns that exit's logits as they are, where
    ``StaticNet.early_exit`` keeps the bookkeeping a batch needs (which samples left, gathering
    their logits), 50 µs per early leave and 12 µs per image on the benchmark's CPU. Both give
    the same exits and logits (a test checks). That loop runs only heads whose logits are the
    exit's (every combiner ``none``, no ensemble); a net whose exits combine takes
    ``StaticNet.early_exit`` at every batch size.

    The score is the exit's confidence under the ``threshold`` policy, else the policy's own
    (:class:`~exitnas.runtime.ExitScorer`: temperature, patience, the learned decider, the
    confidence of the ensemble's answer, which is then what the exit returns), with ``params``
    as the candidate keeps them. A policy other than ``threshold`` on a batch (or on
    a net whose exits combine) runs every exit, then each sample takes its first exit whose
    score reaches the threshold.
    """

    def __init__(self, net: nn.Module, thresholds: list[float], kind: str = "maxprob", policy: str = "threshold",
                 params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.register_buffer("thresholds", torch.tensor(thresholds, dtype=torch.float32))
        self.single_loop = plain_exits(net)
        self.policy = policy
        self.scorer = ExitScorer(policy, len(thresholds) + 1, kind, params)
        # The batch-of-one scalar path's thresholds, and one never read: TorchScript infers a
        # list's type from its elements, and a net of one exit has no threshold.
        self.threshold_list = [float(t) for t in thresholds] + [math.inf]

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.single_loop and x.shape[0] == 1:
            return self._run_one(x)
        if self.policy == "threshold":
            return self.net.early_exit(x, self.thresholds, self.kind)
        return self._run_all_scored(x)

    def _run_one(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            last = len(self.net.steps) - 1
            out = torch.empty([0])
            exit_k = last
            done = False
            state = self.scorer.start_one()
            hist = torch.jit.annotate(List[float], [])
            # No `break` (TorchScript unrolls loops over ModuleLists and forbids it there).
            for k, step in enumerate(self.net.steps):
                if not done:
                    x, logits = step(x, x)  # plain exits: the previous exit's logits are unread
                    if self.policy == "ensemble":
                        ans, score = self.scorer.answer_one(k, logits, hist)
                        if k == last or score >= self.threshold_list[k]:
                            out, exit_k, done = torch.tensor([ans], device=logits.device), k, True
                    elif k == last:
                        out, done = logits, True
                    elif self.policy == "threshold":
                        if bool(confidence(logits, self.kind)[0] >= self.thresholds[k]):
                            out, exit_k, done = logits, k, True
                    else:
                        score, state = self.scorer.one(k, logits, state)
                        if score >= self.threshold_list[k]:
                            out, exit_k, done = logits, k, True
            return out, torch.full([1], exit_k, dtype=torch.long, device=out.device)

    def _run_all_scored(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A batch (or a net whose exits combine) under a policy's score: every exit runs, then
        each sample takes its first exit whose score reaches the threshold."""
        with torch.no_grad():
            answers = self.scorer.start_answers(x.shape[0], x)
            outs: List[Tensor] = []
            for k, z in enumerate(self.net(x)):
                z, answers = self.scorer.answer(k, z, answers)
                outs.append(z)
            state = self.scorer.start(x.shape[0], x)
            leave: List[Tensor] = []
            for k in range(len(outs) - 1):
                score, state = self.scorer(k, outs[k], state)
                leave.append(score >= self.thresholds[k])
            leave.append(torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
            exit_k = torch.stack(leave).to(torch.int64).argmax(0)  # the first exit that lets it go
            logits = torch.stack(outs)[exit_k, torch.arange(x.shape[0], device=x.device)]
            return logits, exit_k


class _EarlyExit(EarlyExitRuntime):
    """The early-exit runtime with its fixed policy (and optionally the input normalisation)
    as ``forward``, for scripting and freezing."""

    def __init__(self, net: nn.Module, thresholds: list[float], kind: str, normalise: Normalise | None,
                 policy: str = "threshold", params: Mapping[str, Any] | None = None) -> None:
        super().__init__(net, thresholds, kind, policy, params)
        self.normalise = normalise
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.normalise is not None:
            x = self.normalise(x)
        return self._run(channels_last(x))


def deploy_early_exit(net: nn.Module, thresholds: Sequence[float], kind: str = "maxprob",
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, policy: str = "threshold",
                      params: Mapping[str, Any] | None = None) -> torch.jit.ScriptModule:
    """The deployed early-exit runtime of a ``StaticNet``: ``x → (logits, exit)`` per sample.

    With ``mean`` and ``std`` it takes images in [0, 1] and runs the same ops as the exported
    :class:`~exitnas.results.EarlyExitModel`; without them it takes normalised inputs.
    ``policy`` and ``params`` run another exit policy's score (see :class:`EarlyExitRuntime`).
    """
    normalise = Normalise(mean, std) if mean is not None and std is not None else None
    return deploy(_EarlyExit(net, [float(t) for t in thresholds], kind, normalise, policy, params),
                  ("thresholds",))
