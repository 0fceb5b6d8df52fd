"""The early-exit runtime: a ``StaticNet`` with its thresholds, and its deployed form.

:class:`EarlyExitRuntime` gives a single image an early-exit loop without a batch's
bookkeeping; :func:`deploy_early_exit` is that runtime as ``_deploy.deploy`` makes it
(BatchNorm folded, channels-last, frozen TorchScript), what the latency table times.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from exitnas._confidence import confidence
from exitnas.runtime._deploy import Normalise, channels_last, deploy
from exitnas.search_space import NoCombine

__all__ = ["EarlyExitRuntime", "deploy_early_exit", "plain_exits"]


def plain_exits(net: nn.Module) -> bool:
    """Whether each exit's logits are its head's own: no combiner (boost, ZTW) and no ensemble
    carries state from one exit to the next, so an exit can run and be judged alone."""
    return (all(isinstance(c, NoCombine) for c in getattr(net, "combiners", []))
            and getattr(net, "ensemble", None) is None)


class EarlyExitRuntime(nn.Module):
    """A ``StaticNet`` with its thresholds: ``_run(x)`` → (logits, exit index) per sample.

    A batch of one image takes a loop of its own: it stops at the first confident exit and
    returns that exit's logits as they are, where ``StaticNet.early_exit`` keeps the
    bookkeeping a batch needs (which samples left, gathering their logits), 50 µs per early
    leave and 12 µs per image on the benchmark's CPU. Both give the same exits and logits
    (a test checks). That loop runs only heads whose logits are the exit's (every combiner
    ``none``, no ensemble); a net whose exits combine takes ``StaticNet.early_exit`` at
    every batch size.
    """

    def __init__(self, net: nn.Module, thresholds: list[float], kind: str = "maxprob", patience: int = 0) -> None:
        """``patience`` ≥ 2 replaces the thresholds by the patience policy (PABEE; see
        ``evaluators.POLICIES``): leave at the first exit where the last ``patience`` exits
        predict the same class."""
        super().__init__()
        self.net = net
        self.kind = kind
        self.register_buffer("thresholds", torch.tensor(thresholds, dtype=torch.float32))
        self.single_loop = plain_exits(net)
        self.patience = int(patience)

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.patience > 0:
            if self.single_loop and x.shape[0] == 1:
                return self._run_one_patient(x)
            return self._run_all_patient(x)
        if self.single_loop and x.shape[0] == 1:
            return self._run_one(x)
        return self.net.early_exit(x, self.thresholds, self.kind)

    def _run_one_patient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One image under the patience policy: it stops at the exit where the run of equal
        predictions reaches ``patience`` (the final exit otherwise); later blocks never run."""
        with torch.no_grad():
            last = len(self.net.steps) - 1
            out = torch.empty([0])
            exit_k, run, prev_pred = last, 0, -1
            done = False
            for k, step in enumerate(self.net.steps):  # no `break`: see _run_one
                if not done:
                    x, logits = step(x, x)
                    pred = int(logits[0].argmax())
                    run = run + 1 if pred == prev_pred else 1
                    prev_pred = pred
                    if k == last:
                        out, done = logits, True
                    elif run >= self.patience:
                        out, exit_k, done = logits, k, True
            return out, torch.full([1], exit_k, dtype=torch.long, device=out.device)

    def _run_all_patient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A batch (or a net whose exits combine) under the patience policy: every exit runs, then
        each sample takes the first exit where its run of equal predictions reaches ``patience``."""
        with torch.no_grad():
            outs = self.net(x)
            preds = torch.stack([z.argmax(-1) for z in outs])  # K×N
            run = torch.ones_like(preds[0])
            leave = [run >= self.patience]
            for k in range(1, len(outs)):
                run = torch.where(preds[k] == preds[k - 1], run + 1, torch.ones_like(run))
                leave.append(run >= self.patience)
            leave[-1] = torch.ones_like(leave[-1])
            exit_k = torch.stack(leave).to(torch.int64).argmax(0)  # the first exit that lets it go
            logits = torch.stack(outs)[exit_k, torch.arange(x.shape[0], device=x.device)]
            return logits, exit_k

    def _run_one(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            last = len(self.net.steps) - 1
            out = torch.empty([0])
            exit_k = last
            done = False
            # No `break` (TorchScript unrolls loops over ModuleLists and forbids it there).
            for k, step in enumerate(self.net.steps):
                if not done:
                    x, logits = step(x, x)  # plain exits: the previous exit's logits are unread
                    if k == last:
                        out, done = logits, True
                    elif bool(confidence(logits, self.kind)[0] >= self.thresholds[k]):
                        out, exit_k, done = logits, k, True
            return out, torch.full([1], exit_k, dtype=torch.long, device=out.device)


class _EarlyExit(EarlyExitRuntime):
    """The early-exit runtime with fixed thresholds (and optionally the input normalisation)
    as ``forward``, for scripting and freezing."""

    def __init__(self, net: nn.Module, thresholds: list[float], kind: str, normalise: Normalise | None,
                 patience: int = 0) -> None:
        super().__init__(net, thresholds, kind, patience)
        self.normalise = normalise
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.normalise is not None:
            x = self.normalise(x)
        return self._run(channels_last(x))


def deploy_early_exit(net: nn.Module, thresholds: Sequence[float], kind: str = "maxprob",
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, patience: int = 0) -> torch.jit.ScriptModule:
    """The deployed early-exit runtime of a ``StaticNet``: ``x → (logits, exit)`` per sample.

    With ``mean`` and ``std`` it takes images in [0, 1] and runs the same ops as the exported
    :class:`~exitnas.results.EarlyExitModel`; without them it takes normalised inputs.
    ``patience`` ≥ 2 runs the patience policy instead of the thresholds.
    """
    normalise = Normalise(mean, std) if mean is not None and std is not None else None
    return deploy(_EarlyExit(net, [float(t) for t in thresholds], kind, normalise, patience), ("thresholds",))
