"""The ledger mirror: how a dock's history reaches a platform behind a stock EMQX.

EMQX consumes every ``$file…`` message itself and carries only a small,
frozen filemeta with each upload (S3 user metadata is limited to 2 KB), so no
proof can ride with the file. Instead the dock mirrors its ledger over
ordinary MQTT, QoS 1, on ``evidock/v1/docks/{station}/ledger``::

    {"checkpoint": "<signed checkpoint note>", "entries": ["<base64>", ...], "from": A}

with the checkpoint's size exactly ``A + len(entries)`` (at most 256 entries
and 512 KiB a message). The platform holds every entry, recomputes the tree
itself (RFC 9162 §2.1.1) and so needs no proof from the dock: a recording's
provenance is its ``ingest`` entry in the mirror.

This module is the pure core (style.md 4): ``MirrorMessage.from_json``
(``uploader.protocol.MirrorBatch``) takes bytes, ``judge`` takes a message, the station's pinned keys and a read-only
``MirrorView`` of what is mirrored, and returns a decision; it never opens a
socket or writes a file. What it decides, per the contract:

- ``from`` past the mirrored size: ``Ignore`` (the dock resends from the held size);
- an entry below the mirrored size not byte-identical to the mirror: ``Refuse``
  ("fork"), never applied;
- a new entry that does not parse (``hashing.entries.Entry``), names another
  station, has ``seq`` other than its index, or does not chain by ``prev``:
  ``Refuse`` ("entry" or "chain");
- a checkpoint not signed by a pinned key: ``Refuse`` ("signature"); of another
  log than the one held: ``Refuse`` ("origin");
- a root that is not the RFC 9162 root of the mirror at the checkpoint's size:
  ``Refuse`` ("fork" at or above the mirrored size, "rollback" below it);
- a consistent checkpoint no larger than the mirror: ``Stale`` (nothing new;
  the held note is published again so the dock sees where the platform is);
- otherwise ``Extend``: the new entries, the complete subtrees they close, and
  the checkpoint to hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hashing.checkpoint import SignedCheckpoint
from hashing.entries import Entry
from hashing.errors import InputError, SignatureError
from hashing.merkle import SubtreeHasher, leaf_hash, node_hash
from hashing.note import NoteVerifier
from uploader import protocol

LEDGER_LEAF = "ledger"  # evidock/v1/docks/{station}/ledger (uploader.protocol.Topics.ledger)

# The wire codec is the dock's (uploader.protocol.MirrorBatch: canonical JSON, at
# most 256 entries and 512 KiB), one definition for both sides; judged here.
MirrorMessage = protocol.MirrorBatch


class MirrorView(Protocol):
    """What is mirrored of one station, read-only (the database, or a list in tests)."""

    @property
    def size(self) -> int:
        """How many entries are mirrored (the held checkpoint's size)."""
        ...

    @property
    def origin(self) -> str | None:
        """The log origin of the held checkpoint; None before the first."""
        ...

    def entry(self, seq: int) -> bytes:
        """The exact bytes of mirrored entry ``seq`` (0 <= seq < size)."""
        ...

    def node(self, level: int, index: int) -> bytes:
        """The complete subtree over leaves [index * 2**level, (index + 1) * 2**level)."""
        ...


@dataclass(frozen=True)
class Ignore:
    """Nothing to do; ``reason`` for the log (a message out of step, or malformed)."""

    reason: str


@dataclass(frozen=True)
class Stale:
    """A consistent checkpoint the mirror already covers: nothing new to store."""

    checkpoint: SignedCheckpoint


@dataclass(frozen=True)
class Refuse:
    """The station contradicts its history or sent what it cannot have signed: record it."""

    kind: str  # fork | rollback | entry | chain | signature | origin
    detail: str
    note: str  # the checkpoint note as sent, the evidence kept with the refusal


@dataclass(frozen=True)
class Extend:
    """Store ``entries`` (from the mirrored size on), ``nodes`` (level, index, hash) and hold
    ``checkpoint`` (one transaction), then publish its note retained on ``held``."""

    entries: tuple[Entry, ...]
    nodes: tuple[tuple[int, int, bytes], ...]
    checkpoint: SignedCheckpoint


Decision = Ignore | Stale | Refuse | Extend


def _edge(view: MirrorView) -> list[tuple[int, bytes]]:
    """The right edge of the mirrored tree: one complete subtree per set bit of its size,
    the largest (leftmost) first (RFC 9162 §2.1.1 splits at powers of two)."""
    edge: list[tuple[int, bytes]] = []
    offset = 0
    for level in range(view.size.bit_length() - 1, -1, -1):
        if view.size >> level & 1:
            edge.append((level, view.node(level, offset >> level)))
            offset += 1 << level
    return edge


def _fold(
    edge: list[tuple[int, bytes]], size: int, leaves: Sequence[bytes]
) -> list[tuple[int, int, bytes]]:
    """Append leaf hashes to a tree of ``size`` with right edge ``edge`` (changed in place);
    return every complete subtree they close as (level, index, hash), leaves included."""
    closed: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        closed.append((0, size, leaf))
        level, h = 0, leaf
        while edge and edge[-1][0] == level:
            _, left = edge.pop()
            h = node_hash(left, h)
            level += 1
            closed.append((level, size >> level, h))
        edge.append((level, h))
        size += 1
    return closed


def _check_new(station: str, message: MirrorMessage, view: MirrorView) -> Refuse | list[Entry]:
    """Parse and check the entries past the mirrored size: station, seq, chain."""
    prev = Entry.parse(view.entry(view.size - 1)).digest if view.size else None
    fresh: list[Entry] = []
    for seq in range(view.size, message.end):
        raw = message.entries[seq - message.start]
        try:
            entry = Entry.parse(raw)
        except InputError as e:
            return Refuse("entry", f"entry {seq} does not parse: {e}", message.checkpoint)
        if entry.station != station:
            return Refuse(
                "entry", f"entry {seq} names station {entry.station[:80]!r}", message.checkpoint
            )
        if entry.seq != seq:
            return Refuse("entry", f"entry {seq} says it is entry {entry.seq}", message.checkpoint)
        if entry.prev != prev:
            return Refuse(
                "chain",
                f"entry {seq} does not chain: its prev is not the digest of entry {seq - 1}",
                message.checkpoint,
            )
        fresh.append(entry)
        prev = entry.digest
    return fresh


def judge(
    station: str, keys: Sequence[NoteVerifier], view: MirrorView, message: MirrorMessage
) -> Decision:
    """What to do with ``message`` from ``station``, given what ``view`` mirrors.

    Never raises for anything in the message; a ``view`` that cannot answer for
    a node or entry below its own size raises what it raises (a broken database).
    """
    if message.start > view.size:
        return Ignore(
            f"mirror from {message.start} is past the mirrored size {view.size}; "
            "the dock sends again from the held size"
        )
    try:
        signed, _ = SignedCheckpoint.open(message.checkpoint, list(keys))
    except SignatureError as e:
        return Refuse("signature", str(e), message.checkpoint)
    except (InputError, UnicodeDecodeError) as e:
        return Ignore(f"mirror checkpoint is malformed: {e}")
    cp = signed.checkpoint
    if cp.size != message.end:
        return Ignore(f"mirror checkpoint size {cp.size} is not from + entries = {message.end}")
    if view.origin is not None and cp.origin != view.origin:
        return Refuse(
            "origin",
            f"checkpoint of log {cp.origin!r}, but the station's log is {view.origin!r}",
            signed.note,
        )
    for seq in range(message.start, min(view.size, message.end)):
        if message.entries[seq - message.start] != view.entry(seq):
            return Refuse(
                "fork",
                f"entry {seq} differs from the mirrored entry {seq} (the ledger was rewritten)",
                signed.note,
            )
    hasher = SubtreeHasher(view.node)
    if cp.size <= view.size:
        if hasher.root(cp.size) != cp.root:
            kind = "rollback" if cp.size < view.size else "fork"
            return Refuse(
                kind,
                f"the signed root for size {cp.size} is not the mirror's root at that size "
                f"(mirrored size {view.size})",
                signed.note,
            )
        return Stale(signed)
    fresh = _check_new(station, message, view)
    if isinstance(fresh, Refuse):
        return fresh
    closed = _fold(_edge(view), view.size, [leaf_hash(e.raw) for e in fresh])
    new_nodes = {(level, index): h for level, index, h in closed}

    def lookup(level: int, index: int) -> bytes:
        h = new_nodes.get((level, index))
        return h if h is not None else view.node(level, index)

    root = SubtreeHasher(lookup).root(cp.size)
    if root != cp.root:
        return Refuse(
            "fork",
            f"the signed root for size {cp.size} is not the root of the mirrored entries "
            f"with the {len(fresh)} new one(s)",
            signed.note,
        )
    return Extend(tuple(fresh), tuple(closed), signed)


@dataclass(frozen=True)
class MemoryMirror:
    """A ``MirrorView`` over entries in memory (tests, tools, small replays)."""

    entries: tuple[bytes, ...] = ()
    held_origin: str | None = None

    @property
    def size(self) -> int:
        """How many entries are held."""
        return len(self.entries)

    @property
    def origin(self) -> str | None:
        """The held checkpoint's origin."""
        return self.held_origin

    def entry(self, seq: int) -> bytes:
        """Entry ``seq``'s bytes."""
        return self.entries[seq]

    def node(self, level: int, index: int) -> bytes:
        """A complete subtree, computed from the leaves (O(2**level))."""
        width = 1 << level
        leaves = [leaf_hash(e) for e in self.entries[index * width : (index + 1) * width]]
        if len(leaves) != width:
            raise KeyError((level, index))
        while len(leaves) > 1:  # a complete subtree: pair up level by level
            leaves = [node_hash(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
        return leaves[0]

    def applied(self, decision: Extend) -> MemoryMirror:
        """This mirror with ``decision`` applied."""
        return MemoryMirror(
            self.entries + tuple(e.raw for e in decision.entries),
            decision.checkpoint.checkpoint.origin,
        )
