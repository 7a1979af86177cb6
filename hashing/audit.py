"""The full local audit behind `evidock ledger verify`.

One streaming pass over the ledger, in O(log n) memory: every entry is
canonical and in sequence, every ``prev`` links to the entry before, the
stored tree (the interior hashes proofs are served from) equals the tree
recomputed from the entries, every stored checkpoint's root equals the
recomputed root at its size and carries a good signature by the key in force
at that size, the signer's own record and any checkpoint the operator holds
are not ahead of or forked from the ledger, and every stored file still
matches the digest its entry records.

A recording that is gone from the store is lawfully purged only if a ``purge``
entry the retention rule allows (hashing.retention, judged against the entries
before it) records it; gone with an unlawful one is ``unlawful_purge``; gone
with none is ``file_missing`` (Art. 20 (2): deletion is detectable). The rule
trusts a receipt only when the platform's key signed it: without
``platform_keys`` a purge that passes every other check is reported as
``purge_unverified`` (a warning), never as lawful. A file that goes while the
audit runs (a retention run beside it) is judged by the purge entries written
since the snapshot, in the live ledger.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hashing.checkpoint import Checkpoint
from hashing.digest import FileDigest, chunk_ranges_differing, digest_file
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
    PURGE_UNVERIFIED,
    ROLLBACK,
    TREE_ALTERED,
    UNLAWFUL_PURGE,
    Report,
)
from hashing.keys import KeyHistory
from hashing.merkle import CompactRange, leaf_hash, root_of
from hashing.note import NoteVerifier, parse_note
from hashing.retention import Judge, Verdict
from hashing.station import Station
from hashing.verify import check_signed_checkpoint, open_held_checkpoint

BATCH = 8192
# How long an ingest may take from renaming its file into the store to committing
# its entry; an audit beside a running daemon waits that long for young files.
IN_FLIGHT_SECONDS = 2.0


def _scan(conn: sqlite3.Connection, sql: str) -> Iterator[Any]:
    cursor = conn.execute(sql)
    while rows := cursor.fetchmany(BATCH):
        yield from rows


def audit(
    station: Station,
    *,
    held_note: str | None = None,
    files: bool = True,
    platform_keys: Sequence[NoteVerifier] = (),
) -> Report:
    """Audit a station's ledger, tree, checkpoints and store. Reports; never raises for content.

    ``platform_keys``: the platform's receipt keys, which purges are judged with."""
    report = Report(str(station.home))
    judge = Judge(platform_keys, station.station_id)
    signed = _signer_state(report, station)
    # The tree sizes whose roots the walk must recompute besides the stored
    # checkpoints': the signer's last and the held checkpoint's (unverified
    # here; only its size is used). Comparing those roots with the entries
    # themselves, rather than proving consistency over the stored tree,
    # cannot be misled by, or fail on, stored hashes that were tampered with.
    sizes = set()
    if signed is not None:
        sizes.add(signed[0])
    if held_note is not None:
        # A malformed one is reported when the held checkpoint is checked.
        with contextlib.suppress(InputError):
            sizes.add(Checkpoint.parse(parse_note(held_note)[0]).size)
    conn = sqlite3.connect(f"file:{station.ledger.path}?mode=ro", uri=True)
    try:
        # One read transaction: a consistent snapshot while the daemon appends.
        conn.execute("BEGIN")
        checkpoints = _stored_checkpoints(conn)
        key_entries, ingests, size, roots = _walk(report, station, conn, checkpoints, sizes, judge)
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
    _check_signer_state(report, station, signed, size, roots)
    if held_note is not None:
        _check_held(report, station, held_note, anchors, history, size, roots)
    purges = _judge_purges(report, station, judge, files=files)
    if files:
        _check_store(report, station, ingests, size, purges, judge)
    return report


