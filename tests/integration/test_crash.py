"""Crash safety: a dock process killed with SIGKILL at random moments, many times,
leaves a ledger that audits clean, holds every write it acknowledged byte for
byte, still signs, and converges when the interrupted ingest is run again.

The writer (crash_writer.py) prints an ACK line only after each write returned;
the parent kills it after a seeded random delay, checks the station, repairs
what the design says a re-run repairs (re-ingest), and starts it again on the
same station. Crash points that a random kill rarely hits (inside checkpoint
signing and key rotation) are also set up exactly, in-process.

SIGKILL tests the process dying, not the power failing: what the kernel has
accepted survives here even without fsync.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hashing._fsutil import write_atomic
from hashing.audit import audit
from hashing.entries import INGEST, KEY_ROTATION
from hashing.findings import FILE_ADDED, Report
from hashing.keys import rotation_body
from hashing.note import NoteSigner, open_note
from hashing.station import Station
from tests.integration._support import assert_clean, ingest, make_sources, sha256_hex

pytestmark = pytest.mark.slow

WRITER = Path(__file__).with_name("crash_writer.py")
KIND = "crash_test"
READY_TIMEOUT = 30.0
BUDGET = 25.0  # seconds of kill loops per test, whatever the machine's speed
MAX_DELAY = 0.25  # kill within this long after the writer is ready


@dataclass
class Acks:
    """What the writer promised: entries and checkpoints, by seq and size."""

    entries: dict[int, str] = field(default_factory=dict)
    checkpoints: dict[int, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    def add(self, output: str) -> int:
        """Record the complete lines of a killed writer's output; return how many."""
        count = 0
        for line in output.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # cut short by the kill: never acknowledged
            word, *rest = line.split()
            if word == "ACK":
                seq, sha = int(rest[0]), rest[1]
                assert self.entries.setdefault(seq, sha) == sha, f"entry {seq} acked twice"
            elif word == "CKPT":
                size, sha = int(rest[0]), rest[1]
                assert self.checkpoints.setdefault(size, sha) == sha, f"two checkpoints {size}"
            elif word == "KEY":
                self.keys.append(rest[0])
            else:
                assert word == "READY", line
                continue
            count += 1
        return count


def make_home(home: Path) -> Path:
    """A station with the test's own state table in its database (crash_state rows
    commit in the same transaction as the entry they name)."""
    Station.init(home, "dock-crash").close()
    conn = sqlite3.connect(home / "ledger.db")
    conn.execute("CREATE TABLE crash_state (seq INTEGER PRIMARY KEY, digest TEXT NOT NULL)")
    conn.commit()
    conn.close()
    return home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_home(tmp_path / "home")


def run_and_kill(home: Path, sources: Path, mode: str, seed: int, delay: float) -> str:
    """Start a writer, let it work ``delay`` seconds after READY, SIGKILL it."""
    out, err = home.parent / f"writer-{seed}.out", home.parent / f"writer-{seed}.err"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(home), str(sources), mode, str(seed)],
            stdout=fo,
            stderr=fe,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not out.read_text().startswith("READY\n"):
            assert proc.poll() is None, f"writer exited: {err.read_text()}"
            assert time.monotonic() < deadline, "writer never became ready"
            time.sleep(0.005)
        time.sleep(delay)
        assert proc.poll() is None, f"writer stopped by itself: {err.read_text()}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return out.read_text()


def other_failures(report: Report, allowed_orphans: set[str]) -> list[str]:
    """Failures except store files of the interrupted ingest that no entry covers yet."""
    return [
        f"{f.kind} {f.place}: {f.detail}"
        for f in report.failures
        if not (f.kind == FILE_ADDED and Path(f.place).name in allowed_orphans)
    ]


def check_station(home: Path, acks: Acks, sources: list[Path]) -> None:
    """Everything a crash must leave intact, then the repair, then signing."""
    station = Station.open(home)
    try:
        ledger = station.ledger
        for seq, sha in acks.entries.items():
            assert sha256_hex(ledger.entry(seq).raw) == sha, f"acknowledged entry {seq} changed"
        notes = {size: note for size, note, _ in ledger.checkpoints()}
        for size, sha in acks.checkpoints.items():
            assert size in notes, f"acknowledged checkpoint {size} lost"
            assert sha256_hex(notes[size].encode()) == sha, f"checkpoint {size} changed"
        # An entry and the state change it records commit together or not at all.
        state = dict(ledger.execute("SELECT seq, digest FROM crash_state"))
        assert state == {e.seq: e.digest for e in ledger.entries_of_type(KIND)}

        digests = {sha256_hex(p.read_bytes()) for p in sources}
        report = audit(station)
        assert not other_failures(report, digests), report.render()
        assert not report.unverifiable, report.render()

        # Running the interrupted ingest again converges: each recording once.
        for result in ingest(station, sources):
            assert result.seq is not None
        ingested = [str(e.body["sha256"]) for e in ledger.entries_of_type(INGEST)]
        assert len(ingested) == len(set(ingested)), "a recording was recorded twice"
        assert digests <= set(ingested)
        assert set(station.store.stored()) == set(ingested)
        assert_clean(audit(station))

        # The signer still signs, with the key the ledger says is in force.
        signed = station.checkpoint()
        assert signed.checkpoint.size == ledger.size()
        key = station.keys.load().verifier
        assert station.key_history().epochs[-1].key == key
        open_note(signed.note, [key])
        for vkey in acks.keys:
            assert any(e.key.vkey == vkey for e in station.key_history().epochs)
    finally:
        station.close()


