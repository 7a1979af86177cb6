"""The wire formats of an upload, shared by the dock's sender and the platform's receiver.

The transfer follows EMQX's "file transfer over MQTT" (EIP-0021; EMQX 5.1+,
asynchronous variant from 5.3.2), so that a stock EMQX cluster can take
evidock's uploads:

    {prefix}/{file_id}/init                 JSON FileMeta
    {prefix}/{file_id}/{offset}/{sha256}    the bytes [offset, offset+len)
    {prefix}/{file_id}/fin/{size}/{sha256}  empty

all QoS 1 under MQTT 5. In the asynchronous variant (``$file-async``) the
outcome of each command is not the PUBACK but a result message on the
command's MQTT 5 Response-Topic, echoing its Correlation-Data, with the JSON
``{"vsn", "topic", "packet_id", "reason_code", "reason_description"}``. Behind a
broker that does not implement file transfer (mosquitto), those results come
from `evidock receive`; the PUBACK only says the broker took the message.

Two kinds of broker (``[upload] broker``), two prefixes:

* ``emqx``: a stock EMQX (e5.3.2+, file transfer enabled) consumes the commands
  itself. Its prefix is ``$file-async`` alone: emqx_ft.erl ``on_file_command``
  splits the topic as ``[_FTPrefix, FileIdIn | Rest]``, so a level between the
  prefix and the file id would be read as the file id. The transfer is scoped
  by ``{ClientId, FileId}`` (emqx_ft.erl ``transfer/2``), so the client id stays
  ``evidock-{station}``. ``user_data`` is tiny (``emqx_user_data``) and the
  provenance travels in the ledger mirror (``MirrorBatch``).
* ``mosquitto``: a broker that routes the commands to `evidock receive`. The
  prefix is ``$file-async/{station}`` so a broker ACL can let each station
  publish only its own transfers, and ``user_data`` carries the file's ledger
  entry, its inclusion proof, the station's signed checkpoint and a
  consistency proof from the checkpoint the platform already holds
  (Provenance).

The file id is the file's SHA-256, so a resent file is the same transfer.
Receipts are C2SP signed notes by the platform key whose text is one line of
canonical JSON (Receipt).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from hashing import canonical
from hashing.errors import InputError
from hashing.merkle import HASH_SIZE
from hashing.note import NoteSigner, NoteVerifier, open_note, sign_note

BROKER_EMQX = "emqx"
BROKER_MOSQUITTO = "mosquitto"
BROKERS = (BROKER_EMQX, BROKER_MOSQUITTO)
DEFAULT_PREFIX = "$file-async/{station}"  # the mosquitto kind's (and `evidock receive`'s)
EMQX_PREFIX = "$file-async"  # the only prefix emqx_ft's asynchronous variant parses
DOCK_TOPICS = "evidock/v1/docks/{station}"
RESULT_VSN = "0.1"

# EIP-0021 "Reason codes": what each PUBACK / result code asks of the client.
RC_SUCCESS = 0x00
RC_RESTART = 0x10  # "no matching subscribers": retransmit every segment
RC_RETRY = 0x80  # segment: resend it; fin: resend all segments
RC_CANCEL = 0x83  # give up this transfer
RC_QUOTA = 0x97  # pause, then resend

MAX_NAME_BYTES = 240  # EMQX: "the binary length of the name should not exceed 240 bytes"
MAX_META_BYTES = 64 * 1024  # an init payload: proofs are ~1 KiB, a checkpoint ~200 bytes
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_STATION_LEVEL = re.compile(r"[^/+#\x00-\x1f\x7f]{1,64}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{what} is not standard base64") from e


def _hashes(value: object, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise InputError(f"{what} must be a list of at most 64 base64 hashes")
    out = tuple(_b64(h, what) for h in value)
    if any(len(h) != HASH_SIZE for h in out):
        raise InputError(f"{what} holds a value that is not a SHA-256 hash")
    return out


def check_file_id(file_id: str) -> str:
    """``file_id`` if it is a lowercase SHA-256 hex digest; raises InputError otherwise."""
    if not SHA256_RE.fullmatch(file_id):
        raise InputError(f"file id {file_id!r} is not a lowercase SHA-256 hex digest")
    return file_id


# -- topics -----------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A parsed file-transfer command topic."""

    station: str | None  # from the prefix's {station} level, if it has one
    file_id: str
    kind: str  # "init" | "segment" | "fin" | "abort"
    offset: int | None = None  # segment
    size: int | None = None  # fin
    checksum: str | None = None  # segment or fin, lowercase hex


