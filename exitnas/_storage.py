"""Storage URLs → Optuna storages.

- ``sqlite:///path.db``: one writer (a local search).
- ``journal:///path.log`` (or a path ending in ``.log``/``.jsonl``): Optuna's journal file,
  safe for several processes on one machine (DESIGN §8: SQLite with many writers is not).

File URLs follow one rule, SQLAlchemy's for SQLite (:func:`storage_path`): three slashes and a
relative path (``sqlite:///runs/x.db``, ``journal:///runs/x.log``), four for an absolute one
(``sqlite:////data/x.db``, ``journal:////data/x.log``).
- ``postgresql://…`` / ``postgresql+psycopg2://…``: a cluster; heartbeats mark a crashed
  worker's trial failed and it is retried.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from exitnas._errors import UserError

__all__ = ["open_storage", "storage_kind", "storage_path", "check_journal_file", "retry_creation_race",
           "clear_stale_journal_lock", "HEARTBEAT_INTERVAL", "GRACE_PERIOD", "STALE_LOCK_S"]

HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 20
#: A journal lock older than this is a dead process's: a live one holds it for one append and fsync.
STALE_LOCK_S = 10.0

T = TypeVar("T")

#: Messages of the errors two processes get when they create the same tables or study at one
#: instant (PostgreSQL's catalog unique index, SQLite's DDL, both on alembic_version, a busy SQLite file).
_RACE_MESSAGES = ("already exists", "pg_type_typname_nsp_index", "duplicate key", "database is locked",
                  "uniqueviolation", "unique constraint failed", "database schema has changed")


def storage_kind(url: str) -> str:
    """``sqlite``, ``journal`` or ``postgresql``; anything else → :class:`UserError`."""
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith("journal://") or url.endswith((".log", ".jsonl")):
        return "journal"
    if url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        return "postgresql"
    raise UserError(
        f"storage {url!r} is not a storage URL; use sqlite:///FILE.db, journal:///FILE.log or postgresql://USER@HOST:PORT/DB"
    )


def storage_path(url: str) -> Path | None:
    """The file a SQLite or journal URL names; ``None`` for a database server.

    One rule for both, SQLAlchemy's: what follows ``scheme:///`` is the path, so it is relative
    to the current folder (``sqlite:///runs/x.db`` → ``runs/x.db``) unless it starts with a
    fourth slash (``journal:////data/x.log`` → ``/data/x.log``). ``journal://runs/x.log``
    (two slashes) and a bare ``runs/x.log`` name the same relative file.
    """
    kind = storage_kind(url)
    if kind == "sqlite":
        return Path(url.removeprefix("sqlite:///"))
    if kind == "journal":
        for prefix in ("journal:///", "journal://"):
            if url.startswith(prefix):
                return Path(url.removeprefix(prefix))
        return Path(url)
    return None


def _make_parent(url: str, path: Path) -> None:
    """Create the folder a storage file goes in, or say in one line why it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = "absolute" if path.is_absolute() else "relative to the current folder"
        raise UserError(f"storage {url}: cannot create folder {path.parent} ({e.strerror}); the path is {where} "
                        "(three slashes: relative, four: absolute)") from None


def _fast_sqlite(storage: RDBStorage) -> None:
    """WAL journal with synchronous=NORMAL: one fsync per checkpoint instead of per commit.

    Optuna commits many times per trial; with the default rollback journal each commit costs
    an fsync (~20 ms on this machine's disk: 1.4 s per trial). WAL keeps the database
    consistent after a crash (at worst the last commits are lost, never half-written), and
    lets a reader such as optuna-dashboard read while the search writes.
    """
    from sqlalchemy import event

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating tables get the pragmas anew


def check_journal_file(path: Path) -> None:
    """Refuse, with one line, a file that exists but is not an Optuna journal.

    Every complete line of a journal is a JSON object with an ``op_code``; the last line may be
    cut short by a killed writer (Optuna skips it), so it is not judged.
    """
    if path.is_dir():
        raise UserError(f"storage {path} is a folder; a journal storage is a file (e.g. study.log)")
    if not path.is_file():
        return
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if line.endswith(b"\n") and not _is_journal_entry(line):
                    raise UserError(f"storage {path} is not an Optuna journal (line {number} is not a journal "
                                    "entry); point at a journal file or a new path")
    except OSError as e:
        raise UserError(f"storage {path} cannot be read ({e.strerror})") from None


def _is_journal_entry(line: bytes) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return False
    return isinstance(entry, dict) and "op_code" in entry


def retry_creation_race(make: Callable[[], T], attempts: int = 8) -> T:
    """``make()``, retried when it loses a creation race against another process.

    N workers started at one instant on a fresh database all create the same tables and study;
    every database lets one win and fails the others (issue 19: PostgreSQL's ``UniqueViolation
    … pg_type_typname_nsp_index``, SQLite's "table already exists" or "database is locked").
    The loser finds the winner's tables on its next try, so a short jittered retry suffices.
    """
    for attempt in range(attempts):
        try:
            return make()
        except Exception as e:  # noqa: BLE001 - SQLAlchemy wraps each driver's own error class
            if attempt == attempts - 1 or not any(m in str(e).lower() for m in _RACE_MESSAGES):
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")


def clear_stale_journal_lock(path: Path, older_than: float = STALE_LOCK_S) -> bool:
    """Remove the lock a SIGKILLed process left on a journal file; True if one was removed.

    Optuna's journal lock is a symlink ``FILE.log.lock``, held for one append and fsync. A
    process killed while holding it leaves it behind, and the next process waits out Optuna's
    30 s grace period (issue 19). A lock whose own age (``lstat``, not the journal's mtime)
    exceeds ``older_than`` is a dead process's: it is renamed away (one remover wins) and put
    back if, between the look and the rename, a live process had taken a fresh lock.
    """
    lock = Path(str(path) + ".lock")
    try:
        seen = os.lstat(lock)
    except FileNotFoundError:
        return False
    if time.time() - seen.st_mtime < older_than:
        return False
    moved = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(lock, moved)
    except FileNotFoundError:  # released or removed by another process meanwhile
        return False
    if os.lstat(moved).st_ino != seen.st_ino:  # a fresh lock: give it back to its holder
        try:
            os.symlink(os.readlink(moved), lock)
        finally:
            moved.unlink()
        return False
    moved.unlink()
    return True


def _open_journal(url: str, path: Path) -> optuna.storages.BaseStorage:
    clear_stale_journal_lock(path)
    try:
        # Optuna's own grace (30 s) applies to a lock that goes stale while this process runs.
        lock = JournalFileSymlinkLock(str(path), grace_period=int(STALE_LOCK_S))
        return retry_creation_race(lambda: JournalStorage(JournalFileBackend(str(path), lock_obj=lock)))
    except OSError as e:
        raise UserError(f"storage {url}: cannot open journal file ({e.strerror})") from None


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Open (creating tables or files as needed) the storage named by ``url``.

    Safe when several processes open a fresh database at once (:func:`retry_creation_race`);
    a journal lock left by a killed process is cleared first (:func:`clear_stale_journal_lock`).
    """
    kind = storage_kind(url)
    if kind == "journal":
        path = storage_path(url)
        assert path is not None
        check_journal_file(path)
        _make_parent(url, path)
        return _open_journal(url, path)
    if kind == "postgresql":
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; exitnas[postgres] ships psycopg2.
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                url = "postgresql+psycopg2://" + url.removeprefix(prefix)
    if kind == "sqlite":
        _make_parent(url, Path(url.removeprefix("sqlite:///")))
    engine_kwargs = {"connect_args": {"connect_timeout": 5}} if kind == "postgresql" else {}
    try:
        # Heartbeats are experimental in Optuna: silenced here, not for the caller's process.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs = {}
            if heartbeat:
                kwargs = {
                    "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "grace_period": GRACE_PERIOD,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=3),
                }
            storage = retry_creation_race(lambda: RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs))
        if kind == "sqlite":
            _fast_sqlite(storage)
        return storage
    except ImportError:
        raise UserError(f"storage {url}: its database driver is not installed; "
                        "pip install 'exitnas[postgres]'") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs one line
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"storage {url} cannot be opened: {msg}") from None
