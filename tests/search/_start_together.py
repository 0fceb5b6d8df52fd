"""One of N processes that start the same search at the same instant, round after round.

Used by ``test_workers.py``::

    python _start_together.py CONFIG.yaml BARRIER_DIR N ROUNDS URL_TEMPLATE

For each round ``r`` (a fresh database ``URL_TEMPLATE.format(r=r)``), the process writes
``BARRIER_DIR/r<r>-<pid>``, waits until N such files exist (all N processes are then within a
millisecond of each other), and runs one trial of the study through ``run_worker`` with no
worker identity (as a plain ``exitnas search`` would): study and table creation race on every
round. Prints ``round <r>: <trials completed here>``; exits non-zero on the first error.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch


def _barrier(folder: Path, round_: int, n: int, timeout: float = 120.0) -> None:
    (folder / f"r{round_}-{os.getpid()}").touch()
    end = time.monotonic() + timeout
    while len(list(folder.glob(f"r{round_}-*"))) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"round {round_}: fewer than {n} processes arrived in {timeout} s")
        time.sleep(0.001)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("barrier", type=Path)
    p.add_argument("n", type=int)
    p.add_argument("rounds", type=int)
    p.add_argument("url")
    a = p.parse_args()
    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the CLI's entry point does

    from exitnas._config import ExperimentConfig, load_config
    from exitnas.experiment import Experiment
    from exitnas.search import run_worker

    base = load_config(a.config)
    splits = Experiment(base).splits  # loaded once, before the first barrier
    for r in range(a.rounds):
        d = base.to_dict()
        d["search"]["storage"] = a.url.format(r=r)
        cfg = ExperimentConfig.from_dict(d)
        exp = Experiment(cfg, splits=splits)
        _barrier(a.barrier, r, a.n)
        print(f"round {r}: {run_worker(cfg, cfg.search.checkpoint or '', None, 1, exp=exp)}", flush=True)


if __name__ == "__main__":
    main()
