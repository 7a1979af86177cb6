"""The transfer state machine (uploader.transfer), driven with plain values.

No paho, no thread, no clock, no disk: the outbox and the station are
in-memory fakes of ``OutboxReads`` and ``StationReads`` that apply the
machine's actions the way uploader.outbox does; the broker is a queue of
messages (paho's, with its resend on reconnect) and the platform a small model
of the receiver (results, receipts, assembly by digest). hypothesis chooses
the faults: lost and duplicated results, error PUBACKs, PUBACK 0x10 (nobody
listening), refusals, disconnects with or without the session, paho's queue
full, forged receipts, time passing, a file re-tagged. Whatever happens, every
action must keep the rules (a fin only after every byte is confirmed, the two
windows, an error PUBACK is never success, a receipt is recorded only when
verified, nothing confirmed is sent again), and once the faults stop every
file must end byte-exact at the platform and receipted.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hashing.checkpoint import Checkpoint, SignedCheckpoint
from hashing.errors import ConfigError, ForkError, InputError
from hashing.note import NoteSigner
from uploader import protocol
from uploader.outbox import FAILED, FINISHED, INITIALISED, QUEUED, RECEIPTED, SENDABLE, Transfer
from uploader.protocol import (
    RC_CANCEL,
    RC_QUOTA,
    RC_RESTART,
    RC_RETRY,
    RC_SUCCESS,
    FileMeta,
    Provenance,
    Receipt,
    Result,
    Topics,
)
from uploader.throttle import Bandwidth
from uploader.transfer import (
    MAX_FIN_RETRIES,
    MAX_INIT_RETRIES,
    PACKET_OVERHEAD,
    UNACKED_SEGMENTS,
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
    ReceiptCheck,
    RecordReceipt,
    Reset,
    SaveHeld,
    ThawInit,
    TransferMachine,
    UploadSettings,
    check_receipt,
)

STATION = "dock-01"
ORIGIN = "dock-01.evidock.invalid/ledger"
SEGMENT = 1024
WINDOW = 3
TIMEOUT = 5.0
EPOCH = 1_700_000_000.0  # wall clock = EPOCH + the events' ``now``

TOPICS = Topics(STATION)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- fakes of the machine's reads ----------------------------------------------------


@dataclass
class Row:
    seq: int
    size: int
    name: str
    priority: int
    state: str = QUEUED
    finished_at: float | None = None
    attempts: int = 0
    last_error: str | None = None
    segments: dict[int, int] = field(default_factory=dict)  # offset -> length
    init: bytes | None = None  # the frozen init payload


class FakeOutbox:
    """OutboxReads over dicts; ``apply`` carries out an action as uploader.outbox does."""

    def __init__(self, wall: Any) -> None:
        self.rows: dict[str, Row] = {}
        self.meta: dict[str, str] = {}
        self.wall = wall

    def add(self, data: bytes, priority: int = 2) -> str:
        file_id = sha(data)
        self.rows.setdefault(
            file_id, Row(len(self.rows) + 1, len(data), f"CLIP{len(self.rows):04d}.MP4", priority)
        )
        return file_id

    # OutboxReads

    def brief(self, sha256: str) -> tuple[str, int] | None:
        row = self.rows.get(sha256)
        return None if row is None else (row.state, row.priority)

    def peek_next(self) -> tuple[str, int] | None:
        ready = [(r.priority, r.seq, s) for s, r in self.rows.items() if r.state in SENDABLE]
        if not ready:
            return None
        priority, _, file_id = min(ready)
        return file_id, priority

    def get(self, sha256: str) -> Transfer | None:
        r = self.rows.get(sha256)
        if r is None:
            return None
        return Transfer(
            sha256, r.seq, r.size, r.name, f"2024-01-01T00:00:{r.seq:02d}Z", r.priority,
            r.state, 0.0, 0.0, r.finished_at, None, r.attempts, r.last_error,
            sum(r.segments.values()),
        )  # fmt: skip

    def next_gap(self, sha256: str, pos: int, size: int, segment: int) -> tuple[int, int] | None:
        spans = sorted(self.rows[sha256].segments.items())
        while pos < size:
            after = next(((o, n) for o, n in spans if o + n > pos), None)
            if after is None:
                return pos, min(segment, size - pos)
            offset, length = after
            if offset <= pos:
                pos = offset + length
                continue
            return pos, min(segment, offset - pos, size - pos)
        return None

    def awaiting_receipt(self, older_than: float, limit: int) -> list[Transfer]:
        due = sorted(
            (r.finished_at, s)
            for s, r in self.rows.items()
            if r.state == FINISHED and r.finished_at is not None and r.finished_at < older_than
        )
        return [t for _, s in due[:limit] if (t := self.get(s)) is not None]

    def frozen_init(self, sha256: str) -> bytes | None:
        return self.rows[sha256].init

    # the writes

    def apply(self, action: Action) -> None:
        match action:
            case MarkInitialised(sha256=s) if self.rows[s].state in SENDABLE:
                self.rows[s].state = INITIALISED
                self.rows[s].attempts += 1
            case ConfirmSegment(sha256=s, offset=o, length=n) if self.rows[s].state in SENDABLE:
                self.rows[s].segments.setdefault(o, n)
            case MarkFinished(sha256=s) if self.rows[s].state in (QUEUED, INITIALISED, FINISHED):
                self.rows[s].state, self.rows[s].finished_at = FINISHED, self.wall()
                self.rows[s].last_error = None
            case MarkFailed(sha256=s, error=e) if self.rows[s].state in (
                QUEUED,
                INITIALISED,
                FINISHED,
            ):
                self.rows[s].state, self.rows[s].last_error = FAILED, e
            case NoteError(sha256=s, error=e):
                self.rows[s].last_error = e
            case Reset(sha256=s):
                if self.rows[s].state in (QUEUED, INITIALISED, FINISHED):
                    self.rows[s].state, self.rows[s].finished_at = QUEUED, None
                self.rows[s].segments.clear()
            case RecordReceipt(sha256=s):
                self.rows[s].state = RECEIPTED
                self.rows[s].segments.clear()
            case FreezeInit(sha256=s, payload=p) if self.rows[s].init is None:
                self.rows[s].init = p
            case ThawInit(sha256=s):
                self.rows[s].init = None
            case SaveHeld(size=n):
                self.meta["held_size"] = str(n)
            case CheckpointPublished(size=n):
                self.meta["published_checkpoint"] = str(n)
            case _:
                pass

    def retry(self, sha256: str) -> None:
        row = self.rows[sha256]
        row.state, row.finished_at, row.last_error = QUEUED, None, None
        row.segments.clear()
        row.init = None


class FakeStation:
    """StationReads over bytes in memory; ``stored`` may differ from what was ingested
    (a damaged copy), ``fork`` makes the station refuse to sign."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.checkpoint_size = 1
        self.fork = False
        self.reads = 0

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        size = self.checkpoint_size
        return SignedCheckpoint(Checkpoint(ORIGIN, size, bytes(32)), f"checkpoint {size}\n")

    def provenance(self, transfer: Transfer, held: int) -> Provenance:
        if self.fork:
            raise ForkError("the ledger does not extend its last checkpoint")
        if transfer.sha256 not in self.stored:
            raise InputError(f"entry {transfer.seq} is not the ingest of {transfer.sha256}")
        entry = f'{{"seq":{transfer.seq}}}'.encode()
        note = f"checkpoint {self.checkpoint_size}\n"
        return Provenance(STATION, entry, (), note, held, ())

    def mirror_end(self, start: int) -> int | None:
        """Every size is signed here: at most MIRROR_MAX_ENTRIES at a time."""
        size = self.checkpoint_size
        return None if size <= start else min(size, start + protocol.MIRROR_MAX_ENTRIES)

    def segment(self, transfer: Transfer, offset: int, length: int) -> tuple[bytes, str]:
        self.reads += 1
        data = self.stored[transfer.sha256][offset : offset + length]
        if len(data) != length:
            raise InputError("the stored copy is shorter than its ledger size")
        return data, sha(data)


