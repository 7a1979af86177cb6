"""The uploader's shell (uploader.sender) around the transfer machine, against the real
receiver and the real outbox, with the network simulated.

The decisions themselves are tested on the machine alone (test_transfer.py);
these tests are about what the shell adds: paho's callbacks turned into events,
the actions carried out on the real outbox and ledger, segments read from the
real store, receipts judged against the real ledger, and what paho refuses to
queue handed back. The worker is driven by hand, one step at a time, exactly
as its thread drives it: ``_step()`` ticks the machine and carries out what it
decided, ``_handle(event)`` takes what paho's network thread would queue. A
fake client stands in for paho (it keeps its unacknowledged messages and
resends them on reconnect, as paho does); every message it carries is handled
by the real ``Receiver.handle`` and the answers go back as events.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records import registry as records
from hashing.audit import audit
from hashing.errors import InputError
from hashing.note import NoteSigner, NoteVerifier
from hashing.station import Station
from receiver.service import Receiver, ReceiverSettings
from uploader import outbox, protocol, sender, transfer
from uploader.link import MqttSettings
from uploader.outbox import UPLOAD_RECEIPT
from uploader.sender import Uploader, UploadSettings

STATION = "dock-01"
SEGMENT = 1024
WINDOW = 3
RESULT_TIMEOUT = 5.0


class SimTime:
    """Stands in for the ``time`` module inside uploader.sender: time moves only
    when the simulation says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


@dataclass
class Message:
    mid: int
    topic: str
    payload: bytes
    correlation: bytes | None
    retain: bool


@dataclass
class Info:
    rc: int
    mid: int


@dataclass
class FakeClient:
    """The part of paho's client the uploader uses, with paho's resend-on-reconnect."""

    max_queued: int
    outbox_check: Any  # called on every publish, before the message is queued
    queue: deque[Message] = field(default_factory=deque)
    next_mid: int = 1

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Info:
        assert qos == 1
        assert isinstance(payload, bytes), "paho keeps the payload object: it must be immutable"
        if len(self.queue) >= self.max_queued:
            return Info(mqtt.MQTT_ERR_QUEUE_SIZE, 0)
        self.outbox_check(topic, payload)
        mid = self.next_mid
        self.next_mid = self.next_mid % 65535 + 1  # paho reuses message ids
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        self.queue.append(Message(mid, topic, payload, correlation, retain))
        return Info(mqtt.MQTT_ERR_SUCCESS, mid)


@dataclass
class Bed:
    station: Station
    receiver: Receiver
    results: list[IngestResult]
    sources: dict[str, bytes]


@pytest.fixture
def sim_time(monkeypatch: pytest.MonkeyPatch) -> SimTime:
    clock = SimTime()
    monkeypatch.setattr(sender, "time", clock)
    monkeypatch.setattr(outbox, "time", clock)  # finished_at and the receipt clock agree
    return clock


def make_bed(folder: Path, sizes: tuple[int, ...], seed: int) -> Bed:
    station = Station.init(folder / "home", STATION)
    rng = random.Random(seed)
    paths = []
    for n, size in enumerate(sizes):
        p = folder / "src" / f"CLIP{n:04d}.MP4"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
        paths.append(p)
    results = [r for r in ingest_paths(station, paths, Binding()) if isinstance(r, IngestResult)]
    assert len(results) == len(paths)
    station.checkpoint()
    key = station.keys.load().verifier
    receiver = Receiver(ReceiverSettings(home=folder / "platform", stations={STATION: (key,)}))
    sources = {r.sha256: Path(r.source).read_bytes() for r in results}
    return Bed(station, receiver, results, sources)


