"""Tamper matrix on a station's own state: what `evidock ledger verify` (audit)
catches when someone with the files edits the store, the SQLite ledger (its
append-only triggers dropped first), the checkpoints, or rolls it all back.

Every test starts from the `dock` fixture: a station with entries 0 (genesis)
and 1-4 (ingests, entry 1 a 3 MiB + 17 B file) and a checkpoint at size 5.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import hashing.audit
from agent.cli import main
from agent.records import holds, retention
from agent.users.accounts import Users
from agent.users.roles import SUPERVISOR
from hashing.audit import audit
from hashing.bundle import Request, Selection, export_bundle
from hashing.entries import build_entry
from hashing.errors import IntegrityError
from hashing.findings import (
    BAD_SIGNATURE,
    CHAIN_BROKEN,
    ENTRY_ALTERED,
    ENTRY_MISSING,
    ENTRY_REORDERED,
    FILE_ADDED,
    FILE_MISSING,
    FILE_MODIFIED,
    FORK,
    ROLLBACK,
    TREE_ALTERED,
    UNKNOWN_SIGNATURE,
    Report,
)
from hashing.merkle import CompactRange, leaf_hash
from hashing.note import NoteSigner
from hashing.retention import Policy, parse_when, rfc3339
from hashing.station import Station
from tests.integration._support import (
    MIB,
    Built,
    assert_clean,
    assert_finding,
    flip_byte,
    flip_in_bytes,
    flip_signature,
    found,
    ingest,
    make_sources,
    replace_db,
    resign,
    snapshot_db,
    tamper_db,
)
from tests.retention_support import PLATFORM_KEYS, add_user, ingest_clip, receipt

pytestmark = pytest.mark.slow

Statement = tuple[str, tuple[object, ...]]


@pytest.fixture(autouse=True)
def no_ingest_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """No daemon runs beside these audits, so a store file without an entry is not
    an ingest about to commit: do not give it time to (test_crash covers that)."""
    monkeypatch.setattr(hashing.audit, "IN_FLIGHT_SECONDS", 0.0)


def db_path(dock: Built) -> Path:
    return dock.home / "ledger.db"


def state_path(dock: Built) -> Path:
    return dock.home / "keys" / "signer-state.json"


def reopen(dock: Built, *statements: Statement) -> None:
    """Close the station, edit its ledger as a tamperer would, open it again."""
    dock.station.close()
    if statements:
        tamper_db(db_path(dock), *statements)
    dock.station = Station.open(dock.home)


def raw_entry(dock: Built, seq: int) -> bytes:
    return dock.station.ledger.entry(seq).raw


def stored(dock: Built, n: int) -> Path:
    return dock.station.store.path_for(dock.shas[n])


def run_audit(dock: Built, held: str | None = None) -> Report:
    return audit(dock.station, held_note=held)


def rebuilt_nodes(dock: Built) -> list[Statement]:
    """Statements replacing the nodes table by the tree of the entries as they are now:
    the tamperer who recomputes every hash after editing an entry."""
    rows = dock.station.ledger.execute("SELECT data FROM entries ORDER BY seq")
    tree = CompactRange()
    statements: list[Statement] = [("DELETE FROM nodes", ())]
    for (data,) in rows:
        for level, index, h in tree.append(leaf_hash(bytes(data))):
            statements.append(
                (
                    "INSERT INTO nodes (end, level, hash) VALUES (?, ?, ?)",
                    ((index + 1) << level, level, h),
                )
            )
    return statements


# -- untouched ---------------------------------------------------------------


def test_untampered_station_audits_clean(dock: Built) -> None:
    report = run_audit(dock)
    assert_clean(report)
    assert report.checked["entries"] == 5
    assert report.checked["files intact"] == "4 of 4"


def test_untampered_station_with_a_held_checkpoint(dock: Built) -> None:
    held = dock.station.checkpoint().note
    ingest(dock.station, make_sources(dock.home.parent / "more", (10,), seed=3))
    assert_clean(run_audit(dock, held))
    dock.station.checkpoint()
    assert_clean(run_audit(dock, held))


# -- the store ---------------------------------------------------------------


def test_flipped_byte_in_stored_file(dock: Built) -> None:
    flip_byte(stored(dock, 0), MIB + MIB // 2)
    report = run_audit(dock)
    finding = assert_finding(report, FILE_MODIFIED, str(stored(dock, 0)))
    assert finding.detail.startswith("bytes 1048576-2097151 differ"), finding.detail
    assert report.kinds() == {FILE_MODIFIED}


def test_truncated_stored_file(dock: Built) -> None:
    path = stored(dock, 1)  # 2 MiB + 4099 bytes
    path.chmod(0o600)
    with path.open("r+b") as f:
        f.truncate(2 * MIB)
    finding = assert_finding(run_audit(dock), FILE_MODIFIED, str(path))
    assert finding.detail.startswith("bytes 2097152-2101250 differ"), finding.detail


def test_deleted_stored_file(dock: Built) -> None:
    stored(dock, 2).unlink()
    report = run_audit(dock)
    assert_finding(report, FILE_MISSING, str(stored(dock, 2)), detail="entry 3")
    assert report.kinds() == {FILE_MISSING}


def test_file_added_to_store(dock: Built) -> None:
    planted = dock.station.store.path_for("ab" * 32)
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted")
    report = run_audit(dock)
    assert_finding(report, FILE_ADDED, str(planted))
    assert report.kinds() == {FILE_ADDED}


@pytest.mark.parametrize("damage", ["flipped", "deleted"])
def test_export_refuses_a_damaged_store(dock: Built, tmp_path: Path, damage: str) -> None:
    """No copy leaves the dock whose bytes no longer match their entry, and the
    refusal is an integrity error (exit 1), not a crash."""
    if damage == "flipped":
        flip_byte(stored(dock, 1), 10)
    else:
        stored(dock, 1).unlink()
    Users(dock.station).add("sup-1", "supervisor", "correct horse 42", officer=None, by="console:t")
    secret = tmp_path / "sup-1.secret"
    secret.write_text("correct horse 42\n")
    secret.chmod(0o600)
    size = dock.station.ledger.size()
    with pytest.raises(IntegrityError, match="ledger verify"):
        export_bundle(
            dock.station, Selection(all=True), tmp_path / "out", Request("sup-1", "supervisor", "t")
        )
    assert dock.station.ledger.size() == size  # no export entry for a refused export
    assert not (tmp_path / "out").exists()  # and no partial copy left behind
    as_user = ["--purpose", "t", "--as", "sup-1", "--password-file", str(secret)]
    code = main(
        ["export", "--home", str(dock.home), "--all", "--out", str(tmp_path / "o2"), *as_user]
    )
    assert code == 1
    assert dock.station.ledger.size() == size


def test_audit_without_files_skips_the_store(dock: Built) -> None:
    stored(dock, 2).unlink()
    assert_clean(audit(dock.station, files=False))


# -- entries -------------------------------------------------------------------


def test_entry_bytes_altered(dock: Built) -> None:
    raw = raw_entry(dock, 2)
    at = raw.index(b'"officer":"officer-7"') + len(b'"officer":"officer-')
    reopen(dock, ("UPDATE entries SET data = ? WHERE seq = 2", (flip_in_bytes(raw, at),)))
    report = run_audit(dock)
    assert_finding(report, ENTRY_ALTERED, "entry 2", detail="leaf hash")
    assert_finding(report, CHAIN_BROKEN, "entry 3")
    assert_finding(report, ENTRY_ALTERED, "checkpoint 5", detail="signed root differs")


def test_entry_bytes_made_malformed(dock: Built) -> None:
    raw = raw_entry(dock, 1)
    reopen(dock, ("UPDATE entries SET data = ? WHERE seq = 1", (raw[:-1],)))
    assert_finding(run_audit(dock), ENTRY_ALTERED, "entry 1", detail="not a well-formed")


def test_entry_stored_as_text(dock: Built) -> None:
    """Same characters, other SQLite type: the audit reports rather than crashes."""
    reopen(dock, ("UPDATE entries SET data = CAST(data AS TEXT) WHERE seq = 2", ()))
    assert_clean(audit(dock.station, files=False))  # the bytes are still the signed ones


def test_entry_replaced_by_a_number(dock: Built) -> None:
    reopen(dock, ("UPDATE entries SET data = 5 WHERE seq = 2", ()))
    assert_finding(audit(dock.station, files=False), ENTRY_ALTERED, "entry 2")


def test_node_replaced_by_text(dock: Built) -> None:
    reopen(dock, ("UPDATE nodes SET hash = 'x' WHERE end = 2 AND level = 1", ()))
    assert_finding(audit(dock.station, files=False), TREE_ALTERED, "node level 1 index 0")


def test_last_entry_altered_and_tree_recomputed(dock: Built) -> None:
    """The careful tamperer edits the newest entry (no successor's prev to betray it)
    and rewrites every stored hash: only the signatures are left to tell."""
    raw = raw_entry(dock, 4)
    altered = raw.replace(b'"size":1000', b'"size":1001')
    assert altered != raw
    reopen(dock, ("UPDATE entries SET data = ? WHERE seq = 4", (altered,)))
    reopen(dock, *rebuilt_nodes(dock))
    report = run_audit(dock)
    assert_finding(report, ENTRY_ALTERED, "checkpoint 5", detail="signed root differs")
    assert_finding(report, FORK, "signer state")
    assert TREE_ALTERED not in report.kinds()
    assert CHAIN_BROKEN not in report.kinds()


def test_entry_deleted(dock: Built) -> None:
    reopen(dock, ("DELETE FROM entries WHERE seq = 2", ()))
    report = run_audit(dock)
    assert_finding(report, ENTRY_MISSING, "entries 2-2", detail="deleted")


def test_entry_and_its_nodes_deleted_with_a_held_checkpoint(dock: Built) -> None:
    """The audit reports; it does not crash on a ledger with holes in its tree."""
    held = dock.station.checkpoint().note
    reopen(dock, ("DELETE FROM entries WHERE seq = 2", ()), ("DELETE FROM nodes WHERE end = 3", ()))
    report = run_audit(dock, held)
    assert_finding(report, ENTRY_MISSING, "entries 2-2")


def test_entry_and_its_tree_deleted_with_an_older_held_checkpoint(dock: Built) -> None:
    """Holding the genesis checkpoint (size 1) needs a proof over the damaged tree."""
    held = checkpoint_note(dock, 1)
    reopen(dock, ("DELETE FROM entries WHERE seq = 3", ()), ("DELETE FROM nodes WHERE end = 4", ()))
    report = run_audit(dock, held)
    assert_finding(report, ENTRY_MISSING, "entries 3-3")
    # Entry 0 is intact, so the ledger does extend the held checkpoint of size 1.
    assert not found(report, FORK, "checkpoint"), report.render()


def test_entries_swapped(dock: Built) -> None:
    two, three = raw_entry(dock, 2), raw_entry(dock, 3)
    reopen(
        dock,
        ("UPDATE entries SET data = ? WHERE seq = 2", (three,)),
        ("UPDATE entries SET data = ? WHERE seq = 3", (two,)),
    )
    report = run_audit(dock)
    assert_finding(report, ENTRY_REORDERED, "entry 2", detail="written as 3")
    assert_finding(report, ENTRY_REORDERED, "entry 3", detail="written as 2")
    assert_finding(report, CHAIN_BROKEN, "entry 2")


def test_entry_renumbered(dock: Built) -> None:
    """Entry 4 moved to position 2 (and 2 dropped): out of sequence, and a gap."""
    reopen(
        dock,
        ("DELETE FROM entries WHERE seq = 2", ()),
        ("UPDATE entries SET seq = 2 WHERE seq = 4", ()),
    )
    report = run_audit(dock)
    assert_finding(report, ENTRY_REORDERED, "entry 2", detail="written as 4")


# -- the tree ------------------------------------------------------------------


def test_interior_node_altered(dock: Built) -> None:
    reopen(dock, ("UPDATE nodes SET hash = ? WHERE end = 2 AND level = 1", (b"\x55" * 32,)))
    report = run_audit(dock)
    assert_finding(report, TREE_ALTERED, "node level 1 index 0")
    assert report.kinds() == {TREE_ALTERED}


def test_leaf_node_altered(dock: Built) -> None:
    reopen(dock, ("UPDATE nodes SET hash = ? WHERE end = 4 AND level = 0", (b"\x55" * 32,)))
    assert_finding(run_audit(dock), ENTRY_ALTERED, "entry 3", detail="leaf hash")


def test_node_deleted(dock: Built) -> None:
    reopen(dock, ("DELETE FROM nodes WHERE end = 4 AND level = 2", ()))
    assert_finding(run_audit(dock), TREE_ALTERED, "node level 2 index 0")


# -- checkpoints ---------------------------------------------------------------


def checkpoint_note(dock: Built, size: int) -> str:
    return next(n for s, n, _ in dock.station.ledger.checkpoints() if s == size)


def test_checkpoint_signature_altered(dock: Built) -> None:
    note = flip_signature(checkpoint_note(dock, 5))
    reopen(dock, ("UPDATE checkpoints SET note = ? WHERE size = 5", (note,)))
    report = run_audit(dock)
    assert_finding(report, BAD_SIGNATURE, "checkpoint 5", detail="bad signature")
    assert report.kinds() == {BAD_SIGNATURE}


def test_checkpoint_body_altered(dock: Built) -> None:
    note = checkpoint_note(dock, 5).replace("\n5\n", "\n4\n", 1)
    reopen(dock, ("UPDATE checkpoints SET note = ? WHERE size = 5", (note,)))
    assert_finding(run_audit(dock), BAD_SIGNATURE, "checkpoint 5")


def test_checkpoint_resigned_by_another_key(dock: Built) -> None:
    impostor = NoteSigner.generate(dock.station.origin)
    note = resign(checkpoint_note(dock, 5), impostor)
    reopen(dock, ("UPDATE checkpoints SET note = ? WHERE size = 5", (note,)))
    report = run_audit(dock)
    assert_finding(report, UNKNOWN_SIGNATURE, "checkpoint 5", detail=impostor.verifier.key_id_hex)


# -- truncation and rollback ---------------------------------------------------


def test_tail_truncated(dock: Built) -> None:
    reopen(
        dock,
        ("DELETE FROM files WHERE seq >= 3", ()),
        ("DELETE FROM sources WHERE seq >= 3", ()),
        ("DELETE FROM entries WHERE seq >= 3", ()),
        ("DELETE FROM nodes WHERE end > 3", ()),
    )
    report = run_audit(dock)
    assert_finding(report, ENTRY_MISSING, "checkpoint 5", detail="ledger has 3 entries")
    assert_finding(report, ROLLBACK, str(state_path(dock)), detail="signed tree size 5")


def test_tail_truncated_with_its_checkpoints(dock: Built) -> None:
    """With the checkpoints gone too, the signer's own record still remembers."""
    reopen(
        dock,
        ("DELETE FROM files WHERE seq >= 3", ()),
        ("DELETE FROM sources WHERE seq >= 3", ()),
        ("DELETE FROM entries WHERE seq >= 3", ()),
        ("DELETE FROM nodes WHERE end > 3", ()),
        ("DELETE FROM checkpoints WHERE size > 3", ()),
    )
    report = run_audit(dock, None)
    assert_finding(report, ROLLBACK, str(state_path(dock)))
    # The recordings of the removed entries are now files no entry covers.
    assert_finding(report, FILE_ADDED, str(stored(dock, 3)))


@pytest.fixture
def rolled_back(dock: Built, tmp_path: Path) -> tuple[Built, str, str]:
    """The ledger.db replaced by a copy from size 5 after the dock went on to size 7.

    Returns the station, the later checkpoint (size 7) and the old signer state."""
    old_state = state_path(dock).read_text()
    snapshot = tmp_path / "ledger-at-5.db"
    snapshot_db(db_path(dock), snapshot)
    ingest(dock.station, make_sources(tmp_path / "later", (100, 200), seed=5))
    later = dock.station.checkpoint().note
    assert "\n7\n" in later
    dock.station.close()
    replace_db(db_path(dock), snapshot)
    dock.station = Station.open(dock.home)
    assert dock.station.ledger.size() == 5
    return dock, later, old_state


def test_rolled_back_ledger_caught_by_the_signer_state(rolled_back: tuple[Built, str, str]) -> None:
    dock, _, _ = rolled_back
    report = run_audit(dock)
    assert_finding(report, ROLLBACK, str(state_path(dock)), detail="signed tree size 7")
    # The store still holds the later recordings: files no entry covers.
    assert len([f for f in report.findings if f.kind == FILE_ADDED]) == 2


def test_rolled_back_ledger_caught_by_a_held_checkpoint(
    rolled_back: tuple[Built, str, str],
) -> None:
    dock, later, _ = rolled_back
    assert_finding(run_audit(dock, later), ROLLBACK, "checkpoint", detail="size 7")


def test_rolled_back_ledger_and_signer_state(rolled_back: tuple[Built, str, str]) -> None:
    """Roll back the signer's record too and only a checkpoint held elsewhere can tell."""
    dock, later, old_state = rolled_back
    state_path(dock).write_text(old_state)
    report = audit(dock.station, held_note=later, files=False)
    assert_finding(report, ROLLBACK, "checkpoint")
    assert ROLLBACK not in {f.kind for f in report.findings if f.place != "checkpoint"}


def test_rolled_back_ledger_that_grew_again(
    rolled_back: tuple[Built, str, str], tmp_path: Path
) -> None:
    """Rolled back to 5, then 3 other entries appended: size 8 > 7, but not the tree
    the key signed at 7. The signer refuses to sign it, and the audit must say why."""
    dock, later, _ = rolled_back
    ingest(dock.station, make_sources(tmp_path / "other", (300, 400, 500), seed=6))
    assert dock.station.ledger.size() == 8
    report = audit(dock.station, files=False)
    assert_finding(report, FORK, "signer state")
    assert_finding(audit(dock.station, held_note=later, files=False), FORK, "checkpoint")


def test_forked_copy_against_a_held_checkpoint(dock: Built, tmp_path: Path) -> None:
    """A copy of this dock's state (same key) that went its own way after size 5."""
    dock.station.close()
    shutil.copytree(dock.home, tmp_path / "clone")
    clone = Station.open(tmp_path / "clone")
    ingest(clone, make_sources(tmp_path / "clone-src", (11, 12), seed=7))
    fork_note = clone.checkpoint().note  # size 7, other entries
    clone.close()
    dock.station = Station.open(dock.home)
    ingest(dock.station, make_sources(tmp_path / "own-src", (13, 14, 15), seed=8))
    dock.station.checkpoint()
    assert_finding(audit(dock.station, held_note=fork_note, files=False), FORK, "checkpoint")


# -- the command line ------------------------------------------------------------


def ledger_verify(
    dock: Built, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, object]]:
    code = main(["ledger", "verify", "--home", str(dock.home), "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_cli_ledger_verify(dock: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = ledger_verify(dock, capsys)
    assert code == 0
    assert result["ok"] is True
    flip_byte(stored(dock, 0), 5)
    code, result = ledger_verify(dock, capsys)
    assert code == 1
    findings = result["findings"]
    assert isinstance(findings, list)
    assert [(f["kind"], f["place"]) for f in findings] == [(FILE_MODIFIED, str(stored(dock, 0)))]
    code, result = ledger_verify(dock, capsys, "--no-files")
    assert code == 0


def test_cli_ledger_verify_with_held_checkpoint(
    rolled_back: tuple[Built, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dock, later, _ = rolled_back
    held = tmp_path / "held.txt"
    held.write_text(later)
    code, result = ledger_verify(dock, capsys, "--no-files", "--checkpoint", str(held))
    assert code == 1
    findings = result["findings"]
    assert isinstance(findings, list)
    assert {f["kind"] for f in findings} == {ROLLBACK}


# -- purges: deletions dressed up as retention -----------------------------------


OLD_DAYS = 500  # past a year and the 30 days' grace


def _purge_like_the_dock(dock: Built, sha: str) -> int:
    """A purge entry shaped as agent.records.retention writes it for ``sha`` (status from the
    rule itself), appended behind its back, and the file removed."""
    station = dock.station
    status = retention.status(station, sha, Policy(), datetime.now(UTC), PLATFORM_KEYS)
    assert status is not None and status.keep_until and status.purge_after
    policy = station.ledger.append("retention_policy", {**Policy().body(), "by": "console:x"})
    body = {
        "sha256": sha,
        "size": status.size,
        "class": status.klass,
        "cases": list(status.cases),
        "recorded_at": rfc3339(status.recorded_at),
        "counted_from": rfc3339(status.counted_from),
        "keep_until": rfc3339(status.keep_until),
        "purge_after": rfc3339(status.purge_after),
        "receipt": status.receipt,
        "attested_by": status.receipt,
        "policy": policy.seq,
        "by": "console:x",
    }
    entry = station.ledger.append("purge", body)
    station.store.path_for(sha).unlink()
    return entry.seq


def test_a_fresh_recording_deleted_with_a_purge_entry_is_an_unlawful_purge(dock: Built) -> None:
    station = dock.station
    sha = dock.shas[0]
    policy = station.ledger.append(
        "retention_policy", {"routine_days": 365, "grace_days": 0, "evidence_days": {}, "by": "x"}
    )
    # An upload receipt the platform never signed, then the purge.
    station.ledger.append("upload_receipt", {"sha256": sha, "size": 3 * MIB + 17, "seq": 1})
    station.ledger.append("purge", {"sha256": sha, "policy": policy.seq, "class": "routine"})
    stored(dock, 0).unlink()
    report = audit(station, platform_keys=PLATFORM_KEYS)
    finding = assert_finding(report, "unlawful_purge", detail="no upload receipt")
    assert "evidence of a case of type unknown: permanent" in finding.detail
    assert FILE_MISSING not in report.kinds()


def test_a_purge_under_a_hold_released_by_a_supervisor_is_unlawful(
    dock: Built, tmp_path: Path
) -> None:
    sha = ingest_clip(dock.station, tmp_path / "src", "HELD.MP4", days_old=OLD_DAYS)
    receipt(dock.station, sha)
    sup = add_user(dock.station, "sup", SUPERVISOR)
    hold = holds.add_hold(dock.station, sup, files=[sha], reason="dispute", note="complaint")
    dock.station.ledger.append("hold_release", {"hold": hold.seq, "note": "x", "by": "sup"})
    seq = _purge_like_the_dock(dock, sha)
    report = audit(dock.station, platform_keys=PLATFORM_KEYS)
    finding = assert_finding(report, "unlawful_purge", detail=f"under hold (entry {hold.seq})")
    assert f"purge entry {seq}" in finding.place and "not an admin" in finding.detail


def test_a_purge_dated_by_a_clock_that_ran_ahead_is_unlawful(dock: Built, tmp_path: Path) -> None:
    """A lawful-looking purge, then the clock is put right: the next entry is dated
    before it, so the purge's date came from a clock that was ahead."""
    sha = ingest_clip(dock.station, tmp_path / "src", "A.MP4", days_old=OLD_DAYS)
    receipt(dock.station, sha)
    seq = _purge_like_the_dock(dock, sha)
    assert_clean(audit(dock.station, platform_keys=PLATFORM_KEYS))
    purge_time = parse_when(dock.station.ledger.entry(seq).time)
    assert purge_time is not None
    earlier = rfc3339(purge_time - timedelta(hours=1))
    with dock.station.ledger.transaction() as tx:
        (last,) = tx.conn.execute("SELECT data FROM entries WHERE seq = ?", (tx.size - 1,))
        tx.append_entry(
            build_entry(
                seq=tx.size,
                kind="note",
                station=dock.station.station_id,
                prev=hashlib.sha256(bytes(last[0])).hexdigest(),
                body={},
                time=earlier,
                clock="system/ntp",
            )
        )
    report = audit(dock.station, platform_keys=PLATFORM_KEYS)
    assert_finding(report, "unlawful_purge", detail="a clock that was ahead")


def test_cli_judges_purges_with_the_platform_key(
    dock: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("EVIDOCK_CONFIG", str(empty))  # an auditor's machine: no dock config
    sha = ingest_clip(dock.station, tmp_path / "src", "A.MP4", days_old=OLD_DAYS)
    receipt(dock.station, sha)
    _purge_like_the_dock(dock, sha)
    code, result = ledger_verify(dock, capsys)
    findings, checked = result["findings"], result["checked"]
    assert isinstance(findings, list) and isinstance(checked, dict)
    assert code == 0 and "purge_unverified" in {f["kind"] for f in findings}
    assert checked["files purged, receipts not verified"] == 1
    code, result = ledger_verify(dock, capsys, "--platform-key", PLATFORM_KEYS[0].vkey)
    checked = result["checked"]
    assert code == 0 and isinstance(checked, dict) and checked["files purged lawfully"] == 1