# -- the platform and the broker ---------------------------------------------------------


@dataclass
class Answer:
    """What comes back to the dock through the broker: a result or a receipt."""

    key: Key
    result: Result | None = None
    receipt: str | None = None  # the file a (verified) receipt is for


class Platform:
    """A model of evidock's receiver: it answers each command as receiver.service does,
    and assembles a file from its segments only when the whole digest matches."""

    def __init__(self, outbox: FakeOutbox) -> None:
        self.outbox = outbox
        self.open: dict[str, dict[int, bytes]] = {}
        self.files: dict[str, bytes] = {}
        self.held = 0
        self.commands: list[Key] = []
        self.refuse_next_init: str | None = None  # RC_RETRY with this text, once

    def handle(self, msg: Publish) -> list[Answer]:
        key = msg.key
        self.commands.append(key)
        if key.kind == "checkpoint":
            return []
        cmd = protocol.parse_command(msg.topic, TOPICS.prefix_template)
        assert cmd.file_id == key.file_id
        assert msg.response_topic == TOPICS.results
        assert msg.correlation == protocol.correlation(
            key.file_id, key.kind, key.offset if key.kind == "segment" else None
        )
        held = self.held if key.kind == "init" else None
        if key.kind == "init" and self.refuse_next_init is not None:
            text, self.refuse_next_init = self.refuse_next_init, None
            return [Answer(key, Result(msg.topic, 0, RC_RETRY, text, held))]
        code, receipt = self._command(cmd, msg.payload)
        out = [Answer(key, Result(msg.topic, 0, code, f"model 0x{code:02x}", held))]
        if receipt:
            out.append(Answer(key, receipt=key.file_id))
        return out

    def _command(self, cmd: protocol.Command, payload: bytes) -> tuple[int, bool]:
        file_id = cmd.file_id
        size = self.outbox.rows[file_id].size
        if cmd.kind == "init":
            meta = FileMeta.from_json(payload)
            assert meta.checksum == file_id and meta.size == size
            Provenance.from_json(meta.user_data)
            if file_id in self.files:
                return RC_SUCCESS, True
            self.open.setdefault(file_id, {})
            return RC_SUCCESS, False
        if cmd.kind == "abort":
            self.open.pop(file_id, None)
            return RC_SUCCESS, False
        if cmd.kind == "segment":
            assert cmd.offset is not None
            if file_id not in self.open:
                return RC_RESTART, False
            if cmd.checksum != sha(payload):
                return RC_RETRY, False
            self.open[file_id][cmd.offset] = payload
            return RC_SUCCESS, False
        assert cmd.kind == "fin" and cmd.size == size
        if file_id in self.files:
            return RC_SUCCESS, True
        if file_id not in self.open:
            return RC_RESTART, False
        data = bytearray()
        for offset, chunk in sorted(self.open[file_id].items()):
            data[offset : offset + len(chunk)] = chunk
        if sha(bytes(data)) != file_id or len(data) != size:
            self.open[file_id].clear()
            return RC_RETRY, False
        self.files[file_id] = bytes(data)
        del self.open[file_id]
        return RC_SUCCESS, True


@dataclass
class Queued:
    mid: int
    action: Publish


