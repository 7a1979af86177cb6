"""The SQLite ledger, on real database files: chain, tree, atomicity, concurrency
(threads and a second process), append-only triggers and checkpoints.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hashing import canonical
from hashing.checkpoint import CheckpointSigner, SignedCheckpoint
from hashing.entries import Entry, build_entry
from hashing.errors import ConfigError, ForkError, InputError
from hashing.ledger import Ledger
from hashing.merkle import EMPTY_ROOT, verify_consistency, verify_inclusion
from hashing.note import NoteSigner
from tests.unit.hashing.test_canonical import model_encode
from tests.unit.hashing.test_merkle import (
    complete_subtrees,
    model_leaf,
    model_mth,
    model_path,
    model_proof,
)

REPO = Path(__file__).resolve().parents[3]
STATION, ORIGIN = "st-1", "evidock/st-1"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(db_path: Path) -> Iterator[Ledger]:
    led = Ledger.create(db_path, station=STATION, origin=ORIGIN)
    yield led
    led.close()


def raw_rows(path: Path) -> list[tuple[int, str, bytes]]:
    """The entries table, read through a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return [
            (int(s), str(t), bytes(d))
            for s, t, d in conn.execute("SELECT seq, type, data FROM entries ORDER BY seq")
        ]
    finally:
        conn.close()


def check_chain(raws: list[bytes]) -> list[dict[str, Any]]:
    """Every entry canonical, numbered in order, and chained by prev; returns them parsed."""
    parsed: list[dict[str, Any]] = []
    prev: str | None = None
    for seq, raw in enumerate(raws):
        value = json.loads(raw)
        assert model_encode(value).encode() == raw  # exactly the RFC 8785 bytes
        assert canonical.loads(raw) == value
        assert value["seq"] == seq
        assert value["prev"] == prev
        assert value["station"] == STATION
        assert Entry.parse(raw).digest == hashlib.sha256(raw).hexdigest()
        prev = hashlib.sha256(raw).hexdigest()
        parsed.append(value)
    return parsed


def check_tree(ledger: Ledger, raws: list[bytes]) -> None:
    """Root and every stored node equal the model over the entry bytes."""
    assert ledger.root() == model_mth(raws)
    rows = ledger.execute("SELECT end, level, hash FROM nodes ORDER BY end, level")
    expected = [
        ((index + 1) << level, level, model_mth(raws[index << level : (index + 1) << level]))
        for level, index in complete_subtrees(len(raws))
    ]
    assert [(e, lv, bytes(h)) for e, lv, h in rows] == expected


# --------------------------------------------------------------------------
# Creating and appending
# --------------------------------------------------------------------------