@dataclass(frozen=True)
class Topics:
    """Every topic one station uses, from the configured command prefix."""

    station: str
    prefix_template: str = DEFAULT_PREFIX

    @property
    def prefix(self) -> str:
        """The command prefix with this station filled in."""
        return self.prefix_template.replace("{station}", self.station)

    def init(self, file_id: str) -> str:
        """``{prefix}/{file_id}/init``."""
        return f"{self.prefix}/{file_id}/init"

    def segment(self, file_id: str, offset: int, checksum: str) -> str:
        """``{prefix}/{file_id}/{offset}/{checksum}``: the segment's own SHA-256 hex."""
        return f"{self.prefix}/{file_id}/{offset}/{checksum}"

    def fin(self, file_id: str, size: int, checksum: str) -> str:
        """``{prefix}/{file_id}/fin/{size}/{checksum}``: the whole file's SHA-256 hex."""
        return f"{self.prefix}/{file_id}/fin/{size}/{checksum}"

    def abort(self, file_id: str) -> str:
        """``{prefix}/{file_id}/abort``: the platform drops what it holds of the file."""
        return f"{self.prefix}/{file_id}/abort"

    def _dock(self, leaf: str) -> str:
        return f"{DOCK_TOPICS.format(station=self.station)}/{leaf}"

    @property
    def results(self) -> str:
        """The Response-Topic the dock sets on every command."""
        return self._dock("results")

    @property
    def receipts(self) -> str:
        """Where the platform publishes its signed receipts for this station."""
        return self._dock("receipts")

    @property
    def checkpoint(self) -> str:
        """The dock's latest signed checkpoint, retained (design.md step 10)."""
        return self._dock("checkpoint")

    @property
    def held(self) -> str:
        """The checkpoint the platform holds for this station, retained by the receiver."""
        return self._dock("held")

    @property
    def ledger(self) -> str:
        """Where the dock mirrors its ledger to the platform (``MirrorBatch``, EMQX kind)."""
        return self._dock("ledger")


def check_prefix(template: str) -> str:
    """A command prefix: ``$file-async`` (stock EMQX) or one with a ``{station}`` level."""
    levels = template.split("/")
    if not template or any(not lv for lv in levels) or any(c in template for c in "+#"):
        raise InputError(f"topic prefix {template!r}: levels must be non-empty, no wildcards")
    if "{station}" in template and levels.count("{station}") != 1:
        raise InputError(f"topic prefix {template!r}: {{station}} must be one whole level")
    return template


