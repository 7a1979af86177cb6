"""The shipped broker setup (config/mosquitto/) enforced by a real mosquitto.

A dock's MQTT user name is its station id, and the ACL is what keeps one dock from
sending transfers in another's name, reading another's receipts, or forging the
platform's results; the receiver trusts signatures, but these rules keep a
compromised dock from even getting its messages through. Every test talks to the
broker with paho-mqtt over TLS and MQTT 5, as evidock does.

Where a message must NOT arrive, each test sends a message the same client may
receive afterwards (a sentinel) and waits for it: mosquitto queues a message to
every subscriber while handling the publish, so once the sentinel is in, anything
published before it would be in too. No test sleeps to prove an absence.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.integration.broker import SHIPPED_CONF, Broker, BrokerFactory, Pki, make_pki
from tests.integration.broker import broker as _broker  # noqa: F401
from tests.integration.broker import broker_factory as _broker_factory  # noqa: F401
from tests.integration.broker import pki as _pki  # noqa: F401

WAIT_S = 5.0
FILE_ID = "ab" * 32  # a SHA-256 in hex, as every file id is
OTHER_ID = "cd" * 32

NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10


def dock(station: str, leaf: str) -> str:
    return f"evidock/v1/docks/{station}/{leaf}"


def transfer(station: str, file_id: str = FILE_ID) -> str:
    return f"$file-async/{station}/{file_id}/init"


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Peer:
    """One paho MQTT 5 client with what it was told recorded, for assertions.

    Every call waits for the broker's answer (CONNACK, SUBACK, PUBACK) with a
    timeout, so a test never sleeps and never hangs."""

    def __init__(
        self,
        broker: Broker,
        username: str | None,
        password: str | None = None,
        *,
        client_id: str = "",
        ca_file: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        tls: bool = True,
        port: int | None = None,
    ) -> None:
        self.broker = broker
        self.port = port if port is not None else (broker.tls_port if tls else broker.plain_port)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            cert, key = client_cert or (None, None)
            self.client.tls_set(
                ca_certs=ca_file or broker.ca_file,
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        self.messages: queue.Queue[Received] = queue.Queue()
        self._lock = threading.Condition()
        self._connack: tuple[ReasonCode, bool] | None = None
        self.connack_properties: dict[str, Any] = {}
        self._closed = False
        self._acks: dict[int, ReasonCode | list[ReasonCode]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    # paho callbacks, run in its network thread

    def _on_connect(
        self,
        _c: mqtt.Client,
        _u: Any,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._lock:
            self._connack = (rc, flags.session_present)
            self.connack_properties = props.json() if props is not None else {}  # type: ignore[no-untyped-call]
            self._lock.notify_all()

    def _on_disconnect(
        self,
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.DisconnectFlags,
        _rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties
    ) -> None:
        with self._lock:
            self._acks[mid] = rc
            self._lock.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Properties
    ) -> None:
        with self._lock:
            self._acks[mid] = rcs
            self._lock.notify_all()

    def _wait_ack(self, mid: int) -> ReasonCode | list[ReasonCode]:
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self._acks, WAIT_S):
                raise TimeoutError(f"no acknowledgement for message {mid}")
            return self._acks.pop(mid)

    # what tests call

    def connect(
        self, *, clean_start: bool = True, session_expiry: int | None = None
    ) -> tuple[ReasonCode, bool] | None:
        """(CONNACK reason code, session present), or None if the broker closed the
        connection without a CONNACK. TLS failures raise from here (ssl.SSLError)."""
        props = None
        if session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
        self.client.connect(
            self.broker.host, self.port, keepalive=10, clean_start=clean_start, properties=props
        )
        # Up to CONNACK the loop runs here: paho's own thread would, after a refusal,
        # sit in its reconnect delay and make close() wait for it.
        deadline = time.monotonic() + WAIT_S
        while self._connack is None and not self._closed:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK and no close from port {self.port}")
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._connack is not None and self._connack[0].value == 0:
            self.client.loop_start()
        return self._connack

    def connected(self, **kwargs: Any) -> Peer:
        """Connect and insist on success."""
        answer = self.connect(**kwargs)
        assert answer is not None, "broker closed the connection"
        assert answer[0].value == 0, f"connection refused: {answer[0]}"
        return self

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK reason codes (mosquitto 2.0 grants every
        filter: its ACL is applied when a message is delivered, not here)."""
        result, mid = self.client.subscribe([(f, 1) for f in filters])
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None, result
        acks = self._wait_ack(mid)
        assert isinstance(acks, list)
        return [rc.value for rc in acks]

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        ack = self._wait_ack(info.mid)
        assert isinstance(ack, ReasonCode)
        return ack.value

    def expect(self, topic: str) -> list[Received]:
        """Every message received until one on ``topic`` (that one last)."""
        seen: list[Received] = []
        while True:
            try:
                msg = self.messages.get(timeout=WAIT_S)
            except queue.Empty:
                raise AssertionError(f"no message on {topic!r}; got {seen}") from None
            seen.append(msg)
            if msg.topic == topic:
                return seen

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays at the broker)."""
        self.client.disconnect()
        self.client.loop_stop()


PeerFactory = Callable[..., Peer]


@pytest.fixture
def peers(broker: Broker) -> Iterator[PeerFactory]:
    """``peers(user, **kw)`` connects as ``user`` with its test password; all closed at teardown."""
    made: list[Peer] = []

    def make(user: str, **kwargs: Any) -> Peer:
        peer = Peer(broker, user, broker.passwords[user], **kwargs).connected()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


# -- who may connect ------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("dock-01", "wrong password"), ("dock-09", "no such user")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_connection_without_valid_credentials_is_refused(
    broker: Broker,
    username: str | None,
    password: str | None,
) -> None:
    for port in (broker.tls_port, broker.plain_port):
        peer = Peer(broker, username, password, tls=port == broker.tls_port, port=port)
        answer = peer.connect()
        peer.close()
        assert answer is not None
        # mosquitto 2.0 says "not authorised" (0x87) to all three under MQTT 5,
        # never "bad user name or password" (0x86): nothing tells a guesser which.
        assert answer[0].value == NOT_AUTHORIZED, answer


def test_plain_mqtt_to_the_tls_port_gets_no_connack(broker: Broker) -> None:
    peer = Peer(broker, "dock-01", broker.passwords["dock-01"], tls=False, port=broker.tls_port)
    try:
        assert peer.connect() is None
    finally:
        peer.close()


def test_tls_with_another_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other", ca_name="not the broker's CA")
    peer = Peer(broker, "dock-01", broker.passwords["dock-01"], ca_file=stranger.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        peer.connect()


def test_client_certificate_when_the_broker_requires_one(
    broker_factory: BrokerFactory, pki: Pki
) -> None:
    b = broker_factory(require_certificate=True)
    password = b.passwords["dock-01"]
    # Under TLS 1.3 the client's handshake is over before the server checks for a
    # certificate, so the refusal shows as a connection closed without CONNACK.
    assert Peer(b, "dock-01", password).connect() is None
    peer = Peer(b, "dock-01", password, client_cert=pki.client_cert("dock-01")).connected()
    peer.close()


def test_added_user_can_connect_at_once(broker: Broker) -> None:
    broker.add_user("dock-03", "dock-03-test-password")
    Peer(broker, "dock-03", "dock-03-test-password").connected().close()


# -- file transfers ----------------------------------------------------------------


def test_dock_transfer_reaches_the_platform(peers: PeerFactory) -> None:
    platform, dock01 = peers("platform"), peers("dock-01")
    assert platform.subscribe("$file-async/+/#") == [1]
    assert dock01.publish(transfer("dock-01"), b'{"name": "clip"}') == 0
    (msg,) = platform.expect(transfer("dock-01"))
    assert msg.payload == b'{"name": "clip"}'


def test_dock_cannot_send_a_transfer_as_another_station(peers: PeerFactory) -> None:
    platform, dock02 = peers("platform"), peers("dock-02")
    platform.subscribe("$file-async/+/#")
    # Refused outright: mosquitto 2.0 answers a denied QoS 1 publish with PUBACK
    # 0x87 under MQTT 5 (the message is dropped, the connection stays up).
    assert dock02.publish(transfer("dock-01"), b"forged") == NOT_AUTHORIZED
    assert dock02.publish(f"$file-async/dock-01/{FILE_ID}/0/{OTHER_ID}") == NOT_AUTHORIZED
    assert dock02.publish("$file-async/dock-02x/" + FILE_ID + "/init") == NOT_AUTHORIZED
    assert dock02.publish(transfer("dock-02")) == 0
    assert [m.topic for m in platform.expect(transfer("dock-02"))] == [transfer("dock-02")]


def test_no_matching_subscribers_is_success_not_failure(peers: PeerFactory) -> None:
    """With the receiver away, mosquitto answers 0x10. EIP-0021 gives 0x10 a meaning
    of its own ("restart the transfer"), so the uploader must not read it from the
    PUBACK: the transfer outcome comes from the receiver's results."""
    assert peers("dock-01").publish(transfer("dock-01")) == NO_MATCHING_SUBSCRIBERS


