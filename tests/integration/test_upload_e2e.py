"""Uploads end to end: a real station uploads through a real mosquitto (TLS,
passwords, the shipped ACL) to the real receiver (``receiver.service.serve``).

Every file must arrive byte-exact exactly once, every receipt must be verified
before its ``upload_receipt`` entry exists, and the ledger must still verify.
Outages, priorities and the bandwidth cap are observed from the dock's own
record of each segment it sent (a debug log line per segment), compared with
what the outbox had confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.offload.ingest import Binding
from agent.records import registry as records
from hashing.audit import audit
from hashing.note import NoteSigner
from hashing.station import Station
from receiver.service import KEY_FILE, Receiver, ReceiverSettings, serve
from tests.integration._support import (
    Built,
    assert_clean,
    build_station,
    ingest,
    make_sources,
)
from tests.integration.broker import TEST_PASSWORDS, Broker, BrokerFactory
from tests.integration.broker import broker as _broker  # noqa: F401
from tests.integration.broker import broker_factory as _broker_factory  # noqa: F401
from tests.integration.broker import pki as _pki  # noqa: F401
from uploader.link import MqttSettings
from uploader.outbox import UPLOAD_RECEIPT
from uploader.protocol import Receipt, Topics
from uploader.sender import Uploader, UploadSettings
from uploader.throttle import Bandwidth

KIB, MIB = 1 << 10, 1 << 20
STATION = "dock-01"


# -- the platform ---------------------------------------------------------------


@dataclass
class Platform:
    """The real receiver, served on the broker in a thread."""

    receiver: Receiver
    broker: Broker
    home: Path
    client_cert: bool = False
    until: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        cert, key = self.broker.pki.client_cert("platform") if self.client_cert else ("", "")
        settings = MqttSettings(
            self.broker.host,
            self.broker.tls_port,
            "evidock-receiver",
            username="platform",
            password=TEST_PASSWORDS["platform"],
            tls=True,
            ca_file=self.broker.ca_file,
            cert_file=str(cert),
            key_file=str(key),
            reconnect_min_s=1,
            reconnect_max_s=2,
        )
        self.until.clear()
        self.thread = threading.Thread(
            target=serve, args=(self.receiver, settings, self.until), name="receiver", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.until.set()
        if self.thread is not None:
            self.thread.join(15)
            self.thread = None

    def signer(self) -> NoteSigner:
        return NoteSigner.parse((self.home / "keys" / KEY_FILE).read_text())


def start_platform(
    broker: Broker, home: Path, dock: Built, *, client_cert: bool = False
) -> Platform:
    receiver = Receiver(ReceiverSettings(home=home, stations={STATION: (dock.key,)}))
    platform = Platform(receiver, broker, home, client_cert)
    platform.start()
    return platform


@pytest.fixture
def platform(broker: Broker, tmp_path: Path, dock: Built) -> Iterator[Platform]:
    p = start_platform(broker, tmp_path / "platform", dock)
    yield p
    p.stop()
    p.receiver.close()


# -- the dock's side --------------------------------------------------------------


def dock_mqtt(broker: Broker, *, client_cert: bool = False) -> MqttSettings:
    cert, key = broker.pki.client_cert(STATION) if client_cert else ("", "")
    return MqttSettings(
        broker.host,
        broker.tls_port,
        f"evidock-{STATION}",
        username=STATION,
        password=TEST_PASSWORDS[STATION],
        tls=True,
        ca_file=broker.ca_file,
        cert_file=str(cert),
        key_file=str(key),
        reconnect_min_s=1,
        reconnect_max_s=2,
    )


@dataclass(frozen=True)
class Sent:
    at: float
    sha256: str
    offset: int
    length: int


class SegmentLog(logging.Handler):
    """Every segment the uploader published, from its debug log line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sent: list[Sent] = []
        self._lock_sent = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("segment %s@%d sent") and isinstance(record.args, tuple):
            sha, offset, length = record.args
            with self._lock_sent:
                self.sent.append(Sent(record.created, str(sha), int(offset), int(length)))  # type: ignore[call-overload]

    def of(self, sha: str) -> list[Sent]:
        with self._lock_sent:
            return [s for s in self.sent if s.sha256 == sha]


@pytest.fixture
def segments() -> Iterator[SegmentLog]:
    handler = SegmentLog()
    logger = logging.getLogger("uploader.sender")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
