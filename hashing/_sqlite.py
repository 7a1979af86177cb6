"""Opening evidock's SQLite databases the one durable way (ledger, outbox, users, receiver).

Every database is a private file (0600; SQLite gives its -wal and -shm files
the same mode), in WAL mode with ``synchronous=FULL`` so that every commit
fsyncs the log: what was acknowledged survives a power cut. ``recursive_triggers``
makes INSERT OR REPLACE fire DELETE triggers, so an append-only table cannot be
rewritten by a careless statement. Migrations run under an exclusive lock file,
so two processes opening a new database at once do not both create it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing.errors import ConfigError

BUSY_TIMEOUT_MS = 60_000


def connect(path: Path, migrations: Migrations | None = None) -> sqlite3.Connection:
    """A connection to ``path`` (created 0600 if missing), usable from any thread
    behind the caller's lock, in autocommit mode (transactions are explicit).
    Raises ConfigError if SQLite refuses WAL mode, sqlite3.Error if the file is
    not a database."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"{path}: SQLite refused WAL mode ({mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA recursive_triggers = ON")
        if migrations is not None:
            lock = os.open(
                path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                migrations.apply(Database(conn))
            finally:
                os.close(lock)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (the caller holds its lock): ``BEGIN IMMEDIATE`` takes
    the database's write lock at once, so another process waits rather than fails
    midway; it returns after COMMIT (the WAL fsynced). On any error, or a failed
    COMMIT, what is still open is rolled back and the error raised. Not nestable:
    BEGIN raises if a transaction were left open."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # some errors have rolled it back already
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT may leave it open
            conn.execute("ROLLBACK")
        raise
