"""Real stations with old recordings, platform receipts and users, for the
retention, hold and scrub tests.

Recordings are made old the way a recorder makes them: the source file's
modification time (what `evidock ingest` records as the recording date) is set
in the past, so no test waits a year and no clock is faked.

Receipts: the real path (uploader.sender.Sender._on_receipt) needs a broker.
``receipt`` makes the same thing without one: a receipt signed by a platform
key exactly as the receiver signs it (uploader.protocol.Receipt), recorded as
an ``upload_receipt`` entry with exactly the body Sender._on_receipt appends.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.ingest import Binding, IngestResult, ingest_paths
from agent.users import User, Users
from hashing.entries import Entry
from hashing.note import NoteSigner, open_note
from hashing.station import Station
from uploader.outbox import UPLOAD_RECEIPT
from uploader.protocol import Receipt

DAY = 86400
SECRET = "correct horse 42"  # noqa: S105 - the test users' password
PLATFORM = NoteSigner.generate("platform.example.org/receipts")


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
) -> str:
    """Make and ingest one old recording; its digest."""
    path = make_clip(folder, name, days_old=days_old, size=size)
    (result,) = list(
        ingest_paths(station, [path], Binding(officer="o-1", device="CAM1", case=case))
    )
    assert isinstance(result, IngestResult), result
    return result.sha256


def receipt(station: Station, sha256: str, signer: NoteSigner = PLATFORM) -> Entry:
    """The platform's signed receipt for a stored file, recorded as Sender._on_receipt does."""
    ((size, seq),) = station.ledger.execute(
        "SELECT size, seq FROM files WHERE sha256 = ?", (sha256,)
    )
    stored_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    note = Receipt(
        station.station_id, sha256, int(size), int(seq), stored_at, station.ledger.size()
    ).sign(signer)
    opened = open_note(note, [signer.verifier])
    body = {
        "sha256": sha256,
        "size": int(size),
        "seq": int(seq),
        "platform_key": opened.verified[0].vkey,
        "stored_at": stored_at,
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
