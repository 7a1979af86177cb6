"""Ledger entries: the canonical JSON records that are the tree's leaves.

Every entry has the envelope ``v``, ``seq`` (= its leaf index, from 0),
``type``, ``time`` (UTC, RFC 3339), ``clock`` (where that time came from),
``station``, ``prev`` (hex SHA-256 of the previous entry's bytes; null for
entry 0) and a typed ``body``. The leaf bytes are exactly the entry's
canonical bytes (design.md "Formats").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hashing import canonical
from hashing.errors import InputError
from hashing.merkle import leaf_hash

ENTRY_VERSION = 1
ENVELOPE_KEYS = frozenset({"v", "seq", "type", "time", "clock", "station", "prev", "body"})
STATION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
HEX64_RE = re.compile(r"[0-9a-f]{64}")

# Entry types written by this version. Verifiers accept unknown types (a newer
# dock may write more) but check the bodies of the ones they know.
GENESIS = "genesis"  # {origin, key}: the station and its first verifier key
INGEST = "ingest"  # a recording entered the store
KEY_ROTATION = "key_rotation"  # {old_key, new_key, old_sig, new_sig}
EXPORT = (
    "export"  # {selection, files, out, action, user, role, purpose, recipient} (Art. 18, 20 (3))
)


def check_station_id(station_id: str) -> None:
    """Refuse a station id that cannot name a station everywhere it appears.

    The id goes into the default origin (a signed-note key name) and MQTT
    topics, so it is 1-64 of ``[A-Za-z0-9._-]``, starting with a letter or
    digit. Raises InputError naming the rule.
    """
    if not STATION_ID_RE.fullmatch(station_id):
        raise InputError(
            f"station id {station_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


_TIME_ERROR = 5  # adjtimex(2): "clock not synchronized"


class _Timex(ctypes.Structure):
    # struct timex is 208 bytes on 64-bit Linux; only `modes` (offset 0) matters
    # for a read-only call, the kernel fills the rest.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 204)]


_CLOCK_CACHE_S = 1.0  # the kernel's sync state is re-read at most once a second


@functools.cache
def _adjtimex() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return getattr(libc, "adjtimex", None)


_clock_cache: tuple[float, str] = (-_CLOCK_CACHE_S, "unknown")


def _clock_status() -> str:
    """'ntp' when the kernel says the clock is synchronised, else 'unsynced'.

    An auditor weighing a time needs to know whether it came from a disciplined
    clock; a dock without NTP is flagged in every entry it writes.
    """
    global _clock_cache  # noqa: PLW0603 - a one-second cache of a kernel reading
    now = time.monotonic()
    if now - _clock_cache[0] < _CLOCK_CACHE_S:
        return _clock_cache[1]
    adjtimex = _adjtimex()
    status = "unknown"
    if adjtimex is not None:
        tx = _Timex()
        state = adjtimex(ctypes.byref(tx))
        if state >= 0:
            status = "unsynced" if state == _TIME_ERROR else "ntp"
    _clock_cache = (now, status)
    return status


def clock_reading() -> tuple[str, str]:
    """(RFC 3339 UTC time with microseconds, clock source)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return now, f"system/{_clock_status()}"


def parse_time(text: str) -> datetime:
    """Parse an entry's ``time``: RFC 3339 in UTC with a ``Z``, as ``clock_reading`` writes it.

    Raises InputError for any other spelling (an offset, no seconds): every
    entry's time is UTC, whatever zone the dock was set to.
    """
    if not TIME_RE.fullmatch(text):
        raise InputError(f"time {text!r} is not RFC 3339 UTC (…Z)")
    return datetime.fromisoformat(text[:-1] + "+00:00")


@dataclass(frozen=True)
class Entry:
    """A parsed ledger entry with its exact bytes."""

    raw: bytes
    seq: int
    type: str
    time: str
    clock: str
    station: str
    prev: str | None
    body: Mapping[str, Any]
    v: int = ENTRY_VERSION

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the bytes: what the next entry's ``prev`` holds."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def leaf(self) -> bytes:
        """The RFC 9162 §2.1.1 leaf hash of the entry's bytes: what the tree stores for it."""
        return leaf_hash(self.raw)

    @classmethod
    def parse(cls, raw: bytes) -> Entry:
        """Parse and check an entry's envelope. Raises InputError naming the fault."""
        value = canonical.loads(raw)
        if not isinstance(value, dict):
            raise InputError("entry is not a JSON object")
        missing = ENVELOPE_KEYS - value.keys()
        if missing:
            raise InputError(f"entry lacks {', '.join(sorted(missing))}")
        extra = value.keys() - ENVELOPE_KEYS
        if extra:
            raise InputError(f"entry has unknown fields {', '.join(sorted(extra))}")
        v, seq, kind, body = value["v"], value["seq"], value["type"], value["body"]
        if v != ENTRY_VERSION:
            raise InputError(f"entry version {v!r} is not supported (want {ENTRY_VERSION})")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InputError(f"entry seq {seq!r} is not a leaf index")
        if not isinstance(kind, str) or not kind:
            raise InputError("entry type must be a non-empty string")
        if not isinstance(body, dict):
            raise InputError("entry body must be an object")
        if not isinstance(value["time"], str):
            raise InputError("entry time must be a string")
        parse_time(value["time"])
        if not isinstance(value["clock"], str) or not isinstance(value["station"], str):
            raise InputError("entry clock and station must be strings")
        prev = value["prev"]
        if seq == 0 and prev is not None:
            raise InputError("entry 0 must have prev null")
        if seq > 0 and not (isinstance(prev, str) and HEX64_RE.fullmatch(prev)):
            raise InputError("entry prev must be 64 lowercase hex digits")
        return cls(raw, seq, kind, value["time"], value["clock"], value["station"], prev, body, v)


def build_entry(
    *,
    seq: int,
    kind: str,
    station: str,
    prev: str | None,
    body: Mapping[str, Any],
    time: str | None = None,
    clock: str | None = None,
) -> Entry:
    """Make an entry's canonical bytes and return it parsed (so what is written parses)."""
    if time is None or clock is None:
        time, clock = clock_reading()
    raw = canonical.dumps(
        {
            "v": ENTRY_VERSION,
            "seq": seq,
            "type": kind,
            "time": time,
            "clock": clock,
            "station": station,
            "prev": prev,
            "body": body,
        }
    )
    return Entry.parse(raw)


def rotation_statement(station: str, seq: int, old_key: str, new_key: str) -> bytes:
    """The bytes both keys sign in a key_rotation entry.

    Binding the station and the entry's position stops a rotation from being
    replayed into another log or at another place in this one.
    """
    return f"evidock key rotation v1\n{station}\n{seq}\n{old_key}\n{new_key}\n".encode()
