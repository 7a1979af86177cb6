"""The receiver behind a real mosquitto (TLS, passwords, the shipped ACL).

A dock-side paho MQTT 5 client, logged in as ``dock-01``, sends init, segments
and fin with Response-Topic and Correlation-Data, as evidock's uploader does;
the receiver runs ``serve`` as the ``platform`` user. The results must arrive on
the station's results topic, the receipt on its receipts topic, the held
checkpoint retained; and a receiver killed in the middle of a file must, once
started again, keep the segments it stored and take the rest, including those
the broker kept for it while it was down (persistent session).
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hashing.note import NoteVerifier
from receiver.service import Receiver, ReceiverSettings, serve
from tests.integration.broker import Broker
from tests.integration.broker import broker as _broker  # noqa: F401
from tests.integration.broker import pki as _pki  # noqa: F401
from tests.unit.receiver.test_service import Dock, random_bytes, segments_of
from uploader import link
from uploader.link import MqttSettings
from uploader.protocol import RC_SUCCESS, Receipt, Result, Topics

WAIT_S = 20.0
SEG = 64 * 1024
NO_MATCHING_SUBSCRIBERS = 0x10
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    correlation: bytes | None
    retain: bool


class DockClient:
    """dock-01's MQTT side: publishes commands, collects what the platform says."""

    def __init__(self, broker: Broker, station: str = "dock-01") -> None:
        self.topics = Topics(station)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-{station}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(station, broker.passwords[station])
        self.client.tls_set(ca_certs=broker.ca_file)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.seen: list[Message] = []
        self._cond = threading.Condition()
        self._acks: dict[int, int] = {}
        self._connected = False
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.tls_port, keepalive=10, clean_start=True)
        self.client.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self._connected, WAIT_S), "dock not connected"
        _, mid = self.client.subscribe(
            [(self.topics.results, 1), (self.topics.receipts, 1), (self.topics.held, 1)]
        )
        assert mid is not None
        self._wait_ack(mid)

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._connected = rc.value == 0
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        self.inbox.put(Message(msg.topic, bytes(msg.payload), corr, bool(msg.retain)))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = rc.value
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _rcs: Any, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = 0
            self._cond.notify_all()

    def _wait_ack(self, mid: int) -> int:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, WAIT_S), f"no ack for {mid}"
            return self._acks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes,
        correlation: bytes,
        response_topic: str | None = None,
    ) -> int:
        """Publish a command (QoS 1) the way the uploader does; the PUBACK reason code."""
        props = link.publish_properties(response_topic or self.topics.results, correlation)
        info = self.client.publish(topic, payload, qos=1, properties=props)
        return self._wait_ack(info.mid)

    def command(
        self, topic: str, payload: bytes, correlation: bytes, response_topic: str | None = None
    ) -> Result:
        """Publish until someone subscribes (the receiver may still be starting), then wait
        for the result carrying this Correlation-Data."""
        deadline = time.monotonic() + WAIT_S
        while self.publish(topic, payload, correlation, response_topic) == NO_MATCHING_SUBSCRIBERS:
            assert time.monotonic() < deadline, "the receiver never subscribed"
            time.sleep(0.1)
        return self.result(correlation)

    def result(self, correlation: bytes) -> Result:
        return Result.from_json(self.wait(self.topics.results, correlation).payload)

    def wait(self, topic: str, correlation: bytes | None = None) -> Message:
        for m in self.seen:
            if m.topic == topic and (correlation is None or m.correlation == correlation):
                self.seen.remove(m)
                return m
        deadline = time.monotonic() + WAIT_S
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing on {topic} with correlation {correlation!r}"
            try:
                m = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if m.topic == topic and (correlation is None or m.correlation == correlation):
                return m
            self.seen.append(m)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_settings(broker: Broker) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.tls_port,
        client_id="evidock-receiver",
        username="platform",
        password=broker.passwords["platform"],
        tls=True,
        ca_file=broker.ca_file,
        keepalive_s=10,
    )


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    d = Dock(tmp_path / "dock")
    yield d
    d.close()


@pytest.fixture
def client(broker: Broker) -> Iterator[DockClient]:
    c = DockClient(broker)
    yield c
    c.close()


