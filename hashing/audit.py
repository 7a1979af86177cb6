"""The full local audit behind `evidock ledger verify`.

One streaming pass over the ledger, in O(log n) memory: every entry is
canonical and in sequence, every ``prev`` links to the entry before, the
stored tree (the interior hashes proofs are served from) equals the tree
recomputed from the entries, every stored checkpoint's root equals the
recomputed root at its size and carries a good signature by the key in force
at that size, the signer's own record and any checkpoint the operator holds
are not ahead of or forked from the ledger, and every stored file still
matches the digest its entry records.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from hashing.checkpoint import Checkpoint
from hashing.digest import chunk_ranges_differing, digest_file
from hashing.entries import GENESIS, INGEST, KEY_ROTATION, Entry, parse_time
from hashing.errors import EvidockError, InputError, SignatureError
from hashing.findings import (
    CHAIN_BROKEN,
    CLOCK_REGRESSION,
    ENTRY_ALTERED,
    ENTRY_MISSING,
    ENTRY_REORDERED,
    FILE_ADDED,
    FILE_MISSING,
    FILE_MODIFIED,
    FORK,
    MALFORMED,
    ROLLBACK,
    TREE_ALTERED,
    Report,
)
from hashing.keys import KeyHistory
from hashing.merkle import CompactRange, leaf_hash, root_of
from hashing.note import NoteVerifier, parse_note
from hashing.proofs_json import consistency_json
from hashing.station import Station
from hashing.verify import check_held_checkpoint, check_signed_checkpoint

BATCH = 8192


def _scan(conn: sqlite3.Connection, sql: str) -> Iterator[Any]:
    cursor = conn.execute(sql)
    while rows := cursor.fetchmany(BATCH):
        yield from rows


def audit(station: Station, *, held_note: str | None = None, files: bool = True) -> Report:
    """Audit a station's ledger, tree, checkpoints and store. Reports; never raises for content."""
    report = Report(str(station.home))
    conn = sqlite3.connect(f"file:{station.ledger.path}?mode=ro", uri=True)
    try:
        # One read transaction: a consistent snapshot while the daemon appends.
        conn.execute("BEGIN")
        checkpoints = _stored_checkpoints(conn)
        key_entries, ingests, size, roots = _walk(report, station, conn, checkpoints)
        conn.execute("COMMIT")
    finally:
        conn.close()
    history: KeyHistory | None = None
    try:
        history = KeyHistory.from_entries(key_entries)
    except SignatureError as e:
        report.add("bad_signature", "key history", str(e))
    except InputError as e:
        report.add(MALFORMED, "key history", str(e))
    anchors = history.keys() if history else []
    for cp_size, note in checkpoints:
        place = f"checkpoint {cp_size}"
        checkpoint = check_signed_checkpoint(report, place, note, anchors, history)
        if checkpoint is None:
            continue
        if checkpoint.origin != station.origin:
            report.add(MALFORMED, place, f"origin {checkpoint.origin}, expected {station.origin}")
        if checkpoint.size > size:
            report.add(
                ENTRY_MISSING,
                place,
                f"signed at tree size {checkpoint.size} but the ledger has {size} entries: "
                "its tail was truncated or it was rolled back",
            )
        elif roots.get(checkpoint.size) != checkpoint.root:
            report.add(
                ENTRY_ALTERED,
                place,
                f"signed root differs from the root recomputed from entries 0-{checkpoint.size - 1}",
            )
    report.checked["checkpoints"] = len(checkpoints)
    _check_signer_state(report, station, size, roots)
    if held_note is not None:
        _check_held(report, station, held_note, anchors, history, size, roots.get(size))
    if files:
        _check_store(report, station, ingests)
    return report


def _check_held(
    report: Report,
    station: Station,
    held_note: str,
    anchors: list[NoteVerifier],
    history: KeyHistory | None,
    size: int,
    root: bytes | None,
) -> None:
    """Hold the ledger to a checkpoint the operator kept from earlier (rollback, fork)."""
    if root is None:
        root = station.ledger.root(size)
    proofs: list[dict[str, Any]] = []
    try:
        held_size = Checkpoint.parse(parse_note(held_note)[0]).size
    except InputError:
        held_size = -1
    if 0 <= held_size < size:
        hashes = station.ledger.consistency_proof(held_size, size)
        proofs.append(consistency_json(held_size, size, b"", root, hashes))
    current = Checkpoint(station.origin, size, root)
    check_held_checkpoint(report, held_note, anchors, history, current, proofs)