class Sim:
    """The uploader, the fake client and the receiver, stepped by hand."""

    def __init__(
        self,
        bed: Bed,
        clock: SimTime,
        *,
        keys: tuple[NoteVerifier, ...] = (),
        max_queued: int = WINDOW + 12,
    ) -> None:
        self.bed = bed
        self.clock = clock
        mqtt_settings = MqttSettings("sim", 1, "evidock-dock-01")
        self.up = Uploader(
            bed.station,
            UploadSettings(
                segment_bytes=SEGMENT,
                window_segments=WINDOW,
                platform_keys=keys or (bed.receiver.verifier,),
                result_timeout_s=RESULT_TIMEOUT,
                receipt_timeout_s=3 * RESULT_TIMEOUT,
            ),
            mqtt_settings,
        )
        self.client = FakeClient(max_queued, self.check_publish)
        self.up._client = self.client  # type: ignore[assignment]
        self.sent_segments = 0
        self.connect(session_present=False)

    def close(self) -> None:
        self.up.outbox.close()

    # -- what the dock may send -----------------------------------------------

    def check_publish(self, topic: str, payload: bytes) -> None:
        up = self.up
        cmd = protocol.parse_command(topic, up.topics.prefix_template) if "$file" in topic else None
        if cmd is None or cmd.kind != "segment":
            return
        assert cmd.offset is not None
        self.sent_segments += 1
        span = (cmd.offset, len(payload))
        assert span not in up.outbox.confirmed_ranges(cmd.file_id), "a confirmed range was resent"
        in_flight, unacked = up.machine.in_flight()
        assert in_flight <= up.settings.window_segments, "more segments than the window in flight"
        assert unacked <= transfer.UNACKED_SEGMENTS
        assert len(payload) <= SEGMENT

    # -- the network ------------------------------------------------------------

    def connect(self, session_present: bool) -> None:
        assert self.up.link is not None
        self.up.link.up(None)
        self.up._handle(("connected", session_present))

    def disconnect(self, session_present: bool) -> None:
        assert self.up.link is not None
        self.up.link.down("disconnected: simulated")
        self.up._handle(("disconnected",))
        self.connect(session_present)
        # paho sends everything not yet acknowledged again, after the CONNACK.

    def deliver(self, *, lose_answers: bool = False, duplicate: bool = False, rc: int = 0) -> None:
        """The oldest queued message reaches the broker: PUBACK ``rc``; with 0 the
        receiver handles it and its answers come back (or are lost, or twice)."""
        msg = self.client.queue.popleft()
        self.up._handle(
            ("puback", msg.mid, rc, "Success" if rc == 0 else "No matching subscribers")
        )
        if rc != 0:
            return
        out = self.bed.receiver.handle(
            msg.topic,
            msg.payload,
            response_topic=self.up.topics.results,
            correlation=msg.correlation,
            packet_id=msg.mid,
        )
        if lose_answers:
            return
        for o in out * (2 if duplicate else 1):
            if o.topic in (self.up.topics.results, self.up.topics.receipts, self.up.topics.held):
                self.up._handle(("message", o.topic, o.payload, o.correlation))

    def tick(self, action: int) -> None:
        wait = self.up._step()
        if action == 9 or not self.client.queue:
            self.clock.now += min(max(wait, 0.05), RESULT_TIMEOUT + 1)
            return
        if action == 6:
            self.deliver(lose_answers=True)
        elif action == 7:
            self.deliver(duplicate=True)
        elif action == 8:
            self.disconnect(session_present=bool(self.clock.now % 2 > 1))
        elif action == 10:
            self.deliver(rc=0x10)
            self.clock.now += self.up.machine._backoff
        else:
            self.deliver()


def finish(sim: Sim, ticks: int = 3_000) -> None:
    for _ in range(ticks):
        if sim.up.outbox.summary()["counts"]["receipted"] == len(sim.bed.sources):
            return
        sim.tick(0)
    raise AssertionError(f"not finished: {sim.up.outbox.list()}")


def check_outcome(sim: Sim) -> None:
    bed = sim.bed
    receipts = [str(e.body["sha256"]) for e in bed.station.ledger.entries_of_type(UPLOAD_RECEIPT)]
    assert sorted(receipts) == sorted(bed.sources), "exactly one receipt per file"
    for sha, data in bed.sources.items():
        stored = bed.receiver.stored(sha)
        assert stored is not None
        assert stored.read_bytes() == data
    report = audit(bed.station)
    assert report.exit_code == 0, report.render()


# -- tests ------------------------------------------------------------------------


