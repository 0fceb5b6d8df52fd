"""Search spaces: :class:`ArchConfig`, :class:`SearchSpace`, the :class:`Supernet` and ``to_static``."""

from __future__ import annotations

from exitnas.search_space._arch import ARCH_FORMAT_VERSION, ArchConfig
from exitnas.search_space._candidate import CANDIDATE_FORMAT, Candidate, Measured
from exitnas.search_space._combine import COMBINERS, NoCombine
from exitnas.search_space._ensemble import ENSEMBLES, GeometricEnsemble, fit_ensemble
from exitnas.search_space._gate import (
    GATES,
    Gate,
    GatedMultiScaleConv2d,
    GateUse,
    RingMacs,
    gated_modules,
    ring_mask,
    without_rings,
)
from exitnas.search_space._heads import HEADS, ElasticHead
from exitnas.search_space._ops import MultiScaleConv2d
from exitnas.search_space._routing import ROUTINGS
from exitnas.search_space._space import SPACES, ArchBlock, SearchSpace, build_space
from exitnas.search_space._static import ExitStep, StaticBlock, StaticNet
from exitnas.search_space._supernet import Supernet

__all__ = [
    "ARCH_FORMAT_VERSION",
    "ArchBlock",
    "ArchConfig",
    "CANDIDATE_FORMAT",
    "Candidate",
    "Measured",
    "COMBINERS",
    "ENSEMBLES",
    "GeometricEnsemble",
    "fit_ensemble",
    "GATES",
    "Gate",
    "GatedMultiScaleConv2d",
    "GateUse",
    "MultiScaleConv2d",
    "NoCombine",
    "RingMacs",
    "HEADS",
    "ROUTINGS",
    "ElasticHead",
    "ExitStep",
    "SPACES",
    "SearchSpace",
    "StaticBlock",
    "StaticNet",
    "Supernet",
    "build_space",
    "gated_modules",
    "ring_mask",
    "without_rings",
]