def _judge_purges(
    report: Report, station: Station, judge: Judge, *, files: bool
) -> dict[str, Verdict]:
    """Report every unlawful ``purge`` entry, and those that could not be judged for
    want of a platform key; return the first verdict per digest."""
    purges: dict[str, Verdict] = {}
    unverified: list[int] = []
    for verdict in judge.verdicts.values():
        purges.setdefault(verdict.sha256, verdict)
        if verdict.lawful:
            continue
        if verdict.unverified:
            unverified.append(verdict.seq)
            continue
        _report_unlawful(report, station, judge, verdict, files=files)
    if unverified:
        report.add(PURGE_UNVERIFIED, "purge entries", _unverified_detail(unverified))
    if judge.verdicts:
        report.checked["purge entries"] = len(judge.verdicts)
    return purges


def _report_unlawful(
    report: Report, station: Station, judge: Judge, verdict: Verdict, *, files: bool
) -> None:
    place = f"entry {verdict.seq}"
    with contextlib.suppress(InputError):
        place = f"{station.store.path_for(verdict.sha256)} (purge entry {verdict.seq})"
    still = ""
    if files and verdict.sha256 in judge and station.store.has(verdict.sha256):
        still = "; the file is still in the store and `evidock retention run` leaves it"
    report.add(UNLAWFUL_PURGE, place, "; ".join(verdict.reasons) + still)


def _unverified_detail(seqs: list[int]) -> str:
    shown = ", ".join(str(s) for s in seqs[:10]) + (", ..." if len(seqs) > 10 else "")
    return (
        f"{len(seqs)} purge entr{'y' if len(seqs) == 1 else 'ies'} ({shown}) pass every other "
        "check, but the platform receipts they rest on were not verified: no platform key was "
        "given, so they cannot be called lawful; run `evidock ledger verify --platform-key KEY` "
        "with the platform's receipt key (on the dock: [upload] platform_key)"
    )


def _check_held(
    report: Report,
    station: Station,
    held_note: str,
    anchors: list[NoteVerifier],
    history: KeyHistory | None,
    size: int,
    roots: dict[int, bytes],
) -> None:
    """Hold the ledger to a checkpoint the operator kept from earlier (rollback, fork).

    ``roots`` holds the root recomputed from the entries at the held size.
    """
    held = open_held_checkpoint(
        report, held_note, anchors, history, station.origin, "this station's keys"
    )
    if held is None:
        return
    if held.size > size:
        report.add(
            ROLLBACK,
            "checkpoint",
            f"the ledger has {size} entries, fewer than the checkpoint you hold (size "
            f"{held.size}): entries after it were removed or the ledger was rolled back",
        )
    elif roots.get(held.size) != held.root:
        report.add(
            FORK,
            "checkpoint",
            f"entries 0-{held.size - 1} do not hash to the root of the checkpoint you hold "
            f"(size {held.size}): the ledger was rewritten or forked from it",
        )