def broker_prefix(broker: str, template: str, *, station_level: bool = True) -> str:
    """The command prefix for ``broker`` (``BROKERS``): ``template``, or the kind's own
    when it is empty. Raises InputError for a kind or a prefix the broker cannot parse,
    and, with ``station_level``, for a mosquitto prefix without a ``{station}`` level.

    EMQX reads the level after the prefix as the file id (emqx_ft.erl
    ``on_file_command``: ``[_FTPrefix, FileIdIn | Rest]``), so only
    ``$file-async`` itself works there; evidock's transfers need the
    asynchronous variant (results on the Response-Topic), hence not ``$file``.
    For mosquitto the station level is what the shipped ACL confines a dock
    to (``pattern write $file-async/%u/#``).
    """
    if broker not in BROKERS:
        raise InputError(f"broker {broker!r}: choose one of {', '.join(map(repr, BROKERS))}")
    if broker == BROKER_EMQX:
        if template not in ("", EMQX_PREFIX):
            raise InputError(
                f"topic_prefix {template!r}: EMQX parses only {EMQX_PREFIX!r} (it reads the "
                "level after it as the file id); leave topic_prefix empty",
                hint='for a mosquitto + `evidock receive` platform set broker = "mosquitto"',
            )
        return EMQX_PREFIX
    if not template:
        return DEFAULT_PREFIX
    try:
        check_prefix(template)
    except InputError as e:
        raise InputError(f"topic_prefix: {e}") from e
    if station_level and "{station}" not in template.split("/"):
        raise InputError(
            f"topic_prefix {template!r}: with mosquitto it needs a {{station}} level, which "
            "the broker's ACL confines each dock to",
            hint=f"leave topic_prefix empty for {DEFAULT_PREFIX!r}",
        )
    return template


def command_filter(template: str) -> str:
    """The subscription that receives every station's commands under ``template``."""
    return template.replace("{station}", "+") + "/#"


def parse_command(topic: str, template: str) -> Command:
    """Parse a command topic under ``template``. Raises InputError naming the fault."""
    levels = topic.split("/")
    pattern = template.split("/")
    if len(levels) < len(pattern) + 2:
        raise InputError(f"topic {topic!r} is not a file-transfer command")
    station = None
    for want, got in zip(pattern, levels, strict=False):
        if want == "{station}":
            if not _STATION_LEVEL.fullmatch(got):
                raise InputError(f"topic {topic!r}: bad station level")
            station = got
        elif want != got:
            raise InputError(f"topic {topic!r} is not under {template!r}")
    file_id, rest = levels[len(pattern)], levels[len(pattern) + 1 :]
    check_file_id(file_id)
    if rest == ["init"]:
        return Command(station, file_id, "init")
    if rest == ["abort"]:
        return Command(station, file_id, "abort")
    if rest[0] == "fin" and len(rest) in (2, 3):
        return Command(
            station,
            file_id,
            "fin",
            size=_decimal(rest[1], topic),
            checksum=_checksum(rest[2], topic) if len(rest) == 3 else None,
        )
    if len(rest) in (1, 2) and rest[0] != "fin":
        return Command(
            station,
            file_id,
            "segment",
            offset=_decimal(rest[0], topic),
            checksum=_checksum(rest[1], topic) if len(rest) == 2 else None,
        )
    raise InputError(f"topic {topic!r}: unknown file-transfer command")


