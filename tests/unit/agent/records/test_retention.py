"""Retention on a real station (agent.records.retention): policy from the configuration
and in the ledger, each recording's status, the plan, and the run that purges,
crash-safe and idempotent, re-judged inside its transaction; the clock and the
platform's receipts it relies on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import hashing.entries
from agent import config
from agent.records import holds, retention
from agent.records import registry as records
from agent.users.roles import SUPERVISOR
from hashing.audit import audit
from hashing.entries import INGEST, build_entry
from hashing.errors import ConfigError, InputError
from hashing.retention import (
    PURGE,
    RETENTION_POLICY,
    UPLOAD_RECEIPT,
    Policy,
    add_years,
    parse_when,
    rfc3339,
)
from hashing.station import Station
from tests.retention_support import (
    PLATFORM,
    PLATFORM_KEYS,
    add_user,
    ingest_clip,
    new_station,
    receipt,
)
from uploader.protocol import Receipt

POLICY = Policy(365, 30, {"penalty": 3650}, None)
OLD = 500  # days: past routine (365 days, at least a year) plus 30 days' grace


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    s = new_station(tmp_path)
    yield s
    s.close()


def old_receipted(station: Station, folder: Path, name: str, **kw: Any) -> str:
    sha = ingest_clip(station, folder, name, days_old=OLD, **kw)
    receipt(station, sha)
    return sha


def now() -> datetime:
    return datetime.now(UTC)


def run(station: Station, policy: Policy = POLICY, **kw: Any) -> retention.RunResult:
    """A retention run with the platform's key; the test machine's clock may not be
    synchronised (hashing.entries._clock_status), so that check is off unless asked."""
    kw.setdefault("platform_keys", PLATFORM_KEYS)
    kw.setdefault("require_synced_clock", False)
    return retention.run(station, policy, by="console:test", **kw)


def failures(station: Station) -> set[str]:
    """The audit's failures (old ingests dated before later entries are only warnings)."""
    return {f.kind for f in audit(station, platform_keys=PLATFORM_KEYS).failures}


def test_policy_comes_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "evidock.toml"
    path.write_text(
        "[offload]\nutc_offset_minutes = 480\n"
        "[retention]\nroutine_days = 400\ngrace_days = 0\n"
        'evidence_days = { penalty = 10950, criminal = "permanent" }\n'
        'default_case_type = "penalty"\n',
        encoding="utf-8",
    )
    policy = retention.policy_from_config(config.load(path))
    assert policy == Policy(400, 0, {"penalty": 10950, "criminal": None}, "penalty", 480)
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    # The shipped defaults: no case types, so evidence is kept permanently; +08:00.
    assert retention.policy_from_config(config.load(empty)) == Policy(365, 30, {}, None, 480)


