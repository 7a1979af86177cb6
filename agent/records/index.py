"""The ledger's side tables, and every SQL statement agent/ runs on ledger.db.

The rule this module keeps, reviewable here alone: **the index is never a second
truth.** Each row of a side table is derived from one ledger entry. The functions
that write rows (``index_<entry type>``) take the write transaction that appends
the entry (hashing.ledger.LedgerTx) and the entry itself, and derive the row from
the entry's seq and body: a row never exists without its entry, an entry never
commits without its rows, and every table can be rebuilt from the entries
(``files.chunks`` also from the stored file, which the entry's ``chunk_root``
vouches for). No row is ever updated or deleted, except that ``devices`` keeps, per
serial, the latest ``device_assign`` entry (the ledger keeps the whole history).
``sources`` is a cache over ``ingest`` entries: a lost row costs a re-read, never
a record. The rest of agent/ reads and writes these tables only through the
functions here (tests/unit/agent/records/test_index.py checks that).

Tables, each with the entry its rows derive from:

- ``files``: an ``ingest`` entry (the store's index; who and when);
- ``sources``: a source key seen, pointing at its recording's ``ingest`` entry;
- ``devices``: a serial's latest ``device_assign`` entry;
- ``tags``: a ``tag`` entry, one row per recording it names;
- ``anomalies``: an ``anomaly`` entry;
- ``wipes``: a ``wipe`` entry.

The schema of ``files`` and ``sources`` is hashing.ledger's (the auditor's
verifier reads ``files`` too); the others' is below (migrations ``evidock.agent``).

The last section reads the ledger's own ``entries`` (by type through the
``entries_type`` index, or by a field of the body): the truth itself, read-only,
kept here so that every statement agent/ runs on ledger.db is in one file.

Readers take a ``Reader``: the station's Ledger (its shared, locked connection),
a LedgerTx (a check that must not race the write it guards), or a read-only
sqlite3 connection of the caller's own (the kiosk's, so a page never waits
behind an offload's write transaction). Every value is a bound parameter; only
placeholders and fixed clauses are formatted into the text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing.digest import FileDigest
from hashing.entries import Entry
from hashing.ledger import Ledger, LedgerTx
from hashing.station import Station

Reader: TypeAlias = Ledger | LedgerTx | sqlite3.Connection
EntryRow: TypeAlias = tuple[int, str, bytes]  # (seq, type, canonical bytes)

migrations = Migrations("evidock.agent")


@migrations()
def m001_records(db: Database) -> None:
    for sql in (
        # device registry: serial -> officer (entry type device_assign)
        "CREATE TABLE devices (serial TEXT PRIMARY KEY, officer TEXT, model TEXT,"
        " notes TEXT, seq INTEGER NOT NULL)",
        # tags: a re-tag is a new row and a new entry, never an update
        "CREATE TABLE tags (seq INTEGER NOT NULL, sha256 TEXT NOT NULL, case_id TEXT NOT NULL,"
        " kind TEXT NOT NULL, retention TEXT NOT NULL, reason TEXT, PRIMARY KEY (seq, sha256))",
        "CREATE INDEX tags_sha256 ON tags (sha256, seq)",
        "CREATE TABLE anomalies (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, device TEXT,"
        " officer TEXT, detail TEXT NOT NULL, files TEXT NOT NULL)",
        "CREATE INDEX anomalies_device ON anomalies (device, seq)",
        "CREATE TABLE wipes (seq INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, device TEXT,"
        " source_path TEXT NOT NULL)",
    ):
        db.execute(sql)


def ensure(station: Station) -> None:
    """Apply the agent's migrations to the station's database."""
    station.ledger.apply_migrations(migrations)


def _rows(db: Reader, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if isinstance(db, Ledger):
        return db.execute(sql, tuple(params))
    conn = db.conn if isinstance(db, LedgerTx) else db
    return conn.execute(sql, tuple(params)).fetchall()


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


# -- writing: one function per entry type, inside the entry's transaction ------------------


def index_ingest(tx: LedgerTx, entry: Entry, digest: FileDigest, source_key: str) -> None:
    """The ``files`` and ``sources`` rows of an ``ingest`` entry, in its transaction:
    the store's index (chunk hashes for proofs, who and when for tagging and reports)
    and the source it came from (``source_key``: agent.offload.ingest.Source.key)."""
    index_file(tx, entry, b"".join(digest.chunk_hashes))
    tx.conn.execute(
        "INSERT INTO sources (source, sha256, seq) VALUES (?, ?, ?)",
        (source_key, entry.body["sha256"], entry.seq),
    )


def index_file(tx: LedgerTx, entry: Entry, chunks: bytes) -> None:
    """The ``files`` row of an ``ingest`` entry, in its transaction: every column from
    the entry's seq and body but ``chunks``, the concatenated chunk hashes whose
    Merkle root is the body's ``chunk_root`` (so they are re-derived from the file)."""
    body = entry.body
    tx.conn.execute(
        "INSERT INTO files (sha256, size, chunk_size, chunk_root, chunks, seq, name,"
        " device, officer, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            body["sha256"],
            body["size"],
            body["chunk_size"],
            body["chunk_root"],
            chunks,
            entry.seq,
            body["name"],
            body.get("device"),
            body.get("officer"),
            body.get("recorded_at") or body["source_mtime"],
        ),
    )


