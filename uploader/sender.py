"""The dock's uploader: sends the outbox over MQTT and records the platform's receipts.

Transfers follow EMQX file transfer (EIP-0021, asynchronous ``$file-async``
variant; see uploader.protocol): ``init`` with the file's provenance, the
segments the platform has not confirmed, ``fin``; each command's outcome is the
result message on its Response-Topic, matched on Correlation-Data (paho reuses
packet ids). The platform then re-hashes what it stored and sends a receipt
signed by its key; once that verifies against the pinned key and the dock's
own digest, one ``upload_receipt`` entry is appended, and only then may the
``after_receipt`` wipe policy delete the recording from its camera
(design.md steps 7-9).

Threads: paho's network thread only parses and queues events; one worker
thread owns the outbox writes and every decision, so the state machine needs
no locks. Durable state lives in the outbox (uploader.outbox); what is in
flight lives in memory and is simply resent after a crash or an outage (the
receiver is idempotent). After a reconnect, paho itself resends what the
broker never acknowledged; what it had acknowledged is resent here only when
the broker lost our session (CONNACK session-present 0), since a kept session
still delivers the results. Anything whose result does not come within
``result_timeout_s`` is sent again.

Pitfalls this module is built around (design.md "Formats", the issue):

* ``wait_for_publish()`` is also true on an error PUBACK: success is judged by
  the reason code ``on_publish`` receives, never by that.
* A PUBACK of 0x10 "no matching subscribers" means the receiver was not
  listening: the command went nowhere and is sent again later.
* paho keeps its outgoing queue in memory and unbounded unless told: it is
  bounded (``max_queued``), at most ``window_segments`` segments are
  unresulted at a time, and one reusable buffer is read into. paho holds a
  reference to a bytearray payload until its PUBACK, so what is published is
  an immutable copy.
* Two windows, because two things take time. Segments the broker has not
  acknowledged yet are still crossing the dock's link: at most
  ``UNACKED_SEGMENTS`` of them, so on a slow link a segment queues behind no
  more than that many. Segments acknowledged but without a result wait for
  the receiver, which makes each batch durable before it answers: up to
  ``window_segments`` in all keep it busy through that round trip. At the
  PUBACK a result gets ``result_timeout_s`` afresh, so a slow link and a busy
  receiver never add up to a timeout.
* mosquitto drops oversized messages silently under MQTT 3.1.1: MQTT 5 only,
  and segments fit the broker's announced Maximum Packet Size.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hashing.checkpoint import Checkpoint, SignedCheckpoint
from hashing.errors import ConfigError, EvidockError, ForkError, InputError
from hashing.note import NoteVerifier, open_note, parse_note
from hashing.station import Station
from uploader import link, protocol
from uploader.link import LinkState, MqttSettings
from uploader.outbox import SENDABLE, UPLOAD_RECEIPT, Outbox, Transfer
from uploader.protocol import (
    RC_CANCEL,
    RC_QUOTA,
    RC_RESTART,
    RC_RETRY,
    FileMeta,
    Provenance,
    Receipt,
    Result,
    Topics,
)
from uploader.throttle import Bandwidth, Throttle, parse_schedule

log = logging.getLogger(__name__)

# Fixed header, topic and the Response-Topic and Correlation-Data properties
# of a segment, beyond its payload; the topic prefix is added on top.
PACKET_OVERHEAD = 512
PUBACK_NO_SUBSCRIBERS = 0x10
MAX_INIT_RETRIES = 3  # init refused for a stale held size, resent at once this often
MAX_FIN_RETRIES = 3  # fin refused (assembly wrong): the file is sent whole this often
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
SYNC_EVERY_S = 1.0  # the ledger is looked at this often even without wake()
FIN_RESENDS_PER_STEP = 4
UNACKED_SEGMENTS = 8  # segments sent that the broker has not acknowledged (PUBACK) yet
EVENT_QUEUE_MAX = 4096  # more events than this means a flood; dropped ones are only delays
RATE_WINDOW_S = 5.0

NO_CAP = Bandwidth(0, (), 480)

Key = tuple[str, str, int]  # (file id or "", command kind, offset or tree size)


def parse_platform_keys(text: str, where: str) -> tuple[NoteVerifier, ...]:
    """The platform's receipt verifier keys, separated by spaces or commas (a platform
    rotating its key lists the old and the new). Raises ConfigError naming ``where``."""
    keys = []
    for part in text.replace(",", " ").split():
        try:
            keys.append(NoteVerifier.parse(part))
        except InputError as e:
            raise ConfigError(
                f"{where} {part!r}: {e}; give the platform's receipt key as printed by "
                "`evidock receive --show-key`"
            ) from e
    return tuple(keys)


@dataclass(frozen=True)
class UploadSettings:
    """``[upload]`` (config/evidock.toml documents each)."""

    prefix_template: str = protocol.DEFAULT_PREFIX
    segment_bytes: int = 1 << 20
    window_segments: int = 32
    bandwidth: Bandwidth = NO_CAP
    platform_keys: tuple[NoteVerifier, ...] = ()
    segments_ttl_s: int = 86400
    result_timeout_s: float = 30.0
    receipt_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.segment_bytes < 1024:
            raise ConfigError("[upload] segment_bytes must be at least 1024")
        if self.window_segments < 1:
            raise ConfigError("[upload] window_segments must be at least 1")
        if self.result_timeout_s <= 0 or self.receipt_timeout_s <= 0:
            raise ConfigError("[upload] result_timeout_s and receipt_timeout_s must be positive")
        try:
            protocol.check_prefix(self.prefix_template)
        except InputError as e:
            raise ConfigError(f"[upload] topic_prefix: {e}") from e

    @classmethod
    def from_config(cls, upload: Mapping[str, Any], utc_offset_minutes: int) -> UploadSettings:
        """From the ``[upload]`` table (agent.config) and ``[offload] utc_offset_minutes``.

        ``platform_key`` may hold several verifier keys separated by spaces or
        commas (a platform rotating its key). Raises ConfigError.
        """
        keys = parse_platform_keys(str(upload.get("platform_key", "")), "[upload] platform_key")
        bandwidth = Bandwidth(
            int(upload.get("bandwidth_bytes_per_s", 0)),
            parse_schedule(upload.get("schedule", [])),
            utc_offset_minutes,
        )
        return cls(
            prefix_template=str(upload.get("topic_prefix", protocol.DEFAULT_PREFIX)),
            segment_bytes=int(upload.get("segment_bytes", 1 << 20)),
            window_segments=int(upload.get("window_segments", 32)),
            bandwidth=bandwidth,
            platform_keys=keys,
            segments_ttl_s=int(upload.get("segments_ttl_s", 86400)),
            result_timeout_s=float(upload.get("result_timeout_s", 30)),
            receipt_timeout_s=float(upload.get("receipt_timeout_s", 120)),
        )


@dataclass
class _Pending:
    """A command published and not yet resulted."""

    kind: str
    sha256: str
    offset: int
    length: int
    mid: int | None
    deadline: float  # time.monotonic(); resent (or given up) after
    acked: bool = False  # the broker's PUBACK said it was delivered


@dataclass
class _Current:
    """The transfer being sent: its phase and what to send next (memory only)."""

    transfer: Transfer
    phase: str = "init"  # init -> init-wait -> send -> fin-wait
    cursor: int = 0  # next byte to look for an unconfirmed range from
    resend: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    init_retries: int = 0
    confirmed: int = 0

    @property
    def sha256(self) -> str:
        return self.transfer.sha256


class Uploader:
    """The dock side of uploads (design.md steps 7-10).

    ``mqtt`` None means no broker is configured: the outbox still follows the
    ledger and reports, nothing is sent. Without ``platform_keys`` nothing is
    ever receipted, so the ``after_receipt`` wipe policy never wipes.
    ``on_receipt(sha256)`` runs in the worker thread after an ``upload_receipt``
    entry is committed (the daemon may then wipe recorders still docked).
    """

    def __init__(
        self,
        station: Station,
        settings: UploadSettings,
        mqtt_settings: MqttSettings | None,
        *,
        on_receipt: Callable[[str], None] | None = None,
    ) -> None:
        self.station = station
        self.settings = settings
        self.mqtt = mqtt_settings
        self.on_receipt = on_receipt
        self.outbox = Outbox.for_home(station.home)
        self.topics = Topics(station.station_id, settings.prefix_template)
        self.link = LinkState(mqtt_settings.describe()) if mqtt_settings else None
        self.throttle = Throttle(settings.bandwidth, burst=settings.segment_bytes)
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue(EVENT_QUEUE_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._connected = False
        self._segment = settings.segment_bytes
        self._buffer = bytearray(settings.segment_bytes)
        self._pending: dict[Key, _Pending] = {}
        self._aborted: set[str] = set()  # files aborted and restarted once in this run
        self._fin_retries: dict[str, int] = {}  # full resends after a refused fin, this run
        self._republish = False  # the retained checkpoint is due again on this connection
        self._by_mid: dict[int, Key] = {}
        self._current: _Current | None = None
        self._held = int(self.outbox.get_meta("held_size") or 0)
        self._blocked_until = 0.0
        self._backoff = BACKOFF_MIN_S
        self._refusal: str | None = None
        self._woken = True
        self._last_sync = 0.0
        self._sent: collections.deque[tuple[float, int]] = collections.deque(maxlen=4096)
        self._status_lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._changed = threading.Condition()

    # -- public ------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and, when a broker is configured, connect (paho reconnects
        with backoff). Raises ConfigError if the TLS files are unusable."""
        if self._thread is not None:
            return
        # What a previous run had in flight is resent from the outbox's gaps.
        self._pending.clear()
        self._by_mid.clear()
        self._current = None
        self._connected = False
        self._woken = True
        if self.mqtt is not None and self.link is not None:
            window = self.settings.window_segments
            self._client = link.make_client(
                self.mqtt,
                self.link,
                on_connected=self._on_connected,
                on_disconnected=lambda: self._put(("disconnected",)),
                max_inflight=window + 4,
                max_queued=window + FIN_RESENDS_PER_STEP + 8,
            )
            self._client.on_publish = self._on_publish
            self._client.on_message = self._on_message
            self._client.on_subscribe = self._on_subscribe
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="evidock-uploader", daemon=True)
        self._thread.start()
        if self._client is not None and self.mqtt is not None:
            link.start(self._client, self.mqtt)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop sending and disconnect. What was in flight is resent next time."""
        self._stop.set()
        self._put(("stop",), force=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("upload worker did not stop within %.0f s", timeout_s)
            self._thread = None
        if self._client is not None:
            link.stop(self._client)
            self._client = None
        self._connected = False

    def close(self) -> None:
        self.stop()
        self.outbox.close()

    def alive(self) -> bool:
        """The worker thread runs (the daemon pets systemd's watchdog only while it does).
        True before start() and after stop(): only a worker that died is not alive."""
        return self._thread is None or self._thread.is_alive()

    def wake(self) -> None:
        """New ledger entries exist (an ingest, a tag, a checkpoint): look now."""
        self._put(("wake",), force=True)

    def snapshot(self) -> dict[str, Any]:
        """What `evidock status` and the kiosk show: the link, the queue, the current file."""
        if self.link is None:
            link_view: dict[str, Any] = {"configured": False}
        else:
            link_view = {"configured": True, **self.link.as_dict(), "refused": self._refusal}
            if link_view["last_error"] is None:
                link_view["last_error"] = self._refusal
        with self._status_lock:
            current = dict(self._status) if self._status else None
        return {"link": link_view, "queue": self.outbox.summary(), "current": current}

    def drain(self, timeout_s: float) -> bool:
        """Block until every file in the ledger so far is receipted (or failed, which
        waits for `evidock upload retry`): True; False on timeout."""
        target = self.station.ledger.size()
        deadline = time.monotonic() + timeout_s
        self.wake()
        while True:
            if self.outbox.watermark >= target and self.outbox.summary()["unreceipted"] == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, 0.5))

    # -- paho's network thread: parse, queue, nothing else ---------------------------

    def _put(self, event: tuple[Any, ...], *, force: bool = False) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            if force:
                self._events.put(event)
            else:
                log.warning("upload event queue full; dropped %s (it will be retried)", event[0])

    def _on_connected(self, client: mqtt.Client, session_present: bool) -> None:
        # Subscribed on every connect: a broker that lost its state (restart without
        # persistence) has lost the subscriptions of our session too.
        client.subscribe(
            [(self.topics.results, 1), (self.topics.receipts, 1), (self.topics.held, 1)]
        )
        self._put(("connected", session_present), force=True)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        rc: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._put(("puback", mid, int(rc.value), str(rc)))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._put(("message", msg.topic, bytes(msg.payload), correlation))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        codes: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            self._put(("refused", f"broker refused the subscriptions: {', '.join(refused)}"))

    # -- the worker --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._step()
            except EvidockError as e:
                log.error("upload: %s", e)
                wait = self._back_off(str(e))
            except Exception:  # a bug must not end uploads for good; it is logged in full
                log.exception("upload worker error")
                wait = self._back_off("internal error (see the log)")
            try:
                event = self._events.get(timeout=max(0.0, min(wait, SYNC_EVERY_S)))
            except queue.Empty:
                continue
            try:
                self._handle(event)
                while True:  # everything already queued, before the next step
                    self._handle(self._events.get_nowait())
            except queue.Empty:
                pass
            except EvidockError as e:
                log.error("upload: %s", e)
            except Exception:
                log.exception("upload worker error")
            with self._changed:
                self._changed.notify_all()

    def _back_off(self, reason: str) -> float:
        """Pause sending; the pause doubles (up to a minute) with each refusal that
        comes after the last pause ended, so a whole window refused at once counts once."""
        now = time.monotonic()
        self._refusal = reason
        if now < self._blocked_until:
            return self._blocked_until - now
        wait = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        self._blocked_until = now + wait
        return wait

    def _ok(self) -> None:
        self._backoff = BACKOFF_MIN_S
        self._refusal = None

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "wake":
            self._woken = True
        elif kind == "connected":
            self._on_link_up(bool(event[1]))
        elif kind == "disconnected":
            self._connected = False
        elif kind == "puback":
            self._on_puback(int(event[1]), int(event[2]), str(event[3]))
        elif kind == "message":
            self._on_incoming(str(event[1]), bytes(event[2]), event[3])
        elif kind == "refused":
            log.error("%s", event[1])
            self._refusal = str(event[1])

    def _step(self) -> float:
        """Do what can be done now; return the seconds until something is due."""
        now = time.monotonic()
        if self._woken or now - self._last_sync >= SYNC_EVERY_S:
            self._woken = False
            self._last_sync = now
            if self.outbox.sync(self.station.ledger):
                with self._changed:
                    self._changed.notify_all()
            if self._connected:
                self._publish_checkpoint()
        if self._client is None or not self._connected:
            return SYNC_EVERY_S
        waits = [SYNC_EVERY_S]
        for key, pending in list(self._pending.items()):
            if pending.deadline <= now:
                log.info(
                    "no result for %s of %s (%d); sending it again", key[1], key[0][:12], key[2]
                )
                self._drop(key)
                self._again(pending)
            else:
                waits.append(pending.deadline - now)
        if now < self._blocked_until:
            return min([*waits, self._blocked_until - now])
        self._resend_fins()
        waits.append(self._advance())
        return max(0.0, min(waits))

    # -- link events ---------------------------------------------------------

    def _on_link_up(self, session_present: bool) -> None:
        self._connected = True
        assert self.link is not None  # noqa: S101 - only a configured link connects
        max_packet = self.link.as_dict()["max_packet"]
        room = self.settings.segment_bytes
        if max_packet:
            room = min(room, int(max_packet) - PACKET_OVERHEAD - len(self.topics.prefix.encode()))
        if room < 1024:
            log.error("broker maximum packet size %s leaves no room for segments", max_packet)
            room = 1024
        if room != self._segment:
            log.info("segments of %d bytes (broker maximum packet %s)", room, max_packet)
        self._segment = room
        now = time.monotonic()
        for key, pending in list(self._pending.items()):
            if pending.acked and not session_present:
                # The broker lost our session, and with it whatever it held for the
                # receiver or for us: what it had acknowledged is sent again now.
                self._drop(key)
                self._again(pending)
            else:
                # paho resends what was never acknowledged; its result clock restarts.
                pending.deadline = now + self.settings.result_timeout_s
        if not session_present:
            # A broker that lost our session may have lost its retained messages too
            # (restarted without persistence): publish the checkpoint again.
            self._republish = True
        self._blocked_until = 0.0
        self._woken = True

    def _on_puback(self, mid: int, code: int, text: str) -> None:
        key = self._by_mid.pop(mid, None)
        if key is None:
            return
        pending = self._pending.get(key)
        if pending is None or pending.mid != mid:
            return
        if code < 0x80 and (code != PUBACK_NO_SUBSCRIBERS or pending.kind == "checkpoint"):
            pending.acked = True
            # The broker has it: from now on the wait is the receiver's (module docstring).
            pending.deadline = time.monotonic() + self.settings.result_timeout_s
            self._ok()
            if pending.kind == "checkpoint":
                # Retained: stored by the broker even with nobody subscribed.
                self._drop(key)
                self._republish = False
                self.outbox.set_meta("published_checkpoint", str(pending.offset))
                log.info("published checkpoint %d (retained)", pending.offset)
            return
        if code == PUBACK_NO_SUBSCRIBERS:
            reason = "no receiver is listening (the broker found no subscriber)"
        else:
            reason = f"broker refused: {text.lower()} (0x{code:02x})"
        log.warning("%s %s: %s; will send it again", pending.kind, pending.sha256[:12], reason)
        self._drop(key)
        self._again(pending)
        self._back_off(reason)
        if pending.sha256:
            self.outbox.note_error(pending.sha256, reason)

    def _drop(self, key: Key) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None and pending.mid is not None:
            self._by_mid.pop(pending.mid, None)

    def _again(self, pending: _Pending) -> None:
        """A command went nowhere or its result never came: arrange to send it again."""
        current = self._current
        if current is None or current.sha256 != pending.sha256:
            return  # another file's (preempted, or a fin after a receipt timeout): later
        if pending.kind == "segment":
            current.resend.append((pending.offset, pending.length))
        elif pending.kind == "init":
            current.phase = "init"
        elif pending.kind == "fin":
            current.phase = "send"  # finds nothing missing, then sends fin again

    # -- incoming messages ---------------------------------------------------------

    def _on_incoming(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        if topic == self.topics.results:
            self._on_result(payload, correlation)
        elif topic == self.topics.receipts:
            self._on_receipt(payload)
        elif topic == self.topics.held:
            self._on_held(payload)

    def _on_held(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            text, _ = parse_note(payload)
            checkpoint = Checkpoint.parse(text)
        except EvidockError as e:
            log.warning("the platform's held checkpoint is unreadable: %s", e)
            return
        if checkpoint.origin != self.station.origin:
            log.warning("held checkpoint is for %s, not %s", checkpoint.origin, self.station.origin)
            return
        self._set_held(checkpoint.size)

    def _set_held(self, size: int) -> None:
        if size != self._held:
            self._held = size
            self.outbox.set_meta("held_size", str(size))

    def _on_result(self, payload: bytes, correlation: bytes | None) -> None:
        try:
            result = Result.from_json(payload)
            if correlation is None:
                raise InputError("result without Correlation-Data")
            file_id, kind, offset = protocol.parse_correlation(correlation)
        except InputError as e:
            log.warning("ignored a result message: %s", e)
            return
        key: Key = (file_id, kind, offset or 0)
        pending = self._pending.get(key)
        if pending is None:
            if kind == "fin" and result.ok and self.outbox.mark_finished(file_id):
                # A fin result delivered late (the persistent session kept it):
                # the platform assembled the file, whatever we were doing with it.
                log.info("%s assembled by the platform (late result)", file_id[:12])
                if self._current is not None and self._current.sha256 == file_id:
                    self._current = None
            return  # a duplicate, or for a command given up on: harmless
        self._drop(key)
        if kind == "init":
            self._init_result(pending, result)
        elif kind == "segment":
            self._segment_result(pending, result)
        elif kind == "fin":
            self._fin_result(pending, result)

    def _for_current(self, sha256: str) -> _Current | None:
        current = self._current
        return current if current is not None and current.sha256 == sha256 else None

    def _common_failure(self, pending: _Pending, result: Result) -> bool:
        """Cancel, restart and quota mean the same for every command. True if handled."""
        sha, current = pending.sha256, self._for_current(pending.sha256)
        what = f"{result.reason_description or 'no reason given'} (0x{result.reason_code:02x})"
        if result.reason_code == RC_CANCEL:
            if pending.kind == "segment" and sha not in self._aborted:
                # The receiver holds bytes there that we no longer know of (a segment
                # size changed across a crash): abort and start afresh, once.
                log.warning("platform refused a segment of %s: %s; starting it afresh", sha, what)
                self._aborted.add(sha)
                self.outbox.reset(sha)
                self._forget(sha)
                self._publish((sha, "abort", 0), self.topics.abort(sha), b"")
                if current is not None:
                    self._current = _Current(current.transfer)
                return True
            log.error("platform cancelled the upload of %s: %s", sha, what)
            self.outbox.mark_failed(sha, f"platform cancelled: {what}")
            self._forget(sha)
            return True
        if result.reason_code == RC_RESTART:
            log.warning("platform asks to restart %s: %s", sha[:12], what)
            self.outbox.reset(sha)
            self._forget(sha)
            if current is not None:
                self._current = _Current(current.transfer)
            if pending.kind == "init":
                self._back_off(f"platform asks to restart: {what}")  # not in a tight loop
            return True
        if result.reason_code == RC_QUOTA:
            log.warning("platform quota reached for %s: %s; pausing", sha[:12], what)
            self.outbox.note_error(sha, f"platform quota: {what}")
            self._back_off(f"platform quota: {what}")
            self._again(pending)
            return True
        return False

    def _forget(self, sha256: str) -> None:
        for key in [k for k in self._pending if k[0] == sha256]:
            self._drop(key)
        if self._current is not None and self._current.sha256 == sha256:
            self._current = None

    def _init_result(self, pending: _Pending, result: Result) -> None:
        current = self._for_current(pending.sha256)
        if result.held_size is not None:
            self._set_held(result.held_size)
        if result.ok:
            self.outbox.mark_initialised(pending.sha256)
            self._ok()
            if current is not None and current.phase == "init-wait":
                current.phase, current.cursor = "send", 0
            return
        if self._common_failure(pending, result):
            return
        if current is None:
            return
        what = f"{result.reason_description} (0x{result.reason_code:02x})"
        current.phase = "init"
        current.init_retries += 1
        if result.reason_code == RC_RETRY and current.init_retries <= MAX_INIT_RETRIES:
            log.info("init of %s refused (%s); sending it again", pending.sha256[:12], what)
            return
        log.warning("init of %s refused: %s", pending.sha256[:12], what)
        self.outbox.note_error(pending.sha256, f"init refused: {what}")
        current.init_retries = 0
        self._back_off(f"init refused: {what}")

    def _segment_result(self, pending: _Pending, result: Result) -> None:
        current = self._for_current(pending.sha256)
        if result.ok:
            confirmed = self.outbox.confirm_segment(pending.sha256, pending.offset, pending.length)
            if confirmed and current is not None:
                current.confirmed += pending.length
                self._publish_status()
            return
        if self._common_failure(pending, result):
            return
        log.info(
            "segment %s@%d refused (0x%02x %s); sending it again",
            pending.sha256[:12],
            pending.offset,
            result.reason_code,
            result.reason_description,
        )
        self._again(pending)

    def _fin_result(self, pending: _Pending, result: Result) -> None:
        sha, current = pending.sha256, self._for_current(pending.sha256)
        if result.ok:
            self.outbox.mark_finished(sha)
            self._ok()
            log.info("%s assembled and checked by the platform; awaiting its receipt", sha[:12])
            if current is not None:
                self._current = None
                self._publish_status()
            return
        if result.reason_code == RC_RETRY:
            # EIP-0021: fin refused means the assembled file was wrong: resend all.
            self._fin_retries[sha] = tries = self._fin_retries.get(sha, 0) + 1
            if tries > MAX_FIN_RETRIES:
                # Sent whole and still not the digest: the stored copy itself may be
                # damaged. Never retried alone; the operator runs `ledger verify`.
                error = (
                    f"the platform could not assemble the digest after {tries} full sends "
                    f"({result.reason_description}); run `evidock ledger verify`"
                )
                log.error("%s: %s", sha, error)
                self.outbox.mark_failed(sha, error)
                self._forget(sha)
                return
            log.warning(
                "platform refused fin of %s (%s); sending it all again",
                sha[:12],
                result.reason_description,
            )
            self.outbox.reset(sha)
            self._forget(sha)
            if current is not None:
                self._current = _Current(current.transfer)
            return
        if self._common_failure(pending, result):
            return
        self._again(pending)
        self._back_off(f"fin refused: 0x{result.reason_code:02x} {result.reason_description}")

    # -- receipts ----------------------------------------------------------------

    def _on_receipt(self, payload: bytes) -> None:
        """Verify a receipt and append ``upload_receipt`` (design.md step 8).

        Accepted only when signed by a pinned platform key and naming this
        station and a file in this ledger with the same digest, size and entry.
        Anything else is logged and never recorded, so nothing is wiped on its
        strength.
        """
        keys = self.settings.platform_keys
        if not keys:
            log.warning(
                "a receipt arrived but no [upload] platform_key is configured: "
                "it cannot be verified and is ignored (nothing is wiped after_receipt)"
            )
            return
        try:
            opened = open_note(payload, list(keys))
            receipt = Receipt.open(payload, keys)
            note = payload.decode()
        except (EvidockError, UnicodeDecodeError) as e:
            log.error("refused a receipt that does not verify: %s", e)
            return
        if receipt.station != self.station.station_id:
            log.error(
                "refused a receipt for station %r (this is %r)",
                receipt.station,
                self.station.station_id,
            )
            return
        rows = self.station.ledger.execute(
            "SELECT size, seq FROM files WHERE sha256 = ?", (receipt.sha256,)
        )
        if not rows or (int(rows[0][0]), int(rows[0][1])) != (receipt.size, receipt.seq):
            log.error(
                "refused a receipt for %s (size %d, entry %d): the ledger has %s",
                receipt.sha256,
                receipt.size,
                receipt.seq,
                f"size {rows[0][0]}, entry {rows[0][1]}" if rows else "no such file",
            )
            return
        body = {
            "sha256": receipt.sha256,
            "size": receipt.size,
            "seq": receipt.seq,
            "platform_key": opened.verified[0].vkey,
            "stored_at": receipt.stored_at,
            "receipt": note,
        }
        with self.station.ledger.transaction() as tx:
            # Once per file: a receipt published again (fin resent) is a duplicate.
            known = tx.conn.execute(
                "SELECT seq FROM entries WHERE type = ? AND seq > ?"
                " AND json_extract(CAST(data AS TEXT), '$.body.sha256') = ? LIMIT 1",
                (UPLOAD_RECEIPT, receipt.seq, receipt.sha256),
            ).fetchone()
            entry = None if known is not None else tx.append(UPLOAD_RECEIPT, body)
        self.outbox.mark_receipted(receipt.sha256)
        self._forget(receipt.sha256)
        if entry is not None:
            log.info("receipt for %s recorded (entry %d)", receipt.sha256, entry.seq)
            if self.on_receipt is not None:
                self.on_receipt(receipt.sha256)

    # -- sending -------------------------------------------------------------------

    def _publish(
        self,
        key: Key,
        topic: str,
        payload: bytes,
        *,
        length: int = 0,
        retain: bool = False,
    ) -> bool:
        """Publish one command (QoS 1); False if paho refused to queue it."""
        client = self._client
        if client is None:
            return False
        sha, kind, offset = key
        props = None
        if kind != "checkpoint":
            correlation = protocol.correlation(sha, kind, offset if kind == "segment" else None)
            props = link.publish_properties(self.topics.results, correlation)
        info = client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # QUEUE_SIZE: paho's bounded queue is full. Nothing was queued; try later.
            log.debug("paho did not queue %s: %s", topic, mqtt.error_string(info.rc))
            self._blocked_until = time.monotonic() + 0.1
            return False
        self._drop(key)
        self._pending[key] = _Pending(
            kind, sha, offset, length, info.mid, time.monotonic() + self.settings.result_timeout_s
        )
        self._by_mid[info.mid] = key
        return True

    def _publish_checkpoint(self) -> None:
        """Retain the latest signed checkpoint for the platform and witnesses (step 10)."""
        latest = self.station.ledger.latest_checkpoint()
        if latest is None:
            return
        size = latest.checkpoint.size
        published = int(self.outbox.get_meta("published_checkpoint") or -1)
        if size <= published and not self._republish:
            return
        key: Key = ("", "checkpoint", size)
        if key in self._pending or any(k[1] == "checkpoint" for k in self._pending):
            return
        self._publish(key, self.topics.checkpoint, latest.note.encode(), retain=True)

    def _resend_fins(self) -> None:
        """Files the platform assembled whose receipt has not come: ask again (the
        receiver publishes the receipt again for a file it already holds)."""
        older = time.time() - self.settings.receipt_timeout_s
        for transfer in self.outbox.awaiting_receipt(older, FIN_RESENDS_PER_STEP):
            key: Key = (transfer.sha256, "fin", 0)
            if key in self._pending:
                continue
            log.info("no receipt yet for %s; sending fin again", transfer.sha256[:12])
            topic = self.topics.fin(transfer.sha256, transfer.size, transfer.sha256)
            if not self._publish(key, topic, b""):
                return

    def _pick(self) -> _Current | None:
        """The transfer to work on: the current one unless a higher class is waiting
        (it takes over at the next segment; the other resumes later from its gaps)."""
        current = self._current
        if current is not None:
            brief = self.outbox.brief(current.sha256)
            if brief is None or brief[0] not in SENDABLE:
                current = self._current = None  # receipted, failed, retried meanwhile
            elif brief[1] != current.transfer.priority:
                current.transfer = dataclasses.replace(current.transfer, priority=brief[1])
        head = self.outbox.peek_next()
        if head is None:
            return current
        if current is not None and (
            head[0] == current.sha256 or head[1] >= current.transfer.priority
        ):
            self._publish_status()
            return current
        candidate = self.outbox.get(head[0])
        if candidate is None:
            return current
        if current is None:
            self._current = _Current(candidate, confirmed=candidate.confirmed)
            log.info(
                "uploading %s (%s, %d bytes, %s)",
                candidate.sha256[:12],
                candidate.name,
                candidate.size,
                candidate.retention,
            )
        elif candidate.priority < current.transfer.priority and current.phase in ("init", "send"):
            log.info(
                "%s (%s) takes over from %s (%s)",
                candidate.sha256[:12],
                candidate.retention,
                current.sha256[:12],
                current.transfer.retention,
            )
            self._current = _Current(candidate, confirmed=candidate.confirmed)
        self._publish_status()
        return self._current

    def _advance(self) -> float:
        current = self._pick()
        if current is None:
            return float("inf")
        if current.phase == "init":
            return self._send_init(current)
        if current.phase == "send":
            return self._send_segments(current)
        return float("inf")  # init-wait, fin-wait: the pending result's deadline wakes us

    def _send_init(self, current: _Current) -> float:
        transfer = current.transfer
        try:
            provenance = self._provenance(transfer)
        except ForkError:
            raise  # the station refuses to sign: every upload stops, _run logs and backs off
        except InputError as e:
            log.error("not uploading %s: %s", transfer.sha256, e)
            self.outbox.mark_failed(transfer.sha256, str(e))
            self._forget(transfer.sha256)
            return 0.0
        meta = FileMeta(
            name=protocol.safe_name(transfer.name),
            size=transfer.size,
            checksum=transfer.sha256,
            expire_at=0,  # evidence does not expire on the platform by the dock's say-so
            segments_ttl=self.settings.segments_ttl_s,
            user_data=provenance.to_json(),
        )
        payload = meta.to_json()
        if len(payload) > protocol.MAX_META_BYTES:
            self.outbox.mark_failed(transfer.sha256, f"init metadata is {len(payload)} bytes")
            self._current = None
            return 0.0
        if self._publish((transfer.sha256, "init", 0), self.topics.init(transfer.sha256), payload):
            current.phase = "init-wait"
        return float("inf")

    def _provenance(self, transfer: Transfer) -> Provenance:
        """Why the platform may believe this file is the station's (protocol.Provenance),
        built afresh for each init: the newest checkpoint, proofs from the held size."""
        ledger = self.station.ledger
        entry = ledger.entry(transfer.seq)
        if entry.body.get("sha256") != transfer.sha256:
            raise InputError(f"entry {transfer.seq} is not the ingest of {transfer.sha256}")
        signed: SignedCheckpoint | None = ledger.latest_checkpoint()
        if (
            signed is None
            or signed.checkpoint.size <= transfer.seq
            or signed.checkpoint.size < self._held
        ):
            signed = self.station.checkpoint()
        size = signed.checkpoint.size
        start = self._held
        if start > size:
            log.error(
                "the platform holds a checkpoint of size %d but this ledger's newest is %d: "
                "run `evidock ledger verify`",
                start,
                size,
            )
            start = 0
        consistency = ledger.consistency_proof(start, size) if 0 < start < size else []
        return Provenance(
            station=self.station.station_id,
            entry=entry.raw,
            inclusion=tuple(ledger.inclusion_proof(transfer.seq, size)),
            checkpoint=signed.note,
            consistency_from=start,
            consistency=tuple(consistency),
        )

    def _segments_in_flight(self) -> int:
        return sum(1 for p in self._pending.values() if p.kind == "segment")

    def _segments_unacked(self) -> int:
        return sum(1 for p in self._pending.values() if p.kind == "segment" and not p.acked)

    def _next_range(self, current: _Current) -> tuple[int, int] | None:
        transfer = current.transfer
        while current.resend:
            offset, length = current.resend.popleft()
            if (transfer.sha256, "segment", offset) not in self._pending:
                return offset, length
        while True:
            gap = self.outbox.next_gap(
                transfer.sha256, current.cursor, transfer.size, self._segment
            )
            if gap is None:
                return None
            current.cursor = gap[0] + gap[1]
            if (transfer.sha256, "segment", gap[0]) not in self._pending:
                return gap

    def _send_segments(self, current: _Current) -> float:
        transfer = current.transfer
        while (
            self._segments_in_flight() < self.settings.window_segments
            and self._segments_unacked() < UNACKED_SEGMENTS
        ):
            if self._current is not current or self._pick() is not current:
                return 0.0  # a higher class took over
            span = self._next_range(current)
            if span is None:
                if any(k[0] == transfer.sha256 for k in self._pending):
                    return float("inf")  # results outstanding
                if self.outbox.next_gap(transfer.sha256, 0, transfer.size, self._segment):
                    current.cursor = 0  # a range given up on earlier: go round again
                    continue
                topic = self.topics.fin(transfer.sha256, transfer.size, transfer.sha256)
                if self._publish((transfer.sha256, "fin", 0), topic, b""):
                    current.phase = "fin-wait"
                return float("inf")
            offset, length = span
            wait = self.throttle.try_take(length)
            if wait > 0:
                current.resend.appendleft(span)  # the same range once the cap allows
                return wait
            try:
                payload, digest = self._read(transfer, offset, length)
            except InputError as e:
                # The stored copy is not what the ledger says: never retried on its
                # own; `evidock ledger verify` tells the operator what happened.
                log.error("not uploading %s: %s", transfer.sha256, e)
                self.outbox.mark_failed(transfer.sha256, str(e))
                self._forget(transfer.sha256)
                return 0.0
            topic = self.topics.segment(transfer.sha256, offset, digest)
            if not self._publish(
                (transfer.sha256, "segment", offset), topic, payload, length=length
            ):
                current.resend.appendleft(span)
                return 0.1
            self._sent.append((time.monotonic(), length))
            log.debug("segment %s@%d sent (%d bytes)", transfer.sha256, offset, length)
        return float("inf")

    def _read(self, transfer: Transfer, offset: int, length: int) -> tuple[bytes, str]:
        """Read one segment from the store into the reusable buffer (style.md 10); return
        an immutable copy (paho keeps the payload object until its PUBACK) and its digest."""
        path = self.station.store.path_for(transfer.sha256)
        view = memoryview(self._buffer)[:length]
        try:
            with path.open("rb", buffering=0) as f:
                f.seek(offset)
                got = 0
                while got < length:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except OSError as e:
            raise InputError(f"{path}: cannot read the stored recording: {e}") from e
        if got != length:
            raise InputError(
                f"{path} is shorter than its ledger size {transfer.size}: "
                "run `evidock ledger verify`"
            )
        return bytes(view), hashlib.sha256(view).hexdigest()

    def _publish_status(self) -> None:
        current = self._current
        if current is None:
            status = None
        else:
            now = time.monotonic()
            while self._sent and self._sent[0][0] < now - RATE_WINDOW_S:
                self._sent.popleft()
            span = now - self._sent[0][0] if self._sent else 0.0
            rate = sum(n for _, n in self._sent) / span if span > 0.5 else None
            status = {
                "sha256": current.sha256,
                "name": current.transfer.name,
                "size": current.transfer.size,
                "sent": current.confirmed,
                "retention": current.transfer.retention,
                "phase": current.phase,
                "rate": rate,
            }
        with self._status_lock:
            self._status = status
