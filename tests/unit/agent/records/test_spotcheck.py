"""Spot checks (Art. 19): the rule, requests, draws and redraws, findings after
playback, roles, and the offline recomputation."""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hashing.entries
from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records import spotcheck
from agent.records.access import record_access
from agent.records.spotcheck import Criteria
from agent.users.accounts import User, UserPolicy, Users
from agent.users.roles import ACTIONS, ROLES, PermissionDeniedError, can
from hashing.checkpoint import SignedCheckpoint
from hashing.entries import INGEST, Entry, build_entry
from hashing.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    SignatureError,
    UnknownSignerError,
)
from hashing.note import NoteSigner, parse_note, sign_note
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


def request_of(station: Station, draw: Entry) -> Entry:
    return station.ledger.entry(int(draw.body["request"]))


def all_entries(station: Station) -> list[Entry]:
    return spotcheck.parse_entries(raw for _, raw in station.ledger.raw_entries())


def forge(entries: list[Entry], seq: int, **body: Any) -> list[Entry]:
    """The entries with entry ``seq``'s body fields replaced (same seq, time and prev)."""
    e = entries[seq]
    forged = build_entry(
        seq=e.seq,
        kind=e.type,
        station=e.station,
        prev=e.prev,
        body={**e.body, **body},
        time=e.time,
        clock=e.clock,
    )
    return [*entries[:seq], forged, *entries[seq + 1 :]]


def v2_score(seed: bytes, sha: str) -> bytes:
    return hashlib.sha256(b"evidock spotcheck v2\n" + seed + bytes.fromhex(sha)).digest()


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
signatures = st.binary(min_size=64, max_size=64)
percents = st.one_of(
    st.integers(1, 100).map(str),
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(100), places=4, allow_nan=False).map(
        str
    ),
)


@settings(max_examples=150, deadline=None)
@given(population=digests, seed=signatures, percent=percents)
def test_sample_size_determinism_and_subset(
    population: set[str], seed: bytes, percent: str
) -> None:
    sample = spotcheck.draw_sample(seed, population, percent)
    n = len(population)
    expected = math.ceil(Decimal(percent) * n / 100)
    assert len(sample) == expected
    assert (len(sample) >= 1) == (n > 0)
    assert set(sample) <= population
    assert len(set(sample)) == len(sample)
    # Deterministic, and blind to the order the population is listed in.
    shuffled = list(population)
    random.Random(0).shuffle(shuffled)
    assert spotcheck.draw_sample(seed, shuffled, percent) == sample
    # The k smallest scores, in ascending order, by the v2 domain.
    scores = sorted(v2_score(seed, d) for d in population)
    assert [spotcheck.score(seed, d) for d in sample] == scores[: len(sample)]


@settings(max_examples=100, deadline=None)
@given(
    population=st.sets(
        st.binary(min_size=32, max_size=32).map(bytes.hex), min_size=12, max_size=40
    ),
    seed=signatures,
    bit=st.integers(0, 511),
)
def test_any_change_of_the_signature_reorders_the_population(
    population: set[str], seed: bytes, bit: int
) -> None:
    """Flipping any bit of the seed gives another ranking (12! orders: a repeat is
    a 1-in-479-million event), so one signature says nothing about another's sample."""
    other = bytearray(seed)
    other[bit // 8] ^= 1 << (bit % 8)
    assert spotcheck.draw_sample(seed, population, "100") != spotcheck.draw_sample(
        bytes(other), population, "100"
    )


def test_every_recording_is_equally_likely_across_signatures() -> None:
    population = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)]
    chosen = Counter(
        spotcheck.draw_sample(hashlib.sha512(b"sig %d" % r).digest(), population, "10")[0]
        for r in range(3000)
    )
    assert set(chosen) == set(population)
    # Binomial(3000, 0.1): mean 300, sd 16.4; 6 sd either way.
    assert all(200 < count < 400 for count in chosen.values()), chosen