def index_source_again(tx: LedgerTx, source_key: str, sha256: str, ingest_seq: int) -> None:
    """A ``sources`` row for a source whose bytes are already stored: it points at the
    file's existing ``ingest`` entry ``ingest_seq`` (no new entry is written), so the
    source is not read again. Written in the transaction that found the ``files`` row."""
    tx.conn.execute(
        "INSERT OR IGNORE INTO sources (source, sha256, seq) VALUES (?, ?, ?)",
        (source_key, sha256, ingest_seq),
    )


def index_device_assign(tx: LedgerTx, entry: Entry) -> None:
    """The ``devices`` row of a ``device_assign`` entry, in its transaction: the
    serial's row becomes this entry's (the previous assignment stays in the ledger)."""
    body = entry.body
    tx.conn.execute(
        "INSERT INTO devices (serial, officer, model, notes, seq) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (serial) DO UPDATE SET officer = excluded.officer,"
        " model = excluded.model, notes = excluded.notes, seq = excluded.seq",
        (body["serial"], body.get("officer"), body.get("model"), body.get("notes"), entry.seq),
    )


def index_tag(tx: LedgerTx, entry: Entry) -> None:
    """The ``tags`` rows of a ``tag`` entry, one per recording it names, in its transaction."""
    body = entry.body
    tx.conn.executemany(
        "INSERT INTO tags (seq, sha256, case_id, kind, retention, reason)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (entry.seq, f, body["case"], body["kind"], body["retention"], body.get("reason"))
            for f in body["files"]
        ],
    )


def index_anomaly(tx: LedgerTx, entry: Entry) -> None:
    """The ``anomalies`` row of an ``anomaly`` entry, in its transaction (``files``: the
    body's list of paths and digests, as JSON)."""
    body = entry.body
    tx.conn.execute(
        "INSERT INTO anomalies (seq, kind, device, officer, detail, files) VALUES (?, ?, ?, ?, ?, ?)",
        (
            entry.seq,
            str(body["kind"]),
            body.get("device"),
            body.get("officer"),
            str(body.get("detail", "")),
            json.dumps(list(body.get("files", [])), ensure_ascii=False),
        ),
    )


def index_wipe(tx: LedgerTx, entry: Entry) -> None:
    """The ``wipes`` row of a ``wipe`` entry, in its transaction."""
    body = entry.body
    tx.conn.execute(
        "INSERT INTO wipes (seq, sha256, device, source_path) VALUES (?, ?, ?, ?)",
        (entry.seq, str(body["sha256"]), body.get("device"), str(body["source_path"])),
    )


