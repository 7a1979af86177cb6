"""The retention rule (Art. 15-17): how long a recording is kept, and whether a
``purge`` entry was lawful. Pure: entries in, decisions out, no files, no clock.

An auditor's verifier runs this over the ledger alone (`evidock ledger verify`,
hashing.audit); the dock's retention run (agent.retention) runs the same code
before it purges, so the two cannot disagree about what is lawful.

The rule, as an auditor re-implements it:

- **Class.** The strongest of: ``routine`` (every recording), ``evidence`` (a
  ``tag`` entry with retention ``evidence``, or an ``ingest`` entry that binds
  the recording to a case: bound into a case file, Art. 15), ``long-term`` (a
  ``tag`` with retention ``long-term``). A later, weaker tag never lowers it.
- **Start.** The recording date: the ingest body's ``recorded_at``, else its
  ``source_mtime``, else the ingest entry's own time.
- **Keep until.** The longest applicable rule wins (Art. 16): routine = start +
  ``routine_days`` but never less than one calendar year (Art. 16: "at least one
  year"; 365 days is less across a 29 February); evidence = the longest of that
  and start + the case type's days for every case it is evidence in (the case
  type from ``tag`` entries' ``case_type``; unknown or none: the policy's
  default type; no default: permanent); long-term and permanent: never.
- **Purge after.** keep_until + ``grace_days``.
- **Lawful purge.** A ``purge`` entry is lawful iff, judged on the entries
  before it: the recording's ingest exists; an ``upload_receipt`` for it (same
  digest and size) precedes it and is the one it cites; the ``retention_policy``
  entry it cites precedes it and is valid (routine_days >= 365); the class it
  states is the class above; the purge_after computed with that policy is at or
  before the purge entry's time (and equals what it states); no ``hold`` covers
  it that no ``hold_release`` has released (a hold on a case covers every
  recording bound to that case, including those bound after the hold was set);
  and the recording was not purged before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hashing.entries import HEX64_RE
from hashing.errors import InputError

# Entry types this rule reads. TAG and UPLOAD_RECEIPT are written by agent.records
# and uploader.sender; they are named here so this module imports neither.
INGEST = "ingest"
TAG = "tag"
UPLOAD_RECEIPT = "upload_receipt"
RETENTION_POLICY = "retention_policy"
PURGE = "purge"
HOLD = "hold"
HOLD_RELEASE = "hold_release"
TYPES = (INGEST, TAG, UPLOAD_RECEIPT, RETENTION_POLICY, PURGE, HOLD, HOLD_RELEASE)

ROUTINE, EVIDENCE, LONG_TERM = "routine", "evidence", "long-term"
CLASSES = (ROUTINE, EVIDENCE, LONG_TERM)  # weakest first
_STRENGTH = {c: i for i, c in enumerate(CLASSES)}
# Art. 17 (1)-(4): dispute or complaint, obstruction, mass or sudden incident, other.
HOLD_REASONS = ("dispute", "obstruction", "incident", "other")
MIN_ROUTINE_DAYS = 365  # Art. 16: routine footage is kept at least one year
PERMANENT = "permanent"  # how the configuration spells a case type kept for ever


def parse_when(text: object) -> datetime | None:
    """An RFC 3339 time with its zone, in UTC; None for anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return None if when.tzinfo is None else when.astimezone(UTC)


def rfc3339(when: datetime) -> str:
    """UTC, ``Z``, microseconds only when there are any (exact, and parses back)."""
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}"
    return text + "Z"


def add_years(when: datetime, years: int) -> datetime:
    """The same date ``years`` later; 29 February becomes 1 March."""
    try:
        return when.replace(year=when.year + years)
    except ValueError:
        return when.replace(year=when.year + years, month=3, day=1)


