"""The receiver's database: what it holds of each station, open transfers, stored files.

One SQLite file (``receiver.db``, WAL, ``synchronous=FULL`` as the dock's
ledger): every commit fsyncs the WAL, so whatever the receiver has answered
OK for survives a power cut. Schema changes go through sqlite-utils'
migrations (style.md 12).

    checkpoints  every station checkpoint the receiver has seen; ``proven`` = 1
                 for those it accepted with a proof (the largest is "held"),
                 0 for those only seen on the dock's retained checkpoint topic
    refusals     checkpoints refused as a fork or rollback: what an operator reads
    transfers    unfinished uploads (one per station and file id)
    segments     the byte ranges of each transfer stored durably in the spool
    files        stored files and the signed receipt issued for each
    mirror       the EMQX path's copy of each station's ledger: every entry's exact
                 bytes, and ``mirror_nodes`` the RFC 9162 complete subtrees over
                 them, so any past root is O(log n) lookups (receiver.mirror)
    exports      what the EMQX receipt service made of each exported file it saw
                 (receipted, refused with the reason, waiting for the mirror)

``files`` and ``refusals`` are append-only (triggers refuse UPDATE and DELETE):
a receipt once issued and a refusal once recorded are statements, not state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing import _sqlite

migrations = Migrations("evidock.receiver")


@migrations()
def m001_receiver(db: Database) -> None:
    for sql in (
        "CREATE TABLE checkpoints (station TEXT NOT NULL, size INTEGER NOT NULL,"
        " root BLOB NOT NULL, origin TEXT NOT NULL, note TEXT NOT NULL,"
        " proven INTEGER NOT NULL, first_seen TEXT NOT NULL,"
        " PRIMARY KEY (station, size)) WITHOUT ROWID",
        "CREATE TABLE refusals (id INTEGER PRIMARY KEY, station TEXT NOT NULL,"
        " at TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL, note TEXT NOT NULL,"
        " note_sha256 TEXT NOT NULL, UNIQUE (station, kind, note_sha256))",
        "CREATE TABLE transfers (station TEXT NOT NULL, file_id TEXT NOT NULL,"
        " spool TEXT NOT NULL UNIQUE, name TEXT NOT NULL, size INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, meta BLOB NOT NULL, ttl_s INTEGER NOT NULL,"
        " created REAL NOT NULL, last_activity REAL NOT NULL,"
        " PRIMARY KEY (station, file_id))",
        "CREATE INDEX transfers_activity ON transfers (last_activity)",
        # start/length rather than offset: OFFSET is an SQL keyword.
        "CREATE TABLE segments (station TEXT NOT NULL, file_id TEXT NOT NULL,"
        " start INTEGER NOT NULL, length INTEGER NOT NULL, sha256 TEXT NOT NULL,"
        " PRIMARY KEY (station, file_id, start),"
        " FOREIGN KEY (station, file_id) REFERENCES transfers (station, file_id)"
        " ON DELETE CASCADE) WITHOUT ROWID",
        "CREATE TABLE files (station TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " size INTEGER NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,"
        " stored_at TEXT NOT NULL, receipt TEXT NOT NULL, meta BLOB NOT NULL,"
        " PRIMARY KEY (station, sha256))",
        "CREATE INDEX files_sha256 ON files (sha256)",
    ):
        db.execute(sql)
    for table in ("files", "refusals"):
        for op in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


@migrations()
def m002_mirror_and_exports(db: Database) -> None:
    for sql in (
        "CREATE TABLE mirror (station TEXT NOT NULL, seq INTEGER NOT NULL, raw BLOB NOT NULL,"
        " PRIMARY KEY (station, seq)) WITHOUT ROWID",
        "CREATE TABLE mirror_nodes (station TEXT NOT NULL, level INTEGER NOT NULL,"
        " idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (station, level, idx))"
        " WITHOUT ROWID",
        # One row per exported object as seen (key and fingerprint: its size and
        # mtime, or its ETag); status receipted | refused | waiting.
        "CREATE TABLE exports (source TEXT NOT NULL, key TEXT NOT NULL,"
        " fingerprint TEXT NOT NULL, station TEXT NOT NULL, file_id TEXT NOT NULL,"
        " status TEXT NOT NULL, detail TEXT NOT NULL, first_seen TEXT NOT NULL,"
        " updated TEXT NOT NULL, PRIMARY KEY (source, key, fingerprint)) WITHOUT ROWID",
    ):
        db.execute(sql)
    # A mirrored entry is the station's history: never rewritten, never removed.
    for table in ("mirror", "mirror_nodes"):
        for op in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


@migrations()
def m003_acknowledged(db: Database) -> None:
    # The receipts a station has recorded: its `upload_receipt` entry, as mirrored
    # (seq). A stored file without one is a receipt still owed to the dock.
    db.execute(
        "CREATE TABLE acknowledged (station TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " seq INTEGER NOT NULL, PRIMARY KEY (station, sha256)) WITHOUT ROWID"
    )


@dataclass(frozen=True)
class ExportRow:
    status: str  # receipted | refused | waiting
    detail: str
    station: str
    file_id: str


@dataclass(frozen=True)
class CheckpointRow:
    size: int
    root: bytes
    origin: str
    note: str
    proven: bool


@dataclass(frozen=True)
class Transfer:
    station: str
    file_id: str
    spool: str  # the transfer's spool folder name (random, never derived from input)
    name: str
    size: int
    seq: int
    meta: bytes  # the init payload as received
    ttl_s: int
    created: float
    last_activity: float


@dataclass(frozen=True)
class Segment:
    start: int
    length: int
    sha256: str

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class StoredFile:
    station: str
    sha256: str
    size: int
    seq: int
    name: str
    stored_at: str
    receipt: str


@dataclass(frozen=True)
class Refusal:
    station: str
    at: str
    kind: str
    detail: str
    note: str


_TRANSFER_COLUMNS = "station, file_id, spool, name, size, seq, meta, ttl_s, created, last_activity"


def _transfer(row: tuple[Any, ...]) -> Transfer:
    station, file_id, spool, name, size, seq, meta, ttl, created, last = row
    return Transfer(
        str(station),
        str(file_id),
        str(spool),
        str(name),
        int(size),
        int(seq),
        bytes(meta),
        int(ttl),
        float(created),
        float(last),
    )


class ReceiverDB:
    """Typed queries over ``receiver.db``. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = _sqlite.connect(path, migrations)
        self._lock = threading.RLock()
        self._grouped = False  # inside group(): tx() is a savepoint

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[None]:
        """A write transaction; returns after COMMIT (WAL fsynced), rolls back on any error.

        Inside ``group`` it is a SAVEPOINT instead: its changes are undone alone
        on an error, and kept otherwise, to be made durable by the group's
        COMMIT, or not at all.
        """
        with self._lock:
            if not self._grouped:
                with self._transaction():
                    yield
                return
            self._conn.execute("SAVEPOINT part")
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:  # some errors roll back the whole transaction
                    self._conn.execute("ROLLBACK TO part")
                    self._conn.execute("RELEASE part")
                raise
            self._conn.execute("RELEASE part")

    @contextmanager
    def group(self) -> Iterator[None]:
        """One transaction around several ``tx`` (the receiver's group commit).

        Returns after its COMMIT; rolls back on any error. Only the group's
        COMMIT makes what its ``tx`` did durable, so the caller must not
        answer for any of it before the group returns.
        """
        with self._lock:
            if self._grouped:
                raise RuntimeError("receiver.db: groups do not nest")
            self._grouped = True
            try:
                with self._transaction():
                    yield
            finally:
                self._grouped = False

    @property
    def in_group(self) -> bool:
        return self._grouped

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with _sqlite.write(self._conn):
            yield

    def _one(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    # -- checkpoints --------------------------------------------------------

    def held(self, station: str) -> CheckpointRow | None:
        """The largest checkpoint accepted with a proof: what the receiver holds the station to."""
        row = self._one(
            "SELECT size, root, origin, note FROM checkpoints WHERE station = ? AND proven = 1"
            " ORDER BY size DESC LIMIT 1",
            (station,),
        )
        if row is None:
            return None
        size, root, origin, note = row
        return CheckpointRow(int(size), bytes(root), str(origin), str(note), True)

    def checkpoint_at(self, station: str, size: int) -> CheckpointRow | None:
        row = self._one(
            "SELECT root, origin, note, proven FROM checkpoints WHERE station = ? AND size = ?",
            (station, size),
        )
        if row is None:
            return None
        root, origin, note, proven = row
        return CheckpointRow(size, bytes(root), str(origin), str(note), bool(proven))

    def put_checkpoint(
        self, station: str, size: int, root: bytes, origin: str, note: str, *, proven: bool, at: str
    ) -> None:
        """Record a checkpoint; a seen one that is now proven is marked so (same root only)."""
        self._run(
            "INSERT INTO checkpoints (station, size, root, origin, note, proven, first_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (station, size) DO UPDATE SET"
            " proven = max(proven, excluded.proven) WHERE root = excluded.root",
            (station, size, root, origin, note, int(proven), at),
        )

    def held_all(self) -> list[tuple[str, str]]:
        """(station, note) of every station's held checkpoint."""
        rows = self._all(
            "SELECT c.station, c.note FROM checkpoints c JOIN (SELECT station, max(size) AS size"
            " FROM checkpoints WHERE proven = 1 GROUP BY station) h"
            " ON c.station = h.station AND c.size = h.size ORDER BY c.station"
        )
        return [(str(s), str(n)) for s, n in rows]

    def refuse(
        self, station: str, kind: str, detail: str, note: str, note_sha256: str, at: str
    ) -> bool:
        """Record a refusal once per (station, kind, note); True if it is new."""
        return (
            self._run(
                "INSERT OR IGNORE INTO refusals (station, at, kind, detail, note, note_sha256)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (station, at, kind, detail, note, note_sha256),
            )
            > 0
        )

    def refusals(self, station: str | None = None) -> list[Refusal]:
        rows = self._all(
            "SELECT station, at, kind, detail, note FROM refusals"
            " WHERE ? IS NULL OR station = ? ORDER BY id",
            (station, station),
        )
        return [Refusal(*(str(v) for v in row)) for row in rows]

    # -- transfers and segments --------------------------------------------

    def transfer(self, station: str, file_id: str) -> Transfer | None:
        row = self._one(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE station = ? AND file_id = ?",  # noqa: S608 - fixed columns
            (station, file_id),
        )
        return None if row is None else _transfer(row)

    def transfers(self) -> list[Transfer]:
        rows = self._all(f"SELECT {_TRANSFER_COLUMNS} FROM transfers ORDER BY created")  # noqa: S608 - fixed columns
        return [_transfer(r) for r in rows]

    def expired(self, now: float) -> list[Transfer]:
        rows = self._all(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE last_activity + ttl_s < ?",  # noqa: S608 - fixed columns
            (now,),
        )
        return [_transfer(r) for r in rows]

    def open_transfers(self, station: str) -> int:
        row = self._one("SELECT count(*) FROM transfers WHERE station = ?", (station,))
        return 0 if row is None else int(row[0])

    def put_transfer(self, t: Transfer) -> None:
        """Insert a transfer, or update the description of one whose bytes stay the same."""
        self._run(
            f"INSERT INTO transfers ({_TRANSFER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed columns
            " ON CONFLICT (station, file_id) DO UPDATE SET name = excluded.name,"
            " seq = excluded.seq, meta = excluded.meta, ttl_s = excluded.ttl_s,"
            " last_activity = excluded.last_activity",
            (
                t.station,
                t.file_id,
                t.spool,
                t.name,
                t.size,
                t.seq,
                t.meta,
                t.ttl_s,
                t.created,
                t.last_activity,
            ),
        )

    def touch(self, station: str, file_id: str, now: float) -> None:
        self._run(
            "UPDATE transfers SET last_activity = max(last_activity, ?)"
            " WHERE station = ? AND file_id = ?",
            (now, station, file_id),
        )

    def drop_transfer(self, station: str, file_id: str) -> None:
        """Delete a transfer and (by cascade) its segment rows."""
        self._run("DELETE FROM transfers WHERE station = ? AND file_id = ?", (station, file_id))

    def segments(self, station: str, file_id: str) -> list[Segment]:
        rows = self._all(
            "SELECT start, length, sha256 FROM segments WHERE station = ? AND file_id = ?"
            " ORDER BY start",
            (station, file_id),
        )
        return [Segment(int(s), int(n), str(h)) for s, n, h in rows]

    def segment_count(self, station: str, file_id: str) -> int:
        row = self._one(
            "SELECT count(*) FROM segments WHERE station = ? AND file_id = ?", (station, file_id)
        )
        return 0 if row is None else int(row[0])

    def neighbours(
        self, station: str, file_id: str, start: int
    ) -> tuple[Segment | None, Segment | None]:
        """The stored segment starting at or before ``start``, and the first one after it.

        Stored segments never overlap, so these two are the only ones a new
        segment at ``start`` could overlap.
        """
        before = self._one(
            "SELECT start, length, sha256 FROM segments WHERE station = ? AND file_id = ?"
            " AND start <= ? ORDER BY start DESC LIMIT 1",
            (station, file_id, start),
        )
        after = self._one(
            "SELECT start, length, sha256 FROM segments WHERE station = ? AND file_id = ?"
            " AND start > ? ORDER BY start LIMIT 1",
            (station, file_id, start),
        )
        return (
            None if before is None else Segment(int(before[0]), int(before[1]), str(before[2])),
            None if after is None else Segment(int(after[0]), int(after[1]), str(after[2])),
        )

    def add_segment(self, station: str, file_id: str, seg: Segment) -> None:
        self._run(
            "INSERT INTO segments (station, file_id, start, length, sha256) VALUES (?, ?, ?, ?, ?)",
            (station, file_id, seg.start, seg.length, seg.sha256),
        )

    def drop_segment(self, station: str, file_id: str, start: int) -> None:
        self._run(
            "DELETE FROM segments WHERE station = ? AND file_id = ? AND start = ?",
            (station, file_id, start),
        )

    def drop_segments(self, station: str, file_id: str) -> None:
        self._run("DELETE FROM segments WHERE station = ? AND file_id = ?", (station, file_id))

    def spool_bytes(self, station: str) -> int:
        row = self._one("SELECT sum(length) FROM segments WHERE station = ?", (station,))
        return 0 if row is None or row[0] is None else int(row[0])

    # -- stored files ---------------------------------------------------------

    def file(self, station: str, sha256: str) -> StoredFile | None:
        row = self._one(
            "SELECT station, sha256, size, seq, name, stored_at, receipt FROM files"
            " WHERE station = ? AND sha256 = ?",
            (station, sha256),
        )
        if row is None:
            return None
        st, sha, size, seq, name, stored_at, receipt = row
        return StoredFile(
            str(st),
            str(sha),
            int(size),
            int(seq),
            str(name),
            str(stored_at),
            str(receipt),
        )

    def has_file(self, sha256: str) -> bool:
        return self._one("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (sha256,)) is not None

    def add_file(self, f: StoredFile, meta: bytes) -> None:
        self._run(
            "INSERT INTO files (station, sha256, size, seq, name, stored_at, receipt, meta)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (f.station, f.sha256, f.size, f.seq, f.name, f.stored_at, f.receipt, meta),
        )

    # -- the ledger mirror (EMQX path) ------------------------------------------

    def mirror_size(self, station: str) -> int:
        """How many of the station's entries are mirrored (they are 0 .. size-1)."""
        row = self._one("SELECT max(seq) FROM mirror WHERE station = ?", (station,))
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def mirror_entry(self, station: str, seq: int) -> bytes | None:
        row = self._one("SELECT raw FROM mirror WHERE station = ? AND seq = ?", (station, seq))
        return None if row is None else bytes(row[0])

    def mirror_node(self, station: str, level: int, index: int) -> bytes | None:
        row = self._one(
            "SELECT hash FROM mirror_nodes WHERE station = ? AND level = ? AND idx = ?",
            (station, level, index),
        )
        return None if row is None else bytes(row[0])

    def add_mirror(
        self,
        station: str,
        entries: list[tuple[int, bytes]],
        nodes: list[tuple[int, int, bytes]],
    ) -> None:
        """Append mirrored entries (seq, bytes) and the complete subtrees they close."""
        with self._lock:
            self._conn.executemany(
                "INSERT INTO mirror (station, seq, raw) VALUES (?, ?, ?)",
                [(station, seq, raw) for seq, raw in entries],
            )
            self._conn.executemany(
                "INSERT INTO mirror_nodes (station, level, idx, hash) VALUES (?, ?, ?, ?)",
                [(station, level, index, h) for level, index, h in nodes],
            )

    def acknowledge(self, station: str, receipts: list[tuple[str, int]]) -> None:
        """Note the station's ``upload_receipt`` entries (file sha256, entry seq)."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO acknowledged (station, sha256, seq) VALUES (?, ?, ?)",
                [(station, sha, seq) for sha, seq in receipts],
            )

    def unacknowledged(self, station: str, limit: int) -> list[str]:
        """Receipts of the station's stored files that its mirrored ledger does not
        record yet (oldest first): the signed notes, at most ``limit``."""
        rows = self._all(
            "SELECT f.receipt FROM files f LEFT JOIN acknowledged a"
            " ON a.station = f.station AND a.sha256 = f.sha256"
            " WHERE f.station = ? AND a.sha256 IS NULL ORDER BY f.stored_at, f.sha256 LIMIT ?",
            (station, limit),
        )
        return [str(r[0]) for r in rows]

    # -- exports (EMQX path) -------------------------------------------------------

    def export(self, source: str, key: str, fingerprint: str) -> ExportRow | None:
        row = self._one(
            "SELECT status, detail, station, file_id FROM exports"
            " WHERE source = ? AND key = ? AND fingerprint = ?",
            (source, key, fingerprint),
        )
        return None if row is None else ExportRow(*(str(v) for v in row))

    def put_export(
        self,
        source: str,
        key: str,
        fingerprint: str,
        row: ExportRow,
        at: str,
    ) -> None:
        """Record what became of an export; a later outcome replaces an earlier one."""
        self._run(
            "INSERT INTO exports (source, key, fingerprint, station, file_id, status, detail,"
            " first_seen, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (source, key, fingerprint) DO UPDATE SET status = excluded.status,"
            " detail = excluded.detail, station = excluded.station,"
            " file_id = excluded.file_id, updated = excluded.updated",
            (source, key, fingerprint, row.station, row.file_id, row.status, row.detail, at, at),
        )

    def exports(self, status: str | None = None) -> list[tuple[str, str, ExportRow]]:
        """(source, key, outcome) of every export seen, oldest first."""
        rows = self._all(
            "SELECT source, key, status, detail, station, file_id FROM exports"
            " WHERE ? IS NULL OR status = ? ORDER BY first_seen, source, key",
            (status, status),
        )
        return [(str(r[0]), str(r[1]), ExportRow(*(str(v) for v in r[2:]))) for r in rows]
