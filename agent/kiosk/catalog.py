"""What the kiosk reads from the ledger database and the outbox: read-only, on its own
connections, so a page never waits behind an offload session's write transaction
(the ledger's own connection is shared and locked; SQLite's WAL lets readers
run beside the writer).

The ledger's queries are agent.records.index's (the one module that holds the SQL
of its side tables), run here on the kiosk's connection; only the outbox's are
written here. Every query takes its values as parameters; a digest is accepted
only as 64 lower-case hex characters, so a name taken from a URL can never become
a path.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

from agent.kiosk.views import DeviceUploads
from agent.records import index
from hashing.entries import HEX64_RE

PAGE_SIZE = 30
UPLOADS_TTL_S = 2.0  # a recorder's upload states are re-read at most this often
_SENDING = ("queued", "initialised", "finished")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def is_sha256(text: str) -> bool:
    return HEX64_RE.fullmatch(text) is not None


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False, timeout=5
    )
    conn.execute("PRAGMA query_only = ON")
    return conn


@dataclass(frozen=True)
class Filters:
    """The supervisor's list filters (all optional). ``officer_only`` is forced for
    roles that may see only their own recordings, whatever the form said."""

    officer: str = ""
    device: str = ""
    day: date | None = None
    untagged: bool = False
    officer_only: str | None = None

    def query(self, offset_minutes: int) -> index.FileQuery:
        """The filters as a query of the files index; ``day`` is the station's day
        (UTC offset ``offset_minutes``)."""
        officers: tuple[str, ...] = () if self.officer_only is None else (self.officer_only,)
        if self.officer:
            officers += (self.officer,)
        recorded = None
        if self.day is not None:
            zone = timezone(timedelta(minutes=offset_minutes))
            start = datetime(self.day.year, self.day.month, self.day.day, tzinfo=zone)
            recorded = (_utc_text(start), _utc_text(start + timedelta(days=1)))
        return index.FileQuery(officers, self.device or None, recorded, self.untagged)


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Recording:
    """One stored recording as the list and the player show it."""

    sha256: str
    size: int
    name: str
    source_path: str
    device: str | None
    officer: str | None
    recorded_at: str | None
    seq: int
    media: dict[str, Any] = field(default_factory=dict)
    tags: tuple[index.TagRow, ...] = ()


@dataclass(frozen=True)
class Page:
    rows: list[Recording]
    total: int
    page: int
    pages: int


class Catalog:
    """Read-only queries over ``ledger.db`` (agent.records.index's: files, tags, anomalies,
    wipes, entries) and ``outbox.db``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._lock = threading.Lock()
        self._ledger = _ro(home / "ledger.db")
        self._outbox: sqlite3.Connection | None = None
        self._kinds: OrderedDict[tuple[str | None, str], str | None] = OrderedDict()
        self._uploads: dict[str, tuple[float, DeviceUploads]] = {}
        self._purged: set[str] = set()
        self._purged_through = -1  # the last ``purge`` entry read into _purged

    def close(self) -> None:
        with self._lock:
            self._ledger.close()
            if self._outbox is not None:
                self._outbox.close()

    def _read(
        self,
        query: Callable[Concatenate[index.Reader, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """An agent.records.index reader on the kiosk's own connection."""
        with self._lock:
            return query(self._ledger, *args, **kwargs)

    def purged(self, sha256: str) -> bool:
        """Whether a ``purge`` entry names ``sha256``. Entries are append-only, so each
        call reads only the purge entries written since the last (by the type index),
        not all of them for every thumbnail."""
        with self._lock:
            rows = index.purges_after(self._ledger, self._purged_through)
            for seq, data in rows:
                named = (json.loads(bytes(data)).get("body") or {}).get("sha256")
                if isinstance(named, str):
                    self._purged.add(named)
                self._purged_through = int(seq)
            return sha256 in self._purged

    # -- recordings ------------------------------------------------------------------

    def page(self, filters: Filters, page: int, offset_minutes: int) -> Page:
        query = filters.query(offset_minutes)
        total = self._read(index.count_files, query)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(1, page), pages)
        rows = self._read(index.files_page, query, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        recordings = [self._recording(r) for r in rows]
        tags = self._tags([r.sha256 for r in recordings])
        recordings = [
            Recording(**{**r.__dict__, "tags": tuple(tags.get(r.sha256, ()))}) for r in recordings
        ]
        return Page(recordings, total, page, pages)

    def recording(self, sha256: str) -> Recording | None:
        """One recording by digest, or None (also for anything that is not a digest)."""
        if not is_sha256(sha256):
            return None
        row = self._read(index.file_entry, sha256)
        if row is None:
            return None
        rec = self._recording(row)
        return Recording(**{**rec.__dict__, "tags": tuple(self._tags([sha256]).get(sha256, ()))})

    def owner(self, sha256: str) -> tuple[bool, str | None]:
        """(known, officer) of a digest: for access checks on thumbnails and media."""
        if not is_sha256(sha256):
            return False, None
        return self._read(index.file_owner, sha256)

    def anomalies_of(self, rec: Recording) -> list[tuple[int, str, str]]:
        """(seq, kind, detail) of the anomalies that name this recording."""
        out = []
        for anomaly in self._read(index.device_anomalies, rec.device):
            try:
                named = anomaly.files()
            except ValueError:
                continue
            if rec.source_path in named or rec.sha256 in named:
                out.append((anomaly.seq, anomaly.kind, anomaly.detail))
        return out

    def tag_entry(self, seq: int) -> dict[str, Any] | None:
        """The body of ``tag`` entry ``seq`` (for the confirmation after tagging)."""
        row = self._read(index.entry_row, seq)
        if row is None or row[0] != "tag":
            return None
        body = json.loads(bytes(row[1])).get("body")
        return body if isinstance(body, dict) else None

    def last_scrub(self) -> tuple[int, int, bool] | None:
        """(entry, files failing, ledger ok) of the latest ``scrub`` entry, if any."""
        row = self._read(index.latest_scrub)
        if row is None:
            return None
        body = json.loads(bytes(row[1])).get("body") or {}
        failures = body.get("failures")
        return (
            row[0],
            len(failures) if isinstance(failures, list) else 0,
            body.get("ledger") == "ok",
        )

    def options(self) -> tuple[list[str], list[str]]:
        """Officers and devices that have recordings, for the filter pickers."""
        officers, devices = self._read(index.recording_origins)
        return sorted(officers), sorted(devices)

    def _recording(self, row: index.FileEntry) -> Recording:
        try:
            body = json.loads(bytes(row.data)).get("body") or {}
        except ValueError:
            body = {}
        media = body.get("media") if isinstance(body.get("media"), dict) else {}
        return Recording(
            sha256=row.sha256,
            size=row.size,
            name=row.name,
            source_path=str(body.get("source_path") or row.name),
            device=row.device,
            officer=row.officer,
            recorded_at=row.recorded_at,
            seq=row.seq,
            media=media or {},
        )

    def _tags(self, shas: list[str]) -> dict[str, list[index.TagRow]]:
        return self._read(index.tags_of_files, shas)

    # -- for the dock tiles ----------------------------------------------------------

    def anomaly_kind(self, serial: str | None, detail: str) -> str | None:
        """The kind of a session's anomaly, from its wording (cached: the wording of an
        anomaly entry never changes)."""
        key = (serial, detail)
        with self._lock:
            if key in self._kinds:
                self._kinds.move_to_end(key)
                return self._kinds[key]
        kind = self._read(index.anomaly_kind, serial, detail)
        with self._lock:
            self._kinds[key] = kind
            while len(self._kinds) > 4096:
                self._kinds.popitem(last=False)
        return kind

    def uploads_of(self, serial: str) -> DeviceUploads:
        """Upload states of a recorder's recordings not yet wiped from it."""
        now = time.monotonic()
        with self._lock:
            cached = self._uploads.get(serial)
        if cached is not None and now - cached[0] < UPLOADS_TTL_S:
            return cached[1]
        result = self._read_uploads(serial)
        with self._lock:
            self._uploads[serial] = (now, result)
            if len(self._uploads) > 256:
                oldest = min(self._uploads, key=lambda k: self._uploads[k][0])
                del self._uploads[oldest]
        return result

    def _read_uploads(self, serial: str) -> DeviceUploads:
        shas = self._read(index.unwiped_digests, serial)
        if not shas:
            return DeviceUploads()
        outbox = self._outbox_conn()
        if outbox is None:
            return DeviceUploads(total=len(shas))
        receipted = sending = 0
        for i in range(0, len(shas), 500):
            part = shas[i : i + 500]
            marks = ",".join("?" * len(part))
            with self._lock:
                rows = outbox.execute(
                    f"SELECT state, count(*) FROM transfers WHERE sha256 IN ({marks}) GROUP BY state",  # noqa: S608
                    part,
                ).fetchall()
            for state, n in rows:
                if state == "receipted":
                    receipted += int(n)
                elif state in _SENDING:
                    sending += int(n)
        return DeviceUploads(total=len(shas), receipted=receipted, sending=sending)

    def _outbox_conn(self) -> sqlite3.Connection | None:
        """The outbox, read-only, once it exists (the uploader creates it)."""
        with self._lock:
            if self._outbox is None and (self.home / "outbox.db").exists():
                conn: sqlite3.Connection | None = None
                try:
                    conn = _ro(self.home / "outbox.db")
                    conn.execute("SELECT 1 FROM transfers LIMIT 1").fetchall()
                    self._outbox = conn
                except sqlite3.Error:
                    if conn is not None:
                        conn.close()
            return self._outbox
