"""The durable outbox over real SQLite files: derived from the ledger, ordered by
retention class and age, resumable from its confirmed ranges, flat in memory."""

from __future__ import annotations

import gc
import sqlite3
import stat
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing.entries import INGEST
from hashing.errors import InputError
from hashing.ledger import Ledger
from uploader import outbox as outbox_module
from uploader.outbox import PRIORITY, STATES, TAG, UPLOAD_RECEIPT, Outbox

STATION = "dock-01"


def sha(n: int) -> str:
    return f"{n:064x}"


def new_ledger(folder: Path) -> Ledger:
    return Ledger.create(folder / "ledger.db", station=STATION, origin=f"evidock/{STATION}")


def ingest(ledger: Ledger, n: int, *, size: int = 1000, recorded: str | None = None) -> None:
    body: dict[str, Any] = {
        "sha256": sha(n),
        "size": size,
        "name": f"CLIP{n:04d}.MP4",
        "source_mtime": "2024-05-01T08:00:00.000000Z",
    }
    if recorded is not None:
        body["recorded_at"] = recorded
    ledger.append(INGEST, body)


def tag(ledger: Ledger, retention: str, *ns: int) -> None:
    ledger.append(TAG, {"files": [sha(n) for n in ns], "case": "c-1", "retention": retention})


def receipt(ledger: Ledger, n: int) -> None:
    ledger.append(UPLOAD_RECEIPT, {"sha256": sha(n), "size": 1000, "seq": 0, "receipt": "…"})


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = new_ledger(tmp_path)
    yield led
    led.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.for_home(tmp_path)
    yield box
    box.close()


def t(hour: int, minute: int = 0) -> str:
    return f"2024-05-01T{hour:02d}:{minute:02d}:00Z"


# -- from the ledger ------------------------------------------------------------


def test_sync_enqueues_each_ingest_once(ledger: Ledger, outbox: Outbox) -> None:
    for n in range(3):
        ingest(ledger, n, size=100 + n)
    assert outbox.sync(ledger) == 3
    assert outbox.sync(ledger) == 0  # the watermark moved with the rows
    assert outbox.watermark == 3
    rows = outbox.list()
    assert [r["sha256"] for r in rows] == [sha(0), sha(1), sha(2)]
    assert {r["state"] for r in rows} == {"queued"}
    assert [r["size"] for r in rows] == [100, 101, 102]
    assert rows[0]["name"] == "CLIP0000.MP4"
    assert rows[0]["retention"] == "routine"


def test_order_is_class_then_recording_time_then_entry(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1, recorded=t(9))
    ingest(ledger, 2, recorded=t(8))  # older recording, later entry
    ingest(ledger, 3, recorded=t(8))  # same time: entry order decides
    ingest(ledger, 4, recorded=t(12))
    outbox.sync(ledger)
    assert [r["sha256"] for r in outbox.list()] == [sha(2), sha(3), sha(1), sha(4)]
    tag(ledger, "evidence", 4)
    tag(ledger, "long-term", 1)
    outbox.sync(ledger)
    assert [r["sha256"] for r in outbox.list()] == [sha(1), sha(4), sha(2), sha(3)]
    nxt = outbox.next_transfer()
    assert nxt is not None
    assert nxt.sha256 == sha(1)
    assert nxt.retention == "long-term"


def test_a_retag_never_lowers_the_class(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1)
    tag(ledger, "evidence", 1)
    tag(ledger, "routine", 1)
    tag(ledger, "unknown-class", 1)
    outbox.sync(ledger)
    got = outbox.get(sha(1))
    assert got is not None
    assert got.priority == PRIORITY["evidence"]


def test_recorded_at_falls_back_to_source_mtime(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1)
    ingest(ledger, 2, recorded=t(7))
    outbox.sync(ledger)
    one, two = outbox.get(sha(1)), outbox.get(sha(2))
    assert one is not None and two is not None
    assert one.recorded_at == "2024-05-01T08:00:00.000000Z"
    assert two.recorded_at == t(7)


