"""The thread policy: how many CPU threads torch uses, set once by each process's entry point.

torch's default takes every core it sees; on a machine that other work shares, its OpenMP
threads then wait on each other (on 2 cores with a second job running, training ran 5-7×
slower with 2 threads than with 1). exitnas takes the physical cores this process may run on
(``os.sched_getaffinity``, hyper-threads counted once), or ``OMP_NUM_THREADS`` when set, and
one inter-op thread: its graphs are chains of small ops with nothing to run beside them.
The library never sets threads itself; the CLI (``--threads``, ``train.threads``) and each
Ray worker (one thread) do, once, at their start.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["default_threads", "physical_cores", "set_threads"]


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (at least 1).

    Read from ``/sys`` (core and package ids of each allowed CPU); where that is missing
    (not Linux), the allowed CPUs are counted as they are.
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: each CPU a core of its own
    return max(1, len(cores))


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is a positive integer (the user's choice for the machine),
    else :func:`physical_cores`."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else physical_cores()


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` intra-op threads (``None``: :func:`default_threads`) and one inter-op
    thread; returns the intra-op count.

    The inter-op count can be set only before torch's first parallel work; a later call
    (a second command in one process, a test) keeps the one it has.
    """
    n = default_threads() if threads is None else threads
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set, or parallel work has started: the pool exists and cannot be resized
    return n