# -- reading: files and sources ---------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """A ``files`` row with its ``ingest`` entry's canonical bytes (``data``)."""

    sha256: str
    size: int
    name: str
    device: str | None
    officer: str | None
    recorded_at: str | None
    seq: int
    data: bytes


@dataclass(frozen=True)
class FileQuery:
    """Which ``files`` rows a list shows; every condition given must hold."""

    officers: tuple[str, ...] = ()  # each must match (a role's own officer, then the form's)
    device: str | None = None
    recorded: tuple[str, str] | None = None  # [from, before), UTC text as recorded_at holds it
    untagged: bool = False  # no ``tags`` row names the recording

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause over ``files f`` (fixed text) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for officer in self.officers:
            clauses.append("f.officer = ?")
            params.append(officer)
        if self.device is not None:
            clauses.append("f.device = ?")
            params.append(self.device)
        if self.recorded is not None:
            clauses.append("f.recorded_at >= ? AND f.recorded_at < ?")
            params += list(self.recorded)
        if self.untagged:
            clauses.append("NOT EXISTS (SELECT 1 FROM tags t WHERE t.sha256 = f.sha256)")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _file_entry(row: tuple[Any, ...]) -> FileEntry:
    sha, size, name, device, officer, recorded, seq, data = row
    return FileEntry(str(sha), int(size), str(name), device, officer, recorded, int(seq), data)


def count_files(db: Reader, query: FileQuery) -> int:
    """How many ``files`` rows ``query`` selects."""
    where, params = query.where()
    (total,) = _rows(db, f"SELECT count(*) FROM files f{where}", params)[0]  # noqa: S608 - clauses are fixed text
    return int(total)


def files_page(db: Reader, query: FileQuery, limit: int, offset: int) -> list[FileEntry]:
    """One page of ``query``'s rows, latest recording first, with their ingest entries."""
    where, params = query.where()
    # The page is chosen from the files index alone; only its rows' entries are
    # read (sorting the join would carry every entry's bytes through the sort).
    rows = _rows(
        db,
        "SELECT f.sha256, f.size, f.name, f.device, f.officer, f.recorded_at, f.seq, e.data"  # noqa: S608
        " FROM (SELECT f.sha256, f.size, f.name, f.device, f.officer, f.recorded_at, f.seq"
        f" FROM files f{where} ORDER BY f.recorded_at DESC, f.seq DESC LIMIT ? OFFSET ?) f"
        " JOIN entries e ON e.seq = f.seq ORDER BY f.recorded_at DESC, f.seq DESC",
        [*params, limit, offset],
    )
    return [_file_entry(r) for r in rows]


def file_entry(db: Reader, sha256: str) -> FileEntry | None:
    """One recording's ``files`` row and ingest entry, or None."""
    rows = _rows(
        db,
        "SELECT f.sha256, f.size, f.name, f.device, f.officer, f.recorded_at, f.seq, e.data"
        " FROM files f JOIN entries e ON e.seq = f.seq WHERE f.sha256 = ?",
        (sha256,),
    )
    return _file_entry(rows[0]) if rows else None


def file_seq(db: Reader, sha256: str) -> int | None:
    """The ``ingest`` entry of a stored recording, or None if the digest is unknown."""
    rows = _rows(db, "SELECT seq FROM files WHERE sha256 = ?", (sha256,))
    return int(rows[0][0]) if rows else None


def file_owner(db: Reader, sha256: str) -> tuple[bool, str | None]:
    """(known, officer) of a digest."""
    rows = _rows(db, "SELECT officer FROM files WHERE sha256 = ?", (sha256,))
    return (True, rows[0][0]) if rows else (False, None)


def known_files(db: Reader, shas: Sequence[str]) -> set[str]:
    """Those of ``shas`` (not empty) that are stored recordings."""
    return {
        str(r[0])
        for r in _rows(db, f"SELECT sha256 FROM files WHERE sha256 IN ({_marks(shas)})", shas)  # noqa: S608 - placeholders
    }


