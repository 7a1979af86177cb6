"""A dock process for crash tests: it writes to a station until it is killed.

    python crash_writer.py HOME SOURCES MODE SEED

It prints ``READY`` once the station is open, then one line per write that has
returned (and so has been promised durable), flushed before the next write:

    ACK <seq> <sha256 of the entry's bytes>
    CKPT <size> <sha256 of the signed note>

Modes: ``mixed`` ingests the files in SOURCES (the real ingest path) between
plain appends that commit together with a row of the test's ``crash_state``
table, with a checkpoint now and then; ``checkpoint`` signs a checkpoint after
every append; ``rotate`` rotates the station key every third append.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from agent.offload.ingest import Binding, ingest_file
from hashing.station import Station

KIND = "crash_test"  # an entry type of this test; verifiers accept unknown types


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _ack(station: Station, seq: int) -> None:
    _say(f"ACK {seq} {hashlib.sha256(station.ledger.entry(seq).raw).hexdigest()}")


def _append(station: Station, n: int, rng: random.Random) -> None:
    with station.ledger.transaction() as tx:
        entry = tx.append(KIND, {"n": n, "pad": rng.randbytes(rng.randrange(0, 600)).hex()})
        tx.conn.execute(
            "INSERT INTO crash_state (seq, digest) VALUES (?, ?)", (entry.seq, entry.digest)
        )
    _say(f"ACK {entry.seq} {hashlib.sha256(entry.raw).hexdigest()}")


def _checkpoint(station: Station) -> None:
    signed = station.checkpoint()
    _say(f"CKPT {signed.checkpoint.size} {hashlib.sha256(signed.note.encode()).hexdigest()}")


def run(home: Path, sources: Path, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    station = Station.open(home)
    pending = sorted(sources.iterdir()) if sources.is_dir() else []
    binding = Binding(officer="officer-7", device="CAM0001", case="crash")
    _say("READY")
    n = 0
    while True:
        n += 1
        if mode == "mixed":
            if n % 3 == 0 and pending:
                result = ingest_file(station, pending.pop(0), binding)
                if result.seq is not None:
                    _ack(station, result.seq)
            else:
                _append(station, n, rng)
            if n % 7 == 0:
                _checkpoint(station)
        elif mode == "checkpoint":
            _append(station, n, rng)
            _checkpoint(station)
        elif mode == "rotate":
            _append(station, n, rng)
            if n % 3 == 0:
                entry = station.rotate_key()
                _ack(station, entry.seq)
                _say(f"KEY {station.keys.load().verifier.vkey}")
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