@dataclass(frozen=True)
class Policy:
    """The retention periods in force ([retention] in the configuration).

    ``evidence_days`` maps a case type to days, or to None: permanent.
    """

    routine_days: int = MIN_ROUTINE_DAYS
    grace_days: int = 30
    evidence_days: Mapping[str, int | None] = field(default_factory=dict)
    default_case_type: str | None = None

    def problems(self) -> list[str]:
        """What makes this policy unusable for a purge (empty: none)."""
        found = []
        if self.routine_days < MIN_ROUTINE_DAYS:
            found.append(
                f"routine_days {self.routine_days} is under {MIN_ROUTINE_DAYS} "
                "(Art. 16: routine footage is kept at least one year)"
            )
        if self.grace_days < 0:
            found.append(f"grace_days {self.grace_days} is negative")
        for kind, days in self.evidence_days.items():
            if days is not None and days < 1:
                found.append(f"evidence_days for case type {kind!r} is {days}, not a period")
        return found

    def evidence_period(self, case_type: str | None) -> int | None:
        """Days an evidence recording of this case type is kept; None: permanent.
        An unknown or missing type is the default type; no default: permanent,
        so nothing is purged by accident."""
        if case_type is not None and case_type in self.evidence_days:
            return self.evidence_days[case_type]
        if self.default_case_type is not None and self.default_case_type in self.evidence_days:
            return self.evidence_days[self.default_case_type]
        return None

    def body(self) -> dict[str, Any]:
        """The ``retention_policy`` entry body (without ``by``)."""
        return {
            "routine_days": self.routine_days,
            "grace_days": self.grace_days,
            "evidence_days": dict(sorted(self.evidence_days.items())),
            "default_case_type": self.default_case_type,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Policy:
        """Read a ``retention_policy`` entry body. Raises InputError naming the field."""
        routine, grace = body.get("routine_days"), body.get("grace_days")
        evidence, default = body.get("evidence_days"), body.get("default_case_type")
        for name, value in (("routine_days", routine), ("grace_days", grace)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"retention policy: {name} {value!r} is not a whole number")
        if not isinstance(evidence, dict) or not all(
            isinstance(k, str) and (v is None or (isinstance(v, int) and not isinstance(v, bool)))
            for k, v in evidence.items()
        ):
            raise InputError("retention policy: evidence_days is not a map of type to days or null")
        if default is not None and not isinstance(default, str):
            raise InputError(f"retention policy: default_case_type {default!r} is not text")
        assert isinstance(routine, int) and isinstance(grace, int)  # noqa: S101 - checked above
        return cls(routine, grace, dict(evidence), default)


@dataclass(frozen=True)
class Dates:
    """keep_until and purge_after; None for a recording that is never purged."""

    keep_until: datetime | None
    purge_after: datetime | None
    why: str  # what sets keep_until, e.g. "routine: 365 days from the recording date"


@dataclass(frozen=True)
class Standing:
    """A recording's position under the rule at one point of the ledger."""

    sha256: str
    size: int
    ingest: int  # seq of its ingest entry
    start: datetime  # the recording date the periods count from
    klass: str
    cases: tuple[str, ...]  # every case it is bound to (ingest case, tags)
    evidence_cases: tuple[str, ...]  # the cases it is evidence in
    case_types: tuple[str | None, ...]  # the types of those cases (None: not given)
    receipt: int | None  # seq of its first upload_receipt
    holds: tuple[int, ...]  # seqs of the unreleased holds covering it
    purged: int | None  # seq of its purge entry

    def dates(self, policy: Policy) -> Dates:
        """When this recording may be purged under ``policy`` (longest rule wins)."""
        if self.klass == LONG_TERM:
            return Dates(None, None, "long-term: never purged")
        routine = max(self.start + timedelta(days=policy.routine_days), add_years(self.start, 1))
        keep, why = routine, f"routine: {policy.routine_days} days (at least a year)"
        if self.klass == EVIDENCE:
            for case_type in self.case_types or (None,):
                days = policy.evidence_period(case_type)
                named = case_type or policy.default_case_type or "unknown"
                if days is None:
                    return Dates(None, None, f"evidence of a case of type {named}: permanent")
                until = self.start + timedelta(days=days)
                if until > keep:
                    keep, why = until, f"evidence of a case of type {named}: {days} days"
        return Dates(keep, keep + timedelta(days=policy.grace_days), why)

    def held_or_unreceipted(self) -> list[str]:
        """Blockers that do not depend on the policy or the time."""
        found = []
        if self.purged is not None:
            found.append(f"already purged (entry {self.purged})")
        found += [f"under hold (entry {seq})" for seq in self.holds]
        if self.receipt is None:
            found.append("no upload receipt: the platform has not confirmed a copy")
        return found

    def blockers(self, policy: Policy, when: datetime, dates: Dates | None = None) -> list[str]:
        """Why this recording may not be purged at ``when`` under ``policy`` (empty: it may).
        ``dates``: this recording's dates under ``policy``, if already computed."""
        found = self.held_or_unreceipted()
        found += [f"policy: {p}" for p in policy.problems()]
        if dates is None:
            dates = self.dates(policy)
        if dates.purge_after is None:
            found.append(dates.why)
        elif when < dates.purge_after:
            found.append(f"not due before {rfc3339(dates.purge_after)} ({dates.why})")
        return found


@dataclass(frozen=True)
class Verdict:
    """The judgement of one ``purge`` entry."""

    seq: int
    sha256: str
    lawful: bool
    reasons: tuple[str, ...]  # why it is unlawful (empty when lawful)


class _Record:
    __slots__ = ("cases", "evidence_cases", "ingest", "klass", "purged", "receipt", "size", "start")

    def __init__(self, ingest: int, size: int, start: datetime, case: str | None) -> None:
        self.ingest, self.size, self.start = ingest, size, start
        self.klass = ROUTINE
        self.cases: set[str] = set()
        self.evidence_cases: set[str] = set()
        self.receipt: int | None = None
        self.purged: int | None = None
        if case is not None:
            self.cases.add(case)
            self.evidence_cases.add(case)
            self.klass = EVIDENCE


@dataclass
class _Hold:
    files: frozenset[str]
    case: str | None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class Judge:
    """Reads entries in ledger order and keeps every recording's standing.

    ``observe`` each entry (any type; others are skipped); it returns the
    verdict on a ``purge`` entry, judged against the entries before it.
    Memory is one small record per recording; nothing is read twice.
    """

    def __init__(self) -> None:
        self.size = 0  # entries below this seq have been considered
        self._records: dict[str, _Record] = {}
        self._case_types: dict[str, set[str]] = {}
        self._policies: dict[int, Policy | str] = {}  # seq -> policy, or why it is invalid
        self.latest_policy: tuple[int, Policy] | None = None
        self._holds: dict[int, _Hold] = {}  # unreleased holds
        self._file_holds: dict[str, set[int]] = {}
        self._case_holds: dict[str, set[int]] = {}
        self.verdicts: dict[int, Verdict] = {}  # purge seq -> verdict

    # -- reading ---------------------------------------------------------------

    def observe(self, seq: int, kind: str, time: str, body: Mapping[str, Any]) -> Verdict | None:
        """Take one entry into account. Returns the verdict if it is a ``purge``."""
        self.size = max(self.size, seq + 1)
        if kind == INGEST:
            self._ingest(seq, time, body)
        elif kind == TAG:
            self._tag(body)
        elif kind == UPLOAD_RECEIPT:
            self._receipt(seq, body)
        elif kind == RETENTION_POLICY:
            try:
                policy = Policy.from_body(body)
            except InputError as e:
                self._policies[seq] = str(e)
            else:
                self._policies[seq] = policy
                self.latest_policy = (seq, policy)
        elif kind == HOLD:
            self._hold(seq, body)
        elif kind == HOLD_RELEASE:
            self._release(body)
        elif kind == PURGE:
            return self._purge(seq, time, body)
        return None

    def _ingest(self, seq: int, time: str, body: Mapping[str, Any]) -> None:
        sha, size = body.get("sha256"), body.get("size")
        if not isinstance(sha, str) or sha in self._records or not isinstance(size, int):
            return
        start = (
            parse_when(body.get("recorded_at"))
            or parse_when(body.get("source_mtime"))
            or parse_when(time)
        )
        if start is None:  # an entry time that does not parse is reported by the audit
            return
        self._records[sha] = _Record(seq, size, start, _text(body.get("case")))

    def _tag(self, body: Mapping[str, Any]) -> None:
        case, klass = _text(body.get("case")), body.get("retention")
        files = body.get("files")
        if case is None or not isinstance(files, list):
            return
        case_type = _text(body.get("case_type"))
        if case_type is not None:
            self._case_types.setdefault(case, set()).add(case_type)
        for sha in files:
            record = self._records.get(sha) if isinstance(sha, str) else None
            if record is None:
                continue
            record.cases.add(case)
            if klass == EVIDENCE:
                record.evidence_cases.add(case)
            if isinstance(klass, str) and _STRENGTH.get(klass, 0) > _STRENGTH[record.klass]:
                record.klass = klass

    def _receipt(self, seq: int, body: Mapping[str, Any]) -> None:
        sha = body.get("sha256")
        record = self._records.get(sha) if isinstance(sha, str) else None
        if record is not None and record.receipt is None and body.get("size") == record.size:
            record.receipt = seq

    def _hold(self, seq: int, body: Mapping[str, Any]) -> None:
        files = body.get("files")
        names = (
            frozenset(f for f in files if isinstance(f, str))
            if isinstance(files, list)
            else frozenset()
        )
        hold = _Hold(names, _text(body.get("case")))
        self._holds[seq] = hold
        for sha in hold.files:
            self._file_holds.setdefault(sha, set()).add(seq)
        if hold.case is not None:
            self._case_holds.setdefault(hold.case, set()).add(seq)

    def _release(self, body: Mapping[str, Any]) -> None:
        seq = body.get("hold")
        hold = self._holds.pop(seq, None) if isinstance(seq, int) else None
        if hold is None:
            return
        for sha in hold.files:
            self._file_holds[sha].discard(seq)
        if hold.case is not None:
            self._case_holds[hold.case].discard(seq)

    # -- standing --------------------------------------------------------------

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._records

    def __len__(self) -> int:
        return len(self._records)

    def digests(self) -> list[str]:
        return list(self._records)

    def holds_covering(self, sha256: str) -> tuple[int, ...]:
        record = self._records.get(sha256)
        found = set(self._file_holds.get(sha256, ()))
        if record is not None:
            for case in record.cases:
                found |= self._case_holds.get(case, set())
        return tuple(sorted(found))

    def active_holds(self) -> dict[int, tuple[frozenset[str], str | None]]:
        """Unreleased holds: seq -> (files, case)."""
        return {seq: (h.files, h.case) for seq, h in self._holds.items()}

    def standing(self, sha256: str) -> Standing | None:
        record = self._records.get(sha256)
        if record is None:
            return None
        types: set[str | None] = set()
        for case in record.evidence_cases:
            types |= self._case_types.get(case) or {None}
        return Standing(
            sha256=sha256,
            size=record.size,
            ingest=record.ingest,
            start=record.start,
            klass=record.klass,
            cases=tuple(sorted(record.cases)),
            evidence_cases=tuple(sorted(record.evidence_cases)),
            case_types=tuple(sorted(types, key=lambda t: (t is None, t or ""))),
            receipt=record.receipt,
            holds=self.holds_covering(sha256),
            purged=record.purged,
        )

    def policy(self, seq: int) -> Policy | str | None:
        """The policy recorded at ``seq``, the reason it is invalid, or None."""
        return self._policies.get(seq)

    # -- judging a purge -----------------------------------------------------

    def _purge(self, seq: int, time: str, body: Mapping[str, Any]) -> Verdict:
        sha = body.get("sha256")
        if not isinstance(sha, str) or not HEX64_RE.fullmatch(sha):
            verdict = Verdict(seq, str(sha), False, ("names no SHA-256 digest",))
            self.verdicts[seq] = verdict
            return verdict
        reasons = self._reasons(sha, time, body)
        record = self._records.get(sha)
        if record is not None and record.purged is None:
            record.purged = seq
        verdict = Verdict(seq, sha, not reasons, tuple(reasons))
        self.verdicts[seq] = verdict
        return verdict

    def _reasons(self, sha: str, time: str, body: Mapping[str, Any]) -> list[str]:
        standing = self.standing(sha)
        if standing is None:
            return ["no ingest entry before it records this digest"]
        when = parse_when(time)
        if when is None:
            return [f"its time {time!r} is not a time"]
        reasons = []
        cited = body.get("policy")
        policy = self._policies.get(cited) if isinstance(cited, int) else None
        if policy is None:
            reasons.append(f"cites policy {cited!r}, not a retention_policy entry before it")
        elif isinstance(policy, str):
            reasons.append(f"cites policy entry {cited}, which is unusable: {policy}")
        receipt = body.get("receipt")
        if standing.receipt is not None and receipt != standing.receipt:
            reasons.append(
                f"cites receipt {receipt!r}, not the upload receipt of this file "
                f"(entry {standing.receipt})"
            )
        if body.get("class") != standing.klass:
            reasons.append(
                f"states class {body.get('class')!r} but the entries before it make it "
                f"{standing.klass}"
            )
        if body.get("size") != standing.size:
            reasons.append(f"states size {body.get('size')!r}, the ingest entry {standing.size}")
        if isinstance(policy, Policy):
            reasons += standing.blockers(policy, when)
            dates = standing.dates(policy)
            stated = parse_when(body.get("purge_after"))
            if dates.purge_after is not None and stated != dates.purge_after:
                reasons.append(
                    f"states purge_after {body.get('purge_after')!r}, its policy gives "
                    f"{rfc3339(dates.purge_after)}"
                )
        else:
            # Without a usable policy the dates cannot be checked; the rest still can.
            reasons += standing.held_or_unreceipted()
        return reasons


def judge(entries: Iterable[tuple[int, str, str, Mapping[str, Any]]]) -> Judge:
    """A Judge that has read ``entries`` ((seq, type, time, body), in ledger order)."""
    j = Judge()
    for seq, kind, time, body in entries:
        j.observe(seq, kind, time, body)
    return j