def test_upload_through_the_broker(
    broker: Broker, dock: Dock, client: DockClient, tmp_path: Path
) -> None:
    settings = ReceiverSettings(tmp_path / "receiver", {"dock-01": (dock.key,)})
    receiver = Receiver(settings)
    until = threading.Event()
    thread = threading.Thread(target=serve, args=(receiver, mqtt_settings(broker), until))
    thread.start()
    try:
        data = random_bytes(5 * SEG + 123, seed=21)
        sha = hashlib.sha256(data).hexdigest()
        entry = dock.add(data)
        r = client.command(*dock.init(data, entry), correlation=f"{sha}/init".encode())
        assert r.ok, r
        assert r.held_size == dock.checkpoint().checkpoint.size
        held = client.wait(client.topics.held)
        assert held.payload.decode() == dock.checkpoint().note
        for offset, length in reversed(segments_of(len(data), SEG)):
            corr = f"{sha}/segment/{offset}".encode()
            # A Response-Topic naming another station changes nothing: the answer
            # comes on dock-01's own results topic.
            client.publish(
                *dock.segment(data, offset, length), corr, "evidock/v1/docks/dock-02/results"
            )
        for offset, _ in segments_of(len(data), SEG):
            r = client.result(f"{sha}/segment/{offset}".encode())
            assert (r.reason_code, r.reason_description) == (RC_SUCCESS, "stored")
        r = client.command(dock.fin(data), b"", f"{sha}/fin".encode())
        assert r.ok, r
        receipt_msg = client.wait(client.topics.receipts)
        receipt = Receipt.open(receipt_msg.payload, [receiver.verifier])
        assert (receipt.station, receipt.sha256, receipt.size, receipt.seq) == (
            "dock-01",
            sha,
            len(data),
            entry.seq,
        )
        stored = receiver.stored(sha)
        assert stored is not None and stored.read_bytes() == data
        # A dock that lost the receipt sends fin again and gets the same one.
        assert client.command(dock.fin(data), b"", f"{sha}/fin".encode()).ok
        assert client.wait(client.topics.receipts).payload == receipt_msg.payload
    finally:
        until.set()
        thread.join(WAIT_S)
        receiver.close()
    assert not thread.is_alive()


RUNNER = """
import logging, sys, threading
from pathlib import Path
from hashing.note import NoteVerifier
from uploader.link import MqttSettings
from receiver.service import Receiver, ReceiverSettings, serve

home, vkey, port, ca, password = sys.argv[1:]
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
receiver = Receiver(ReceiverSettings(Path(home), {"dock-01": (NoteVerifier.parse(vkey),)}))
print(receiver.verifier.vkey, flush=True)
serve(
    receiver,
    MqttSettings("127.0.0.1", int(port), "evidock-receiver", "platform", password,
                 tls=True, ca_file=ca, keepalive_s=10),
    threading.Event(),
)
"""


class ReceiverProcess:
    """``serve`` in a process of its own, so it can be killed like a crashed service."""

    def __init__(self, broker: Broker, home: Path, dock: Dock, log: Path) -> None:
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUNNER,
                str(home),
                dock.key.vkey,
                str(broker.tls_port),
                broker.ca_file,
                broker.passwords["platform"],
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        self.vkey = self.proc.stdout.readline().decode().strip()
        assert self.vkey, log.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT_S)
        self._log.close()


def test_receiver_killed_mid_file_resumes(
    broker: Broker, dock: Dock, client: DockClient, tmp_path: Path
) -> None:
    home, log = tmp_path / "receiver", tmp_path / "receiver.log"
    data = random_bytes(8 * SEG + 5, seed=22)
    sha = hashlib.sha256(data).hexdigest()
    entry = dock.add(data)
    parts = segments_of(len(data), SEG)
    first = ReceiverProcess(broker, home, dock, log)
    try:
        assert client.command(*dock.init(data, entry), correlation=b"init").ok
        for offset, length in parts[:4]:
            assert client.command(*dock.segment(data, offset, length), f"s{offset}".encode()).ok
    finally:
        first.kill()
    # While it is down, the broker keeps the next segments for its persistent session.
    for offset, length in parts[4:6]:
        assert client.publish(*dock.segment(data, offset, length), f"s{offset}".encode()) == 0
    second = ReceiverProcess(broker, home, dock, log)
    try:
        assert second.vkey == first.vkey  # the same receipt key after a crash
        for offset, _ in parts[4:6]:
            assert client.result(f"s{offset}".encode()).ok
        # What was stored before the kill is still there: sent again, a duplicate.
        for offset, length in parts[:4]:
            r = client.command(*dock.segment(data, offset, length), f"again{offset}".encode())
            assert (r.reason_code, r.reason_description) == (RC_SUCCESS, "duplicate segment")
        for offset, length in parts[6:]:
            assert client.command(*dock.segment(data, offset, length), f"s{offset}".encode()).ok
        assert client.command(dock.fin(data), b"", b"fin").ok
        receipt = client.wait(client.topics.receipts)
        assert Receipt.open(receipt.payload, [NoteVerifier.parse(second.vkey)]).sha256 == sha
    finally:
        second.kill()
    stored = home / "store" / sha[:2] / sha[2:4] / sha
    assert stored.read_bytes() == data
