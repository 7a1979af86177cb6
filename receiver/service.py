"""The platform's receiver: takes file transfers from docks, stores them, issues receipts.

It speaks the dock's side of ``uploader.protocol`` (EMQX file transfer over
MQTT, EIP-0021, asynchronous variant) behind a broker that does not implement
file transfer itself (mosquitto): it subscribes to every configured station's
commands, writes each segment at its offset of the transfer's spool file and
records it durably, and at ``fin`` reads the whole file back from the disk,
hashes it, and checks it against the file id, the ``init``
checksum, the station's signed ``ingest`` entry and its inclusion proof
(RFC 9162 §2.1.3.2) under a checkpoint signed by a key pinned for that
station. The file then enters a content-addressed store and a receipt signed
by the platform key goes to ``evidock/v1/docks/{station}/receipts``.

It also holds each station to its history: the checkpoints it accepted are
kept, and a new one must extend the largest of them (the "held" checkpoint)
by an RFC 9162 §2.1.4.2 consistency proof. A checkpoint that cannot
(a fork, a rewritten or rolled-back ledger) is refused, logged as an error and
recorded in the ``refusals`` table: a dock cannot rewrite its history unseen.

``Receiver.handle`` is the core: one message in, the messages to publish out,
with disk and SQLite but no network, so every hostile case is tested without
a broker; ``Receiver.handle_batch`` is the same for the messages waiting at
once, made durable together (group commit). ``serve`` is the network shell
around it.

Reason codes (EIP-0021 "PUBACK Reason codes", carried in the result JSON):

    0x00 success       stored, a harmless duplicate, or already stored
    0x10 restart       no transfer known for a segment or fin: send init again
    0x80 retry         segment: its checksum does not match (send it again);
                       fin: bytes are missing or the assembled file does not hash
                       to the file id (send the segments again); init: send a
                       consistency proof from ``held_size``; internal errors
    0x83 cancel        can never succeed as sent: malformed, forged, unprovable,
                       a fork, a segment past the end, overlapping or
                       contradicting a stored one; abort and start afresh
    0x97 quota         too many open transfers or too many spooled bytes: pause

Every error leaves the transfer, the spool and the store as they were; only
a refused fork adds a row to ``refusals``, which is the point of refusing it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from hashing._fsutil import make_private_dir
from hashing.checkpoint import SignedCheckpoint
from hashing.entries import INGEST, Entry, check_station_id
from hashing.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    ProofError,
    SignatureError,
)
from hashing.merkle import verify_consistency, verify_inclusion
from hashing.note import NoteVerifier
from hashing.store import Store
from receiver._db import ReceiverDB, Refusal, Segment, StoredFile, Transfer
from receiver._keys import KEY_FILE as _KEY_FILE
from receiver._keys import load_signer as _load_signer
from receiver._keys import utc_now as _utc_now
from receiver._spool import Spool, new_token
from receiver.history import record_refusal
from uploader import link, protocol
from uploader.link import LinkState, MqttSettings

log = logging.getLogger(__name__)

DB_FILE = "receiver.db"
KEY_FILE = _KEY_FILE  # in keys/ under the home (receiver._keys, shared with the EMQX path)
MAX_CHECKPOINT_BYTES = 64 * 1024  # a checkpoint note is ~200 bytes; a few signatures more
MAX_MISSING_LISTED = 8  # missing ranges named in a fin result
CHECKPOINT_LEAF = "checkpoint"
_DOCK_LEVELS = protocol.DOCK_TOPICS.split("/")  # evidock, v1, docks, {station}


@dataclass(frozen=True)
class ReceiverSettings:
    """What ``evidock receive`` is configured with ([receiver], [upload] topic_prefix).

    Raises ConfigError on a prefix without a ``{station}`` level (the station
    is known only from the topic the broker ACL confined it to), a station id
    that is not one, or limits that make no sense.
    """

    home: Path
    stations: Mapping[str, tuple[NoteVerifier, ...]]  # station id -> pinned checkpoint keys
    prefix_template: str = protocol.DEFAULT_PREFIX
    max_transfers_per_station: int = 64
    max_spool_bytes_per_station: int = 64 << 30
    min_segments_ttl_s: int = 60
    max_segments_ttl_s: int = 7 * 86400
    key_name: str = "evidock-platform"

    def __post_init__(self) -> None:
        try:
            protocol.check_prefix(self.prefix_template)
        except InputError as e:
            raise ConfigError(f"receiver topic prefix: {e}") from e
        if "{station}" not in self.prefix_template.split("/"):
            raise ConfigError(
                f"receiver topic prefix {self.prefix_template!r} has no {{station}} level: the "
                "receiver tells stations apart by that level, which the broker ACL confines"
            )
        for station, keys in self.stations.items():
            try:
                check_station_id(station)
            except InputError as e:
                raise ConfigError(f"receiver station: {e}") from e
            if not keys:
                raise ConfigError(f"receiver station {station}: no checkpoint key is pinned")
        if self.max_transfers_per_station < 1 or self.max_spool_bytes_per_station < 1:
            raise ConfigError("receiver quotas must be at least 1")
        if not 1 <= self.min_segments_ttl_s <= self.max_segments_ttl_s:
            raise ConfigError("receiver segments TTL: need 1 <= min <= max")


@dataclass(frozen=True)
class Message:
    """One message as the broker delivered it: what ``handle_batch`` takes."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    packet_id: int = 0