def test_uploads_in_order_without_faults(tmp_path: Path, sim_time: SimTime) -> None:
    bed = make_bed(tmp_path, (5000, 1, 3000, 2048), seed=1)
    sim = Sim(bed, sim_time)
    try:
        finish(sim)
        check_outcome(sim)
        # Each segment once: ceil(size / SEGMENT) per file.
        assert sim.sent_segments == 5 + 1 + 3 + 2
        order = [str(e.body["sha256"]) for e in bed.station.ledger.entries_of_type(UPLOAD_RECEIPT)]
        assert order == [r.sha256 for r in bed.results]  # same class: oldest first
    finally:
        sim.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fixed_schedule_of_faults(tmp_path: Path, sim_time: SimTime, seed: int) -> None:
    """Lost and duplicated answers, PUBACK 0x10, disconnects, time passing and a
    re-tag, through the shell and the real receiver (the machine's own property
    test has hypothesis choose them: test_transfer.py)."""
    rng = random.Random(seed)
    bed = make_bed(tmp_path, tuple(rng.randint(0, 6000) for _ in range(3)), seed=seed)
    sim = Sim(bed, sim_time)
    try:
        for n in range(120):
            if n == 60:
                last = bed.results[-1].sha256
                records.tag(
                    bed.station, [last], case="c", kind="other", retention="evidence", reason="r"
                )
                sim.up._handle(("wake",))
            sim.tick(rng.randint(0, 10))
        finish(sim)
        check_outcome(sim)
    finally:
        sim.close()
        bed.receiver.close()
        bed.station.close()


def test_evidence_takes_over_at_the_next_segment(tmp_path: Path, sim_time: SimTime) -> None:
    bed = make_bed(tmp_path, (8 * SEGMENT, 8 * SEGMENT), seed=2)
    sim = Sim(bed, sim_time)
    try:
        first, second = (r.sha256 for r in bed.results)
        while sim.up.outbox.confirmed_bytes(first) < 2 * SEGMENT:
            sim.tick(0)
        records.tag(
            bed.station, [second], case="c", kind="other", retention="long-term", reason="r"
        )
        sim.up._handle(("wake",))
        finish(sim)
        order = [str(e.body["sha256"]) for e in bed.station.ledger.entries_of_type(UPLOAD_RECEIPT)]
        assert order == [second, first]
        assert sim.sent_segments == 16  # the first resumed from its gaps
        check_outcome(sim)
    finally:
        sim.close()


def test_platform_cancel_fails_the_file_and_retry_sends_it_again(
    tmp_path: Path, sim_time: SimTime
) -> None:
    """A station the platform does not know: init is cancelled (0x83); the file is
    failed with the platform's reason, never retried alone; `upload retry` requeues."""
    bed = make_bed(tmp_path, (3000,), seed=3)
    other = Receiver(
        ReceiverSettings(
            home=tmp_path / "other",
            stations={STATION: (bed.station.keys.load().verifier,)},
            max_spool_bytes_per_station=100,
        )
    )
    real, bed.receiver = bed.receiver, other
    sim = Sim(bed, sim_time, keys=(real.verifier, other.verifier))
    try:
        for _ in range(50):
            sim.tick(0)
        row = sim.up.outbox.list()[0]
        assert row["state"] == "failed"
        assert "spool quota" in row["last_error"]
        sim.up.outbox.retry(row["sha256"])
        bed.receiver = real
        finish(sim)
        check_outcome(sim)
    finally:
        sim.close()
        other.close()


def test_quota_pauses_then_resumes(tmp_path: Path, sim_time: SimTime) -> None:
    bed = make_bed(tmp_path, (2000, 2000, 2000), seed=4)
    limited = Receiver(
        ReceiverSettings(
            home=tmp_path / "limited",
            stations={STATION: (bed.station.keys.load().verifier,)},
            max_transfers_per_station=1,
        )
    )
    bed.receiver.close()
    bed.receiver = limited
    sim = Sim(bed, sim_time)
    try:
        finish(sim)
        check_outcome(sim)
    finally:
        sim.close()
        limited.close()


def test_receipt_lost_then_fin_again(tmp_path: Path, sim_time: SimTime) -> None:
    """No receipt within receipt_timeout_s: fin goes again, the platform re-publishes
    the receipt for the file it stored, and it is recorded once."""
    bed = make_bed(tmp_path, (1500,), seed=5)
    sim = Sim(bed, sim_time)
    try:
        sha = bed.results[0].sha256
        fin_seen = False
        while not fin_seen:
            sim.up._step()
            fin_seen = "/fin/" in sim.client.queue[0].topic if sim.client.queue else False
            if not fin_seen:
                sim.deliver() if sim.client.queue else None
        # fin's result arrives, its receipt does not.
        msg = sim.client.queue.popleft()
        sim.up._handle(("puback", msg.mid, 0, "Success"))
        out = bed.receiver.handle(
            msg.topic, msg.payload, response_topic=None, correlation=msg.correlation
        )
        for o in out:
            if o.topic == sim.up.topics.results:
                sim.up._handle(("message", o.topic, o.payload, o.correlation))
        got = sim.up.outbox.get(sha)
        assert got is not None and got.state == "finished"
        sim_time.now += 3 * RESULT_TIMEOUT + 1
        finish(sim)
        check_outcome(sim)
    finally:
        sim.close()