def file_officers(db: Reader, shas: Sequence[str]) -> dict[str, str | None]:
    """The officer of each of ``shas`` (not empty) that is a stored recording."""
    rows = _rows(
        db,
        f"SELECT sha256, officer FROM files WHERE sha256 IN ({_marks(shas)})",  # noqa: S608 - placeholders only
        shas,
    )
    return {str(sha): officer for sha, officer in rows}


def file_sizes(db: Reader) -> list[tuple[str, int]]:
    """(sha256, size) of every stored recording."""
    return [(str(sha), int(size)) for sha, size in _rows(db, "SELECT sha256, size FROM files")]


def recorded_times(db: Reader) -> dict[str, str | None]:
    """Every stored recording's recording time (``recorded_at``), by digest."""
    return {str(sha): text for sha, text in _rows(db, "SELECT sha256, recorded_at FROM files")}


def device_recorded_times(db: Reader, serial: str) -> list[tuple[str, str | None]]:
    """(sha256, recorded_at) of one recorder's recordings, by recording time."""
    rows = _rows(
        db, "SELECT sha256, recorded_at FROM files WHERE device = ? ORDER BY recorded_at", (serial,)
    )
    return [(str(sha), recorded) for sha, recorded in rows]


def device_digests(db: Reader, serial: str) -> list[str]:
    """One recorder's recordings in ledger order."""
    rows = _rows(db, "SELECT sha256 FROM files WHERE device = ? ORDER BY seq", (serial,))
    return [str(r[0]) for r in rows]


def unwiped_digests(db: Reader, serial: str) -> list[str]:
    """One recorder's recordings that no ``wipe`` entry has deleted from it."""
    rows = _rows(
        db,
        "SELECT sha256 FROM files WHERE device = ?"
        " AND sha256 NOT IN (SELECT sha256 FROM wipes WHERE device = ?)",
        (serial, serial),
    )
    return [str(r[0]) for r in rows]


def recording_origins(db: Reader) -> tuple[list[str], list[str]]:
    """(officers, devices) that have recordings, unordered."""
    officers = [
        str(r[0]) for r in _rows(db, "SELECT DISTINCT officer FROM files WHERE officer IS NOT NULL")
    ]
    devices = [
        str(r[0]) for r in _rows(db, "SELECT DISTINCT device FROM files WHERE device IS NOT NULL")
    ]
    return officers, devices


def source_ingest(db: Reader, source_key: str) -> tuple[str, int] | None:
    """(sha256, ingest entry) of a source already seen, or None."""
    rows = _rows(db, "SELECT sha256, seq FROM sources WHERE source = ?", (source_key,))
    return (str(rows[0][0]), int(rows[0][1])) if rows else None


# -- reading: devices, tags, anomalies, wipes -----------------------------------------------


@dataclass(frozen=True)
class DeviceRecord:
    """A recorder's current assignment (its latest ``device_assign`` entry, ``seq``)."""

    serial: str
    officer: str | None
    model: str | None
    notes: str | None
    seq: int


@dataclass(frozen=True)
class TagRow:
    """One recording's binding by ``tag`` entry ``seq``."""

    seq: int
    case: str
    kind: str
    retention: str
    reason: str | None


@dataclass(frozen=True)
class AnomalyRow:
    """An ``anomaly`` entry as indexed; ``files_json`` is its body's files (paths, digests)."""

    seq: int
    kind: str
    detail: str
    files_json: str

    def files(self) -> list[Any]:
        """The paths and digests it names. Raises ValueError if the row's JSON is bad."""
        return cast("list[Any]", json.loads(self.files_json))


def devices(db: Reader) -> list[DeviceRecord]:
    """Every registered recorder, by serial."""
    rows = _rows(db, "SELECT serial, officer, model, notes, seq FROM devices ORDER BY serial")
    return [DeviceRecord(*row) for row in rows]


