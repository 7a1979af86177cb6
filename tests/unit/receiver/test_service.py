"""The platform's receiver, one message at a time through ``Receiver.handle``.

Stations here are real (``Station.init``: a key, a ledger, signed checkpoints)
and the files their ``ingest`` entries describe are real bytes, so every
proof and signature the receiver checks is one a dock would send. The
receiver keeps its state in real SQLite and real folders under ``tmp_path``;
each hostile case asserts both the answer and that nothing on disk changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import queue
import random
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashing._fsutil import write_atomic
from hashing.checkpoint import SignedCheckpoint
from hashing.entries import INGEST, Entry
from hashing.errors import ConfigError
from hashing.note import NoteSigner, NoteVerifier, parse_note, sign_note
from hashing.station import Station
from receiver import service as receiver_module
from receiver.service import Message, Outgoing, Receiver, ReceiverSettings
from uploader import protocol
from uploader.protocol import (
    RC_CANCEL,
    RC_QUOTA,
    RC_RESTART,
    RC_RETRY,
    RC_SUCCESS,
    FileMeta,
    Provenance,
    Receipt,
    Result,
    Topics,
)

SEG = 4096


# -- a dock, as the receiver sees one ------------------------------------------------


class Dock:
    """A real station whose ledger records files by ``ingest`` entries, and the
    messages its uploader would send for them."""

    def __init__(self, home: Path, station_id: str = "dock-01") -> None:
        self.station = Station.init(home, station_id)
        self.id = station_id
        self.topics = Topics(station_id)

    @property
    def key(self) -> NoteVerifier:
        return self.station.keys.load().verifier

    def add(self, data: bytes) -> Entry:
        """Record a file (its digest and size) and sign a checkpoint over it."""
        return self.add_raw(hashlib.sha256(data).hexdigest(), len(data))

    def add_raw(self, sha256: str, size: int, kind: str = INGEST) -> Entry:
        entry = self.station.ledger.append(kind, {"sha256": sha256, "size": size})
        self.station.checkpoint()
        return entry

    def checkpoint(self) -> SignedCheckpoint:
        return self.station.checkpoint()

    def provenance(
        self, entry: Entry, cp: SignedCheckpoint | None = None, held: int = 0
    ) -> Provenance:
        cp = cp or self.checkpoint()
        size = cp.checkpoint.size
        ledger = self.station.ledger
        return Provenance(
            station=self.id,
            entry=entry.raw,
            inclusion=tuple(ledger.inclusion_proof(entry.seq, size)),
            checkpoint=cp.note,
            consistency_from=held,
            consistency=tuple(ledger.consistency_proof(held, size) if 0 < held < size else []),
        )

    def init(
        self,
        data: bytes,
        entry: Entry,
        *,
        cp: SignedCheckpoint | None = None,
        held: int = 0,
        prov: Provenance | None = None,
        ttl: int = 3600,
    ) -> tuple[str, bytes]:
        prov = prov or self.provenance(entry, cp, held)
        meta = FileMeta(
            name="CLIP0001.MP4",
            size=len(data),
            checksum=hashlib.sha256(data).hexdigest(),
            expire_at=0,
            segments_ttl=ttl,
            user_data=prov.to_json(),
        )
        return self.topics.init(meta.checksum), meta.to_json()

    def segment(
        self, data: bytes, offset: int, length: int, file_id: str = ""
    ) -> tuple[str, bytes]:
        file_id = file_id or hashlib.sha256(data).hexdigest()
        chunk = data[offset : offset + length]
        return self.topics.segment(file_id, offset, hashlib.sha256(chunk).hexdigest()), chunk

    def fin(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        return self.topics.fin(sha, len(data), sha)

    def close(self) -> None:
        self.station.close()


def send(
    receiver: Receiver,
    topic: str,
    payload: bytes = b"",
    *,
    correlation: bytes | None = b"corr",
    response_topic: str | None = None,
) -> list[Outgoing]:
    return receiver.handle(
        topic, payload, response_topic=response_topic, correlation=correlation, packet_id=7
    )


def result(out: list[Outgoing], station: str = "dock-01") -> Result:
    """The one result among ``out`` (always on the station's results topic)."""
    results = [o for o in out if o.topic == Topics(station).results]
    assert len(results) == 1, out
    assert not results[0].retain
    return Result.from_json(results[0].payload)


def code(out: list[Outgoing], station: str = "dock-01") -> int:
    return result(out, station).reason_code


def on(out: list[Outgoing], topic: str) -> list[Outgoing]:
    return [o for o in out if o.topic == topic]


def segments_of(size: int, seg: int = SEG) -> list[tuple[int, int]]:
    return [(o, min(seg, size - o)) for o in range(0, size, seg)]


def upload(receiver: Receiver, dock: Dock, data: bytes, entry: Entry, held: int = 0) -> str:
    """init, every segment, fin; returns the receipt note."""
    assert code(send(receiver, *dock.init(data, entry, held=held))) == RC_SUCCESS
    for offset, length in segments_of(len(data)):
        assert code(send(receiver, *dock.segment(data, offset, length))) == RC_SUCCESS
    out = send(receiver, dock.fin(data))
    assert code(out) == RC_SUCCESS, result(out)
    (receipt,) = on(out, dock.topics.receipts)
    return receipt.payload.decode()


Snapshot = tuple[dict[str, list[str]], list[tuple[str, str]]]


def snapshot(home: Path) -> Snapshot:
    """Everything the receiver keeps: every table's rows, every file under home."""
    conn = sqlite3.connect(f"file:{home / 'receiver.db'}?mode=ro", uri=True)
    try:
        names = [
            n
            for (n,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        tables = {
            n: sorted(map(repr, conn.execute(f'SELECT * FROM "{n}"')))  # noqa: S608 - from sqlite_master
            for n in names
        }
    finally:
        conn.close()
    files = sorted(
        (
            str(p.relative_to(home)),
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
        )
        for p in home.rglob("*")
        if not p.name.startswith("receiver.db")
    )
    return tables, files


def rows(home: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{home / 'receiver.db'}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Bed:
    dock: Dock
    receiver: Receiver
    home: Path
    settings: ReceiverSettings

    def reopen(self) -> Receiver:
        self.receiver.close()
        self.receiver = Receiver(self.settings)
        return self.receiver


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    dock = Dock(tmp_path / "dock")
    s = ReceiverSettings(tmp_path / "receiver", {"dock-01": (dock.key,)})
    b = Bed(dock, Receiver(s), s.home, s)
    yield b
    b.receiver.close()
    dock.close()


DATA = random_bytes(3 * SEG + 1000, seed=1)
SHA = hashlib.sha256(DATA).hexdigest()


# -- the happy path ------------------------------------------------------------------


def test_upload_out_of_order_with_duplicates_stores_byte_exact_and_receipts(bed: Bed) -> None:
    dock, receiver = bed.dock, bed.receiver
    entry = dock.add(DATA)
    out = send(receiver, *dock.init(DATA, entry), correlation=b"c-init")
    r = result(out)
    assert (r.reason_code, r.topic, r.packet_id) == (RC_SUCCESS, dock.topics.init(SHA), 7)
    assert r.held_size == dock.checkpoint().checkpoint.size
    assert out[0].correlation == b"c-init"
    # The first checkpoint of a station is held, and said so (retained).
    (held,) = on(out, dock.topics.held)
    assert held.retain and held.payload.decode() == dock.checkpoint().note

    order = segments_of(len(DATA))
    random.Random(3).shuffle(order)
    for offset, length in [*order, order[0], order[2]]:  # two duplicates
        out = send(receiver, *dock.segment(DATA, offset, length), correlation=f"s{offset}".encode())
        assert code(out) == RC_SUCCESS
        assert out[0].correlation == f"s{offset}".encode()
    assert receiver.stored(SHA) is None

    out = send(receiver, dock.fin(DATA), correlation=b"c-fin")
    assert code(out) == RC_SUCCESS
    (receipt_msg,) = on(out, dock.topics.receipts)
    assert not receipt_msg.retain
    receipt = Receipt.open(receipt_msg.payload, [receiver.verifier])
    assert (receipt.station, receipt.sha256, receipt.size, receipt.seq) == (
        "dock-01",
        SHA,
        len(DATA),
        entry.seq,
    )
    assert receipt.held_size == dock.checkpoint().checkpoint.size
    assert time.strptime(receipt.stored_at, "%Y-%m-%dT%H:%M:%SZ")

    path = receiver.stored(SHA)
    assert path is not None and path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert path == bed.home / "store" / SHA[:2] / SHA[2:4] / SHA
    assert not list((bed.home / "spool").iterdir())
    assert rows(bed.home, "SELECT count(*) FROM transfers") == [(0,)]
    assert rows(bed.home, "SELECT count(*) FROM segments") == [(0,)]

    # fin again (a dock that waited too long for its receipt): the same receipt.
    again = send(receiver, dock.fin(DATA))
    assert code(again) == RC_SUCCESS
    assert on(again, dock.topics.receipts) == [receipt_msg]
    # init again for a stored file: OK at once, the receipt again; segments harmless.
    again = send(receiver, *dock.init(DATA, entry))
    assert code(again) == RC_SUCCESS and on(again, dock.topics.receipts) == [receipt_msg]
    assert code(send(receiver, *dock.segment(DATA, 0, SEG))) == RC_SUCCESS
    assert not list((bed.home / "spool").iterdir())


def test_empty_file(bed: Bed) -> None:
    entry = bed.dock.add(b"")
    assert code(send(bed.receiver, *bed.dock.init(b"", entry))) == RC_SUCCESS
    assert code(send(bed.receiver, *bed.dock.segment(b"", 0, 0))) == RC_SUCCESS
    out = send(bed.receiver, bed.dock.fin(b""))
    assert code(out) == RC_SUCCESS
    path = bed.receiver.stored(hashlib.sha256(b"").hexdigest())
    assert path is not None and path.read_bytes() == b""


def test_results_go_only_to_the_stations_own_topic(bed: Bed) -> None:
    entry = bed.dock.add(DATA)
    out = send(
        bed.receiver,
        *bed.dock.init(DATA, entry),
        response_topic="evidock/v1/docks/dock-02/results",
        correlation=b"xyz",
    )
    assert {o.topic for o in out} == {bed.dock.topics.results, bed.dock.topics.held}
    assert result(out).ok and out[0].correlation == b"xyz"


def test_state_folder_is_private(bed: Bed) -> None:
    home = bed.home
    for folder in (home, home / "keys", home / "spool", home / "store", home / "staging"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for file in (home / "keys" / "receipt.key", home / "receiver.db"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    # The key is kept: a receiver opened again signs with the same key.
    key = bed.receiver.verifier
    assert bed.reopen().verifier == key
    assert key.name == "evidock-platform"


def test_settings_refuse_what_cannot_work(tmp_path: Path) -> None:
    key = NoteSigner.generate("evidock/dock-01").verifier
    with pytest.raises(ConfigError, match="station"):
        ReceiverSettings(tmp_path, {"dock-01": (key,)}, prefix_template="$file-async")
    with pytest.raises(ConfigError):
        ReceiverSettings(tmp_path, {"dock/01": (key,)})
    with pytest.raises(ConfigError, match="no checkpoint key"):
        ReceiverSettings(tmp_path, {"dock-01": ()})
    with pytest.raises(ConfigError):
        ReceiverSettings(tmp_path, {}, min_segments_ttl_s=10, max_segments_ttl_s=5)


def test_receipt_key_readable_by_others_is_refused(bed: Bed) -> None:
    bed.receiver.close()
    os.chmod(bed.home / "keys" / "receipt.key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Receiver(bed.settings)
    os.chmod(bed.home / "keys" / "receipt.key", 0o600)
    bed.receiver = Receiver(bed.settings)


# -- hostile and malformed messages ----------------------------------------------------


@pytest.fixture
def midway(bed: Bed) -> Bed:
    """A transfer of DATA open, with its first and third segments stored."""
    entry = bed.dock.add(DATA)
    assert code(send(bed.receiver, *bed.dock.init(DATA, entry))) == RC_SUCCESS
    assert code(send(bed.receiver, *bed.dock.segment(DATA, 0, SEG))) == RC_SUCCESS
    assert code(send(bed.receiver, *bed.dock.segment(DATA, 2 * SEG, SEG))) == RC_SUCCESS
    return bed


def _init_with(dock: Dock, data: bytes, **changes: object) -> tuple[str, bytes]:
    topic, payload = dock.init(data, dock.add(data))
    value = json.loads(payload)
    value.update(changes)
    return topic, json.dumps(value).encode()


def _prov_with(dock: Dock, data: bytes, **changes: object) -> tuple[str, bytes]:
    topic, payload = dock.init(data, dock.add(data))
    value = json.loads(payload)
    value["user_data"].update(changes)
    return topic, json.dumps(value).encode()


def _forged_checkpoint(dock: Dock, data: bytes) -> tuple[str, bytes]:
    """The true checkpoint body, signed by a key of the same name that is not pinned."""
    entry = dock.add(data)
    cp = dock.checkpoint()
    text, _ = parse_note(cp.note)
    forged = sign_note(text, [NoteSigner.generate(dock.station.origin)])
    prov = dataclasses.replace(dock.provenance(entry, cp), checkpoint=forged)
    return dock.init(data, entry, prov=prov)


def _altered_checkpoint(dock: Dock, data: bytes) -> tuple[str, bytes]:
    """A checkpoint claiming a larger tree, keeping the pinned key's (now wrong) signature."""
    entry = dock.add(data)
    cp = dock.checkpoint()
    text, _ = parse_note(cp.note)
    lines = text.split("\n")
    lines[1] = str(int(lines[1]) + 1)
    note = "\n".join(lines) + cp.note[len(text) :]
    prov = dataclasses.replace(dock.provenance(entry, cp), checkpoint=note)
    return dock.init(data, entry, prov=prov)


def _proof_of_another_entry(dock: Dock, data: bytes) -> tuple[str, bytes]:
    entry = dock.add(data)
    other = dock.add(data + b"other")
    prov = dataclasses.replace(dock.provenance(entry), inclusion=dock.provenance(other).inclusion)
    return dock.init(data, entry, prov=prov)


def _entry_of_another_file(dock: Dock, data: bytes) -> tuple[str, bytes]:
    """The entry and proofs of another file, under this file's id (file id != content)."""
    other = dock.add(data[:-1] + b"\x00")
    return dock.init(data, other, prov=dock.provenance(other))


def _not_an_ingest(dock: Dock, data: bytes) -> tuple[str, bytes]:
    entry = dock.add_raw(hashlib.sha256(data).hexdigest(), len(data), kind="export")
    return dock.init(data, entry)


def _wrong_size(dock: Dock, data: bytes) -> tuple[str, bytes]:
    entry = dock.add_raw(hashlib.sha256(data).hexdigest(), len(data) + 1)
    return dock.init(data, entry)


NEW = random_bytes(2 * SEG, seed=2)
NEW_SHA = hashlib.sha256(NEW).hexdigest()


@pytest.mark.parametrize(
    ("case", "message", "want"),
    [
        ("bad JSON", lambda d: (d.topics.init(NEW_SHA), b"{not json"), RC_CANCEL),
        ("JSON array", lambda d: (d.topics.init(NEW_SHA), b"[]"), RC_CANCEL),
        (
            "oversized init",
            lambda d: _init_with(d, NEW, pad="x" * protocol.MAX_META_BYTES),
            RC_CANCEL,
        ),
        (
            "init size is not the entry's",
            lambda d: _init_with(d, NEW, size=len(NEW) + 1),
            RC_CANCEL,
        ),
        ("entry records another size", lambda d: _wrong_size(d, NEW), RC_CANCEL),
        ("checksum is not the file id", lambda d: _init_with(d, NEW, checksum=SHA), RC_CANCEL),
        ("negative size", lambda d: _init_with(d, NEW, size=-1), RC_CANCEL),
        ("no provenance", lambda d: _init_with(d, NEW, user_data={}), RC_CANCEL),
        ("forged checkpoint signature", lambda d: _forged_checkpoint(d, NEW), RC_CANCEL),
        ("altered checkpoint", lambda d: _altered_checkpoint(d, NEW), RC_CANCEL),
        ("inclusion proof of another entry", lambda d: _proof_of_another_entry(d, NEW), RC_CANCEL),
        ("file id is not the entry's file", lambda d: _entry_of_another_file(d, NEW), RC_CANCEL),
        ("entry is no ingest", lambda d: _not_an_ingest(d, NEW), RC_CANCEL),
        ("provenance names dock-02", lambda d: _prov_with(d, NEW, station="dock-02"), RC_CANCEL),
        ("entry is not canonical", lambda d: _prov_with(d, NEW, entry='{"v": 1}'), RC_CANCEL),
        ("file id not hex", lambda d: (f"$file-async/dock-01/{'X' * 64}/init", b"{}"), RC_CANCEL),
        ("unknown command", lambda d: (f"$file-async/dock-01/{SHA}/fin", b""), RC_CANCEL),
        ("offset not decimal", lambda d: (f"$file-async/dock-01/{SHA}/0x10", b"abc"), RC_CANCEL),
        (
            "offset past the end",
            lambda d: (d.topics.segment(SHA, len(DATA), hashlib.sha256(b"x").hexdigest()), b"x"),
            RC_CANCEL,
        ),
        (
            "segment runs past the end",
            lambda d: (d.topics.segment(SHA, len(DATA) - 5, "a" * 64), b"x" * 10),
            RC_CANCEL,
        ),
        ("overlapping the segment before", lambda d: d.segment(DATA, SEG // 2, SEG), RC_CANCEL),
        ("overlapping the segment after", lambda d: d.segment(DATA, SEG, SEG + 1), RC_CANCEL),
        ("same start, other length", lambda d: d.segment(DATA, 0, SEG // 2), RC_CANCEL),
        (
            "same range, other bytes",
            lambda d: (
                d.topics.segment(SHA, 0, hashlib.sha256(b"y" * SEG).hexdigest()),
                b"y" * SEG,
            ),
            RC_CANCEL,
        ),
        (
            "segment checksum mismatch",
            lambda d: (
                d.topics.segment(SHA, SEG, hashlib.sha256(b"z").hexdigest()),
                DATA[SEG : 2 * SEG],
            ),
            RC_RETRY,
        ),
        ("empty segment", lambda d: (f"$file-async/dock-01/{SHA}/{SEG}", b""), RC_CANCEL),
        ("segment of no transfer", lambda d: d.segment(NEW, 0, SEG), RC_RESTART),
        ("fin of no transfer", lambda d: (d.fin(NEW), b""), RC_RESTART),
        (
            "fin with the wrong size",
            lambda d: (d.topics.fin(SHA, len(DATA) - 1, SHA), b""),
            RC_CANCEL,
        ),
        (
            "fin with another checksum",
            lambda d: (d.topics.fin(SHA, len(DATA), NEW_SHA), b""),
            RC_CANCEL,
        ),
        ("fin with bytes missing", lambda d: (d.fin(DATA), b""), RC_RETRY),
    ],
)
def test_hostile_message_gets_an_error_and_changes_nothing(
    midway: Bed, case: str, message: object, want: int
) -> None:
    dock = midway.dock
    topic, payload = message(dock)  # type: ignore[operator]
    before = snapshot(midway.home)
    out = send(midway.receiver, topic, payload, correlation=b"hostile")
    r = result(out)
    assert r.reason_code == want, (case, r)
    assert r.reason_description, case
    assert r.topic == topic
    assert [o.topic for o in out] == [dock.topics.results], case
    assert out[0].correlation == b"hostile"
    if topic.endswith("/init"):
        assert r.held_size == 2, case  # every init result says what the receiver holds
    assert snapshot(midway.home) == before, case
    # The transfer in progress is unharmed: it still completes.
    for offset, length in segments_of(len(DATA)):
        assert code(send(midway.receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    assert code(send(midway.receiver, dock.fin(DATA))) == RC_SUCCESS
    stored = midway.receiver.stored(SHA)
    assert stored is not None and stored.read_bytes() == DATA


def test_fin_names_the_missing_ranges(midway: Bed) -> None:
    r = result(send(midway.receiver, midway.dock.fin(DATA)))
    assert r.reason_code == RC_RETRY
    assert f"missing bytes [{SEG}, {2 * SEG}), [{3 * SEG}, {len(DATA)})" in r.reason_description


def test_unknown_station_gets_no_answer_and_changes_nothing(midway: Bed) -> None:
    other = Dock(midway.home.parent / "dock-02", "dock-02")
    try:
        entry = other.add(NEW)
        before = snapshot(midway.home)
        for topic, payload in (
            other.init(NEW, entry),
            other.segment(NEW, 0, SEG),
            (other.fin(NEW), b""),
            (other.topics.checkpoint, other.checkpoint().note.encode()),
            ("$file-async", b""),
            ("elsewhere/entirely", b"{}"),
            ("", b""),
        ):
            assert send(midway.receiver, topic, payload) == []
        assert snapshot(midway.home) == before
    finally:
        other.close()


def test_station_cannot_upload_in_another_stations_name(tmp_path: Path) -> None:
    """dock-02 (its own key pinned) sends dock-01's genuine, signed provenance."""
    one, two = Dock(tmp_path / "one", "dock-01"), Dock(tmp_path / "two", "dock-02")
    s = ReceiverSettings(tmp_path / "receiver", {"dock-01": (one.key,), "dock-02": (two.key,)})
    receiver = Receiver(s)
    try:
        entry = one.add(DATA)
        _, payload = one.init(DATA, entry)
        before = snapshot(s.home)
        out = send(receiver, two.topics.init(SHA), payload)
        assert code(out, "dock-02") == RC_CANCEL
        assert snapshot(s.home) == before
        # Re-labelled as dock-02's provenance, the entry still names dock-01.
        value = json.loads(payload)
        value["user_data"]["station"] = "dock-02"
        out = send(receiver, two.topics.init(SHA), json.dumps(value).encode())
        assert code(out, "dock-02") == RC_CANCEL
        assert snapshot(s.home) == before
    finally:
        receiver.close()
        one.close()
        two.close()


def test_file_id_that_is_not_the_content_drops_every_segment(bed: Bed) -> None:
    """Segments whose bytes (each with a matching checksum) assemble to another digest."""
    dock, receiver = bed.dock, bed.receiver
    entry = dock.add(DATA)
    assert code(send(receiver, *dock.init(DATA, entry))) == RC_SUCCESS
    fake = bytearray(DATA)
    fake[SEG + 5] ^= 0xFF
    for offset, length in segments_of(len(DATA)):
        assert code(send(receiver, *dock.segment(bytes(fake), offset, length, SHA))) == RC_SUCCESS
    out = send(receiver, dock.fin(DATA))
    r = result(out)
    assert r.reason_code == RC_RETRY and "dropped" in r.reason_description
    assert not on(out, dock.topics.receipts)
    assert rows(bed.home, "SELECT count(*) FROM segments") == [(0,)]
    assert rows(bed.home, "SELECT count(*) FROM transfers") == [(1,)]
    assert not list((bed.home / "spool").iterdir())
    assert not list((bed.home / "staging").iterdir())
    assert receiver.stored(SHA) is None
    # The transfer stays open: the true bytes, sent again, are stored.
    for offset, length in segments_of(len(DATA)):
        assert code(send(receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    assert code(send(receiver, dock.fin(DATA))) == RC_SUCCESS


def test_abort_drops_the_transfer(midway: Bed) -> None:
    sha = SHA
    assert code(send(midway.receiver, f"$file-async/dock-01/{sha}/abort")) == RC_SUCCESS
    assert rows(midway.home, "SELECT count(*) FROM transfers") == [(0,)]
    assert not list((midway.home / "spool").iterdir())
    assert code(send(midway.receiver, *midway.dock.segment(DATA, SEG, SEG))) == RC_RESTART
    assert code(send(midway.receiver, f"$file-async/dock-01/{sha}/abort")) == RC_SUCCESS


def test_repeated_init_keeps_segments_and_a_new_size_restarts(midway: Bed) -> None:
    dock, receiver = midway.dock, midway.receiver
    entry = dock.station.ledger.entry(1)
    assert code(send(receiver, *dock.init(DATA, entry, held=2))) == RC_SUCCESS
    assert rows(midway.home, "SELECT count(*) FROM segments") == [(2,)]
    # Another ingest entry for the same digest with another size (only a rewritten
    # ledger says that): the stored bytes no longer belong anywhere.
    other = dock.add_raw(SHA, len(DATA) + SEG)
    longer = DATA + bytes(SEG)
    _, payload = dock.init(longer, other, held=2)
    value = json.loads(payload)
    value["checksum"] = SHA
    out = send(receiver, dock.topics.init(SHA), json.dumps(value).encode())
    assert code(out) == RC_SUCCESS and "restarted" in result(out).reason_description
    assert rows(midway.home, "SELECT count(*) FROM segments") == [(0,)]
    assert rows(midway.home, "SELECT size FROM transfers") == [(len(DATA) + SEG,)]
    assert len(list((midway.home / "spool").iterdir())) == 0


def test_flood_of_transfers_hits_the_quota(tmp_path: Path) -> None:
    dock = Dock(tmp_path / "dock")
    s = ReceiverSettings(
        tmp_path / "receiver", {"dock-01": (dock.key,)}, max_transfers_per_station=3
    )
    receiver = Receiver(s)
    try:
        held = 0
        for n in range(3):
            data = random_bytes(100, seed=10 + n)
            out = send(receiver, *dock.init(data, dock.add(data), held=held))
            assert code(out) == RC_SUCCESS
            held = result(out).held_size or 0
        data = random_bytes(100, seed=99)
        topic, payload = dock.init(data, dock.add(data), held=held)
        before = snapshot(s.home)
        out = send(receiver, topic, payload)
        assert code(out) == RC_QUOTA
        assert result(out).held_size == held  # the newer checkpoint was not taken either
        assert not on(out, dock.topics.held)
        assert snapshot(s.home) == before
        # Re-sending init for an open transfer is no new transfer: still fine.
        first = random_bytes(100, seed=10)
        entry = dock.station.ledger.entry(1)
        assert code(send(receiver, *dock.init(first, entry, held=held))) == RC_SUCCESS
    finally:
        receiver.close()
        dock.close()


def test_spool_quota(tmp_path: Path) -> None:
    dock = Dock(tmp_path / "dock")
    s = ReceiverSettings(
        tmp_path / "receiver", {"dock-01": (dock.key,)}, max_spool_bytes_per_station=len(DATA)
    )
    receiver = Receiver(s)
    try:
        big = random_bytes(len(DATA) + 1, seed=5)
        assert code(send(receiver, *dock.init(big, dock.add(big)))) == RC_CANCEL
        entry = dock.add(DATA)
        assert code(send(receiver, *dock.init(DATA, entry, held=2))) == RC_SUCCESS
        other = random_bytes(2 * SEG, seed=6)
        assert code(send(receiver, *dock.init(other, dock.add(other), held=3))) == RC_SUCCESS
        for offset, length in segments_of(len(DATA))[:3]:
            assert code(send(receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
        before = snapshot(s.home)
        assert code(send(receiver, *dock.segment(other, 0, SEG))) == RC_QUOTA
        assert snapshot(s.home) == before
        # Finishing the first frees its spool.
        assert code(send(receiver, *dock.segment(DATA, 3 * SEG, 1000))) == RC_SUCCESS
        assert code(send(receiver, dock.fin(DATA))) == RC_SUCCESS
        assert code(send(receiver, *dock.segment(other, 0, SEG))) == RC_SUCCESS
    finally:
        receiver.close()
        dock.close()


def test_unexpected_failure_is_an_internal_error_result(
    midway: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> Path:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(midway.receiver._spool, "write", broken)
    before = snapshot(midway.home)
    out = send(midway.receiver, *midway.dock.segment(DATA, SEG, SEG))
    r = result(out)
    assert (r.reason_code, r.reason_description) == (RC_RETRY, "internal error")
    assert snapshot(midway.home) == before


# -- holding stations to their history ------------------------------------------------------


def _refusals(home: Path) -> list[tuple[object, ...]]:
    return rows(home, "SELECT station, kind, note FROM refusals ORDER BY id")


def test_growing_history_is_accepted_with_consistency_proofs(bed: Bed) -> None:
    dock, receiver = bed.dock, bed.receiver
    one, two = random_bytes(5000, seed=11), random_bytes(6000, seed=12)
    first = dock.add(one)
    upload(receiver, dock, one, first)
    held = dock.checkpoint().checkpoint.size
    second = dock.add(two)
    dock.add_raw("ee" * 32, 1)  # the ledger grows past the file too
    cp = dock.checkpoint()
    out = send(receiver, *dock.init(two, second, held=held))
    assert code(out) == RC_SUCCESS
    assert result(out).held_size == cp.checkpoint.size > held
    (held_msg,) = on(out, dock.topics.held)
    assert held_msg.retain and held_msg.payload.decode() == cp.note
    assert receiver.held_notes() == [("dock-01", cp.note)]


def test_proof_from_another_size_asks_for_one_from_the_held_size(bed: Bed) -> None:
    dock, receiver = bed.dock, bed.receiver
    one, two = random_bytes(5000, seed=11), random_bytes(6000, seed=12)
    upload(receiver, dock, one, dock.add(one))
    held = dock.checkpoint().checkpoint.size
    second = dock.add(two)
    before = snapshot(bed.home)
    out = send(receiver, *dock.init(two, second, held=held - 1))
    r = result(out)
    assert r.reason_code == RC_RETRY and r.held_size == held
    assert f"from size {held}" in r.reason_description
    assert snapshot(bed.home) == before
    assert not _refusals(bed.home)


def test_stale_but_consistent_checkpoint_is_accepted(bed: Bed) -> None:
    dock, receiver = bed.dock, bed.receiver
    one, two = random_bytes(5000, seed=11), random_bytes(6000, seed=12)
    first = dock.add(one)
    old = dock.checkpoint()
    assert code(send(receiver, *dock.init(one, first, cp=old))) == RC_SUCCESS
    second = dock.add(two)
    new = dock.checkpoint()
    out = send(receiver, *dock.init(two, second, held=old.checkpoint.size))
    assert result(out).held_size == new.checkpoint.size
    # init of the first file again, with the older checkpoint accepted before.
    out = send(receiver, *dock.init(one, first, cp=old))
    assert code(out) == RC_SUCCESS
    assert result(out).held_size == new.checkpoint.size  # held does not go back
    assert not on(out, dock.topics.held)


def test_older_checkpoint_never_seen_asks_for_a_newer_one(bed: Bed) -> None:
    dock, receiver = bed.dock, bed.receiver
    one, two = random_bytes(5000, seed=11), random_bytes(6000, seed=12)
    first = dock.add(one)
    old = dock.checkpoint()
    second = dock.add(two)
    upload(receiver, dock, two, second)  # holds the newer one first
    before = snapshot(bed.home)
    r = result(send(receiver, *dock.init(one, first, cp=old)))
    assert r.reason_code == RC_RETRY and r.held_size == dock.checkpoint().checkpoint.size
    assert snapshot(bed.home) == before


def _fork(tmp_path: Path, dock: Dock, entries: int) -> Dock:
    """Another ledger for the same station id signed by the same key: a rewritten history."""
    forked = Dock(tmp_path / f"fork-{entries}", dock.id)
    write_atomic(
        forked.station.keys.key_path, (dock.station.keys.key_path).read_bytes()
    )  # the station's own key
    (forked.station.keys.folder / "signer-state.json").unlink()
    for n in range(entries):
        forked.station.ledger.append(INGEST, {"sha256": f"{n:064x}", "size": n})
    return forked


def test_rewritten_history_signed_by_the_stations_key_is_refused_and_recorded(
    bed: Bed, tmp_path: Path
) -> None:
    dock, receiver = bed.dock, bed.receiver
    upload(receiver, dock, DATA, dock.add(DATA))
    held = dock.checkpoint()
    h = held.checkpoint.size
    forked = _fork(tmp_path, dock, entries=h)
    try:
        entry = forked.add(NEW)
        cp = forked.checkpoint()
        assert cp.checkpoint.size > h
        assert forked.key == dock.key
        # The fork's own consistency proof from the held size: does not lead to the held root.
        before = snapshot(bed.home)
        out = send(receiver, *forked.init(NEW, entry, held=h))
        r = result(out)
        assert r.reason_code == RC_CANCEL and "fork" in r.reason_description
        assert r.held_size == h
        assert _refusals(bed.home) == [("dock-01", "fork", cp.note)]
        (tables, files), (old_tables, old_files) = snapshot(bed.home), before
        assert files == old_files
        del tables["refusals"], old_tables["refusals"]
        assert tables == old_tables
        # Sent again: answered the same, recorded once.
        assert code(send(receiver, *forked.init(NEW, entry, held=h))) == RC_CANCEL
        assert len(_refusals(bed.home)) == 1
        assert receiver.refusals("dock-01")[0].kind == "fork"
    finally:
        forked.close()


def test_second_root_for_the_held_size_is_a_fork(bed: Bed, tmp_path: Path) -> None:
    dock, receiver = bed.dock, bed.receiver
    upload(receiver, dock, DATA, dock.add(DATA))
    h = dock.checkpoint().checkpoint.size
    forked = _fork(tmp_path, dock, entries=h - 2)
    try:
        entry = forked.add(NEW)
        cp = forked.checkpoint()
        assert cp.checkpoint.size == h and cp.checkpoint.root != dock.checkpoint().checkpoint.root
        assert code(send(receiver, *forked.init(NEW, entry, held=h))) == RC_CANCEL
        assert _refusals(bed.home) == [("dock-01", "fork", cp.note)]
    finally:
        forked.close()


def test_rollback_to_an_older_size_with_another_root_is_a_fork(bed: Bed, tmp_path: Path) -> None:
    dock, receiver = bed.dock, bed.receiver
    first = dock.add(DATA)
    old = dock.checkpoint()
    upload(receiver, dock, DATA, first)
    two = random_bytes(5000, seed=8)
    upload(receiver, dock, two, dock.add(two), held=old.checkpoint.size)
    forked = _fork(tmp_path, dock, entries=old.checkpoint.size - 2)
    try:
        entry = forked.add(NEW)
        cp = forked.checkpoint()
        assert cp.checkpoint.size == old.checkpoint.size
        assert code(send(receiver, *forked.init(NEW, entry))) == RC_CANCEL
        assert _refusals(bed.home)[0][1] == "fork"
    finally:
        forked.close()


def test_checkpoint_topic_records_seen_checkpoints_and_refuses_forks(
    bed: Bed, tmp_path: Path
) -> None:
    dock, receiver = bed.dock, bed.receiver
    upload(receiver, dock, DATA, dock.add(DATA))
    h = dock.checkpoint().checkpoint.size
    dock.add(NEW)
    seen = dock.checkpoint()
    assert send(receiver, dock.topics.checkpoint, seen.note.encode()) == []
    assert rows(bed.home, "SELECT size, proven FROM checkpoints ORDER BY size") == [
        (h, 1),
        (seen.checkpoint.size, 0),
    ]
    # Seen is not held: an init still needs a proof from the held size.
    assert result(send(receiver, *dock.init(NEW, dock.add(NEW), held=0))).held_size == h
    # Forged or altered: logged, nothing recorded.
    text, _ = parse_note(seen.note)
    forged = sign_note(text, [NoteSigner.generate(dock.station.origin)])
    before = snapshot(bed.home)
    for payload in (forged.encode(), b"\xff\xfe", b"x" * 100_000, seen.note.encode()[:-3]):
        assert send(receiver, dock.topics.checkpoint, payload) == []
    assert snapshot(bed.home) == before
    # A second root for a size seen: a fork, recorded.
    forked = _fork(tmp_path, dock, entries=seen.checkpoint.size - 2)
    try:
        forked.add(b"rewritten")
        cp = forked.checkpoint()
        assert cp.checkpoint.size == seen.checkpoint.size
        assert send(receiver, dock.topics.checkpoint, cp.note.encode()) == []
        assert _refusals(bed.home) == [("dock-01", "fork", cp.note)]
    finally:
        forked.close()


# -- time and crashes -------------------------------------------------------------------------


def test_expiry_drops_idle_transfers_after_their_ttl(bed: Bed) -> None:
    dock, receiver = bed.dock, bed.receiver
    entry = dock.add(DATA)
    start = time.time()
    assert code(send(receiver, *dock.init(DATA, entry, ttl=120))) == RC_SUCCESS
    assert code(send(receiver, *dock.segment(DATA, 0, SEG))) == RC_SUCCESS
    assert receiver.expire(now=start + 60) == 0
    assert receiver.expire(now=start + 200) == 1
    assert rows(bed.home, "SELECT count(*) FROM transfers") == [(0,)]
    assert not list((bed.home / "spool").iterdir())
    assert code(send(receiver, *dock.segment(DATA, SEG, SEG))) == RC_RESTART
    # A TTL below the minimum is raised to it, above the maximum lowered to it.
    assert code(send(receiver, *dock.init(DATA, entry, ttl=1))) == RC_SUCCESS
    assert rows(bed.home, "SELECT ttl_s FROM transfers") == [(60,)]
    assert code(send(receiver, *dock.init(DATA, entry, ttl=10**9))) == RC_SUCCESS
    assert rows(bed.home, "SELECT ttl_s FROM transfers") == [(7 * 86400,)]


def test_receiver_restarted_mid_transfer_finishes_it(bed: Bed) -> None:
    dock = bed.dock
    entry = dock.add(DATA)
    key = bed.receiver.verifier
    assert code(send(bed.receiver, *dock.init(DATA, entry))) == RC_SUCCESS
    parts = segments_of(len(DATA))
    for offset, length in parts[:2]:
        assert code(send(bed.receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    receiver = bed.reopen()
    assert receiver.verifier == key
    for offset, length in parts[2:]:
        assert code(send(receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    out = send(receiver, dock.fin(DATA))
    assert code(out) == RC_SUCCESS
    (receipt,) = on(out, dock.topics.receipts)
    assert Receipt.open(receipt.payload, [key]).sha256 == SHA


def test_spool_is_reconciled_on_open(bed: Bed) -> None:
    dock = bed.dock
    entry = dock.add(DATA)
    assert code(send(bed.receiver, *dock.init(DATA, entry))) == RC_SUCCESS
    parts = segments_of(len(DATA))
    for offset, length in (parts[0], parts[2]):
        assert code(send(bed.receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    bed.receiver.close()
    spool = bed.home / "spool"
    (folder,) = spool.iterdir()
    # Bytes written whose row never committed (crash), a temp file and a segment file
    # of an older spool layout, a recorded segment whose bytes were lost (the data
    # file cut short), a folder and a file no transfer owns.
    with (folder / "data").open("r+b") as f:
        f.seek(SEG)
        f.write(b"never acknowledged")
        f.truncate(2 * SEG + 100)
    (folder / f".{3 * SEG:020d}.seg.abc.tmp").write_bytes(b"half")
    (folder / f"{3 * SEG:020d}.seg").write_bytes(DATA[3 * SEG :])
    (spool / ("0" * 32)).mkdir()
    (spool / "stray").write_bytes(b"?")
    (bed.home / "staging" / "999999999.dead.part").write_bytes(b"partial")
    receiver = Receiver(bed.settings)
    bed.receiver = receiver
    assert sorted(p.name for p in spool.iterdir()) == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == ["data"]
    assert not list((bed.home / "staging").iterdir())
    assert rows(bed.home, "SELECT start FROM segments") == [(0,)]
    r = result(send(receiver, dock.fin(DATA)))
    assert r.reason_code == RC_RETRY and f"[{SEG}, {len(DATA)})" in r.reason_description
    for offset, length in parts[1:]:
        assert code(send(receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    assert code(send(receiver, dock.fin(DATA))) == RC_SUCCESS
    stored = receiver.stored(SHA)
    assert stored is not None and stored.read_bytes() == DATA


def test_crash_after_the_file_was_stored(bed: Bed) -> None:
    """Adopted into the store, then a crash before the commit: fin finishes it. Committed,
    then a crash before the spool was removed: opening again cleans it up."""
    dock = bed.dock
    entry = dock.add(DATA)
    assert code(send(bed.receiver, *dock.init(DATA, entry))) == RC_SUCCESS
    for offset, length in segments_of(len(DATA)):
        assert code(send(bed.receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    target = bed.home / "store" / SHA[:2] / SHA[2:4] / SHA
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA)
    os.chmod(target, 0o400)
    (token,) = (p.name for p in (bed.home / "spool").iterdir())
    saved = bed.home.parent / "saved-spool"
    shutil.copytree(bed.home / "spool" / token, saved)
    transfer = rows(bed.home, "SELECT * FROM transfers")
    assert code(send(bed.receiver, dock.fin(DATA))) == RC_SUCCESS
    bed.receiver.close()
    # Put the transfer back as if the spool removal never happened.
    conn = sqlite3.connect(bed.home / "receiver.db")
    with conn:
        conn.execute(
            f"INSERT INTO transfers VALUES ({','.join('?' * len(transfer[0]))})",  # noqa: S608
            transfer[0],
        )
    conn.close()
    shutil.copytree(saved, bed.home / "spool" / token)
    receiver = Receiver(bed.settings)
    bed.receiver = receiver
    assert rows(bed.home, "SELECT count(*) FROM transfers") == [(0,)]
    assert not list((bed.home / "spool").iterdir())
    assert receiver.stored(SHA) == target


def test_crash_after_the_file_was_linked_into_the_store(bed: Bed) -> None:
    """fin links the spool file into the store before it commits: a crash in between
    leaves both names; fin again finishes without asking for any byte again."""
    dock = bed.dock
    entry = dock.add(DATA)
    assert code(send(bed.receiver, *dock.init(DATA, entry))) == RC_SUCCESS
    for offset, length in segments_of(len(DATA)):
        assert code(send(bed.receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    bed.receiver.close()
    (folder,) = (bed.home / "spool").iterdir()
    target = bed.home / "store" / SHA[:2] / SHA[2:4] / SHA
    target.parent.mkdir(parents=True)
    os.chmod(folder / "data", 0o400)
    os.link(folder / "data", target)
    receiver = bed.reopen()
    assert rows(bed.home, "SELECT count(*) FROM segments") == [(len(segments_of(len(DATA))),)]
    out = send(receiver, dock.fin(DATA))
    assert code(out) == RC_SUCCESS and on(out, dock.topics.receipts)
    assert receiver.stored(SHA) == target and target.read_bytes() == DATA
    assert stat.S_IMODE(target.stat().st_mode) == 0o400 and target.stat().st_nlink == 1
    assert not list((bed.home / "spool").iterdir())


# -- group commit -------------------------------------------------------------------------------


def _batch(receiver: Receiver, messages: list[tuple[str, bytes]]) -> list[list[Outgoing]]:
    return receiver.handle_batch(
        [
            Message(t, p, correlation=f"c{n}".encode(), packet_id=n)
            for n, (t, p) in enumerate(messages)
        ]
    )


def test_a_batch_is_answered_as_one_message_at_a_time_would_be(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments, duplicates and contradictions among them, then fin, in one batch: each
    answered as alone, the run of segments synced once and committed after the sync."""
    dock, receiver = bed.dock, bed.receiver
    assert code(send(receiver, *dock.init(DATA, dock.add(DATA)))) == RC_SUCCESS
    parts = segments_of(len(DATA))
    other = random_bytes(SEG, seed=9)
    messages = [
        dock.segment(DATA, *parts[1]),
        dock.segment(DATA, *parts[1]),  # a duplicate: fine
        (dock.topics.segment(SHA, SEG, hashlib.sha256(other).hexdigest()), other),  # contradicts
        dock.segment(DATA, SEG // 2, SEG),  # overlaps the first
        (dock.topics.segment(SHA, 0, "0" * 64), DATA[:SEG]),  # checksum mismatch
        *(dock.segment(DATA, *p) for p in (parts[0], *parts[2:])),
        (dock.fin(DATA), b""),
    ]
    synced: list[list[tuple[object, ...]]] = []
    real_sync = receiver._spool.sync

    def sync() -> None:
        real_sync()
        synced.append(rows(bed.home, "SELECT start FROM segments"))  # another connection

    monkeypatch.setattr(receiver._spool, "sync", sync)
    answers = _batch(receiver, messages)
    codes = [code(out) for out in answers]
    assert codes == [RC_SUCCESS, RC_SUCCESS, RC_CANCEL, RC_CANCEL, RC_RETRY] + [RC_SUCCESS] * (
        len(parts)
    )
    assert [result(out).topic for out in answers] == [t for t, _ in messages]
    assert [out[0].correlation for out in answers] == [
        f"c{n}".encode() for n in range(len(messages))
    ]
    assert len(synced) == 1, "one sync for the run of segments"
    assert synced[0] == [], "rows commit only after the data is synced"
    (receipt,) = on(answers[-1], dock.topics.receipts)
    assert Receipt.open(receipt.payload, [receiver.verifier]).sha256 == SHA
    stored = receiver.stored(SHA)
    assert stored is not None and stored.read_bytes() == DATA


def test_a_batch_that_cannot_be_made_durable_records_nothing(
    midway: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    dock, receiver = midway.dock, midway.receiver
    tables, _ = snapshot(midway.home)
    real_sync = receiver._spool.sync

    def failing() -> None:
        real_sync()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(receiver._spool, "sync", failing)
    parts = segments_of(len(DATA))
    answers = _batch(receiver, [dock.segment(DATA, *parts[1]), dock.segment(DATA, *parts[3])])
    assert [(result(a).reason_code, result(a).reason_description) for a in answers] == [
        (RC_RETRY, "internal error")
    ] * 2
    assert snapshot(midway.home)[0] == tables  # no row: the bytes written are not trusted
    monkeypatch.setattr(receiver._spool, "sync", real_sync)
    for offset, length in parts:
        assert code(send(receiver, *dock.segment(DATA, offset, length))) == RC_SUCCESS
    assert code(send(receiver, dock.fin(DATA))) == RC_SUCCESS
    stored = receiver.stored(SHA)
    assert stored is not None and stored.read_bytes() == DATA


def test_serve_batches_what_is_already_waiting_within_bounds() -> None:
    def item(size: int) -> receiver_module._Inbound:
        return receiver_module._Inbound(Message("t", bytes(size)), 1, 1, 0)

    inbox: queue.Queue[receiver_module._Inbound] = queue.Queue()
    first = item(1)
    assert receiver_module._gather(inbox, first) == [first]  # a lone message goes at once
    for _ in range(40):
        inbox.put(item(1))
    assert len(receiver_module._gather(inbox, first)) == receiver_module.BATCH_MESSAGES
    while not inbox.empty():
        inbox.get_nowait()
    big = receiver_module.BATCH_BYTES // 3 + 1
    for _ in range(5):
        inbox.put(item(big))
    assert len(receiver_module._gather(inbox, item(big))) == 3  # past BATCH_BYTES: no more
    assert inbox.qsize() == 3


# -- properties ---------------------------------------------------------------------------------


SUFFIX = 8  # a counter after the random bytes, so every example is a new file


@st.composite
def uploads(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    """A file's random bytes, and its segments of any sizes, in any order, some twice."""
    body = draw(st.binary(min_size=0, max_size=3 * SEG))
    size = len(body) + SUFFIX
    cuts = draw(st.sets(st.integers(1, size - 1), max_size=6))
    bounds = [0, *sorted(cuts), size]
    parts = [(a, b - a) for a, b in itertools.pairwise(bounds)]
    order = draw(st.permutations(parts))
    dupes = draw(st.lists(st.sampled_from(parts), max_size=3))
    return body, [*order, *dupes]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(upload=uploads())
def test_any_segmentation_and_order_assembles_byte_exact(
    bed: Bed, upload: tuple[bytes, list[tuple[int, int]]]
) -> None:
    body, order = upload
    dock, receiver = bed.dock, bed.receiver
    data = body + dock.station.ledger.size().to_bytes(SUFFIX, "big")
    held = receiver.held_notes()
    held_size = SignedCheckpoint.open(held[0][1], [dock.key])[0].checkpoint.size if held else 0
    assert code(send(receiver, *dock.init(data, dock.add(data), held=held_size))) == RC_SUCCESS
    for offset, length in order:
        assert code(send(receiver, *dock.segment(data, offset, length))) == RC_SUCCESS
    assert code(send(receiver, dock.fin(data))) == RC_SUCCESS
    stored = receiver.stored(hashlib.sha256(data).hexdigest())
    assert stored is not None and stored.read_bytes() == data


_ID = "ab" * 32
_topics = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            f"$file-async/dock-01/{_ID}/init",
            f"$file-async/dock-01/{_ID}/0",
            f"$file-async/dock-01/{_ID}/4096/{_ID}",
            f"$file-async/dock-01/{_ID}/fin/10",
            f"$file-async/dock-01/{_ID}/fin/10/{_ID}",
            "evidock/v1/docks/dock-01/checkpoint",
            "evidock/v1/docks/dock-02/checkpoint",
        ]
    ),
    st.builds(lambda s: f"$file-async/dock-01/{s}", st.text(max_size=90)),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    topic=_topics, payload=st.binary(max_size=300), correlation=st.none() | st.binary(max_size=20)
)
def test_random_messages_never_raise_and_change_nothing(
    midway: Bed, topic: str, payload: bytes, correlation: bytes | None
) -> None:
    before = snapshot(midway.home)
    out = send(midway.receiver, topic, payload, correlation=correlation)
    for o in out:
        assert o.topic == midway.dock.topics.results
        assert o.correlation == correlation
        assert not Result.from_json(o.payload).ok or topic.endswith("/abort")
    assert snapshot(midway.home) == before


def test_json_init_from_the_dock_side_round_trips(bed: Bed) -> None:
    """What ``FileMeta.to_json`` writes is exactly what the receiver keeps for the receipt."""
    entry = bed.dock.add(DATA)
    topic, payload = bed.dock.init(DATA, entry)
    assert code(send(bed.receiver, topic, payload)) == RC_SUCCESS
    assert rows(bed.home, "SELECT meta FROM transfers") == [(payload,)]