def _decimal(text: str, topic: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise InputError(f"topic {topic!r}: {text!r} is not a decimal byte count")
    return int(text)


def _checksum(text: str, topic: str) -> str:
    if not SHA256_RE.fullmatch(text):
        raise InputError(f"topic {topic!r}: {text!r} is not a lowercase SHA-256 hex digest")
    return text


def correlation(file_id: str, kind: str, offset: int | None = None) -> bytes:
    """Correlation-Data of a command: which file, which command (MQTT 5 §4.10).

    Packet ids are reused by the client, so results are matched on this instead."""
    return f"{file_id}/{kind}".encode() if offset is None else f"{file_id}/{kind}/{offset}".encode()


def parse_correlation(data: bytes) -> tuple[str, str, int | None]:
    """(file id, kind, segment offset or None) from ``correlation``'s bytes.

    Raises InputError for anything evidock did not write."""
    try:
        parts = data.decode("ascii").split("/")
    except UnicodeDecodeError as e:
        raise InputError("correlation data is not ASCII") from e
    if len(parts) == 2 and parts[1] in ("init", "fin", "abort"):
        return check_file_id(parts[0]), parts[1], None
    if len(parts) == 3 and parts[1] == "segment" and _DECIMAL.fullmatch(parts[2]):
        return check_file_id(parts[0]), "segment", int(parts[2])
    raise InputError(f"correlation data {data[:80]!r} is not evidock's")


# -- init metadata ------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file name EMQX stores as is: percent-encode what it would, cap at 240 bytes."""
    out = []
    for c in name:
        if c in "/\\%:" or not c.isprintable():
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    text = "".join(out) or "recording"
    if text in (".", ".."):
        text = text.replace(".", "%2E")
    while len(text.encode()) > MAX_NAME_BYTES:
        text = text[:-1]
    return text


@dataclass(frozen=True)
class FileMeta:
    """The ``init`` payload (EMQX "Init Command")."""

    name: str
    size: int
    checksum: str
    expire_at: int
    segments_ttl: int
    user_data: Mapping[str, Any]

    def to_json(self) -> bytes:
        """Compact JSON; ``expire_at`` only when set (EMQX reads 0 as expired)."""
        value: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "checksum": self.checksum,
            "segments_ttl": self.segments_ttl,
            "user_data": self.user_data,
        }
        if self.expire_at:  # EMQX reads 0 as "expired at the epoch"; absent means never
            value["expire_at"] = self.expire_at
        return json.dumps(
            value,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> FileMeta:
        """Strict: evidock's receiver needs size, checksum and user_data, which EMQX leaves optional."""
        if len(payload) > MAX_META_BYTES:
            raise InputError(f"init payload is {len(payload)} bytes; at most {MAX_META_BYTES}")
        try:
            value = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"init payload is not JSON: {e}") from e
        if not isinstance(value, dict):
            raise InputError("init payload is not a JSON object")
        name, size, checksum = value.get("name"), value.get("size"), value.get("checksum")
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
            raise InputError("init name must be a string of 1-240 bytes")
        if not _is_int(size) or size < 0:
            raise InputError("init size must be a non-negative integer")
        if not isinstance(checksum, str) or not SHA256_RE.fullmatch(checksum):
            raise InputError("init checksum must be a lowercase SHA-256 hex digest")
        expire_at, ttl = value.get("expire_at", 0), value.get("segments_ttl", 0)
        if not _is_int(expire_at) or not _is_int(ttl) or expire_at < 0 or ttl < 0:
            raise InputError("init expire_at and segments_ttl must be non-negative integers")
        user_data = value.get("user_data")
        if not isinstance(user_data, dict):
            raise InputError("init user_data must be an object (evidock's provenance)")
        return cls(name, size, checksum, expire_at, ttl, user_data)


