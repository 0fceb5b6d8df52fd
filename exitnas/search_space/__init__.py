"""Search spaces: :class:`ArchConfig`, :class:`SearchSpace`, the :class:`Supernet` and ``to_static``."""

from __future__ import annotations

from exitnas.search_space._arch import ARCH_FORMAT_VERSION, ArchConfig
from exitnas.search_space._candidate import CANDIDATE_FORMAT, Candidate, Measured
from exitnas.search_space._combine import COMBINERS
from exitnas.search_space._ensemble import ENSEMBLES, GeometricEnsemble, fit_ensemble
from exitnas.search_space._gate import GATES, GatedMultiScaleConv2d, RingMacs
from exitnas.search_space._heads import HEADS, ElasticHead
from exitnas.search_space._routing import ROUTINGS
from exitnas.search_space._space import SPACES, SearchSpace, build_space
from exitnas.search_space._static import StaticBlock, StaticNet
from exitnas.search_space._supernet import Supernet

__all__ = [
    "ARCH_FORMAT_VERSION",
    "ArchConfig",
    "CANDIDATE_FORMAT",
    "Candidate",
    "Measured",
    "COMBINERS",
    "ENSEMBLES",
    "GeometricEnsemble",
    "fit_ensemble",
    "GATES",
    "GatedMultiScaleConv2d",
    "RingMacs",
    "HEADS",
    "ROUTINGS",
    "ElasticHead",
    "SPACES",
    "SearchSpace",
    "StaticBlock",
    "StaticNet",
    "Supernet",
    "build_space",
]
