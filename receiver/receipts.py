"""The platform's receipt service for a stock EMQX cluster (``[receiver] source = "emqx"``).

With EMQX the platform never sees an upload's messages: EMQX assembles the
file and exports it (``receiver.exports``). This service closes the loop:

1. It holds each station to its history through the ledger mirror
   (``receiver.mirror``): ``handle_ledger`` judges each message, stores what
   extends the mirror (entries, subtrees and the checkpoint, one
   transaction), records refusals (``receiver.history``) and publishes the
   held checkpoint, retained, on ``evidock/v1/docks/{station}/held``.
2. ``poll`` reads what EMQX exported and, for each export: the station from
   the client id (``evidock-{station}``, a configured station); ``user_data``
   ``{"evidock": 1, "seq": N, "station": S}``; the mirrored entry N must be an
   ``ingest`` entry whose ``sha256`` is the file id and the filemeta checksum
   and whose ``size`` is the filemeta size (while the mirror has not reached
   N the export waits, it is not refused); the bytes are re-hashed while
   they are copied into the content-addressed store (fsynced); then a
   receipt signed by the platform key (the same key, format and topic as
   ``evidock receive``) goes QoS 1 to ``evidock/v1/docks/{station}/receipts``.

Everything is recorded in ``receiver.db`` (``receiver._db``): the mirror,
held checkpoints, refusals, stored files with their receipts, and what
became of every export seen. An export seen again (after a restart, or the
same file exported twice) gives the same receipt again, never a second one.

Sharing the work: the mirror of one station must be applied in order, so all
of a station's ledger messages go to one instance. Stations are split across
instances by hash (``station_partition``: SHA-256 of the station id modulo
``partitions``); every instance reads the same configuration but its own
``partition`` and state folder, subscribes to the ledger topic of every
station and ignores the others' (an MQTT 5 shared subscription would spread
one station's messages over instances and break its order), and takes only
its own stations' exports (for S3, by key prefix). SQLite holds each
partition's state, so one process per partition; two on one state folder are
refused by the lock ``evidock receive`` takes.

``ReceiptService`` does disk and SQLite but no network, so every case is
tested without a broker; ``serve_exports`` is the network shell.
"""

from __future__ import annotations

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
from hashing.entries import INGEST, Entry, check_station_id
from hashing.errors import ConfigError, InputError, TransientError
from hashing.note import NoteVerifier
from hashing.retention import UPLOAD_RECEIPT
from hashing.store import Store
from receiver import mirror
from receiver._db import ExportRow, ReceiverDB, Refusal, StoredFile
from receiver._keys import load_signer, utc_now
from receiver.exports import CHUNK, Export, ExportSource, Listing
from receiver.history import record_refusal
from receiver.service import DB_FILE, Outgoing
from uploader import link, protocol
from uploader.link import LinkState, MqttSettings

log = logging.getLogger(__name__)
OWED = 64  # receipts re-sent per mirror message at most; the rest follow the next ones

CLIENT_PREFIX = "evidock-"  # a dock's MQTT client id is evidock-{station} (the contract)
USER_DATA_KEYS = frozenset({"evidock", "station", "seq"})
LEDGER_FILTER = protocol.DOCK_TOPICS.format(station="+") + "/" + mirror.LEDGER_LEAF
_DOCK_LEVELS = protocol.DOCK_TOPICS.split("/")

RECEIPTED, REFUSED, WAITING = "receipted", "refused", "waiting"
# A refusal after the bytes were read is not looked at again for the same object
# (size and mtime or ETag): re-hashing a large file every poll proves nothing new.
FINAL_REFUSALS = ("bytes",)


def station_partition(station: str, partitions: int) -> int:
    """Which of ``partitions`` instances serves ``station``: stable, even, config-free."""
    return int.from_bytes(hashlib.sha256(station.encode()).digest()[:8], "big") % partitions


@dataclass(frozen=True)
class ExportSettings:
    """What the EMQX receipt service is configured with ([receiver]).

    Raises ConfigError on a station id that is not one, a station without a
    pinned key, or a partition that does not exist.
    """

    home: Path
    stations: Mapping[str, tuple[NoteVerifier, ...]]
    poll_s: float = 10.0
    partition: int = 0
    partitions: int = 1
    key_name: str = "evidock-platform"

    def __post_init__(self) -> None:
        for station, keys in self.stations.items():
            try:
                check_station_id(station)
            except InputError as e:
                raise ConfigError(f"receiver station: {e}") from e
            if not keys:
                raise ConfigError(f"receiver station {station}: no checkpoint key is pinned")
        if self.partitions < 1 or not 0 <= self.partition < self.partitions:
            raise ConfigError(
                f"receiver partition {self.partition} of {self.partitions}: "
                "need 0 <= partition < partitions"
            )
        if self.poll_s <= 0:
            raise ConfigError("receiver poll_s must be positive")

    def owns(self, station: str) -> bool:
        """Whether this instance serves ``station`` (configured or not)."""
        return station_partition(station, self.partitions) == self.partition

    @property
    def mine(self) -> list[str]:
        """The configured stations this instance serves."""
        return sorted(s for s in self.stations if self.owns(s))


