"""Retention on a real station (agent.retention): policy from the configuration
and in the ledger, each recording's status, the plan, and the run that purges,
crash-safe and idempotent, re-judged inside its transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import config, holds, records, retention
from agent.roles import SUPERVISOR
from hashing.audit import audit
from hashing.entries import INGEST
from hashing.retention import PURGE, RETENTION_POLICY, Policy, add_years, parse_when, rfc3339
from hashing.station import Station
from tests.retention_support import add_user, ingest_clip, new_station, receipt

POLICY = Policy(365, 30, {"penalty": 3650}, None)
OLD = 500  # days: past routine (365 days, at least a year) plus 30 days' grace


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    s = new_station(tmp_path)
    yield s
    s.close()


def old_receipted(station: Station, folder: Path, name: str, **kw: object) -> str:
    sha = ingest_clip(station, folder, name, days_old=OLD, **kw)  # type: ignore[arg-type]
    receipt(station, sha)
    return sha


def now() -> datetime:
    return datetime.now(UTC)


def test_policy_comes_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "evidock.toml"
    path.write_text(
        "[retention]\nroutine_days = 400\ngrace_days = 0\n"
        'evidence_days = { penalty = 10950, criminal = "permanent" }\n'
        'default_case_type = "penalty"\n',
        encoding="utf-8",
    )
    policy = retention.policy_from_config(config.load(path))
    assert policy == Policy(400, 0, {"penalty": 10950, "criminal": None}, "penalty")
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    # The shipped defaults: no case types, so evidence is kept permanently.
    assert retention.policy_from_config(config.load(empty)) == Policy(365, 30, {}, None)


def test_the_policy_is_recorded_once_and_again_when_it_changes(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    first = retention.run(station, POLICY, by="console:test")
    assert [s for s, _ in first.purged] == [sha]
    policies = list(station.ledger.entries_of_type(RETENTION_POLICY))
    assert len(policies) == 1 and first.policy_entry == policies[0].seq
    assert policies[0].body == {**POLICY.body(), "by": "console:test"}
    size = station.ledger.size()
    again = retention.run(station, POLICY, by="console:test")
    assert again.purged == () and station.ledger.size() == size  # idempotent: nothing new
    changed = Policy(400, 30, {"penalty": 3650}, None)
    other = old_receipted(station, tmp_path / "src", "B.MP4")
    third = retention.run(station, changed, by="console:test")
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

    the_plan = retention.plan(station, POLICY, now())
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

    s = retention.status(station, penalty, POLICY, now())
    assert s is not None and s.klass == "evidence" and s.cases == ("P-1",)
    assert s.keep_until == s.recorded_at + timedelta(days=3650)
    assert s.purge_after == s.keep_until + timedelta(days=30)
    routine = retention.status(station, due, POLICY, now())
    assert routine is not None and routine.due and routine.blockers == ()
    assert routine.keep_until == max(
        routine.recorded_at + timedelta(days=365), add_years(routine.recorded_at, 1)
    )
    h = retention.status(station, held, POLICY, now())
    assert h is not None and h.holds and "under hold" in h.blockers[0]
    assert retention.status(station, "0" * 64, POLICY, now()) is None


def test_run_purges_entry_first_then_the_file_and_the_audit_calls_it_lawful(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    kept = ingest_clip(station, tmp_path / "src", "B.MP4", days_old=OLD)  # no receipt
    path = station.store.path_for(sha)
    assert path.is_file()
    result = retention.run(station, POLICY, by="console:test")
    ((purged, seq),) = result.purged
    assert purged == sha and not path.exists() and station.store.has(kept)
    entry = station.ledger.entry(seq)
    st = retention.status(station, sha, POLICY, now())
    assert st is not None and st.state == "purged" and st.purge_lawful
    assert entry.type == PURGE and entry.body == {
        "sha256": sha,
        "size": 2000,
        "class": "routine",
        "cases": [],
        "recorded_at": rfc3339(st.recorded_at),
        "keep_until": rfc3339(st.keep_until),  # type: ignore[arg-type]
        "purge_after": rfc3339(st.purge_after),  # type: ignore[arg-type]
        "receipt": st.receipt,
        "policy": result.policy_entry,
        "by": "console:test",
    }
    assert parse_when(entry.time) >= st.purge_after  # type: ignore[operator]
    report = audit(station)
    assert report.exit_code == 0, report.render()
    assert report.checked["files purged lawfully"] == 1
    assert report.checked["files intact"] == "1 of 1"


def test_dry_run_changes_nothing(station: Station, tmp_path: Path) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    size = station.ledger.size()
    stored = station.store.stored()
    result = retention.run(station, POLICY, by="console:test", dry_run=True)
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
    result = retention.run(station, POLICY, by="console:test")
    assert [s for s, _ in result.purged] == [sha] and result.errors
    assert station.store.has(sha)
    report = audit(station)
    assert report.exit_code == 0, report.render()  # a note, not a failure
    assert "purges not yet finished" in report.checked
    monkeypatch.undo()
    size = station.ledger.size()
    again = retention.run(station, POLICY, by="console:test")
    assert again.finished == (sha,) and again.purged == ()
    assert not station.store.has(sha) and station.ledger.size() == size  # no second entry
    report = audit(station)
    assert report.exit_code == 0 and report.checked["files purged lawfully"] == 1


def test_a_copy_that_fails_its_digest_is_never_purged(station: Station, tmp_path: Path) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    path = station.store.path_for(sha)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    size = station.ledger.size()
    result = retention.run(station, POLICY, by="console:test")
    assert result.purged == () and [s for s, _ in result.mismatched] == [sha]
    assert "kept for investigation" in result.mismatched[0][1]
    assert path.read_bytes() == bytes(data)
    assert not list(station.ledger.entries_of_type(PURGE))
    assert station.ledger.size() == size + 1  # the policy entry only


def test_a_hold_set_after_the_plan_stops_the_purge(station: Station, tmp_path: Path) -> None:
    """Each purge is judged again inside its write transaction, on the whole ledger."""
    sha = old_receipted(station, tmp_path / "src", "A.MP4", case=None)
    records.tag(station, [sha], case="K-1", kind="other")
    judge = retention.load(station)  # the plan's view
    seq = retention.ensure_policy(station, judge, POLICY, "console:test")
    boss = add_user(station, "boss", SUPERVISOR)
    holds.add_hold(station, boss, case="K-1", reason="incident", note="protest")
    skipped: list[tuple[str, str]] = []
    done = retention._purge_batch(station, judge, POLICY, seq, [sha], "console:test", skipped)
    assert done == [] and skipped and "under hold" in skipped[0][1]
    assert not list(station.ledger.entries_of_type(PURGE)) and station.store.has(sha)


def test_report_lists_what_expires_when(station: Station, tmp_path: Path) -> None:
    src = tmp_path / "src"
    a = ingest_clip(station, src, "A.MP4", days_old=OLD)
    b = ingest_clip(station, src, "B.MP4", days_old=10)
    c = ingest_clip(station, src, "C.MP4", days_old=OLD)
    records.tag(station, [c], case="L", kind="other", retention="long-term", reason="r")
    forecast = retention.report(station, POLICY, now())
    assert [s.sha256 for s in forecast.dated] == [a, b]  # soonest first
    assert forecast.never == {"long-term: never purged": 1}
    soon = retention.report(station, POLICY, now(), now() + timedelta(days=1))
    assert [s.sha256 for s in soon.dated] == [a] and soon.later == 1


def test_a_store_file_deleted_without_an_entry_is_never_laundered_by_a_purge(
    station: Station, tmp_path: Path
) -> None:
    sha = old_receipted(station, tmp_path / "src", "A.MP4")
    station.store.path_for(sha).unlink()
    result = retention.run(station, POLICY, by="console:test")
    assert result.purged == ()
    assert not list(station.ledger.entries_of_type(PURGE))
    assert [s.state for s in result.plan.blocked] == [retention.NOT_STORED]
    assert audit(station).kinds() == {"file_missing"}


def test_planning_many_recordings_whose_files_are_gone(station: Station) -> None:
    """5,000 recordings (ingest-shaped entries with receipts, no files) are each
    judged, and none is due: a file already gone is never given a purge entry.
    (The speed is measured in bench/records.py, not timed here.)"""
    n = 5_000
    with station.ledger.transaction() as tx:
        for i in range(n):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            tx.append(
                INGEST,
                {"sha256": sha, "size": 10, "recorded_at": "2020-01-01T00:00:00Z", "case": None},
            )
            tx.append("upload_receipt", {"sha256": sha, "size": 10, "seq": 0})
    the_plan = retention.plan(station, POLICY, now())
    assert the_plan.counts() == {retention.NOT_STORED: n}
    assert the_plan.due == ()
