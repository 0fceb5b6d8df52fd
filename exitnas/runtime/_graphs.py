"""CUDA graphs per segment: the early-exit runtime at batch size 1 on a GPU.

At batch size 1 a small net on a GPU is bound by kernel launches: the host spends more time
launching each op than the GPU spends running it. A CUDA graph records a sequence of kernels
once and replays it with a single launch. An early-exit net cannot be one graph, because the
host must read each exit's decision before it knows whether to go on; so each step (segment k,
head k and the comparison ``score ≥ threshold_k``, the score being the confidence or an exit
policy's, see :class:`~exitnas.runtime.ExitScorer`) is its own graph. Step k reads step
k−1's output buffers directly (features, the policy's state, the ``ensemble`` policy's answers
so far), so going on costs one replay, and stopping costs one read of a bool from the GPU.

The steps are the subnet's own ``ExitStep``s, deployed by ``_deploy.deploy`` (BatchNorm folded, channels-last,
frozen TorchScript), the same as the exported model's. Only a net whose exits are plain
classifiers can be replayed this way: a combiner or a network's own ensemble
(``space.ensemble``) carries state between exits,
and an EMGNet gate picks its kernels per input, which a recorded graph cannot do.

Not yet run on a GPU in this project (the CPU tests cover the stepping through static
buffers with ``graphs=False``; ``tests/runtime/test_graphs.py`` has a CUDA test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from exitnas._confidence import CONFIDENCES
from exitnas._errors import UserError
from exitnas.runtime._deploy import Normalise, channels_last, deploy
from exitnas.runtime._early_exit import plain_exits
from exitnas.runtime._scores import ExitScorer
from exitnas.search_space import ExitStep, StaticNet, gated_modules

__all__ = ["GraphedEarlyExit"]


class _Step(nn.Module):
    """Exit step k (segment k, head k) and, except at the last exit, the decision (the policy's
    score ≥ threshold_k), as one module; freezing makes ``decide`` a constant, so the last step
    has no decision in its graph. The policy's state (see :class:`ExitScorer`) goes from step to
    step through its buffers, as the features do."""

    def __init__(self, step: ExitStep, k: int, threshold: Optional[float], scorer: ExitScorer,
                 normalise: Optional[Normalise]) -> None:
        super().__init__()
        self.normalise = normalise
        self.step = step
        self.k = k
        self.decide = threshold is not None
        self.threshold = float(threshold) if threshold is not None else 0.0
        self.scorer = scorer

    def forward(self, x: Tensor, state: Tensor, answers: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if self.normalise is not None:
            x = self.normalise(x)
        x, logits = self.step(x, x)  # plain exits: the previous exit's logits are unread
        logits, answers = self.scorer.answer(self.k, logits, answers)
        if self.decide:
            score, state = self.scorer(self.k, logits, state)
            leave = score >= self.threshold
        else:
            leave = torch.ones([logits.shape[0]], dtype=torch.bool, device=logits.device)
        return x, logits, leave, state, answers


class GraphedEarlyExit:
    """A ``StaticNet`` with its exit policy, one image at a time: ``run(x)`` → (logits 1×C, exit).

    Args:
        net: The subnet (eval mode, on its device); its exits must be plain classifiers.
        thresholds: One per non-final exit; "leave when the score ≥ threshold" (the score is
            the confidence under the ``threshold`` policy).
        input_shape: C×H×W of the one image ``run`` takes.
        kind: Confidence measure (``maxprob`` or ``entropy``).
        mean, std: If given, ``run`` takes images in [0, 1] and normalises them first, as the
            exported model does.
        graphs: Record each step as a CUDA graph (the net must be on a CUDA device). With
            ``False`` the steps run as plain calls through the same buffers.
        policy, params: The exit policy and its fitted state (``Candidate.policy``/``params``;
            see :class:`~exitnas.runtime.ExitScorer`).
    """

    def __init__(self, net: StaticNet, thresholds: Sequence[float], input_shape: Tuple[int, int, int],
                 kind: str = "maxprob", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 graphs: bool = True, policy: str = "threshold", params: Mapping[str, Any] | None = None) -> None:
        _check_plain(net, thresholds, kind)
        device = next(net.parameters()).device
        if graphs and device.type != "cuda":
            raise UserError(f"CUDA graphs need the net on a CUDA device, not {device.type}; "
                            "pass graphs=False or move the net to cuda")
        normalise = Normalise(mean, std).to(device) if mean is not None and std is not None else None
        last = net.num_exits - 1
        scorer = ExitScorer(policy, net.num_exits, kind, params)
        self.steps = [deploy(_Step(step, k, None if k == last else float(thresholds[k]), scorer,
                                   normalise if k == 0 else None).to(device).eval())
                      for k, step in enumerate(net.steps)]
        self.graphs = graphs
        self.input = channels_last(torch.zeros(1, *input_shape, device=device))
        self.start = scorer.start(1, self.input)  # the state before exit 0, never written
        self.start_answers = scorer.start_answers(1, self.input)  # the ensemble's, likewise
        self.outputs: list[Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []
        self.recorded: list[torch.cuda.CUDAGraph] = []
        with torch.no_grad():
            if graphs:
                self._record()

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Tuple[int, int, int], graphs: bool = True) -> GraphedEarlyExit:
        """From an :class:`~exitnas.results.EarlyExitModel` (e.g. ``load_export(dir)[0].cuda()``):
        its net, thresholds, confidence and input normalisation."""
        mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
        return cls(model.net, model.thresholds.tolist(), input_shape, model.kind, mean, std, graphs, model.policy,
                   _scorer_params(model.scorer))

    def _record(self) -> None:
        # Warm-up on a side stream before capture, as torch.cuda.graphs asks (lazy init, allocator).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                x, state, answers = self.input, self.start, self.start_answers
                for step in self.steps:
                    x, _, _, state, answers = step(x, state, answers)
        torch.cuda.current_stream().wait_stream(side)
        pool = None
        x, state, answers = self.input, self.start, self.start_answers
        for step in self.steps:
            g = torch.cuda.CUDAGraph()
            # One memory pool for all steps: they are recorded and always replayed in this order.
            with torch.cuda.graph(g, pool=pool):
                out = step(x, state, answers)
            pool = g.pool()
            self.recorded.append(g)
            self.outputs.append(out)
            x, state, answers = out[0], out[3], out[4]  # step k+1 reads step k's buffers as they are
        torch.cuda.synchronize()

    @torch.no_grad()
    def run(self, x: Tensor) -> Tuple[Tensor, int]:
        """Logits of the exit this image left at (a copy) and that exit's index."""
        if x.shape[0] != 1 or x.shape[1:] != self.input.shape[1:]:
            raise UserError(f"this runtime takes one image of shape {tuple(self.input.shape[1:])}, "
                            f"got a batch of shape {tuple(x.shape)}")
        self.input.copy_(x)
        last = len(self.steps) - 1
        feats, state, answers = self.input, self.start, self.start_answers
        for k, step in enumerate(self.steps):
            if self.graphs:
                self.recorded[k].replay()
                feats, logits, leave, state, answers = self.outputs[k]
            else:
                feats, logits, leave, state, answers = step(feats, state, answers)
            if k == last or bool(leave[0]):
                return logits.clone(), k
        raise AssertionError("the last step always returns")

    __call__ = run


def _check_plain(net: StaticNet, thresholds: Sequence[float], kind: str) -> None:
    if kind not in CONFIDENCES:
        raise UserError(f"unknown confidence {kind!r}; known: {', '.join(CONFIDENCES)}")
    if len(thresholds) != net.num_exits - 1:
        raise UserError(f"got {len(thresholds)} thresholds for a net with {net.num_exits} exits; "
                        f"give one per non-final exit ({net.num_exits - 1})")
    if not plain_exits(net) or gated_modules(net):
        raise UserError("CUDA graphs per segment need plain exits: this net combines its exits (boost, ZTW), "
                        "ensembles them or gates its multi-scale convs; run the exported TorchScript model")


def _scorer_params(scorer: ExitScorer) -> dict[str, Any]:
    """A fitted scorer's state as ``Candidate.params`` hold it (what :class:`ExitScorer` takes)."""
    models = torch.cat([scorer.mu, scorer.sd, scorer.w, scorer.b[:, None]], dim=1)
    return {"temperatures": scorer.temperatures.tolist(), "models": models.tolist(),
            "weight": scorer.ensemble.weight.tolist(), "bias": scorer.ensemble.bias.tolist()}