class _DbMirror:
    """``mirror.MirrorView`` over ``receiver.db`` for one station."""

    def __init__(self, db: ReceiverDB, station: str) -> None:
        self._db = db
        self._station = station
        self.size = db.mirror_size(station)
        held = db.held(station)
        self.origin = None if held is None else held.origin

    def entry(self, seq: int) -> bytes:
        raw = self._db.mirror_entry(self._station, seq)
        if raw is None:
            raise LookupError(f"station {self._station}: mirrored entry {seq} is missing")
        return raw

    def node(self, level: int, index: int) -> bytes:
        h = self._db.mirror_node(self._station, level, index)
        if h is None:
            raise LookupError(f"station {self._station}: mirror node {level}/{index} is missing")
        return h


class _Refused(Exception):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


class _Wait(Exception):  # noqa: N818 - a control-flow signal, not an error
    pass


@dataclass(frozen=True)
class _Claim:
    """What an export says it is, once checked against the mirror."""

    station: str
    file_id: str
    size: int
    seq: int
    name: str


class ReceiptService:
    """The state folder and the handling of mirror messages and exports.

    ``home`` is laid out as ``evidock receive``'s (``receiver.db``,
    ``keys/receipt.key``, ``store/``, ``staging/``; all 0700), so the platform
    key and the stored files are the same whichever path a deployment uses.
    Thread-safe: calls are serialised by one lock.
    """

    def __init__(self, settings: ExportSettings, sources: Sequence[ExportSource]) -> None:
        self.settings = settings
        self.sources = tuple(sources)
        os.umask(0o077)
        make_private_dir(settings.home)
        self._signer = load_signer(settings.home / "keys", settings.key_name)
        self._store = Store(settings.home / "store", settings.home / "staging")
        self._store.ensure()
        for part in self._store.clean_stale_staging():
            log.warning("removed a partial copy left by a stopped service: %s", part.name)
        self._db = ReceiverDB(settings.home / DB_FILE)
        self._lock = threading.RLock()
        self._seen: set[tuple[str, str, str]] = set()  # exports this process has answered

    @property
    def verifier(self) -> NoteVerifier:
        """The key docks pin as ``[upload] platform_key`` to check receipts."""
        return self._signer.verifier

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def refusals(self, station: str | None = None) -> list[Refusal]:
        """Checkpoints refused (forks, rollbacks, bad entries), oldest first."""
        with self._lock:
            return self._db.refusals(station)

    def exports(self, status: str | None = None) -> list[tuple[str, str, ExportRow]]:
        """(source, key, outcome) of every export seen."""
        with self._lock:
            return self._db.exports(status)

    def held_notes(self) -> list[tuple[str, str]]:
        """(station, note) of the checkpoints held, for this instance's stations."""
        with self._lock:
            return [(s, n) for s, n in self._db.held_all() if self.settings.owns(s)]

    def mirror_size(self, station: str) -> int:
        """How many of ``station``'s entries are mirrored."""
        with self._lock:
            return self._db.mirror_size(station)

    def stored(self, sha256: str) -> Path | None:
        """The stored copy of a file, if there is one."""
        if not protocol.SHA256_RE.fullmatch(sha256):
            return None
        with self._lock:
            if not self._db.has_file(sha256):
                return None
        path = self._store.path_for(sha256)
        return path if path.is_file() else None

    # -- the ledger mirror ---------------------------------------------------------

    @staticmethod
    def ledger_station(topic: str) -> str | None:
        """The station of ``evidock/v1/docks/{station}/ledger``."""
        levels = topic.split("/")
        if len(levels) != len(_DOCK_LEVELS) + 1 or levels[-1] != mirror.LEDGER_LEAF:
            return None
        if levels[:-2] != _DOCK_LEVELS[:-1]:
            return None
        return levels[-2]

    def handle_ledger(self, topic: str, payload: bytes) -> list[Outgoing]:
        """One mirror message in; what to publish out (the held checkpoint, retained).

        Never raises for anything in the message: an unknown station or a
        malformed message is logged and ignored, a contradiction is refused
        and recorded. Whatever it publishes is durable when it returns.
        """
        station = self.ledger_station(topic)
        if station is None or not self.settings.owns(station):
            return []
        keys = self.settings.stations.get(station)
        if keys is None:
            log.warning("ignored a ledger mirror message of unknown station %r", station[:80])
            return []
        if not payload:
            return []  # a retained message being cleared: nothing to judge
        try:
            message = mirror.MirrorMessage.from_json(payload)
        except InputError as e:
            log.warning("station %s: ignored a malformed ledger mirror message: %s", station, e)
            return []
        with self._lock:
            decision = mirror.judge(station, keys, _DbMirror(self._db, station), message)
            return self._apply(station, decision)

    def _apply(self, station: str, decision: mirror.Decision) -> list[Outgoing]:
        held_topic = protocol.Topics(station).held
        if isinstance(decision, mirror.Ignore):
            log.info("station %s: ledger mirror message ignored: %s", station, decision.reason)
            return []
        if isinstance(decision, mirror.Refuse):
            record_refusal(self._db, station, decision.kind, decision.detail, decision.note)
            return []
        if isinstance(decision, mirror.Stale):
            held = self._db.held(station)
            out = [] if held is None else [Outgoing(held_topic, held.note.encode(), retain=True)]
            return out + self._owed(station)
        cp = decision.checkpoint.checkpoint
        with self._db.tx():
            self._db.add_mirror(
                station, [(e.seq, e.raw) for e in decision.entries], list(decision.nodes)
            )
            self._db.acknowledge(
                station,
                [
                    (str(e.body.get("sha256")), e.seq)
                    for e in decision.entries
                    if e.type == UPLOAD_RECEIPT
                ],
            )
            self._db.put_checkpoint(
                station,
                cp.size,
                cp.root,
                cp.origin,
                decision.checkpoint.note,
                proven=True,
                at=utc_now(),
            )
        log.info(
            "station %s: mirrored %d new entr%s; now holding its checkpoint of size %d",
            station,
            len(decision.entries),
            "y" if len(decision.entries) == 1 else "ies",
            cp.size,
        )
        return [
            Outgoing(held_topic, decision.checkpoint.note.encode(), retain=True),
            *self._owed(station),
        ]

    def _owed(self, station: str) -> list[Outgoing]:
        """The receipts the station has not recorded yet, published again. A receipt
        lost on its way (the dock's session gone with an EMQX node) is otherwise never
        sent twice: EMQX answers a repeated fin itself and the service never hears of
        it. The dock's mirror message is its word on what it has: each one, a new
        batch or the same one again when a receipt is overdue, gets the missing ones."""
        topic = protocol.Topics(station).receipts
        return [Outgoing(topic, note.encode()) for note in self._db.unacknowledged(station, OWED)]

    # -- exports -------------------------------------------------------------------

    def poll(self) -> list[Outgoing]:
        """Look at every source once; return the receipts to publish.

        Never raises: a source that cannot be read now is logged and tried at
        the next poll; one bad export never stops the others.
        """
        out: list[Outgoing] = []
        client_ids = [CLIENT_PREFIX + s for s in self.settings.mine]
        partitioned = self.settings.partitions > 1
        for source in self.sources:
            try:
                # With partitions, list only this instance's stations (by key prefix in
                # S3); alone, list everything, so an unknown client id is recorded.
                for listing in source.listings(client_ids if partitioned else []):
                    receipt = self._one(source, listing)
                    if receipt is not None:
                        out.append(receipt)
            except TransientError as e:
                log.warning("export source %s: %s; trying again at the next poll", source.name, e)
            except Exception:
                log.exception("export source %s failed", source.name)
        return out

    def _one(self, source: ExportSource, listing: Listing) -> Outgoing | None:
        try:
            with self._lock:
                return self._export(source, listing)
        except TransientError as e:
            log.warning("export %s:%s: %s; trying again later", source.name, listing.key, e)
        except Exception:
            log.exception("export %s:%s could not be handled", source.name, listing.key)
        return None

    def _export(self, source: ExportSource, listing: Listing) -> Outgoing | None:
        ident = (listing.source, listing.key, listing.fingerprint)
        station = listing.client_id.removeprefix(CLIENT_PREFIX)
        if listing.client_id.startswith(CLIENT_PREFIX) and not self.settings.owns(station):
            return None  # another instance's station
        row = self._db.export(*ident)
        if row is not None and row.status == RECEIPTED:
            if ident in self._seen:
                return None
            self._seen.add(ident)
            stored = self._db.file(row.station, row.file_id)
            return None if stored is None else self._receipt_message(stored)
        if row is not None and row.status == REFUSED and row.detail.startswith(FINAL_REFUSALS):
            return None
        try:
            export = source.describe(listing)
            if export is None:
                return None  # its manifest is still being written
            claim = self._claim(export)
            stored = self._db.file(claim.station, claim.file_id)
            if stored is None:
                stored = self._store_file(source, export, claim)
        except _Wait:
            self._record(
                listing, row, WAITING, "the ledger mirror has not reached the entry", station
            )
            return None
        except _Refused as r:
            self._record(listing, row, REFUSED, f"{r.kind}: {r.text}", station)
            return None
        except InputError as e:
            self._record(listing, row, REFUSED, f"filemeta: {e}", station)
            return None
        with self._db.tx():
            self._db.put_export(
                *ident,
                ExportRow(RECEIPTED, "receipt sent", stored.station, stored.sha256),
                utc_now(),
            )
        self._seen.add(ident)
        return self._receipt_message(stored)

    def _record(
        self, listing: Listing, row: ExportRow | None, status: str, detail: str, station: str = ""
    ) -> None:
        if row is not None and (row.status, row.detail) == (status, detail):
            return  # nothing new: logged once, not every poll
        level = logging.ERROR if status == REFUSED else logging.INFO
        log.log(level, "export %s:%s %s: %s", listing.source, listing.key, status, detail)
        with self._db.tx():
            self._db.put_export(
                listing.source,
                listing.key,
                listing.fingerprint,
                ExportRow(status, detail, station, listing.file_id),
                utc_now(),
            )

    def _claim(self, export: Export) -> _Claim:
        """Check an export against its station's mirror (raises _Refused or _Wait)."""
        listing, meta = export.listing, export.filemeta
        if not listing.client_id.startswith(CLIENT_PREFIX):
            raise _Refused("station", f"client id {listing.client_id[:80]!r} is not a dock's")
        station = listing.client_id.removeprefix(CLIENT_PREFIX)
        if station not in self.settings.stations:
            raise _Refused("station", f"station {station[:80]!r} is not configured")
        file_id = listing.file_id
        if not protocol.SHA256_RE.fullmatch(file_id):
            raise _Refused("filemeta", "the file id is not a lowercase SHA-256 hex digest")
        checksum, size, user = meta.get("checksum"), meta.get("size"), meta.get("user_data")
        if not isinstance(checksum, str) or checksum.lower() != file_id:
            raise _Refused("filemeta", "the filemeta checksum is not the file id")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _Refused("filemeta", "the filemeta has no size")
        if not isinstance(user, dict) or set(user) != USER_DATA_KEYS or user["evidock"] != 1:
            raise _Refused("filemeta", 'user_data is not {"evidock": 1, "seq", "station"}')
        seq = user["seq"]
        if user["station"] != station:
            raise _Refused("filemeta", f"user_data names station {str(user['station'])[:80]!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise _Refused("filemeta", "user_data seq is not an entry number")
        if listing.size != size:
            raise _Refused("size", f"the export has {listing.size} bytes, the filemeta {size}")
        if seq >= self._db.mirror_size(station):
            raise _Wait
        raw = self._db.mirror_entry(station, seq)
        if raw is None:
            raise LookupError(f"station {station}: mirrored entry {seq} is missing")
        entry = Entry.parse(raw)
        if entry.type != INGEST:
            raise _Refused("entry", f"entry {seq} is a {entry.type!r} entry, not ingest")
        if entry.body.get("sha256") != file_id:
            raise _Refused("entry", f"entry {seq} records another file")
        if entry.body.get("size") != size:
            raise _Refused("entry", f"entry {seq} records another size")
        name = meta.get("name")
        return _Claim(station, file_id, size, seq, name if isinstance(name, str) else "")

    def _store_file(self, source: ExportSource, export: Export, claim: _Claim) -> StoredFile:
        """Copy the exported bytes into the store, hashing as they pass (one read)."""
        staged = self._store.new_staging_path()
        digest, got = self._copy(source, export, staged)
        if digest != claim.file_id or got != claim.size:
            staged.unlink(missing_ok=True)
            raise _Refused(
                "bytes",
                f"the exported bytes ({got}) hash to {digest}, not the file id and entry",
            )
        self._store.adopt(staged, claim.file_id, claim.size)
        held = self._db.held(claim.station)
        at = utc_now()
        receipt = protocol.Receipt(
            claim.station,
            claim.file_id,
            claim.size,
            claim.seq,
            at,
            0 if held is None else held.size,
        ).sign(self._signer)
        stored = StoredFile(
            claim.station, claim.file_id, claim.size, claim.seq, claim.name, at, receipt
        )
        with self._db.tx():
            self._db.add_file(stored, export.filemeta_raw)
        log.info(
            "station %s: stored %s (%d bytes, entry %d) from %s:%s",
            claim.station,
            claim.file_id,
            claim.size,
            claim.seq,
            export.listing.source,
            export.listing.key,
        )
        return stored

    @staticmethod
    def _copy(source: ExportSource, export: Export, staged: Path) -> tuple[str, int]:
        """Stream into ``staged`` (0600, fsynced) with one reusable buffer; (sha256, bytes)."""
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        total = 0
        stream = source.open(export)
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                while n := stream.readinto(view):
                    h.update(view[:n])
                    written = 0
                    while written < n:
                        written += os.write(fd, view[written:n])
                    total += n
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            staged.unlink(missing_ok=True)
            raise TransientError(f"copying {export.listing.key}: {e}") from e
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        finally:
            stream.close()
        return h.hexdigest(), total

    @staticmethod
    def _receipt_message(stored: StoredFile) -> Outgoing:
        return Outgoing(protocol.Topics(stored.station).receipts, stored.receipt.encode())


# -- the network shell -------------------------------------------------------------

INBOX_MESSAGES = 32
OUTGOING_QUEUE = 1000


@dataclass(frozen=True)
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


def serve_exports(
    service: ReceiptService, mqtt_settings: MqttSettings, until: threading.Event
) -> None:
    """Run the receipt service on a broker until ``until`` is set.

    One MQTT client, subscribed QoS 1 to ``evidock/v1/docks/+/ledger`` (a plain
    subscription, never a shared one: a station's mirror messages must be
    applied in order, by one instance), hands each mirror message in order to
    ``handle_ledger`` in this thread, publishes what it returns and only then
    acknowledges the message (manual PUBACK), so a message the service had not
    finished when it stopped is delivered again (persistent session) and
    judged again, idempotently. Every ``poll_s`` seconds, and at once after
    the mirror grew (an export may have been waiting for it), it polls the
    export sources and publishes the receipts. On every connection it
    subscribes again and re-publishes the held checkpoints, retained.
    """
    state = LinkState(mqtt_settings.describe())
    inbox: queue.Queue[_Inbound] = queue.Queue(maxsize=INBOX_MESSAGES)
    generation = [0]
    republish = threading.Event()

    def on_connected(client: mqtt.Client, _session_present: bool) -> None:
        generation[0] += 1
        client.subscribe([(LEDGER_FILTER, SubscribeOptions(qos=1))])
        republish.set()

    def on_message(client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            client.ack(msg.mid, msg.qos)
            return
        item = _Inbound(topic, bytes(msg.payload), msg.mid, msg.qos, generation[0])
        while not until.is_set():
            try:
                inbox.put(item, timeout=0.5)
            except queue.Full:
                continue
            return

    client = link.make_client(
        mqtt_settings, state, on_connected=on_connected, max_queued=OUTGOING_QUEUE
    )
    client.manual_ack_set(True)
    client.on_message = on_message
    link.start(client, mqtt_settings, receive_maximum=INBOX_MESSAGES)
    log.info(
        "receipt service on %s, polling every %.0f s",
        mqtt_settings.describe(),
        service.settings.poll_s,
    )
    next_poll = time.monotonic()
    try:
        while not until.is_set():
            if republish.is_set():
                republish.clear()
                for station, note in service.held_notes():
                    _publish(
                        client, Outgoing(protocol.Topics(station).held, note.encode(), retain=True)
                    )
            try:
                item = inbox.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                try:
                    out = service.handle_ledger(item.topic, item.payload)
                except Exception:
                    log.exception(
                        "could not handle a ledger mirror message on %r", item.topic[:300]
                    )
                    continue
                for o in out:
                    _publish(client, o)
                if item.qos > 0 and item.generation == generation[0]:
                    client.ack(item.mid, item.qos)
                if out:
                    next_poll = time.monotonic()  # the mirror grew: waiting exports may go now
            if time.monotonic() >= next_poll:
                for o in service.poll():
                    _publish(client, o)
                next_poll = time.monotonic() + service.settings.poll_s
    finally:
        link.stop(client)
        log.info("stopped the receipt service on %s", mqtt_settings.describe())


def _publish(client: mqtt.Client, o: Outgoing) -> None:
    info = client.publish(o.topic, o.payload, qos=1, retain=o.retain)
    if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
        # A receipt is sent again when the export is seen again (next start); the
        # held checkpoint on every connection.
        log.warning("outgoing queue full; dropped a message to %s", o.topic)
