"""The retention rule (hashing.retention): class and dates, and when a purge entry
is lawful. Properties over generated ledgers, checked against a model written
here from the rule's text (Art. 16-17), not from the code."""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.records.registry import ACT_KINDS, RETENTION_CLASSES, TAG
from agent.users.accounts import CONSOLE as USERS_CONSOLE
from agent.users.accounts import USER as USERS_USER
from agent.users.roles import ADMIN as ROLES_ADMIN
from hashing.errors import InputError
from hashing.note import NoteSigner
from hashing.retention import (
    ADMIN,
    BEYOND_CALENDAR,
    CLASSES,
    CONSOLE,
    EVIDENCE,
    EVIDENCE_PRESERVATION,
    HOLD,
    HOLD_RELEASE,
    INGEST,
    LONG_TERM,
    MAX_DAYS,
    PURGE,
    RECEIPT_TYPE,
    RETENTION_POLICY,
    ROUTINE,
    TYPES,
    UPLOAD_RECEIPT,
    USER,
    Dates,
    Judge,
    Policy,
    add_years,
    judge,
    parse_when,
    rfc3339,
)
from uploader.outbox import UPLOAD_RECEIPT as OUTBOX_RECEIPT
from uploader.protocol import RECEIPT_TYPE as PROTOCOL_RECEIPT_TYPE
from uploader.protocol import Receipt

T0 = datetime(2020, 1, 1, 8, 30, tzinfo=UTC)
SHA = hashlib.sha256(b"clip").hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()
SIZE = 4096
STATION = "dock-01"
PLATFORM = NoteSigner.generate("platform.example.org/receipts")
ROGUE = NoteSigner.generate("platform.example.org/receipts")  # same name, another key
KEYS = (PLATFORM.verifier,)


def test_entry_types_and_classes_match_their_writers() -> None:
    assert TAG == "tag" and OUTBOX_RECEIPT == UPLOAD_RECEIPT and USERS_USER == USER
    assert tuple(RETENTION_CLASSES) == CLASSES and EVIDENCE_PRESERVATION in ACT_KINDS
    assert ROLES_ADMIN == ADMIN and USERS_CONSOLE == CONSOLE
    assert PROTOCOL_RECEIPT_TYPE == RECEIPT_TYPE


def test_times_round_trip() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    assert rfc3339(when) == "2024-02-29T23:59:59.123456Z"
    assert parse_when(rfc3339(when)) == when
    assert parse_when("2024-03-01T07:00:00+08:00") == datetime(2024, 2, 29, 23, tzinfo=UTC)
    assert parse_when("2024-03-01T07:00:00") is None  # no zone: not a time here
    assert parse_when("yesterday") is None
    assert add_years(datetime(2024, 2, 29, tzinfo=UTC), 1) == datetime(2025, 3, 1, tzinfo=UTC)
    for edge in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)):
        assert parse_when(rfc3339(edge)) == edge  # four-digit years at both ends
    assert parse_when("0001-01-01T00:00:00+08:00") is None  # before the calendar: not a time


def test_policy_body_round_trips_and_refuses_nonsense() -> None:
    policy = Policy(400, 7, {"penalty": 10950, "criminal": None}, "penalty", 480)
    assert Policy.from_body({**policy.body(), "by": "console:root"}) == policy
    older = {k: v for k, v in policy.body().items() if k != "utc_offset_minutes"}
    assert Policy.from_body(older).utc_offset_minutes == 0  # recorded before offsets: UTC
    for bad in (
        {"routine_days": "365", "grace_days": 30, "evidence_days": {}},
        {"routine_days": 365, "grace_days": True, "evidence_days": {}},
        {"routine_days": 365, "grace_days": 30, "evidence_days": {"x": "30"}},
        {"routine_days": 365, "grace_days": 30, "evidence_days": [], "default_case_type": None},
        {"routine_days": 365, "grace_days": 30, "evidence_days": {}, "default_case_type": 5},
        {"routine_days": 365, "grace_days": 30, "evidence_days": {}, "utc_offset_minutes": "8"},
        {"routine_days": 365, "grace_days": 30, "evidence_days": {}, "utc_offset_minutes": 1440},
    ):
        with pytest.raises(InputError, match="retention policy"):
            Policy.from_body(bad)
    assert Policy(364).problems() and Policy(365, -1).problems()
    assert Policy(365, 0, {"x": 0}).problems() and not Policy().problems()
    # Periods are capped at 100 years ("permanent" beyond), so no date leaves the calendar.
    assert not Policy(MAX_DAYS, MAX_DAYS, {"x": MAX_DAYS}).problems()
    assert Policy(MAX_DAYS + 1).problems() and Policy(365, MAX_DAYS + 1).problems()
    (problem,) = Policy(365, 0, {"penalty": 3_000_000}).problems()
    assert "permanent" in problem
    assert Policy(365, 0, {}, None, 1440).problems()


