"""Spot checks (Art. 19): the rule, draws and redraws, findings after playback, roles."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import spotcheck
from agent.access import record_access
from agent.ingest import Binding, IngestResult, ingest_paths
from agent.roles import ACTIONS, ROLES, PermissionDeniedError, can
from agent.spotcheck import Criteria
from agent.users import User, UserPolicy, Users
from hashing.entries import INGEST
from hashing.errors import InputError, IntegrityError
from hashing.retention import PURGE
from hashing.station import Station

FAST = UserPolicy(scrypt_n=2**10)  # the stored parameters travel with each hash
SECRET = "correct horse 42"  # noqa: S105 - a test user's password
OFFICER_A, OFFICER_B = "100001", "100002"
START = datetime(2024, 5, 1, tzinfo=UTC)


def add_users(station: Station) -> dict[str, User]:
    """One user per role (plus a second auditor), with SECRET as password."""
    users = Users(station, FAST)
    try:
        made = {
            "audrey": users.add("audrey", "auditor", SECRET, officer=None, by="console:test"),
            "aubrey": users.add("aubrey", "auditor", SECRET, officer=None, by="console:test"),
            "sam": users.add("sam", "supervisor", SECRET, officer=None, by="console:test"),
            "olive": users.add("olive", "officer", SECRET, officer=OFFICER_A, by="console:test"),
            "adam": users.add("adam", "admin", SECRET, officer=None, by="console:test"),
        }
    finally:
        users.close()
    return made


def ingest_at(
    station: Station,
    folder: Path,
    *,
    officer: str | None,
    device: str,
    times: list[datetime],
    seed: int,
) -> list[str]:
    """Real files whose modification times are the recording times (the dock's
    file index dates a recording without a camera timestamp by its mtime)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shas = []
    for i, when in enumerate(times):
        path = folder / f"{device}_{seed}_{i:04d}.MP4"
        path.write_bytes(rng.randbytes(200 + i))
        ns = int(when.timestamp()) * 1_000_000_000
        os.utime(path, ns=(ns, ns))
        for item in ingest_paths(station, [path], Binding(officer=officer, device=device)):
            assert isinstance(item, IngestResult), item
            shas.append(item.sha256)
    return shas


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    st_ = Station.init(tmp_path / "home", "dock-01")
    yield st_
    st_.close()


@pytest.fixture
def world(
    station: Station, tmp_path: Path
) -> tuple[Station, dict[str, User], dict[str, list[str]]]:
    users = add_users(station)
    hours = [START + timedelta(hours=5 * i) for i in range(12)]
    shas = {
        OFFICER_A: ingest_at(
            station, tmp_path / "a", officer=OFFICER_A, device="CAM-A", times=hours, seed=1
        ),
        OFFICER_B: ingest_at(
            station, tmp_path / "b", officer=OFFICER_B, device="CAM-B", times=hours[:6], seed=2
        ),
    }
    return station, users, shas


def entry_count(station: Station, kind: str) -> int:
    return len(list(station.ledger.entries_of_type(kind)))


# --- the rule ------------------------------------------------------------------------


def test_percent_is_exact_decimal_text() -> None:
    assert spotcheck.check_percent("5") == "5"
    assert spotcheck.check_percent("2.50") == "2.5"
    assert spotcheck.check_percent("100") == "100"
    assert spotcheck.check_percent("0.0001") == "0.0001"
    for bad in ("0", "-1", "100.01", "abc", "nan", "inf", "0.00001", ""):
        with pytest.raises(InputError, match="--percent"):
            spotcheck.check_percent(bad)
    # ceil(P * N / 100) in exact arithmetic: 0.1 % of 1000 is 1, not 2 by float error.
    assert spotcheck.sample_size("0.1", 1000) == 1
    assert spotcheck.sample_size("2.5", 41) == 2
    assert spotcheck.sample_size("0.0001", 1) == 1
    assert spotcheck.sample_size("5", 0) == 0


digests = st.sets(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=60)
percents = st.one_of(
    st.integers(1, 100).map(str),
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(100), places=4, allow_nan=False).map(
        str
    ),
)