@dataclass(frozen=True)
class Provenance:
    """``user_data``: why the platform may believe this file is the station's.

    ``entry`` is the exact canonical bytes of the file's ``ingest`` entry;
    ``inclusion`` proves it is leaf ``entry.seq`` of the tree signed in
    ``checkpoint``; ``consistency`` proves that tree extends the one of size
    ``consistency_from`` the platform already holds (empty when equal or 0).
    """

    station: str
    entry: bytes
    inclusion: tuple[bytes, ...]
    checkpoint: str
    consistency_from: int
    consistency: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``user_data`` object: hashes in standard base64, the entry as its text."""
        return {
            "evidock": 1,
            "station": self.station,
            "entry": self.entry.decode(),
            "inclusion": [base64.b64encode(h).decode() for h in self.inclusion],
            "checkpoint": self.checkpoint,
            "consistency_from": self.consistency_from,
            "consistency": [base64.b64encode(h).decode() for h in self.consistency],
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Provenance:
        """Strict parse of ``user_data``; the proofs are checked by the receiver, not
        here. Raises InputError naming the field."""
        version = value.get("evidock")
        if not (_is_int(version) and version == 1):
            raise InputError("user_data is not evidock provenance version 1")
        station, entry, note = value.get("station"), value.get("entry"), value.get("checkpoint")
        start = value.get("consistency_from")
        if not isinstance(station, str) or not isinstance(entry, str) or not isinstance(note, str):
            raise InputError("user_data station, entry and checkpoint must be strings")
        if not _is_int(start) or start < 0:
            raise InputError("user_data consistency_from must be a non-negative integer")
        raw = entry.encode()
        if canonical.dumps(canonical.loads(raw)) != raw:
            raise InputError("user_data entry is not canonical JSON")
        return cls(
            station,
            raw,
            _hashes(value.get("inclusion"), "user_data inclusion"),
            note,
            start,
            _hashes(value.get("consistency"), "user_data consistency"),
        )


def emqx_user_data(station: str, seq: int) -> dict[str, Any]:
    """``user_data`` for the EMQX kind: ``{"evidock": 1, "seq": ..., "station": ...}``.

    Tiny and fixed per transfer, so the filemeta fits S3's 2 KB user metadata
    (emqx_ft_storage_exporter_s3.erl carries the filemeta there) and a re-sent
    init equals the stored one (emqx_ft_storage_fs.erl ``store_filemeta``). The
    provenance itself reaches the platform through the ledger mirror. Keys in
    sorted order, so its JSON is canonical.
    """
    return {"evidock": 1, "seq": seq, "station": station}


# -- the ledger mirror (EMQX kind) -----------------------------------------------

MIRROR_MAX_ENTRIES = 256
MIRROR_MAX_BYTES = 512 * 1024


@dataclass(frozen=True)
class MirrorBatch:
    """One message on ``evidock/v1/docks/{station}/ledger``: entries ``start`` ..
    ``start + len(entries) - 1`` of the station's ledger, exactly as stored, and the
    station's signed checkpoint of size ``start + len(entries)``.

    The platform, holding every entry, recomputes the tree itself (RFC 9162
    §2.1.1) and checks it against the signed root: no proof travels, and
    nothing of it has to fit EMQX's frozen filemeta or S3's 2 KB.
    """

    start: int
    entries: tuple[bytes, ...]
    checkpoint: str  # the signed note, text

    @property
    def end(self) -> int:
        """The checkpoint's tree size."""
        return self.start + len(self.entries)

    def to_json(self) -> bytes:
        """Canonical JSON ``{"checkpoint", "entries" (standard base64), "from"}``."""
        return canonical.dumps(
            {
                "from": self.start,
                "entries": [base64.b64encode(e).decode() for e in self.entries],
                "checkpoint": self.checkpoint,
            }
        )

    @classmethod
    def from_json(cls, payload: bytes) -> MirrorBatch:
        """Strict parse (canonical JSON, the limits); the entries and the checkpoint are
        judged by the platform, not here. Raises InputError naming the fault."""
        if len(payload) > MIRROR_MAX_BYTES:
            raise InputError(f"ledger batch is {len(payload)} bytes; at most {MIRROR_MAX_BYTES}")
        value = canonical.loads(payload)
        if not isinstance(value, dict) or set(value) != {"from", "entries", "checkpoint"}:
            raise InputError("ledger batch must hold exactly from, entries and checkpoint")
        start, entries, note = value["from"], value["entries"], value["checkpoint"]
        if not _is_int(start) or start < 0 or not isinstance(note, str):
            raise InputError("ledger batch from must be a non-negative integer, checkpoint a note")
        if not isinstance(entries, list) or not 0 < len(entries) <= MIRROR_MAX_ENTRIES:
            raise InputError(f"ledger batch entries must be a list of 1-{MIRROR_MAX_ENTRIES}")
        return cls(start, tuple(_b64(e, "ledger batch entry") for e in entries), note)


def mirror_payload_bytes(entry_bytes: int, entries: int, checkpoint_bytes: int) -> int:
    """An upper bound on ``MirrorBatch.to_json()``'s length, from the raw sizes: base64
    is 4 bytes per 3 (rounded up per entry), plus quotes and commas, plus a checkpoint
    note whose newlines JSON escapes (2 bytes each: at most the note's length again)."""
    return 4 * (entry_bytes + 2 * entries) // 3 + 3 * entries + 2 * checkpoint_bytes + 64


# -- refusals from a stock EMQX ---------------------------------------------------