def uploaders() -> Iterator[Callable[..., Uploader]]:
    """Make uploaders; each is stopped at teardown."""
    made: list[Uploader] = []

    def make(
        station: Station, settings: UploadSettings, mqtt_settings: MqttSettings | None
    ) -> Uploader:
        up = Uploader(station, settings, mqtt_settings)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


def settings_for(platform: Platform, **kwargs: object) -> UploadSettings:
    base: dict[str, object] = {
        "platform_keys": (platform.receiver.verifier,),
        "result_timeout_s": 5.0,
        "receipt_timeout_s": 5.0,
    }
    base.update(kwargs)
    return UploadSettings(**base)  # type: ignore[arg-type]


def receipts_of(station: Station) -> list[str]:
    """The files with an upload_receipt entry, in ledger order."""
    return [str(e.body["sha256"]) for e in station.ledger.entries_of_type(UPLOAD_RECEIPT)]


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_arrived(platform: Platform, built: Built, shas: list[str] | None = None) -> None:
    """Each file is stored by the platform byte for byte."""
    by_sha = dict(zip(built.shas, built.sources, strict=True))
    for sha in shas or built.shas:
        stored = platform.receiver.stored(sha)
        assert stored is not None, f"{sha} not stored by the platform"
        assert stored.read_bytes() == by_sha[sha].read_bytes()


