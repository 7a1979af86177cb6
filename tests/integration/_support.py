"""Helpers shared by the integration tests: real stations on disk, real files, and
the tamperer's tools (flip a byte, edit a ledger with its triggers dropped).

Randomness is always seeded so a failure reproduces byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from hashing.findings import Finding, Report
from hashing.note import NoteSigner, NoteVerifier, parse_note, sign_note
from hashing.station import Station

MIB = 1 << 20
# Two files span several 1 MiB chunks (so a changed range can be named), two are small.
SIZES = (3 * MIB + 17, 2 * MIB + 4099, 300_000, 1_000)
CASE = "case-2024-0042"
BINDING = Binding(officer="officer-7", device="CAM0001", case=CASE)


def write_random(path: Path, size: int, rng: random.Random) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))
    return path


def make_sources(
    folder: Path, sizes: tuple[int, ...], seed: int, prefix: str = "CLIP"
) -> list[Path]:
    """Random 'recordings' named as a camera names them."""
    rng = random.Random(seed)
    return [
        write_random(folder / f"{prefix}{n:04d}.MP4", size, rng) for n, size in enumerate(sizes)
    ]


def ingest(station: Station, paths: list[Path], binding: Binding = BINDING) -> list[IngestResult]:
    """Ingest and insist that every file went in."""
    results: list[IngestResult] = []
    for item in ingest_paths(station, paths, binding):
        assert isinstance(item, IngestResult), f"ingest failed: {item}"
        results.append(item)
    return results


@dataclass
class Built:
    """A station with ingested recordings, as a test sees it."""

    station: Station
    sources: list[Path]
    results: list[IngestResult]
    key: NoteVerifier = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.station.keys.load().verifier

    @property
    def home(self) -> Path:
        return self.station.home

    @property
    def shas(self) -> list[str]:
        return [r.sha256 for r in self.results]


def build_station(
    home: Path,
    *,
    station_id: str = "dock-01",
    seed: int = 1,
    sizes: tuple[int, ...] = SIZES,
    binding: Binding = BINDING,
) -> Built:
    """Create a station, ingest random recordings, sign a checkpoint."""
    station = Station.init(home, station_id)
    sources = make_sources(home.parent / f"{home.name}-sources", sizes, seed)
    results = ingest(station, sources, binding)
    station.checkpoint()
    return Built(station, sources, results)


# -- the tamperer's tools --------------------------------------------------


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    """XOR one byte of a file in place (mode bits permitting or not: we run as the owner)."""
    os.chmod(path, 0o600)
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        assert len(old) == 1, f"{path} has no byte {offset}"
        f.seek(offset)
        f.write(bytes([old[0] ^ mask]))


def flip_in_bytes(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def flip_b64(text: str, byte: int = 0) -> str:
    """Decode base64, flip one bit of byte ``byte``, encode again (stays well-formed)."""
    raw = bytearray(base64.b64decode(text))
    raw[byte] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def flip_signature(note: str, *, in_key_id: bool = False) -> str:
    """Flip one bit of the first signature of a note (in its key id, or in the signature)."""
    text, _ = parse_note(note)
    head, _, block = note.partition("\n\n")
    line, _, rest = block.partition("\n")
    prefix, _, b64 = line.rpartition(" ")
    assert head + "\n" == text
    flipped = flip_b64(b64, 1 if in_key_id else 4 + 17)
    return f"{head}\n\n{prefix} {flipped}\n{rest}"


def resign(note: str, signer: NoteSigner) -> str:
    """The same checkpoint body, signed by ``signer`` only."""
    text, _ = parse_note(note)
    return sign_note(text, [signer])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tamper_db(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Edit a closed ledger as someone holding the file would: triggers dropped first."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def snapshot_db(db: Path, to: Path) -> None:
    """A consistent copy of a live WAL database (the SQLite backup API)."""
    src = sqlite3.connect(db)
    dst = sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def replace_db(db: Path, copy: Path) -> None:
    """Put an older copy in place of a closed ledger, as a tamperer restoring a backup."""
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(copy.read_bytes())


# -- reading reports -------------------------------------------------------


def found(report: Report, kind: str, place: str | None = None) -> list[Finding]:
    """Findings of ``kind`` (at ``place`` when given)."""
    return [f for f in report.findings if f.kind == kind and (place is None or f.place == place)]


def assert_finding(
    report: Report, kind: str, place: str | None = None, *, detail: str | None = None
) -> Finding:
    """Insist on an integrity failure with a finding of this kind, place and detail."""
    hits = [f for f in found(report, kind, place) if detail is None or detail in f.detail]
    assert hits, (
        f"no {kind} finding at {place!r} (detail containing {detail!r}); report:\n"
        + report.render()
    )
    assert report.exit_code == 1, report.render()
    return hits[0]


def assert_clean(report: Report) -> None:
    """Verified: no failures, nothing unverifiable (clock warnings allowed)."""
    assert report.exit_code == 0, report.render()
    assert not report.failures, report.render()