@settings(max_examples=150, deadline=None)
@given(population=digests, root=st.binary(min_size=32, max_size=32), percent=percents)
def test_sample_size_determinism_and_subset(
    population: set[str], root: bytes, percent: str
) -> None:
    sample = spotcheck.draw_sample(root, population, percent)
    n = len(population)
    expected = math.ceil(Decimal(percent) * n / 100)
    assert len(sample) == expected
    assert (len(sample) >= 1) == (n > 0)
    assert set(sample) <= population
    assert len(set(sample)) == len(sample)
    # Deterministic, and blind to the order the population is listed in.
    shuffled = list(population)
    random.Random(0).shuffle(shuffled)
    assert spotcheck.draw_sample(root, shuffled, percent) == sample
    # The k smallest scores, in ascending order.
    scores = sorted(
        hashlib.sha256(b"evidock spotcheck v1\n" + root + bytes.fromhex(d)).digest()
        for d in population
    )
    assert [spotcheck.score(root, d) for d in sample] == scores[: len(sample)]


@settings(max_examples=100, deadline=None)
@given(
    population=st.sets(
        st.binary(min_size=32, max_size=32).map(bytes.hex), min_size=12, max_size=40
    ),
    root=st.binary(min_size=32, max_size=32),
    bit=st.integers(0, 255),
)
def test_any_change_of_root_reorders_the_population(
    population: set[str], root: bytes, bit: int
) -> None:
    """Flipping any bit of the root gives another ranking (12! orders: a repeat is
    a 1-in-479-million event), so nobody can foresee a sample from an earlier one."""
    other = bytearray(root)
    other[bit // 8] ^= 1 << (bit % 8)
    assert spotcheck.draw_sample(root, population, "100") != spotcheck.draw_sample(
        bytes(other), population, "100"
    )


def test_every_recording_is_equally_likely_across_roots() -> None:
    population = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)]
    chosen = Counter(
        spotcheck.draw_sample(hashlib.sha256(b"root %d" % r).digest(), population, "10")[0]
        for r in range(3000)
    )
    assert set(chosen) == set(population)
    # Binomial(3000, 0.1): mean 300, sd 16.4; 6 sd either way.
    assert all(200 < count < 400 for count in chosen.values()), chosen


def test_criteria_overlap() -> None:
    day = timedelta(days=1)
    may = Criteria("5", None, START, START + 31 * day)
    assert may.overlaps(Criteria("5", OFFICER_A, START + 30 * day, None))
    assert not may.overlaps(Criteria("5", None, START + 31 * day, START + 61 * day))
    assert not Criteria("5", OFFICER_A).overlaps(Criteria("5", OFFICER_B))
    assert Criteria("5", OFFICER_A).overlaps(Criteria("5"))
    with pytest.raises(InputError, match="empty"):
        Criteria("5", None, START, START)
    with pytest.raises(InputError, match="officer"):
        Criteria("5", " bad")


# --- draws -----------------------------------------------------------------------------


