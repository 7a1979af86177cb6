"""The dock's uploader: sends the outbox over MQTT and records the platform's receipts.

This is the impure shell around uploader.transfer's ``TransferMachine``
(style.md 4), which makes every decision of the file transfer (EIP-0021: init,
segments, fin, what each PUBACK and result means). The shell owns what the
machine must not: the paho link, the worker thread, the clock, the outbox's
writes, the ledger's ``upload_receipt`` entries and the reads of stored
recordings. It turns paho's callbacks into the machine's events and carries
out the actions that come back. Once a receipt verifies against the pinned
key and the dock's own digest, one ``upload_receipt`` entry is appended, and
only then may the ``after_receipt`` wipe policy delete the recording from its
camera (design.md steps 7-9).

With a stock EMQX (``[upload] broker = "emqx"``) the shell also fills the
machine's ``PublishMirror`` with the ledger's exact entries and a stored signed
checkpoint (protocol.MirrorBatch), and signs a checkpoint when the ledger has
grown past the newest one (``MIRROR_SIGN_ENTRIES`` / ``MIRROR_SIGN_S``), since
the mirror reaches only as far as a signed checkpoint and the platform's
receipt service waits for it to cover a file's entry.

Threads: paho's network thread only parses and queues events; one worker
thread owns the machine, the outbox writes and every decision, so neither
needs locks. Durable state lives in the outbox (uploader.outbox); what is in
flight lives in the machine's memory and is resent after a crash or an outage.

Pitfalls the shell is built around (the machine's docstring has the protocol's):

* paho keeps its outgoing queue in memory and unbounded unless told: it is
  bounded (``max_queued``), and what it refuses to queue is handed back to the
  machine (``unsent``) to be sent again shortly.
* One reusable buffer is read into (style.md 12). paho holds a reference to a
  bytearray payload until its PUBACK, so what is published is an immutable copy.
* mosquitto drops oversized messages silently under MQTT 3.1.1: MQTT 5 only.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hashing.checkpoint import Checkpoint, SignedCheckpoint
from hashing.errors import EvidockError, InputError
from hashing.note import parse_note
from hashing.station import Station
from uploader import link, protocol
from uploader.link import LinkState, MqttSettings
from uploader.outbox import FAILED, UPLOAD_RECEIPT, Outbox, Transfer
from uploader.protocol import MirrorBatch, Provenance, Result, Topics
from uploader.transfer import (
    FIN_RESENDS_PER_STEP,
    UNQUEUED_PAUSE_S,
    Action,
    BackOff,
    CheckpointPublished,
    ConfirmSegment,
    FreezeInit,
    Key,
    MarkFailed,
    MarkFinished,
    MarkInitialised,
    NoteError,
    Publish,
    PublishMirror,
    RecordReceipt,
    Reset,
    SaveHeld,
    Step,
    ThawInit,
    TransferMachine,
    UploadSettings,
    check_receipt,
    parse_platform_keys,
)

__all__ = ["UploadSettings", "Uploader", "parse_platform_keys"]

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0  # the ledger is looked at this often even without wake()
EVENT_QUEUE_MAX = 4096  # more events than this means a flood; dropped ones are only delays
RATE_WINDOW_S = 5.0
# EMQX kind: the ledger mirror reaches only as far as a signed checkpoint, so one is
# signed when the ledger has grown this much past the newest, or this long after it
# grew at all (the receipt service waits for the mirror to reach a file's entry).
MIRROR_SIGN_ENTRIES = protocol.MIRROR_MAX_ENTRIES // 2
MIRROR_SIGN_S = 5.0
FAILED_SHOWN = 5  # failed transfers with their reasons in the snapshot (kiosk, status)


class StationFiles:
    """The machine's reads of the station (transfer.StationReads): the ledger's
    checkpoints and proofs, and segments of the stored recordings, read into one
    reusable buffer of ``segment_bytes``."""

    def __init__(self, station: Station, segment_bytes: int) -> None:
        self.station = station
        self._buffer = bytearray(segment_bytes)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The newest checkpoint the ledger stores."""
        return self.station.ledger.latest_checkpoint()

    def provenance(self, transfer: Transfer, held: int) -> Provenance:
        """Why the platform may believe this file is the station's (protocol.Provenance),
        built afresh for each init: the newest checkpoint, proofs from the held size.

        Signs a new checkpoint when the newest does not cover the file's entry or
        the held size. Raises InputError if the entry is not this file's ingest,
        ForkError if the station refuses to sign.
        """
        ledger = self.station.ledger
        entry = ledger.entry(transfer.seq)
        if entry.body.get("sha256") != transfer.sha256:
            raise InputError(f"entry {transfer.seq} is not the ingest of {transfer.sha256}")
        signed = ledger.latest_checkpoint()
        if (
            signed is None
            or signed.checkpoint.size <= transfer.seq
            or signed.checkpoint.size < held
        ):
            signed = self.station.checkpoint()
        size = signed.checkpoint.size
        start = held
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

    def mirror_end(self, start: int) -> int | None:
        """The end of the mirror's next batch from ``start`` (transfer.StationReads): the
        largest stored checkpoint within MIRROR_MAX_ENTRIES whose batch fits
        MIRROR_MAX_BYTES. A ledger signed with wider gaps than that (before the EMQX
        kind signed every MIRROR_SIGN_ENTRIES) has no such checkpoint: then the batch
        ends at the next one, over the limits, with a warning."""
        ledger = self.station.ledger
        rows = ledger.execute(
            "SELECT size, length(note) FROM checkpoints WHERE size > ? AND size <= ?"
            " ORDER BY size DESC",
            (start, start + protocol.MIRROR_MAX_ENTRIES),
        )
        for size, note_bytes in rows:
            n = int(size) - start
            raw = ledger.execute(
                "SELECT coalesce(sum(length(data)), 0) FROM entries WHERE seq >= ? AND seq < ?",
                (start, int(size)),
            )[0][0]
            if protocol.mirror_payload_bytes(int(raw), n, int(note_bytes)) <= (
                protocol.MIRROR_MAX_BYTES
            ):
                return int(size)
        above = ledger.execute("SELECT min(size) FROM checkpoints WHERE size > ?", (start,))
        if not above or above[0][0] is None:
            return None
        end = int(above[0][0])
        log.warning(
            "no signed checkpoint within %d entries / %d KiB after %d: the mirror sends "
            "entries %d-%d in one batch, over the platform's limit",
            protocol.MIRROR_MAX_ENTRIES,
            protocol.MIRROR_MAX_BYTES >> 10,
            start,
            start,
            end - 1,
        )
        return end

    def mirror_batch(self, start: int, end: int) -> MirrorBatch:
        """Entries [start, end) exactly as stored, with the signed checkpoint of size
        ``end``. Raises InputError if the ledger has no such checkpoint or entries."""
        ledger = self.station.ledger
        notes = ledger.execute("SELECT note FROM checkpoints WHERE size = ?", (end,))
        if not notes:
            raise InputError(f"the ledger has no signed checkpoint of size {end}")
        entries = tuple(raw for _seq, raw in ledger.raw_entries(start, end))
        if len(entries) != end - start:
            raise InputError(f"the ledger lacks entries {start}-{end - 1}")
        return MirrorBatch(start, entries, str(notes[0][0]))

    def sign_for_mirror(self, now: float, grew_at: float | None) -> float | None:
        """Sign a checkpoint when the mirror would otherwise wait (EMQX kind): the ledger
        is MIRROR_SIGN_ENTRIES past the newest checkpoint, or has been past it since
        ``grew_at`` for MIRROR_SIGN_S. Returns when the ledger grew past its newest
        checkpoint (None: it has not). Raises ForkError from the signer."""
        ledger = self.station.ledger
        latest = ledger.latest_checkpoint()
        behind = ledger.size() - (latest.checkpoint.size if latest is not None else 0)
        if behind <= 0:
            return None
        since = now if grew_at is None else grew_at
        if behind < MIRROR_SIGN_ENTRIES and now - since < MIRROR_SIGN_S:
            return since
        self.station.checkpoint()
        return None

    def segment(self, transfer: Transfer, offset: int, length: int) -> tuple[bytes, str]:
        """Read one segment from the store into the reusable buffer; return an immutable
        copy (paho keeps the payload object until its PUBACK) and its digest.

        Raises InputError if the stored copy cannot be read or is shorter than
        its ledger size.
        """
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


