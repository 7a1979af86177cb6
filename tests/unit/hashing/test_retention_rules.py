"""The retention rule (hashing.retention): class and dates, and when a purge entry
is lawful. Properties over generated ledgers, checked against a model written
here from the rule's text (Art. 16-17), not from the code."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.records import RETENTION_CLASSES, TAG
from hashing.errors import InputError
from hashing.retention import (
    CLASSES,
    EVIDENCE,
    HOLD,
    HOLD_RELEASE,
    INGEST,
    LONG_TERM,
    PURGE,
    RETENTION_POLICY,
    ROUTINE,
    UPLOAD_RECEIPT,
    Judge,
    Policy,
    add_years,
    judge,
    parse_when,
    rfc3339,
)
from uploader.outbox import UPLOAD_RECEIPT as OUTBOX_RECEIPT

T0 = datetime(2020, 1, 1, 8, 30, tzinfo=UTC)
SHA = hashlib.sha256(b"clip").hexdigest()
SIZE = 4096


def test_entry_types_and_classes_match_their_writers() -> None:
    assert TAG == "tag" and OUTBOX_RECEIPT == UPLOAD_RECEIPT
    assert tuple(RETENTION_CLASSES) == CLASSES


def test_times_round_trip() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    assert rfc3339(when) == "2024-02-29T23:59:59.123456Z"
    assert parse_when(rfc3339(when)) == when
    assert parse_when("2024-03-01T07:00:00+08:00") == datetime(2024, 2, 29, 23, tzinfo=UTC)
    assert parse_when("2024-03-01T07:00:00") is None  # no zone: not a time here
    assert parse_when("yesterday") is None
    assert add_years(datetime(2024, 2, 29, tzinfo=UTC), 1) == datetime(2025, 3, 1, tzinfo=UTC)


def test_policy_body_round_trips_and_refuses_nonsense() -> None:
    policy = Policy(400, 7, {"penalty": 10950, "criminal": None}, "penalty")
    assert Policy.from_body({**policy.body(), "by": "console:root"}) == policy
    for bad in (
        {"routine_days": "365", "grace_days": 30, "evidence_days": {}},
        {"routine_days": 365, "grace_days": True, "evidence_days": {}},
        {"routine_days": 365, "grace_days": 30, "evidence_days": {"x": "30"}},
        {"routine_days": 365, "grace_days": 30, "evidence_days": [], "default_case_type": None},
        {"routine_days": 365, "grace_days": 30, "evidence_days": {}, "default_case_type": 5},
    ):
        with pytest.raises(InputError, match="retention policy"):
            Policy.from_body(bad)
    assert Policy(364).problems() and Policy(365, -1).problems()
    assert Policy(365, 0, {"x": 0}).problems() and not Policy().problems()


# -- the model: the rule as the regulation states it --------------------------------


def model_keep_until(
    policy: Policy, klass: str, start: datetime, case_types: list[str | None]
) -> datetime | None:
    """Longest applicable rule wins; None: never."""
    if klass == LONG_TERM:
        return None
    candidates = [start + timedelta(days=policy.routine_days), add_years(start, 1)]
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
    return max(candidates)


TYPES = ["penalty", "coercion", "criminal", "odd"]
policies = st.builds(
    Policy,
    routine_days=st.integers(365, 3000),
    grace_days=st.integers(0, 90),
    evidence_days=st.dictionaries(
        st.sampled_from(TYPES[:3]), st.one_of(st.none(), st.integers(1, 20000)), max_size=3
    ),
    default_case_type=st.one_of(st.none(), st.sampled_from(TYPES)),
)
starts = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
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


def ingest_body(
    sha: str = SHA, *, recorded: datetime | None = T0, case: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"sha256": sha, "size": SIZE, "case": case, "source_mtime": rfc3339(T0)}
    if recorded is not None:
        body["recorded_at"] = rfc3339(recorded)
    return body


def tag_body(klass: str, case: str, case_type: str | None = None, sha: str = SHA) -> dict[str, Any]:
    body: dict[str, Any] = {
        "files": [sha],
        "case": case,
        "kind": "other",
        "retention": klass,
        "reason": "r",
        "by": None,
    }
    if case_type is not None:
        body["case_type"] = case_type
    return body


@given(
    policy=policies,
    start=starts,
    tags=st.lists(
        st.tuples(
            st.sampled_from(CLASSES),
            st.sampled_from(["A", "B", "C"]),
            st.one_of(st.none(), st.sampled_from(TYPES)),
        ),
        max_size=5,
    ),
    ingest_case=st.one_of(st.none(), st.sampled_from(["A", "D"])),
)
@settings(max_examples=300)
def test_longest_rule_wins(
    policy: Policy,
    start: datetime,
    tags: list[tuple[str, str, str | None]],
    ingest_case: str | None,
) -> None:
    ledger = Ledger(start)
    ledger.add(INGEST, ingest_body(recorded=start, case=ingest_case))
    for klass, case, case_type in tags:
        ledger.add(TAG, tag_body(klass, case, case_type))
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None
    # The strongest class of any tag (and a case binding at ingest: evidence) wins.
    klasses = [k for k, _, _ in tags] + ([EVIDENCE] if ingest_case else [])
    expected_class = max([ROUTINE, *klasses], key=CLASSES.index)
    assert standing.klass == expected_class
    # The case types of the cases it is evidence in, from any tag of those cases.
    evidence_cases = {c for k, c, _ in tags if k == EVIDENCE} | (
        {ingest_case} if ingest_case else set()
    )
    types: list[str | None] = []
    for case in evidence_cases:
        named = {t for _, c, t in tags if c == case and t is not None}
        types += sorted(named) or [None]
    dates = standing.dates(policy)
    assert dates.keep_until == model_keep_until(policy, expected_class, start, types)
    if dates.keep_until is not None:
        assert dates.keep_until >= add_years(start, 1)  # Art. 16: at least one year
        assert dates.keep_until >= start + timedelta(days=policy.routine_days)
        assert dates.purge_after == dates.keep_until + timedelta(days=policy.grace_days)
    else:
        assert dates.purge_after is None


def test_the_recording_date_falls_back_to_the_file_time_then_the_ingest_time() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(recorded=datetime(2019, 5, 1, tzinfo=UTC)))
    other = hashlib.sha256(b"other").hexdigest()
    ledger.add(INGEST, {"sha256": other, "size": 1, "source_mtime": "2018-01-01T00:00:00Z"})
    third = hashlib.sha256(b"third").hexdigest()
    at = datetime(2021, 6, 1, tzinfo=UTC)
    ledger.add(INGEST, {"sha256": third, "size": 1, "recorded_at": "garbage"}, at=at)
    j = judge(ledger.entries)
    assert j.standing(SHA).start == datetime(2019, 5, 1, tzinfo=UTC)  # type: ignore[union-attr]
    assert j.standing(other).start == datetime(2018, 1, 1, tzinfo=UTC)  # type: ignore[union-attr]
    assert j.standing(third).start == at  # type: ignore[union-attr]


# -- a purge is lawful iff every condition holds ---------------------------------------


@dataclass(frozen=True)
class Scenario:
    ingested: bool
    receipted: bool
    receipt_size_right: bool
    cites_receipt: bool
    policy_recorded: bool
    policy_valid: bool
    klass: str
    states_class_right: bool
    due: bool
    hold: str  # none, file, case, case_tagged_later, released, other_file
    purged_before: bool


GOOD = Scenario(True, True, True, True, True, True, ROUTINE, True, True, "none", False)
FLAGS = [k for k, v in GOOD.__dict__.items() if isinstance(v, bool)]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """The lawful scenario with a few conditions broken (often none), any class and hold."""
    broken = draw(st.one_of(st.just(set()), st.sets(st.sampled_from(FLAGS), max_size=3)))
    flags = {k: (k not in broken) != (k == "purged_before") for k in FLAGS}
    klass = draw(st.one_of(st.just(ROUTINE), st.sampled_from(CLASSES)))
    unheld = st.sampled_from(["none", "released", "other_file"])
    hold = draw(st.one_of(unheld, st.sampled_from(["file", "case", "case_tagged_later"])))
    return Scenario(**flags, klass=klass, hold=hold)


def play(s: Scenario) -> tuple[Judge, int, bool]:
    """Build the ledger of a scenario, ending with a purge entry; return the judge,
    the purge's seq and whether the model says it is lawful."""
    ledger = Ledger()
    policy = Policy(365 if s.policy_valid else 100, 30, {"penalty": 3650}, "penalty")
    start = T0
    if s.ingested:
        ledger.add(INGEST, ingest_body(recorded=start))
    other = hashlib.sha256(b"other").hexdigest()
    ledger.add(INGEST, ingest_body(other, recorded=start))
    if s.klass == EVIDENCE:
        ledger.add(TAG, tag_body(EVIDENCE, "E-1", "penalty"))
    elif s.klass == LONG_TERM:
        ledger.add(TAG, tag_body(LONG_TERM, "L-1"))
    receipt = None
    if s.receipted:
        size = SIZE if s.receipt_size_right else SIZE + 1
        receipt = ledger.add(UPLOAD_RECEIPT, {"sha256": SHA, "size": size, "seq": 0})
    policy_seq = (
        ledger.add(RETENTION_POLICY, {**policy.body(), "by": "console:t"})
        if s.policy_recorded
        else 999
    )
    if s.hold == "file":
        ledger.add(
            HOLD, {"files": [SHA], "case": None, "reason": "dispute", "note": "n", "by": "sup"}
        )
    elif s.hold == "case":
        ledger.add(TAG, tag_body(ROUTINE, "H-1"))
        ledger.add(
            HOLD, {"files": [], "case": "H-1", "reason": "incident", "note": "n", "by": "sup"}
        )
    elif s.hold == "case_tagged_later":
        ledger.add(HOLD, {"files": [], "case": "H-2", "reason": "other", "note": "n", "by": "sup"})
        ledger.add(TAG, tag_body(ROUTINE, "H-2"))
    elif s.hold == "released":
        seq = ledger.add(
            HOLD, {"files": [SHA], "case": None, "reason": "dispute", "note": "n", "by": "sup"}
        )
        ledger.add(HOLD_RELEASE, {"hold": seq, "note": "done", "by": "adm"})
    elif s.hold == "other_file":
        ledger.add(
            HOLD, {"files": [other], "case": None, "reason": "dispute", "note": "n", "by": "sup"}
        )
    keep = model_keep_until(policy, s.klass, start, ["penalty"])
    purge_after = None if keep is None else keep + timedelta(days=30)
    stated_class = s.klass if s.states_class_right else next(c for c in CLASSES if c != s.klass)
    body = {
        "sha256": SHA,
        "size": SIZE,
        "class": stated_class,
        "cases": [],
        "recorded_at": rfc3339(start),
        "keep_until": None if keep is None else rfc3339(keep),
        "purge_after": None if purge_after is None else rfc3339(purge_after),
        "receipt": receipt if s.cites_receipt else 12345,
        "policy": policy_seq,
        "by": "console:t",
    }
    if s.purged_before:
        ledger.add(PURGE, body, at=start + timedelta(days=20000))
    reference = purge_after or start + timedelta(days=3650)
    at = reference + timedelta(seconds=1) if s.due else reference - timedelta(days=1)
    seq = ledger.add(PURGE, body, at=max(at, ledger.clock))
    lawful = (
        s.ingested
        and s.receipted
        and s.receipt_size_right
        and s.cites_receipt
        and s.policy_recorded
        and s.policy_valid
        and s.states_class_right
        and s.klass != LONG_TERM
        and s.due
        and s.hold in ("none", "released", "other_file")
        and not s.purged_before
    )
    return judge(ledger.entries), seq, lawful


