"""The file transfer's decisions, as a sans-IO state machine (style.md 4).

What to send next, when to send it again, what a PUBACK or a result means and
what the outbox must record: all of it is decided here, from plain values. The
machine opens no socket, starts no thread and reads no clock: every event that
needs the time is given it (``now`` on ``time.monotonic()``'s scale, and on a
tick also ``wall``, ``time.time()``), and every effect comes back as an action
for the caller to carry out (python-tuf's ``TrustedMetadataSet``, h11). The
shell around it, uploader.sender, owns paho, the worker thread, the clock and
the outbox writes. What the machine reads (the outbox's queue, a segment's
bytes, a file's provenance) comes through two small interfaces, ``OutboxReads``
and ``StationReads``, which unit tests implement with in-memory values.

Events in (methods, each returning the actions it causes):

* ``link_up(session_present, max_packet, now)`` / ``link_down()``
* ``queued(key, mid)``: paho took a ``Publish`` and named its packet id;
  ``unsent(keys, now)``: paho's bounded queue refused them
* ``puback(mid, code, text, now)``: the broker's PUBACK and its reason code
* ``result(key, result, now)``: a command's parsed ``protocol.Result``
* ``receipt(check)``: a receipt judged by ``check_receipt`` (verified or not)
* ``held(checkpoint)``: the checkpoint the platform holds for this station (with
  EMQX, the receipt service's answer to the ledger mirror)
* ``refused(reason)`` (the broker refused our subscriptions) and
  ``trouble(reason, now)`` (the shell failed doing something: pause)
* ``tick(now, wall, looked=...)``: time passes; send what may be sent now

Actions out (frozen values): ``Publish`` (topic, payload, the MQTT 5
properties as values, its ``Key``), the outbox's records (``MarkInitialised``,
``ConfirmSegment``, ``MarkFinished``, ``MarkFailed``, ``NoteError``, ``Reset``,
``FreezeInit``, ``ThawInit``, ``SaveHeld``, ``CheckpointPublished``,
``RecordReceipt``), ``PublishMirror`` (a ledger batch whose bytes the shell
reads) and ``BackOff`` (the pause the machine itself keeps; it only tells).

Two kinds of platform (``UploadSettings.broker``, protocol's docstring): a
mosquitto routing the commands to `evidock receive`, which answers with
EIP-0021's reason codes, and a stock EMQX, which answers every error PUBACK
0x80 and a result whose ``reason_description`` names it: that decides
(protocol.emqx_refusal: fail with the reason, send the file whole again, or
send the command again after a pause). With EMQX the provenance travels as a
mirror of the ledger (protocol.MirrorBatch) from the size the platform holds.

The init is frozen: built once per transfer, stored by the outbox
(``FreezeInit``) before it is first published, and every later init of that
transfer re-sends exactly those bytes (emqx_ft_storage_fs.erl
``store_filemeta`` refuses a second init that differs: ``filemeta_conflict``).
Only a transfer started over drops them: `evidock upload retry` (the outbox)
or the mosquitto receiver asking for a newer proof (``ThawInit``).

Transfers follow EMQX file transfer (EIP-0021, asynchronous ``$file-async``
variant; see uploader.protocol): ``init`` with the file's provenance, the
segments the platform has not confirmed, ``fin``; each command's outcome is the
result message on its Response-Topic, matched on Correlation-Data (paho reuses
packet ids). What is in flight lives in memory and is simply resent after a
crash or an outage (the receiver is idempotent). After a reconnect, paho itself
resends what the broker never acknowledged; what it had acknowledged is resent
here only when the broker lost our session (CONNACK session-present 0), since a
kept session still delivers the results. Anything whose result does not come
within ``result_timeout_s`` is sent again.

Rules this machine is built around (design.md "Formats", the issue):

* paho's ``wait_for_publish()`` is also true on an error PUBACK: success is
  judged by the reason code ``puback`` receives, never by that.
* A PUBACK of 0x10 "no matching subscribers" means the receiver was not
  listening: the command went nowhere and is sent again later.
* At most ``window_segments`` segments are unresulted at a time. Two windows,
  because two things take time: segments the broker has not acknowledged yet
  are still crossing the dock's link, at most ``UNACKED_SEGMENTS`` of them, so
  on a slow link a segment queues behind no more than that many; segments
  acknowledged but without a result wait for the receiver, which makes each
  batch durable before it answers. At the PUBACK a result gets
  ``result_timeout_s`` afresh, so a slow link and a busy receiver never add up
  to a timeout.
* A segment is confirmed in the outbox only after its result, and ``fin`` is
  sent only when the outbox holds every byte confirmed.
* A receipt is recorded only when it verified (``check_receipt``).
* Segments fit the broker's announced Maximum Packet Size (mosquitto drops
  oversized messages silently).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from hashing.checkpoint import Checkpoint, SignedCheckpoint
from hashing.errors import ConfigError, EvidockError, ForkError, InputError
from hashing.note import NoteVerifier, open_note
from uploader import protocol
from uploader.outbox import FINISHED, INITIALISED, QUEUED, SENDABLE, Transfer
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
MIN_SEGMENT_BYTES = 1024
PUBACK_NO_SUBSCRIBERS = 0x10
MAX_INIT_RETRIES = 3  # init refused for a stale held size, resent at once this often
MAX_FIN_RETRIES = 3  # fin refused (assembly wrong): the file is sent whole this often
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
IDLE_S = 1.0  # a tick at least this often: deadlines, the receipt clock, the schedule
UNQUEUED_PAUSE_S = 0.1  # paho's queue was full: look again this soon
FIN_RESENDS_PER_STEP = 4
EMQX_ERROR_PUBACK = 0x80  # emqx_ft.erl result_to_rc: ?RC_UNSPECIFIED_ERROR for every error
COMMANDS = ("init", "segment", "fin", "abort")  # the file-transfer commands, not our own topics

# What an operator can do about a permanent EMQX refusal, shown with it.
PERMANENT_HINTS = {
    "filemeta_conflict": (
        "EMQX holds a different init for this file (settings changed since it was "
        "first sent); it keeps it until its segments_ttl passes, then "
        "`evidock upload retry` sends it afresh"
    ),
    "invalid_filemeta": "check [upload] segments_ttl_s and the recording's name",
}
UNACKED_SEGMENTS = 8  # segments sent that the broker has not acknowledged (PUBACK) yet

NO_CAP = Bandwidth(0, (), 480)


def parse_platform_keys(text: str, where: str) -> tuple[NoteVerifier, ...]:
    """The platform's receipt verifier keys, separated by spaces or commas.

    A platform rotating its key lists the old and the new. Raises ConfigError
    naming ``where`` for a key that does not parse.
    """
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
    """``[upload]`` (config/evidock.toml documents each). Raises ConfigError when built
    with values no transfer can work with.

    ``broker`` is the platform's kind (protocol.BROKERS); ``prefix_template``
    empty means that kind's own prefix, and after construction always holds the
    prefix in use (protocol.broker_prefix). The value's own default kind is
    mosquitto, what code building it directly talks to (tests, the demo, the
    benchmark run a mosquitto and `evidock receive`); the configuration file's
    default is EMQX (agent.config SCHEMA, ``from_config``).
    """

    prefix_template: str = ""
    segment_bytes: int = 1 << 20
    window_segments: int = 32
    bandwidth: Bandwidth = NO_CAP
    platform_keys: tuple[NoteVerifier, ...] = ()
    segments_ttl_s: int = 86400
    result_timeout_s: float = 30.0
    receipt_timeout_s: float = 120.0
    broker: str = protocol.BROKER_MOSQUITTO

    def __post_init__(self) -> None:
        if self.segment_bytes < MIN_SEGMENT_BYTES:
            raise ConfigError("[upload] segment_bytes must be at least 1024")
        if self.window_segments < 1:
            raise ConfigError("[upload] window_segments must be at least 1")
        if self.result_timeout_s <= 0 or self.receipt_timeout_s <= 0:
            raise ConfigError("[upload] result_timeout_s and receipt_timeout_s must be positive")
        if self.segments_ttl_s < 1:
            # emqx_ft_schema.erl schema(filemeta): segments_ttl is a pos_integer(); an
            # init carrying 0 is refused as invalid_filemeta.
            raise ConfigError(
                "[upload] segments_ttl_s must be a positive number of seconds",
                hint="EMQX clamps it to its own minimum and maximum; 86400 is a day",
            )
        try:
            # A literal level instead of {station} is left to the configuration's check
            # (from_config): code building the value directly may want one on purpose.
            prefix = protocol.broker_prefix(self.broker, self.prefix_template, station_level=False)
        except InputError as e:
            raise ConfigError(f"[upload] {e}", hint=e.hint) from e
        object.__setattr__(self, "prefix_template", prefix)

    @property
    def emqx(self) -> bool:
        """The platform is a stock EMQX (its refusals, the ledger mirror)."""
        return self.broker == protocol.BROKER_EMQX

    @classmethod
    def from_config(cls, upload: Mapping[str, Any], utc_offset_minutes: int) -> UploadSettings:
        """From the ``[upload]`` table (agent.config) and ``[offload] utc_offset_minutes``.

        ``platform_key`` may hold several verifier keys separated by spaces or
        commas (a platform rotating its key). ``broker`` defaults to EMQX here.
        Raises ConfigError.
        """
        keys = parse_platform_keys(str(upload.get("platform_key", "")), "[upload] platform_key")
        broker = str(upload.get("broker", protocol.BROKER_EMQX))
        prefix = str(upload.get("topic_prefix", ""))
        try:
            protocol.broker_prefix(broker, prefix)  # with mosquitto: the ACL's {station} level
        except InputError as e:
            raise ConfigError(f"[upload] {e}", hint=e.hint) from e
        bandwidth = Bandwidth(
            int(upload.get("bandwidth_bytes_per_s", 0)),
            parse_schedule(upload.get("schedule", [])),
            utc_offset_minutes,
        )
        return cls(
            prefix_template=prefix,
            segment_bytes=int(upload.get("segment_bytes", 1 << 20)),
            window_segments=int(upload.get("window_segments", 32)),
            bandwidth=bandwidth,
            platform_keys=keys,
            segments_ttl_s=int(upload.get("segments_ttl_s", 86400)),
            result_timeout_s=float(upload.get("result_timeout_s", 30)),
            receipt_timeout_s=float(upload.get("receipt_timeout_s", 120)),
            broker=broker,
        )


class Key(NamedTuple):
    """Which command: results and PUBACKs are matched on it (Correlation-Data)."""

    file_id: str  # the file's SHA-256; "" for the checkpoint
    kind: str  # "init" | "segment" | "fin" | "abort" | "checkpoint" | "mirror"
    offset: int = 0  # a segment's offset, the checkpoint's tree size, a mirror's start, else 0


# -- the reads the machine needs ------------------------------------------------------


class OutboxReads(Protocol):
    """The outbox's queue as the machine reads it (uploader.outbox.Outbox is one).

    The machine never writes through it: its writes are actions.
    """

    def brief(self, sha256: str) -> tuple[str, int] | None:
        """(state, priority) of one file, or None if the outbox does not know it."""
        ...

    def peek_next(self) -> tuple[str, int] | None:
        """(sha256, priority) of the file to send next, or None."""
        ...

    def get(self, sha256: str) -> Transfer | None:
        """One file's row, or None."""
        ...

    def next_gap(self, sha256: str, pos: int, size: int, segment: int) -> tuple[int, int] | None:
        """The next unconfirmed (offset, length) at or after ``pos``, at most ``segment``
        long; None when [pos, size) is all confirmed."""
        ...

    def awaiting_receipt(self, older_than: float, limit: int) -> list[Transfer]:
        """Finished files whose fin was confirmed before ``older_than`` (wall clock)."""
        ...

    def frozen_init(self, sha256: str) -> bytes | None:
        """The init payload frozen for this transfer (``FreezeInit``), or None."""
        ...


