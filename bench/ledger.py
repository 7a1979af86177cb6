"""The ledger: durable and batched appends, a full audit, inclusion proofs.

Baselines are bare SQLite doing the unavoidable part of the same job on the
same bytes and the same disk: a commit per row with the same pragmas (WAL,
``synchronous=FULL``) for appends; one ordered scan of the entries with a
SHA-256 leaf hash of each for the audit; the proof's node reads through a plain
connection for inclusion proofs.

Building the large ledger takes minutes, so it is kept under ``out/cache``,
keyed by its entry count and a hash of the code that writes it (this module
included): a change to the ledger's format or to the entries builds a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hashing
from bench._report import Row, Section, median, percentile, seconds
from bench._system import drop_from_cache
from hashing.audit import audit
from hashing.entries import build_entry, clock_reading
from hashing.ledger import node_key
from hashing.merkle import SubtreeHasher, leaf_hash, verify_inclusion
from hashing.station import Station

KIND = "bench"
VERIFY_TARGET_S = 30.0  # for 1,000,000 entries (the issue); scaled for other sizes
PROOF_TARGET_MS = 50.0
BUILD_BATCH = 1000
CHECKPOINTS = 10  # signed along the way while building, plus one at the end
# The modules whose code decides what a built ledger holds (the cache key).
_FORMAT_MODULES = ("canonical", "checkpoint", "entries", "keys", "ledger", "merkle", "note")


def body(i: int) -> dict[str, Any]:
    """A realistic ingest body (~370 bytes of canonical JSON), distinct per ``i``."""
    sha = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    return {
        "sha256": sha,
        "size": 100_000_000 + i * 7919 % 900_000_000,
        "chunk_size": 1 << 20,
        "chunk_root": hashlib.sha256(sha.encode()).hexdigest(),
        "name": f"CLIP{i % 10000:04d}.MP4",
        "source_path": f"/media/cam/DCIM/100MEDIA/CLIP{i % 10000:04d}.MP4",
        "source_mtime": "2024-05-01T08:30:00.000000Z",
        "device": f"CAM{i % 97:04d}",
        "officer": f"officer-{i % 389}",
        "case": None,
    }


def _bare_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    return conn


def _bare_commits(conn: sqlite3.Connection, rows: list[bytes], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t (data) VALUES (?)", ((r,) for r in rows[i : i + batch]))
        conn.execute("COMMIT")
    return time.perf_counter() - start


def _ledger_appends(station: Station, first: int, n: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(first, first + n, batch):
        if batch == 1:
            station.ledger.append(KIND, body(i))
            continue
        with station.ledger.transaction() as tx:
            for j in range(i, min(i + batch, first + n)):
                tx.append(KIND, body(j))
    return time.perf_counter() - start


def appends(out: Path, *, durable: int, batched: int, batch: int) -> Section:
    """Appends per second, one per transaction and ``batch`` per transaction.

    Each side runs in two halves, bare / evidock / evidock / bare, so a drift
    in the disk's speed falls on both.
    """
    home = out / "run" / "appends"
    shutil.rmtree(home, ignore_errors=True)
    station = Station.init(home, "bench-appends")
    bare = _bare_db(home / "bare.db")
    section = Section()
    try:
        # The bare rows are the very bytes evidock writes (read back after a
        # warm-up that also fills the tables' first pages).
        _ledger_appends(station, 0, 16, 1)
        sample = [raw for _, raw in station.ledger.raw_entries(1, 17)]
        first = 16
        for label, n, per_tx in (
            ("durable appends, 1 per commit", durable, 1),
            (f"batched appends, {batch} per commit", batched, batch),
        ):
            rows = [sample[i % len(sample)] for i in range(n)]
            half = n // 2
            t_bare = _bare_commits(bare, rows[:half], per_tx)
            t_ours = _ledger_appends(station, first, half, per_tx)
            t_ours += _ledger_appends(station, first + half, n - half, per_tx)
            t_bare += _bare_commits(bare, rows[half:], per_tx)
            first += n
            ours, base = n / t_ours, n / t_bare
            section.rows.append(
                Row(label, f"{ours:,.0f} /s", f"bare SQLite {base:,.0f} /s", ours / base)
            )
        calls = 50
        start = time.perf_counter()
        for _ in range(calls):
            clock_reading()
        per_call_ms = (time.perf_counter() - start) / calls * 1000
        section.notes.append(
            f"appends: entries of {len(sample[0])} bytes; hashing.entries.clock_reading(), "
            f"called once per entry by tx.append, takes {per_call_ms:.2f} ms here"
        )
    finally:
        bare.close()
        station.close()
        shutil.rmtree(home, ignore_errors=True)
    return section


@dataclass(frozen=True)
class Built:
    home: Path
    entries: int
    seconds: float
    checkpoints: int
    cached: bool


def _fingerprint(entries: int) -> str:
    h = hashlib.sha256(str(entries).encode())
    package = Path(hashing.__file__).parent
    for source in [*(package / f"{name}.py" for name in _FORMAT_MODULES), Path(__file__)]:
        h.update(source.read_bytes())
    return h.hexdigest()[:12]


def build(out: Path, entries: int) -> Built:
    """A station whose ledger holds ``entries`` entries (genesis included), cached."""
    cache = out / "cache"
    home = cache / f"ledger-{entries}-{_fingerprint(entries)}"
    marker = home / "bench-build.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        return Built(home, entries, float(info["seconds"]), int(info["checkpoints"]), True)
    if cache.is_dir():
        for stale in cache.glob(f"ledger-{entries}-*"):
            shutil.rmtree(stale)
    partial = cache / f"{home.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    station = Station.init(partial, "bench-ledger")
    try:
        every = max(1, entries // CHECKPOINTS)
        prev = station.ledger.entry(0).digest
        size = station.ledger.size()
        while size < entries:
            # One clock reading per transaction: tx.append reads it per entry,
            # which costs far more than the append itself (see the appends note).
            now, clock = clock_reading()
            with station.ledger.transaction() as tx:
                for _ in range(min(BUILD_BATCH, entries - size)):
                    entry = build_entry(
                        seq=tx.size,
                        kind=KIND,
                        station=station.station_id,
                        prev=prev,
                        body=body(tx.size),
                        time=now,
                        clock=clock,
                    )
                    tx.append_entry(entry)
                    prev = entry.digest
                size = tx.size
            if size % every < BUILD_BATCH and size < entries:
                station.checkpoint()
        station.checkpoint()
        checkpoints = len(station.ledger.checkpoints())
    finally:
        station.close()
    seconds = time.perf_counter() - start
    (partial / marker.name).write_text(json.dumps({"seconds": seconds, "checkpoints": checkpoints}))
    partial.rename(home)
    return Built(home, entries, seconds, checkpoints, False)


def _ledger_files(home: Path) -> list[Path]:
    return [p for p in home.glob("ledger.db*") if p.is_file()]


def _bare_scan(db: Path) -> tuple[float, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        start = time.perf_counter()
        cursor = conn.execute("SELECT data FROM entries ORDER BY seq")
        n = 0
        while rows := cursor.fetchmany(8192):
            for (data,) in rows:
                leaf_hash(data)
            n += len(rows)
        return time.perf_counter() - start, n
    finally:
        conn.close()


def verify(built: Built) -> Section:
    """``evidock ledger verify`` (audit without the store) against a bare scan."""
    station = Station.open(built.home)
    try:
        drop_from_cache(_ledger_files(built.home))
        t_bare, scanned = _bare_scan(built.home / "ledger.db")
        drop_from_cache(_ledger_files(built.home))
        start = time.perf_counter()
        report = audit(station, files=False)
        t_audit = time.perf_counter() - start
    finally:
        station.close()
    if report.exit_code != 0 or report.checked.get("entries") != built.entries:
        raise RuntimeError(f"the audit of the benchmark ledger failed: {report.as_dict()}")
    if scanned != built.entries:
        raise RuntimeError(f"the bare scan read {scanned} entries, not {built.entries}")
    how = "cached from an earlier run" if built.cached else "built in this run"
    target = VERIFY_TARGET_S * built.entries / 1_000_000
    verify_row = Row(
        f"ledger verify, {built.entries:,} entries",
        f"{seconds(t_audit)} ({t_audit / built.entries * 1e6:.1f} us/entry)",
        f"scan + leaf hash {seconds(t_bare)}",
        t_audit / t_bare,
        f"<= {target:.3g} s",
        t_audit <= target,
    )
    build_row = Row(
        f"ledger build, {built.entries:,} entries",
        f"{seconds(built.seconds)} ({built.entries / built.seconds:,.0f} entries/s)",
        "-",
        None,
    )
    note = (
        f"ledger: {built.entries:,} entries in transactions of {BUILD_BATCH}, "
        f"{built.checkpoints} signed checkpoints, {how}; audit checked {report.checked}"
    )
    return Section([build_row, verify_row], [note])


def _bare_lookup(conn: sqlite3.Connection) -> Callable[[int, int], bytes]:
    def lookup(level: int, index: int) -> bytes:
        row = conn.execute(
            "SELECT hash FROM nodes WHERE end = ? AND level = ?", node_key(level, index)
        ).fetchone()
        return bytes(row[0])

    return lookup


def proofs(built: Built, *, samples: int, seed: int = 6962) -> Section:
    """Ledger.inclusion_proof(i, size) for random leaves, each proof checked."""
    station = Station.open(built.home)
    conn = sqlite3.connect(f"file:{built.home / 'ledger.db'}?mode=ro", uri=True)
    try:
        size = station.ledger.size()
        root = station.ledger.root(size)
        bare = SubtreeHasher(_bare_lookup(conn))
        rng = random.Random(seed)
        ours: list[float] = []
        base: list[float] = []
        for k in range(samples):
            i = rng.randrange(size)
            for which in ("ledger", "bare") if k % 2 == 0 else ("bare", "ledger"):
                start = time.perf_counter()
                if which == "ledger":
                    proof = station.ledger.inclusion_proof(i, size)
                    ours.append((time.perf_counter() - start) * 1000)
                else:
                    bare_proof = bare.inclusion_proof(i, size)
                    base.append((time.perf_counter() - start) * 1000)
            if proof != bare_proof:
                raise RuntimeError(f"the proofs for leaf {i} differ")
            verify_inclusion(station.ledger.leaf_hash(i), i, size, proof, root)
    finally:
        conn.close()
        station.close()
    p50, p99 = median(ours), percentile(ours, 99)
    b50 = median(base)
    row = Row(
        f"inclusion proof, {size:,} entries",
        f"median {p50:.2f} ms, p99 {p99:.2f} ms",
        f"bare node reads {b50:.2f} ms",
        p50 / b50,
        f"p99 <= {PROOF_TARGET_MS:.0f} ms",
        p99 <= PROOF_TARGET_MS,
    )
    note = f"proofs: {samples} random leaves, every proof verified against the tree head"
    return Section([row], [note])