def device(db: Reader, serial: str) -> DeviceRecord | None:
    """One recorder's assignment, or None if it was never assigned."""
    rows = _rows(
        db, "SELECT serial, officer, model, notes, seq FROM devices WHERE serial = ?", (serial,)
    )
    return DeviceRecord(*rows[0]) if rows else None


def tags_of(db: Reader, sha256: str) -> list[TagRow]:
    """One recording's tags in ledger order."""
    rows = _rows(
        db,
        "SELECT seq, case_id, kind, retention, reason FROM tags WHERE sha256 = ? ORDER BY seq",
        (sha256,),
    )
    return [TagRow(int(s), str(c), str(k), str(r), why) for s, c, k, r, why in rows]


def tags_of_files(db: Reader, shas: Sequence[str]) -> dict[str, list[TagRow]]:
    """The tags of each of ``shas`` in ledger order (digests without tags are absent)."""
    if not shas:
        return {}
    out: dict[str, list[TagRow]] = {}
    for seq, sha, case, kind, retention, reason in _rows(
        db,
        f"SELECT seq, sha256, case_id, kind, retention, reason FROM tags WHERE sha256 IN ({_marks(shas)})"  # noqa: S608
        " ORDER BY seq",
        shas,
    ):
        out.setdefault(str(sha), []).append(
            TagRow(int(seq), str(case), str(kind), str(retention), reason)
        )
    return out


def tagged_cases(db: Reader, sha256: str) -> set[str]:
    """The cases ``tag`` entries bind a recording to."""
    return {str(c) for (c,) in _rows(db, "SELECT case_id FROM tags WHERE sha256 = ?", (sha256,))}


def device_anomalies(db: Reader, serial: str | None) -> list[AnomalyRow]:
    """A recorder's anomalies in ledger order (``None``: those of no recorder)."""
    rows = _rows(
        db,
        "SELECT seq, kind, detail, files FROM anomalies WHERE device IS ? ORDER BY seq",
        (serial,),
    )
    return [AnomalyRow(int(s), str(k), str(d), str(f)) for s, k, d, f in rows]


def anomaly_seqs(db: Reader, serial: str) -> list[int]:
    """The ``anomaly`` entries of a recorder."""
    return [int(s) for (s,) in _rows(db, "SELECT seq FROM anomalies WHERE device IS ?", (serial,))]


def anomaly_kind(db: Reader, serial: str | None, detail: str) -> str | None:
    """The kind of a recorder's latest anomaly worded ``detail``, if any."""
    rows = _rows(
        db,
        "SELECT kind FROM anomalies WHERE device IS ? AND detail = ? ORDER BY seq DESC LIMIT 1",
        (serial, detail),
    )
    return str(rows[0][0]) if rows else None


def wipe_seqs(db: Reader, sha256: str) -> list[int]:
    """The ``wipe`` entries that deleted a recording from its recorder."""
    return [int(s) for (s,) in _rows(db, "SELECT seq FROM wipes WHERE sha256 = ?", (sha256,))]


# -- reading the ledger's own entries (the truth, not an index of it) ---------------------

_BODY_SHA256 = "json_extract(CAST(data AS TEXT), '$.body.sha256')"


def entry_row(db: Reader, seq: int) -> tuple[str, bytes] | None:
    """(type, canonical bytes) of entry ``seq``, or None."""
    rows = _rows(db, "SELECT type, data FROM entries WHERE seq = ?", (seq,))
    return (str(rows[0][0]), rows[0][1]) if rows else None


def entries_of_types(db: Reader, kinds: Sequence[str]) -> list[Entry]:
    """Every entry of these types, parsed, in ledger order."""
    marks = ", ".join("?" * len(kinds))
    rows = _rows(db, f"SELECT data FROM entries WHERE type IN ({marks}) ORDER BY seq", kinds)  # noqa: S608 - placeholders
    return [Entry.parse(bytes(data)) for (data,) in rows]


