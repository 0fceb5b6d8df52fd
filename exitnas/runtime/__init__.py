"""Deployment: BatchNorm folding, the TorchScript early-exit runtime, CUDA graphs, the exported model.

Everything here runs a ``StaticNet`` (``exitnas.search_space``) as it ships; it imports no
evaluator, training or results code, so a deployment needs only this package, ``data`` and
``search_space``.
"""

from __future__ import annotations

from exitnas.runtime._deploy import Normalise, channels_last, deploy, fold_batchnorm
from exitnas.runtime._early_exit import EarlyExitRuntime, deploy_early_exit, plain_exits
from exitnas.runtime._graphs import GraphedEarlyExit
from exitnas.runtime._model import (
    EXPORT_FORMAT,
    POLICY_EXPORT_FORMAT,
    AllExits,
    EarlyExitModel,
    deploy_model,
    load_export,
    sha256_file,
    static_skeleton,
)
from exitnas.runtime._scores import DEPLOYED_POLICIES, FEATURES, ExitScorer

__all__ = [
    "DEPLOYED_POLICIES",
    "EXPORT_FORMAT",
    "AllExits",
    "EarlyExitModel",
    "EarlyExitRuntime",
    "ExitScorer",
    "FEATURES",
    "GraphedEarlyExit",
    "POLICY_EXPORT_FORMAT",
    "Normalise",
    "channels_last",
    "deploy",
    "deploy_early_exit",
    "deploy_model",
    "fold_batchnorm",
    "load_export",
    "plain_exits",
    "sha256_file",
    "static_skeleton",
]
