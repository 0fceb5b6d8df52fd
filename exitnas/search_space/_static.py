"""Plain modules of one subnet: its exit steps, its forward and its early-exit forward."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from exitnas._confidence import confidence
from exitnas.search_space._combine import NoCombine
from exitnas.search_space._routing import ROUTINGS

__all__ = ["ExitStep", "StaticBlock", "StaticNet"]


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


class ExitStep(nn.Module):
    """Exit k of a subnet: ``segment`` (the blocks since exit k−1), ``head`` and ``combiner``.

    ``forward(x, prev)`` → (input of the blocks after it, exit k's logits ``F_k``), where
    ``prev`` is ``F_{k-1}`` (ignored at a subnet's ``first`` exit, which has nothing to build
    on; see ``_combine``). At a non-``final`` exit, ``routing`` (see ``_routing``) decides
    where the gradients of the exit's loss and of the deeper exits' losses flow; the values are the
    same for every routing. Every loop over a subnet's exits — ``StaticNet``'s forwards, the
    supernet's, the cost counter, the deployed runtimes — takes this one step.
    """

    def __init__(self, segment: nn.Module, head: nn.Module, combiner: Optional[nn.Module] = None,
                 first: bool = True, final: bool = True) -> None:
        super().__init__()
        self.segment, self.head = segment, head
        self.combiner = combiner if combiner is not None else NoCombine()
        self.first, self.final = first, final

    def forward(self, x: Tensor, prev: Tensor, routing: str = "shared", beta: float = 0.5) -> Tuple[Tensor, Tensor]:
        x = self.segment(x)
        feats = x
        # "shared" hands head and deeper blocks the same tensor; routings shape training
        # gradients only, so a scripted (deployed) net compiles none of them.
        if not torch.jit.is_scripting() and not self.final and routing != "shared":
            feats, x = self._route(x, routing, beta)
        logits = self.head(feats)
        if not self.first:
            logits = self.combiner(logits, prev)
        return x, logits

    @torch.jit.unused
    def _route(self, x: Tensor, routing: str, beta: float) -> Tuple[Tensor, Tensor]:
        return ROUTINGS.get(routing)(x, beta)


class StaticNet(nn.Module):
    """A subnet as ``steps[k]`` (:class:`ExitStep`: the blocks up to exit k, head k, combiner k).

    ``combiners[k](f_k, F_{k-1})`` turns head k's output into exit k's logits (see
    ``_combine``; the identity unless the space boosts or cascades its exits). An
    ``ensemble`` (``_ensemble``, Zero Time Waste) then replaces exit k's logits by its
    weighted product of exits 0..k. ``forward`` returns every exit's logits (for training
    and for checking against the supernet); ``early_exit`` stops at the first exit
    confident enough. ``segments``, ``heads`` and ``combiners`` list the steps' parts.
    """

    # Lists of the steps' parts, for Python callers; TorchScript loops over ``steps``.
    __jit_unused_properties__ = ["segments", "heads", "combiners"]

    def __init__(self, segments: List[nn.Module], heads: List[nn.Module],
                 combiners: Optional[List[nn.Module]] = None, ensemble: Optional[nn.Module] = None) -> None:
        super().__init__()
        if len(segments) != len(heads):
            raise ValueError("one segment per exit")
        combiners = combiners if combiners is not None else [NoCombine() for _ in heads]
        if len(combiners) != len(heads):
            raise ValueError("one combiner per exit")
        last = len(heads) - 1
        self.steps = nn.ModuleList(ExitStep(seg, head, comb, k == 0, k == last)
                                   for k, (seg, head, comb) in enumerate(zip(segments, heads, combiners)))
        self.ensemble = ensemble
        self._register_load_state_dict_pre_hook(_rename_parts)

    @property
    def num_exits(self) -> int:
        return len(self.steps)

    @property
    def segments(self) -> List[nn.Module]:
        return [step.segment for step in self.steps]

    @property
    def heads(self) -> List[nn.Module]:
        return [step.head for step in self.steps]

    @property
    def combiners(self) -> List[nn.Module]:
        return [step.combiner for step in self.steps]

    def forward(self, x: Tensor, routing: str = "shared", beta: float = 0.5, ensemble: bool = True) -> List[Tensor]:
        """Every exit's logits.

        Args:
            x: Normalised images, N×C×H×W.
            routing: Where a non-final exit's gradient flows in training (``train.routing``,
                see ``_routing``); the logits are the same for every routing.
            beta: The exit's share of the channels under the ``dfs`` routing.
            ensemble: ``False`` gives the exits' own logits, before the ensemble (what the
                ensemble is fitted to, and what training's losses see).
        """
        outs: List[Tensor] = []
        logp: List[Tensor] = []
        prev = torch.empty([0])
        k = 0
        for step in self.steps:
            x, prev = step(x, prev, routing, beta)
            outs.append(self._ensembled(prev, logp, k) if ensemble else prev)
            k += 1
        return outs

    def _ensembled(self, logits: Tensor, logp: List[Tensor], k: int) -> Tensor:
        """Exit k's logits after the ensemble (if any), given exits 0..k−1's in ``logp``."""
        if self.ensemble is None:
            return logits
        logp.append(torch.log_softmax(logits, 1))
        return self.ensemble(logp, k)

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
            last = len(self.steps) - 1
            idx = torch.arange(n, device=x.device)
            exit_out = torch.full([n], last, dtype=torch.long, device=x.device)
            logits_out = torch.empty([0])
            prev = torch.empty([0])
            logp: List[Tensor] = []
            k = 0
            done = False
            # No `break`: TorchScript unrolls loops over ModuleLists and forbids it there.
            for step in self.steps:
                if not done:
                    x, prev = step(x, prev)
                    logits = self._ensembled(prev, logp, k)
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


_PARTS = {"segments": "segment", "heads": "head", "combiners": "combiner"}


def _rename_parts(state: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Exports written before :class:`ExitStep` name the parts ``segments.k.…`` (etc.); such a
    state dict loads as ``steps.k.segment.…``."""
    for key in [k for k in state if k.startswith(prefix)]:
        part, _, rest = key[len(prefix):].partition(".")
        if part in _PARTS:
            k, _, name = rest.partition(".")
            state[f"{prefix}steps.{k}.{_PARTS[part]}.{name}"] = state.pop(key)