def test_draw_samples_the_population_from_a_fresh_checkpoint(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    grew_to = station.ledger.size()
    assert station.ledger.latest_checkpoint().checkpoint.size < grew_to  # type: ignore[union-attr]
    criteria = Criteria("25", OFFICER_A, START, START + timedelta(hours=30))
    entry = spotcheck.draw(station, users["audrey"], criteria)
    body = entry.body
    # The ledger had grown: a checkpoint was signed over all of it, before the draw.
    assert body["size"] == grew_to == entry.seq
    assert station.ledger.latest_checkpoint().checkpoint.size == grew_to  # type: ignore[union-attr]
    assert body["root"] == station.ledger.root(grew_to).hex()
    assert body["checkpoint"] == station.ledger.latest_checkpoint().note  # type: ignore[union-attr]
    # Officer A's recordings at hours 0, 5, ..., 25: six of them; 25 % -> 2.
    assert body["population"] == 6
    assert len(body["sample"]) == 2
    assert set(body["sample"]) <= set(shas[OFFICER_A][:6])
    assert body["rule"] == spotcheck.RULE
    assert body["percent"] == "25"
    assert body["from"] == "2024-05-01T00:00:00Z"
    assert body["to"] == "2024-05-02T06:00:00Z"
    assert body["redraw_of"] is None and body["reason"] is None
    assert body["by"] == "audrey"
    root = bytes.fromhex(body["root"])
    assert body["sample"] == spotcheck.draw_sample(root, shas[OFFICER_A][:6], "25")


def test_purged_recordings_leave_the_population(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    gone = shas[OFFICER_B][0]
    station.ledger.append(PURGE, {"sha256": gone, "size": 200, "by": "console:test"})
    entry = spotcheck.draw(station, users["audrey"], Criteria("100", OFFICER_B))
    assert entry.body["population"] == 5
    assert gone not in entry.body["sample"]


def test_nothing_to_draw_is_refused(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, _ = world
    with pytest.raises(InputError, match="nothing to draw"):
        spotcheck.draw(station, users["audrey"], Criteria("5", "999999"))
    assert entry_count(station, spotcheck.DRAW) == 0


def test_a_redraw_needs_a_reason_and_stays_on_the_record(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, _ = world
    first = spotcheck.draw(station, users["audrey"], Criteria("20", OFFICER_A))
    size = station.ledger.size()
    # The same officer, an overlapping period: a redraw. Without a reason: refused,
    # and the message names the earlier draw.
    overlapping = Criteria("20", None, START + timedelta(hours=10), None)
    with pytest.raises(InputError, match=rf"earlier draw\(s\) {first.seq} "):
        spotcheck.draw(station, users["aubrey"], overlapping)
    assert station.ledger.size() == size
    with pytest.raises(InputError, match="overlaps no earlier draw"):
        spotcheck.draw(
            station, users["audrey"], Criteria("20", OFFICER_B, None, START), redraw_reason="x"
        )
    again = spotcheck.draw(
        station,
        users["aubrey"],
        overlapping,
        redraw_reason="first sample drawn with the wrong period",
    )
    assert again.body["redraw_of"] == first.seq
    assert again.body["reason"] == "first sample drawn with the wrong period"
    progress = spotcheck.review(station).progress(first.seq)
    assert progress.redrawn_by == (again.seq,)
    dropped = [c for c in progress.clips if c.sha256 not in again.body["sample"]]
    kept = [c for c in progress.clips if c.sha256 in again.body["sample"]]
    assert all(c.status == f"not reviewed (dropped by redraw {again.seq})" for c in dropped)
    assert all(c.status == "not reviewed" for c in kept)
    assert progress.dropped == len(dropped)


# --- findings ------------------------------------------------------------------------------


def test_a_finding_needs_a_playback_by_the_same_user_after_the_draw(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, _ = world
    audrey, aubrey = users["audrey"], users["aubrey"]
    clip = spotcheck.draw(station, audrey, Criteria("10", OFFICER_B)).body["sample"][0]
    # Played before the draw: does not count.
    record_access(station, audrey, "play", [clip], "curiosity")
    draw = spotcheck.draw(
        station, audrey, Criteria("100", OFFICER_B), redraw_reason="whole population this time"
    )
    size = station.ledger.size()
    with pytest.raises(
        InputError, match=rf'evidock play {clip} --purpose "spot check {draw.seq}" --as audrey'
    ):
        spotcheck.record_finding(station, audrey, draw.seq, clip, "ok", "fine")
    record_access(station, aubrey, "play", [clip], f"spot check {draw.seq}")
    # Played by another user: still not audrey's review.
    with pytest.raises(InputError, match="has not played"):
        spotcheck.record_finding(station, audrey, draw.seq, clip, "ok", "fine")
    assert station.ledger.size() == size + 1
    play = record_access(station, audrey, "play", [clip], f"spot check {draw.seq}")
    entry = spotcheck.record_finding(station, audrey, draw.seq, clip, "ok", "")
    assert dict(entry.body) == {
        "draw": draw.seq,
        "sha256": clip,
        "result": "ok",
        "note": "",
        "by": "audrey",
        "played": play.seq,
    }
    clip_state = next(
        c for c in spotcheck.review(station).progress(draw.seq).clips if c.sha256 == clip
    )
    assert clip_state.status == "reviewed"
    assert [p.user for p in clip_state.plays] == ["aubrey", "audrey"]


def test_finding_rules(world: tuple[Station, dict[str, User], dict[str, list[str]]]) -> None:
    station, users, shas = world
    audrey = users["audrey"]
    draw = spotcheck.draw(station, audrey, Criteria("50", OFFICER_B))
    clip = draw.body["sample"][0]
    outside = next(s for s in shas[OFFICER_B] if s not in draw.body["sample"])
    record_access(station, audrey, "play", [clip, outside], f"spot check {draw.seq}")
    with pytest.raises(InputError, match="not in the sample"):
        spotcheck.record_finding(station, audrey, draw.seq, outside, "ok", "")
    with pytest.raises(InputError, match="not a spot-check draw"):
        spotcheck.record_finding(station, audrey, draw.seq - 1, clip, "ok", "")
    for result in ("conduct_issue", "incomplete"):
        with pytest.raises(InputError, match="needs --note"):
            spotcheck.record_finding(station, audrey, draw.seq, clip, result, "  ")
    with pytest.raises(InputError, match="--result"):
        spotcheck.record_finding(station, audrey, draw.seq, clip, "bad", "x")
    first = spotcheck.record_finding(
        station, audrey, draw.seq, clip, "incomplete", "stops at 02:10"
    )
    # A second finding: only with a new note, and it amends the first.
    with pytest.raises(InputError, match="amendment needs a new --note"):
        spotcheck.record_finding(station, audrey, draw.seq, clip, "conduct_issue", "stops at 02:10")
    second = spotcheck.record_finding(
        station, audrey, draw.seq, clip, "conduct_issue", "stops at 02:10; officer covered the lens"
    )
    progress = spotcheck.review(station).progress(draw.seq)
    state = next(c for c in progress.clips if c.sha256 == clip)
    assert [f.seq for f in state.findings] == [first.seq, second.seq]
    assert state.findings[1].amends == first.seq
    assert state.result == "conduct_issue"
    assert progress.results()["conduct_issue"] == 1 and progress.results()["incomplete"] == 0
    assert progress.amendments == 1


@pytest.mark.parametrize("name", ["olive", "sam", "adam"])
def test_only_auditors_draw_and_record_findings(
    world: tuple[Station, dict[str, User], dict[str, list[str]]], name: str
) -> None:
    station, users, _ = world
    draw = spotcheck.draw(station, users["audrey"], Criteria("10", OFFICER_A))
    clip = draw.body["sample"][0]
    size = station.ledger.size()
    with pytest.raises(PermissionDeniedError, match="may not spotcheck"):
        spotcheck.draw(station, users[name], Criteria("10", OFFICER_B))
    with pytest.raises(PermissionDeniedError, match="may not spotcheck"):
        spotcheck.record_finding(station, users[name], draw.seq, clip, "ok", "")
    assert station.ledger.size() == size


def test_whoever_may_spotcheck_may_read_the_reports() -> None:
    """agent.commands.spotcheck lets `report` holders read spot checks; that covers
    every role that draws them only while this holds."""
    assert "spotcheck" in ACTIONS
    for role in ROLES:
        if can(role, "spotcheck"):
            assert can(role, "report"), role


# --- recomputing offline ---------------------------------------------------------------------


def test_recompute_from_entries_matches_and_catches_a_changed_entry(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, _ = world
    entry = spotcheck.draw(station, users["audrey"], Criteria("30"))
    lines = [raw for _, raw in station.ledger.raw_entries()]
    entries = spotcheck.parse_entries(lines)
    key = station.keys.load().verifier
    checkpoint = spotcheck.open_checkpoint(entry.body["checkpoint"], [key])
    result = spotcheck.recompute(entries, checkpoint, Criteria("30"))
    assert list(result.sample) == entry.body["sample"]
    assert result.population == entry.body["population"] == 18
    # One ingest entry rewritten (its officer changed): the entries are no longer the
    # checkpoint's, whatever the rule would say about them.
    i = next(e.seq for e in entries if e.type == INGEST)
    forged = [*lines[:i], lines[i].replace(OFFICER_A.encode(), OFFICER_B.encode()), *lines[i + 1 :]]
    with pytest.raises(IntegrityError, match="do not match the checkpoint"):
        spotcheck.recompute(spotcheck.parse_entries(forged), checkpoint, Criteria("30"))
    with pytest.raises(InputError, match="expected"):
        spotcheck.parse_entries(lines[1:])