def test_link_state_unconfigured_snapshot(tmp_path: Path) -> None:
    station = Station.init(tmp_path / "home", STATION)
    up = Uploader(station, UploadSettings(), None)
    try:
        snap = up.snapshot()
        assert snap["link"] == {"configured": False}
        assert snap["current"] is None
        assert snap["queue"]["unreceipted"] == 0
    finally:
        up.close()
        station.close()


def test_damaged_stored_copy_fails_after_full_resends(tmp_path: Path, sim_time: SimTime) -> None:
    """The dock's own copy no longer hashes to its digest: the platform refuses every
    assembly; after a few full sends the file is failed for an operator, not sent forever."""
    bed = make_bed(tmp_path, (2500, 700), seed=6)
    damaged, fine = (r.sha256 for r in bed.results)
    path = bed.station.store.path_for(damaged)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x01
    path.write_bytes(bytes(data))
    sim = Sim(bed, sim_time)
    try:
        for _ in range(2000):
            if sim.up.outbox.brief(damaged) == ("failed", 2) and sim.up.outbox.brief(fine) == (
                "receipted",
                2,
            ):
                break
            sim.tick(0)
        row = sim.up.outbox.get(damaged)
        assert row is not None and row.state == "failed", sim.up.outbox.list()
        assert row.last_error is not None and "ledger verify" in row.last_error
        assert sim.sent_segments == 3 * (transfer.MAX_FIN_RETRIES + 1) + 1
        assert bed.receiver.stored(damaged) is None
    finally:
        sim.close()


def test_what_paho_refuses_to_queue_goes_again(tmp_path: Path, sim_time: SimTime) -> None:
    """paho's bounded queue is full (MQTT_ERR_QUEUE_SIZE): nothing of it was sent;
    the shell hands it back and the same ranges go once there is room."""
    bed = make_bed(tmp_path, (6 * SEGMENT,), seed=8)
    sim = Sim(bed, sim_time, max_queued=2)
    refused = 0
    publish = sim.client.publish

    def counting(*args: Any, **kwargs: Any) -> Info:
        nonlocal refused
        info = publish(*args, **kwargs)
        refused += info.rc == mqtt.MQTT_ERR_QUEUE_SIZE
        return info

    sim.client.publish = counting  # type: ignore[method-assign]
    try:
        finish(sim)
        check_outcome(sim)
        assert refused > 0
        assert sim.sent_segments == 6  # each range reached the broker once
    finally:
        sim.close()


def test_each_segment_sent_is_logged_for_the_e2e_tests(
    tmp_path: Path, sim_time: SimTime, caplog: pytest.LogCaptureFixture
) -> None:
    """tests/integration/test_upload_e2e.py reads the debug line the shell logs per
    segment paho queued: uploader.sender, "segment %s@%d sent (%d bytes)"."""
    bed = make_bed(tmp_path, (2500,), seed=9)
    sim = Sim(bed, sim_time)
    try:
        with caplog.at_level(logging.DEBUG, logger="uploader.sender"):
            finish(sim)
        sent = [
            r.args
            for r in caplog.records
            if r.name == "uploader.sender" and r.msg == "segment %s@%d sent (%d bytes)"
        ]
        sha = bed.results[0].sha256
        assert sent == [(sha, 0, 1024), (sha, 1024, 1024), (sha, 2048, 452)]
    finally:
        sim.close()