def retained(broker: Broker, topic: str, timeout: float = 5.0) -> bytes | None:
    """The retained message on ``topic``, read as the platform user."""
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="test-reader",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("platform", TEST_PASSWORDS["platform"])
    client.tls_set(ca_certs=broker.ca_file)

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe(topic, 1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(broker.host, broker.tls_port)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


# -- tests ------------------------------------------------------------------------


def test_every_file_arrives_once_with_a_verified_receipt(
    broker: Broker,
    platform: Platform,
    dock: Built,
    segments: SegmentLog,
    uploaders: Callable[..., Uploader],
) -> None:
    up = uploaders(dock.station, settings_for(platform), dock_mqtt(broker))
    up.start()
    assert up.drain(60), up.snapshot()

    assert_arrived(platform, dock)
    # One receipt entry per file, and nothing else is pending.
    assert sorted(receipts_of(dock.station)) == sorted(dock.shas)
    snap = up.snapshot()
    assert snap["queue"]["counts"]["receipted"] == len(dock.shas)
    assert snap["queue"]["unreceipted"] == 0
    assert snap["link"]["connected"] is True
    assert snap["link"]["last_error"] is None
    # Each receipt entry holds the platform's signed note, which still verifies.
    for entry in dock.station.ledger.entries_of_type(UPLOAD_RECEIPT):
        receipt = Receipt.open(entry.body["receipt"], [platform.receiver.verifier])
        files = dock.station.ledger.execute(
            "SELECT size, seq FROM files WHERE sha256 = ?", (receipt.sha256,)
        )
        assert (receipt.size, receipt.seq) == tuple(files[0])
        assert entry.body["platform_key"] == platform.receiver.verifier.vkey
        assert (entry.body["size"], entry.body["seq"]) == (receipt.size, receipt.seq)
    # Every segment went exactly once (no outage, no resend).
    offsets = [(s.sha256, s.offset) for s in segments.sent]
    assert len(offsets) == len(set(offsets))
    assert sum(s.length for s in segments.sent) == sum(p.stat().st_size for p in dock.sources)
    # The ledger, with its new entries, still verifies.
    dock.station.checkpoint()
    assert_clean(audit(dock.station))
    # The dock's latest checkpoint is retained for the platform and witnesses.
    up.wake()
    latest = dock.station.ledger.latest_checkpoint()
    assert latest is not None
    wait_for(
        "the new checkpoint to be retained",
        lambda: retained(broker, Topics(STATION).checkpoint, 1.0) == latest.note.encode(),
    )
    up.stop()
    # A second uploader finds nothing to do: receipts are durable.
    again = uploaders(dock.station, settings_for(platform), dock_mqtt(broker))
    again.start()
    assert again.drain(5)
    assert sorted(receipts_of(dock.station)) == sorted(dock.shas)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_broker_lost_mid_file_resumes_only_what_was_unconfirmed(
    broker: Broker,
    tmp_path: Path,
    segments: SegmentLog,
    uploaders: Callable[..., Uploader],
    how: str,
) -> None:
    """SIGKILL: the broker forgets every session and message; SIGTERM: it keeps them
    (persistence), so results queued for the dock arrive after the restart."""
    built = build_station(tmp_path / "home", sizes=(6 * MIB + 123,))
    platform = start_platform(broker, tmp_path / "platform", built)
    try:
        sha = built.shas[0]
        up = uploaders(
            built.station,
            settings_for(
                platform,
                segment_bytes=64 * KIB,
                window_segments=4,
                bandwidth=Bandwidth(2_000_000, (), 0),
            ),
            dock_mqtt(broker),
        )
        up.start()
        wait_for("a third of the file", lambda: up.outbox.confirmed_bytes(sha) > 2 * MIB)
        if how == "kill":
            broker.kill()
        else:
            broker.stop()
        killed_at = time.time()
        time.sleep(1.0)  # the dock notices; results cannot come while the broker is down
        confirmed_at_kill = set(up.outbox.confirmed_ranges(sha))
        assert 2 * MIB < sum(n for _, n in confirmed_at_kill) < 6 * MIB
        snap = up.snapshot()
        assert snap["link"]["connected"] is False
        assert snap["link"]["last_error"]
        broker.start()
        assert up.drain(60), up.snapshot()

        assert_arrived(platform, built)
        assert receipts_of(built.station) == [sha]
        sent_after = [s for s in segments.of(sha) if s.at > killed_at]
        resent_confirmed = [s for s in sent_after if (s.offset, s.length) in confirmed_at_kill]
        assert not resent_confirmed, "a segment confirmed before the outage was sent again"
        # What was sent after the outage is what was missing, give or take the window
        # in flight when the broker went: its results may still come (a kept session:
        # fewer sent) or it is sent again (paho's resend and ours: more sent).
        missing = built.sources[0].stat().st_size - sum(n for _, n in confirmed_at_kill)
        after = sum(s.length for s in sent_after)
        window = 4 * 64 * KIB
        assert missing - window <= after <= missing + 2 * window, (missing, after)
        assert up.snapshot()["link"]["connects"] >= 2
        assert_clean(audit(built.station))
    finally:
        platform.stop()
        platform.receiver.close()


@pytest.mark.slow
def test_uploader_restart_resumes_from_the_outbox(
    broker: Broker,
    tmp_path: Path,
    segments: SegmentLog,
    uploaders: Callable[..., Uploader],
) -> None:
    """A dock restarted mid-file (stop, new process state) sends only the gaps."""
    built = build_station(tmp_path / "home", sizes=(3 * MIB + 5,))
    platform = start_platform(broker, tmp_path / "platform", built)
    try:
        sha = built.shas[0]
        settings = settings_for(
            platform, segment_bytes=64 * KIB, bandwidth=Bandwidth(2_000_000, (), 0)
        )
        first = uploaders(built.station, settings, dock_mqtt(broker))
        first.start()
        wait_for("a third of the file", lambda: first.outbox.confirmed_bytes(sha) > MIB)
        first.close()
        stopped_at = time.time()
        home = built.home
        built.station.close()
        station = Station.open(home)
        second = uploaders(station, settings, dock_mqtt(broker))
        done = set(second.outbox.confirmed_ranges(sha))
        assert MIB < sum(n for _, n in done) < 3 * MIB
        second.start()
        assert second.drain(60), second.snapshot()
        again = [s for s in segments.of(sha) if s.at > stopped_at and (s.offset, s.length) in done]
        assert not again, "confirmed segments were sent again after the restart"
        assert receipts_of(station) == [sha]
        stored = platform.receiver.stored(sha)
        assert stored is not None and stored.read_bytes() == built.sources[0].read_bytes()
        station.close()
    finally:
        platform.stop()
        platform.receiver.close()


@pytest.mark.slow
def test_evidence_overtakes_routine_at_the_next_segment(
    broker: Broker,
    tmp_path: Path,
    segments: SegmentLog,
    uploaders: Callable[..., Uploader],
) -> None:
    built = build_station(tmp_path / "home", sizes=(2 * MIB, 2 * MIB, 2 * MIB, 2 * MIB))
    platform = start_platform(broker, tmp_path / "platform", built)
    try:
        first, evidence = built.shas[0], built.shas[3]
        up = uploaders(
            built.station,
            settings_for(platform, segment_bytes=64 * KIB, bandwidth=Bandwidth(4_000_000, (), 0)),
            dock_mqtt(broker),
        )
        up.start()
        wait_for("the first routine file to start", lambda: up.outbox.confirmed_bytes(first) > 0)
        records.tag(
            built.station,
            [evidence],
            case="case-9",
            kind="evidence_preservation",
            retention="evidence",
            reason="complaint filed",
        )
        up.wake()
        assert up.drain(60), up.snapshot()

        order = receipts_of(built.station)
        assert order[0] == evidence, order
        assert sorted(order) == sorted(built.shas)
        # The preempted file resumed from its gaps: no segment went twice.
        offsets = [(s.sha256, s.offset) for s in segments.sent]
        assert len(offsets) == len(set(offsets))
        # The evidence file's segments all went before the preempted file's last one.
        first_last = max(s.at for s in segments.of(first))
        assert max(s.at for s in segments.of(evidence)) < first_last
        assert_arrived(platform, built)
    finally:
        platform.stop()
        platform.receiver.close()


@pytest.mark.slow
def test_bandwidth_cap_is_kept(
    broker: Broker,
    tmp_path: Path,
    segments: SegmentLog,
    uploaders: Callable[..., Uploader],
) -> None:
    cap = 2_000_000
    built = build_station(tmp_path / "home", sizes=(6_000_000,))
    platform = start_platform(broker, tmp_path / "platform", built)
    try:
        up = uploaders(
            built.station,
            settings_for(platform, segment_bytes=64 * KIB, bandwidth=Bandwidth(cap, (), 0)),
            dock_mqtt(broker),
        )
        started = time.monotonic()
        up.start()
        assert up.drain(60), up.snapshot()
        elapsed = time.monotonic() - started
        sent = sorted(segments.sent, key=lambda s: s.at)
        # Between the first and the last segment, the bytes after the first.
        rate = sum(s.length for s in sent[1:]) / (sent[-1].at - sent[0].at)
        assert abs(rate - cap) <= 0.1 * cap, rate
        assert elapsed >= 6_000_000 / cap * 0.9
        assert_arrived(platform, built)
    finally:
        platform.stop()
        platform.receiver.close()


def test_receipt_by_another_key_is_refused(
    broker: Broker,
    platform: Platform,
    dock: Built,
    uploaders: Callable[..., Uploader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dock pins a key the platform does not sign with: files arrive, receipts
    come, none is accepted, so nothing may be wiped after_receipt."""
    other = NoteSigner.generate("evidock-platform")
    up = uploaders(
        dock.station, settings_for(platform, platform_keys=(other.verifier,)), dock_mqtt(broker)
    )
    up.start()
    wait_for(
        "every file to be assembled",
        lambda: up.snapshot()["queue"]["counts"]["finished"] == len(dock.shas),
    )
    wait_for("a receipt to be refused", lambda: "refused a receipt" in caplog.text)
    assert_arrived(platform, dock)
    assert receipts_of(dock.station) == []
    assert not up.drain(0.5)
    assert_clean(audit(dock.station))


def test_receipt_for_another_digest_or_size_is_refused(
    broker: Broker,
    platform: Platform,
    dock: Built,
    uploaders: Callable[..., Uploader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Signed by the right key but not about the dock's file: never appended."""
    up = uploaders(dock.station, settings_for(platform), dock_mqtt(broker))
    up.start()
    assert up.drain(60)
    sha = dock.shas[0]
    real = Receipt.open(
        dock.station.ledger.entries_of_type(UPLOAD_RECEIPT).__next__().body["receipt"],
        [platform.receiver.verifier],
    )
    signer = platform.signer()
    forged = [
        Receipt(STATION, sha, real.size + 1, real.seq, real.stored_at, 0),  # wrong size
        Receipt(STATION, "ab" * 32, 1000, real.seq, real.stored_at, 0),  # not in the ledger
        Receipt("dock-02", sha, real.size, real.seq, real.stored_at, 0),  # another station
    ]
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="test-forger",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("platform", TEST_PASSWORDS["platform"])
    client.tls_set(ca_certs=broker.ca_file)
    client.connect(broker.host, broker.tls_port)
    client.loop_start()
    try:
        before = len(receipts_of(dock.station))
        for r in forged:
            client.publish(Topics(STATION).receipts, r.sign(signer), qos=1).wait_for_publish(5)
        wait_for("three refusals", lambda: caplog.text.count("refused a receipt") >= 3)
    finally:
        client.disconnect()
        client.loop_stop()
    assert len(receipts_of(dock.station)) == before == len(dock.shas)


def test_without_a_platform_key_nothing_is_receipted(
    broker: Broker,
    platform: Platform,
    dock: Built,
    uploaders: Callable[..., Uploader],
) -> None:
    up = uploaders(dock.station, settings_for(platform, platform_keys=()), dock_mqtt(broker))
    up.start()
    wait_for(
        "every file to be assembled",
        lambda: up.snapshot()["queue"]["counts"]["finished"] == len(dock.shas),
    )
    assert_arrived(platform, dock)
    assert not up.drain(1.0)
    assert receipts_of(dock.station) == []
    assert up.snapshot()["queue"]["unreceipted"] == len(dock.shas)


def test_without_a_broker_the_queue_is_kept_and_reported(
    dock: Built, tmp_path: Path, uploaders: Callable[..., Uploader]
) -> None:
    up = uploaders(dock.station, UploadSettings(), None)
    up.start()
    up.wake()
    wait_for("the queue", lambda: up.snapshot()["queue"]["counts"]["queued"] == len(dock.shas))
    snap = up.snapshot()
    assert snap["link"] == {"configured": False}
    assert snap["current"] is None
    assert snap["queue"]["pending_bytes"] == sum(p.stat().st_size for p in dock.sources)
    assert not up.drain(0.3)
    # New recordings join the queue.
    more = make_sources(tmp_path / "more", (5000,), seed=7, prefix="NEW")
    ingest(dock.station, more, Binding(officer="officer-7", device="CAM0001"))
    up.wake()
    wait_for("the new file", lambda: up.snapshot()["queue"]["unreceipted"] == len(dock.shas) + 1)


def test_broker_refusal_is_shown(
    broker: Broker,
    platform: Platform,
    dock: Built,
    uploaders: Callable[..., Uploader],
) -> None:
    """A dock publishing where the ACL forbids it is told so by the PUBACK (0x87);
    the status says so rather than claiming progress."""
    up = uploaders(
        dock.station,
        settings_for(platform, prefix_template="$file-async/dock-02"),
        dock_mqtt(broker),
    )
    up.start()
    wait_for(
        "the refusal to show",
        lambda: "not authori" in str(up.snapshot()["link"]["last_error"]).lower(),
    )
    assert up.snapshot()["queue"]["counts"]["finished"] == 0
    row = up.outbox.list()[0]
    assert "not authori" in str(row["last_error"]).lower()


def test_no_receiver_listening_is_shown_and_then_recovered(
    broker: Broker,
    tmp_path: Path,
    dock: Built,
    uploaders: Callable[..., Uploader],
) -> None:
    """PUBACK 0x10 (no subscriber): the command went nowhere; it is sent again once
    the receiver is up."""
    receiver = Receiver(
        ReceiverSettings(home=tmp_path / "platform", stations={STATION: (dock.key,)})
    )
    platform = Platform(receiver, broker, tmp_path / "platform")
    up = uploaders(dock.station, settings_for(platform), dock_mqtt(broker))
    up.start()
    try:
        wait_for(
            "the status to say nobody listens",
            lambda: "no receiver" in str(up.snapshot()["link"]["last_error"]),
        )
        platform.start()
        assert up.drain(90), up.snapshot()
        assert_arrived(platform, dock)
        assert up.snapshot()["link"]["last_error"] is None
    finally:
        platform.stop()
        receiver.close()


def test_segments_fit_the_brokers_maximum_packet(
    broker_factory: BrokerFactory,
    tmp_path: Path,
    dock: Built,
    segments: SegmentLog,
    uploaders: Callable[..., Uploader],
) -> None:
    small = broker_factory(max_packet_size=100 * KIB)
    platform = start_platform(small, tmp_path / "platform", dock)
    try:
        up = uploaders(dock.station, settings_for(platform), dock_mqtt(small))
        up.start()
        assert up.drain(60), up.snapshot()
        assert up.snapshot()["link"]["max_packet"] == 100 * KIB
        assert max(s.length for s in segments.sent) <= 100 * KIB - 512
        assert_arrived(platform, dock)
    finally:
        platform.stop()
        platform.receiver.close()


def test_client_certificate_and_password(
    broker_factory: BrokerFactory,
    tmp_path: Path,
    dock: Built,
    uploaders: Callable[..., Uploader],
) -> None:
    """A broker that wants a client certificate as well as the password."""
    strict = broker_factory(require_certificate=True)
    platform = start_platform(strict, tmp_path / "platform", dock, client_cert=True)
    try:
        without = uploaders(dock.station, settings_for(platform), dock_mqtt(strict))
        without.start()
        time.sleep(1.5)
        assert without.snapshot()["link"]["connected"] is False
        assert without.snapshot()["link"]["last_error"]
        without.stop()
        up = uploaders(dock.station, settings_for(platform), dock_mqtt(strict, client_cert=True))
        up.start()
        assert up.drain(60), up.snapshot()
        assert_arrived(platform, dock)
    finally:
        platform.stop()
        platform.receiver.close()