class StationReads(Protocol):
    """What the machine reads of the station: its ledger and its stored recordings."""

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The newest signed checkpoint, to publish retained (design.md step 10)."""
        ...

    def provenance(self, transfer: Transfer, held: int) -> Provenance:
        """Why the platform may believe ``transfer`` is the station's, proven from the
        checkpoint of size ``held`` the platform holds. Raises InputError (the entry
        is not this file's: never retried) or ForkError (the station refuses to sign)."""
        ...

    def segment(self, transfer: Transfer, offset: int, length: int) -> tuple[bytes, str]:
        """The stored bytes [offset, offset + length) and their SHA-256 hex. Raises
        InputError if the stored copy cannot be read or is short (never retried)."""
        ...

    def mirror_end(self, start: int) -> int | None:
        """Where the ledger mirror's next batch from ``start`` ends: the size of a stored
        signed checkpoint above ``start`` whose batch keeps protocol.MIRROR_MAX_ENTRIES
        and MIRROR_MAX_BYTES (the largest such), or None when no checkpoint is above."""
        ...


# -- actions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    """Publish QoS 1, then tell the machine ``queued(key, mid)`` or ``unsent``."""

    key: Key
    topic: str
    payload: bytes
    response_topic: str | None = None  # MQTT 5 Response-Topic
    correlation: bytes | None = None  # MQTT 5 Correlation-Data
    retain: bool = False


@dataclass(frozen=True)
class MarkInitialised:
    """The platform opened the transfer (outbox: initialised, one more attempt)."""

    sha256: str


@dataclass(frozen=True)
class ConfirmSegment:
    """The platform stored [offset, offset + length): record it as confirmed."""

    sha256: str
    offset: int
    length: int


@dataclass(frozen=True)
class MarkFinished:
    """The platform assembled and checked the file; its receipt clock starts."""

    sha256: str


@dataclass(frozen=True)
class MarkFailed:
    """Never retried on its own: an operator looks (`evidock upload retry`)."""

    sha256: str
    error: str


@dataclass(frozen=True)
class NoteError:
    """A transient problem worth showing; the file's state stays."""

    sha256: str
    error: str


@dataclass(frozen=True)
class Reset:
    """Start the file over: its confirmations are dropped, it is queued again."""

    sha256: str


@dataclass(frozen=True)
class FreezeInit:
    """Store this transfer's init payload durably, before it is first published: every
    later init re-sends exactly these bytes (emqx_ft_storage_fs.erl ``store_filemeta``
    accepts a second init only if it equals the stored filemeta)."""

    sha256: str
    payload: bytes


@dataclass(frozen=True)
class ThawInit:
    """Drop the frozen init: the platform asked for provenance built afresh (the
    mosquitto receiver's request for a newer consistency proof)."""

    sha256: str


@dataclass(frozen=True)
class PublishMirror:
    """Publish the ledger mirror's batch [start, end) with the signed checkpoint of size
    ``end`` (protocol.MirrorBatch) on ``Topics.ledger``, QoS 1, under ``key``; then
    tell the machine ``queued`` or ``unsent`` as for a ``Publish``."""

    key: Key
    start: int
    end: int


@dataclass(frozen=True)
class SaveHeld:
    """Remember the size of the checkpoint the platform holds (proofs start there)."""

    size: int


@dataclass(frozen=True)
class CheckpointPublished:
    """The broker retained the checkpoint of this tree size."""

    size: int


@dataclass(frozen=True)
class RecordReceipt:
    """Append one ``upload_receipt`` entry with ``body`` (once per file) and mark the
    file receipted; only ever for a receipt that verified."""

    sha256: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class BackOff:
    """Sending pauses for ``seconds`` (the machine keeps the pause; nothing to do)."""

    seconds: float
    reason: str


Action = (
    Publish
    | MarkInitialised
    | ConfirmSegment
    | MarkFinished
    | MarkFailed
    | NoteError
    | Reset
    | FreezeInit
    | ThawInit
    | PublishMirror
    | SaveHeld
    | CheckpointPublished
    | RecordReceipt
    | BackOff
)


@dataclass(frozen=True)
class Step:
    """What a tick decided: the actions, in order, and the seconds until the next tick
    is due (sooner if an event comes)."""

    actions: tuple[Action, ...]
    wait_s: float


@dataclass(frozen=True)
class Progress:
    """The file being sent, for `evidock status` and the kiosk."""

    sha256: str
    name: str
    size: int
    confirmed: int
    retention: str
    phase: str


# -- receipts -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptCheck:
    """A receipt message, judged: verified with the ``upload_receipt`` entry's body,
    or refused with the reason."""

    sha256: str  # the file it names, "" if it did not even open
    body: Mapping[str, Any] | None = None
    refusal: str | None = None

    def __post_init__(self) -> None:
        if (self.body is None) == (self.refusal is None):
            raise ValueError("a receipt check has a body (verified) or a refusal, not both")

    @property
    def verified(self) -> bool:
        """Signed by a pinned key, for this station and a file its ledger holds."""
        return self.body is not None


def check_receipt(
    payload: bytes,
    keys: tuple[NoteVerifier, ...],
    station: str,
    ledger_row: Callable[[str], tuple[int, int] | None],
) -> ReceiptCheck:
    """Judge a receipt (design.md step 8); never raises.

    Verified only when signed by one of ``keys`` (the pinned platform keys) and
    naming ``station`` and a file whose (size, ingest seq), as ``ledger_row``
    reads them from the ledger, are the receipt's. Anything else is refused, so
    nothing is wiped on its strength.
    """
    try:
        opened = open_note(payload, list(keys))
        receipt = Receipt.open(payload, keys)
        note = payload.decode()
    except (EvidockError, UnicodeDecodeError) as e:
        return ReceiptCheck("", refusal=f"refused a receipt that does not verify: {e}")
    if receipt.station != station:
        return ReceiptCheck(
            receipt.sha256,
            refusal=f"refused a receipt for station {receipt.station!r} (this is {station!r})",
        )
    row = ledger_row(receipt.sha256)
    if row != (receipt.size, receipt.seq):
        has = f"size {row[0]}, entry {row[1]}" if row else "no such file"
        return ReceiptCheck(
            receipt.sha256,
            refusal=f"refused a receipt for {receipt.sha256} (size {receipt.size}, "
            f"entry {receipt.seq}): the ledger has {has}",
        )
    body = {
        "sha256": receipt.sha256,
        "size": receipt.size,
        "seq": receipt.seq,
        "platform_key": opened.verified[0].vkey,
        "stored_at": receipt.stored_at,
        "receipt": note,
    }
    return ReceiptCheck(receipt.sha256, body)


# -- the machine --------------------------------------------------------------------


@dataclass
class _Pending:
    """A command published and not yet resulted."""

    key: Key
    length: int
    deadline: float  # on the events' ``now`` scale; resent (or given up) after
    mid: int | None = None  # paho's packet id, once ``queued``
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


Actions = tuple[Action, ...]


class TransferMachine:
    """The dock side of EIP-0021 transfers, one file at a time by priority.

    Deterministic: the same events with the same reads give the same actions.
    The caller carries out each batch of actions, in order, before it feeds
    the next event, and answers every ``Publish`` with ``queued`` or ``unsent``.
    ``held`` and ``published`` are what the outbox remembered (the platform's
    checkpoint size, the last checkpoint retained at the broker).

    Not thread-safe: one thread feeds it.
    """

    def __init__(
        self,
        settings: UploadSettings,
        topics: Topics,
        outbox: OutboxReads,
        station: StationReads,
        *,
        origin: str,
        held: int = 0,
        published: int = -1,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self.station = station
        self.origin = origin
        self.held_size = held
        self.published_size = published
        self.connected = False
        self.segment_bytes = settings.segment_bytes
        self.refusal: str | None = None  # why sending pauses, for `evidock status`
        self._now = 0.0
        self._wall = 0.0
        self.throttle = Throttle(
            settings.bandwidth,
            burst=settings.segment_bytes,
            clock=lambda: self._now,
            wall=lambda: self._wall,
        )
        self._pending: dict[Key, _Pending] = {}
        self._by_mid: dict[int, Key] = {}
        self._current: _Current | None = None
        self._aborted: set[str] = set()  # files aborted and restarted once in this run
        self._fin_retries: dict[str, int] = {}  # full resends after a refused fin, this run
        self._republish = False  # the retained checkpoint is due again on this connection
        self._mirror_ahead = False  # logged that the platform holds more than we signed
        self._blocked_until = 0.0
        self._backoff = BACKOFF_MIN_S
        self._out: list[Action] = []

    # -- views ------------------------------------------------------------------

    def progress(self) -> Progress | None:
        """The file being sent now, or None."""
        current = self._current
        if current is None:
            return None
        t = current.transfer
        return Progress(t.sha256, t.name, t.size, current.confirmed, t.retention, current.phase)

    def in_flight(self) -> tuple[int, int]:
        """(segments without a result, of those without a PUBACK): the two windows."""
        segments = [p for p in self._pending.values() if p.key.kind == "segment"]
        return len(segments), sum(1 for p in segments if not p.acked)

    def pending(self) -> frozenset[Key]:
        """The commands published and still awaiting their result (or PUBACK)."""
        return frozenset(self._pending)

    # -- events -----------------------------------------------------------------

    def start(self) -> Actions:
        """A new run of the shell: what a previous run had in flight is resent from the
        outbox's gaps (results for it are harmless duplicates)."""
        self._pending.clear()
        self._by_mid.clear()
        self._current = None
        self.connected = False
        return self._flush()

    def link_up(self, session_present: bool, max_packet: int | None, now: float) -> Actions:
        """Connected (CONNACK): size segments to the broker's Maximum Packet Size; what
        the broker acknowledged is resent if it lost our session, the rest waits anew."""
        self.connected = True
        room = self.settings.segment_bytes
        if max_packet:
            room = min(room, int(max_packet) - PACKET_OVERHEAD - len(self.topics.prefix.encode()))
        if room < MIN_SEGMENT_BYTES:
            log.error("broker maximum packet size %s leaves no room for segments", max_packet)
            room = MIN_SEGMENT_BYTES
        if room != self.segment_bytes:
            log.info("segments of %d bytes (broker maximum packet %s)", room, max_packet)
        self.segment_bytes = room
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
        return self._flush()

    def link_down(self) -> Actions:
        """Disconnected: nothing is sent until ``link_up`` (paho keeps its queue)."""
        self.connected = False
        return self._flush()

    def queued(self, key: Key, mid: int) -> Actions:
        """paho queued the ``Publish`` of ``key`` as packet ``mid``."""
        pending = self._pending.get(key)
        if pending is not None:
            pending.mid = mid
            self._by_mid[mid] = key
        return self._flush()

    def unsent(self, keys: tuple[Key, ...], now: float) -> Actions:
        """paho's bounded queue refused these ``Publish`` actions (in the order they were
        given): nothing of them was queued; each is tried again shortly, in order."""
        for key in reversed(keys):
            pending = self._pending.pop(key, None)
            if pending is None:
                continue
            if pending.mid is not None:
                self._by_mid.pop(pending.mid, None)
            current = self._for_current(key.file_id)
            if current is None:
                continue  # a fin resent for a receipt, the checkpoint, an abort: found again
            if key.kind == "segment":
                current.resend.appendleft((key.offset, pending.length))
            elif key.kind == "init" and current.phase == "init-wait":
                current.phase = "init"
            elif key.kind == "fin" and current.phase == "fin-wait":
                current.phase = "send"
        self._blocked_until = now + UNQUEUED_PAUSE_S
        return self._flush()

    def puback(self, mid: int, code: int, text: str, now: float) -> Actions:
        """The broker's PUBACK for packet ``mid`` with reason ``code`` (MQTT 5 §3.4.2.1).

        Only a code below 0x80 is delivery, and 0x10 "no matching subscribers"
        is not either, except for the retained checkpoint: the receiver was not
        listening and the command is sent again after a pause.
        """
        key = self._by_mid.pop(mid, None)
        pending = None if key is None else self._pending.get(key)
        if key is None or pending is None or pending.mid != mid:
            return self._flush()
        # emqx_ft answers every failed command PUBACK 0x80 (emqx_ft.erl result_to_rc) and
        # publishes the reason as the result message: that message decides, not this.
        emqx_says = self.settings.emqx and code == EMQX_ERROR_PUBACK and key.kind in COMMANDS
        if emqx_says or (
            code < 0x80 and (code != PUBACK_NO_SUBSCRIBERS or key.kind == "checkpoint")
        ):
            pending.acked = True
            # The broker has it: from now on the wait is the receiver's (module docstring).
            pending.deadline = now + self.settings.result_timeout_s
            self._ok()
            if key.kind == "checkpoint":
                # Retained: stored by the broker even with nobody subscribed.
                self._drop(key)
                self._republish = False
                self.published_size = key.offset
                self._emit(CheckpointPublished(key.offset))
                log.info("published checkpoint %d (retained)", key.offset)
            return self._flush()
        if code == PUBACK_NO_SUBSCRIBERS:
            reason = "no receiver is listening (the broker found no subscriber)"
        else:
            reason = f"broker refused: {text.lower()} (0x{code:02x})"
        log.warning("%s %s: %s; will send it again", key.kind, key.file_id[:12], reason)
        self._drop(key)
        self._again(pending)
        self._back_off(reason, now)
        if key.file_id:
            self._emit(NoteError(key.file_id, reason))
        return self._flush()

    def result(self, key: Key, result: Result, now: float) -> Actions:
        """The result of command ``key`` (its Correlation-Data) from the platform."""
        pending = self._pending.get(key)
        if pending is None:
            self._late_result(key, result)
            return self._flush()  # a duplicate, or for a command given up on: harmless
        self._drop(key)
        if self.settings.emqx and not result.ok and key.kind in COMMANDS:
            self._emqx_refusal(pending, result, now)
        elif key.kind == "init":
            self._init_result(pending, result, now)
        elif key.kind == "segment":
            self._segment_result(pending, result, now)
        elif key.kind == "fin":
            self._fin_result(pending, result, now)
        return self._flush()

    def receipt(self, check: ReceiptCheck) -> Actions:
        """A receipt arrived: record it only if it verified; the file is then done."""
        if check.body is None:  # not verified
            log.error("%s", check.refusal)
            return self._flush()
        self._emit(RecordReceipt(check.sha256, check.body))
        self._forget(check.sha256)
        return self._flush()

    def held(self, checkpoint: Checkpoint) -> Actions:
        """The platform holds ``checkpoint`` of this station (retained on the held
        topic): later proofs start from its size."""
        if checkpoint.origin != self.origin:
            log.warning("held checkpoint is for %s, not %s", checkpoint.origin, self.origin)
            return self._flush()
        self._set_held(checkpoint.size)
        for key in [k for k in self._pending if k.kind == "mirror"]:
            # The batch was applied (held reached its end) or the platform holds another
            # size than it started from: either way the next batch starts at the held size.
            if checkpoint.size != key.offset:
                self._drop(key)
        return self._flush()

    def refused(self, reason: str) -> Actions:
        """The broker refused our subscriptions: shown until sending works again."""
        log.error("%s", reason)
        self.refusal = reason
        return self._flush()

    def trouble(self, reason: str, now: float) -> Step:
        """The shell failed at something (a damaged ledger, a bug): pause sending."""
        wait = self._back_off(reason, now)
        return Step(self._flush(), wait)

    def tick(self, now: float, wall: float, *, looked: bool = False) -> Step:
        """Time passed: resend what is overdue and send what may be sent now.

        ``looked`` means the shell has just read new ledger entries into the
        outbox: the retained checkpoint is published if it grew. An error the
        station raises (ForkError: it refuses to sign) pauses every upload.
        """
        self._now, self._wall = now, wall
        try:
            wait = self._tick(now, wall, looked=looked)
        except EvidockError as e:
            log.error("upload: %s", e)
            wait = self._back_off(str(e), now)
        return Step(self._flush(), wait)

    # -- helpers ----------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _flush(self) -> Actions:
        out, self._out = tuple(self._out), []
        return out

    def _back_off(self, reason: str, now: float) -> float:
        """Pause sending; the pause doubles (up to a minute) with each refusal that
        comes after the last pause ended, so a whole window refused at once counts once."""
        self.refusal = reason
        if now < self._blocked_until:
            wait = self._blocked_until - now
        else:
            wait = self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            self._blocked_until = now + wait
        self._emit(BackOff(wait, reason))
        return wait

    def _ok(self) -> None:
        self._backoff = BACKOFF_MIN_S
        self.refusal = None

    def _drop(self, key: Key) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None and pending.mid is not None:
            self._by_mid.pop(pending.mid, None)

    def _forget(self, sha256: str) -> None:
        for key in [k for k in self._pending if k.file_id == sha256]:
            self._drop(key)
        if self._current is not None and self._current.sha256 == sha256:
            self._current = None

    def _for_current(self, sha256: str) -> _Current | None:
        current = self._current
        return current if current is not None and current.sha256 == sha256 else None

    def _again(self, pending: _Pending) -> None:
        """A command went nowhere or its result never came: arrange to send it again."""
        key = pending.key
        current = self._for_current(key.file_id)
        if current is None:
            return  # another file's (preempted, or a fin after a receipt timeout): later
        if key.kind == "segment":
            current.resend.append((key.offset, pending.length))
        elif key.kind == "init":
            current.phase = "init"
        elif key.kind == "fin":
            current.phase = "send"  # finds nothing missing, then sends fin again

    def _set_held(self, size: int) -> None:
        if size != self.held_size:
            self.held_size = size
            self._emit(SaveHeld(size))

    def _publish(
        self, key: Key, topic: str, payload: bytes, now: float, *, length: int = 0
    ) -> None:
        """Publish one command (QoS 1); it is pending until ``unsent`` says otherwise."""
        if key.kind == "checkpoint":
            action = Publish(key, topic, payload, retain=True)
        else:
            offset = key.offset if key.kind == "segment" else None
            correlation = protocol.correlation(key.file_id, key.kind, offset)
            action = Publish(key, topic, payload, self.topics.results, correlation)
        self._drop(key)
        self._pending[key] = _Pending(key, length, now + self.settings.result_timeout_s)
        self._emit(action)

    # -- results ----------------------------------------------------------------

    def _late_result(self, key: Key, result: Result) -> None:
        """A result for nothing pending. A fin result delivered late (the persistent
        session kept it) still means the platform assembled the file."""
        if key.kind != "fin" or not result.ok:
            return
        brief = self.outbox.brief(key.file_id)
        if brief is None or brief[0] not in (QUEUED, INITIALISED, FINISHED):
            return
        self._emit(MarkFinished(key.file_id))
        log.info("%s assembled by the platform (late result)", key.file_id[:12])
        if self._for_current(key.file_id) is not None:
            self._current = None

    def _common_failure(self, pending: _Pending, result: Result, now: float) -> bool:
        """Cancel, restart and quota mean the same for every command. True if handled."""
        key = pending.key
        sha, current = key.file_id, self._for_current(key.file_id)
        what = f"{result.reason_description or 'no reason given'} (0x{result.reason_code:02x})"
        if result.reason_code == RC_CANCEL:
            if key.kind == "segment" and sha not in self._aborted:
                # The receiver holds bytes there that we no longer know of (a segment
                # size changed across a crash): abort and start afresh, once.
                log.warning("platform refused a segment of %s: %s; starting it afresh", sha, what)
                self._aborted.add(sha)
                self._emit(Reset(sha))
                self._forget(sha)
                self._publish(Key(sha, "abort"), self.topics.abort(sha), b"", now)
                if current is not None:
                    self._current = _Current(current.transfer)
                return True
            log.error("platform cancelled the upload of %s: %s", sha, what)
            self._emit(MarkFailed(sha, f"platform cancelled: {what}"))
            self._forget(sha)
            return True
        if result.reason_code == RC_RESTART:
            log.warning("platform asks to restart %s: %s", sha[:12], what)
            self._emit(Reset(sha))
            self._forget(sha)
            if current is not None:
                self._current = _Current(current.transfer)
            if key.kind == "init":
                self._back_off(f"platform asks to restart: {what}", now)  # not in a tight loop
            return True
        if result.reason_code == RC_QUOTA:
            log.warning("platform quota reached for %s: %s; pausing", sha[:12], what)
            self._emit(NoteError(sha, f"platform quota: {what}"))
            self._back_off(f"platform quota: {what}", now)
            self._again(pending)
            return True
        return False

    def _emqx_refusal(self, pending: _Pending, result: Result, now: float) -> None:
        """An error result from a stock EMQX: its ``reason_description`` says whether to
        give up (fail the transfer with the reason), send the file again from its first
        byte, or send the command again after a pause (protocol.emqx_refusal)."""
        key = pending.key
        sha, current = key.file_id, self._for_current(key.file_id)
        reason = result.reason_description or "no reason given"
        verdict = protocol.emqx_refusal(key.kind, reason)
        if verdict == protocol.PERMANENT:
            error = f"refused by the platform (EMQX) at {key.kind}: {reason}"
            hint = PERMANENT_HINTS.get(reason)
            log.error("not uploading %s: %s%s", sha, error, f"; {hint}" if hint else "")
            self._emit(MarkFailed(sha, f"{error}; {hint}" if hint else error))
            self._forget(sha)
            return
        if verdict == protocol.RESTART:
            self._resend_whole(sha, current, reason)
            return
        what = f"{key.kind} refused by the platform (EMQX): {reason}"
        log.warning("%s of %s; sending it again after a pause", what, sha[:12])
        self._emit(NoteError(sha, what))
        self._again(pending)
        self._back_off(what, now)

    def _resend_whole(self, sha: str, current: _Current | None, reason: str) -> None:
        """The platform could not assemble the file: send it all again, a few times;
        then fail it (the stored copy itself may be damaged)."""
        self._fin_retries[sha] = tries = self._fin_retries.get(sha, 0) + 1
        if tries > MAX_FIN_RETRIES:
            error = (
                f"the platform could not assemble the digest after {tries} full sends "
                f"({reason}); run `evidock ledger verify`"
            )
            log.error("%s: %s", sha, error)
            self._emit(MarkFailed(sha, error))
            self._forget(sha)
            return
        log.warning("platform refused fin of %s (%s); sending it all again", sha[:12], reason)
        self._emit(Reset(sha))
        self._forget(sha)
        if current is not None:
            self._current = _Current(current.transfer)

    def _init_result(self, pending: _Pending, result: Result, now: float) -> None:
        sha = pending.key.file_id
        current = self._for_current(sha)
        if result.held_size is not None:
            self._set_held(result.held_size)
        if result.ok:
            self._emit(MarkInitialised(sha))
            self._ok()
            if current is not None and current.phase == "init-wait":
                current.phase, current.cursor = "send", 0
            return
        if self._common_failure(pending, result, now) or current is None:
            return
        what = f"{result.reason_description} (0x{result.reason_code:02x})"
        current.phase = "init"
        current.init_retries += 1
        if result.reason_code == RC_RETRY and protocol.asks_newer_proof(result.reason_description):
            # The receiver wants provenance from the size it holds now: the one case
            # (besides a retry) where the frozen init is built afresh.
            self._emit(ThawInit(sha))
        if result.reason_code == RC_RETRY and current.init_retries <= MAX_INIT_RETRIES:
            log.info("init of %s refused (%s); sending it again", sha[:12], what)
            return
        log.warning("init of %s refused: %s", sha[:12], what)
        self._emit(NoteError(sha, f"init refused: {what}"))
        current.init_retries = 0
        self._back_off(f"init refused: {what}", now)

    def _segment_result(self, pending: _Pending, result: Result, now: float) -> None:
        key = pending.key
        if result.ok:
            self._emit(ConfirmSegment(key.file_id, key.offset, pending.length))
            current = self._for_current(key.file_id)
            if current is not None:
                current.confirmed += pending.length
            return
        if self._common_failure(pending, result, now):
            return
        log.info(
            "segment %s@%d refused (0x%02x %s); sending it again",
            key.file_id[:12],
            key.offset,
            result.reason_code,
            result.reason_description,
        )
        self._again(pending)

    def _fin_result(self, pending: _Pending, result: Result, now: float) -> None:
        sha = pending.key.file_id
        current = self._for_current(sha)
        if result.ok:
            self._emit(MarkFinished(sha))
            self._ok()
            log.info("%s assembled and checked by the platform; awaiting its receipt", sha[:12])
            if current is not None:
                self._current = None
            return
        if result.reason_code == RC_RETRY:
            # EIP-0021: fin refused means the assembled file was wrong: resend all.
            # Sent whole and still not the digest, the stored copy itself may be
            # damaged: never retried alone; the operator runs `ledger verify`.
            self._resend_whole(sha, current, result.reason_description)
            return
        if self._common_failure(pending, result, now):
            return
        self._again(pending)
        self._back_off(f"fin refused: 0x{result.reason_code:02x} {result.reason_description}", now)

    # -- sending ----------------------------------------------------------------

    def _tick(self, now: float, wall: float, *, looked: bool) -> float:
        if looked and self.connected:
            self._publish_checkpoint(now)
        if not self.connected:
            return IDLE_S
        waits = [IDLE_S]
        for key, pending in list(self._pending.items()):
            if pending.deadline <= now:
                log.info(
                    "no result for %s of %s (%d); sending it again",
                    key.kind,
                    key.file_id[:12],
                    key.offset,
                )
                self._drop(key)
                self._again(pending)
            else:
                waits.append(pending.deadline - now)
        if now < self._blocked_until:
            return min([*waits, self._blocked_until - now])
        if self.settings.emqx:
            self._mirror(now)
        self._resend_fins(now, wall)
        waits.append(self._advance(now))
        return max(0.0, min(waits))

    def _publish_checkpoint(self, now: float) -> None:
        """Retain the latest signed checkpoint for the platform and witnesses (step 10)."""
        latest = self.station.latest_checkpoint()
        if latest is None:
            return
        size = latest.checkpoint.size
        if size <= self.published_size and not self._republish:
            return
        if any(k.kind == "checkpoint" for k in self._pending):
            return
        self._publish(
            Key("", "checkpoint", size), self.topics.checkpoint, latest.note.encode(), now
        )

    def _mirror(self, now: float) -> None:
        """The ledger mirror (EMQX kind): send the platform the entries from the size it
        holds (the retained note on the held topic) up to the latest checkpoint, one
        batch at a time; the next goes once the held size moves, the same again when
        it does not move within ``result_timeout_s`` (its pending deadline)."""
        if any(k.kind == "mirror" for k in self._pending):
            return
        latest = self.station.latest_checkpoint()
        if latest is None:
            return
        held, size = self.held_size, latest.checkpoint.size
        if held >= size:
            if held > size and not self._mirror_ahead:
                self._mirror_ahead = True
                log.error(
                    "the platform holds %d entries of this ledger but its newest checkpoint "
                    "is of size %d: run `evidock ledger verify`",
                    held,
                    size,
                )
            return
        self._mirror_ahead = False
        end = self.station.mirror_end(held)
        if end is None or end <= held:
            return
        key = Key("", "mirror", held)
        self._pending[key] = _Pending(key, end - held, now + self.settings.result_timeout_s)
        self._emit(PublishMirror(key, held, end))

    def _resend_fins(self, now: float, wall: float) -> None:
        """Files the platform assembled whose receipt has not come: ask again (the
        receiver publishes the receipt again for a file it already holds).

        A stock EMQX answers a repeated fin itself and never tells the receipt
        service, so there the dock also sends the mirror's last batch again (the
        entry before the held size, with the held checkpoint): the service answers
        every mirror message with the receipts the mirrored ledger does not record
        yet (receiver.receipts ``_owed``). It is not awaited: the fin is."""
        older = wall - self.settings.receipt_timeout_s
        asked = False
        for transfer in self.outbox.awaiting_receipt(older, FIN_RESENDS_PER_STEP):
            key = Key(transfer.sha256, "fin")
            if key in self._pending:
                continue
            log.info("no receipt yet for %s; sending fin again", transfer.sha256[:12])
            topic = self.topics.fin(transfer.sha256, transfer.size, transfer.sha256)
            self._publish(key, topic, b"", now)
            asked = True
        latest = self.station.latest_checkpoint()
        held = self.held_size
        # Only a batch this ledger has signed: a platform ahead of it (a ledger restored
        # from a backup) is _mirror's to report, not something to ask again with.
        if asked and self.settings.emqx and 0 < held <= (latest.checkpoint.size if latest else 0):
            self._emit(PublishMirror(Key("", "mirror", held - 1), held - 1, held))

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
        return self._current

    def _advance(self, now: float) -> float:
        current = self._pick()
        if current is None:
            return float("inf")
        if current.phase == "init":
            return self._send_init(current, now)
        if current.phase == "send":
            return self._send_segments(current, now)
        return float("inf")  # init-wait, fin-wait: the pending result's deadline wakes us

    def init_payload(self, transfer: Transfer, provenance: Provenance) -> bytes:
        """The ``init`` command's JSON (EMQX "Init Command", protocol.FileMeta)."""
        meta = FileMeta(
            name=protocol.safe_name(transfer.name),
            size=transfer.size,
            checksum=transfer.sha256,
            expire_at=0,  # evidence does not expire on the platform by the dock's say-so
            segments_ttl=self.settings.segments_ttl_s,
            user_data=provenance.to_json(),
        )
        return meta.to_json()

    def emqx_init_payload(self, transfer: Transfer) -> bytes:
        """The EMQX kind's init: the filemeta with the tiny ``user_data``
        (protocol.emqx_user_data), the same bytes for the same transfer and settings."""
        meta = FileMeta(
            name=protocol.safe_name(transfer.name),
            size=transfer.size,
            checksum=transfer.sha256,
            expire_at=0,
            segments_ttl=self.settings.segments_ttl_s,
            user_data=protocol.emqx_user_data(self.topics.station, transfer.seq),
        )
        return meta.to_json()

    def _build_init(self, transfer: Transfer) -> bytes | None:
        """A new init payload for ``transfer``, or None after failing it (MarkFailed)."""
        if self.settings.emqx:
            payload = self.emqx_init_payload(transfer)
        else:
            try:
                provenance = self.station.provenance(transfer, self.held_size)
            except ForkError:
                raise  # the station refuses to sign: every upload stops, tick backs off
            except InputError as e:
                log.error("not uploading %s: %s", transfer.sha256, e)
                self._emit(MarkFailed(transfer.sha256, str(e)))
                self._forget(transfer.sha256)
                return None
            payload = self.init_payload(transfer, provenance)
        if len(payload) > protocol.MAX_META_BYTES:
            self._emit(MarkFailed(transfer.sha256, f"init metadata is {len(payload)} bytes"))
            self._current = None
            return None
        return payload

    def _send_init(self, current: _Current, now: float) -> float:
        """Send the transfer's init: the frozen bytes if it has them, else new ones,
        frozen (durably, by the shell carrying out ``FreezeInit``) before they go."""
        transfer = current.transfer
        payload = self.outbox.frozen_init(transfer.sha256)
        if payload is None:
            payload = self._build_init(transfer)
            if payload is None:
                return 0.0
            self._emit(FreezeInit(transfer.sha256, payload))
        self._publish(Key(transfer.sha256, "init"), self.topics.init(transfer.sha256), payload, now)
        current.phase = "init-wait"
        return float("inf")

    def _next_range(self, current: _Current) -> tuple[int, int] | None:
        sha, size = current.sha256, current.transfer.size
        while current.resend:
            offset, length = current.resend.popleft()
            if Key(sha, "segment", offset) not in self._pending:
                return offset, length
        while True:
            gap = self.outbox.next_gap(sha, current.cursor, size, self.segment_bytes)
            if gap is None:
                return None
            current.cursor = gap[0] + gap[1]
            if Key(sha, "segment", gap[0]) not in self._pending:
                return gap

    def _send_segments(self, current: _Current, now: float) -> float:
        transfer = current.transfer
        while True:
            segments, unacked = self.in_flight()
            if segments >= self.settings.window_segments or unacked >= UNACKED_SEGMENTS:
                return float("inf")
            if self._current is not current or self._pick() is not current:
                return 0.0  # a higher class took over
            span = self._next_range(current)
            if span is None:
                if any(k.file_id == transfer.sha256 for k in self._pending):
                    return float("inf")  # results outstanding
                if self.outbox.next_gap(transfer.sha256, 0, transfer.size, self.segment_bytes):
                    current.cursor = 0  # a range given up on earlier: go round again
                    continue
                topic = self.topics.fin(transfer.sha256, transfer.size, transfer.sha256)
                self._publish(Key(transfer.sha256, "fin"), topic, b"", now)
                current.phase = "fin-wait"
                return float("inf")
            offset, length = span
            wait = self.throttle.try_take(length)
            if wait > 0:
                current.resend.appendleft(span)  # the same range once the cap allows
                return wait
            try:
                payload, digest = self.station.segment(transfer, offset, length)
            except InputError as e:
                # The stored copy is not what the ledger says: never retried on its
                # own; `evidock ledger verify` tells the operator what happened.
                log.error("not uploading %s: %s", transfer.sha256, e)
                self._emit(MarkFailed(transfer.sha256, str(e)))
                self._forget(transfer.sha256)
                return 0.0
            topic = self.topics.segment(transfer.sha256, offset, digest)
            self._publish(
                Key(transfer.sha256, "segment", offset), topic, payload, now, length=length
            )