# -- the model: the rule as the regulation states it --------------------------------


def model_year_later(start: datetime, minutes: int) -> datetime:
    """One calendar year later on the wall clock of a station ``minutes`` east of UTC
    (29 February: 1 March). Raises past the calendar."""
    wall = start + timedelta(minutes=minutes)
    year, month, day = wall.year + 1, wall.month, wall.day
    if (month, day) == (2, 29) and not calendar.isleap(year):
        month, day = 3, 1
    return wall.replace(year=year, month=month, day=day) - timedelta(minutes=minutes)


def model_keep_until(
    policy: Policy, klass: str, start: datetime, case_types: list[str | None]
) -> datetime | None:
    """Longest applicable rule wins; None: never (also past the year 9999)."""
    if klass == LONG_TERM:
        return None
    try:
        candidates = [
            start + timedelta(days=policy.routine_days),
            model_year_later(start, policy.utc_offset_minutes),
        ]
        if klass == EVIDENCE:
            for case_type in case_types or [None]:
                default = policy.default_case_type
                if case_type is not None and case_type in policy.evidence_days:
                    days = policy.evidence_days[case_type]
                elif default is not None and default in policy.evidence_days:
                    days = policy.evidence_days[default]
                else:
                    days = None  # unknown and no default: permanent
                if days is None:
                    return None
                candidates.append(start + timedelta(days=days))
        keep = max(candidates)
        keep + timedelta(days=policy.grace_days)  # a purge date past the calendar: never
    except (OverflowError, ValueError):
        return None
    return keep


TYPE_NAMES = ["penalty", "coercion", "criminal", "odd"]
offsets = st.one_of(st.sampled_from([0, 480, -300, 345, 840, -720]), st.integers(-1439, 1439))
policies = st.builds(
    Policy,
    routine_days=st.integers(365, MAX_DAYS),
    grace_days=st.integers(0, 90),
    evidence_days=st.dictionaries(
        st.sampled_from(TYPE_NAMES[:3]),
        st.one_of(st.none(), st.integers(1, MAX_DAYS)),
        max_size=3,
    ),
    default_case_type=st.one_of(st.none(), st.sampled_from(TYPE_NAMES)),
    utc_offset_minutes=offsets,
)
# The whole calendar, to the microsecond: its ends and the days around 29 February.
starts = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime.max, timezones=st.just(UTC)),
    st.datetimes(
        min_value=datetime(2023, 2, 27), max_value=datetime(2024, 3, 2), timezones=st.just(UTC)
    ),
    st.datetimes(min_value=datetime(9998, 12, 1), max_value=datetime.max, timezones=st.just(UTC)),
)


class Ledger:
    """Entries as a ledger holds them: (seq, type, time, body), times increasing."""

    def __init__(self, start: datetime = T0) -> None:
        self.entries: list[tuple[int, str, str, Mapping[str, Any]]] = []
        self.clock = start

    def add(self, kind: str, body: Mapping[str, Any], at: datetime | None = None) -> int:
        self.clock = at if at is not None else self.clock + timedelta(minutes=1)
        self.entries.append((len(self.entries), kind, rfc3339(self.clock), dict(body)))
        return len(self.entries) - 1

    def users(self) -> None:
        """An admin and a supervisor, added from the console."""
        for name, role in (("adm", ADMIN), ("sup", "supervisor")):
            self.add(USER, {"action": "add", "name": name, "role": role, "by": "console:root"})

    def receipt(
        self,
        sha: str = SHA,
        *,
        stored_at: datetime,
        size: int = SIZE,
        seq: int | None = None,
        signer: NoteSigner = PLATFORM,
        station: str = STATION,
    ) -> int:
        ingest = seq if seq is not None else self.ingest_seq(sha)
        note = Receipt(station, sha, size, ingest, rfc3339(stored_at), len(self.entries)).sign(
            signer
        )
        body = {"sha256": sha, "size": size, "seq": ingest, "stored_at": rfc3339(stored_at)}
        return self.add(UPLOAD_RECEIPT, {**body, "receipt": note})

    def ingest_seq(self, sha: str) -> int:
        found = [s for s, k, _, b in self.entries if k == INGEST and b.get("sha256") == sha]
        return found[0] if found else 0


