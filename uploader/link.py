"""One MQTT 5 connection, as the dock's sender and the platform's receiver both use it.

paho-mqtt 2.x does the protocol and the reconnecting (with backoff); this
module sets it up the one way evidock needs: MQTT 5, TLS when configured,
username and password, a fixed client id with a persistent session (so QoS 1
results published while the link was down are delivered when it returns), and
a ``LinkState`` anyone can read to show whether the broker is reachable.

paho keeps its outgoing queue in memory only and, unless told, unbounded;
callers bound it (``max_queued``) and keep the durable state themselves.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hashing.errors import ConfigError

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600  # results and receipts wait at the broker through a long outage


@dataclass(frozen=True)
class MqttSettings:
    """Where the broker is and how to log in (``[mqtt]``; the client id is fixed per dock,
    since resuming a session depends on it)."""

    host: str
    port: int
    client_id: str
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""  # empty: the system's trust store
    cert_file: str = ""  # client certificate, optional
    key_file: str = ""
    keepalive_s: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60

    def describe(self) -> str:
        """``mqtt(s)://host:port as client-id``, for logs and `evidock status`."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port} as {self.client_id}"


@dataclass
class LinkState:
    """What the kiosk and `evidock status` show of the broker link."""

    broker: str
    connected: bool = False
    since: float | None = None  # when the current state began (time.time())
    last_error: str | None = None
    max_packet: int | None = None  # the broker's Maximum Packet Size (CONNACK), if announced
    connects: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """A consistent copy, JSON-ready, safe to read from any thread."""
        with self._lock:
            return {
                "broker": self.broker,
                "connected": self.connected,
                "since": self.since,
                "last_error": self.last_error,
                "max_packet": self.max_packet,
                "connects": self.connects,
            }

    def up(self, max_packet: int | None) -> None:
        """Connected (CONNACK accepted), with the broker's Maximum Packet Size if announced."""
        with self._lock:
            self.connected, self.since, self.max_packet = True, time.time(), max_packet
            self.connects += 1
            self.last_error = None

    def down(self, error: str | None) -> None:
        """Disconnected or unreachable; ``error`` (kept until the next ``up``) says why."""
        with self._lock:
            if self.connected or error != self.last_error:
                self.since = time.time()
            self.connected = False
            if error:
                self.last_error = error


ConnectHook = Callable[[mqtt.Client, bool], None]  # (client, session_present)


def make_client(
    settings: MqttSettings,
    state: LinkState,
    *,
    on_connected: ConnectHook | None = None,
    on_disconnected: Callable[[], None] | None = None,
    max_inflight: int = 20,
    max_queued: int = 100,
) -> mqtt.Client:
    """A paho client configured for ``settings``; call ``connect_async`` + ``loop_start``
    (see ``start``). Raises ConfigError if the TLS files are unusable."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password or None)
    if settings.tls:
        for name in (settings.ca_file, settings.cert_file, settings.key_file):
            if name and not Path(name).is_file():
                raise ConfigError(f"TLS file {name} does not exist")
        try:
            client.tls_set(
                ca_certs=settings.ca_file or None,
                certfile=settings.cert_file or None,
                keyfile=settings.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ConfigError(f"TLS setup for {settings.describe()} failed: {e}") from e
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(max_queued)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)

    def on_connect(
        c: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        if rc.is_failure:
            state.down(f"broker refused the connection: {rc}")
            log.warning("%s refused the connection: %s", settings.describe(), rc)
            return
        max_packet = getattr(props, "MaximumPacketSize", None) if props else None
        state.up(max_packet)
        log.info(
            "connected to %s (session present: %s)", settings.describe(), flags.session_present
        )
        if on_connected is not None:
            on_connected(c, flags.session_present)

    def on_disconnect(
        _c: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _props: Properties | None,
    ) -> None:
        error = None if rc.value == 0 else f"disconnected: {rc}"
        state.down(error)
        if error:
            log.warning("%s: %s", settings.describe(), error)
        if on_disconnected is not None:
            on_disconnected()

    def on_connect_fail(_c: mqtt.Client, _userdata: Any) -> None:
        state.down("broker unreachable")

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_connect_fail = on_connect_fail
    return client


def start(client: mqtt.Client, settings: MqttSettings, *, receive_maximum: int = 0) -> None:
    """Connect in the background with a persistent session; paho retries with backoff.

    ``receive_maximum`` (MQTT 5 §3.1.2.11.3), when set, caps the QoS 1 messages the
    broker sends before this client acknowledges them: a receiver's backlog."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=False,
        properties=props,
    )
    client.loop_start()


def stop(client: mqtt.Client) -> None:
    """Disconnect and end paho's network thread (even if the disconnect fails)."""
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def publish_properties(
    response_topic: str | None = None, correlation: bytes | None = None
) -> Properties:
    """MQTT 5 PUBLISH properties: where results go and how they are matched (§4.10)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props
