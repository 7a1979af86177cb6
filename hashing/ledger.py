"""The append-only ledger: a hash chain and an RFC 9162 Merkle tree in SQLite.

One SQLite file (WAL, ``synchronous=FULL``) holds the entries, every complete
interior subtree hash (so proofs never rescan the log, as C2SP tlog-tiles logs
store tiles), every signed checkpoint, and the state tables that entries
describe (the store's file index). An append happens inside a write
transaction together with the state change it records and returns only after
the commit, i.e. once the WAL is fsynced: an acknowledged entry survives a
power cut, and no state change exists without its entry.

Appends are serialised by a lock within the process and by ``BEGIN IMMEDIATE``
across processes, so a second process (the CLI beside the daemon) may open the
same ledger safely. Triggers refuse UPDATE and DELETE on the append-only tables:
not a defence against someone with the file (the verifier is), but against bugs.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing import _sqlite
from hashing.checkpoint import Checkpoint, CheckpointSigner, SignedCheckpoint
from hashing.entries import Entry, build_entry, clock_reading
from hashing.errors import ConfigError, InputError
from hashing.merkle import EMPTY_ROOT, SubtreeHasher, node_hash
from hashing.note import parse_note

migrations = Migrations("evidock.ledger")


@migrations()
def m001_ledger(db: Database) -> None:
    """Create the ledger's tables, and triggers keeping entries, nodes, checkpoints append-only."""
    for sql in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE entries (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, data BLOB NOT NULL)",
        "CREATE INDEX entries_type ON entries (type, seq)",
        # A complete subtree of 2**level leaves ending at leaf `end` (exclusive).
        # Keyed by (end, level) so a scan in key order meets nodes in the order
        # an appending writer creates them: the verifier compares in one pass.
        "CREATE TABLE nodes (end INTEGER NOT NULL, level INTEGER NOT NULL, hash BLOB NOT NULL,"
        " PRIMARY KEY (end, level)) WITHOUT ROWID",
        "CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, root BLOB NOT NULL,"
        " note TEXT NOT NULL, key_id TEXT NOT NULL, signed_at TEXT NOT NULL)",
        # State the ingest entries describe (content-addressed store index).
        "CREATE TABLE files (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " chunk_size INTEGER NOT NULL, chunk_root TEXT NOT NULL, chunks BLOB NOT NULL,"
        " seq INTEGER NOT NULL REFERENCES entries(seq), name TEXT NOT NULL)",
        "CREATE TABLE sources (source TEXT PRIMARY KEY, sha256 TEXT NOT NULL"
        " REFERENCES files(sha256), seq INTEGER NOT NULL)",
    ):
        db.execute(sql)
    for table in ("entries", "nodes", "checkpoints"):
        for op in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


@migrations()
def m002_no_replace(db: Database) -> None:
    """INSERT OR REPLACE deletes the old row without firing DELETE triggers (unless
    recursive_triggers is on in *that* connection): refuse the insert itself."""
    keys = {
        "entries": "seq = NEW.seq",
        "nodes": "end = NEW.end AND level = NEW.level",
        "checkpoints": "size = NEW.size",
    }
    for table, match in keys.items():
        db.execute(
            f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "  # noqa: S608 - fixed names
            f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {match}) "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


@migrations()
def m003_file_origin(db: Database) -> None:
    """Who and when, beside each stored file: tagging by device and time, show, reports."""
    for column in ("device", "officer", "recorded_at"):
        db.execute(f"ALTER TABLE files ADD COLUMN {column} TEXT")
    db.execute("CREATE INDEX files_device ON files (device, recorded_at)")


def node_key(level: int, index: int) -> tuple[int, int]:
    """(end, level) of the complete subtree (level, index)."""
    return (index + 1) << level, level