@pytest.mark.parametrize(
    ("mode", "iterations", "seed"),
    [
        ("mixed", 25, 1001),
        ("checkpoint", 12, 2002),
        ("rotate", 8, 3003),
    ],
)
def test_killed_writer_loses_nothing_acknowledged(
    home: Path, mode: str, iterations: int, seed: int
) -> None:
    rng = random.Random(seed)
    acks = Acks()
    started = time.monotonic()
    done = acked = 0
    for k in range(iterations):
        sources = make_sources(
            home.parent / f"src-{k}",
            tuple(rng.randrange(1, 300_000) for _ in range(4)),
            seed=seed + k,
        )
        output = run_and_kill(home, sources[0].parent, mode, seed + k, rng.uniform(0.0, MAX_DELAY))
        acked += acks.add(output)
        check_station(home, acks, sources)
        done += 1
        if time.monotonic() - started > BUDGET:
            break
    assert done >= 5, f"only {done} kill iterations ran within the time budget"
    assert acked > 0, "the writer never acknowledged a write: nothing was tested"


# -- exact crash points ------------------------------------------------------


def test_crash_after_signer_state_before_checkpoint_commit(tmp_path: Path) -> None:
    """The signer's record is written before the signed checkpoint row commits: a crash
    between the two leaves a signed size with no stored checkpoint. That is no finding,
    and the next checkpoint of the same tree is signed again."""
    home = tmp_path / "home"
    station = Station.init(home, "dock-c1")
    ingest(station, make_sources(tmp_path / "src", (5_000, 6_000), seed=1))
    ledger = station.ledger
    size, root = ledger.size(), ledger.root()
    station.keys.checkpoint_signer(station.origin).sign(size, root, ledger.consistency_proof)
    station.close()  # the checkpoint row never committed

    station = Station.open(home)
    assert station.ledger.latest_checkpoint() is not None
    assert_clean(audit(station))
    signed = station.checkpoint()
    assert (signed.checkpoint.size, signed.checkpoint.root) == (size, root)
    assert_clean(audit(station))
    station.close()


def rotation_crash(tmp_path: Path, point: str) -> tuple[Path, NoteSigner, NoteSigner]:
    """Stop Station.rotate_key at ``point``, as a kill there would; return the
    station folder, the old and the new signer."""
    home = tmp_path / "home"
    station = Station.init(home, "dock-r1")
    ingest(station, make_sources(tmp_path / "src", (5_000,), seed=2))
    station.checkpoint()
    old, new = station.keys.load(), NoteSigner.generate(station.origin)
    staged = station.keys.folder / "station.key.next"
    write_atomic(staged, new.private_text().encode())
    if point != "staged":
        with station.ledger.transaction() as tx:
            tx.append(KEY_ROTATION, rotation_body(station.station_id, tx.size, old, new))
    if point == "old-key-wiped":
        # KeyStore.replace overwrites the old key in place before writing the new one.
        size = station.keys.key_path.stat().st_size
        station.keys.key_path.write_bytes(b"\0" * size)
    elif point == "key-replaced":
        write_atomic(station.keys.key_path, new.private_text().encode())
    station.close()
    return home, old, new


@pytest.mark.parametrize(
    ("point", "in_force"),
    [
        ("staged", "old"),  # new key on disk, rotation entry never committed
        ("committed", "new"),  # entry committed, key not yet swapped
        ("key-replaced", "new"),  # key swapped, staged copy not yet removed
        # a blank key file (as an older scrub-in-place left behind) is replaced by the staged key
        ("old-key-wiped", "new"),
    ],
)
def test_crash_during_key_rotation(tmp_path: Path, point: str, in_force: str) -> None:
    home, old, new = rotation_crash(tmp_path, point)
    station = Station.open(home)
    try:
        expected = (new if in_force == "new" else old).verifier
        assert station.keys.load().verifier == expected
        assert station.key_history().epochs[-1].key == expected
        assert not (station.keys.folder / "station.key.next").exists()
        signed = station.checkpoint()
        open_note(signed.note, [expected])
        assert_clean(audit(station))
    finally:
        station.close()


def test_crash_leaves_no_half_written_store_file(tmp_path: Path) -> None:
    """A writer killed mid-copy leaves at most a staging file, never a store file
    that is not a complete, verified recording."""
    home = make_home(tmp_path / "home")
    rng = random.Random(3)
    sources = make_sources(tmp_path / "src", (24 << 20, 24 << 20), seed=3)
    run_and_kill(home, sources[0].parent, "mixed", 3, rng.uniform(0.02, 0.08))
    station = Station.open(home)
    try:
        digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}
        assert set(station.store.stored()) <= digests
        report = audit(station)
        assert not other_failures(report, digests), report.render()
        ingest(station, sources)
        assert_clean(audit(station))
    finally:
        station.close()


# -- auditing beside a live writer -------------------------------------------


@pytest.mark.parametrize(("mode", "files"), [("checkpoint", False), ("mixed", True)])
def test_audit_beside_a_live_writer_finds_nothing(
    home: Path, tmp_path: Path, mode: str, files: bool
) -> None:
    """`evidock ledger verify` may run while the daemon appends, signs and ingests:
    a healthy dock must never be reported as tampered with."""
    sources = make_sources(tmp_path / "src", tuple(20_000 + n for n in range(200)), seed=9)
    out = tmp_path / "live.out"
    with out.open("w") as fo:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(home), str(sources[0].parent), mode, "9"],
            stdout=fo,
            stderr=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not out.read_text().startswith("READY\n"):
            assert proc.poll() is None and time.monotonic() < deadline, "writer did not start"
            time.sleep(0.005)
        station = Station.open(home)
        try:
            stop = time.monotonic() + 2.0
            audits = 0
            while time.monotonic() < stop:
                report = audit(station, files=files)
                assert not report.failures and not report.unverifiable, report.render()
                audits += 1
            assert audits >= 3
        finally:
            station.close()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