@dataclass(frozen=True)
class Outgoing:
    """A message to publish (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool = False
    correlation: bytes | None = None


@dataclass(frozen=True)
class _Done:
    code: int
    text: str
    extra: tuple[Outgoing, ...] = ()


class _Answer(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Ends a command with this result; raised inside a transaction, it rolls it back."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.done = _Done(code, text)


class Receiver:
    """The receiver's state folder and the handling of messages, in order.

    ``home`` holds ``receiver.db`` (SQLite, WAL, synchronous=FULL),
    ``keys/receipt.key``, ``spool/`` (one sparse data file per open transfer,
    see ``receiver._spool``), ``store/`` (content-addressed files, 0400) and
    ``staging/`` (the store's, for partial copies; cleaned on open); all 0700,
    nothing world-readable. Opening it finishes what a crash interrupted (see
    ``_recover``). Thread-safe: calls are serialised by one lock.
    """

    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        os.umask(0o077)
        home = settings.home
        make_private_dir(home)
        self._signer = _load_signer(home / "keys", settings.key_name)
        self._store = Store(home / "store", home / "staging")
        self._store.ensure()
        self._spool = Spool(home / "spool")
        self._spool.ensure()
        self._db = ReceiverDB(home / DB_FILE)
        self._lock = threading.RLock()
        self._prefix_levels = settings.prefix_template.split("/")
        self._recover()

    @property
    def verifier(self) -> NoteVerifier:
        """The key docks pin as ``[upload] platform_key`` to check receipts."""
        return self._signer.verifier

    def close(self) -> None:
        """Close the database; the spool and the store keep no files open between calls."""
        with self._lock:
            self._db.close()

    def stored(self, sha256: str) -> Path | None:
        """The stored copy of a file some station uploaded, if there is one."""
        if not protocol.SHA256_RE.fullmatch(sha256):
            return None
        with self._lock:
            if not self._db.has_file(sha256):
                return None
        path = self._store.path_for(sha256)
        return path if path.is_file() else None

    def refusals(self, station: str | None = None) -> list[Refusal]:
        """Checkpoints refused as forks (oldest first): what an operator must look at."""
        with self._lock:
            return self._db.refusals(station)

    def held_notes(self) -> list[tuple[str, str]]:
        """(station, signed checkpoint note) the receiver holds each station to."""
        with self._lock:
            return self._db.held_all()

    def topics(self, station: str) -> protocol.Topics:
        """The MQTT topics of ``station`` under the configured prefix (uploader.protocol.Topics)."""
        return protocol.Topics(station, self.settings.prefix_template)

    # -- maintenance ---------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Drop transfers idle for longer than their segments TTL; returns how many.

        EIP-0021's ``segments_ttl``: how long the server keeps the segments of an
        unfinished transfer. A dock that comes back later starts again with init.
        """
        now = time.time() if now is None else now
        with self._lock:
            expired = self._db.expired(now)
            for t in expired:
                with self._db.tx():
                    self._db.drop_transfer(t.station, t.file_id)
                self._spool.remove(t.spool)
                log.info(
                    "station %s: transfer of %s expired after %d s idle; segments dropped",
                    t.station,
                    t.file_id,
                    t.ttl_s,
                )
            return len(expired)

    def _recover(self) -> None:
        """Reconcile the spool and the database after a crash or power cut.

        A segment row commits only after its bytes were fdatasynced into the
        transfer's data file, so every committed row's range is on the disk;
        bytes written without a row were never acknowledged and are not
        trusted (the station resends them, and they are written over). A row
        whose range the data file does not reach (the file lost or cut short
        behind the receiver's back) is dropped, so ``fin`` asks for those
        bytes again; anything else in a transfer's folder is removed. A
        transfer whose file is already stored is finished. Partial copies in
        ``staging/`` are removed (``Store.clean_stale_staging``).
        """
        for part in self._store.clean_stale_staging():
            log.warning("removed a partial assembly left by a stopped receiver: %s", part.name)
        live: set[str] = set()
        for t in self._db.transfers():
            if self._db.file(t.station, t.file_id) is not None:
                with self._db.tx():
                    self._db.drop_transfer(t.station, t.file_id)
                self._spool.remove(t.spool)
                log.info("station %s: cleaned up the finished transfer of %s", t.station, t.file_id)
                continue
            live.add(t.spool)
            keep = {s.start: s.length for s in self._db.segments(t.station, t.file_id)}
            removed, broken = self._spool.sweep(t.spool, keep)
            if removed:
                log.warning(
                    "station %s, %s: removed %d file(s) from the spool that are not its data file",
                    t.station,
                    t.file_id,
                    len(removed),
                )
            if broken:
                with self._db.tx():
                    for start in broken:
                        self._db.drop_segment(t.station, t.file_id, start)
                log.warning(
                    "station %s, %s: %d segment(s) from %d on are missing from the spool; "
                    "they will be asked for again",
                    t.station,
                    t.file_id,
                    len(broken),
                    min(broken),
                )
        for token in self._spool.tokens():
            if token not in live:
                self._spool.remove(token)
                log.warning("removed a spool folder no transfer owns: %s", token)
        for stray in self._spool.strays():
            self._spool.remove_path(stray)
            log.warning("removed %s from the spool: not a transfer folder", stray.name)

    # -- messages --------------------------------------------------------------

    def handle(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic: str | None,
        correlation: bytes | None,
        packet_id: int = 0,
    ) -> list[Outgoing]:
        """Process one message; return what to publish (results, receipts, held checkpoints).

        Never raises: malformed or hostile input becomes an error result on the
        station's own results topic (or only a log line when the sender is no
        configured station), and an unexpected failure becomes reason code
        0x80 "internal error", so one bad message never stops the service.
        Whatever it answers OK is durable when it returns.
        """
        message = Message(topic, payload, response_topic, correlation, packet_id)
        return self.handle_batch([message])[0]

    def handle_batch(self, messages: Sequence[Message]) -> list[list[Outgoing]]:
        """Process messages in order; return what to publish for each (as ``handle``).

        Group commit: each run of consecutive segments is handled in one SQLite
        transaction, each segment in a savepoint of its own, so a refused or
        failed segment undoes only itself and a later segment sees the rows of
        the earlier ones, exactly as one at a time. Then one fdatasync per data
        file written, and one COMMIT, make the whole run durable: one round of
        disk flushes for the run rather than several for each segment. Every
        other command is handled alone once the run before it is committed,
        since what it does outside SQLite (the store, the spool) must follow
        its own commit. Nothing is returned before all of it is durable, and
        the caller answers only after it returns, so an OK still means stored.
        If a run's fdatasync or COMMIT fails, none of it was recorded and each
        of its messages is answered 0x80 "internal error" (the station resends).
        Never raises (see ``handle``).
        """
        with self._lock:
            answers: list[list[Outgoing]] = []
            run: list[Message] = []
            for m in messages:
                if self._is_segment(m.topic):
                    run.append(m)
                    continue
                answers.extend(self._handle_run(run))
                run = []
                answers.append(self._handle_one(m))
            answers.extend(self._handle_run(run))
            return answers

    def _handle_run(self, run: list[Message]) -> list[list[Outgoing]]:
        """Segments in one transaction; their bytes synced before it commits."""
        if not run:
            return []
        try:
            with self._db.group():
                answers = [self._handle_one(m, grouped=True) for m in run]
                self._spool.sync()  # the bytes reach the disk before the rows vouching for them
        except Exception:
            log.exception("could not make %d segment(s) durable; none was recorded", len(run))
            return [self._internal_error(m) for m in run]
        return answers

    def _handle_one(self, m: Message, *, grouped: bool = False) -> list[Outgoing]:
        try:
            if grouped:
                with self._db.tx():  # a savepoint: an unexpected failure undoes this one alone
                    return self._handle(m)
            return self._handle(m)
        except Exception:
            log.exception("internal error handling a message on %r", m.topic[:300])
            return self._internal_error(m)

    def _internal_error(self, m: Message) -> list[Outgoing]:
        station = self._command_station(m.topic)
        if station is None:
            return []
        done = _Done(protocol.RC_RETRY, "internal error")
        return [self._result(station, m.topic, m.packet_id, m.correlation, done)]

    def _is_segment(self, topic: str) -> bool:
        """Whether ``topic`` is a configured station's segment command (group-committed)."""
        if self._checkpoint_station(topic) is not None or self._command_station(topic) is None:
            return False
        try:
            return protocol.parse_command(topic, self.settings.prefix_template).kind == "segment"
        except InputError:
            return False

    def _handle(self, m: Message) -> list[Outgoing]:
        topic, payload, response_topic = m.topic, m.payload, m.response_topic
        correlation, packet_id = m.correlation, m.packet_id
        checkpoint_station = self._checkpoint_station(topic)
        if checkpoint_station is not None:
            self._on_checkpoint(checkpoint_station, payload)
            return []
        station = self._command_station(topic)
        if station is None:
            log.warning(
                "ignored a message on %r: not a command of a configured station", topic[:300]
            )
            return []
        results = self.topics(station).results
        if response_topic is not None and response_topic != results:
            # Results go only to the station's own topic: a station naming another
            # station's results topic must not make the receiver answer into it.
            log.warning(
                "station %s named Response-Topic %r; answering on %s",
                station,
                response_topic[:300],
                results,
            )
        # Every init result carries held_size, even for an init topic that does not parse.
        kind: str | None = "init" if topic.endswith("/init") else None
        level = logging.WARNING
        try:
            cmd = protocol.parse_command(topic, self.settings.prefix_template)
            kind = cmd.kind
            done = self._command(station, cmd, payload)
        except _Answer as a:
            done = a.done
        except IntegrityError as e:  # forged signature, bad proof: never a transport accident
            done, level = _Done(protocol.RC_CANCEL, str(e)), logging.ERROR
        except InputError as e:
            done = _Done(protocol.RC_CANCEL, str(e))
        if done.code != protocol.RC_SUCCESS:
            if done.code != protocol.RC_CANCEL:
                level = logging.INFO  # flow control the station follows, not an attack
            log.log(
                level,
                "station %s: %r answered 0x%02x: %s",
                station,
                topic[:300],
                done.code,
                done.text,
            )
        held = self._held_size(station) if kind == "init" else None
        return [self._result(station, topic, packet_id, correlation, done, held), *done.extra]

    def _result(
        self,
        station: str,
        topic: str,
        packet_id: int,
        correlation: bytes | None,
        done: _Done,
        held_size: int | None = None,
    ) -> Outgoing:
        result = protocol.Result(topic, packet_id, done.code, done.text, held_size)
        return Outgoing(self.topics(station).results, result.to_json(), correlation=correlation)

    def _command_station(self, topic: str) -> str | None:
        """The configured station whose command prefix ``topic`` is under, if any."""
        levels = topic.split("/")
        if len(levels) <= len(self._prefix_levels):
            return None
        station = None
        for want, got in zip(self._prefix_levels, levels, strict=False):
            if want == "{station}":
                station = got
            elif want != got:
                return None
        return station if station in self.settings.stations else None

    @staticmethod
    def _checkpoint_station(topic: str) -> str | None:
        """The station of ``evidock/v1/docks/{station}/checkpoint``, configured or not."""
        levels = topic.split("/")
        if len(levels) != len(_DOCK_LEVELS) + 1 or levels[-1] != CHECKPOINT_LEAF:
            return None
        if levels[:-2] != _DOCK_LEVELS[:-1]:
            return None
        return levels[-2]

    def _held_size(self, station: str) -> int:
        held = self._db.held(station)
        return 0 if held is None else held.size

    def _command(self, station: str, cmd: protocol.Command, payload: bytes) -> _Done:
        now = time.time()
        if cmd.kind == "init":
            return self._init(station, cmd.file_id, payload, now)
        if cmd.kind == "segment" and cmd.offset is not None:
            return self._segment(station, cmd.file_id, cmd.offset, cmd.checksum, payload, now)
        if cmd.kind == "fin" and cmd.size is not None:
            return self._fin(station, cmd.file_id, cmd.size, cmd.checksum)
        if cmd.kind == "abort":
            return self._abort(station, cmd.file_id)
        raise InputError(f"unknown command {cmd.kind!r}")

    # -- init --------------------------------------------------------------------

    def _init(self, station: str, file_id: str, payload: bytes, now: float) -> _Done:
        meta = protocol.FileMeta.from_json(payload)
        if meta.checksum != file_id:
            raise _Answer(protocol.RC_CANCEL, "init checksum is not the file id")
        prov = protocol.Provenance.from_json(meta.user_data)
        if prov.station != station:
            log.warning("station %s sent provenance naming station %r", station, prov.station[:80])
            raise _Answer(protocol.RC_CANCEL, "provenance names another station than the topic")
        entry = Entry.parse(prov.entry)
        if entry.station != station:
            log.warning("station %s sent an entry of station %r", station, entry.station[:80])
            raise _Answer(protocol.RC_CANCEL, "the ledger entry is another station's")
        if entry.type != INGEST:
            raise _Answer(protocol.RC_CANCEL, f"ledger entry {entry.seq} is not an ingest entry")
        if entry.body.get("sha256") != file_id:
            raise _Answer(protocol.RC_CANCEL, f"ledger entry {entry.seq} records another file")
        size = entry.body.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size != meta.size:
            raise _Answer(protocol.RC_CANCEL, f"ledger entry {entry.seq} records another size")
        # SignatureError (forged, altered, or by a key not pinned for this station).
        signed, _ = SignedCheckpoint.open(prov.checkpoint, list(self.settings.stations[station]))
        cp = signed.checkpoint
        # RFC 9162 §2.1.3.2: the entry is leaf `seq` of the signed tree (ProofError).
        verify_inclusion(entry.leaf, entry.seq, cp.size, prov.inclusion, cp.root)
        advance = self._judge(station, signed, prov)
        extra: list[Outgoing] = []
        restarted: str | None = None
        with self._db.tx():
            if advance:
                self._db.put_checkpoint(
                    station, cp.size, cp.root, cp.origin, signed.note, proven=True, at=_utc_now()
                )
            stored = self._db.file(station, file_id)
            existing = self._db.transfer(station, file_id)
            if stored is not None:
                done = _Done(protocol.RC_SUCCESS, "already stored; receipt sent again")
                extra.append(self._receipt_message(stored))
            elif existing is None:
                if self._db.open_transfers(station) >= self.settings.max_transfers_per_station:
                    raise _Answer(
                        protocol.RC_QUOTA,
                        f"{self.settings.max_transfers_per_station} transfers are open; "
                        "finish or abort one first",
                    )
                if meta.size > self.settings.max_spool_bytes_per_station:
                    raise _Answer(
                        protocol.RC_CANCEL,
                        f"the file is larger than this station's spool quota "
                        f"({self.settings.max_spool_bytes_per_station} bytes)",
                    )
                self._db.put_transfer(
                    self._new_transfer(station, file_id, meta, payload, entry, now)
                )
                done = _Done(protocol.RC_SUCCESS, "transfer open")
            elif existing.size != meta.size:
                # The bytes at each offset belong to (file id, size); a different size
                # makes every stored segment meaningless, so the transfer starts again.
                self._db.drop_transfer(station, file_id)
                self._db.put_transfer(
                    self._new_transfer(station, file_id, meta, payload, entry, now)
                )
                restarted = existing.spool
                done = _Done(protocol.RC_SUCCESS, "transfer restarted: the size changed")
            else:
                # Same file, same size: the stored segments stay valid whatever else
                # changed (a newer checkpoint and proofs, the name, the TTL); the newest
                # description is kept, so the receipt reflects it.
                self._db.put_transfer(
                    self._new_transfer(station, file_id, meta, payload, entry, now, existing)
                )
                done = _Done(protocol.RC_SUCCESS, "transfer open; stored segments kept")
        if restarted is not None:
            self._spool.remove(restarted)
        if advance:
            log.info("station %s: now holding its checkpoint of size %d", station, cp.size)
            extra.insert(0, Outgoing(self.topics(station).held, signed.note.encode(), retain=True))
        return _Done(done.code, done.text, tuple(extra))

    def _new_transfer(
        self,
        station: str,
        file_id: str,
        meta: protocol.FileMeta,
        payload: bytes,
        entry: Entry,
        now: float,
        existing: Transfer | None = None,
    ) -> Transfer:
        s = self.settings
        ttl = meta.segments_ttl or s.max_segments_ttl_s  # 0: the station did not say
        ttl = min(max(ttl, s.min_segments_ttl_s), s.max_segments_ttl_s)
        return Transfer(
            station=station,
            file_id=file_id,
            spool=new_token() if existing is None else existing.spool,
            name=meta.name,
            size=meta.size,
            seq=entry.seq,
            meta=payload,
            ttl_s=ttl,
            created=now if existing is None else existing.created,
            last_activity=now,
        )

    def _judge(self, station: str, signed: SignedCheckpoint, prov: protocol.Provenance) -> bool:
        """Hold the station to its history (RFC 9162 §2.1.4). True if ``signed`` becomes held.

        Raises _Answer: RC_RETRY when a proof from the held size is needed, or
        RC_CANCEL after recording a refusal when the checkpoint contradicts one
        already accepted or seen (a fork or a rewritten ledger).
        """
        cp = signed.checkpoint
        held = self._db.held(station)
        if held is not None and cp.origin != held.origin:
            raise self._refuse(
                station,
                "origin",
                f"checkpoint of log {cp.origin!r}, but the station's log is {held.origin!r}",
                signed.note,
            )
        same = self._db.checkpoint_at(station, cp.size)
        if same is not None and same.root != cp.root:
            raise self._refuse(
                station,
                "fork",
                f"a second, different root for size {cp.size}"
                + ("" if same.proven else " (the first was seen on its checkpoint topic)"),
                signed.note,
            )
        if held is None:
            return True  # the first checkpoint of a station is trusted on first use
        if cp.size > held.size:
            if prov.consistency_from != held.size:
                raise _Answer(
                    protocol.RC_RETRY,
                    f"send a consistency proof from size {held.size} (the checkpoint held here)",
                )
            try:
                verify_consistency(held.size, cp.size, held.root, cp.root, prov.consistency)
            except ProofError as e:
                raise self._refuse(
                    station,
                    "fork",
                    f"size {cp.size} does not extend the held size {held.size}: {e}",
                    signed.note,
                ) from e
            return True
        if cp.size == held.size or (same is not None and same.proven):
            return False  # the held one, or an older one accepted before: consistent, stale
        raise _Answer(
            protocol.RC_RETRY,
            f"checkpoint size {cp.size} is older than the held size {held.size} and unknown "
            f"here; send a checkpoint of size {held.size} or more",
        )

    def _refuse(self, station: str, kind: str, detail: str, note: str) -> _Answer:
        """Record and log a refused checkpoint; returns the RC_CANCEL answer to raise."""
        record_refusal(self._db, station, kind, detail, note)
        return _Answer(protocol.RC_CANCEL, f"checkpoint refused ({kind}): {detail}")

    # -- checkpoint topic ---------------------------------------------------------

    def _on_checkpoint(self, station: str, payload: bytes) -> None:
        """The dock's retained latest checkpoint (design.md step 10).

        It carries no proof, so it is never held; it is recorded as seen, and a
        second root for a size already seen or accepted is refused as a fork.
        """
        keys = self.settings.stations.get(station)
        if keys is None:
            log.warning("ignored a checkpoint of unknown station %r", station[:80])
            return
        if not payload:  # a retained checkpoint being cleared (MQTT 5 §3.3.1.3): nothing to check
            return
        if len(payload) > MAX_CHECKPOINT_BYTES:
            log.warning("station %s: ignored a %d-byte checkpoint message", station, len(payload))
            return
        try:
            signed, _ = SignedCheckpoint.open(payload, list(keys))
        except SignatureError as e:
            log.error("station %s: REFUSED its published checkpoint: %s", station, e)
            return
        except (InputError, UnicodeDecodeError) as e:
            log.warning("station %s: its published checkpoint is malformed: %s", station, e)
            return
        cp = signed.checkpoint
        held = self._db.held(station)
        same = self._db.checkpoint_at(station, cp.size)
        if held is not None and cp.origin != held.origin:
            self._refuse(
                station,
                "origin",
                f"published checkpoint of log {cp.origin!r}, but the station's log is {held.origin!r}",
                signed.note,
            )
            return
        if same is not None and same.root != cp.root:
            self._refuse(
                station,
                "fork",
                f"published a second, different root for size {cp.size}",
                signed.note,
            )
            return
        if same is None:
            with self._db.tx():
                self._db.put_checkpoint(
                    station, cp.size, cp.root, cp.origin, signed.note, proven=False, at=_utc_now()
                )
            log.info("station %s: seen its checkpoint of size %d", station, cp.size)

    # -- segments ------------------------------------------------------------------

    def _segment(
        self,
        station: str,
        file_id: str,
        start: int,
        checksum: str | None,
        data: bytes,
        now: float,
    ) -> _Done:
        t = self._db.transfer(station, file_id)
        if t is None:
            if self._db.file(station, file_id) is not None:
                return _Done(protocol.RC_SUCCESS, "file already stored")
            raise _Answer(protocol.RC_RESTART, "no transfer of this file is open; send init")
        n = len(data)
        end = start + n
        if n == 0:
            if t.size == 0 and start == 0:
                return _Done(protocol.RC_SUCCESS, "empty file: nothing to store")
            raise _Answer(protocol.RC_CANCEL, "empty segment")
        if end > t.size:
            raise _Answer(
                protocol.RC_CANCEL, f"segment [{start}, {end}) runs past the end ({t.size} bytes)"
            )
        sha = hashlib.sha256(data).hexdigest()
        if checksum is not None and sha != checksum:
            raise _Answer(protocol.RC_RETRY, "segment checksum does not match its bytes; resend it")
        before, after = self._db.neighbours(station, file_id, start)
        if before is not None and before.start == start:
            if before.length == n and before.sha256 == sha:
                with self._db.tx():
                    self._db.touch(station, file_id, now)
                return _Done(protocol.RC_SUCCESS, "duplicate segment")
            # The first one was answered OK and stays: a later message must not
            # replace acknowledged bytes. If the first was wrong, fin's hash says so.
            raise _Answer(
                protocol.RC_CANCEL,
                f"[{start}, {end}) contradicts the stored segment [{before.start}, {before.end}); "
                "abort and start again",
            )
        for other in (before, after):
            if other is not None and other.start < end and start < other.end:
                raise _Answer(
                    protocol.RC_CANCEL,
                    f"[{start}, {end}) overlaps the stored segment [{other.start}, {other.end}); "
                    "abort and start again",
                )
        if self._db.spool_bytes(station) + n > self.settings.max_spool_bytes_per_station:
            raise _Answer(protocol.RC_QUOTA, "this station's spool is full; pause")
        if not self._db.in_group:
            raise RuntimeError("a segment is recorded only in a group commit (handle_batch)")
        # Every check passed, and no row records any of [start, end): only now are
        # bytes written, so acknowledged bytes are never overwritten. The row counts
        # only once the run commits, after the data file's fdatasync (_handle_run).
        self._spool.write(t.spool, start, data)
        with self._db.tx():
            self._db.add_segment(station, file_id, Segment(start, n, sha))
            self._db.touch(station, file_id, now)
        return _Done(protocol.RC_SUCCESS, "stored")

    # -- fin and abort ---------------------------------------------------------------

    def _fin(self, station: str, file_id: str, size: int, checksum: str | None) -> _Done:
        t = self._db.transfer(station, file_id)
        if t is None:
            stored = self._db.file(station, file_id)
            if stored is None:
                raise _Answer(protocol.RC_RESTART, "no transfer of this file is open; send init")
            if size != stored.size:
                raise _Answer(
                    protocol.RC_CANCEL, f"fin size {size} is not the file's {stored.size}"
                )
            # A dock that waited too long for its receipt sends fin again.
            return _Done(
                protocol.RC_SUCCESS,
                "already stored; receipt sent again",
                (self._receipt_message(stored),),
            )
        if size != t.size:
            raise _Answer(protocol.RC_CANCEL, f"fin size {size} is not the init size {t.size}")
        if checksum is not None and checksum != file_id:
            raise _Answer(protocol.RC_CANCEL, "fin checksum is not the file id")
        segments = self._db.segments(station, file_id)
        missing = _missing(segments, t.size)
        if missing:
            shown = ", ".join(f"[{a}, {b})" for a, b in missing[:MAX_MISSING_LISTED])
            more = (
                f" and {len(missing) - MAX_MISSING_LISTED} more"
                if len(missing) > MAX_MISSING_LISTED
                else ""
            )
            raise _Answer(protocol.RC_RETRY, f"missing bytes {shown}{more}; send those segments")
        # The segments were written in place: the data file is the assembled file.
        # (Created here only for an empty file, which no segment wrote; or if the
        # spool lost it, when it hashes wrong and everything is asked for again.)
        data = self._spool.create(t.spool)
        digest, got = self._spool.digest(t.spool)  # the one pass: read back from the disk
        if digest != file_id or got != t.size:
            if got != t.size:
                log.error(
                    "station %s, %s: the spool holds %d bytes, not %d: the spool was altered",
                    station,
                    file_id,
                    got,
                    t.size,
                )
            log.error(
                "station %s: the %d segments of %s assemble to %s; all dropped, asking for them again",
                station,
                len(segments),
                file_id,
                digest,
            )
            self._drop_segments(t)
            return _Done(
                protocol.RC_RETRY,
                "the assembled bytes do not hash to the file id; every segment was dropped, "
                "send them all again",
            )
        # A hard link, not a copy or a rename: until the commit below, the spool
        # keeps its name for the file, so a crash in between leaves a transfer
        # that a fin sent again finishes without asking for any byte again.
        self._store.link(data, file_id, t.size)
        held = self._db.held(station)
        stored = StoredFile(
            station=station,
            sha256=file_id,
            size=t.size,
            seq=t.seq,
            name=t.name,
            stored_at=_utc_now(),
            receipt="",
        )
        receipt = protocol.Receipt(
            station, file_id, t.size, t.seq, stored.stored_at, 0 if held is None else held.size
        ).sign(self._signer)
        stored = dataclasses.replace(stored, receipt=receipt)
        # The file is in the store and its receipt committed before the spool goes:
        # a crash in between leaves a transfer whose file is stored, which _recover
        # finishes; a crash before the commit leaves a transfer fin can finish again.
        with self._db.tx():
            self._db.add_file(stored, t.meta)
            self._db.drop_transfer(station, file_id)
        self._spool.remove(t.spool)
        log.info(
            "station %s: stored %s (%d bytes, entry %d) as %s",
            station,
            file_id,
            t.size,
            t.seq,
            t.name,
        )
        return _Done(protocol.RC_SUCCESS, "stored", (self._receipt_message(stored),))

    def _drop_segments(self, t: Transfer) -> None:
        with self._db.tx():
            self._db.drop_segments(t.station, t.file_id)
        self._spool.remove(t.spool)

    def _abort(self, station: str, file_id: str) -> _Done:
        t = self._db.transfer(station, file_id)
        if t is None:
            return _Done(protocol.RC_SUCCESS, "no transfer open")
        with self._db.tx():
            self._db.drop_transfer(station, file_id)
        self._spool.remove(t.spool)
        log.info("station %s: transfer of %s aborted by the station", station, file_id)
        return _Done(protocol.RC_SUCCESS, "aborted")

    def _receipt_message(self, stored: StoredFile) -> Outgoing:
        return Outgoing(self.topics(stored.station).receipts, stored.receipt.encode())


def _missing(segments: list[Segment], size: int) -> list[tuple[int, int]]:
    """The byte ranges of [0, size) no segment covers (segments sorted, never overlapping)."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for s in segments:
        if s.start > pos:
            gaps.append((pos, s.start))
        pos = max(pos, s.end)
    if pos < size:
        gaps.append((pos, size))
    return gaps


# -- the network shell ------------------------------------------------------------

INBOX_MESSAGES = 32  # a broker's in-flight window (mosquitto 20, EMQX 32 by default)
BATCH_MESSAGES = 16  # handled and made durable together (group commit) at most
BATCH_BYTES = 32 << 20  # a batch takes no more messages once its payloads reach this
EXPIRE_EVERY_S = 60.0
OUTGOING_QUEUE = 1000
CHECKPOINT_FILTER = "/".join([*_DOCK_LEVELS[:-1], "+", CHECKPOINT_LEAF])


@dataclass(frozen=True)
class _Inbound:
    message: Message
    mid: int
    qos: int
    generation: int


class _Connection:
    """Which broker connection a message came on (acks go only to that one)."""

    def __init__(self) -> None:
        self.generation = 0
        self.republish = threading.Event()


def serve(receiver: Receiver, mqtt_settings: MqttSettings, until: threading.Event) -> None:
    """Run the receiver on a broker until ``until`` is set.

    paho's network thread only parses messages into a bounded queue; this
    thread takes every message already waiting there (up to
    ``BATCH_MESSAGES`` and ``BATCH_BYTES``), hands them in order to
    ``handle_batch``, which makes them durable together (group commit: one
    round of fsyncs for the batch, not one per message), publishes what it
    returns (QoS 1), and only then acknowledges each command (manual
    PUBACK). While a batch is on its way to the disk the next one gathers,
    so the busier the link, the fewer flushes per byte; a lone message is
    handled at once, never held back to wait for company. Disk and fsync
    latency never stall the network thread, and a message the receiver had
    not finished when it stopped or crashed is delivered again by the broker
    (persistent session), which ``handle_batch`` takes idempotently. With
    acks withheld until handled, the broker's in-flight window bounds the
    queue; if it were ever full, ``on_message`` blocks, which is
    back-pressure on the broker, not unbounded memory.

    The subscriptions are made again on every connection, present session
    or not: a broker that lost its sessions (restarted without persistence,
    or past the session expiry) would otherwise deliver nothing, silently.
    The held checkpoints are re-published (retained) for the same reason.
    """
    state = LinkState(mqtt_settings.describe())
    inbox: queue.Queue[_Inbound] = queue.Queue(maxsize=INBOX_MESSAGES)
    conn = _Connection()
    filters = [protocol.command_filter(receiver.settings.prefix_template), CHECKPOINT_FILTER]

    def on_connected(client: mqtt.Client, _session_present: bool) -> None:
        conn.generation += 1
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        conn.republish.set()

    def on_message(client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                log.warning("ignored a message whose topic is not UTF-8")
                client.ack(msg.mid, msg.qos)
                return
            props = msg.properties
            message = Message(
                topic,
                bytes(msg.payload),
                getattr(props, "ResponseTopic", None),
                getattr(props, "CorrelationData", None),
                msg.mid,
            )
            item = _Inbound(message, msg.mid, msg.qos, conn.generation)
            while not until.is_set():
                try:
                    inbox.put(item, timeout=0.5)
                except queue.Full:
                    continue
                return
        except Exception:
            log.exception("could not queue a message")

    client = link.make_client(
        mqtt_settings, state, on_connected=on_connected, max_queued=OUTGOING_QUEUE
    )
    client.manual_ack_set(True)
    client.on_message = on_message
    link.start(client, mqtt_settings, receive_maximum=INBOX_MESSAGES)
    log.info("receiving on %s", mqtt_settings.describe())
    next_expire = time.monotonic() + EXPIRE_EVERY_S
    try:
        while not until.is_set():
            if conn.republish.is_set():
                conn.republish.clear()
                _republish_held(client, receiver)
            try:
                item = inbox.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                _process(client, receiver, _gather(inbox, item), conn)
            if time.monotonic() >= next_expire:
                next_expire = time.monotonic() + EXPIRE_EVERY_S
                try:
                    receiver.expire()
                except Exception:
                    log.exception("expiring idle transfers failed")
    finally:
        link.stop(client)
        log.info("stopped receiving on %s", mqtt_settings.describe())


def _gather(inbox: queue.Queue[_Inbound], first: _Inbound) -> list[_Inbound]:
    """``first`` and whatever else is already waiting, within the batch bounds."""
    batch = [first]
    size = len(first.message.payload)
    while len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            break
        batch.append(item)
        size += len(item.message.payload)
    return batch


def _process(
    client: mqtt.Client, receiver: Receiver, batch: list[_Inbound], conn: _Connection
) -> None:
    """Handle a batch, then publish what each message gives and acknowledge it (manual PUBACK).

    A message that arrived on an earlier connection is not acknowledged on
    this one: the broker delivers it again on resuming the session, and it is
    handled again (idempotently) and acknowledged then.
    """
    try:
        answers = receiver.handle_batch([item.message for item in batch])
    except Exception:
        log.exception("could not handle %d message(s)", len(batch))
        return
    for item, out in zip(batch, answers, strict=True):
        try:
            for o in out:
                _publish(client, o)
            if item.qos > 0 and item.generation == conn.generation:
                client.ack(item.mid, item.qos)
        except Exception:
            log.exception("could not answer a message on %r", item.message.topic[:300])


def _publish(client: mqtt.Client, o: Outgoing) -> None:
    info = client.publish(
        o.topic,
        o.payload,
        qos=1,
        retain=o.retain,
        properties=link.publish_properties(correlation=o.correlation),
    )
    if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
        # The station asks again (result and receipt timeouts); nothing is lost.
        log.warning("outgoing queue full; dropped a message to %s", o.topic)


def _republish_held(client: mqtt.Client, receiver: Receiver) -> None:
    try:
        held = receiver.held_notes()
    except Exception:
        log.exception("could not read the held checkpoints")
        return
    for station, note in held:
        _publish(client, Outgoing(receiver.topics(station).held, note.encode(), retain=True))