def ingest_body(
    sha: str = SHA, *, recorded: datetime | None = T0, case: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"sha256": sha, "size": SIZE, "case": case, "source_mtime": rfc3339(T0)}
    if recorded is not None:
        body["recorded_at"] = rfc3339(recorded)
    return body


def tag_body(
    klass: str, case: str, case_type: str | None = None, sha: str = SHA, kind: str = "other"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "files": [sha],
        "case": case,
        "kind": kind,
        "retention": klass,
        "reason": "r",
        "by": None,
    }
    if case_type is not None:
        body["case_type"] = case_type
    return body


@given(
    policy=policies,
    recorded=starts,
    docked=starts,
    tags=st.lists(
        st.tuples(
            st.sampled_from(CLASSES),
            st.sampled_from(["A", "B", "C"]),
            st.one_of(st.none(), st.sampled_from(TYPE_NAMES)),
            st.sampled_from(["other", EVIDENCE_PRESERVATION]),
        ),
        max_size=5,
    ),
    ingest_case=st.one_of(st.none(), st.sampled_from(["A", "D"])),
)
@settings(max_examples=500)
def test_longest_rule_wins(
    policy: Policy,
    recorded: datetime,
    docked: datetime,
    tags: list[tuple[str, str, str | None, str]],
    ingest_case: str | None,
) -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(recorded=recorded, case=ingest_case), at=docked)
    for klass, case, case_type, kind in tags:
        ledger.add(TAG, tag_body(klass, case, case_type, kind=kind), at=docked)
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None
    # Periods count from the recording date, but never from before it was docked.
    start = max(recorded, docked)
    assert (standing.recorded, standing.start) == (recorded, start)

    # The strongest class of any tag wins; evidence preservation and a case binding
    # at ingest make evidence.
    def made(klass: str, kind: str) -> str:
        return EVIDENCE if kind == EVIDENCE_PRESERVATION and klass == ROUTINE else klass

    klasses = [made(k, kind) for k, _, _, kind in tags] + ([EVIDENCE] if ingest_case else [])
    expected_class = max([ROUTINE, *klasses], key=CLASSES.index)
    assert standing.klass == expected_class
    # The case types of the cases it is evidence in, from any tag of those cases.
    evidence_cases = {c for k, c, _, kind in tags if made(k, kind) == EVIDENCE} | (
        {ingest_case} if ingest_case else set()
    )
    types: list[str | None] = []
    for case in evidence_cases:
        named = {t for _, c, t, _ in tags if c == case and t is not None}
        types += sorted(named) or [None]
    dates = standing.dates(policy)  # total: never raises, whatever the dates
    expected = model_keep_until(policy, expected_class, start, types)
    event("never" if expected is None else "dated")
    assert dates.keep_until == expected
    if dates.keep_until is not None:
        local = timezone(timedelta(minutes=policy.utc_offset_minutes))
        year_later = dates.keep_until.astimezone(local)
        began = start.astimezone(local)
        # Art. 16: at least one year, on the station's calendar.
        assert (year_later.year, year_later.month, year_later.day) >= (
            began.year + 1,
            began.month,
            began.day,
        )
        assert dates.keep_until >= start + timedelta(days=policy.routine_days)
        assert dates.purge_after == dates.keep_until + timedelta(days=policy.grace_days)
    else:
        assert dates.purge_after is None