class Uploader:
    """The dock side of uploads (design.md steps 7-10).

    ``mqtt`` None means no broker is configured: the outbox still follows the
    ledger and reports, nothing is sent. Without ``platform_keys`` nothing is
    ever receipted, so the ``after_receipt`` wipe policy never wipes.
    ``on_receipt(sha256)`` runs in the worker thread after an ``upload_receipt``
    entry is committed (the daemon may then wipe recorders still docked).
    Raises ConfigError if the outbox cannot be opened.
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
        self.files = StationFiles(station, settings.segment_bytes)
        self.machine = TransferMachine(
            settings,
            self.topics,
            self.outbox,
            self.files,
            origin=station.origin,
            held=int(self.outbox.get_meta("held_size") or 0),
            published=int(self.outbox.get_meta("published_checkpoint") or -1),
        )
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue(EVENT_QUEUE_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._woken = True
        self._last_sync = 0.0
        self._grew_at: float | None = None  # when the ledger last grew past its checkpoint
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._sent_bytes = 0  # the sum over _sent, kept as it changes (status after each event)
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
        self._carry_out(self.machine.start())
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
        self.machine.link_down()

    def close(self) -> None:
        """Stop, then close the outbox: this uploader cannot be started again."""
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
        refusal = self.machine.refusal
        if self.link is None:
            link_view: dict[str, Any] = {"configured": False}
        else:
            link_view = {"configured": True, **self.link.as_dict(), "refused": refusal}
            if link_view["last_error"] is None:
                link_view["last_error"] = refusal
        with self._status_lock:
            current = dict(self._status) if self._status else None
        failed = [
            {"sha256": r["sha256"], "name": r["name"], "error": r["last_error"]}
            for r in self.outbox.list(FAILED_SHOWN, FAILED)
        ]
        return {
            "link": link_view,
            "queue": self.outbox.summary(),
            "current": current,
            "failed": failed,
        }

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
                wait = self._trouble(str(e))
            except Exception:  # a bug must not end uploads for good; it is logged in full
                log.exception("upload worker error")
                wait = self._trouble("internal error (see the log)")
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

    def _trouble(self, reason: str) -> float:
        step = self.machine.trouble(reason, time.monotonic())
        return min(step.wait_s, self._carry_out(step.actions))

    def _step(self) -> float:
        """Look at the ledger when due, then tick the machine and carry out what it
        decided; return the seconds until something is due."""
        now = time.monotonic()
        looked = False
        if self._woken or now - self._last_sync >= SYNC_EVERY_S:
            self._woken = False
            self._last_sync = now
            if self.outbox.sync(self.station.ledger):
                with self._changed:
                    self._changed.notify_all()
            looked = True
            if self.settings.emqx and self._client is not None:
                # Only with a broker: a dock without one signs on its own schedule.
                self._grew_at = self.files.sign_for_mirror(now, self._grew_at)
        step: Step = self.machine.tick(now, time.time(), looked=looked)
        wait = min(step.wait_s, self._carry_out(step.actions))
        self._publish_status()
        return max(0.0, wait)

    def _handle(self, event: tuple[Any, ...]) -> None:
        """One event from paho's thread (or wake/stop), fed to the machine."""
        kind = event[0]
        now = time.monotonic()
        actions: tuple[Action, ...] = ()
        if kind == "wake":
            self._woken = True
        elif kind == "connected":
            assert self.link is not None  # noqa: S101 - only a configured link connects
            max_packet = self.link.as_dict()["max_packet"]
            actions = self.machine.link_up(bool(event[1]), max_packet, now)
            self._woken = True
        elif kind == "disconnected":
            actions = self.machine.link_down()
        elif kind == "puback":
            actions = self.machine.puback(int(event[1]), int(event[2]), str(event[3]), now)
        elif kind == "message":
            actions = self._on_incoming(str(event[1]), bytes(event[2]), event[3], now)
        elif kind == "refused":
            actions = self.machine.refused(str(event[1]))
        self._carry_out(actions)
        self._publish_status()

    # -- incoming messages: validated here, judged by the machine -----------------

    def _on_incoming(
        self, topic: str, payload: bytes, correlation: bytes | None, now: float
    ) -> tuple[Action, ...]:
        if topic == self.topics.results:
            return self._on_result(payload, correlation, now)
        if topic == self.topics.receipts:
            return self._on_receipt(payload)
        if topic == self.topics.held:
            return self._on_held(payload)
        return ()

    def _on_result(
        self, payload: bytes, correlation: bytes | None, now: float
    ) -> tuple[Action, ...]:
        try:
            result = Result.from_json(payload)
            if correlation is None:
                raise InputError("result without Correlation-Data")
            file_id, kind, offset = protocol.parse_correlation(correlation)
        except InputError as e:
            log.warning("ignored a result message: %s", e)
            return ()
        return self.machine.result(Key(file_id, kind, offset or 0), result, now)

    def _on_held(self, payload: bytes) -> tuple[Action, ...]:
        if not payload:
            return ()
        try:
            text, _ = parse_note(payload)
            checkpoint = Checkpoint.parse(text)
        except EvidockError as e:
            log.warning("the platform's held checkpoint is unreadable: %s", e)
            return ()
        return self.machine.held(checkpoint)

    def _on_receipt(self, payload: bytes) -> tuple[Action, ...]:
        """Judge a receipt (transfer.check_receipt) and hand it to the machine, which
        records it only if it verified."""
        keys = self.settings.platform_keys
        if not keys:
            log.warning(
                "a receipt arrived but no [upload] platform_key is configured: "
                "it cannot be verified and is ignored (nothing is wiped after_receipt)"
            )
            return ()
        check = check_receipt(payload, keys, self.station.station_id, self._ledger_row)
        return self.machine.receipt(check)

    def _ledger_row(self, sha256: str) -> tuple[int, int] | None:
        """(size, ingest seq) of a file in the ledger, or None."""
        rows = self.station.ledger.execute(
            "SELECT size, seq FROM files WHERE sha256 = ?", (sha256,)
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    # -- carrying out the machine's actions -------------------------------------------

    def _carry_out(self, actions: tuple[Action, ...]) -> float:
        """Do what the machine decided, in order; tell it which publishes paho refused.
        Returns the seconds until it should be ticked again because of that (inf if
        nothing was refused)."""
        unsent: list[Key] = []
        for action in actions:
            match action:
                case Publish():
                    if not self._send(action):
                        unsent.append(action.key)
                case MarkInitialised(sha256=sha):
                    self.outbox.mark_initialised(sha)
                case ConfirmSegment(sha256=sha, offset=offset, length=length):
                    self.outbox.confirm_segment(sha, offset, length)
                case MarkFinished(sha256=sha):
                    self.outbox.mark_finished(sha)
                case MarkFailed(sha256=sha, error=error):
                    self.outbox.mark_failed(sha, error)
                case NoteError(sha256=sha, error=error):
                    self.outbox.note_error(sha, error)
                case Reset(sha256=sha):
                    self.outbox.reset(sha)
                case FreezeInit(sha256=sha, payload=payload):
                    self.outbox.freeze_init(sha, payload)
                case ThawInit(sha256=sha):
                    self.outbox.thaw_init(sha)
                case PublishMirror():
                    publish = self._mirror_publish(action)
                    if publish is not None and not self._send(publish):
                        unsent.append(action.key)
                case SaveHeld(size=size):
                    self.outbox.set_meta("held_size", str(size))
                case CheckpointPublished(size=size):
                    self.outbox.set_meta("published_checkpoint", str(size))
                case RecordReceipt():
                    self._record_receipt(action)
                case BackOff():
                    pass  # the machine keeps the pause; its ticks honour it
        if not unsent:
            return float("inf")
        self._carry_out(self.machine.unsent(tuple(unsent), time.monotonic()))
        return UNQUEUED_PAUSE_S

    def _mirror_publish(self, action: PublishMirror) -> Publish | None:
        """The mirror batch the machine decided on, read from the ledger; None if it
        cannot be read (logged: the machine sends it again when its wait runs out)."""
        try:
            batch = self.files.mirror_batch(action.start, action.end)
        except EvidockError as e:
            log.error("cannot mirror ledger entries %d-%d: %s", action.start, action.end - 1, e)
            return None
        log.info("mirroring ledger entries %d-%d to the platform", action.start, action.end - 1)
        return Publish(action.key, self.topics.ledger, batch.to_json())

    def _send(self, action: Publish) -> bool:
        """Publish one command (QoS 1); False if paho refused to queue it."""
        client = self._client
        if client is None:
            return False
        props = None
        if action.response_topic is not None or action.correlation is not None:
            props = link.publish_properties(action.response_topic, action.correlation)
        info = client.publish(
            action.topic, action.payload, qos=1, retain=action.retain, properties=props
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # QUEUE_SIZE: paho's bounded queue is full. Nothing was queued; try later.
            log.debug("paho did not queue %s: %s", action.topic, mqtt.error_string(info.rc))
            return False
        self.machine.queued(action.key, info.mid)
        if action.key.kind == "segment":
            length = len(action.payload)
            now = time.monotonic()
            self._sent.append((now, length))
            self._sent_bytes += length
            self._trim_sent(now)
            log.debug(
                "segment %s@%d sent (%d bytes)", action.key.file_id, action.key.offset, length
            )
        return True

    def _record_receipt(self, action: RecordReceipt) -> None:
        """Append ``upload_receipt`` once per file (a receipt published again after a
        resent fin is a duplicate), mark the file receipted, tell ``on_receipt``."""
        sha = action.sha256
        with self.station.ledger.transaction() as tx:
            known = tx.conn.execute(
                "SELECT seq FROM entries WHERE type = ? AND seq > ?"
                " AND json_extract(CAST(data AS TEXT), '$.body.sha256') = ? LIMIT 1",
                (UPLOAD_RECEIPT, action.body["seq"], sha),
            ).fetchone()
            entry = None if known is not None else tx.append(UPLOAD_RECEIPT, dict(action.body))
        self.outbox.mark_receipted(sha)
        if entry is not None:
            log.info("receipt for %s recorded (entry %d)", sha, entry.seq)
            if self.on_receipt is not None:
                self.on_receipt(sha)

    def _trim_sent(self, now: float) -> None:
        """Forget the segments sent before the rate's window."""
        while self._sent and self._sent[0][0] < now - RATE_WINDOW_S:
            self._sent_bytes -= self._sent.popleft()[1]

    def _publish_status(self) -> None:
        progress = self.machine.progress()
        if progress is None:
            status = None
        else:
            now = time.monotonic()
            self._trim_sent(now)
            span = now - self._sent[0][0] if self._sent else 0.0
            rate = self._sent_bytes / span if span > 0.5 else None
            status = {
                "sha256": progress.sha256,
                "name": progress.name,
                "size": progress.size,
                "sent": progress.confirmed,
                "retention": progress.retention,
                "phase": progress.phase,
                "rate": rate,
            }
        with self._status_lock:
            self._status = status