# -- what each side may read and write ----------------------------------------------


def test_station_cannot_read_another_stations_topics(peers: PeerFactory) -> None:
    platform, dock01, dock02 = peers("platform"), peers("dock-01"), peers("dock-02")
    platform.subscribe("$file-async/+/#", "evidock/v1/docks/+/checkpoint")
    dock01.subscribe(*(dock("dock-01", leaf) for leaf in ("results", "receipts", "held")))
    wide = ["#", "$file-async/#", "evidock/v1/docks/+/results", "evidock/v1/docks/dock-01/#"]
    # Granted: mosquitto 2.0 does not check subscriptions, only deliveries.
    assert dock02.subscribe(*wide, dock("dock-02", "results")) == [1] * 5

    for leaf in ("results", "receipts", "held"):
        assert platform.publish(dock("dock-01", leaf), leaf.encode()) == 0
    dock01.expect(dock("dock-01", "held"))
    assert dock01.publish(dock("dock-01", "checkpoint"), b"signed note") == 0
    assert dock01.publish(transfer("dock-01")) == 0
    platform.expect(transfer("dock-01"))

    assert platform.publish(dock("dock-02", "results"), b"sentinel") == 0
    seen = dock02.expect(dock("dock-02", "results"))
    assert {m.topic for m in seen} == {dock("dock-02", "results")}, seen