def _stored_checkpoints(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [
        (int(s), str(n))
        for s, n in conn.execute("SELECT size, note FROM checkpoints ORDER BY size")
    ]


def _blob(value: object) -> bytes:
    """A BLOB column's bytes. Someone editing the file may store another type there:
    text stands for its UTF-8 bytes; anything else for no bytes that could match."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b""


def _walk(
    report: Report,
    station: Station,
    conn: sqlite3.Connection,
    checkpoints: list[tuple[int, str]],
    sizes: set[int],
    judge: Judge,
) -> tuple[list[Entry], dict[str, Entry], int, dict[int, bytes]]:
    """Entries and tree in one pass. Returns key entries, ingest entries by digest,
    the ledger size, and the recomputed root at every checkpointed size, at each
    of ``sizes`` and at the ledger's size; ``judge`` (the retention rule) reads
    every entry, so every purge entry is judged against the entries before it."""
    wanted = {s for s, _ in checkpoints} | sizes
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
        seq, data = int(seq_obj), _blob(data_obj)
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
            judge.observe(entry.seq, entry.type, entry.time, entry.body)
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
                stored = _blob(pending_node[2])
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
    roots[tree.size] = tree.root()
    report.checked["entries"] = expected
    return key_entries, ingests, expected, roots


def _signer_state(report: Report, station: Station) -> tuple[int, bytes] | None:
    """The (size, root) the station key last signed, by the signer's own record."""
    try:
        return station.keys.checkpoint_signer(station.origin).last_signed()
    except EvidockError as e:
        report.cannot(f"signer state unreadable: {e}")
        return None


def _check_signer_state(
    report: Report,
    station: Station,
    last: tuple[int, bytes] | None,
    size: int,
    roots: dict[int, bytes],
) -> None:
    """The ledger must hold the tree the key last signed: not fewer entries (rollback,
    truncation), not other entries (a rollback that grew again, a rewrite)."""
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
    elif roots.get(last_size) != last_root:
        report.add(
            FORK,
            "signer state",
            f"the station key signed another root for tree size {last_size} than entries "
            f"0-{last_size - 1} hash to: the ledger was rewritten, or rolled back and grown again",
        )


def _check_store(
    report: Report,
    station: Station,
    ingests: dict[str, Entry],
    size: int,
    purges: dict[str, Verdict],
    judge: Judge,
) -> None:
    """Every ingested file must be stored with its recorded digest and length, or be purged.

    Reports a changed file with the byte ranges that differ, a missing one as
    missing or unlawfully purged (Art. 20 (2)), and a stored file no ingest
    entry covers as added; the counts go to ``report.checked``.
    """
    chunk_rows = {
        str(sha): (int(cs), bytes(blob))
        for sha, cs, blob in station.ledger.execute("SELECT sha256, chunk_size, chunks FROM files")
    }
    counts = {"intact": 0, "purged": 0, "unverified": 0, "unfinished": 0}
    late: dict[str, Verdict] | None = None  # purges written since the snapshot, judged on demand

    def gone(sha: str, entry: Entry, verdict: Verdict | None) -> None:
        nonlocal late
        if verdict is None:
            # A retention run may have purged it since the snapshot: judge the
            # purge entries written since, continuing the same judge.
            if late is None:
                late = _judged_since(station, judge, size)
            verdict = late.get(sha)
            if verdict is not None and not verdict.lawful and not verdict.unverified:
                _report_unlawful(report, station, judge, verdict, files=True)
            elif verdict is not None and verdict.unverified:
                report.add(PURGE_UNVERIFIED, "purge entries", _unverified_detail([verdict.seq]))
        if verdict is None:
            path = station.store.path_for(sha)
            report.add(FILE_MISSING, str(path), f"recording of entry {entry.seq} is gone")
        elif verdict.lawful:
            counts["purged"] += 1
        elif verdict.unverified:
            counts["unverified"] += 1
        # else: reported as an unlawful purge

    for sha, entry in ingests.items():
        path = station.store.path_for(sha)
        verdict = purges.get(sha)
        if not path.is_file():
            gone(sha, entry, verdict)
            continue
        try:
            got = digest_file(path, drop_cache=True)
        except FileNotFoundError:  # removed between the two looks
            gone(sha, entry, verdict)
            continue
        if verdict is not None and verdict.lawful:
            # A crash between the purge entry and the unlink (agent.records.retention
            # appends first): not a failure; the next retention run finishes it.
            counts["unfinished"] += 1
        if got.sha256_hex == sha and got.size == entry.body.get("size"):
            counts["intact"] += 1
            continue
        detail = _modified_detail(path, sha, entry, got, chunk_rows.get(sha))
        report.add(FILE_MODIFIED, str(path), detail)
    for sha in sorted(_uncovered(station, set(station.store.stored()) - set(ingests), size)):
        report.add(FILE_ADDED, str(station.store.path_for(sha)), "no ingest entry covers this file")
    _report_store_counts(report, counts, len(ingests))


def _modified_detail(
    path: Path, sha: str, entry: Entry, got: FileDigest, row: tuple[int, bytes] | None
) -> str:
    """What a changed file's finding says: its digest now and, where possible, what changed.

    The byte ranges are named only when the file's chunk hashes (``row``, from
    the ``files`` table) still hash to the ``chunk_root`` its entry records:
    otherwise the table was altered too and its ranges would prove nothing.
    The file is read again if it was digested with another chunk size.
    """
    detail = f"SHA-256 now {got.sha256_hex}, {got.size} bytes; entry {entry.seq} records {sha}"
    if row is None:
        return detail
    chunk_size, blob = row
    expected = [blob[i : i + 32] for i in range(0, len(blob), 32)]
    if root_of(expected).hex() != entry.body.get("chunk_root"):
        return detail
    if chunk_size != got.chunk_size:
        got = digest_file(path, chunk_size=chunk_size)
    ranges = chunk_ranges_differing(
        expected,
        list(got.chunk_hashes),
        int(entry.body.get("size", 0)),
        got.size,
        chunk_size,
    )
    return ", ".join(f"bytes {a}-{b - 1}" for a, b in ranges) + f" differ ({detail})"


def _report_store_counts(report: Report, counts: dict[str, int], ingested: int) -> None:
    """Record in ``report.checked`` how many files are intact, purged, or awaiting removal."""
    purged, unverified = counts["purged"], counts["unverified"]
    report.checked["files intact"] = f"{counts['intact']} of {ingested - purged - unverified}"
    if purged:
        report.checked["files purged lawfully"] = purged
    if unverified:
        report.checked["files purged, receipts not verified"] = unverified
    if counts["unfinished"]:
        report.checked["purges not yet finished"] = (
            f"{counts['unfinished']} (purge entry written, file still stored; "
            "the next `evidock retention run` removes it)"
        )


def _judged_since(station: Station, judge: Judge, size: int) -> dict[str, Verdict]:
    """The first verdict per digest on the purge entries at ``size`` or later in the
    live ledger, ``judge`` (which read the snapshot's entries) reading on."""
    before = set(judge.verdicts)
    for (data,) in station.ledger.execute(
        "SELECT data FROM entries WHERE seq >= ? ORDER BY seq", (size,)
    ):
        try:
            entry = Entry.parse(_blob(data))
        except InputError:
            continue
        if entry.seq >= judge.size:
            judge.observe(entry.seq, entry.type, entry.time, entry.body)
    found: dict[str, Verdict] = {}
    for seq in sorted(set(judge.verdicts) - before):
        verdict = judge.verdicts[seq]
        found.setdefault(verdict.sha256, verdict)
    return found


def _uncovered(station: Station, candidates: set[str], size: int) -> set[str]:
    """The stored files no ingest entry covers, allowing for a live dock.

    The store is listed after the ledger snapshot was read, and an ingest
    renames its file into the store just before it commits the entry: beside a
    running daemon, a file may be newer than the snapshot (its entry committed
    since) or in flight (its entry about to commit). Entries after the snapshot
    are looked up in the live ledger, and files renamed in the last few seconds
    are given that long for their entry to commit. What is left has no entry:
    planted, or left by a crash between the rename and the commit (which a
    re-run of the ingest completes).
    """
    deadline = time.monotonic() + IN_FLIGHT_SECONDS
    pending = set(candidates)
    while pending:
        pending -= _ingested_since(station, size, pending)
        young = [sha for sha in pending if _age(station.store.path_for(sha)) < IN_FLIGHT_SECONDS]
        if not young or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return pending


def _ingested_since(station: Station, size: int, shas: set[str]) -> set[str]:
    """Which of ``shas`` have an ingest entry at ``size`` or later in the live ledger."""
    covered: set[str] = set()
    for (data,) in station.ledger.execute(
        "SELECT data FROM entries WHERE type = ? AND seq >= ?", (INGEST, size)
    ):
        try:
            entry = Entry.parse(_blob(data))
        except InputError:
            continue
        sha = entry.body.get("sha256")
        if isinstance(sha, str) and sha in shas:
            covered.add(sha)
    return covered


def _age(path: Path) -> float:
    """Seconds since the file's inode last changed (a rename into the store counts)."""
    try:
        return time.time() - path.stat().st_ctime
    except OSError:
        return float("inf")
