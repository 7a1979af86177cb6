"""Real stations with old recordings, platform receipts and users, for the
retention, hold and scrub tests.

Retention periods count from the later of the recording date and the day the
recording reached the dock (its ingest entry's time). A recording is made old
the way a dock that has been running for a while holds it: the source file's
modification time (the recording date `evidock ingest` records) is set in the
past, and its ingest entry is dated the day it was docked, by building the
entry with that time (hashing.entries.build_entry) and appending it with its
index rows exactly as agent.offload.ingest.commit does; the file is copied into the
real store. No test waits a year and no clock is faked. Such a ledger's later
entries are dated now, after its old ingests, as on a real dock; an ingest
dated in the past *after* entries dated now is a clock regression the audit
warns about, so tests ingest before they receipt, hold or purge.

Receipts: the real path (uploader.sender.Sender._on_receipt) needs a broker.
``receipt`` makes the same thing without one: a receipt signed by a platform
key exactly as the receiver signs it (uploader.protocol.Receipt), recorded as
an ``upload_receipt`` entry with exactly the body Sender._on_receipt appends.
``PLATFORM_KEYS`` are the keys a dock pins as ``[upload] platform_key``.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.offload.copier import open_source
from agent.offload.ingest import Binding, Source, copy_to_staging, raw_path_fields
from agent.records.index import index_ingest
from agent.users.accounts import User, Users
from hashing.entries import INGEST, Entry, build_entry, clock_reading
from hashing.note import NoteSigner, open_note
from hashing.retention import rfc3339
from hashing.station import Station
from uploader.outbox import UPLOAD_RECEIPT
from uploader.protocol import Receipt

DAY = 86400
SECRET = "correct horse 42"  # noqa: S105 - the test users' password
PLATFORM = NoteSigner.generate("platform.example.org/receipts")
PLATFORM_KEYS = (PLATFORM.verifier,)


def new_station(tmp_path: Path) -> Station:
    return Station.init(tmp_path / "home", "dock-01")


def make_clip(folder: Path, name: str, *, days_old: float, size: int = 2000, seed: int = 0) -> Path:
    """A 'recording' whose file time (the recording date) is ``days_old`` days ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(random.Random(f"{name}-{seed}").randbytes(size))
    when = time.time() - days_old * DAY
    os.utime(path, (when, when))
    return path


def ingest_clip(
    station: Station,
    folder: Path,
    name: str,
    *,
    days_old: float,
    case: str | None = None,
    size: int = 2000,
    docked_days_ago: float | None = None,
) -> str:
    """Make one recording dated ``days_old`` days ago and ingest it as the dock did
    ``docked_days_ago`` days ago (default: the day it was recorded); its digest."""
    path = make_clip(folder, name, days_old=days_old, size=size)
    docked = days_old if docked_days_ago is None else docked_days_ago
    binding = Binding(officer="o-1", device="CAM1", case=case)
    fd = open_source(path)
    try:
        st = os.fstat(fd)
        source = Source(binding.device, os.fsencode(path.absolute()), st.st_size, st.st_mtime_ns)
        staged, copy = copy_to_staging(station, fd, source)
    finally:
        os.close(fd)
    digest = copy.digest
    sha = digest.sha256_hex
    station.store.adopt(staged, sha, digest.size)
    body = {
        "sha256": sha,
        "size": digest.size,
        "chunk_size": digest.chunk_size,
        "chunk_root": digest.chunk_root.hex(),
        **raw_path_fields(source.raw_path),
        "source_mtime": rfc3339(datetime.fromtimestamp(copy.source_mtime_ns / 1e9, UTC)),
        "device": binding.device,
        "officer": binding.officer,
        "case": binding.case,
    }
    at = rfc3339(datetime.now(UTC) - timedelta(days=docked))
    with station.ledger.transaction() as tx:
        (last,) = tx.conn.execute("SELECT data FROM entries WHERE seq = ?", (tx.size - 1,))
        entry = build_entry(
            seq=tx.size,
            kind=INGEST,
            station=station.station_id,
            prev=hashlib.sha256(bytes(last[0])).hexdigest(),
            body=body,
            time=at,
            clock=clock_reading()[1],
        )
        tx.append_entry(entry)
        index_ingest(tx, entry, digest, source.key)
    return sha


def receipt(
    station: Station,
    sha256: str,
    signer: NoteSigner = PLATFORM,
    *,
    stored_at: datetime | None = None,
    station_id: str | None = None,
) -> Entry:
    """The platform's signed receipt for a stored file, recorded as Sender._on_receipt does.
    ``stored_at``: the platform's time in it (default: now); ``station_id``: the
    station it names (default: this one)."""
    ((size, seq),) = station.ledger.execute(
        "SELECT size, seq FROM files WHERE sha256 = ?", (sha256,)
    )
    when = (stored_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    note = Receipt(
        station_id or station.station_id,
        sha256,
        int(size),
        int(seq),
        when,
        station.ledger.size(),
    ).sign(signer)
    opened = open_note(note, [signer.verifier])
    body = {
        "sha256": sha256,
        "size": int(size),
        "seq": int(seq),
        "platform_key": opened.verified[0].vkey,
        "stored_at": when,
        "receipt": note,
    }
    return station.ledger.append(UPLOAD_RECEIPT, body)


def add_user(station: Station, name: str, role: str, *, officer: str | None = None) -> User:
    users = Users(station)
    try:
        return users.add(name, role, SECRET, officer=officer, by="console:test")
    finally:
        users.close()


def secret_file(folder: Path) -> Path:
    """The users' PIN or password in a 0600 file, for --password-file."""
    path = folder / "secret"
    path.write_text(SECRET + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