def test_the_recording_date_falls_back_to_the_file_time_then_the_ingest_time() -> None:
    ledger = Ledger(datetime(2022, 1, 1, tzinfo=UTC))
    ledger.add(INGEST, ingest_body(recorded=datetime(2019, 5, 1, tzinfo=UTC)))
    ledger.add(INGEST, {"sha256": OTHER, "size": 1, "source_mtime": "2018-01-01T00:00:00Z"})
    third = hashlib.sha256(b"third").hexdigest()
    at = datetime(2022, 6, 1, tzinfo=UTC)
    ledger.add(INGEST, {"sha256": third, "size": 1, "recorded_at": "garbage"}, at=at)
    j = judge(ledger.entries)
    first, second, last = j.standing(SHA), j.standing(OTHER), j.standing(third)
    assert first is not None and second is not None and last is not None
    assert first.recorded == datetime(2019, 5, 1, tzinfo=UTC)
    assert second.recorded == datetime(2018, 1, 1, tzinfo=UTC)
    assert last.recorded == at
    # The periods count from when each reached the dock, later than those dates.
    assert first.start == parse_when(ledger.entries[0][2]) and last.start == at


def test_a_camera_clock_in_the_past_does_not_shorten_the_period() -> None:
    """A clip recorded by a camera whose clock says 2002, docked (and receipted)
    today: a purge the next day is not due, however old the camera says it is."""
    docked = datetime(2026, 11, 27, 10, tzinfo=UTC)
    ledger = Ledger(docked)
    ledger.add(INGEST, ingest_body(recorded=datetime(2002, 4, 7, tzinfo=UTC)), at=docked)
    receipt = ledger.receipt(stored_at=docked + timedelta(hours=1))
    policy = ledger.add(RETENTION_POLICY, Policy().body())
    j = judge(ledger.entries, KEYS, STATION)
    standing = j.standing(SHA)
    assert standing is not None and standing.start == docked
    dates = standing.dates(Policy())
    assert dates.keep_until == add_years(docked, 1)
    next_day = docked + timedelta(days=1)
    body = {
        **purge_body(receipt, policy),
        "recorded_at": "2002-04-07T00:00:00Z",
        "counted_from": rfc3339(docked),
    }
    j.observe(9, PURGE, rfc3339(next_day), body)
    assert not j.verdicts[9].lawful
    assert any("not due before" in r for r in j.verdicts[9].reasons)


# -- a purge is lawful iff every condition holds ---------------------------------------


@dataclass(frozen=True)
class Scenario:
    ingested: bool
    receipted: bool
    receipt_signed: bool  # by the trusted platform key (else by another key)
    receipt_size_right: bool
    cites_receipt: bool
    attested: bool  # a platform receipt before the purge is dated at or after its date
    policy_recorded: bool
    policy_valid: bool
    klass: str
    states_class_right: bool
    states_dates_right: bool
    due: bool
    hold: str  # none, file, case, case_tagged_later, released, not_by_admin, other_file
    purged_before: bool
    clock_ok: bool  # no later entry is dated before the purge


GOOD = Scenario(
    True, True, True, True, True, True, True, True, ROUTINE, True, True, True, "none", False, True
)
FLAGS = [k for k, v in GOOD.__dict__.items() if isinstance(v, bool)]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """The lawful scenario with a few conditions broken (often none), any class and hold."""
    broken = draw(st.one_of(st.just(set()), st.sets(st.sampled_from(FLAGS), max_size=3)))
    flags = {k: (k not in broken) != (k == "purged_before") for k in FLAGS}
    klass = draw(st.one_of(st.just(ROUTINE), st.sampled_from(CLASSES)))
    unheld = st.sampled_from(["none", "released", "other_file"])
    held = st.sampled_from(["file", "case", "case_tagged_later", "not_by_admin"])
    hold = draw(st.one_of(unheld, held))
    return Scenario(**flags, klass=klass, hold=hold)


def hold_body(files: list[str], case: str | None, reason: str = "dispute") -> dict[str, Any]:
    return {"files": files, "case": case, "reason": reason, "note": "n", "by": "sup"}