PERMANENT, RESTART, TRANSIENT = "permanent", "restart", "transient"

# EMQX answers every error with PUBACK 0x80 (emqx_ft.erl ``result_to_rc``); what went
# wrong is the result message's ``reason_description``, which emqx_ft_error.erl
# ``format/1`` makes from the error term: an atom's name, the first atom of a
# 2-tuple, else "internal_error". Where each comes from, and what it asks of us:
#
#   description           from (apps/emqx_ft/src/)                          verdict
#   filemeta_conflict     emqx_ft_storage_fs.erl store_filemeta: a second   permanent
#                         init differs from the stored filemeta
#   invalid_filemeta      emqx_ft_schema.erl decode/2 (hocon check; also    permanent
#                         a name refused by emqx_ft_fs_util.erl
#                         is_filename_safe or over 240 bytes, and
#                         segments_ttl 0: pos_integer())
#   invalid_filemeta_json emqx_ft_schema.erl decode/2: not JSON             permanent
#   invalid_file_command  emqx_ft.erl do_on_file_command: unknown Rest      permanent
#   invalid_offset        emqx_ft.erl do_validate (offset not decimal)      permanent
#   invalid_size          emqx_ft.erl do_validate (fin size not decimal)    permanent
#   invalid_checksum      emqx_ft.erl do_validate / parse_checksum          permanent
#   invalid_fileid        emqx_ft.erl do_validate (empty file id)           permanent
#   invalid_topic         emqx_ft.erl on_file_command (no levels)           permanent
#   checksum_mismatch     segment: emqx_ft.erl do_validate integrity (the    transient
#                         bytes arrived different: resend them); fin: the    permanent
#                         contract's word for a whole-file mismatch
#   incomplete            emqx_ft_assembler.erl list_remote_fragments:       restart
#                         segments missing (GC'd past segments_ttl, a node
#                         gone): send the whole file again
#   internal_error        emqx_ft.erl store_filemeta / store_segment /       transient
#                         assemble catch-alls, and any 3-tuple: note that
#                         emqx_ft_storage_exporter.erl verify_checksum's
#                         {checksum_mismatch, Algo, Hex} is a 3-tuple, so a
#                         fin whose assembled file mismatches says this
#   timeout               emqx_ft.erl on_complete: assembly over its time    transient
#   read_segment, eacces, enospc, ... (file:posix() of                       transient
#                         emqx_ft_storage_fs.erl, export errors)
#
# ``unsupported_ft_operation`` and ``export_failed`` do not occur in emqx_ft's
# source (HEAD of August 2026); like every unknown description they are transient.
_EMQX_PERMANENT = frozenset(
    {
        "filemeta_conflict",
        "invalid_filemeta",
        "invalid_filemeta_json",
        "invalid_file_command",
        "invalid_offset",
        "invalid_size",
        "invalid_checksum",
        "invalid_fileid",
        "invalid_topic",
    }
)


def emqx_refusal(kind: str, description: str) -> str:
    """What an EMQX error result for command ``kind`` asks: ``PERMANENT`` (fail the
    transfer with the reason, never retried), ``RESTART`` (send the whole file again)
    or ``TRANSIENT`` (send the command again after a pause). See the table above."""
    word = description.strip()
    if word in _EMQX_PERMANENT:
        return PERMANENT
    if word == "checksum_mismatch":
        return PERMANENT if kind == "fin" else TRANSIENT
    if word == "incomplete" and kind == "fin":
        return RESTART
    return TRANSIENT


# The mosquitto receiver's RC_RETRY texts that ask for an init built afresh (a newer
# consistency proof, a newer checkpoint): receiver.service ``Receiver._judge``.
NEWER_PROOF_ASKED = ("send a consistency proof from size", "send a checkpoint of size")