class LedgerTx:
    """A write transaction: appends and state changes commit together or not at all."""

    def __init__(self, ledger: Ledger, conn: sqlite3.Connection) -> None:
        self._ledger = ledger
        self.conn = conn
        row = conn.execute("SELECT seq, data FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        self.size = 0 if row is None else row[0] + 1
        self._prev = None if row is None else hashlib.sha256(row[1]).hexdigest()
        self.appended: list[Entry] = []

    def append(self, kind: str, body: Mapping[str, Any]) -> Entry:
        """Append the next entry of ``kind`` (this station, chained to the head, dated now).

        It is durable only when the transaction commits. Raises InputError if
        ``body`` cannot be canonical JSON.
        """
        entry = build_entry(
            seq=self.size, kind=kind, station=self._ledger.station, prev=self._prev, body=body
        )
        self.append_entry(entry)
        return entry

    def append_entry(self, entry: Entry) -> None:
        """Append an entry built by the caller (it must be the next one)."""
        if entry.seq != self.size or entry.prev != self._prev:
            raise InputError(f"entry {entry.seq} does not follow the ledger head {self.size}")
        self.conn.execute(
            "INSERT INTO entries (seq, type, data) VALUES (?, ?, ?)",
            (entry.seq, entry.type, entry.raw),
        )
        end = entry.seq + 1
        nodes = [(end, 0, entry.leaf)]
        level, index, h = 0, entry.seq, entry.leaf
        while index & 1:
            left = self._ledger._node(self.conn, level, index - 1)
            h = node_hash(left, h)
            level, index = level + 1, index >> 1
            nodes.append((end, level, h))
        self.conn.executemany("INSERT INTO nodes (end, level, hash) VALUES (?, ?, ?)", nodes)
        self.size += 1
        self._prev = entry.digest
        self.appended.append(entry)


class Ledger:
    """The station's ledger. Thread-safe; safe beside other processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise ConfigError(f"{path}: no ledger here; run `evidock init` first")
        self._conn = self._connect(path)
        self._lock = threading.RLock()
        self.station = self.meta("station")
        self.origin = self.meta("origin")

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        return _sqlite.connect(path)

    @classmethod
    def create(cls, path: Path, *, station: str, origin: str) -> Ledger:
        """Create the database file and its schema (idempotent for the schema)."""
        path.touch(mode=0o600, exist_ok=True)
        with cls._migration_lock(path):
            conn = cls._connect(path)
            try:
                db = Database(conn)
                migrations.apply(db)
                with db.atomic():
                    for key, value in (("station", station), ("origin", origin)):
                        conn.execute(
                            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value)
                        )
            finally:
                conn.close()
        return cls(path)

    @staticmethod
    @contextmanager
    def _migration_lock(path: Path) -> Iterator[None]:
        lock = path.with_name(path.name + ".lock")
        fd = lock.open("a")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fd.close()

    def migrate(self) -> None:
        """Bring the ledger's own schema up to date; run on every open, and a no-op when current."""
        self.apply_migrations(migrations)

    def apply_migrations(self, other: Migrations) -> None:
        """Apply a migration set (the ledger's, or another part's state tables)."""
        with self._migration_lock(self.path), self._lock:
            other.apply(Database(self._conn))

    def close(self) -> None:
        """Close the database connection; the Ledger cannot be used after."""
        with self._lock:
            self._conn.close()

    def meta(self, key: str) -> str:
        """A value from the ``meta`` table (``station``, ``origin``).

        Raises ConfigError if it is missing: the file is not an evidock ledger.
        """
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise ConfigError(f"{self.path}: ledger has no {key!r}; is it an evidock ledger?")
        return str(row[0])

    # -- writing -----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[LedgerTx]:
        """A durable write transaction; returns after COMMIT (WAL fsynced)."""
        with self._lock, _sqlite.write(self._conn):
            yield LedgerTx(self, self._conn)

    def append(self, kind: str, body: Mapping[str, Any]) -> Entry:
        """Append one entry in its own durable transaction; returns after the commit.

        Raises InputError if ``body`` cannot be canonical JSON.
        """
        with self.transaction() as tx:
            return tx.append(kind, body)

    # -- reading -----------------------------------------------------------

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one query under the ledger's lock and return every row.

        For reads of the side tables (style.md 5) and audits; a write belongs in
        ``transaction``, where it commits together with the entry that records it.
        """
        with self._lock:
            return list(self._conn.execute(sql, params))

    def size(self) -> int:
        """The number of entries, which is the current tree size."""
        with self._lock:
            row = self._conn.execute("SELECT max(seq) FROM entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def entry(self, seq: int) -> Entry:
        """Entry ``seq``, parsed. Raises InputError if there is none or its bytes do not parse."""
        with self._lock:
            row = self._conn.execute("SELECT data FROM entries WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise InputError(f"no entry {seq} (the ledger has {self.size()})")
        return Entry.parse(row[0])

    def raw_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(seq, bytes) in order, read in batches so memory stays flat."""
        stop = self.size() if end is None else end
        pos = start
        while pos < stop:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, data FROM entries WHERE seq >= ? AND seq < ? ORDER BY seq",
                    (pos, min(stop, pos + 4096)),
                ).fetchall()
            if not rows:
                return
            yield from ((int(s), bytes(d)) for s, d in rows)
            pos = rows[-1][0] + 1

    def entries_of_type(self, kind: str) -> Iterator[Entry]:
        """Every entry of one type, in ledger order, found by index rather than by a scan."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT data FROM entries WHERE type = ? ORDER BY seq", (kind,)
            ).fetchall()
        for (data,) in rows:
            yield Entry.parse(data)

    @staticmethod
    def _node(conn: sqlite3.Connection, level: int, index: int) -> bytes:
        row = conn.execute(
            "SELECT hash FROM nodes WHERE end = ? AND level = ?", node_key(level, index)
        ).fetchone()
        if row is None:
            raise InputError(f"ledger lacks tree node level {level} index {index}")
        return bytes(row[0])

    def _hasher(self) -> SubtreeHasher:
        return SubtreeHasher(lambda level, index: self._node(self._conn, level, index))

    def _check_size(self, size: int) -> None:
        have = self.size()
        if not 0 <= size <= have:
            raise InputError(f"tree size {size} is outside the ledger (it has {have} entries)")

    def leaf_hash(self, seq: int) -> bytes:
        """The stored leaf hash (RFC 9162 §2.1.1) of entry ``seq``; InputError if there is none."""
        with self._lock:
            return self._node(self._conn, 0, seq)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` entries (default: all) from stored subtrees (RFC 9162 §2.1.1).

        Raises InputError if ``size`` is outside the ledger or a stored node is missing.
        """
        with self._lock:
            size = self.size() if size is None else size
            self._check_size(size)
            return EMPTY_ROOT if size == 0 else self._hasher().root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 §2.1.3.1, from stored nodes.

        Raises InputError if ``size`` is outside the ledger, ValueError if ``index``
        is not a leaf of that tree.
        """
        with self._lock:
            self._check_size(size)
            return self._hasher().inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1, from stored nodes.

        Raises InputError if ``new_size`` is outside the ledger, ValueError if
        ``old_size`` is negative or larger than ``new_size``.
        """
        with self._lock:
            self._check_size(new_size)
            return self._hasher().consistency_proof(old_size, new_size)

    # -- checkpoints -------------------------------------------------------

    def sign_checkpoint(self, signer: CheckpointSigner) -> SignedCheckpoint:
        """Sign the current tree head if the log grew since the last checkpoint.

        Runs in a write transaction, so the size cannot move while it signs.
        Returns the latest signed checkpoint. Raises ForkError from the signer.
        """
        with self.transaction() as tx:
            latest = self._latest_checkpoint_locked()
            if latest is not None and latest.checkpoint.size == tx.size:
                return latest
            root = EMPTY_ROOT if tx.size == 0 else self._hasher().root(tx.size)
            signed = signer.sign(tx.size, root, self._hasher().consistency_proof)
            clock_time, _ = clock_reading()
            self._conn.execute(
                "INSERT INTO checkpoints (size, root, note, key_id, signed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (tx.size, root, signed.note, signer.signer.verifier.key_id_hex, clock_time),
            )
            return signed

    def _latest_checkpoint_locked(self) -> SignedCheckpoint | None:
        row = self._conn.execute(
            "SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _unverified_checkpoint(row[0])

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The newest stored checkpoint, parsed but not verified (callers verify)."""
        with self._lock:
            return self._latest_checkpoint_locked()

    def checkpoints(self) -> list[tuple[int, str, str]]:
        """(size, note, signed_at) of every stored checkpoint, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT size, note, signed_at FROM checkpoints ORDER BY size"
            ).fetchall()
        return [(int(s), str(n), str(t)) for s, n, t in rows]


def _unverified_checkpoint(note: str) -> SignedCheckpoint:
    text, _ = parse_note(note)
    return SignedCheckpoint(Checkpoint.parse(text), note)