def play(s: Scenario, keys: tuple[Any, ...] = KEYS) -> tuple[Judge, int, bool]:
    """Build the ledger of a scenario, ending with a purge entry; return the judge,
    the purge's seq and whether the model says it is lawful."""
    ledger = Ledger()
    ledger.users()
    policy = Policy(365 if s.policy_valid else 100, 30, {"penalty": 3650}, "penalty", 480)
    start = T0
    if s.ingested:
        ledger.add(INGEST, ingest_body(recorded=start), at=start)
    ledger.add(INGEST, ingest_body(OTHER, recorded=start), at=start)
    if s.klass == EVIDENCE:
        ledger.add(TAG, tag_body(EVIDENCE, "E-1", "penalty"))
    elif s.klass == LONG_TERM:
        ledger.add(TAG, tag_body(LONG_TERM, "L-1"))
    receipt = None
    if s.receipted:
        receipt = ledger.receipt(
            stored_at=ledger.clock,
            size=SIZE if s.receipt_size_right else SIZE + 1,
            signer=PLATFORM if s.receipt_signed else ROGUE,
        )
    policy_seq = (
        ledger.add(RETENTION_POLICY, {**policy.body(), "by": "console:t"})
        if s.policy_recorded
        else 999
    )
    if s.hold == "file":
        ledger.add(HOLD, hold_body([SHA], None))
    elif s.hold == "case":
        ledger.add(TAG, tag_body(ROUTINE, "H-1"))
        ledger.add(HOLD, hold_body([], "H-1", "incident"))
    elif s.hold == "case_tagged_later":
        ledger.add(HOLD, hold_body([], "H-2", "other"))
        ledger.add(TAG, tag_body(ROUTINE, "H-2"))
    elif s.hold in ("released", "not_by_admin"):
        seq = ledger.add(HOLD, hold_body([SHA], None))
        by = "adm" if s.hold == "released" else "sup"
        ledger.add(HOLD_RELEASE, {"hold": seq, "note": "done", "by": by})
    elif s.hold == "other_file":
        ledger.add(HOLD, hold_body([OTHER], None))
    keep = model_keep_until(policy, s.klass, start, ["penalty"])
    purge_after = None if keep is None else keep + timedelta(days=30)
    reference = purge_after or start + timedelta(days=3650)
    at = reference + timedelta(seconds=1) if s.due else reference - timedelta(days=1)
    # The platform's newest time before the purge: after the purge date, or before it.
    stamp = at if s.attested else reference - timedelta(days=2)
    newest = ledger.receipt(OTHER, stored_at=stamp, seq=ledger.ingest_seq(OTHER))
    stated_class = s.klass if s.states_class_right else next(c for c in CLASSES if c != s.klass)
    recorded = start if s.states_dates_right else start - timedelta(days=1)
    body = {
        "sha256": SHA,
        "size": SIZE,
        "class": stated_class,
        "cases": [],
        "recorded_at": rfc3339(recorded),
        "counted_from": rfc3339(start),
        "keep_until": None if keep is None else rfc3339(keep),
        "purge_after": None if purge_after is None else rfc3339(purge_after),
        "receipt": receipt if s.cites_receipt else 12345,
        "attested_by": newest,
        "policy": policy_seq,
        "by": "console:t",
    }
    if s.purged_before:
        ledger.add(PURGE, body, at=max(at, ledger.clock))
    seq = ledger.add(PURGE, body, at=max(at, ledger.clock))
    if not s.clock_ok:
        ledger.add("note", {}, at=ledger.clock - timedelta(days=1))
    lawful = (
        s.ingested
        and s.receipted
        and s.receipt_signed
        and s.receipt_size_right
        and s.cites_receipt
        and s.attested
        and s.policy_recorded
        and s.policy_valid
        and s.states_class_right
        and s.states_dates_right
        and s.klass != LONG_TERM
        and s.due
        and s.hold in ("none", "released", "other_file")
        and not s.purged_before
        and s.clock_ok
    )
    return judge(ledger.entries, keys, STATION), seq, lawful


@given(scenarios())
@settings(max_examples=600)
def test_a_purge_is_lawful_iff_every_condition_holds(s: Scenario) -> None:
    j, seq, lawful = play(s)
    event("lawful" if lawful else "unlawful")
    verdict = j.verdicts[seq]
    assert verdict.lawful == lawful, verdict.reasons
    assert bool(verdict.reasons) == (not lawful) and not verdict.unverified


