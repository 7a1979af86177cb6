"""The durable outbox: what is to be uploaded, and how far each upload got.

``EVIDOCK_HOME/outbox.db`` (SQLite, WAL, ``synchronous=FULL``, 0600) beside the
ledger. It is derived from the ledger, never fed by callers: ``sync`` reads the
entries appended since its watermark and enqueues every ``ingest``, raises the
priority of ``tag``\\ ged files and closes files with an ``upload_receipt``. The
watermark moves in the same transaction as those changes, so an enqueue can
neither be lost (a crash before the commit reads the entries again) nor be
applied twice. Rebuilding the outbox from scratch is always possible and only
costs resending.

Per file (its SHA-256 is the EIP-0021 file id, design.md "Formats"):

    queued ──init OK──▶ initialised ──fin OK──▶ finished ──receipt──▶ receipted
       ▲                    │                      │
       └── reset (restart, fin "resend all") ◀─────┘
    any but receipted ──cancel / refusal──▶ failed ──`evidock upload retry`──▶ queued

``init_payload`` holds the exact init sent first (frozen: every later init of
the transfer sends these bytes again); ``reset`` keeps it, ``retry`` and
``thaw_init`` drop it. ``segments`` holds the byte ranges the platform confirmed; a resumed transfer
sends only the gaps. A range is recorded only after its result, so a crash
loses at most the confirmations in flight, which are resent (the receiver is
idempotent).

Every query is SQL with a bounded result: memory stays flat however many
files or gigabytes are queued.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing import _sqlite
from hashing.entries import INGEST, Entry, parse_time
from hashing.errors import ConfigError, InputError
from hashing.ledger import Ledger
from uploader.protocol import check_file_id

log = logging.getLogger(__name__)

TAG = "tag"  # agent.records.registry.TAG: uploader/ may not import agent/ (design.md "The parts")
UPLOAD_RECEIPT = "upload_receipt"

QUEUED, INITIALISED, FINISHED, RECEIPTED, FAILED = (
    "queued",
    "initialised",
    "finished",
    "receipted",
    "failed",
)
STATES = (QUEUED, INITIALISED, FINISHED, RECEIPTED, FAILED)
SENDABLE = (QUEUED, INITIALISED)
# Retention class (agent.records.registry.RETENTION_CLASSES) -> priority; lower goes first.
PRIORITY = {"long-term": 0, "evidence": 1, "routine": 2}
PRIORITY_NAMES = {v: k for k, v in PRIORITY.items()}
ROUTINE = PRIORITY["routine"]
SYNC_BATCH = 512  # ledger entries per sync transaction

migrations = Migrations("evidock.outbox")


@migrations()
def m001_outbox(db: Database) -> None:
    """The first schema: meta, transfers and their confirmed segments."""
    for sql in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE transfers ("
        " sha256 TEXT PRIMARY KEY,"
        " seq INTEGER NOT NULL,"  # the file's ingest entry
        " size INTEGER NOT NULL,"
        " name TEXT NOT NULL,"
        " recorded_at TEXT NOT NULL,"
        " priority INTEGER NOT NULL,"
        " state TEXT NOT NULL CHECK (state IN"
        "  ('queued', 'initialised', 'finished', 'receipted', 'failed')),"
        " enqueued_at REAL NOT NULL,"
        " updated_at REAL NOT NULL,"
        " finished_at REAL,"  # fin confirmed (or re-sent): the receipt clock starts here
        " receipted_at REAL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"  # inits sent
        " last_error TEXT)",
        # next_transfer(): the sendable files in upload order, read from the index alone.
        "CREATE INDEX transfers_next ON transfers (priority, recorded_at, seq)"
        " WHERE state IN ('queued', 'initialised')",
        "CREATE INDEX transfers_state ON transfers (state, finished_at)",
        "CREATE TABLE segments ("
        " sha256 TEXT NOT NULL REFERENCES transfers(sha256),"
        " offset INTEGER NOT NULL,"
        " length INTEGER NOT NULL CHECK (length > 0),"
        " PRIMARY KEY (sha256, offset)) WITHOUT ROWID",
    ):
        db.execute(sql)


@migrations()
def m002_frozen_init(db: Database) -> None:
    """The init payload of each transfer, frozen at its first init (issue 12).

    EMQX accepts a second init only if it equals the filemeta it stored
    (emqx_ft_storage_fs.erl ``store_filemeta``, else ``filemeta_conflict``), so
    every init of a transfer re-sends these exact bytes, across restarts. NULL
    until the first init; cleared only when the transfer starts over.
    """
    db.execute("ALTER TABLE transfers ADD COLUMN init_payload BLOB")


@dataclass(frozen=True)
class Transfer:
    """One file's row in the outbox."""

    sha256: str
    seq: int
    size: int
    name: str
    recorded_at: str
    priority: int
    state: str
    enqueued_at: float
    updated_at: float
    finished_at: float | None
    receipted_at: float | None
    attempts: int
    last_error: str | None
    confirmed: int  # bytes the platform confirmed

    @property
    def retention(self) -> str:
        """The retention class the priority stands for (``long-term``, ...)."""
        return PRIORITY_NAMES.get(self.priority, str(self.priority))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for `evidock upload status`."""
        return {
            "sha256": self.sha256,
            "seq": self.seq,
            "size": self.size,
            "name": self.name,
            "recorded_at": self.recorded_at,
            "retention": self.retention,
            "state": self.state,
            "confirmed_bytes": self.confirmed,
            "enqueued_at": self.enqueued_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "receipted_at": self.receipted_at,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


_COLUMNS = (
    "t.sha256, t.seq, t.size, t.name, t.recorded_at, t.priority, t.state, t.enqueued_at,"
    " t.updated_at, t.finished_at, t.receipted_at, t.attempts, t.last_error,"
    " (SELECT coalesce(sum(s.length), 0) FROM segments s WHERE s.sha256 = t.sha256)"
)


def _transfer(row: tuple[Any, ...]) -> Transfer:
    return Transfer(*row)


class Outbox:
    """The outbox database. Thread-safe (one connection behind a lock); safe beside
    other processes (``evidock upload retry`` while the daemon runs)."""

    STATES = STATES

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._conn = _sqlite.connect(path, migrations)
        except sqlite3.Error as e:
            raise ConfigError(f"{path}: cannot open the outbox: {e}") from e

    @classmethod
    def for_home(cls, home: Path) -> Outbox:
        """``home/outbox.db``, beside the ledger. Raises ConfigError if it cannot be opened."""
        return cls(home / "outbox.db")

    def close(self) -> None:
        """Close the database; the outbox is unusable afterwards."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _sqlite.write(self._conn) as conn:
            yield conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- meta ----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A value the uploader remembers across runs (``held_size``, ...), or None."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Remember ``value`` under ``key`` (durable when it returns)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @property
    def watermark(self) -> int:
        """The next ledger seq ``sync`` will read."""
        value = self.get_meta("watermark")
        return int(value) if value is not None else 0

    # -- from the ledger ---------------------------------------------------------

    def sync(self, ledger: Ledger) -> int:
        """Apply the ledger entries appended since the watermark; returns how many were read.

        Raises InputError if an entry does not parse (the ledger is damaged:
        ``evidock ledger verify`` says where); the entries before it are applied,
        nothing from it on.
        """
        read = 0
        batch: builtins.list[Entry] = []
        try:
            for _seq, raw in ledger.raw_entries(self.watermark):
                batch.append(Entry.parse(raw))
                if len(batch) >= SYNC_BATCH:
                    self._apply(batch)
                    read, batch = read + len(batch), []
        finally:
            if batch:
                self._apply(batch)
                read += len(batch)
        return read

    def _apply(self, entries: builtins.list[Entry]) -> None:
        now = time.time()
        watermark = entries[-1].seq + 1
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
            if row is not None and int(row[0]) >= watermark:
                return  # another process applied these meanwhile
            for entry in entries:
                try:
                    self._apply_one(conn, entry, now)
                except (KeyError, TypeError, ValueError, InputError) as e:
                    # A body this version cannot read; the verifier reports it. Skipping
                    # it here only means that file is not uploaded automatically.
                    log.error("outbox: entry %d (%s) not understood: %s", entry.seq, entry.type, e)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('watermark', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(watermark),),
            )

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, entry: Entry, now: float) -> None:
        body = entry.body
        if entry.type == INGEST:
            recorded = body.get("recorded_at") or body.get("source_mtime") or entry.time
            size = body["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"size {size!r}")
            conn.execute(
                "INSERT OR IGNORE INTO transfers (sha256, seq, size, name, recorded_at,"
                " priority, state, enqueued_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    check_file_id(str(body["sha256"])),
                    entry.seq,
                    size,
                    str(body.get("name") or ""),
                    str(recorded),
                    ROUTINE,
                    now,
                    now,
                ),
            )
        elif entry.type == TAG:
            priority = PRIORITY.get(str(body.get("retention")), ROUTINE)
            files = body.get("files") or ()
            conn.executemany(
                "UPDATE transfers SET priority = ? WHERE sha256 = ? AND priority > ?",
                [(priority, str(f), priority) for f in files],
            )
        elif entry.type == UPLOAD_RECEIPT:
            # Covers a crash between appending the receipt and marking it here.
            sha = str(body["sha256"])
            conn.execute(
                "UPDATE transfers SET state = 'receipted', receipted_at = ?,"
                " updated_at = ?, last_error = NULL WHERE sha256 = ? AND state != 'receipted'",
                (parse_time(entry.time).timestamp(), now, sha),
            )
            conn.execute("DELETE FROM segments WHERE sha256 = ?", (sha,))

    # -- reading -------------------------------------------------------------

    def get(self, sha256: str) -> Transfer | None:
        """One file's row with its confirmed bytes, or None if the outbox does not know it."""
        rows = self._query(f"SELECT {_COLUMNS} FROM transfers t WHERE t.sha256 = ?", (sha256,))  # noqa: S608
        return _transfer(rows[0]) if rows else None

    def next_transfer(self) -> Transfer | None:
        """The file to send next: highest retention class, then oldest recording, then
        oldest entry (design.md step 7)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM transfers t"  # noqa: S608 - fixed column list
            " WHERE t.state IN ('queued', 'initialised')"
            " ORDER BY t.priority, t.recorded_at, t.seq LIMIT 1"
        )
        return _transfer(rows[0]) if rows else None

    def peek_next(self) -> tuple[str, int] | None:
        """(sha256, priority) of ``next_transfer()``, from the index alone: the sender
        asks before every segment whether a higher class is waiting."""
        rows = self._query(
            "SELECT sha256, priority FROM transfers WHERE state IN ('queued', 'initialised')"
            " ORDER BY priority, recorded_at, seq LIMIT 1"
        )
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def brief(self, sha256: str) -> tuple[str, int] | None:
        """(state, priority) of one file, without summing its confirmed ranges."""
        rows = self._query("SELECT state, priority FROM transfers WHERE sha256 = ?", (sha256,))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def awaiting_receipt(self, older_than: float, limit: int = 16) -> builtins.list[Transfer]:
        """Finished transfers whose fin was confirmed before ``older_than`` (time.time())
        and still have no receipt: their fin is due again."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM transfers t"  # noqa: S608
            " WHERE t.state = 'finished' AND t.finished_at < ?"
            " ORDER BY t.finished_at LIMIT ?",
            (older_than, limit),
        )
        return [_transfer(r) for r in rows]

    def next_gap(self, sha256: str, pos: int, size: int, segment: int) -> tuple[int, int] | None:
        """The next unconfirmed range at or after ``pos``, at most ``segment`` bytes long:
        (offset, length), or None when [pos, size) is all confirmed."""
        with self._lock:
            while pos < size:
                row = self._conn.execute(
                    "SELECT offset, length FROM segments WHERE sha256 = ? AND offset + length > ?"
                    " ORDER BY offset LIMIT 1",
                    (sha256, pos),
                ).fetchone()
                if row is None:
                    return pos, min(segment, size - pos)
                offset, length = int(row[0]), int(row[1])
                if offset <= pos:
                    pos = offset + length
                    continue
                return pos, min(segment, offset - pos, size - pos)
        return None

    def confirmed_ranges(self, sha256: str) -> builtins.list[tuple[int, int]]:
        """(offset, length) of each confirmed range, in order (diagnostics, tests)."""
        rows = self._query(
            "SELECT offset, length FROM segments WHERE sha256 = ? ORDER BY offset", (sha256,)
        )
        return [(int(o), int(n)) for o, n in rows]

    def confirmed_bytes(self, sha256: str) -> int:
        """Bytes of ``sha256`` the platform confirmed (0 for an unknown file)."""
        rows = self._query(
            "SELECT coalesce(sum(length), 0) FROM segments WHERE sha256 = ?", (sha256,)
        )
        return int(rows[0][0])

    def summary(self) -> dict[str, Any]:
        """For `evidock status` and `evidock upload status`.

        ``counts`` per state; ``unreceipted`` files (and ``pending_bytes``) are
        those still on their way: queued, initialised or finished (failed ones
        wait for an operator and are only counted); ``confirmed_bytes`` of the
        unfinished ones already confirmed; ``oldest_unsent`` the recording time
        of the oldest file not yet assembled by the platform, ``oldest_enqueued_at``
        when it entered the outbox; ``last_receipt`` (time.time()) or None.
        """
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._query("SELECT state, count(*) FROM transfers GROUP BY state"):
            counts[str(state)] = int(n)
        files, size = self._query(
            "SELECT count(*), coalesce(sum(size), 0) FROM transfers"
            " WHERE state IN ('queued', 'initialised', 'finished')"
        )[0]
        oldest, enqueued = self._query(
            "SELECT min(recorded_at), min(enqueued_at) FROM transfers"
            " WHERE state IN ('queued', 'initialised')"
        )[0]
        confirmed = self._query(
            "SELECT coalesce(sum(s.length), 0) FROM segments s JOIN transfers t"
            " ON t.sha256 = s.sha256 WHERE t.state IN ('queued', 'initialised')"
        )[0][0]
        last = self._query("SELECT max(receipted_at) FROM transfers")[0][0]
        return {
            "counts": counts,
            "unreceipted": int(files),
            "pending_bytes": int(size),
            "confirmed_bytes": int(confirmed),
            "oldest_unsent": oldest,
            "oldest_enqueued_at": enqueued,
            "last_receipt": last,
            "watermark": self.watermark,
        }

    def list(self, limit: int = 50, state: str | None = None) -> builtins.list[dict[str, Any]]:
        """Rows for `evidock upload status` (Transfer.as_dict, JSON-ready): files on
        their way first, in upload order, then failed, then receipted."""
        if state is not None and state not in STATES:
            raise InputError(f"state {state!r}: choose one of {', '.join(STATES)}")
        where = "" if state is None else "WHERE t.state = ?"
        params: tuple[Any, ...] = (limit,) if state is None else (state, limit)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM transfers t {where}"  # noqa: S608 - fixed text
            " ORDER BY t.state = 'receipted', t.state = 'failed', t.priority, t.recorded_at,"
            " t.seq LIMIT ?",
            params,
        )
        return [_transfer(r).as_dict() for r in rows]

    # -- writing (the uploader's worker) ---------------------------------------

    def _set(self, sha256: str, sql: str, params: tuple[Any, ...], states: tuple[str, ...]) -> bool:
        marks = ",".join("?" * len(states))
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE transfers SET {sql}, updated_at = ? WHERE sha256 = ? AND state IN ({marks})",  # noqa: S608
                (*params, time.time(), sha256, *states),
            )
            return cur.rowcount > 0

    def mark_initialised(self, sha256: str) -> bool:
        """init confirmed: the platform opened the transfer; counts an attempt.
        False if the file is no longer queued or initialised."""
        return self._set(
            sha256, "state = 'initialised', attempts = attempts + 1", (), (QUEUED, INITIALISED)
        )

    def confirm_segment(self, sha256: str, offset: int, length: int) -> bool:
        """Record a range the platform confirmed (only after its result: never before)."""
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM transfers WHERE sha256 = ?", (sha256,)).fetchone()
            if row is None or row[0] not in SENDABLE:
                return False
            conn.execute(
                "INSERT OR IGNORE INTO segments (sha256, offset, length) VALUES (?, ?, ?)",
                (sha256, offset, length),
            )
            return True

    def mark_finished(self, sha256: str) -> bool:
        """fin confirmed: the platform assembled and checked the file; a receipt is due.
        Also restarts the receipt clock of a file whose fin was sent again."""
        return self._set(
            sha256,
            "state = 'finished', finished_at = ?, last_error = NULL",
            (time.time(),),
            (QUEUED, INITIALISED, FINISHED),
        )

    def mark_receipted(self, sha256: str) -> bool:
        """Only after the ``upload_receipt`` entry is in the ledger."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE transfers SET state = 'receipted', receipted_at = ?, updated_at = ?,"
                " last_error = NULL WHERE sha256 = ? AND state != 'receipted'",
                (time.time(), time.time(), sha256),
            )
            conn.execute("DELETE FROM segments WHERE sha256 = ?", (sha256,))
            return cur.rowcount > 0

    def mark_failed(self, sha256: str, error: str) -> bool:
        """The platform cancelled the transfer or refused the file: an operator looks
        (``evidock upload retry``); it is never retried on its own."""
        return self._set(
            sha256,
            "state = 'failed', last_error = ?",
            (error,),
            (QUEUED, INITIALISED, FINISHED),
        )

    def note_error(self, sha256: str, error: str | None) -> None:
        """A transient problem worth showing (quota, broker refusal); the state stays."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE transfers SET last_error = ? WHERE sha256 = ? AND last_error IS NOT ?",
                (error, sha256, error),
            )

    def frozen_init(self, sha256: str) -> bytes | None:
        """The init payload frozen for this transfer, or None (none sent yet)."""
        rows = self._query("SELECT init_payload FROM transfers WHERE sha256 = ?", (sha256,))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def freeze_init(self, sha256: str, payload: bytes) -> bool:
        """Store the init payload before it is first sent (durable when it returns). Only
        the first one is kept: False if one was frozen already or the file is unknown."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE transfers SET init_payload = ? WHERE sha256 = ? AND init_payload IS NULL",
                (payload, sha256),
            )
            return cur.rowcount > 0

    def thaw_init(self, sha256: str) -> None:
        """Drop the frozen init: the next init is built afresh (the platform asked for
        newer provenance)."""
        with self._tx() as conn:
            conn.execute("UPDATE transfers SET init_payload = NULL WHERE sha256 = ?", (sha256,))

    def reset(self, sha256: str) -> bool:
        """Start the transfer over (EIP-0021 "restart": the platform lost the segments, or
        its assembled file did not match): drop the confirmations, back to queued. The
        frozen init stays: it is the same transfer, and EMQX still holds its filemeta."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE transfers SET state = 'queued', finished_at = NULL, updated_at = ?"
                " WHERE sha256 = ? AND state IN ('queued', 'initialised', 'finished')",
                (time.time(), sha256),
            )
            conn.execute("DELETE FROM segments WHERE sha256 = ?", (sha256,))
            return cur.rowcount > 0

    def retry(self, sha256: str) -> Transfer:
        """`evidock upload retry`: send a file again from the start, whatever went wrong;
        its init is built afresh (the frozen one is dropped).

        Raises InputError if the outbox does not know the file or it is already
        receipted (nothing to send: the platform holds a verified copy).
        """
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM transfers WHERE sha256 = ?", (sha256,)).fetchone()
            if row is None:
                raise InputError(
                    f"{sha256} is not in the outbox; give the full SHA-256 of an ingested recording"
                )
            if row[0] == RECEIPTED:
                raise InputError(f"{sha256} is already receipted by the platform; nothing to retry")
            conn.execute(
                "UPDATE transfers SET state = 'queued', finished_at = NULL, last_error = NULL,"
                " init_payload = NULL, updated_at = ? WHERE sha256 = ?",
                (time.time(), sha256),
            )
            conn.execute("DELETE FROM segments WHERE sha256 = ?", (sha256,))
        transfer = self.get(sha256)
        if transfer is None:
            raise InputError(f"{sha256} vanished from the outbox while it was retried")
        return transfer