@pytest.mark.parametrize("leaf", ["results", "receipts", "held"])
def test_dock_cannot_write_what_only_the_platform_says(peers: PeerFactory, leaf: str) -> None:
    dock01, dock02 = peers("dock-01"), peers("dock-02")
    dock01.subscribe(dock("dock-01", leaf), dock("dock-01", "checkpoint"))
    assert dock01.publish(dock("dock-01", leaf), b"forged", retain=True) == NOT_AUTHORIZED
    assert dock02.publish(dock("dock-01", leaf), b"forged") == NOT_AUTHORIZED
    assert dock02.publish(dock("dock-01", "checkpoint"), b"forged") == NOT_AUTHORIZED
    assert dock01.publish(dock("dock-01", "checkpoint"), b"sentinel") == 0
    assert [m.topic for m in dock01.expect(dock("dock-01", "checkpoint"))] == [
        dock("dock-01", "checkpoint")
    ]


def test_platform_is_never_a_station(peers: PeerFactory) -> None:
    """The per-station patterns apply to every user, "platform" included; the ACL
    denies it that namespace, and it can never write a dock's checkpoint."""
    platform, dock01 = peers("platform"), peers("dock-01")
    dock01.subscribe(dock("dock-01", "checkpoint"), dock("dock-01", "results"))
    assert platform.publish(transfer("platform")) == NOT_AUTHORIZED
    assert platform.publish(dock("platform", "checkpoint")) == NOT_AUTHORIZED
    assert platform.publish(dock("dock-01", "checkpoint"), b"forged") == NOT_AUTHORIZED
    assert platform.publish(dock("dock-01", "results"), b"sentinel") == 0
    assert [m.topic for m in dock01.expect(dock("dock-01", "results"))] == [
        dock("dock-01", "results")
    ]


# -- what survives --------------------------------------------------------------------


def test_retained_checkpoint_survives_a_restart(broker: Broker) -> None:
    for station in ("dock-01", "dock-02"):
        peer = Peer(broker, station, broker.passwords[station]).connected()
        topic, note = dock(station, "checkpoint"), f"note of {station}".encode()
        assert peer.publish(topic, note, retain=True) == NO_MATCHING_SUBSCRIBERS
        peer.close()
    broker.restart()

    platform = Peer(broker, "platform", broker.passwords["platform"]).connected()
    dock02 = Peer(broker, "dock-02", broker.passwords["dock-02"]).connected()
    try:
        platform.subscribe("evidock/v1/docks/+/checkpoint")
        got = {m.topic: m for m in (platform.messages.get(timeout=WAIT_S) for _ in range(2))}
        assert got[dock("dock-01", "checkpoint")] == Received(
            dock("dock-01", "checkpoint"), b"note of dock-01", retain=True
        )
        assert got[dock("dock-02", "checkpoint")].payload == b"note of dock-02"

        # A retained message is read-checked like any other: dock-02 gets its own only.
        dock02.subscribe("evidock/v1/docks/+/checkpoint", dock("dock-02", "results"))
        assert platform.publish(dock("dock-02", "results"), b"sentinel") == 0
        seen = dock02.expect(dock("dock-02", "results"))
        assert [(m.topic, m.retain) for m in seen] == [
            (dock("dock-02", "checkpoint"), True),
            (dock("dock-02", "results"), False),
        ]
    finally:
        platform.close()
        dock02.close()


def test_kill_loses_what_was_not_yet_saved(broker: Broker) -> None:
    """mosquitto writes its persistence file on a clean stop and every
    autosave_interval (here 1800 s): a crash takes everything since with it."""
    peer = Peer(broker, "dock-01", broker.passwords["dock-01"]).connected()
    peer.publish(dock("dock-01", "checkpoint"), b"note", retain=True)
    peer.close()
    broker.kill()
    broker.start()
    peer = Peer(broker, "dock-01", broker.passwords["dock-01"]).connected()
    try:
        peer.subscribe(dock("dock-01", "checkpoint"))
        assert peer.publish(dock("dock-01", "checkpoint"), b"sentinel") == 0
        assert [m.payload for m in peer.expect(dock("dock-01", "checkpoint"))] == [b"sentinel"]
    finally:
        peer.close()