def test_each_condition_alone_makes_a_purge_unlawful_and_says_why() -> None:
    good = GOOD
    j, seq, lawful = play(good)
    assert lawful and j.verdicts[seq].lawful, j.verdicts[seq].reasons
    expectations = {
        "ingested": "no ingest entry",
        "receipted": "no upload receipt",
        "receipt_signed": "no upload receipt",
        "receipt_size_right": "no upload receipt",
        "cites_receipt": "cites receipt",
        "attested": "no platform receipt attests",
        "policy_recorded": "not a retention_policy entry",
        "policy_valid": "Art. 16",
        "states_class_right": "states class",
        "states_dates_right": "states recorded_at",
        "due": "not due before",
        "clock_ok": "a clock that was ahead",
    }
    for name, words in expectations.items():
        j, seq, lawful = play(Scenario(**{**good.__dict__, name: False}))
        assert not lawful
        assert any(words in r for r in j.verdicts[seq].reasons), (name, j.verdicts[seq].reasons)
    for hold in ("file", "case", "case_tagged_later", "not_by_admin"):
        j, seq, _ = play(Scenario(**{**good.__dict__, "hold": hold}))
        assert any("under hold" in r for r in j.verdicts[seq].reasons), hold
    j, seq, _ = play(Scenario(**{**good.__dict__, "hold": "not_by_admin"}))
    assert any("'sup', not an admin" in r for r in j.verdicts[seq].reasons)
    j, seq, _ = play(Scenario(**{**good.__dict__, "klass": LONG_TERM}))
    assert any("long-term" in r for r in j.verdicts[seq].reasons)
    j, seq, _ = play(Scenario(**{**good.__dict__, "purged_before": True}))
    assert any("already purged" in r for r in j.verdicts[seq].reasons)


def test_without_a_platform_key_a_purge_is_unverified_never_lawful() -> None:
    j, seq, _ = play(GOOD, keys=())
    verdict = j.verdicts[seq]
    assert not verdict.lawful and verdict.unverified and verdict.reasons == ()
    # A receipt signed by any key reads the same without a key to tell them apart ...
    j, seq, _ = play(Scenario(**{**GOOD.__dict__, "receipt_signed": False}), keys=())
    assert j.verdicts[seq].unverified
    # ... but what the receipts say is still checked: a dock clock that ran ahead.
    j, seq, _ = play(Scenario(**{**GOOD.__dict__, "attested": False}), keys=())
    assert not j.verdicts[seq].unverified and not j.verdicts[seq].lawful


def test_only_a_signed_receipt_for_this_station_and_file_counts() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(), at=T0)
    stored = T0 + timedelta(hours=1)
    forged = ledger.add(UPLOAD_RECEIPT, {"sha256": SHA, "size": SIZE, "seq": 0})  # no note
    elsewhere = ledger.receipt(stored_at=stored, station="dock-02")
    rogue = ledger.receipt(stored_at=stored, signer=ROGUE)
    wrong_entry = ledger.receipt(stored_at=stored, seq=7)
    j = judge(ledger.entries, KEYS, STATION)
    standing = j.standing(SHA)
    assert standing is not None and standing.receipt is None
    # Signed for this station, it still tells the platform's time, though it
    # receipts no file of this ledger.
    assert standing.attested is not None and standing.attested.receipt == wrong_entry
    good = ledger.receipt(stored_at=stored)
    j = judge(ledger.entries, KEYS, STATION)
    standing = j.standing(SHA)
    assert standing is not None and standing.receipt == good
    assert standing.attested is not None and standing.attested.receipt == good
    assert good not in (forged, elsewhere, rogue)


def test_a_release_counts_only_by_an_admin_at_that_point() -> None:
    ledger = Ledger()
    ledger.users()
    ledger.add(INGEST, ingest_body())
    # Not from the console nor an admin: this "add" makes nobody an admin.
    ledger.add(USER, {"action": "add", "name": "mallory", "role": ADMIN, "by": "sup"})
    first = ledger.add(HOLD, hold_body([SHA], None))
    ledger.add(HOLD_RELEASE, {"hold": first, "note": "n", "by": "mallory"})
    second = ledger.add(HOLD, hold_body([SHA], None))
    ledger.add(USER, {"action": "disable", "name": "adm", "by": "console:root"})
    ledger.add(HOLD_RELEASE, {"hold": second, "note": "n", "by": "adm"})  # disabled by then
    j = judge(ledger.entries)
    standing = j.standing(SHA)
    assert standing is not None and standing.holds == (first, second)
    assert len(standing.refused_releases) == 2 and not j.released
    ledger.add(USER, {"action": "add", "name": "boss", "role": ADMIN, "by": "console:root"})
    ledger.add(HOLD_RELEASE, {"hold": first, "note": "n", "by": "boss"})
    j = judge(ledger.entries)
    assert j.holds_covering(SHA) == (second,) and set(j.released) == {first}