@given(scenarios())
@settings(max_examples=500)
def test_a_purge_is_lawful_iff_every_condition_holds(s: Scenario) -> None:
    j, seq, lawful = play(s)
    event("lawful" if lawful else "unlawful")
    verdict = j.verdicts[seq]
    assert verdict.lawful == lawful, verdict.reasons
    assert bool(verdict.reasons) == (not lawful)


def test_each_condition_alone_makes_a_purge_unlawful_and_says_why() -> None:
    good = GOOD
    j, seq, lawful = play(good)
    assert lawful and j.verdicts[seq].lawful
    expectations = {
        "ingested": "no ingest entry",
        "receipted": "no upload receipt",
        "receipt_size_right": "no upload receipt",
        "cites_receipt": "cites receipt",
        "policy_recorded": "not a retention_policy entry",
        "policy_valid": "Art. 16",
        "states_class_right": "states class",
        "due": "not due before",
    }
    for name, words in expectations.items():
        j, seq, lawful = play(Scenario(**{**good.__dict__, name: False}))
        assert not lawful
        assert any(words in r for r in j.verdicts[seq].reasons), (name, j.verdicts[seq].reasons)
    for hold in ("file", "case", "case_tagged_later"):
        j, seq, _ = play(Scenario(**{**good.__dict__, "hold": hold}))
        assert any("under hold" in r for r in j.verdicts[seq].reasons), hold
    j, seq, _ = play(Scenario(**{**good.__dict__, "klass": LONG_TERM}))
    assert any("long-term" in r for r in j.verdicts[seq].reasons)
    j, seq, _ = play(Scenario(**{**good.__dict__, "purged_before": True}))
    assert any("already purged" in r for r in j.verdicts[seq].reasons)


