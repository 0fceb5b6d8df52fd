"""Fixtures of the search tests: a tiny trained supernet, config and argv helpers, a PostgreSQL cluster.

Everything is real (no mocks): a supernet trained for one epoch on the built-in digits, Optuna
storages in ``tmp_path``, a PostgreSQL server started from the system's binaries on a loopback port.
"""

from __future__ import annotations

import copy
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from exitnas._config import ExperimentConfig, load_config
from exitnas.search_space import SearchSpace

HERE = Path(__file__).parent

#: A supernet small enough to train in a few seconds on two cores (8×8 digits).
TINY = [
    "data.name=digits",
    "space.channels=[8,16]",
    "space.depths=[1,2]",
    "space.widths=[0.5,1.0]",
    "space.ratios=[0.0,1.0]",
    "train.epochs=1",
    "train.batch_size=128",
    "train.progress=false",
]

#: Search settings every test shares: no progress bars, a short BN recalibration.
SEARCH_DEFAULTS: dict[str, Any] = {"progress": False, "recal_images": 256, "study": "test"}


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Overrides the root fixture: the tensors are tiny, and a second OpenMP thread on a shared
    # two-core machine only adds barrier waits.
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Trained:
    """A trained tiny supernet: its checkpoint, the config it was trained with, its space."""

    checkpoint: str
    config: dict[str, Any]
    space: SearchSpace
    val_images: int


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from exitnas.data import load_dataset
    from exitnas.training import load_checkpoint, space_for, train_supernet

    out = tmp_path_factory.mktemp("supernet")
    cfg = load_config(None, TINY + [f"train.out={out}"])
    splits = load_dataset(cfg.data)
    torch.set_num_threads(1)  # session fixtures are set up before the function-scoped _few_threads
    result = train_supernet(cfg, splits=splits)
    config = load_checkpoint(str(result.checkpoint))["config"]
    return Trained(str(result.checkpoint), config, space_for(cfg, splits), len(splits.val_y))


@pytest.fixture
def make_cfg(trained: Trained) -> Callable[..., ExperimentConfig]:
    """``make_cfg(storage, **search)``: the trained supernet's experiment with a search section."""

    def make(storage: str, **search: Any) -> ExperimentConfig:
        d = copy.deepcopy(trained.config)
        d["search"] = {**d.get("search", {}), **SEARCH_DEFAULTS, "storage": storage,
                       "checkpoint": trained.checkpoint, **search}
        return ExperimentConfig.from_dict(d)

    return make


@pytest.fixture
def search_args(trained: Trained) -> Callable[..., list[str]]:
    """``search_args(storage, *more)``: argv of ``exitnas search`` on the trained supernet."""

    def args(storage: str, *more: str) -> list[str]:
        out = ["search", "--checkpoint", trained.checkpoint, "--storage", storage, "--study", "test"]
        for k, v in SEARCH_DEFAULTS.items():
            if k != "study":
                out += ["--set", f"search.{k}={str(v).lower() if isinstance(v, bool) else v}"]
        return out + list(more)

    return args


def worker_env() -> dict[str, str]:
    """Environment of worker subprocesses: one thread each, Ray kept on loopback and quiet."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               # Ray binds its services to the node's address unless told it is a single-machine
               # cluster, and may report usage: keep everything on 127.0.0.1.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.fixture
def worker_cmd(tmp_path: Path) -> Callable[..., list[str]]:
    """``worker_cmd(cfg, worker, n_trials, *more)``: argv of ``_pg_worker.py`` for ``cfg`` (worker None: auto)."""

    def cmd(cfg: ExperimentConfig, worker: int | None, n_trials: int | None, *more: str) -> list[str]:
        path = tmp_path / f"config-{cfg.search.study}.yaml"
        path.write_text(cfg.to_yaml())
        return [sys.executable, str(HERE / "_pg_worker.py"), str(path), cfg.search.checkpoint or "",
                "auto" if worker is None else str(worker), "all" if n_trials is None else str(n_trials), *more]

    return cmd


@pytest.fixture
def env() -> dict[str, str]:
    return worker_env()


def free_port() -> int:
    """A loopback TCP port with nothing listening on it (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    return free_port()


def fresh_postgres_databases(url: str, n: int, tag: str) -> str:
    """Create ``n`` empty databases ``<tag>_0…`` on the server of ``url``; returns a URL template (``{r}``)."""
    import psycopg2

    server, _, _ = url.rpartition("/")
    conn = psycopg2.connect(url)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for r in range(n):
                cur.execute(f"CREATE DATABASE {tag}_{r}")
    finally:
        conn.close()
    return f"{server}/{tag}_{{r}}"


# -- PostgreSQL ------------------------------------------------------------------------------
def _pg_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[-3]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free loopback port; yields its URL.

    ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres``
    user (Debian's package creates it). Durability is switched off: the cluster lives for
    one test session.
    """
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="exitnas-pg-"))
    data, log = base / "data", base / "server.log"
    started = False
    try:
        if as_root:
            user = pwd.getpwnam("postgres")
            os.chown(base, user.pw_uid, user.pw_gid)
        _run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                       "--no-sync"], "initdb")
        port = free_port()
        opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=100")
        started = True  # from here on, stop it whatever happens
        _run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts,
                       "start"], "pg_ctl start", log)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        extra = log.read_text() if log is not None and log.is_file() else ""
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{extra}")