def test_periods_over_a_hundred_years_are_refused_by_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "evidock.toml"
    path.write_text(
        '[retention]\nevidence_days = { penalty = 3000000 }\ndefault_case_type = "penalty"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r'over 100 years.*use "permanent"'):
        config.load(path)
    path.write_text("[retention]\nroutine_days = 40000\ngrace_days = 99999\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at most 36525") as caught:
        config.load(path)
    assert "routine_days" in str(caught.value) and "grace_days" in str(caught.value)


def test_the_policy_is_recorded_once_and_again_when_it_changes(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    other = ingest_clip(station, tmp_path / "src", "B.MP4", days_old=OLD)
    first = run(station)
    assert [s for s, _ in first.purged] == [sha]
    policies = list(station.ledger.entries_of_type(RETENTION_POLICY))
    assert len(policies) == 1 and first.policy_entry == policies[0].seq
    assert policies[0].body == {**POLICY.body(), "by": "console:test"}
    size = station.ledger.size()
    again = run(station)
    assert again.purged == () and station.ledger.size() == size  # idempotent: nothing new
    changed = Policy(400, 30, {"penalty": 3650}, None)
    receipt(station, other)
    third = run(station, changed)
    assert third.policy_entry is not None and third.policy_entry > first.policy_entry
    (purge,) = [e for e in station.ledger.entries_of_type(PURGE) if e.body["sha256"] == other]
    assert purge.body["policy"] == third.policy_entry


def test_status_and_plan_say_what_is_due_and_why_the_rest_stays(
    station: Station, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    due = old_receipted(station, src, "DUE.MP4")
    unreceipted = ingest_clip(station, src, "NORECEIPT.MP4", days_old=OLD)
    young = ingest_clip(station, src, "YOUNG.MP4", days_old=100)
    receipt(station, young)
    longterm = old_receipted(station, src, "LONG.MP4")
    records.tag(station, [longterm], case="L-1", kind="other", retention="long-term", reason="r")
    permanent = old_receipted(station, src, "CASE.MP4", case="C-1")  # case, no type: permanent
    penalty = old_receipted(station, src, "PENALTY.MP4")
    records.tag(
        station,
        [penalty],
        case="P-1",
        kind="other",
        retention="evidence",
        reason="r",
        case_type="penalty",
    )
    held = old_receipted(station, src, "HELD.MP4")
    boss = add_user(station, "boss", SUPERVISOR)
    holds.add_hold(station, boss, files=[held], reason="dispute", note="complaint 7")

    the_plan = retention.plan(station, POLICY, now(), PLATFORM_KEYS)
    assert [s.sha256 for s in the_plan.due] == [due]
    states = {s.sha256: s.state for s in the_plan.blocked}
    assert states == {
        unreceipted: retention.UNRECEIPTED,
        young: retention.NOT_DUE,
        longterm: retention.NEVER,
        permanent: retention.NEVER,
        penalty: retention.NOT_DUE,  # 3650 days
        held: retention.HELD,
    }
    assert the_plan.counts() == {"held": 1, "never purged": 2, "not receipted": 1, "not yet due": 2}

    s = retention.status(station, penalty, POLICY, now(), PLATFORM_KEYS)
    assert s is not None and s.klass == "evidence" and s.cases == ("P-1",)
    assert s.keep_until == s.counted_from + timedelta(days=3650)
    assert s.purge_after == s.keep_until + timedelta(days=30)
    routine = retention.status(station, due, POLICY, now(), PLATFORM_KEYS)
    assert routine is not None and routine.due and routine.blockers == ()
    assert routine.keep_until == max(
        routine.counted_from + timedelta(days=365), add_years(routine.counted_from, 1)
    )
    h = retention.status(station, held, POLICY, now(), PLATFORM_KEYS)
    assert h is not None and h.holds and "under hold" in h.blockers[0]
    assert retention.status(station, "0" * 64, POLICY, now(), PLATFORM_KEYS) is None


def test_run_purges_entry_first_then_the_file_and_the_audit_calls_it_lawful(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    kept = ingest_clip(station, tmp_path / "src", "B.MP4", days_old=OLD)  # no receipt
    path = station.store.path_for(sha)
    assert path.is_file()
    thumbs = station.home / "thumbs"
    thumbs.mkdir(exist_ok=True)
    for still in (sha, kept):
        (thumbs / f"{still}.jpg").write_bytes(b"a still")
    result = run(station)
    ((purged, seq),) = result.purged
    assert purged == sha and not path.exists() and station.store.has(kept)
    # Its still goes with it (for a photo, the still is the picture); others stay.
    assert not (thumbs / f"{sha}.jpg").exists() and (thumbs / f"{kept}.jpg").exists()
    entry = station.ledger.entry(seq)
    st = retention.status(station, sha, POLICY, now(), PLATFORM_KEYS)
    assert st is not None and st.state == "purged" and st.purge_lawful
    assert entry.type == PURGE and entry.body == {
        "sha256": sha,
        "size": 2000,
        "class": "routine",
        "cases": [],
        "recorded_at": rfc3339(st.recorded_at),
        "counted_from": rfc3339(st.counted_from),
        "keep_until": rfc3339(st.keep_until),  # type: ignore[arg-type]
        "purge_after": rfc3339(st.purge_after),  # type: ignore[arg-type]
        "receipt": st.receipt,
        "attested_by": st.receipt,  # the newest platform receipt: this file's
        "policy": result.policy_entry,
        "by": "console:test",
    }
    assert parse_when(entry.time) >= st.purge_after  # type: ignore[operator]
    report = audit(station, platform_keys=PLATFORM_KEYS)
    assert report.exit_code == 0, report.render()
    assert report.checked["files purged lawfully"] == 1
    assert report.checked["files intact"] == "1 of 1"
    # Without the platform's key the auditor cannot call it lawful: a warning.
    unkeyed = audit(station)
    assert unkeyed.exit_code == 0 and unkeyed.kinds() >= {"purge_unverified"}
    assert "files purged lawfully" not in unkeyed.checked
    assert unkeyed.checked["files purged, receipts not verified"] == 1


def test_a_camera_clock_in_the_past_does_not_make_a_new_clip_due(
    station: Station, tmp_path: Path
) -> None:
    """A camera whose clock says 2002 records a clip today; it is docked and
    receipted today: it is kept a year from today, and a purge now is unlawful."""
    sha = ingest_clip(station, tmp_path / "src", "FRESH.MP4", days_old=9000, docked_days_ago=0)
    receipt(station, sha)
    result = run(station)
    assert result.purged == () and [s.state for s in result.plan.blocked] == [retention.NOT_DUE]
    st = retention.status(station, sha, POLICY, now(), PLATFORM_KEYS)
    assert st is not None and st.recorded_at < now() - timedelta(days=8999)
    assert st.keep_until is not None and st.keep_until > now() + timedelta(days=364)
    # A purge entry written behind the rule's back is unlawful, so says the verifier.
    policy = station.ledger.append(RETENTION_POLICY, {**POLICY.body(), "by": "console:x"}).seq
    station.ledger.append(
        PURGE,
        {
            "sha256": sha,
            "size": st.size,
            "class": st.klass,
            "cases": [],
            "recorded_at": rfc3339(st.recorded_at),
            "keep_until": rfc3339(add_years(st.recorded_at, 1)),
            "purge_after": rfc3339(add_years(st.recorded_at, 1) + timedelta(days=30)),
            "receipt": st.receipt,
            "policy": policy,
            "by": "console:x",
        },
    )
    station.store.path_for(sha).unlink()
    assert failures(station) == {"unlawful_purge"}


def test_a_run_without_a_platform_key_purges_nothing(station: Station, tmp_path: Path) -> None:
    old_receipted(station, tmp_path / "src", "A.MP4")
    size = station.ledger.size()
    with pytest.raises(ConfigError, match="no \\[upload\\] platform_key"):
        run(station, platform_keys=())
    assert station.ledger.size() == size
    # Signed by another key than the one the dock pins: not a receipt at all.
    result = run(station, platform_keys=(_other_key(),))
    assert result.purged == () and result.plan.counts() == {retention.UNRECEIPTED: 1}


def _other_key() -> Any:
    from hashing.note import NoteSigner

    return NoteSigner.generate("platform.example.org/receipts").verifier


def test_an_unsynchronised_or_backward_clock_purges_nothing(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_receipted(station, tmp_path / "src", "A.MP4")
    size = station.ledger.size()
    monkeypatch.setattr(hashing.entries, "_clock_status", lambda: "unsynced")
    with pytest.raises(ConfigError, match=r"not synchronised.*require_synced_clock"):
        run(station, require_synced_clock=True)
    assert station.ledger.size() == size
    monkeypatch.setattr(hashing.entries, "_clock_status", lambda: "ntp")
    # An entry dated a day ahead (written while the clock ran ahead): the clock
    # now reads earlier than the ledger's last entry.
    ahead = rfc3339(now() + timedelta(days=1))
    with station.ledger.transaction() as tx:
        (last,) = tx.conn.execute("SELECT data FROM entries WHERE seq = ?", (tx.size - 1,))
        prev = hashlib.sha256(bytes(last[0])).hexdigest()
        tx.append_entry(
            build_entry(
                seq=tx.size,
                kind="note",
                station=station.station_id,
                prev=prev,
                body={},
                time=ahead,
                clock="system/ntp",
            )
        )
    size = station.ledger.size()
    with pytest.raises(ConfigError, match="earlier than the ledger's last entry"):
        run(station, require_synced_clock=True)
    assert station.ledger.size() == size and not list(station.ledger.entries_of_type(PURGE))


def test_a_clock_ahead_waits_for_the_platforms_time(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dock's clock jumps two years ahead: clips recorded 100 days ago look
    due, but no platform receipt is dated past their date, so none is purged."""
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=100)
    receipt(station, sha)
    later = now() + timedelta(days=730)
    monkeypatch.setattr(retention, "clock_reading", lambda: (rfc3339(later), "system/unsynced"))
    result = run(station)
    assert result.purged == () and result.plan.counts() == {retention.AWAITING: 1}
    (item,) = result.plan.blocked
    assert "no platform receipt attests a time" in item.blockers[0]
    assert not list(station.ledger.entries_of_type(PURGE))


def test_a_clip_past_its_date_waits_for_a_receipt_dated_after_it(
    station: Station, tmp_path: Path
) -> None:
    old = ingest_clip(station, tmp_path / "src", "OLD.MP4", days_old=OLD)
    fresh = ingest_clip(station, tmp_path / "src", "NEW.MP4", days_old=1)
    # Its receipt came a year and a half ago, before its date: the platform has
    # attested no time past that date since.
    receipt(station, old, stored_at=now() - timedelta(days=OLD - 1))
    result = run(station)
    assert result.purged == () and result.plan.counts()[retention.AWAITING] == 1
    attesting = receipt(station, fresh)  # the next upload: the platform's time now
    result = run(station)
    assert [s for s, _ in result.purged] == [old]
    (purge,) = station.ledger.entries_of_type(PURGE)
    assert purge.body["attested_by"] == attesting.seq
    assert failures(station) == set()


def test_evidence_preservation_footage_is_evidence_once_tagged(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "SEIZE.MP4")
    entry = records.tag(station, [sha], case="A2026-0042", kind="evidence_preservation")
    assert entry.body["retention"] == "evidence" and "Art. 4-5" in entry.body["reason"]
    result = run(station)
    assert result.purged == () and result.plan.counts() == {retention.NEVER: 1}
    st = retention.status(station, sha, POLICY, now(), PLATFORM_KEYS)
    assert st is not None and st.klass == "evidence"
    assert st.why == "evidence of a case of type unknown: permanent"
    with pytest.raises(InputError, match="choose one of"):
        records.tag(station, [sha], case="X", kind="evidence_preservation", retention="forever")


def test_dry_run_changes_nothing(station: Station, tmp_path: Path) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    size = station.ledger.size()
    stored = station.store.stored()
    result = run(station, dry_run=True)
    assert result.dry_run and [s.sha256 for s in result.plan.due] == [sha]
    assert result.purged == () and result.policy_entry is None
    assert station.ledger.size() == size and station.store.stored() == stored


def test_a_crash_between_entry_and_unlink_is_finished_by_the_next_run(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")

    def power_cut(path: Path) -> None:
        raise OSError(5, "Input/output error", str(path))

    # The file system fails at the unlink, after the purge entry committed: the
    # state a power cut between the two leaves.
    monkeypatch.setattr(retention, "_remove", power_cut)
    result = run(station)
    ((_, seq),) = result.purged
    assert result.errors and station.store.has(sha)
    ((failed, detail),) = result.errors
    assert failed == sha
    assert f"purge entry {seq} written; file still stored, retried next run" in detail
    report = audit(station, platform_keys=PLATFORM_KEYS)
    assert report.exit_code == 0, report.render()  # a note, not a failure
    assert "purges not yet finished" in report.checked
    monkeypatch.undo()
    size = station.ledger.size()
    again = run(station)
    assert again.finished == (sha,) and again.purged == ()
    assert not station.store.has(sha) and station.ledger.size() == size  # no second entry
    report = audit(station, platform_keys=PLATFORM_KEYS)
    assert report.exit_code == 0 and report.checked["files purged lawfully"] == 1


def test_a_hold_set_after_an_interrupted_purge_keeps_the_file(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    records.tag(station, [sha], case="K-1", kind="other")
    monkeypatch.setattr(retention, "_remove", lambda path: (_ for _ in ()).throw(OSError(5, "EIO")))
    ((_, seq),) = run(station).purged
    monkeypatch.undo()
    boss = add_user(station, "boss", SUPERVISOR)
    hold = holds.add_hold(station, boss, case="K-1", reason="dispute", note="complaint 9")
    again = run(station)
    assert again.finished == () and station.store.has(sha)
    ((kept, detail),) = again.kept
    assert kept == sha and f"purge entry {seq} written, but hold {hold.seq}" in detail


def test_a_copy_that_fails_its_digest_is_never_purged(station: Station, tmp_path: Path) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    path = station.store.path_for(sha)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    size = station.ledger.size()
    result = run(station)
    assert result.purged == () and [s for s, _ in result.mismatched] == [sha]
    assert "kept for investigation" in result.mismatched[0][1]
    assert path.read_bytes() == bytes(data)
    assert not list(station.ledger.entries_of_type(PURGE))
    assert station.ledger.size() == size + 1  # the policy entry only


def test_a_hold_set_after_the_plan_stops_the_purge(station: Station, tmp_path: Path) -> None:
    """Each purge is judged again inside its write transaction, on the whole ledger."""
    sha = old_receipted(station, tmp_path / "src", "A.MP4", case=None)
    records.tag(station, [sha], case="K-1", kind="other")
    judge = retention.load(station, PLATFORM_KEYS)  # the plan's view
    seq = retention.ensure_policy(station, judge, POLICY, "console:test")
    boss = add_user(station, "boss", SUPERVISOR)
    holds.add_hold(station, boss, case="K-1", reason="incident", note="protest")
    skipped: list[tuple[str, str]] = []
    done = retention._purge_batch(station, judge, POLICY, seq, [sha], "console:test", skipped)
    assert done == [] and skipped and "under hold" in skipped[0][1]
    assert not list(station.ledger.entries_of_type(PURGE)) and station.store.has(sha)


def test_a_refused_batch_keeps_what_earlier_batches_did(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = old_receipted(station, tmp_path / "src", "A.MP4")
    second = old_receipted(station, tmp_path / "src", "B.MP4")
    monkeypatch.setattr(retention, "PURGE_BATCH", 1)
    body = retention._purge_body

    def wrong_for_the_second(standing: Any, *args: Any) -> dict[str, Any]:
        made = body(standing, *args)
        return {**made, "class": "evidence"} if len(purged()) else made

    def purged() -> list[Any]:
        return list(station.ledger.entries_of_type(PURGE))

    monkeypatch.setattr(retention, "_purge_body", wrong_for_the_second)
    result = run(station)
    assert len(result.purged) == 1 and result.refused is not None
    assert "refused by the retention rule" in result.refused
    assert "batches before it stand" in result.refused
    (done,) = purged()
    assert done.body["sha256"] == result.purged[0][0]
    assert {first, second} - {done.body["sha256"]} == {
        s for s in (first, second) if station.store.has(s)
    }


def test_report_lists_what_expires_when(station: Station, tmp_path: Path) -> None:
    src = tmp_path / "src"
    a = ingest_clip(station, src, "A.MP4", days_old=OLD)
    b = ingest_clip(station, src, "B.MP4", days_old=10)
    c = ingest_clip(station, src, "C.MP4", days_old=OLD)
    records.tag(station, [c], case="L", kind="other", retention="long-term", reason="r")
    forecast = retention.report(station, POLICY, now(), platform_keys=PLATFORM_KEYS)
    assert [s.sha256 for s in forecast.dated] == [a, b]  # soonest first
    assert forecast.never == {"long-term: never purged": 1}
    soon = retention.report(station, POLICY, now(), now() + timedelta(days=1), PLATFORM_KEYS)
    assert [s.sha256 for s in soon.dated] == [a] and soon.later == 1


def test_dates_past_the_calendar_never_stop_a_plan_or_report(
    station: Station, tmp_path: Path
) -> None:
    """A recording dated in the year 9999 and a policy of 3,000,000 days: never
    purged, and planning, reporting and verifying go on."""
    sha = old_receipted(station, tmp_path / "src", "A.MP4", case="C-1")
    with station.ledger.transaction() as tx:
        tx.append(
            INGEST,
            {"sha256": "ab" * 32, "size": 1, "recorded_at": "9999-12-31T23:59:59Z", "case": None},
        )
    huge = Policy(365, 30, {"penalty": 3_000_000}, "penalty")
    forecast = retention.report(station, huge, now(), platform_keys=PLATFORM_KEYS)
    assert forecast.dated == () and sum(forecast.never.values()) == 2
    assert retention.plan(station, huge, now(), PLATFORM_KEYS).due == ()
    policy = station.ledger.append(RETENTION_POLICY, {**huge.body(), "by": "console:x"}).seq
    station.ledger.append(PURGE, {"sha256": sha, "policy": policy})
    report = audit(station, platform_keys=PLATFORM_KEYS)
    assert report.exit_code == 1 and "unlawful_purge" in report.kinds()


def test_a_store_file_deleted_without_an_entry_is_never_laundered_by_a_purge(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    station.store.path_for(sha).unlink()
    result = run(station)
    assert result.purged == ()
    assert not list(station.ledger.entries_of_type(PURGE))
    assert [s.state for s in result.plan.blocked] == [retention.NOT_STORED]
    assert failures(station) == {"file_missing"}


def test_planning_many_recordings_whose_files_are_gone(station: Station) -> None:
    """5,000 recordings (ingest-shaped entries with signed receipts, no files) are
    each judged, and none is due: a file already gone is never given a purge entry.
    (The speed is measured in bench/records.py, not timed here.)"""
    n = 5_000
    with station.ledger.transaction() as tx:
        for i in range(n):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            ingest = tx.append(
                INGEST,
                {"sha256": sha, "size": 10, "recorded_at": "2020-01-01T00:00:00Z", "case": None},
            )
            stored = "2020-01-02T00:00:00Z"
            note = Receipt(station.station_id, sha, 10, ingest.seq, stored, 0).sign(PLATFORM)
            tx.append(
                UPLOAD_RECEIPT,
                {
                    "sha256": sha,
                    "size": 10,
                    "seq": ingest.seq,
                    "stored_at": stored,
                    "receipt": note,
                },
            )
    the_plan = retention.plan(station, POLICY, now() + timedelta(days=800), PLATFORM_KEYS)
    assert the_plan.counts() == {retention.NOT_STORED: n}
    assert the_plan.due == ()