def test_create_open_and_meta(db_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ledger"):
        Ledger(db_path)
    led = Ledger.create(db_path, station=STATION, origin=ORIGIN)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert (led.station, led.origin, led.size(), led.root()) == (STATION, ORIGIN, 0, EMPTY_ROOT)
    led.append("genesis", {"origin": ORIGIN})
    led.close()
    # Creating again keeps what is there (meta included); opening sees it.
    again = Ledger.create(db_path, station="other", origin="evidock/other")
    assert (again.station, again.origin, again.size()) == (STATION, ORIGIN, 1)
    again.close()
    reopened = Ledger(db_path)
    assert reopened.entry(0).type == "genesis"
    with pytest.raises(InputError):
        reopened.entry(1)
    reopened.close()


def test_appends_are_chained_canonical_entries(ledger: Ledger, db_path: Path) -> None:
    bodies: list[dict[str, Any]] = [
        {"origin": ORIGIN},
        {"sha256": "ab" * 32, "size": 123, "name": "录像/0001.MP4"},
        {"nested": {"b": [1, 2, {"c": None}], "a": True}, "\ue000": 1, "\U0001f600": 2},
        {},
        {"max": 2**53 - 1, "min": -(2**53 - 1)},
    ]
    entries = [ledger.append(f"type{i % 2}", body) for i, body in enumerate(bodies)]
    assert [e.seq for e in entries] == list(range(len(bodies)))
    rows = raw_rows(db_path)
    assert [raw for _, _, raw in rows] == [e.raw for e in entries]
    assert [t for _, t, _ in rows] == [e.type for e in entries]
    parsed = check_chain([e.raw for e in entries])
    assert [p["body"] for p in parsed] == bodies
    assert [p["type"] for p in parsed] == ["type0", "type1", "type0", "type1", "type0"]
    assert entries[0].prev is None
    for before, after in itertools.pairwise(entries):
        assert after.prev == before.digest == hashlib.sha256(before.raw).hexdigest()
    for e in entries:
        assert ledger.entry(e.seq) == e
        assert ledger.leaf_hash(e.seq) == model_leaf(e.raw)
        assert Entry.parse(e.raw) == e
    assert list(ledger.raw_entries()) == [(e.seq, e.raw) for e in entries]
    assert list(ledger.raw_entries(1, 3)) == [(e.seq, e.raw) for e in entries[1:3]]
    assert [e.seq for e in ledger.entries_of_type("type1")] == [1, 3]
    with pytest.raises(InputError):
        ledger.append("bad", {"f": 1.5})
    with pytest.raises(InputError):
        ledger.append("bad", {"n": 2**53})
    assert ledger.size() == len(bodies)


def test_roots_and_proofs_equal_the_model_for_every_size(ledger: Ledger) -> None:
    raws: list[bytes] = []
    for i in range(41):
        assert ledger.root() == model_mth(raws)
        raws.append(ledger.append("ingest", {"i": i}).raw)
    check_tree(ledger, raws)
    for n in range(len(raws) + 1):
        root = ledger.root(n)
        assert root == model_mth(raws[:n])
        for i in range(n):
            proof = ledger.inclusion_proof(i, n)
            assert proof == model_path(i, raws[:n]), (i, n)
            verify_inclusion(model_leaf(raws[i]), i, n, proof, root)
        for m in range(n + 1):
            proof = ledger.consistency_proof(m, n)
            assert proof == model_proof(m, raws[:n]), (m, n)
            verify_consistency(m, n, model_mth(raws[:m]), root, proof)
    for bad in (
        lambda: ledger.root(42),
        lambda: ledger.root(-1),
        lambda: ledger.inclusion_proof(0, 42),
        lambda: ledger.consistency_proof(3, 42),
    ):
        with pytest.raises(InputError):
            bad()


# --------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------


def _insert_file(tx_conn: sqlite3.Connection, sha: str, seq: int) -> None:
    tx_conn.execute(
        "INSERT INTO files (sha256, size, chunk_size, chunk_root, chunks, seq, name)"
        " VALUES (?, 10, 1048576, ?, ?, ?, 'clip.mp4')",
        (sha, "00" * 32, b"", seq),
    )


def _files(ledger: Ledger) -> list[str]:
    return [str(r[0]) for r in ledger.execute("SELECT sha256 FROM files ORDER BY sha256")]


def test_append_and_state_change_commit_together(ledger: Ledger, db_path: Path) -> None:
    ledger.append("genesis", {})
    with ledger.transaction() as tx:
        entry = tx.append("ingest", {"sha256": "aa" * 32})
        _insert_file(tx.conn, "aa" * 32, entry.seq)
        # Not visible to anyone else before the commit.
        assert len(raw_rows(db_path)) == 1
    assert len(raw_rows(db_path)) == 2
    assert _files(ledger) == ["aa" * 32]
    check_tree(ledger, [raw for _, _, raw in raw_rows(db_path)])


@pytest.mark.parametrize("failure", ["exception", "interrupt", "constraint"])
def test_failure_inside_a_transaction_rolls_back_entry_and_state(
    ledger: Ledger, db_path: Path, failure: str
) -> None:
    first = ledger.append("genesis", {})
    nodes_before = ledger.execute("SELECT count(*) FROM nodes")
    error: type[BaseException] = {
        "exception": RuntimeError,
        "interrupt": KeyboardInterrupt,
        "constraint": sqlite3.IntegrityError,
    }[failure]
    with pytest.raises(error), ledger.transaction() as tx:
        a = tx.append("ingest", {"sha256": "bb" * 32})
        _insert_file(tx.conn, "bb" * 32, a.seq)
        tx.append("tag", {"case": "X"})
        if failure == "exception":
            raise RuntimeError("copy failed after the entry was written")
        if failure == "interrupt":
            raise KeyboardInterrupt
        _insert_file(tx.conn, "cc" * 32, 999)  # no entry 999: foreign key fails
    assert ledger.size() == 1
    assert [raw for _, _, raw in raw_rows(db_path)] == [first.raw]
    assert _files(ledger) == []
    assert ledger.execute("SELECT count(*) FROM nodes") == nodes_before
    # The head is read afresh: the next entry follows the surviving one.
    nxt = ledger.append("ingest", {"n": 1})
    assert (nxt.seq, nxt.prev) == (1, first.digest)
    check_tree(ledger, [first.raw, nxt.raw])


def test_append_entry_must_follow_the_head(ledger: Ledger) -> None:
    first = ledger.append("genesis", {})
    wrong_seq = build_entry(seq=5, kind="x", station=STATION, prev=first.digest, body={})
    wrong_prev = build_entry(seq=1, kind="x", station=STATION, prev="00" * 32, body={})
    for entry in (wrong_seq, wrong_prev):
        with pytest.raises(InputError, match="does not follow"), ledger.transaction() as tx:
            tx.append_entry(entry)
    good = build_entry(seq=1, kind="x", station=STATION, prev=first.digest, body={})
    with ledger.transaction() as tx:
        tx.append_entry(good)
    assert ledger.entry(1) == good


# --------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------


def _check_all_present(ledger: Ledger, db_path: Path, writers: dict[str, int]) -> None:
    raws = [raw for _, _, raw in raw_rows(db_path)]
    assert len(raws) == sum(writers.values())
    parsed = check_chain(raws)
    for writer, count in writers.items():
        mine = [p["body"]["n"] for p in parsed if p["body"].get("w") == writer]
        assert mine == list(range(count)), writer  # none lost, none doubled, in order
    check_tree(ledger, raws)


def test_threads_sharing_one_ledger(ledger: Ledger, db_path: Path) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    returned: list[list[Entry]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                returned[t].append(ledger.append("ingest", {"w": f"t{t}", "n": n}))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    assert not errors
    _check_all_present(ledger, db_path, {f"t{t}": per_thread for t in range(threads)})
    seqs = sorted(e.seq for r in returned for e in r)
    assert seqs == list(range(threads * per_thread))
    for r in returned:  # what each append returned is what was stored
        for e in r:
            assert ledger.entry(e.seq) == e


def test_threads_with_their_own_connections(db_path: Path) -> None:
    Ledger.create(db_path, station=STATION, origin=ORIGIN).close()
    threads, per_thread = 4, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        led = Ledger(db_path)
        try:
            barrier.wait()
            for n in range(per_thread):
                led.append("ingest", {"w": f"c{t}", "n": n})
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            led.close()

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    assert not errors
    check = Ledger(db_path)
    try:
        _check_all_present(check, db_path, {f"c{t}": per_thread for t in range(threads)})
    finally:
        check.close()


_CHILD = """
import sys
import time
from pathlib import Path
from hashing.ledger import Ledger

ledger = Ledger(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
for n in range(int(sys.argv[2])):
    with ledger.transaction() as tx:
        tx.append("ingest", {"w": "child", "n": n})
    time.sleep(0.002)
ledger.close()
print("done", flush=True)
"""


def test_a_second_process_appends_concurrently(ledger: Ledger, db_path: Path) -> None:
    count = 60
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        # Hold the write lock while the child starts: its first append must wait
        # for this transaction and then follow it (the head is read under the lock).
        with ledger.transaction() as tx:
            tx.append("ingest", {"w": "parent", "n": 0})
            child.stdin.write("go\n")
            child.stdin.flush()
            time.sleep(0.3)
            assert len(raw_rows(db_path)) == 0  # nothing committed by anyone yet
        for n in range(1, count):
            ledger.append("ingest", {"w": "parent", "n": n})
            # SQLite's busy handler sleeps up to 100 ms between tries; a longer
            # pause now and then guarantees the waiting child gets its turns.
            time.sleep(0.25 if n % 10 == 0 else 0.002)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.strip() == "done"
    _check_all_present(ledger, db_path, {"parent": count, "child": count})
    writers = [json.loads(raw)["body"]["w"] for _, _, raw in raw_rows(db_path)]
    assert writers[0] == "parent"
    switches = sum(a != b for a, b in itertools.pairwise(writers))
    assert switches >= 2, "the two processes never interleaved"


# --------------------------------------------------------------------------
# Append-only
# --------------------------------------------------------------------------


def test_update_and_delete_are_refused(ledger: Ledger, db_path: Path, tmp_path: Path) -> None:
    for i in range(3):
        ledger.append("ingest", {"n": i})
    key = NoteSigner.generate(ORIGIN)
    ledger.sign_checkpoint(CheckpointSigner(key, ORIGIN, tmp_path / "state.json"))
    before = raw_rows(db_path)
    nodes = ledger.execute("SELECT * FROM nodes ORDER BY end, level")
    checkpoints = ledger.checkpoints()
    statements = [
        "UPDATE entries SET type = 'edited' WHERE seq = 1",
        "UPDATE entries SET data = x'00'",
        "DELETE FROM entries WHERE seq = 2",
        "DELETE FROM entries",
        "UPDATE nodes SET hash = x'00' WHERE level = 0",
        "DELETE FROM nodes",
        "UPDATE checkpoints SET note = 'forged'",
        "DELETE FROM checkpoints",
        # REPLACE deletes the old row first; that must count as a delete.
        "INSERT OR REPLACE INTO entries (seq, type, data) VALUES (1, 'edited', x'00')",
        "REPLACE INTO nodes (end, level, hash) VALUES (1, 0, x'00')",
    ]
    for sql in statements:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            ledger.execute(sql)
    # The same through a plain connection of someone else's (no ledger pragmas):
    # UPDATE and DELETE triggers live in the file.
    conn = sqlite3.connect(db_path)
    try:
        for sql in statements[:8]:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
        conn.rollback()
    finally:
        conn.close()
    assert raw_rows(db_path) == before
    assert ledger.execute("SELECT * FROM nodes ORDER BY end, level") == nodes
    assert ledger.checkpoints() == checkpoints


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


class CountingSigner(CheckpointSigner):
    """The real signer, counting how often the ledger asks it to sign."""

    calls = 0

    def sign(
        self, size: int, root: bytes, prove: Callable[[int, int], list[bytes]]
    ) -> SignedCheckpoint:
        self.calls += 1
        return super().sign(size, root, prove)


def test_sign_checkpoint(ledger: Ledger, tmp_path: Path) -> None:
    key = NoteSigner.generate(ORIGIN)
    state = tmp_path / "checkpoint-state.json"
    signer = CountingSigner(key, ORIGIN, state)
    empty = ledger.sign_checkpoint(signer)
    assert (empty.checkpoint.size, empty.checkpoint.root) == (0, EMPTY_ROOT)

    raws = [ledger.append("ingest", {"n": i}).raw for i in range(5)]
    signed = ledger.sign_checkpoint(signer)
    assert (signed.checkpoint.origin, signed.checkpoint.size) == (ORIGIN, 5)
    assert signed.checkpoint.root == model_mth(raws)
    opened, _ = SignedCheckpoint.open(signed.note, [key.verifier])
    assert opened == signed
    state_text = state.read_text()

    # No growth: the same checkpoint back, nothing new stored or signed.
    assert signer.calls == 2
    again = ledger.sign_checkpoint(signer)
    assert again == signed
    assert signer.calls == 2
    assert ledger.latest_checkpoint() == signed
    assert [size for size, _, _ in ledger.checkpoints()] == [0, 5]
    assert state.read_text() == state_text
    # A second checkpoint row for one size is refused by the schema itself.
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.execute(
            "INSERT INTO checkpoints (size, root, note, key_id, signed_at) VALUES (5, x'00', '', '', '')"
        )
    assert [size for size, _, _ in ledger.checkpoints()] == [0, 5]

    raws += [ledger.append("ingest", {"n": i}).raw for i in range(5, 8)]
    grown = ledger.sign_checkpoint(signer)
    assert (grown.checkpoint.size, grown.checkpoint.root) == (8, model_mth(raws))
    assert [size for size, _, _ in ledger.checkpoints()] == [0, 5, 8]
    assert [note for _, note, _ in ledger.checkpoints()][1:] == [signed.note, grown.note]
    verify_consistency(
        5, 8, signed.checkpoint.root, grown.checkpoint.root, ledger.consistency_proof(5, 8)
    )


def test_a_replaced_ledger_cannot_be_signed(ledger: Ledger, tmp_path: Path) -> None:
    """The signer's state outlives the database: an older or different copy of the
    ledger is refused (ForkError), and nothing is stored in it."""
    key = NoteSigner.generate(ORIGIN)
    state = tmp_path / "keys-state.json"
    for i in range(6):
        ledger.append("ingest", {"n": i})
    ledger.sign_checkpoint(CheckpointSigner(key, ORIGIN, state))

    for name, count in (("older", 4), ("forked", 6), ("forked-longer", 9)):
        other = Ledger.create(tmp_path / f"{name}.db", station=STATION, origin=ORIGIN)
        try:
            for i in range(count):
                other.append("ingest", {"n": i, "forged": True})
            with pytest.raises(ForkError):
                other.sign_checkpoint(CheckpointSigner(key, ORIGIN, state))
            assert other.checkpoints() == []
        finally:
            other.close()
    # The honest ledger, grown, still signs.
    ledger.append("ingest", {"n": 6})
    assert ledger.sign_checkpoint(CheckpointSigner(key, ORIGIN, state)).checkpoint.size == 7