def test_a_year_is_counted_on_the_stations_calendar() -> None:
    """1 March 2023 01:00 in Beijing is 28 February 17:00 UTC: a year later is
    1 March 2024 01:00 Beijing time, not 29 February (a day short, grace 0)."""
    cst = timezone(timedelta(hours=8))
    recorded = datetime(2023, 3, 1, 1, tzinfo=cst)
    ledger = Ledger(recorded)
    ledger.add(INGEST, ingest_body(recorded=recorded), at=recorded)
    receipt = ledger.receipt(stored_at=recorded + timedelta(hours=1))
    policy = Policy(365, 0, {}, None, 480)
    policy_seq = ledger.add(RETENTION_POLICY, policy.body())
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None
    dates = standing.dates(policy)
    assert dates.keep_until == datetime(2024, 3, 1, 1, tzinfo=cst)
    purge_after = dates.purge_after
    assert purge_after is not None
    assert standing.dates(Policy(365, 0)).keep_until == datetime(2024, 2, 29, 1, tzinfo=cst)
    body = {
        **purge_body(receipt, policy_seq),
        "recorded_at": rfc3339(recorded),
        "counted_from": rfc3339(recorded),
    }
    for at, lawful in (
        (datetime(2024, 2, 29, 12, tzinfo=cst), False),  # a day short on the local calendar
        (datetime(2024, 3, 1, 1, tzinfo=cst), True),
    ):
        entries = list(ledger.entries)
        attest = len(entries)
        entries.append((attest, UPLOAD_RECEIPT, rfc3339(at), fresh_receipt(OTHER, at, seq=attest)))
        stated = {
            **body,
            "keep_until": rfc3339(dates.keep_until),
            "purge_after": rfc3339(purge_after),
            "attested_by": attest,
        }
        entries.append((attest + 1, PURGE, rfc3339(at), stated))
        j = judge(entries, KEYS, STATION)
        assert j.verdicts[attest + 1].lawful == lawful, j.verdicts[attest + 1].reasons


def fresh_receipt(sha: str, stored_at: datetime, *, seq: int) -> dict[str, Any]:
    """A signed receipt body for a file this ledger does not hold (it still
    attests the platform's time)."""
    note = Receipt(STATION, sha, 1, seq, rfc3339(stored_at), seq).sign(PLATFORM)
    return {"sha256": sha, "size": 1, "seq": seq, "stored_at": rfc3339(stored_at), "receipt": note}


def purge_body(receipt: int, policy: int) -> dict[str, Any]:
    return {"sha256": SHA, "size": SIZE, "class": ROUTINE, "receipt": receipt, "policy": policy}


def test_evidence_of_a_permanent_case_type_is_never_purged() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(case="C-9"), at=T0)
    ledger.add(TAG, tag_body(ROUTINE, "C-9", "criminal"))  # the case's type, from any tag
    j = judge(ledger.entries)
    standing = j.standing(SHA)
    assert standing is not None and standing.klass == EVIDENCE
    assert standing.dates(Policy(365, 0, {"criminal": None, "penalty": 10})).keep_until is None
    # Unknown type and no default: permanent; with a default: the default's period.
    assert standing.dates(Policy(365, 0, {"penalty": 4000})).keep_until is None
    dates = standing.dates(Policy(365, 0, {"penalty": 4000}, "penalty"))
    assert dates.keep_until == T0 + timedelta(days=4000)


def test_evidence_preservation_is_evidence_from_its_tag() -> None:
    """Art. 4-5: a tag of act kind evidence_preservation makes evidence, whatever its
    retention field says; it never lowers long-term."""
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(), at=T0)
    ledger.add(TAG, tag_body(ROUTINE, "A-1", "penalty", kind=EVIDENCE_PRESERVATION))
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None and standing.klass == EVIDENCE
    assert standing.evidence_cases == ("A-1",) and standing.case_types == ("penalty",)
    ledger.add(TAG, tag_body(LONG_TERM, "L-1"))
    ledger.add(TAG, tag_body(ROUTINE, "A-2", kind=EVIDENCE_PRESERVATION))
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None and standing.klass == LONG_TERM


