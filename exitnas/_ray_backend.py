"""N Ray workers, each running ``study.optimize`` against the same storage.

The database stays the single source of truth (DESIGN §8: Ray Tune's OptunaSearch does not
write re-run trials back). A worker that dies loses only its running trial: the driver
fails it and enqueues its params again (the next workers would also find it, see
:func:`~exitnas._workers.fail_stale_trials`), then starts another round of workers until
the study has its trials.

Worker ``w`` of a round has identity ``base + w`` (its sampler seed and the ``worker`` user
attribute of its trials), ``base`` being the number of trials in the study when the round
starts (raised past the previous round's identities): identities from trial numbers, as a
plain worker's (its first trial's number), so a Ray round does not replay an earlier run's
seeds.
"""

from __future__ import annotations

import time
from typing import Any

from exitnas._config import ExperimentConfig
from exitnas._errors import UserError
from exitnas._workers import retry_lost_trials, run_worker, stored_completed, stored_trials

__all__ = ["run_ray_workers"]


MAX_ROUNDS = 3


def _worker(cfg_dict: dict[str, Any], checkpoint: str, worker: int, n_trials: int, threads: int) -> int:
    import optuna
    import torch

    from exitnas._trial_errors import one_line_trial_errors

    # A Ray worker is its own process's entry point: it sets what the CLI sets for its own.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    one_line_trial_errors()
    torch.set_num_threads(max(1, threads))
    return run_worker(ExperimentConfig.from_dict(cfg_dict), checkpoint, worker, n_trials)


def run_ray_workers(cfg: ExperimentConfig, checkpoint: str, trials_per_worker: int) -> int:
    """Start (or join, with ``search.ray_address``) a Ray cluster and run the workers."""
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError("the ray backend needs Ray: pip install 'exitnas[ray]'") from None
    sc = cfg.search
    started = not ray.is_initialized()
    if started:
        try:
            if sc.ray_address:
                ray.init(address=sc.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=sc.workers, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = sc.ray_address or "(local)"
            raise UserError(f"cannot reach the Ray cluster {where}: {str(e).splitlines()[0]}") from None
    try:
        cpus = int(ray.cluster_resources().get("CPU", sc.workers))
        threads = max(1, cpus // sc.workers)
        remote = ray.remote(num_cpus=1, num_gpus=sc.gpus_per_worker, max_retries=0)(_worker)
        bar = _progress(cfg)
        done_total, base = 0, stored_trials(cfg)
        for round_ in range(MAX_ROUNDS):
            done, lost = _round(cfg, remote, checkpoint, list(range(base, base + sc.workers)), trials_per_worker,
                                threads, bar)
            done_total += done
            if not lost or stored_completed(cfg) >= sc.trials:
                break
            print(f"exitnas: round {round_ + 1} lost {lost} worker(s); starting another round")
            base = max(stored_trials(cfg), base + sc.workers)
        return done_total
    finally:
        if started:
            ray.shutdown()


def _round(cfg: ExperimentConfig, remote: Any, checkpoint: str, workers: list[int], n_trials: int, threads: int,
           bar: Any) -> tuple[int, int]:
    """One round of workers; returns the trials they completed and how many workers died."""
    import ray

    futures = {remote.remote(cfg.to_dict(), checkpoint, w, n_trials, threads): w for w in workers}
    done = lost = 0
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, timeout=1.0)
        for f in ready:
            try:
                done += ray.get(f)
            except ray.exceptions.RayError as e:  # a worker died: its finished trials are stored
                retried = retry_lost_trials(cfg, futures[f])
                print(f"exitnas: search worker {futures[f]} failed: {str(e).splitlines()[0]}; its running trials "
                      f"failed and queued again: {retried}", flush=True)
                lost += 1
        if bar is not None:
            bar()
    return done, lost


def _progress(cfg: ExperimentConfig) -> Any:
    """A bar fed by the database (the workers' own bars would interleave)."""
    if not cfg.search.progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.search.trials, initial=stored_completed(cfg),
               desc=f"search ({cfg.search.workers} ray workers)", unit="trial", dynamic_ncols=True)
    last = [time.monotonic()]

    def refresh() -> None:
        if time.monotonic() - last[0] < 1.0:
            return
        last[0] = time.monotonic()
        bar.n = stored_completed(cfg)
        bar.refresh()

    return refresh