def test_the_seed_is_the_verified_signature_of_the_key_asked_for(station: Station) -> None:
    key = station.keys.load()
    witness = NoteSigner.generate("witness.example")
    body = station.checkpoint().checkpoint.body()
    # Two signatures, the witness's first: the seed is the station key's one.
    note = sign_note(body, [witness, key])
    _, sigs = parse_note(note)
    assert spotcheck.seed_of(note, key.verifier) == sigs[1].signature
    assert spotcheck.seed_of(note, witness.verifier) == sigs[0].signature
    assert len(sigs[1].signature) == spotcheck.SIGNATURE_SIZE
    # Ed25519 signs deterministically: the same checkpoint gives the same seed again.
    assert spotcheck.seed_of(sign_note(body, [key]), key.verifier) == sigs[1].signature
    with pytest.raises(UnknownSignerError):
        spotcheck.seed_of(sign_note(body, [witness]), key.verifier)
    altered = note.replace(body, body + "extension\n")
    with pytest.raises(SignatureError, match="altered"):
        spotcheck.seed_of(altered, key.verifier)


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


def test_a_draw_commits_the_criteria_before_the_seed_exists(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    size_before = station.ledger.size()
    criteria = Criteria("25", OFFICER_A, START, START + timedelta(hours=30))
    entry = spotcheck.draw(station, users["audrey"], criteria)
    request = request_of(station, entry)
    # First the request, at the head of the ledger as it was.
    assert request.type == spotcheck.REQUEST and request.seq == size_before
    assert dict(request.body) == {
        "rule": "evidock spotcheck v2",
        "percent": "25",
        "officer": OFFICER_A,
        "from": "2024-05-01T00:00:00Z",
        "to": "2024-05-02T06:00:00Z",
        "redraw_of": None,
        "reason": None,
        "by": "audrey",
    }
    body = entry.body
    assert set(body) == {"request", "checkpoint", "size", "root", "population", "sample", "by"}
    assert body["request"] == request.seq and body["by"] == "audrey"
    # Then a checkpoint over a tree that holds the request, signed by the station.
    assert request.seq < body["size"] <= entry.seq
    assert body["root"] == station.ledger.root(body["size"]).hex()
    signed, _ = SignedCheckpoint.open(body["checkpoint"], [station.keys.load().verifier])
    assert signed.checkpoint.size == body["size"]
    assert body["checkpoint"] in [note for _, note, _ in station.ledger.checkpoints()]
    # Officer A's recordings at hours 0, 5, ..., 25: six of them; 25 % -> 2, ranked by
    # the station's signature over that checkpoint.
    assert body["population"] == 6
    signature = parse_note(body["checkpoint"])[1][0].signature
    ranked = sorted(shas[OFFICER_A][:6], key=lambda d: v2_score(signature, d))
    assert body["sample"] == ranked[:2]


def test_entries_after_the_request_stay_out_of_the_population(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon may ingest between the request and the checkpoint: the checkpoint
    then covers more, but the population is fixed by the request's position."""
    station, users, shas = world
    sign = station.checkpoint
    late: list[str] = []

    def ingest_then_sign() -> SignedCheckpoint:
        late.extend(
            ingest_at(
                station, tmp_path / "late", officer=OFFICER_B, device="CAM-L", times=[START], seed=9
            )
        )
        return sign()

    monkeypatch.setattr(station, "checkpoint", ingest_then_sign)
    entry = spotcheck.draw(station, users["audrey"], Criteria("100", OFFICER_B))
    request = request_of(station, entry)
    assert late and entry.body["size"] > request.seq + 1
    assert entry.body["population"] == 6
    assert set(entry.body["sample"]) == set(shas[OFFICER_B])
    assert spotcheck.recompute(all_entries(station), entry.seq).problems == ()


def test_purged_recordings_leave_the_population(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    gone = shas[OFFICER_B][0]
    station.ledger.append(PURGE, {"sha256": gone, "size": 200, "by": "console:test"})
    entry = spotcheck.draw(station, users["audrey"], Criteria("100", OFFICER_B))
    assert entry.body["population"] == 5
    assert gone not in entry.body["sample"]


def test_nothing_to_draw_is_refused_before_anything_is_written(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, _ = world
    size = station.ledger.size()
    with pytest.raises(InputError, match="nothing to draw"):
        spotcheck.draw(station, users["audrey"], Criteria("5", "999999"))
    assert station.ledger.size() == size


def test_a_redraw_needs_a_reason_and_stays_on_the_record(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, _ = world
    first = spotcheck.draw(station, users["audrey"], Criteria("20", OFFICER_A))
    first_request = first.body["request"]
    size = station.ledger.size()
    # The same officer, an overlapping period: a redraw. Without a reason: refused,
    # nothing written, and the message names the earlier request.
    overlapping = Criteria("20", None, START + timedelta(hours=10), None)
    with pytest.raises(InputError, match=rf"earlier request\(s\) {first_request} "):
        spotcheck.draw(station, users["aubrey"], overlapping)
    assert station.ledger.size() == size
    with pytest.raises(InputError, match="overlaps no earlier request"):
        spotcheck.draw(
            station, users["audrey"], Criteria("20", OFFICER_B, None, START), redraw_reason="x"
        )
    assert station.ledger.size() == size
    again = spotcheck.draw(
        station,
        users["aubrey"],
        overlapping,
        redraw_reason="first sample drawn with the wrong period",
    )
    asked = request_of(station, again)
    assert asked.body["redraw_of"] == first_request
    assert asked.body["reason"] == "first sample drawn with the wrong period"
    state = spotcheck.review(station)
    progress = state.progress(first_request)
    assert progress.redrawn_by == (asked.seq,)
    assert state.progress(asked.seq).redraw_of_draw == first.seq
    dropped = [c for c in progress.clips if c.sha256 not in again.body["sample"]]
    kept = [c for c in progress.clips if c.sha256 in again.body["sample"]]
    assert dropped
    assert all(c.status == f"not reviewed (dropped by redraw {again.seq})" for c in dropped)
    assert all(c.status == "not reviewed" for c in kept)
    assert progress.dropped == len(dropped)


def test_steering_by_appending_entries_leaves_a_redraw_with_its_reason(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    """The v1 attack: view clips on the kiosk (harmless access entries) until the
    seed suits, then draw. Under v2 the seed exists only after a request, so trying
    again means a second request for the same criteria: a recorded redraw."""
    station, users, shas = world
    audrey = users["audrey"]
    criteria = Criteria("25", OFFICER_A)
    first = spotcheck.draw(station, audrey, criteria)
    unwanted = first.body["sample"][0]
    for viewed in shas[OFFICER_A][:3]:
        record_access(station, audrey, "view", [viewed], "spot check preparation")
    size = station.ledger.size()
    with pytest.raises(InputError) as caught:
        spotcheck.draw(station, audrey, criteria)
    assert "--redraw-reason" in (caught.value.hint or "")
    assert station.ledger.size() == size
    second = spotcheck.draw(station, audrey, criteria, redraw_reason="sample lost")
    requests = list(station.ledger.entries_of_type(spotcheck.REQUEST))
    assert [r.seq for r in requests] == [first.body["request"], second.body["request"]]
    assert requests[1].body["redraw_of"] == requests[0].seq
    assert requests[1].body["reason"] == "sample lost"
    # Another tree, another signature, another ranking of the same population.
    assert first.body["population"] == second.body["population"] == 12
    assert first.body["checkpoint"] != second.body["checkpoint"]
    progress = spotcheck.review(station).progress(requests[0].seq)
    assert progress.redrawn_by == (requests[1].seq,)
    clip = next(c for c in progress.clips if c.sha256 == unwanted)
    if unwanted not in second.body["sample"]:
        assert clip.status == f"not reviewed (dropped by redraw {second.seq})"
    else:
        assert clip.status == "not reviewed"


def test_two_stations_with_one_ledger_and_different_keys_draw_different_samples(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The seed is the signature: the same ledger and the same request under
    another private key give another sample."""
    station, users, _ = world
    origin = station.origin
    station.close()
    twin_home = tmp_path / "twin"
    shutil.copytree(station.home, twin_home)
    key_file = twin_home / "keys" / "station.key"
    key_file.write_text(NoteSigner.generate(origin).private_text())
    key_file.chmod(0o600)
    # One clock for both, so the request entries are byte for byte the same.
    monkeypatch.setattr(
        hashing.entries, "clock_reading", lambda: ("2024-06-01T00:00:00.000000Z", "system/ntp")
    )
    drawn = []
    for home in (station.home, twin_home):
        dock = Station.open(home)
        try:
            entry = spotcheck.draw(dock, users["audrey"], Criteria("30"))
            drawn.append((request_of(dock, entry), entry, dock.keys.load().verifier))
        finally:
            dock.close()
    (req_a, a, key_a), (req_b, b, key_b) = drawn
    assert key_a != key_b
    assert req_a.raw == req_b.raw
    assert parse_note(a.body["checkpoint"])[0] == parse_note(b.body["checkpoint"])[0]
    assert a.body["population"] == b.body["population"] == 18
    seed_a = spotcheck.seed_of(a.body["checkpoint"], key_a)
    seed_b = spotcheck.seed_of(b.body["checkpoint"], key_b)
    assert seed_a != seed_b
    assert a.body["sample"] != b.body["sample"]
    population = sorted(set(a.body["sample"]) | set(b.body["sample"]))
    assert all(len(x.body["sample"]) == 6 for x in (a, b)) and len(population) > 6
    for seed, entry in ((seed_a, a), (seed_b, b)):
        scores = [v2_score(seed, d) for d in entry.body["sample"]]
        assert scores == sorted(scores)
    # An auditor holds each dock to the key its own ledger names: the twin's key is not it.
    assert spotcheck.recompute(all_entries_at(station.home), a.seq).problems == ()
    with pytest.raises(UnknownSignerError):
        spotcheck.recompute(all_entries_at(twin_home), b.seq)


def all_entries_at(home: Path) -> list[Entry]:
    dock = Station.open(home)
    try:
        return all_entries(dock)
    finally:
        dock.close()


def test_a_request_the_dock_never_drew_is_listed_and_counts_for_redraws(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    station, users, _ = world
    audrey = users["audrey"]

    def key_gone() -> SignedCheckpoint:
        raise ConfigError("keys/station.key: cannot read the station key")

    with monkeypatch.context() as m:
        m.setattr(station, "checkpoint", key_gone)
        with pytest.raises(ConfigError):
            spotcheck.draw(station, audrey, Criteria("20", OFFICER_A))
    (request,) = station.ledger.entries_of_type(spotcheck.REQUEST)
    assert entry_count(station, spotcheck.DRAW) == 0
    state = spotcheck.review(station)
    progress = state.progress(request.seq)
    assert progress.status == "requested, not drawn" and progress.clips == ()
    assert progress.as_dict()["draw"] is None and progress.as_dict()["sample"] == 0
    with pytest.raises(InputError, match="never drawn"):
        state.draw(request.seq)
    # It blocks nothing else: another officer is drawn without a reason...
    other = spotcheck.draw(station, audrey, Criteria("20", OFFICER_B))
    # ...but asking for the same officer again is a redraw, and both stay listed.
    with pytest.raises(InputError, match=rf"earlier request\(s\) {request.seq} "):
        spotcheck.draw(station, audrey, Criteria("20", OFFICER_A))
    again = spotcheck.draw(
        station, audrey, Criteria("20", OFFICER_A), redraw_reason="the dock stopped mid-draw"
    )
    assert request_of(station, again).body["redraw_of"] == request.seq
    state = spotcheck.review(station)
    listed = {p.request.seq: p for p in state.all_progress()}
    assert set(listed) == {request.seq, other.body["request"], again.body["request"]}
    assert listed[request.seq].redrawn_by == (again.body["request"],)
    assert listed[again.body["request"]].redraw_of_draw is None
    assert listed[again.body["request"]].status == "drawn"
    with pytest.raises(InputError, match=f"is the request of draw {again.seq}"):
        state.draw(again.body["request"])


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
    progress = spotcheck.review(station).progress(draw.body["request"])
    clip_state = next(c for c in progress.clips if c.sha256 == clip)
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
        spotcheck.record_finding(station, audrey, draw.seq - 2, clip, "ok", "")
    with pytest.raises(InputError, match=f"is the request of draw {draw.seq}"):
        spotcheck.record_finding(station, audrey, draw.body["request"], clip, "ok", "")
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
    progress = spotcheck.review(station).progress(draw.body["request"])
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
    """agent.cli.spotcheck lets `report` holders read spot checks; that covers
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
    result = spotcheck.recompute(entries, entry.seq, [key])
    assert result.problems == ()
    assert list(result.sample) == entry.body["sample"]
    assert result.population == entry.body["population"] == 18
    assert (result.request, result.size) == (entry.body["request"], entry.body["size"])
    assert result.key == key.vkey and result.anchored and result.rule == spotcheck.RULE
    assert not spotcheck.recompute(entries, entry.seq).anchored  # the genesis key, as given
    # One ingest entry rewritten (its officer changed): the entries are no longer the
    # checkpoint's, whatever the rule would say about them.
    i = next(e.seq for e in entries if e.type == INGEST)
    forged = [*lines[:i], lines[i].replace(OFFICER_A.encode(), OFFICER_B.encode()), *lines[i + 1 :]]
    with pytest.raises(IntegrityError, match="do not match the checkpoint"):
        spotcheck.recompute(spotcheck.parse_entries(forged), entry.seq, [key])
    with pytest.raises(InputError, match="expected"):
        spotcheck.parse_entries(lines[1:])
    with pytest.raises(InputError, match="not a spot-check draw"):
        spotcheck.recompute(entries, entry.body["request"], [key])


def test_recompute_rejects_a_draw_that_does_not_follow_the_rule(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    draw = spotcheck.draw(station, users["audrey"], Criteria("25", OFFICER_A))
    request = draw.body["request"]
    # A checkpoint signed after the draw, and a genuine one from before the request.
    record_access(station, users["audrey"], "view", [shas[OFFICER_A][0]], "after the draw")
    later = station.checkpoint()
    before = max(
        (cp for cp in station.ledger.checkpoints() if cp[0] <= request), key=lambda c: c[0]
    )
    entries = all_entries(station)
    key = station.keys.load().verifier
    assert spotcheck.recompute(entries, draw.seq, [key]).problems == ()

    # The seed must come from a checkpoint signed after the request and before the draw.
    for note in (before[1], later.note):
        size = int(note.split("\n")[1])
        cheat = forge(entries, draw.seq, checkpoint=note, size=size)
        with pytest.raises(IntegrityError, match=f"after request {request} and before the draw"):
            spotcheck.recompute(cheat, draw.seq, [key])

    # The same checkpoint signed by another key (same name, another key id).
    body = parse_note(draw.body["checkpoint"])[0]
    other = NoteSigner.generate(station.origin)
    cheat = forge(entries, draw.seq, checkpoint=sign_note(body, [other]))
    with pytest.raises(UnknownSignerError, match="not signed by any key you trust"):
        spotcheck.recompute(cheat, draw.seq)
    # Trusting the forger's key does not help: the ledger's key history names another.
    with pytest.raises(UnknownSignerError, match="among the keys you trust"):
        spotcheck.recompute(cheat, draw.seq, [other.verifier])
    # The auditor trusts another key: the genuine draw is not accepted on the dock's word.
    with pytest.raises(UnknownSignerError, match="among the keys you trust"):
        spotcheck.recompute(entries, draw.seq, [other.verifier])

    # The recorded sample or population count edited.
    sample = list(draw.body["sample"])
    swapped = next(s for s in shas[OFFICER_A] if s not in sample)
    result = spotcheck.recompute(forge(entries, draw.seq, sample=[*sample[:-1], swapped]), draw.seq)
    assert result.problems == (f"draw {draw.seq} records a different sample than the rule gives",)
    assert list(result.sample) == sample
    n = draw.body["population"]
    result = spotcheck.recompute(forge(entries, draw.seq, population=n + 1), draw.seq)
    assert result.problems == (f"draw {draw.seq} records a population of {n + 1}, recomputed {n}",)
    result = spotcheck.recompute(forge(entries, draw.seq, root="00" * 32), draw.seq)
    assert len(result.problems) == 1 and "its checkpoint says" in result.problems[0]

    # A draw that names something other than an earlier request.
    ingest = next(e.seq for e in entries if e.type == INGEST)
    for seq in (ingest, draw.seq, len(entries)):
        with pytest.raises(IntegrityError, match="not an earlier spotcheck_request"):
            spotcheck.recompute(forge(entries, draw.seq, request=seq), draw.seq)


def test_a_draw_after_a_key_rotation_is_seeded_by_the_new_key(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    old = station.keys.load()  # kept here; the dock destroys its copy on rotation
    station.rotate_key()
    new_key = station.keys.load().verifier
    draw = spotcheck.draw(station, users["audrey"], Criteria("50", OFFICER_B))
    seed = spotcheck.seed_of(draw.body["checkpoint"], new_key)
    assert draw.body["sample"] == spotcheck.draw_sample(seed, shas[OFFICER_B], "50")
    entries = all_entries(station)
    # The genesis key handed over to the new one by the rotation entry: trusting it is enough.
    for anchors in ([old.verifier], [new_key], []):
        result = spotcheck.recompute(entries, draw.seq, anchors)
        assert result.problems == () and result.key == new_key.vkey
    # The retired key (leaked, say) cannot seed a draw made after the rotation.
    stale = forge(
        entries,
        draw.seq,
        checkpoint=sign_note(parse_note(draw.body["checkpoint"])[0], [old]),
    )
    with pytest.raises(UnknownSignerError):
        spotcheck.recompute(stale, draw.seq, [old.verifier])


def test_a_v1_draw_is_still_read_recomputed_and_counts_as_a_request(
    world: tuple[Station, dict[str, User], dict[str, list[str]]],
) -> None:
    station, users, shas = world
    audrey = users["audrey"]
    # A draw as rule v1 wrote it: criteria in the draw entry, seeded by the checkpoint root.
    signed = station.checkpoint()
    root = signed.checkpoint.root
    ranked = sorted(
        shas[OFFICER_B],
        key=lambda d: hashlib.sha256(b"evidock spotcheck v1\n" + root + bytes.fromhex(d)).digest(),
    )
    old = station.ledger.append(
        spotcheck.DRAW,
        {
            "rule": "evidock spotcheck v1",
            "percent": "50",
            "officer": OFFICER_B,
            "from": None,
            "to": None,
            "checkpoint": signed.note,
            "size": signed.checkpoint.size,
            "root": root.hex(),
            "population": 6,
            "sample": ranked[:3],
            "redraw_of": None,
            "reason": None,
            "by": "audrey",
        },
    )
    record_access(station, audrey, "play", [ranked[0]], f"spot check {old.seq}")
    spotcheck.record_finding(station, audrey, old.seq, ranked[0], "ok", "")
    # A v2 request overlapping it is a redraw of it.
    with pytest.raises(InputError, match=rf"earlier request\(s\) {old.seq} "):
        spotcheck.draw(station, audrey, Criteria("50", OFFICER_B))
    new = spotcheck.draw(station, audrey, Criteria("50", OFFICER_B), redraw_reason="rule v2")
    assert request_of(station, new).body["redraw_of"] == old.seq
    state = spotcheck.review(station)
    progress = state.progress(old.seq)
    assert progress.draw is not None and progress.draw.seq == old.seq
    assert progress.draw.rule == spotcheck.RULE_V1 and progress.reviewed == 1
    assert progress.redrawn_by == (new.body["request"],)
    assert state.progress(new.body["request"]).redraw_of_draw == old.seq
    for clip in progress.clips[1:]:
        dropped = clip.sha256 not in new.body["sample"]
        assert clip.status == (
            f"not reviewed (dropped by redraw {new.seq})" if dropped else "not reviewed"
        )

    entries = all_entries(station)
    result = spotcheck.recompute(entries, old.seq, [station.keys.load().verifier])
    assert (result.rule, result.request, result.problems) == (spotcheck.RULE_V1, old.seq, ())
    assert list(result.sample) == ranked[:3] and result.population == 6
    edited = spotcheck.recompute(forge(entries, old.seq, sample=ranked[3:]), old.seq)
    assert edited.problems == (f"draw {old.seq} records a different sample than the rule gives",)
    later = forge(entries, old.seq, checkpoint=new.body["checkpoint"])
    with pytest.raises(IntegrityError, match="not all before it"):
        spotcheck.recompute(later, old.seq)