def asks_newer_proof(description: str) -> bool:
    """Whether a mosquitto receiver's init refusal asks for fresh provenance."""
    return any(p in description for p in NEWER_PROOF_ASKED)


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A command's outcome (EMQX ``$file-response`` format, plus evidock's ``held_size``)."""

    topic: str
    packet_id: int
    reason_code: int
    reason_description: str
    held_size: int | None = None  # init results from evidock: the platform's checkpoint size

    @property
    def ok(self) -> bool:
        """Reason code 0x00: the command succeeded (anything else did not)."""
        return self.reason_code == RC_SUCCESS

    def to_json(self) -> bytes:
        """The result message's payload (``held_size`` only when known)."""
        value: dict[str, Any] = {
            "vsn": RESULT_VSN,
            "topic": self.topic,
            "packet_id": self.packet_id,
            "reason_code": self.reason_code,
            "reason_description": self.reason_description,
        }
        if self.held_size is not None:
            value["held_size"] = self.held_size
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> Result:
        """Parse a result message. Raises InputError naming the fault."""
        try:
            value = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"result is not JSON: {e}") from e
        if not isinstance(value, dict):
            raise InputError("result is not a JSON object")
        topic, pid, rc = value.get("topic"), value.get("packet_id", 0), value.get("reason_code")
        text, held = value.get("reason_description", ""), value.get("held_size")
        if not isinstance(topic, str) or not _is_int(rc) or not 0 <= rc <= 0xFF:
            raise InputError("result needs a topic and a reason_code 0-255")
        if not _is_int(pid) or not isinstance(text, str):
            raise InputError("result packet_id must be an integer, reason_description a string")
        if held is not None and (not _is_int(held) or held < 0):
            raise InputError("result held_size must be a non-negative integer")
        return cls(topic, pid, rc, text, held)


# -- receipts -----------------------------------------------------------------

RECEIPT_TYPE = "evidock-receipt"


@dataclass(frozen=True)
class Receipt:
    """The platform's signed statement that it stored a byte-exact copy (design.md step 8)."""

    station: str
    sha256: str
    size: int
    seq: int  # the file's ingest entry in the station's ledger
    stored_at: str  # RFC 3339 UTC
    held_size: int  # the station checkpoint the platform held when it stored the file

    def text(self) -> str:
        """The note text: one line of canonical JSON and a newline."""
        body = {
            "type": RECEIPT_TYPE,
            "v": 1,
            "station": self.station,
            "sha256": self.sha256,
            "size": self.size,
            "seq": self.seq,
            "stored_at": self.stored_at,
            "held_size": self.held_size,
        }
        return canonical.dumps(body).decode() + "\n"

    def sign(self, signer: NoteSigner) -> str:
        """The receipt as a C2SP signed note by ``signer`` (the platform key)."""
        return sign_note(self.text(), [signer])

    @classmethod
    def open(cls, note: str | bytes, verifiers: Sequence[NoteVerifier]) -> Receipt:
        """Verify a receipt note. Raises InputError (malformed) or SignatureError."""
        opened = open_note(note, list(verifiers))
        try:
            value = canonical.loads(opened.text[:-1].encode())
        except InputError as e:
            raise InputError(f"receipt text is not canonical JSON: {e}") from e
        if not isinstance(value, dict) or value.get("type") != RECEIPT_TYPE or value.get("v") != 1:
            raise InputError("note is not an evidock receipt version 1")
        fields = ("station", "sha256", "size", "seq", "stored_at", "held_size")
        if set(value) != {"type", "v", *fields}:
            raise InputError("receipt has missing or unknown fields")
        station, sha, size, seq = value["station"], value["sha256"], value["size"], value["seq"]
        stored_at, held = value["stored_at"], value["held_size"]
        if not isinstance(station, str) or not isinstance(stored_at, str):
            raise InputError("receipt station and stored_at must be strings")
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
            raise InputError("receipt sha256 is not a lowercase hex digest")
        if not all(_is_int(n) and n >= 0 for n in (size, seq, held)):
            raise InputError("receipt size, seq and held_size must be non-negative integers")
        return cls(station, sha, size, seq, stored_at, held)