def test_receipt_entry_closes_the_file(ledger: Ledger, outbox: Outbox) -> None:
    """A crash between appending upload_receipt and marking the outbox is healed by sync."""
    ingest(ledger, 1)
    outbox.sync(ledger)
    outbox.mark_initialised(sha(1))
    outbox.confirm_segment(sha(1), 0, 500)
    receipt(ledger, 1)
    outbox.sync(ledger)
    got = outbox.get(sha(1))
    assert got is not None
    assert got.state == "receipted"
    assert got.confirmed == 0  # nothing left to resume
    assert outbox.summary()["last_receipt"] is not None
    assert outbox.next_transfer() is None


def test_unreadable_entry_stops_sync_after_what_came_before(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1)
    ledger.append(INGEST, {"sha256": "not-a-digest", "size": 5})  # parses; body refused
    ingest(ledger, 2)
    assert outbox.sync(ledger) == 3
    assert [r["sha256"] for r in outbox.list()] == [sha(1), sha(2)]


# -- durability -------------------------------------------------------------------


def test_outbox_file_is_private(tmp_path: Path, outbox: Outbox) -> None:
    for name in ("outbox.db", "outbox.db.lock", "outbox.db-wal"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode & 0o077 == 0, name


def test_state_survives_reopening(tmp_path: Path, ledger: Ledger) -> None:
    box = Outbox.for_home(tmp_path)
    for n in range(3):
        ingest(ledger, n, size=10_000)
    box.sync(ledger)
    box.mark_initialised(sha(0))
    box.confirm_segment(sha(0), 0, 4000)
    box.confirm_segment(sha(0), 8000, 2000)
    box.mark_initialised(sha(1))
    box.mark_finished(sha(1))
    box.close()

    again = Outbox.for_home(tmp_path)
    try:
        assert again.watermark == 3
        assert again.sync(ledger) == 0
        first = again.get(sha(0))
        assert first is not None
        assert (first.state, first.confirmed) == ("initialised", 6000)
        # Resume sends only the gap.
        assert again.next_gap(sha(0), 0, 10_000, 4000) == (4000, 4000)
        assert again.next_gap(sha(0), 8000, 10_000, 4000) is None
        second = again.get(sha(1))
        assert second is not None
        assert second.state == "finished"
        assert second.finished_at is not None
    finally:
        again.close()


def test_two_processes_sync_the_same_entries_once(tmp_path: Path, ledger: Ledger) -> None:
    a, b = Outbox.for_home(tmp_path), Outbox.for_home(tmp_path)
    try:
        for n in range(5):
            ingest(ledger, n)
        assert a.sync(ledger) == 5
        assert b.sync(ledger) == 0
        tag(ledger, "evidence", 3)
        assert b.sync(ledger) == 1
        got = a.get(sha(3))
        assert got is not None
        assert got.retention == "evidence"
        assert a.summary()["counts"]["queued"] == 5
    finally:
        a.close()
        b.close()


# -- transfers --------------------------------------------------------------------


def test_state_machine_of_one_file(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1, size=3000)
    outbox.sync(ledger)
    assert outbox.mark_initialised(sha(1))
    assert outbox.confirm_segment(sha(1), 0, 1000)
    assert outbox.confirm_segment(sha(1), 0, 1000)  # a duplicate result is harmless
    assert outbox.confirmed_bytes(sha(1)) == 1000
    assert outbox.mark_finished(sha(1))
    assert outbox.next_transfer() is None  # awaiting its receipt, not resent
    assert not outbox.confirm_segment(sha(1), 1000, 1000)  # late result after fin: ignored
    got = outbox.get(sha(1))
    assert got is not None and got.finished_at is not None
    assert outbox.awaiting_receipt(got.finished_at) == []
    assert [x.sha256 for x in outbox.awaiting_receipt(got.finished_at + 1)] == [sha(1)]
    assert outbox.mark_receipted(sha(1))
    assert not outbox.mark_receipted(sha(1))
    assert not outbox.reset(sha(1))  # a receipted file never goes back
    assert not outbox.mark_failed(sha(1), "late")
    got = outbox.get(sha(1))
    assert got is not None and got.state == "receipted"


def test_reset_drops_confirmations(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1, size=3000)
    outbox.sync(ledger)
    outbox.mark_initialised(sha(1))
    outbox.confirm_segment(sha(1), 0, 1000)
    outbox.mark_finished(sha(1))
    assert outbox.reset(sha(1))
    got = outbox.get(sha(1))
    assert got is not None
    assert (got.state, got.confirmed, got.finished_at) == ("queued", 0, None)
    assert outbox.next_gap(sha(1), 0, 3000, 1 << 20) == (0, 3000)


def test_failed_waits_for_retry(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1)
    ingest(ledger, 2)
    outbox.sync(ledger)
    outbox.mark_initialised(sha(1))
    outbox.confirm_segment(sha(1), 0, 10)
    assert outbox.mark_failed(sha(1), "platform cancelled: no such station (0x83)")
    nxt = outbox.next_transfer()
    assert nxt is not None and nxt.sha256 == sha(2)
    row = outbox.list(state="failed")[0]
    assert row["last_error"] == "platform cancelled: no such station (0x83)"
    again = outbox.retry(sha(1))
    assert (again.state, again.confirmed, again.last_error) == ("queued", 0, None)
    nxt = outbox.next_transfer()
    assert nxt is not None and nxt.sha256 == sha(1)


def test_retry_refuses_unknown_and_receipted(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1)
    outbox.sync(ledger)
    outbox.mark_receipted(sha(1))
    with pytest.raises(InputError, match="already receipted"):
        outbox.retry(sha(1))
    with pytest.raises(InputError, match="not in the outbox"):
        outbox.retry(sha(9))
    with pytest.raises(InputError, match="choose one of"):
        outbox.list(state="lost")


def test_note_error_keeps_the_state(ledger: Ledger, outbox: Outbox) -> None:
    ingest(ledger, 1)
    outbox.sync(ledger)
    outbox.note_error(sha(1), "broker refused: not authorized (0x87)")
    got = outbox.get(sha(1))
    assert got is not None
    assert (got.state, got.last_error) == ("queued", "broker refused: not authorized (0x87)")
    outbox.mark_initialised(sha(1))
    outbox.mark_finished(sha(1))  # success clears it
    got = outbox.get(sha(1))
    assert got is not None and got.last_error is None


def test_summary(ledger: Ledger, outbox: Outbox) -> None:
    for n in range(5):
        ingest(ledger, n, size=1000 * (n + 1), recorded=t(10 + n))
    outbox.sync(ledger)
    outbox.mark_initialised(sha(0))
    outbox.confirm_segment(sha(0), 0, 400)
    outbox.mark_initialised(sha(1))
    outbox.mark_finished(sha(1))
    outbox.mark_receipted(sha(2))
    outbox.mark_failed(sha(3), "x")
    s = outbox.summary()
    assert s["counts"] == {
        "queued": 1,
        "initialised": 1,
        "finished": 1,
        "receipted": 1,
        "failed": 1,
    }
    assert s["unreceipted"] == 3
    assert s["pending_bytes"] == 1000 + 2000 + 5000
    assert s["confirmed_bytes"] == 400
    assert s["oldest_unsent"] == t(10)
    assert s["last_receipt"] is not None
    assert s["watermark"] == 5
    assert [r["state"] for r in outbox.list()] == [
        "initialised",
        "finished",
        "queued",
        "failed",
        "receipted",
    ]
    assert len(outbox.list(limit=2)) == 2


# -- gaps -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 50_000),
    segment=st.integers(1, 9_000),
    old_segment=st.integers(1, 9_000),
    keep=st.lists(st.booleans(), max_size=60),
)
def test_gaps_are_exactly_the_unconfirmed_bytes(
    tmp_path_factory: pytest.TempPathFactory,
    size: int,
    segment: int,
    old_segment: int,
    keep: list[bool],
) -> None:
    """Whatever was confirmed (even with another segment size), the ranges resumed
    cover every unconfirmed byte once and no confirmed byte, each at most a segment."""
    folder = tmp_path_factory.mktemp("gaps")
    led = new_ledger(folder)
    box = Outbox.for_home(folder)
    try:
        ingest(led, 1, size=size)
        box.sync(led)
        confirmed: set[int] = set()
        for i, kept in enumerate(keep):
            offset = i * old_segment
            if kept and offset < size:
                length = min(old_segment, size - offset)
                box.confirm_segment(sha(1), offset, length)
                confirmed.update(range(offset, offset + length))
        sent: list[int] = []
        pos = 0
        while (gap := box.next_gap(sha(1), pos, size, segment)) is not None:
            offset, length = gap
            assert 0 < length <= segment
            assert offset >= pos
            sent.extend(range(offset, offset + length))
            pos = offset + length
        assert len(sent) == len(set(sent))
        assert set(sent) == set(range(size)) - confirmed
    finally:
        box.close()
        led.close()