def entries_after(
    db: Reader, kinds: Sequence[str], after: int, limit: int
) -> list[tuple[int, bytes]]:
    """(seq, bytes) of up to ``limit`` entries of these types after ``after``, in order."""
    marks = ", ".join("?" * len(kinds))
    return cast(
        "list[tuple[int, bytes]]",
        _rows(
            db,
            f"SELECT seq, data FROM entries WHERE type IN ({marks}) AND seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (*kinds, after, limit),
        ),
    )


def entries_from(db: Reader, start: int, kinds: Sequence[str], limit: int) -> list[EntryRow]:
    """Up to ``limit`` entries of these types from ``start`` on, in order."""
    return cast(
        "list[EntryRow]",
        _rows(
            db,
            f"SELECT seq, type, data FROM entries WHERE seq >= ? AND type IN ({_marks(kinds)})"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            (start, *kinds, limit),
        ),
    )


def entries_about(
    db: Reader, sha256: str, kinds: Sequence[str], naming: Sequence[str]
) -> list[EntryRow]:
    """In order: every entry of the types ``kinds``, and those of the types ``naming``
    whose body's ``sha256`` is ``sha256``."""
    rows = _rows(
        db,
        f"SELECT seq, type, data FROM entries WHERE type IN ({', '.join('?' * len(kinds))})"  # noqa: S608
        f" OR (type IN ({', '.join('?' * len(naming))}) AND {_BODY_SHA256} = ?)"
        " ORDER BY seq",
        (*kinds, *naming, sha256),
    )
    return cast("list[EntryRow]", rows)


def latest_entries(db: Reader, kind: str, limit: int) -> list[EntryRow]:
    """The newest ``limit`` entries of a type, newest first."""
    rows = _rows(
        db,
        "SELECT seq, type, data FROM entries WHERE type = ? ORDER BY seq DESC LIMIT ?",
        (kind, limit),
    )
    return cast("list[EntryRow]", rows)


def entry_of_type(db: Reader, seq: int, kind: str) -> EntryRow | None:
    """Entry ``seq`` if it is of type ``kind``."""
    rows = _rows(db, "SELECT seq, type, data FROM entries WHERE seq = ? AND type = ?", (seq, kind))
    return cast("EntryRow", rows[0]) if rows else None


def purges_of(db: Reader, sha256: str) -> list[int]:
    """Seqs of the ``purge`` entries naming ``sha256``, in order."""
    rows = _rows(
        db,
        f"SELECT seq FROM entries WHERE type = 'purge' AND {_BODY_SHA256} = ? ORDER BY seq",  # noqa: S608 - fixed text
        (sha256,),
    )
    return [int(seq) for (seq,) in rows]


def purges_naming(db: Reader, shas: Sequence[str]) -> list[tuple[int, str]]:
    """(seq, sha256) of the ``purge`` entries naming any of ``shas`` (not empty)."""
    sql = f"SELECT seq, {_BODY_SHA256} AS sha FROM entries WHERE type = 'purge' AND sha IN ({_marks(shas)})"  # noqa: S608
    return [(int(seq), str(sha)) for seq, sha in _rows(db, sql, shas)]


def purges_after(db: Reader, seq: int) -> list[tuple[int, bytes]]:
    """(seq, bytes) of the ``purge`` entries after ``seq``, in order (by the type index)."""
    rows = _rows(
        db, "SELECT seq, data FROM entries WHERE type = 'purge' AND seq > ? ORDER BY seq", (seq,)
    )
    return cast("list[tuple[int, bytes]]", rows)


def latest_scrub(db: Reader) -> tuple[int, bytes] | None:
    """(seq, bytes) of the newest ``scrub`` entry, if any."""
    rows = _rows(db, "SELECT seq, data FROM entries WHERE type = 'scrub' ORDER BY seq DESC LIMIT 1")
    return (int(rows[0][0]), rows[0][1]) if rows else None