def _stored_checkpoints(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [
        (int(s), str(n))
        for s, n in conn.execute("SELECT size, note FROM checkpoints ORDER BY size")
    ]


def _walk(
    report: Report,
    station: Station,
    conn: sqlite3.Connection,
    checkpoints: list[tuple[int, str]],
) -> tuple[list[Entry], dict[str, Entry], int, dict[int, bytes]]:
    """Entries and tree in one pass. Returns key entries, ingest entries by digest,
    the ledger size, and the recomputed root at every checkpointed size."""
    wanted = {s for s, _ in checkpoints}
    roots: dict[int, bytes] = {}
    if 0 in wanted:
        roots[0] = root_of([])
    tree = CompactRange()
    nodes = _scan(conn, "SELECT end, level, hash FROM nodes ORDER BY end, level")
    pending_node = next(nodes, None)
    key_entries: list[Entry] = []
    ingests: dict[str, Entry] = {}
    prev_digest: str | None = None
    prev_time: datetime | None = None
    expected = 0
    tree_faults = 0
    for seq_obj, data_obj in _scan(conn, "SELECT seq, data FROM entries ORDER BY seq"):
        seq, data = int(seq_obj), bytes(data_obj)
        place = f"entry {seq}"
        if seq != expected:
            report.add(ENTRY_MISSING, f"entries {expected}-{seq - 1}", "deleted from the ledger")
            prev_digest = None
        expected = seq + 1
        try:
            entry = Entry.parse(data)
        except InputError as e:
            report.add(ENTRY_ALTERED, place, f"not a well-formed entry: {e}")
            entry = None
        if entry is not None:
            if entry.seq != seq:
                report.add(ENTRY_REORDERED, place, f"holds the entry written as {entry.seq}")
            if entry.station != station.station_id:
                report.add(ENTRY_ALTERED, place, f"names station {entry.station!r}")
            if seq > 0 and prev_digest is not None and entry.prev != prev_digest:
                report.add(CHAIN_BROKEN, place, f"prev does not match entry {seq - 1}")
            when = parse_time(entry.time)
            if prev_time is not None and when < prev_time:
                report.add(CLOCK_REGRESSION, place, f"dated {entry.time}, before entry {seq - 1}")
            prev_time = when
            if entry.type in (GENESIS, KEY_ROTATION):
                key_entries.append(entry)
            elif entry.type == INGEST and isinstance(entry.body.get("sha256"), str):
                ingests[str(entry.body["sha256"])] = entry
        prev_digest = entry.digest if entry is not None else None
        # Recompute the tree over the leaves in the stored order of positions.
        while tree.size < seq:  # a gap: the deleted leaves' hashes are unknown
            tree.append(b"\0" * 32)
        for level, index, h in tree.append(leaf_hash(data)):
            end = (index + 1) << level
            while pending_node is not None and (pending_node[0], pending_node[1]) < (end, level):
                pending_node = next(nodes, None)
            stored = None
            if pending_node is not None and (pending_node[0], pending_node[1]) == (end, level):
                stored = bytes(pending_node[2])
            if stored != h:
                tree_faults += 1
                if level == 0:
                    report.add(
                        ENTRY_ALTERED, place, "bytes differ from the leaf hash the tree recorded"
                    )
                elif tree_faults <= 20:
                    report.add(
                        TREE_ALTERED,
                        f"node level {level} index {index}",
                        "stored hash differs from the entries",
                    )
        if tree.size in wanted:
            roots[tree.size] = tree.root()
    report.checked["entries"] = expected
    return key_entries, ingests, expected, roots


def _check_signer_state(
    report: Report, station: Station, size: int, roots: dict[int, bytes]
) -> None:
    try:
        last = station.keys.checkpoint_signer(station.origin).last_signed()
    except EvidockError as e:
        report.cannot(f"signer state unreadable: {e}")
        return
    if last is None:
        return
    last_size, last_root = last
    if last_size > size:
        report.add(
            ROLLBACK,
            str(station.keys.folder / "signer-state.json"),
            f"the station key signed tree size {last_size}, but the ledger has {size} entries: "
            "the ledger was rolled back or truncated",
        )
    elif last_size in roots and roots[last_size] != last_root:
        report.add(
            FORK, "signer state", f"signed root for size {last_size} differs from the ledger's"
        )


def _check_store(report: Report, station: Station, ingests: dict[str, Entry]) -> None:
    chunk_rows = {
        str(sha): (int(cs), bytes(blob))
        for sha, cs, blob in station.ledger.execute("SELECT sha256, chunk_size, chunks FROM files")
    }
    intact = 0
    for sha, entry in ingests.items():
        path = station.store.path_for(sha)
        if not path.is_file():
            report.add(FILE_MISSING, str(path), f"recording of entry {entry.seq} is gone")
            continue
        got = digest_file(path, drop_cache=True)
        if got.sha256_hex == sha and got.size == entry.body.get("size"):
            intact += 1
            continue
        detail = f"SHA-256 now {got.sha256_hex}, {got.size} bytes; entry {entry.seq} records {sha}"
        row = chunk_rows.get(sha)
        if row is not None:
            chunk_size, blob = row
            expected = [blob[i : i + 32] for i in range(0, len(blob), 32)]
            if root_of(expected).hex() == entry.body.get("chunk_root"):
                if chunk_size != got.chunk_size:
                    got = digest_file(path, chunk_size=chunk_size)
                ranges = chunk_ranges_differing(
                    expected,
                    list(got.chunk_hashes),
                    int(entry.body.get("size", 0)),
                    got.size,
                    chunk_size,
                )
                detail = ", ".join(f"bytes {a}-{b - 1}" for a, b in ranges) + f" differ ({detail})"
        report.add(FILE_MODIFIED, str(path), detail)
    for sha in sorted(set(station.store.stored()) - set(ingests)):
        report.add(FILE_ADDED, str(station.store.path_for(sha)), "no ingest entry covers this file")
    report.checked["files intact"] = f"{intact} of {len(ingests)}"
