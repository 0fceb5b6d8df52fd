"""Plain modules of one subnet, and its early-exit forward."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from exitnas._confidence import confidence
from exitnas.search_space._combine import NoCombine

__all__ = ["StaticBlock", "StaticNet"]


class StaticBlock(nn.Module):
    """The plain residual block ``to_static`` makes of an elastic one."""

    def __init__(self, conv1: nn.Module, bn1: nn.Module, conv2: nn.Module, bn2: nn.Module,
                 shortcut: Optional[nn.Module]) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y))
        return (y + self.shortcut(x)).relu()


class StaticNet(nn.Module):
    """A subnet as ``segments[k]`` (blocks up to exit k) and ``heads[k]``.

    ``combiners[k](f_k, F_{k-1})`` turns head k's output into exit k's logits (see
    ``_combine``; the identity unless the space boosts or cascades its exits). An
    ``ensemble`` (``_ensemble``, Zero Time Waste) then replaces exit k's logits by its
    weighted product of exits 0..k. ``forward`` returns every exit's logits (for training
    and for checking against the supernet); ``early_exit`` stops at the first exit
    confident enough.
    """

    def __init__(self, segments: List[nn.Module], heads: List[nn.Module],
                 combiners: Optional[List[nn.Module]] = None, ensemble: Optional[nn.Module] = None) -> None:
        super().__init__()
        if len(segments) != len(heads):
            raise ValueError("one segment per exit")
        combiners = combiners if combiners is not None else [NoCombine() for _ in heads]
        if len(combiners) != len(heads):
            raise ValueError("one combiner per exit")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.combiners = nn.ModuleList(combiners)
        self.ensemble = ensemble

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor) -> List[Tensor]:
        outs: List[Tensor] = []
        logp: List[Tensor] = []
        prev = torch.empty([0])
        k = 0
        for seg, head, combine in zip(self.segments, self.heads, self.combiners):
            x = seg(x)
            logits = head(x)
            if k > 0:
                logits = combine(logits, prev)
            prev = logits
            if self.ensemble is not None:
                logp.append(torch.log_softmax(logits, 1))
                logits = self.ensemble(logp, k)
            outs.append(logits)
            k += 1
        return outs

    def early_exit(self, x: Tensor, thresholds: Tensor, kind: str = "maxprob") -> Tuple[Tensor, Tensor]:
        """Run exit by exit; a sample leaves at the first exit whose confidence reaches its threshold.

        Samples that have left are dropped from the batch, so later segments run only on the
        rest (at batch size 1 the network really stops). ``thresholds`` has one entry per
        non-final exit; every sample still in the batch leaves at the final exit.
        TorchScript compiles this method (the exported early-exit model calls it).

        Returns:
            (logits N×C of the exit each sample left at, exit index per sample).
        """
        with torch.no_grad():
            n = x.shape[0]
            last = len(self.heads) - 1
            idx = torch.arange(n, device=x.device)
            exit_out = torch.full([n], last, dtype=torch.long, device=x.device)
            logits_out = torch.empty([0])
            prev = torch.empty([0])
            logp: List[Tensor] = []
            k = 0
            done = False
            # No `break`: TorchScript unrolls loops over ModuleLists and forbids it there.
            for seg, head, combine in zip(self.segments, self.heads, self.combiners):
                if not done:
                    x = seg(x)
                    logits = head(x)
                    if k > 0:
                        logits = combine(logits, prev)
                    prev = logits
                    if self.ensemble is not None:
                        logp.append(torch.log_softmax(logits, 1))
                        logits = self.ensemble(logp, k)
                    if k == 0:
                        logits_out = torch.zeros([n, logits.shape[1]], dtype=logits.dtype, device=logits.device)
                    if k == last:
                        logits_out[idx] = logits
                        exit_out[idx] = k
                        done = True
                    else:
                        leave = confidence(logits, kind) >= thresholds[k]
                        if bool(leave.any()):
                            logits_out[idx[leave]] = logits[leave]
                            exit_out[idx[leave]] = k
                            stay = torch.logical_not(leave)
                            idx = idx[stay]
                            x = x[stay]
                            prev = prev[stay]
                            logp = [lp[stay] for lp in logp]
                            done = idx.numel() == 0
                k += 1
            return logits_out, exit_out