# -- a model of the whole outbox -------------------------------------------------


class OutboxModel(RuleBasedStateMachine):
    """The outbox against a dict model, across syncs, transitions and reopening."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.ledger = new_ledger(self.dir)
        self.box = Outbox.for_home(self.dir)
        self.files: dict[str, dict[str, Any]] = {}  # in the outbox (synced)
        self.unsynced: list[tuple[str, Any]] = []
        self.n = 0

    def teardown(self) -> None:
        self.box.close()
        self.ledger.close()

    @rule(hour=st.integers(0, 23))
    def add_file(self, hour: int) -> None:
        self.n += 1
        ingest(self.ledger, self.n, size=1000, recorded=t(hour))
        self.unsynced.append(("ingest", (sha(self.n), hour, self.ledger.size() - 1)))

    @precondition(lambda self: self.n > 0)
    @rule(data=st.data(), retention=st.sampled_from(list(PRIORITY)))
    def add_tag(self, data: st.DataObject, retention: str) -> None:
        n = data.draw(st.integers(1, self.n))
        tag(self.ledger, retention, n)
        self.unsynced.append(("tag", (sha(n), PRIORITY[retention])))

    @precondition(lambda self: self.n > 0)
    @rule(data=st.data())
    def add_receipt(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, self.n))
        receipt(self.ledger, n)
        self.unsynced.append(("receipt", sha(n)))

    @rule()
    def sync(self) -> None:
        self.box.sync(self.ledger)
        for kind, value in self.unsynced:
            if kind == "ingest":
                digest, hour, seq = value
                self.files[digest] = {"state": "queued", "priority": 2, "key": (hour, seq)}
            elif kind == "tag":
                digest, priority = value
                f = self.files[digest]
                f["priority"] = min(f["priority"], priority)
            else:
                self.files[value]["state"] = "receipted"
        self.unsynced = []

    def _pick(self, data: st.DataObject) -> str | None:
        if not self.files:
            return None
        return data.draw(st.sampled_from(sorted(self.files)))

    @rule(data=st.data(), action=st.sampled_from(["init", "finish", "fail", "reset", "retry"]))
    def transition(self, data: st.DataObject, action: str) -> None:
        digest = self._pick(data)
        if digest is None:
            return
        f = self.files[digest]
        state = f["state"]
        if action == "init":
            changed = self.box.mark_initialised(digest)
            assert changed == (state in ("queued", "initialised"))
            if changed:
                f["state"] = "initialised"
        elif action == "finish":
            changed = self.box.mark_finished(digest)
            assert changed == (state in ("queued", "initialised", "finished"))
            if changed:
                f["state"] = "finished"
        elif action == "fail":
            changed = self.box.mark_failed(digest, "cancelled")
            assert changed == (state in ("queued", "initialised", "finished"))
            if changed:
                f["state"] = "failed"
        elif action == "reset":
            changed = self.box.reset(digest)
            assert changed == (state in ("queued", "initialised", "finished"))
            if changed:
                f["state"] = "queued"
        elif state == "receipted":
            with pytest.raises(InputError):
                self.box.retry(digest)
        else:
            self.box.retry(digest)
            f["state"] = "queued"

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = Outbox.for_home(self.dir)

    @invariant()
    def agrees(self) -> None:
        counts = dict.fromkeys(STATES, 0)
        for f in self.files.values():
            counts[f["state"]] += 1
        assert self.box.summary()["counts"] == counts
        sendable = [
            (f["priority"], f["key"], d)
            for d, f in self.files.items()
            if f["state"] in ("queued", "initialised")
        ]
        nxt = self.box.next_transfer()
        if not sendable:
            assert nxt is None
        else:
            assert nxt is not None and nxt.sha256 == min(sendable)[2]


TestOutboxModel = OutboxModel.TestCase
TestOutboxModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


# -- memory ------------------------------------------------------------------------


def _peak_bytes(tmp: Path, files: int) -> int:
    led = new_ledger(tmp)
    with led.transaction() as tx:
        for n in range(files):
            tx.append(
                INGEST,
                {"sha256": sha(n), "size": 1 << 30, "name": f"C{n}.MP4", "recorded_at": t(n % 24)},
            )
    box = Outbox.for_home(tmp)
    try:
        gc.collect()
        tracemalloc.start()
        box.sync(led)
        for _ in range(3):
            box.summary()
            box.next_transfer()
            box.list(limit=20)
            box.awaiting_receipt(0.0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert box.summary()["pending_bytes"] == files << 30  # 1 GiB each: terabytes queued
        return peak
    finally:
        box.close()
        led.close()


@pytest.mark.slow
def test_memory_does_not_grow_with_the_queue(tmp_path: Path) -> None:
    """Three times the files (27,000 of 1 GiB: 26 TiB queued) must not need more memory:
    every query is bounded, and sync reads the ledger in pages and applies it in
    batches (both sizes fill several of each)."""
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = _peak_bytes(tmp_path / "small", 9_000)
    large = _peak_bytes(tmp_path / "large", 27_000)
    assert large < 8 << 20
    assert large < small * 1.1 + (256 << 10), (small, large)


# -- the frozen init (issue 12) ------------------------------------------------------


def test_the_frozen_init_is_kept_across_resets_and_dropped_by_retry(
    tmp_path: Path, ledger: Ledger
) -> None:
    ingest(ledger, 1)
    box = Outbox.for_home(tmp_path)
    box.sync(ledger)
    assert box.frozen_init(sha(1)) is None
    assert box.freeze_init(sha(1), b'{"first":1}')
    assert not box.freeze_init(sha(1), b'{"second":2}'), "only the first init is frozen"
    box.mark_initialised(sha(1))
    box.reset(sha(1))  # the platform lost the segments: the same transfer, the same init
    assert box.frozen_init(sha(1)) == b'{"first":1}'
    box.close()
    box = Outbox.for_home(tmp_path)  # durable across a restart
    assert box.frozen_init(sha(1)) == b'{"first":1}'
    box.mark_failed(sha(1), "refused by the platform (EMQX) at init: filemeta_conflict")
    assert box.frozen_init(sha(1)) == b'{"first":1}'
    box.retry(sha(1))  # the operator starts it over: built afresh
    assert box.frozen_init(sha(1)) is None
    box.freeze_init(sha(1), b"again")
    box.thaw_init(sha(1))
    assert box.frozen_init(sha(1)) is None
    box.close()


def test_an_outbox_of_the_first_schema_migrates(tmp_path: Path) -> None:
    """An outbox written before the frozen init gains its column and keeps its rows."""
    path = tmp_path / "outbox.db"
    first_only = Migrations("evidock.outbox")  # the same set, as the previous version had it
    first_only()(outbox_module.m001_outbox)
    conn = sqlite3.connect(path)
    first_only.apply(Database(conn))
    conn.execute(
        "INSERT INTO transfers (sha256, seq, size, name, recorded_at, priority, state,"
        " enqueued_at, updated_at) VALUES (?, 0, 10, 'OLD.MP4', 't', 2, 'initialised', 0, 0)",
        (sha(9),),
    )
    conn.commit()
    conn.close()
    box = Outbox(path)
    try:
        old = box.get(sha(9))
        assert old is not None and old.state == "initialised" and old.name == "OLD.MP4"
        assert box.frozen_init(sha(9)) is None
        assert box.freeze_init(sha(9), b"init")
        assert box.frozen_init(sha(9)) == b"init"
    finally:
        box.close()