def test_receipts_are_judged_against_the_ledger(tmp_path: Path, sim_time: SimTime) -> None:
    """A receipt signed by the pinned key but naming another size is refused; one signed
    by another key is refused; only the true one is appended, once."""
    bed = make_bed(tmp_path, (1500,), seed=10)
    sim = Sim(bed, sim_time)
    result = bed.results[0]
    assert result.seq is not None
    good = protocol.Receipt(STATION, result.sha256, 1500, result.seq, "2024-01-01T00:00:00Z", 1)
    signer = bed.receiver._signer
    forged = NoteSigner.generate(signer.name)
    try:
        sim.up._step()  # the outbox reads the ledger
        for note in (
            dataclasses.replace(good, size=1501).sign(signer),
            good.sign(forged),
            good.sign(signer),
            good.sign(signer),
        ):
            sim.up._handle(("message", sim.up.topics.receipts, note.encode(), None))
        receipts = list(bed.station.ledger.entries_of_type(UPLOAD_RECEIPT))
        assert [e.body["sha256"] for e in receipts] == [result.sha256]
        row = sim.up.outbox.get(result.sha256)
        assert row is not None and row.state == "receipted"
    finally:
        sim.close()


def test_snapshot_shows_the_file_being_sent_and_the_refusal(
    tmp_path: Path, sim_time: SimTime
) -> None:
    bed = make_bed(tmp_path, (3 * SEGMENT,), seed=11)
    sim = Sim(bed, sim_time)
    try:
        sim.up._step()
        sim.deliver()  # the checkpoint
        sim.deliver(rc=0x10)  # init: nobody listening
        snap = sim.up.snapshot()
        assert snap["current"]["sha256"] == bed.results[0].sha256
        assert snap["current"]["phase"] == "init"
        assert "no receiver is listening" in snap["link"]["refused"]
        finish(sim)
        snap = sim.up.snapshot()
        assert snap["current"] is None and snap["link"]["refused"] is None
    finally:
        sim.close()


# -- EMQX kind: the ledger mirror's bytes, failed transfers shown (issue 12) -------------


def test_the_mirror_batch_is_the_ledger_exactly_with_its_checkpoint(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, (100, 200, 300), seed=5)
    try:
        files = sender.StationFiles(bed.station, SEGMENT)
        ledger = bed.station.ledger
        size = ledger.size()
        assert files.mirror_end(0) == size  # one stored checkpoint: make_bed signed it
        assert files.mirror_end(size) is None  # nothing above the held size
        batch = files.mirror_batch(0, size)
        assert [raw for _, raw in ledger.raw_entries(0, size)] == list(batch.entries)
        assert batch.checkpoint == ledger.latest_checkpoint().note  # type: ignore[union-attr]
        payload = batch.to_json()
        assert protocol.MirrorBatch.from_json(payload) == batch
        assert len(payload) <= protocol.mirror_payload_bytes(
            sum(len(e) for e in batch.entries), len(batch.entries), len(batch.checkpoint)
        )
        with pytest.raises(InputError):
            files.mirror_batch(0, size - 1)  # no checkpoint of that size
    finally:
        bed.receiver.close()


def test_a_checkpoint_is_signed_for_the_mirror_when_the_ledger_grew(
    tmp_path: Path,
) -> None:
    bed = make_bed(tmp_path, (100,), seed=6)
    try:
        files = sender.StationFiles(bed.station, SEGMENT)
        ledger = bed.station.ledger
        assert files.sign_for_mirror(0.0, None) is None  # up to date
        ledger.append(records.TAG, {"files": [], "case": "c-1", "retention": "routine"})
        grew = files.sign_for_mirror(10.0, None)
        assert grew == 10.0, "grown just now: it waits a little for more"
        assert files.sign_for_mirror(12.0, grew) == 10.0
        assert files.sign_for_mirror(10.0 + sender.MIRROR_SIGN_S, grew) is None
        latest = ledger.latest_checkpoint()
        assert latest is not None and latest.checkpoint.size == ledger.size()
    finally:
        bed.receiver.close()


def test_the_snapshot_lists_failed_transfers_with_their_reason(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, (100,), seed=7)
    up = Uploader(bed.station, UploadSettings(broker="emqx"), None)
    try:
        assert up.topics.prefix == "$file-async"
        up.outbox.sync(bed.station.ledger)
        file_id = bed.results[0].sha256
        up.outbox.mark_failed(file_id, "refused by the platform (EMQX) at init: filemeta_conflict")
        (failed,) = up.snapshot()["failed"]
        assert failed["sha256"] == file_id and "filemeta_conflict" in failed["error"]
        assert failed["name"]
    finally:
        up.close()
        bed.receiver.close()