def test_a_weaker_tag_never_lowers_the_class() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body())
    ledger.add(TAG, tag_body(LONG_TERM, "X"))
    ledger.add(TAG, tag_body(ROUTINE, "X"))
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None and standing.klass == LONG_TERM


def test_dates_past_the_calendar_are_never() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(recorded=datetime(9999, 6, 1, tzinfo=UTC)), at=T0)
    ledger.add(INGEST, ingest_body(OTHER, case="C-1"), at=T0)
    j = judge(ledger.entries)
    late, evidence = j.standing(SHA), j.standing(OTHER)
    assert late is not None and evidence is not None
    assert late.dates(Policy()) == Dates(None, None, BEYOND_CALENDAR)
    huge = Policy(365, 0, {"penalty": 3_000_000}, "penalty")  # refused by problems(), still total
    assert evidence.dates(huge).purge_after is None
    assert evidence.dates(Policy(365, 10**12)).purge_after is None


def test_a_forged_purge_without_a_digest_is_unlawful() -> None:
    j = Judge()
    verdict = j.observe(0, PURGE, "2030-01-01T00:00:00Z", {"sha256": "../../etc"})
    assert verdict is not None and not verdict.lawful


def test_a_purge_stating_another_size_or_date_is_unlawful() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(), at=T0)
    receipt = ledger.receipt(stored_at=T0 + timedelta(hours=1))
    policy = ledger.add(RETENTION_POLICY, Policy().body())
    keep = add_years(T0, 1)
    late = T0 + timedelta(days=800)
    attest = ledger.receipt(OTHER, stored_at=late, seq=0)
    body = {
        **purge_body(receipt, policy),
        "recorded_at": rfc3339(T0),
        "counted_from": rfc3339(T0),
        "keep_until": rfc3339(keep),
        "purge_after": rfc3339(keep + timedelta(days=30)),
        "attested_by": attest,
    }
    for change, words in (
        ({}, None),
        ({"size": SIZE + 1}, "states size"),
        ({"purge_after": rfc3339(keep)}, "states purge_after"),
        ({"keep_until": rfc3339(keep + timedelta(days=1))}, "states keep_until"),
        ({"recorded_at": "2002-01-01T00:00:00Z"}, "states recorded_at"),
        ({"counted_from": "2002-01-01T00:00:00Z"}, "states counted_from"),
        ({"attested_by": receipt}, "states attested_by"),
    ):
        seq = len(ledger.entries)
        j = judge([*ledger.entries, (seq, PURGE, rfc3339(late), {**body, **change})], KEYS, STATION)
        reasons = j.verdicts[seq].reasons
        if words is None:
            assert not reasons, reasons
        else:
            assert any(words in r for r in reasons), reasons


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
fields = st.sampled_from(
    [
        "sha256",
        "size",
        "recorded_at",
        "source_mtime",
        "case",
        "files",
        "retention",
        "kind",
        "case_type",
        "receipt",
        "hold",
        "by",
        "action",
        "name",
        "role",
        "policy",
        "routine_days",
        "grace_days",
        "evidence_days",
        "utc_offset_minutes",
        "class",
        "purge_after",
    ]
)
times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime.max, timezones=st.just(UTC)).map(
        rfc3339
    ),
    st.text(max_size=30),
)
odd_values = st.one_of(
    json_values,
    st.just(SHA),
    st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+08:00", "permanent"]),
    st.integers(-(10**12), 10**12),
)


@given(
    st.lists(
        st.tuples(st.sampled_from(TYPES), times, st.dictionaries(fields, odd_values)),
        max_size=12,
    )
)
@settings(max_examples=300)
def test_the_rule_never_raises_for_content(
    entries: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """What the verifier reads is whatever the ledger holds: it judges, never raises."""
    j = judge(
        [(i, kind, when, body) for i, (kind, when, body) in enumerate(entries)], KEYS, STATION
    )
    recorded = [j.policy(i) for i in range(len(entries))]
    for sha in j.digests():
        standing = j.standing(sha)
        assert standing is not None
        for policy in [Policy(), *recorded]:
            if isinstance(policy, Policy):
                standing.dates(policy)
                standing.blockers(policy, T0)