class Dock:
    """The machine with its fakes and the network, stepped by hand. Every batch of
    actions is checked against the rules before it is carried out."""

    def __init__(
        self,
        files: list[bytes],
        *,
        window: int = WINDOW,
        max_queued: int = WINDOW + 12,
        bandwidth: Bandwidth | None = None,
        max_packet: int | None = None,
        segment: int = SEGMENT,
    ) -> None:
        self.now = 1_000.0
        self.outbox = FakeOutbox(lambda: EPOCH + self.now)
        self.station = FakeStation()
        for data in files:
            self.station.stored[self.outbox.add(data)] = data
        self.sources = {sha(d): d for d in files}
        self.platform = Platform(self.outbox)
        self.settings = UploadSettings(
            segment_bytes=segment,
            window_segments=window,
            result_timeout_s=TIMEOUT,
            receipt_timeout_s=3 * TIMEOUT,
            bandwidth=bandwidth or Bandwidth(),
        )
        self.machine = TransferMachine(
            self.settings, TOPICS, self.outbox, self.station, origin=ORIGIN
        )
        self.max_queued = max_queued
        self.max_packet = max_packet
        self.wire: deque[Queued] = deque()  # paho's queue: sent, no PUBACK yet
        self.answers: deque[Answer] = deque()  # at the broker, for the dock's session
        self.next_mid = 1
        self.listening = True
        self.actions: list[tuple[tuple[Any, ...], Action]] = []
        self.accepted: list[Key] = []  # what paho queued, in order
        self.live_mid: dict[Key, int] = {}  # the packet id each key was last queued as
        self.recorded: Counter[str] = Counter()
        self.link_up(session_present=False)

    # -- feeding the machine ---------------------------------------------------

    def feed(self, event: tuple[Any, ...], actions: tuple[Action, ...]) -> tuple[Action, ...]:
        unsent: list[Key] = []
        for action in actions:
            self.check(event, action)
            self.actions.append((event, action))
            if isinstance(action, Publish):
                if len(self.wire) >= self.max_queued:
                    unsent.append(action.key)
                    continue
                mid, self.next_mid = self.next_mid, self.next_mid % 65535 + 1
                self.wire.append(Queued(mid, action))
                self.accepted.append(action.key)
                self.live_mid[action.key] = mid
                self.feed(("queued", action.key), self.machine.queued(action.key, mid))
            elif isinstance(action, RecordReceipt):
                self.recorded[action.sha256] += 1
            self.outbox.apply(action)
        if unsent:
            self.feed(("unsent",), self.machine.unsent(tuple(unsent), self.now))
        segments, unacked = self.machine.in_flight()
        assert segments <= self.settings.window_segments, "more segments than the window"
        assert unacked <= UNACKED_SEGMENTS, "more segments without a PUBACK than allowed"
        return actions

    def check(self, event: tuple[Any, ...], action: Action) -> None:
        """The rules every action keeps, whatever happened before."""
        kind = event[0]
        match action:
            case Publish(key=Key(kind="segment", file_id=file_id, offset=offset)):
                row = self.outbox.rows[file_id]
                cmd = protocol.parse_command(action.topic, TOPICS.prefix_template)
                assert cmd.checksum == sha(action.payload)
                assert 0 < len(action.payload) <= self.machine.segment_bytes
                assert row.state in SENDABLE
                end = offset + len(action.payload)
                assert not any(o < end and offset < o + n for o, n in row.segments.items()), (
                    "a confirmed range was sent again"
                )
            case Publish(key=Key(kind="fin", file_id=file_id)):
                size = self.outbox.rows[file_id].size
                assert self.outbox.next_gap(file_id, 0, size, size + 1) is None, (
                    "fin before every byte was confirmed"
                )
            case ConfirmSegment(sha256=s, offset=o):
                assert kind == "result" and event[1] == Key(s, "segment", o) and event[2].ok
            case MarkInitialised(sha256=s):
                assert kind == "result" and event[1] == Key(s, "init") and event[2].ok
            case MarkFinished(sha256=s):
                assert kind == "result" and event[1] == Key(s, "fin") and event[2].ok
            case RecordReceipt(sha256=s, body=body):
                assert kind == "receipt", "a receipt recorded without one"
                check: ReceiptCheck = event[1]
                assert check.verified and check.sha256 == s and check.body == body
            case CheckpointPublished(size=n):
                assert kind == "puback" and event[1] == Key("", "checkpoint", n)
                assert event[2] < 0x80, "an error PUBACK counted as success"
            case _:
                pass

    # -- what happens ------------------------------------------------------------

    @property
    def wall(self) -> float:
        return EPOCH + self.now

    def link_up(self, *, session_present: bool) -> None:
        self.feed(("link_up",), self.machine.link_up(session_present, self.max_packet, self.now))

    def tick(self) -> float:
        step = self.machine.tick(self.now, self.wall, looked=True)
        self.feed(("tick",), step.actions)
        return step.wait_s

    def puback(self, queued: Queued, code: int) -> tuple[Action, ...]:
        key = queued.action.key
        # A PUBACK for a message the machine has since sent again (a timeout) is stale.
        live = key in self.machine.pending() and self.live_mid.get(key) == queued.mid
        event = ("puback", key, code)
        actions = self.feed(event, self.machine.puback(queued.mid, code, "model", self.now))
        if not live:
            assert actions == (), "a stale PUBACK was taken for the live one"
        elif code >= 0x80 or (code == 0x10 and key.kind != "checkpoint"):
            assert queued.action.key not in self.machine.pending(), "an error PUBACK was success"
            assert any(isinstance(a, BackOff) for a in actions)
        return actions

    def deliver(
        self,
        code: int = 0,
        *,
        lose: bool = False,
        twice: bool = False,
        refuse: int = 0,
        text: str = "refused",
    ) -> None:
        """The oldest queued message reaches the broker, PUBACK ``code``; if delivered,
        the platform handles it; its answers wait for the dock (or are lost, or come
        twice, or are replaced by the refusal ``refuse``)."""
        queued = self.wire.popleft()
        kind = queued.action.key.kind
        if code == 0 and not self.listening and kind != "checkpoint":
            code = 0x10
        self.puback(queued, code)
        if code >= 0x80 or (code == 0x10 and kind != "checkpoint"):
            return
        answers = self.platform.handle(queued.action)
        if refuse and answers and answers[0].result is not None:
            r = answers[0].result
            answers = [Answer(answers[0].key, Result(r.topic, 0, refuse, text, r.held_size))]
        if not lose:
            self.answers.extend(answers * (2 if twice else 1))

    def answer(self, index: int = 0) -> None:
        """One answer waiting at the broker reaches the dock (``index`` reorders them)."""
        answer = self.answers[index % len(self.answers)]
        self.answers.remove(answer)
        if answer.result is not None:
            event = ("result", answer.key, answer.result)
            self.feed(event, self.machine.result(answer.key, answer.result, self.now))
        elif answer.receipt is not None:
            check = ReceiptCheck(answer.receipt, {"sha256": answer.receipt, "n": 1})
            self.receipt(check)

    def receipt(self, check: ReceiptCheck) -> None:
        self.feed(("receipt", check), self.machine.receipt(check))

    def reconnect(self, *, session_present: bool) -> None:
        """The link drops and comes back; paho resends what was never acknowledged.
        A broker that lost the session lost what waited there for the dock."""
        self.feed(("link_down",), self.machine.link_down())
        if not session_present:
            self.answers.clear()
        self.link_up(session_present=session_present)

    def run(self, ticks: int = 5_000) -> None:
        """No more faults: step until every file is receipted or failed."""
        for _ in range(ticks):
            if all(r.state in (RECEIPTED, FAILED) for r in self.outbox.rows.values()):
                return
            wait = self.tick()
            if self.wire:
                self.deliver()
            elif self.answers:
                self.answer()
            else:
                self.now += min(max(wait, 0.05), TIMEOUT + 1)
        raise AssertionError(f"not finished: {self.outbox.rows}")

    def check_done(self, failed: Collection[str] = ()) -> None:
        for file_id, data in self.sources.items():
            row = self.outbox.rows[file_id]
            if file_id in failed:
                continue
            assert row.state == RECEIPTED, (file_id, row)
            assert self.platform.files[file_id] == data
            assert self.recorded[file_id] >= 1

    def sent(self, kind: str) -> list[Key]:
        return [a.key for _, a in self.actions if isinstance(a, Publish) and a.key.kind == kind]


# -- the rules under faults --------------------------------------------------------------


def recordings(sizes: list[int]) -> list[bytes]:
    """Distinct contents of the given sizes (at most one empty file)."""
    out = {random.Random(n).randbytes(size) for n, size in enumerate(sizes)}
    return sorted(out, key=sizes_order(sizes))


def sizes_order(sizes: list[int]) -> Any:
    return lambda data: (sizes.index(len(data)), data)


files = st.lists(st.integers(0, 5 * SEGMENT), min_size=1, max_size=4).map(recordings)


class Faults(RuleBasedStateMachine):
    """The dock under every fault the broker, the link and the platform can cause."""

    dock: Dock
    cancelled: set[str]

    @initialize(data=files, max_queued=st.integers(1, WINDOW + 12))
    def start(self, data: list[bytes], max_queued: int) -> None:
        self.dock = Dock(data, max_queued=max_queued)
        self.cancelled = set()

    @rule()
    def tick(self) -> None:
        self.dock.tick()

    @rule()
    def progress(self) -> None:
        """No fault for a while: what is queued is delivered and answered."""
        self.dock.tick()
        while self.dock.wire:
            self.dock.deliver()
        while self.dock.answers:
            self.dock.answer()

    @rule(seconds=st.floats(0.01, TIMEOUT + 1))
    def time_passes(self, seconds: float) -> None:
        self.dock.now += seconds
        self.dock.tick()

    @precondition(lambda self: bool(self.dock.wire))
    @rule(
        code=st.sampled_from([0, 0, 0, 0, 0x10, 0x80, 0x87, 0x97]),
        lose=st.booleans(),
        twice=st.booleans(),
    )
    def deliver(self, code: int, lose: bool, twice: bool) -> None:
        self.dock.deliver(code, lose=lose and code == 0, twice=twice)

    @precondition(lambda self: bool(self.dock.wire))
    @rule(refuse=st.sampled_from([RC_RETRY, RC_QUOTA, RC_RESTART, RC_CANCEL]))
    def refused(self, refuse: int) -> None:
        key = self.dock.wire[0].action.key
        if key.kind == "fin" and refuse != RC_QUOTA:
            refuse = RC_QUOTA  # a refused fin is a full resend, counted: see the examples
        if refuse == RC_CANCEL:
            self.cancelled.add(key.file_id)
        self.dock.deliver(refuse=refuse)

    @precondition(lambda self: bool(self.dock.answers))
    @rule(index=st.integers(0, 20))
    def answer(self, index: int) -> None:
        self.dock.answer(index)

    @rule(session_present=st.booleans())
    def reconnect(self, session_present: bool) -> None:
        self.dock.reconnect(session_present=session_present)

    @rule(listening=st.booleans())
    def receiver_listens(self, listening: bool) -> None:
        self.dock.listening = listening

    @rule(n=st.integers(0, 3))
    def forged_receipt(self, n: int) -> None:
        file_id = sorted(self.dock.sources)[n % len(self.dock.sources)]
        self.dock.receipt(ReceiptCheck(file_id, refusal="refused a receipt: forged"))

    @rule(n=st.integers(0, 3), priority=st.integers(0, 2))
    def retag(self, n: int, priority: int) -> None:
        row = self.dock.outbox.rows[sorted(self.dock.sources)[n % len(self.dock.sources)]]
        row.priority = min(row.priority, priority)

    @rule()
    def ledger_grows(self) -> None:
        self.dock.station.checkpoint_size += 1

    @invariant()
    def unverified_receipts_are_never_recorded(self) -> None:
        if not hasattr(self, "dock"):
            return
        for event, action in self.dock.actions:
            if isinstance(action, RecordReceipt):
                assert event[0] == "receipt" and event[1].verified

    def teardown(self) -> None:
        if not hasattr(self, "dock"):
            return
        self.dock.listening = True
        self.dock.run()
        self.dock.check_done(failed=self.cancelled)


