"""The uploader's state machine against the real receiver, with the network simulated.

The worker is driven by hand, one step at a time, exactly as its thread drives
it: ``_step()`` sends what it may, ``_handle(event)`` takes what paho's network
thread would queue. A fake client stands in for paho (it keeps its unacknowledged
messages and resends them on reconnect, as paho does); every message it carries
is handled by the real ``Receiver.handle`` and the answers go back as events.
hypothesis chooses the faults: lost results, duplicates, PUBACK 0x10 (nobody
listening), disconnects with or without the session, time passing, a file
re-tagged as evidence. Whatever happens, the uploader must never exceed its
window, never send a range the outbox already holds confirmed, and, once the
faults stop, finish with every file byte-exact at the platform and exactly one
verified ``upload_receipt`` per file.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.properties import Properties

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records import registry as records
from hashing.audit import audit
from hashing.errors import ConfigError
from hashing.station import Station
from receiver.service import Receiver, ReceiverSettings
from uploader import outbox, protocol, sender
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

    def __init__(self, bed: Bed, clock: SimTime) -> None:
        self.bed = bed
        self.clock = clock
        mqtt_settings = MqttSettings("sim", 1, "evidock-dock-01")
        self.up = Uploader(
            bed.station,
            UploadSettings(
                segment_bytes=SEGMENT,
                window_segments=WINDOW,
                platform_keys=(bed.receiver.verifier,),
                result_timeout_s=RESULT_TIMEOUT,
                receipt_timeout_s=3 * RESULT_TIMEOUT,
            ),
            mqtt_settings,
        )
        self.client = FakeClient(WINDOW + 12, self.check_publish)
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
        in_flight = sum(1 for p in up._pending.values() if p.kind == "segment")
        assert in_flight < up.settings.window_segments, "more segments than the window in flight"
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
            self.clock.now += self.up._backoff
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


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(0, 6000), min_size=1, max_size=4),
    actions=st.lists(st.integers(0, 10), min_size=0, max_size=150),
    retag=st.integers(0, 150),
)
def test_faults_never_break_the_rules(
    tmp_path_factory: pytest.TempPathFactory,
    sim_time: SimTime,
    sizes: list[int],
    actions: list[int],
    retag: int,
) -> None:
    bed = make_bed(tmp_path_factory.mktemp("sim"), tuple(sizes), seed=len(actions))
    sim = Sim(bed, sim_time)
    try:
        for n, action in enumerate(actions):
            if n == retag:
                last = bed.results[-1].sha256
                records.tag(
                    bed.station, [last], case="c", kind="other", retention="evidence", reason="r"
                )
                sim.up._handle(("wake",))
            sim.tick(action)
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
    sim = Sim(bed, sim_time)
    try:
        for _ in range(50):
            sim.tick(0)
        row = sim.up.outbox.list()[0]
        assert row["state"] == "failed"
        assert "spool quota" in row["last_error"]
        sim.up.outbox.retry(row["sha256"])
        bed.receiver = real
        sim.up.settings = UploadSettings(
            segment_bytes=SEGMENT,
            window_segments=WINDOW,
            platform_keys=(real.verifier,),
            result_timeout_s=RESULT_TIMEOUT,
        )
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


def test_a_slow_link_holds_few_segments_and_a_slow_receiver_the_rest(
    tmp_path: Path, sim_time: SimTime
) -> None:
    """At most UNACKED_SEGMENTS segments are ever without the broker's PUBACK; once
    the broker has them, up to the window wait for their results, each given
    result_timeout_s from its PUBACK, however long it took to cross the link."""
    bed = make_bed(tmp_path, (40 * SEGMENT,), seed=7)
    sim = Sim(bed, sim_time)
    window = 2 * sender.UNACKED_SEGMENTS
    sim.up.settings = dataclasses.replace(sim.up.settings, window_segments=window)
    sim.client.max_queued = 100

    def unacked() -> int:
        return sum(1 for p in sim.up._pending.values() if p.kind == "segment" and not p.acked)

    try:
        while sim.up._current is None or sim.up._current.phase != "send":
            sim.up._step()
            if sim.client.queue:
                sim.deliver()  # the retained checkpoint, init and its result
        sim.up._step()
        assert len(sim.client.queue) == unacked() == sender.UNACKED_SEGMENTS
        # A slow link: a segment crosses it in a tenth of the result timeout, so the
        # whole window on it at once would make its last segments late; its result
        # comes at once. None is sent twice.
        for _ in range(24):
            sim_time.now += RESULT_TIMEOUT * 0.1
            sim.deliver()
            sim.up._step()
            assert unacked() <= sender.UNACKED_SEGMENTS
        assert sim.sent_segments == 24 + sender.UNACKED_SEGMENTS
        # A slow receiver: the broker takes each segment at once, the results wait, and
        # each result's clock starts at its PUBACK, not when it was queued for the link.
        held: list[Message] = []
        while sim.client.queue:
            msg = sim.client.queue.popleft()
            sim.up._handle(("puback", msg.mid, 0, "Success"))
            held.append(msg)
            sim.up._step()
        assert sim.up._segments_in_flight() == window == len(held)
        sim_time.now += RESULT_TIMEOUT * 0.5
        sim.up._step()
        assert sim.sent_segments == 40 and not sim.client.queue  # nothing resent
        for msg in held:
            out = bed.receiver.handle(
                msg.topic, msg.payload, response_topic=None, correlation=msg.correlation
            )
            for o in out:
                sim.up._handle(("message", o.topic, o.payload, o.correlation))
        finish(sim)
        assert sim.sent_segments == 40
        check_outcome(sim)
    finally:
        sim.close()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="segment_bytes"):
        UploadSettings(segment_bytes=10)
    with pytest.raises(ConfigError, match="window_segments"):
        UploadSettings(window_segments=0)
    with pytest.raises(ConfigError, match="topic_prefix"):
        UploadSettings(prefix_template="a/+/b")


def test_settings_from_config() -> None:
    key = "evidock-platform+f485c38b+AUZyJOyaQIaDPFTE9B52muozZ7bleCUBZLOfqLMOKvQL"
    s = UploadSettings.from_config(
        {
            "platform_key": key,
            "bandwidth_bytes_per_s": 1000,
            "schedule": [{"from": "07:00", "to": "19:00", "bytes_per_s": 0}],
            "segment_bytes": 65536,
        },
        480,
    )
    assert [v.vkey for v in s.platform_keys] == [key]
    assert s.bandwidth.bytes_per_s == 1000
    assert s.bandwidth.utc_offset_minutes == 480
    assert len(s.bandwidth.schedule) == 1
    assert s.segment_bytes == 65536
    with pytest.raises(ConfigError, match="platform_key"):
        UploadSettings.from_config({"platform_key": "nonsense"}, 0)
    with pytest.raises(ConfigError, match="schedule window 1"):
        UploadSettings.from_config({"schedule": [{"from": "7"}]}, 0)


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
        assert sim.sent_segments == 3 * (sender.MAX_FIN_RETRIES + 1) + 1
        assert bed.receiver.stored(damaged) is None
    finally:
        sim.close()