def test_evidence_of_a_permanent_case_type_is_never_purged() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body(case="C-9"))
    ledger.add(TAG, tag_body(ROUTINE, "C-9", "criminal"))  # the case's type, from any tag
    j = judge(ledger.entries)
    standing = j.standing(SHA)
    assert standing is not None and standing.klass == EVIDENCE
    assert standing.dates(Policy(365, 0, {"criminal": None, "penalty": 10})).keep_until is None
    # Unknown type and no default: permanent; with a default: the default's period.
    assert standing.dates(Policy(365, 0, {"penalty": 4000})).keep_until is None
    dates = standing.dates(Policy(365, 0, {"penalty": 4000}, "penalty"))
    assert dates.keep_until == T0 + timedelta(days=4000)


def test_a_weaker_tag_never_lowers_the_class() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body())
    ledger.add(TAG, tag_body(LONG_TERM, "X"))
    ledger.add(TAG, tag_body(ROUTINE, "X"))
    standing = judge(ledger.entries).standing(SHA)
    assert standing is not None and standing.klass == LONG_TERM


def test_a_forged_purge_without_a_digest_is_unlawful() -> None:
    j = Judge()
    verdict = j.observe(0, PURGE, "2030-01-01T00:00:00Z", {"sha256": "../../etc"})
    assert verdict is not None and not verdict.lawful


def test_a_purge_stating_another_size_or_date_is_unlawful() -> None:
    ledger = Ledger()
    ledger.add(INGEST, ingest_body())
    receipt = ledger.add(UPLOAD_RECEIPT, {"sha256": SHA, "size": SIZE, "seq": 0})
    policy = ledger.add(RETENTION_POLICY, Policy().body())
    keep = add_years(T0, 1)
    body = {
        "sha256": SHA,
        "size": SIZE,
        "class": ROUTINE,
        "receipt": receipt,
        "policy": policy,
        "purge_after": rfc3339(keep + timedelta(days=30)),
    }
    late = T0 + timedelta(days=800)
    for change, words in (
        ({}, None),
        ({"size": SIZE + 1}, "states size"),
        ({"purge_after": rfc3339(keep)}, "states purge_after"),
    ):
        j = judge([*ledger.entries, (9, PURGE, rfc3339(late), {**body, **change})])
        reasons = j.verdicts[9].reasons
        if words is None:
            assert not reasons, reasons
        else:
            assert any(words in r for r in reasons), reasons