Faults.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_faults_never_break_the_rules = Faults.TestCase


@settings(max_examples=40, deadline=None)
@given(data=files, window=st.integers(1, 12))
def test_without_faults_each_segment_goes_once(data: list[bytes], window: int) -> None:
    dock = Dock(data, window=window, max_queued=100)
    dock.run()
    dock.check_done()
    assert len(dock.sent("segment")) == sum(-(-len(d) // SEGMENT) for d in data)
    assert len(dock.sent("fin")) == len(data)
    order = [a.sha256 for _, a in dock.actions if isinstance(a, RecordReceipt)]
    assert order == [sha(d) for d in data]  # same class: oldest entry first


# -- examples: one decision each ---------------------------------------------------------


OK = Result("t", 0, RC_SUCCESS, "ok")


def until(dock: Dock, kind: str) -> Queued:
    """Step, delivering and answering everything, until a ``kind`` command is next on
    the wire; return it (``dock.wire[0]``)."""
    for _ in range(500):
        dock.tick()
        while dock.wire and dock.wire[0].action.key.kind != kind:
            dock.deliver()
            while dock.answers:
                dock.answer()
        if dock.wire:
            return dock.wire[0]
        while dock.answers:
            dock.answer()
        dock.now += 0.5
    raise AssertionError(f"no {kind} was sent")


def test_an_error_puback_is_never_success_and_the_command_goes_again() -> None:
    """paho's wait_for_publish() is true on an error PUBACK too (design.md): only the
    reason code counts. The segment goes again after the pause, never confirmed on it."""
    dock = Dock([bytes(3000)], max_queued=100)
    q = until(dock, "segment")
    actions = dock.puback(dock.wire.popleft(), 0x80)
    assert [type(a) for a in actions] == [BackOff, NoteError]
    assert actions[0].seconds == 1.0  # type: ignore[union-attr]
    # The pause holds: nothing is sent in it, then the same range goes again.
    sent = len(dock.sent("segment"))
    dock.tick()
    assert len(dock.sent("segment")) == sent
    dock.now += 1.0
    dock.tick()
    assert dock.sent("segment")[sent:] == [q.action.key]


def test_puback_no_subscribers_is_a_refusal_for_commands_not_for_the_checkpoint() -> None:
    dock = Dock([bytes(100)])
    dock.tick()
    checkpoint = dock.wire.popleft()
    assert checkpoint.action.key == Key("", "checkpoint", 1) and checkpoint.action.retain
    assert dock.puback(checkpoint, 0x10) == (CheckpointPublished(1),)
    init = dock.wire.popleft()
    actions = dock.puback(init, 0x10)
    assert isinstance(actions[0], BackOff) and "no receiver is listening" in actions[0].reason
    assert dock.machine.refusal == actions[0].reason


def test_an_error_puback_on_the_checkpoint_publishes_it_again() -> None:
    dock = Dock([bytes(100)])
    dock.tick()
    dock.puback(dock.wire.popleft(), 0x87)
    assert "published_checkpoint" not in dock.outbox.meta
    dock.now += 1.0
    dock.tick()
    assert dock.sent("checkpoint") == [Key("", "checkpoint", 1)] * 2


def test_backoff_doubles_per_pause_and_resets_on_success() -> None:
    dock = Dock([bytes(100)])
    dock.tick()
    dock.deliver()  # the checkpoint
    waits = []
    for _ in range(4):
        until(dock, "init")
        init = dock.wire.popleft()
        waits.append(next(a for a in dock.puback(init, 0x80) if isinstance(a, BackOff)).seconds)
        dock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0]
    until(dock, "init")
    dock.deliver()  # PUBACK 0: the broker took it, the pause starts over
    assert dock.machine._backoff == 1.0


def test_no_result_means_sent_again_after_the_timeout_counted_from_the_puback() -> None:
    dock = Dock([bytes(100)])
    until(dock, "init")
    init = dock.wire.popleft()
    dock.now += TIMEOUT - 1  # a slow link: the PUBACK comes late
    dock.puback(init, 0)
    dock.now += TIMEOUT - 0.5  # past the publish's timeout, not the PUBACK's
    dock.tick()
    assert dock.sent("init") == [init.action.key]
    dock.now += 0.5
    dock.tick()
    assert dock.sent("init") == [init.action.key] * 2


def test_two_windows_a_slow_link_and_a_slow_receiver() -> None:
    """At most UNACKED_SEGMENTS without a PUBACK, at most the window without a result."""
    window = 2 * UNACKED_SEGMENTS
    dock = Dock([bytes(40 * SEGMENT)], window=window, max_queued=100)
    until(dock, "segment")
    assert len(dock.wire) == UNACKED_SEGMENTS == dock.machine.in_flight()[1]
    held: list[Queued] = []
    while dock.wire:
        q = dock.wire.popleft()
        dock.puback(q, 0)
        held.append(q)
        dock.tick()
    assert dock.machine.in_flight() == (window, 0) and len(held) == window
    dock.now += TIMEOUT * 0.5
    dock.tick()
    assert len(dock.sent("segment")) == window  # nothing resent, nothing more sent


def test_segments_fit_the_brokers_maximum_packet_size() -> None:
    max_packet = 2048
    dock = Dock([bytes(10_000)], max_packet=max_packet, max_queued=100, segment=4096)
    room = max_packet - PACKET_OVERHEAD - len(TOPICS.prefix.encode())
    assert dock.machine.segment_bytes == room
    dock.run()
    dock.check_done()
    assert len(dock.sent("segment")) == -(-10_000 // room)
    tiny = Dock([bytes(10)], max_packet=600)
    assert tiny.machine.segment_bytes == 1024  # never below the minimum


def test_session_lost_resends_what_the_broker_had_acknowledged() -> None:
    dock = Dock([bytes(100)])
    until(dock, "init")
    init = dock.wire.popleft()
    dock.puback(init, 0)  # the broker has it; its result is lost with the session
    dock.reconnect(session_present=True)
    dock.tick()
    assert dock.sent("init") == [init.action.key]  # a kept session still brings the result
    dock.reconnect(session_present=False)
    dock.tick()
    assert dock.sent("init") == [init.action.key] * 2
    assert dock.sent("checkpoint") == [Key("", "checkpoint", 1)] * 2  # retained again


def test_paho_queue_full_sends_the_same_ranges_again_in_order() -> None:
    """paho refuses what does not fit its bounded queue: nothing of it went; the
    ranges go again, in their order, once there is room."""
    dock = Dock([bytes(12 * SEGMENT)], window=6, max_queued=3)
    dock.run()
    dock.check_done()
    assert len(dock.sent("segment")) > 12  # some were refused
    queued = [k.offset for k in dock.accepted if k.kind == "segment"]
    assert queued == [n * SEGMENT for n in range(12)]


def test_ranges_dropped_from_the_outbox_meanwhile_go_again_before_fin() -> None:
    """`evidock upload retry` in another process drops the confirmations while the file
    is being sent: before fin the machine looks for gaps again from the start."""
    dock = Dock([bytes(4 * SEGMENT)], max_queued=100)
    file_id = next(iter(dock.sources))
    until(dock, "segment")
    while dock.wire:
        dock.deliver()
    while dock.answers:
        dock.answer()
    assert len(dock.outbox.rows[file_id].segments) == WINDOW
    dock.outbox.retry(file_id)
    dock.run()
    dock.check_done()
    assert len(dock.sent("segment")) == 4 + WINDOW


def test_a_receipt_is_recorded_only_when_verified() -> None:
    dock = Dock([bytes(100)])
    file_id = next(iter(dock.sources))
    dock.receipt(ReceiptCheck(file_id, refusal="refused a receipt that does not verify"))
    assert dock.recorded[file_id] == 0
    body = {"sha256": file_id}
    dock.receipt(ReceiptCheck(file_id, body))
    assert dock.actions[-1][1] == RecordReceipt(file_id, body)
    assert dock.outbox.rows[file_id].state == RECEIPTED


def test_fin_only_after_every_byte_is_confirmed() -> None:
    dock = Dock([bytes(3 * SEGMENT)], max_queued=100)
    until(dock, "segment")
    while dock.wire:
        dock.deliver(lose=dock.wire[0].action.key.offset == SEGMENT)  # one result lost
    while dock.answers:
        dock.answer()
    dock.tick()
    assert dock.sent("fin") == []
    dock.now += TIMEOUT
    dock.run()
    dock.check_done()
    assert dock.sent("segment").count(Key(next(iter(dock.sources)), "segment", SEGMENT)) == 2


def test_a_higher_class_takes_over_at_the_next_segment() -> None:
    first, second = bytes(8 * SEGMENT), b"\x01" * (8 * SEGMENT)
    dock = Dock([first, second], max_queued=100)
    while len(dock.outbox.rows[sha(first)].segments) < 2:
        dock.tick()
        if dock.wire:
            dock.deliver()
        while dock.answers:
            dock.answer()
    dock.outbox.rows[sha(second)].priority = 0
    dock.run()
    order = [a.sha256 for _, a in dock.actions if isinstance(a, RecordReceipt)]
    assert order == [sha(second), sha(first)]
    assert len(dock.sent("segment")) == 16  # the first resumed from its gaps


def test_cancel_fails_the_file_and_nothing_retries_it_until_the_operator_does() -> None:
    dock = Dock([bytes(100)])
    file_id = next(iter(dock.sources))
    until(dock, "init")
    dock.deliver(refuse=RC_CANCEL)
    dock.answer()
    assert dock.outbox.rows[file_id].state == FAILED
    assert "platform cancelled" in str(dock.outbox.rows[file_id].last_error)
    for _ in range(20):
        dock.now += TIMEOUT
        dock.tick()
    assert dock.sent("init") == [Key(file_id, "init")]
    dock.outbox.retry(file_id)
    dock.run()
    dock.check_done()


def test_a_refused_segment_is_aborted_and_started_afresh_once() -> None:
    dock = Dock([bytes(2 * SEGMENT)], max_queued=100)
    file_id = next(iter(dock.sources))
    until(dock, "segment")
    dock.deliver(refuse=RC_CANCEL)
    dock.answer()
    assert dock.sent("abort") == [Key(file_id, "abort")]
    assert any(isinstance(a, Reset) for _, a in dock.actions)
    until(dock, "init")  # the segment still on the wire is answered, and ignored
    until(dock, "segment")
    dock.deliver(refuse=RC_CANCEL)
    dock.answer()
    assert dock.outbox.rows[file_id].state == FAILED  # the second time, given up
    assert dock.sent("abort") == [Key(file_id, "abort")]


def test_quota_pauses_then_resumes() -> None:
    dock = Dock([bytes(100), bytes(200)])
    until(dock, "init")
    dock.deliver(refuse=RC_QUOTA)
    dock.answer()
    assert isinstance(dock.actions[-1][1], BackOff)
    assert "platform quota" in str(dock.outbox.rows[sha(bytes(100))].last_error)
    dock.tick()
    assert len(dock.sent("init")) == 1  # paused
    dock.run()
    dock.check_done()


def test_init_refused_is_resent_a_few_times_then_paused() -> None:
    dock = Dock([bytes(100)])
    for n in range(MAX_INIT_RETRIES + 1):
        until(dock, "init")
        dock.deliver(refuse=RC_RETRY)
        dock.answer()
        paused = any(isinstance(a, BackOff) for _, a in dock.actions)
        assert paused == (n == MAX_INIT_RETRIES)
    dock.run()
    dock.check_done()


def test_restart_starts_the_file_over() -> None:
    dock = Dock([bytes(3 * SEGMENT)], max_queued=100)
    file_id = next(iter(dock.sources))
    until(dock, "segment")
    dock.deliver()
    dock.answer()
    assert dock.outbox.rows[file_id].segments
    dock.deliver(refuse=RC_RESTART)
    dock.answer()
    assert dock.outbox.rows[file_id].segments == {}
    assert dock.outbox.rows[file_id].state == QUEUED
    dock.run()
    dock.check_done()


def test_a_damaged_stored_copy_fails_after_full_resends() -> None:
    """The dock's own copy does not hash to its digest: every assembly is refused;
    after MAX_FIN_RETRIES full resends the file is failed for an operator."""
    damaged, fine = bytes(2500), bytes(700)
    dock = Dock([damaged, fine], max_queued=100)
    copy = bytearray(damaged)
    copy[1234] ^= 1
    dock.station.stored[sha(damaged)] = bytes(copy)
    dock.run()
    row = dock.outbox.rows[sha(damaged)]
    assert row.state == FAILED and "ledger verify" in str(row.last_error)
    assert dock.outbox.rows[sha(fine)].state == RECEIPTED
    assert len(dock.sent("fin")) == MAX_FIN_RETRIES + 1 + 1
    assert sha(damaged) not in dock.platform.files


def test_an_unreadable_or_foreign_file_fails_without_a_send() -> None:
    short, foreign = bytes(3000), bytes(10)
    dock = Dock([short, foreign], max_queued=100)
    dock.station.stored[sha(short)] = bytes(2000)
    del dock.station.stored[sha(foreign)]
    dock.run()
    assert dock.outbox.rows[sha(short)].state == FAILED
    assert dock.outbox.rows[sha(foreign)].state == FAILED
    assert "not the ingest" in str(dock.outbox.rows[sha(foreign)].last_error)
    assert dock.sent("init") == [Key(sha(short), "init")]


def test_a_station_that_refuses_to_sign_pauses_every_upload() -> None:
    dock = Dock([bytes(100)])
    dock.station.fork = True
    step = dock.machine.tick(dock.now, dock.wall, looked=True)
    assert [type(a) for a in step.actions] == [Publish, BackOff]  # the checkpoint still goes
    assert step.wait_s == 1.0
    assert "does not extend" in str(dock.machine.refusal)


def test_receipt_lost_then_fin_again() -> None:
    """No receipt within receipt_timeout_s: fin goes again; the platform answers it
    with the receipt for the file it holds."""
    dock = Dock([bytes(1500)], max_queued=100)
    file_id = next(iter(dock.sources))
    fin = until(dock, "fin")
    while dock.wire[0] is not fin:
        dock.deliver()
    dock.deliver()
    dock.answers = deque(a for a in dock.answers if a.receipt is None)  # the receipt is lost
    while dock.answers:
        dock.answer()
    assert dock.outbox.rows[file_id].state == FINISHED
    dock.now += 3 * TIMEOUT - 1
    dock.tick()
    assert len(dock.sent("fin")) == 1
    dock.now += 2
    dock.run()
    dock.check_done()
    assert len(dock.sent("fin")) == 2


def test_a_late_fin_result_still_finishes_the_file() -> None:
    """The shell restarted after sending fin; the persistent session delivers its
    result while the file is being sent again: the platform has it, stop."""
    dock = Dock([bytes(100)], max_queued=100)
    file_id = next(iter(dock.sources))
    until(dock, "fin")
    dock.feed(("start",), dock.machine.start())
    dock.link_up(session_present=True)
    dock.tick()
    progress = dock.machine.progress()
    assert progress is not None and progress.phase == "init-wait"
    key = Key(file_id, "fin")
    assert dock.feed(("result", key, OK), dock.machine.result(key, OK, dock.now)) == (
        MarkFinished(file_id),
    )
    assert dock.machine.progress() is None
    dock.receipt(ReceiptCheck(file_id, {"sha256": file_id}))
    assert dock.machine.result(key, OK, dock.now) == ()  # receipted: nothing to finish


def test_held_checkpoint_of_another_origin_is_ignored() -> None:
    dock = Dock([bytes(100)])
    assert dock.machine.held(Checkpoint("other/ledger", 5, bytes(32))) == ()
    assert dock.machine.held(Checkpoint(ORIGIN, 5, bytes(32))) == (SaveHeld(5),)
    assert dock.machine.held(Checkpoint(ORIGIN, 5, bytes(32))) == ()
    init = until(dock, "init")
    meta = FileMeta.from_json(init.action.payload)
    assert Provenance.from_json(meta.user_data).consistency_from == 5


def test_the_bandwidth_cap_holds_segments_back() -> None:
    dock = Dock([bytes(4 * SEGMENT)], bandwidth=Bandwidth(SEGMENT, (), 0), max_queued=100)
    until(dock, "segment")
    first = dock.now
    dock.run()
    dock.check_done()
    assert dock.now - first >= 2.5  # 4 segments at one a second, after the first burst


def test_the_machine_is_deterministic() -> None:
    def trace() -> list[Action]:
        dock = Dock([bytes(3000), b"\x02" * 1000], max_queued=3)
        dock.run()
        return [a for _, a in dock.actions]

    assert trace() == trace()


# -- receipts ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform_key() -> NoteSigner:
    return NoteSigner.generate("platform.evidock.invalid")


def signed_receipt(key: NoteSigner, station: str = STATION, size: int = 10, seq: int = 3) -> bytes:
    receipt = Receipt(station, "ab" * 32, size, seq, "2024-01-01T00:00:00Z", 4)
    return receipt.sign(key).encode()


def test_check_receipt_verifies_signature_station_and_ledger(platform_key: NoteSigner) -> None:
    keys = (platform_key.verifier,)
    rows = {"ab" * 32: (10, 3)}
    good = check_receipt(signed_receipt(platform_key), keys, STATION, rows.get)
    assert good.verified and good.body is not None
    assert good.body["seq"] == 3 and good.body["platform_key"] == platform_key.verifier.vkey
    other = NoteSigner.generate("platform.evidock.invalid")
    cases = {
        "does not verify": check_receipt(signed_receipt(other), keys, STATION, rows.get),
        "for station 'dock-02'": check_receipt(
            signed_receipt(platform_key, "dock-02"), keys, STATION, rows.get
        ),
        "the ledger has size 10, entry 3": check_receipt(
            signed_receipt(platform_key, size=11), keys, STATION, rows.get
        ),
        "no such file": check_receipt(signed_receipt(platform_key), keys, STATION, lambda _: None),
        "does not verify: ": check_receipt(b"\xff garbage", keys, STATION, rows.get),
    }
    for text, check in cases.items():
        assert not check.verified and check.refusal is not None
        assert "refused a receipt" in check.refusal and text in check.refusal, check.refusal


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


# -- the frozen init (issue 12 item 2) ---------------------------------------------------

NEWER_PROOF = "send a consistency proof from size 2 (the checkpoint held here)"
OLDER_CHECKPOINT = (
    "checkpoint size 1 is older than the held size 2 and unknown here; "
    "send a checkpoint of size 2 or more"
)

interruptions = st.lists(
    st.sampled_from(
        [
            "tick",
            "deliver",
            "lose",
            "error_puback",
            "no_subscribers",
            "timeout",
            "reconnect",
            "reconnect_lost",
            "crash",
            "ledger_grows",
            "held_grows",
            "refuse_retry",
            "refuse_restart",
            "refuse_quota",
            "newer_proof",
            "older_checkpoint",
            "operator_retry",
            # weighted: the interruptions that make an init go again
            *("crash", "timeout", "reconnect_lost", "error_puback", "newer_proof") * 2,
        ]
    ),
    max_size=80,
)


def _interrupt(dock: Dock, op: str, log: list[tuple[str, str, bytes]]) -> None:
    """One interruption of the kinds a dock meets; ``log`` gets ("retry", sha, b"")
    when the operator starts a file over."""
    wire = bool(dock.wire)
    if op == "tick":
        dock.tick()
    elif op == "progress":
        dock.tick()
        while dock.wire:
            dock.deliver()
        while dock.answers:
            dock.answer()
    elif op in ("deliver", "lose") and wire:
        dock.deliver(lose=op == "lose")
    elif op == "error_puback" and wire:
        dock.deliver(0x80)
    elif op == "no_subscribers" and wire:
        dock.deliver(0x10)
    elif op == "timeout":
        dock.now += TIMEOUT + 1
        dock.tick()
    elif op in ("reconnect", "reconnect_lost"):
        dock.reconnect(session_present=op == "reconnect")
    elif op == "crash":
        # The agent is killed: paho's queue and whatever waited for it are gone; a new
        # machine starts from the outbox (the frozen inits are in it).
        dock.wire.clear()
        dock.answers.clear()
        dock.machine = TransferMachine(
            dock.settings,
            TOPICS,
            dock.outbox,
            dock.station,
            origin=ORIGIN,
            held=int(dock.outbox.meta.get("held_size", 0)),
        )
        dock.feed(("start",), dock.machine.start())
        dock.link_up(session_present=False)
    elif op == "ledger_grows":
        dock.station.checkpoint_size += 1  # a rebuilt init would now differ
    elif op == "held_grows":
        dock.platform.held += 1
        cp = Checkpoint(ORIGIN, dock.platform.held, bytes(32))
        dock.feed(("held",), dock.machine.held(cp))
    elif op.startswith("refuse_") and wire and dock.wire[0].action.key.kind == "init":
        code = {"refuse_retry": RC_RETRY, "refuse_restart": RC_RESTART}.get(op, RC_QUOTA)
        dock.deliver(refuse=code)
        while dock.answers:
            dock.answer()
    elif op in ("newer_proof", "older_checkpoint"):
        # The receiver will answer the next init it sees with a request for newer proof.
        dock.platform.refuse_next_init = NEWER_PROOF if op == "newer_proof" else OLDER_CHECKPOINT
    elif op == "operator_retry":
        for file_id, row in dock.outbox.rows.items():
            if row.state != RECEIPTED:
                dock.outbox.retry(file_id)
                log.append(("retry", file_id, b""))
                break


STATS: Counter[str] = Counter()  # what the property test met, to see it is not vacuous


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=files, ops=interruptions)
def test_every_init_of_a_transfer_is_byte_identical_unless_it_started_over(
    data: list[bytes], ops: list[str]
) -> None:
    """Across any interruption sequence (lost answers, error PUBACKs, timeouts, lost
    sessions, the agent killed and restarted, the ledger and the held size moving,
    refusals), every init of a transfer carries the same bytes as its first, except
    after a start-over: `evidock upload retry`, or the mosquitto receiver asking for a
    newer proof (then ThawInit comes first)."""
    dock = Dock(data, max_queued=100)
    log: list[tuple[str, str, bytes]] = []
    seen = 0

    def collect() -> None:
        nonlocal seen
        for _, action in dock.actions[seen:]:
            if isinstance(action, Publish) and action.key.kind == "init":
                log.append(("init", action.key.file_id, action.payload))
            elif isinstance(action, ThawInit):
                log.append(("thaw", action.sha256, b""))
            elif isinstance(action, FreezeInit):
                log.append(("freeze", action.sha256, action.payload))
        seen = len(dock.actions)

    for op in ops:
        _interrupt(dock, op, log)
        collect()
    dock.listening = True
    dock.run()
    collect()
    first: dict[str, bytes] = {}
    sends: Counter[str] = Counter()
    for what, file_id, payload in log:
        if what in ("retry", "thaw"):
            first.pop(file_id, None)
        elif what == "freeze":
            assert file_id not in first, "a second freeze without a start-over"
            first[file_id], sends[file_id] = payload, 0
        else:
            assert payload == first[file_id], "an init differs from the frozen one"
            sends[file_id] += 1
            STATS["resent"] += sends[file_id] > 1
    STATS.update(what for what, _, _ in log)
    dock.check_done()


def test_a_request_for_a_newer_proof_thaws_the_init_and_builds_it_afresh() -> None:
    dock = Dock([bytes(100)])
    file_id = next(iter(dock.sources))
    first = until(dock, "init").action.payload
    assert dock.outbox.rows[file_id].init == first
    dock.station.checkpoint_size = 7
    dock.deliver(refuse=RC_RETRY, text=NEWER_PROOF)
    dock.answer()
    assert ThawInit(file_id) in [a for _, a in dock.actions]
    again = until(dock, "init").action.payload
    assert again != first and "checkpoint 7" in again.decode()
    assert dock.outbox.rows[file_id].init == again
    # Another refusal (not a request for a newer proof) keeps the frozen bytes.
    dock.deliver(refuse=RC_RETRY, text="internal error")
    dock.answer()
    assert until(dock, "init").action.payload == again


# -- a stock EMQX (issue 12 items 1, 5) -----------------------------------------------------

EMQX_TOPICS = Topics(STATION, protocol.EMQX_PREFIX)
ERROR = 0x80


class Emqx:
    """The machine configured for EMQX, driven by hand: what it publishes is collected;
    PUBACKs and results are given explicitly."""

    def __init__(self, files: list[bytes]) -> None:
        self.now = 100.0
        self.outbox = FakeOutbox(lambda: EPOCH + self.now)
        self.station = FakeStation()
        for data in files:
            self.station.stored[self.outbox.add(data)] = data
        self.settings = UploadSettings(
            broker="emqx", segment_bytes=SEGMENT, window_segments=WINDOW, result_timeout_s=TIMEOUT
        )
        assert self.settings.prefix_template == "$file-async"
        self.machine = TransferMachine(
            self.settings, EMQX_TOPICS, self.outbox, self.station, origin=ORIGIN
        )
        self.sent: list[Publish | PublishMirror] = []
        self.mids: dict[Key, int] = {}
        self.actions: list[Action] = []
        self.apply(self.machine.link_up(False, None, self.now))

    def apply(self, actions: tuple[Action, ...]) -> tuple[Action, ...]:
        for action in actions:
            self.actions.append(action)
            self.outbox.apply(action)
            if isinstance(action, Publish | PublishMirror):
                self.sent.append(action)
                mid = len(self.sent)
                self.mids[action.key] = mid
                self.apply(self.machine.queued(action.key, mid))
        return actions

    def tick(self) -> tuple[Action, ...]:
        return self.apply(self.machine.tick(self.now, EPOCH + self.now).actions)

    def puback(self, key: Key, code: int = 0) -> tuple[Action, ...]:
        return self.apply(self.machine.puback(self.mids[key], code, "Unspecified error", self.now))

    def result(self, key: Key, description: str = "success") -> tuple[Action, ...]:
        code = 0 if description == "success" else ERROR
        result = Result("$file-async/x", 1, code, description)
        return self.apply(self.machine.result(key, result, self.now))

    def answer(self, key: Key, description: str = "success") -> tuple[Action, ...]:
        """What EMQX does: PUBACK 0x00 or 0x80, then the result with the reason."""
        out = self.puback(key, 0 if description == "success" else ERROR)
        return out + self.result(key, description)

    def published(self, kind: str) -> list[Publish]:
        return [a for a in self.sent if isinstance(a, Publish) and a.key.kind == kind]


def test_emqx_init_is_tiny_canonical_and_under_the_prefix_alone() -> None:
    emqx = Emqx([bytes(100)])
    emqx.tick()
    (init,) = emqx.published("init")
    file_id = init.key.file_id
    assert init.topic == f"$file-async/{file_id}/init"
    meta = FileMeta.from_json(init.payload)
    assert meta.user_data == {"evidock": 1, "seq": 1, "station": STATION}
    assert b'"user_data":{"evidock":1,"seq":1,"station":"dock-01"}' in init.payload
    assert meta.segments_ttl == 86400 and len(init.payload) < 400
    assert FreezeInit(file_id, init.payload) in emqx.actions


def test_emqx_error_puback_waits_for_the_result_which_decides() -> None:
    """emqx_ft PUBACKs 0x80 for every error: no back-off on it, the result names it."""
    emqx = Emqx([bytes(100)])
    emqx.tick()
    key = emqx.published("init")[0].key
    assert emqx.puback(key, ERROR) == ()
    assert key in emqx.machine.pending()
    assert emqx.machine.refusal is None


@pytest.mark.parametrize(
    "reason", ["filemeta_conflict", "invalid_filemeta", "invalid_file_command", "invalid_topic"]
)
def test_emqx_permanent_refusal_fails_with_its_reason_once(
    reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    emqx = Emqx([bytes(100)])
    emqx.tick()
    key = emqx.published("init")[0].key
    with caplog.at_level("ERROR", logger="uploader.transfer"):
        actions = emqx.answer(key, reason)
        for _ in range(20):
            emqx.now += TIMEOUT + 1
            emqx.tick()
    (failed,) = [a for a in actions if isinstance(a, MarkFailed)]
    assert failed.sha256 == key.file_id and reason in failed.error
    assert emqx.outbox.rows[key.file_id].state == FAILED
    assert reason in str(emqx.outbox.rows[key.file_id].last_error)
    assert len(emqx.published("init")) == 1, "a permanent refusal was retried"
    assert [r.levelname for r in caplog.records if reason in r.getMessage()] == ["ERROR"]


def test_emqx_transient_refusal_is_retried_with_back_off() -> None:
    emqx = Emqx([bytes(3 * SEGMENT)])
    emqx.tick()
    init = emqx.published("init")[0]
    emqx.answer(init.key)
    emqx.tick()
    segment = emqx.published("segment")[0].key
    actions = emqx.answer(segment, "internal_error")
    backoff = [a for a in actions if isinstance(a, BackOff)]
    assert backoff and "internal_error" in backoff[0].reason
    assert any(isinstance(a, NoteError) and "internal_error" in a.error for a in actions)
    assert emqx.outbox.rows[segment.file_id].state in SENDABLE
    before = len(emqx.published("segment"))
    emqx.tick()
    assert len(emqx.published("segment")) == before, "sent again inside the pause"
    emqx.now += backoff[0].seconds
    emqx.tick()
    assert segment in [p.key for p in emqx.published("segment")[before:]]


def test_emqx_fin_incomplete_sends_the_file_again_and_keeps_the_init() -> None:
    data = bytes(2 * SEGMENT)
    emqx = Emqx([data])
    emqx.tick()
    init = emqx.published("init")[0]
    emqx.answer(init.key)
    emqx.tick()
    for p in emqx.published("segment"):
        emqx.answer(p.key)
    emqx.tick()
    fin = emqx.published("fin")[0].key
    actions = emqx.answer(fin, "incomplete")
    assert Reset(fin.file_id) in actions
    assert emqx.outbox.rows[fin.file_id].segments == {}
    emqx.tick()
    assert [p.payload for p in emqx.published("init")] == [init.payload, init.payload]


def test_emqx_checksum_mismatch_is_permanent_on_fin_transient_on_a_segment() -> None:
    assert protocol.emqx_refusal("fin", "checksum_mismatch") == protocol.PERMANENT
    assert protocol.emqx_refusal("segment", "checksum_mismatch") == protocol.TRANSIENT
    assert protocol.emqx_refusal("fin", "incomplete") == protocol.RESTART
    for word in ("internal_error", "timeout", "enospc", "unsupported_ft_operation", ""):
        assert protocol.emqx_refusal("init", word) == protocol.TRANSIENT


# -- the ledger mirror, dock half (issue 12 item 4) ------------------------------------------


def mirrors(emqx: Emqx) -> list[PublishMirror]:
    return [a for a in emqx.sent if isinstance(a, PublishMirror)]


def test_the_mirror_sends_from_the_held_size_up_to_the_latest_checkpoint() -> None:
    emqx = Emqx([])
    emqx.station.checkpoint_size = 3
    emqx.tick()
    (first,) = mirrors(emqx)
    assert (first.start, first.end) == (0, 3) and first.key == Key("", "mirror", 0)
    emqx.puback(first.key)
    emqx.tick()
    assert len(mirrors(emqx)) == 1, "sent again while the platform applies it"
    # The platform applied it: held 3 == latest: nothing more.
    assert SaveHeld(3) in emqx.apply(emqx.machine.held(Checkpoint(ORIGIN, 3, bytes(32))))
    emqx.tick()
    assert len(mirrors(emqx)) == 1
    # The ledger grows past what the platform holds: the rest goes.
    emqx.station.checkpoint_size = 5
    emqx.tick()
    assert [(m.start, m.end) for m in mirrors(emqx)] == [(0, 3), (3, 5)]


def test_the_mirror_is_resent_when_the_held_size_does_not_move() -> None:
    emqx = Emqx([])
    emqx.station.checkpoint_size = 2
    emqx.tick()
    emqx.puback(mirrors(emqx)[0].key)
    emqx.now += TIMEOUT / 2
    emqx.tick()
    assert len(mirrors(emqx)) == 1
    emqx.now += TIMEOUT
    emqx.tick()
    assert [(m.start, m.end) for m in mirrors(emqx)] == [(0, 2), (0, 2)]
    # A held note of another size (the platform has more, or less): from there at once.
    emqx.apply(emqx.machine.held(Checkpoint(ORIGIN, 1, bytes(32))))
    emqx.tick()
    assert (mirrors(emqx)[-1].start, mirrors(emqx)[-1].end) == (1, 2)


def test_the_mirror_keeps_its_batches_within_the_limits() -> None:
    emqx = Emqx([])
    emqx.station.checkpoint_size = protocol.MIRROR_MAX_ENTRIES + 10
    emqx.tick()
    (batch,) = mirrors(emqx)
    assert batch.end - batch.start == protocol.MIRROR_MAX_ENTRIES


def test_no_mirror_for_mosquitto() -> None:
    """Its ACL does not let a dock write the ledger topic and nothing there reads it."""
    dock = Dock([bytes(100)])
    dock.station.checkpoint_size = 4
    dock.run()
    assert not any(isinstance(a, PublishMirror) for _, a in dock.actions)


def test_settings_per_broker_kind() -> None:
    assert UploadSettings().prefix_template == "$file-async/{station}"
    assert UploadSettings(broker="emqx").prefix_template == "$file-async"
    assert UploadSettings.from_config({}, 0).broker == "emqx"
    with pytest.raises(ConfigError, match="topic_prefix"):
        UploadSettings(broker="emqx", prefix_template="$file-async/{station}")
    with pytest.raises(ConfigError, match="topic_prefix"):
        UploadSettings.from_config({"broker": "mosquitto", "topic_prefix": "$file-async"}, 0)
    # Built directly, a literal level is allowed (a test aiming at another dock's topics).
    assert UploadSettings(prefix_template="$file-async/dock-02").prefix_template.endswith("02")
    with pytest.raises(ConfigError, match="broker"):
        UploadSettings(broker="hivemq")
    with pytest.raises(ConfigError, match="segments_ttl_s"):
        UploadSettings(segments_ttl_s=0)


def test_an_overdue_receipt_sends_the_mirrors_last_batch_again_with_the_fin() -> None:
    """EMQX answers a repeated fin itself; the receipt service hears of an overdue
    receipt only through the mirror, and answers a mirror message with the receipts
    the mirrored ledger lacks (receiver.receipts ``_owed``)."""
    emqx = Emqx([bytes(2 * SEGMENT)])
    emqx.station.checkpoint_size = 3
    emqx.tick()
    emqx.answer(emqx.published("init")[0].key)
    emqx.tick()
    for p in emqx.published("segment"):
        emqx.answer(p.key)
    emqx.tick()
    emqx.answer(emqx.published("fin")[0].key)
    emqx.apply(emqx.machine.held(Checkpoint(ORIGIN, 3, bytes(32))))
    emqx.tick()
    before = len(mirrors(emqx))
    emqx.now += emqx.settings.receipt_timeout_s + 1
    emqx.tick()
    assert len(emqx.published("fin")) == 2, "the fin is asked again"
    again = mirrors(emqx)[before:]
    assert [(m.start, m.end) for m in again] == [(2, 3)], again
    # Not awaited: the fin is. Nothing more until the next fin goes.
    emqx.tick()
    assert mirrors(emqx)[before:] == again