@pytest.mark.parametrize("restart", [False, True], ids=["reconnect", "broker-restart"])
def test_queued_receipt_reaches_a_dock_that_was_offline(
    broker: Broker,
    restart: bool,
) -> None:
    """What link.py relies on: a fixed client id, clean_start False and a Session
    Expiry Interval keep the dock's subscription and its undelivered QoS 1 messages
    at the broker while it is away, and, with persistence, across a broker restart."""
    password = broker.passwords["dock-01"]
    dock01 = Peer(broker, "dock-01", password, client_id="evidock-dock-01")
    dock01.connected(clean_start=False, session_expiry=3600)
    dock01.subscribe(dock("dock-01", "receipts"))
    dock01.close()

    platform = Peer(broker, "platform", broker.passwords["platform"]).connected()
    # 0x00, not 0x10: the offline session counts as a matching subscriber.
    assert platform.publish(dock("dock-01", "receipts"), b"receipt 1") == 0
    platform.close()
    if restart:
        broker.restart()

    again = Peer(broker, "dock-01", password, client_id="evidock-dock-01")
    answer = again.connect(clean_start=False, session_expiry=3600)
    try:
        assert answer is not None
        assert answer[0].value == 0
        assert answer[1], "session not present"
        (msg,) = again.expect(dock("dock-01", "receipts"))
        assert msg.payload == b"receipt 1"
    finally:
        again.close()


# -- the shipped evidock.conf -----------------------------------------------------------


class ShippedConfBroker(Broker):
    """mosquitto started the way evidock.conf says to install it on Debian: the
    distribution's main mosquitto.conf, with evidock.conf in its conf.d."""

    def render_config(self) -> str:
        conf_d = self.dir / "conf.d"
        conf_d.mkdir(exist_ok=True)
        text = SHIPPED_CONF.read_text()
        for shipped, here in {
            "/etc/mosquitto/certs/ca.crt": self.cafile,
            "/etc/mosquitto/certs/server.crt": self.certfile,
            "/etc/mosquitto/certs/server.key": self.keyfile,
            "/etc/mosquitto/evidock.passwd": self.password_file,
            "/etc/mosquitto/evidock.acl": self.acl_file,
        }.items():
            assert shipped in text, f"{SHIPPED_CONF} no longer names {shipped}"
            text = text.replace(shipped, str(here))
        assert "\nlistener 8883\n" in text
        text = text.replace("\nlistener 8883\n", f"\nlistener {self.tls_port} {self.host}\n")
        (conf_d / "evidock.conf").write_text(text)
        # A later file in conf.d: the plain listener Broker.start waits for.
        (conf_d / "zz-test.conf").write_text(f"listener {self.plain_port} {self.host}\n")
        debian = Path("/etc/mosquitto/mosquitto.conf")
        main = debian.read_text() if debian.is_file() else DEBIAN_MAIN_CONF
        return (
            main.replace("pid_file /run/mosquitto/mosquitto.pid", "")
            .replace("/var/lib/mosquitto/", f"{self.data_dir}/")
            .replace("log_dest file /var/log/mosquitto/mosquitto.log", "log_dest stderr")
            .replace("/etc/mosquitto/conf.d", str(conf_d))
        )


DEBIAN_MAIN_CONF = """\
pid_file /run/mosquitto/mosquitto.pid
persistence true
persistence_location /var/lib/mosquitto/
log_dest file /var/log/mosquitto/mosquitto.log
include_dir /etc/mosquitto/conf.d
"""


def test_shipped_conf_starts_and_enforces_the_acl(pki: Pki) -> None:
    with ShippedConfBroker(pki, users={"dock-01": "pw1", "platform": "pw0"}) as b:
        dock01 = Peer(b, "dock-01", "pw1").connected()
        try:
            # What a dock learns from CONNACK and sizes its segments and window by.
            assert dock01.connack_properties.get("MaximumPacketSize") == 2097152
            assert dock01.connack_properties.get("ReceiveMaximum") == 20
            assert dock01.publish(dock("dock-01", "receipts")) == NOT_AUTHORIZED
            assert dock01.publish(dock("dock-01", "checkpoint"), retain=True) in (0, 0x10)
        finally:
            dock01.close()
        anonymous = Peer(b, None)
        answer = anonymous.connect()
        anonymous.close()
        assert answer is not None
        assert answer[0].value == NOT_AUTHORIZED
        assert "Warning" not in b.log_text(), b.log_text()
