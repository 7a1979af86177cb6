"""The retention rule (Art. 15-17): how long a recording is kept, and whether a
``purge`` entry was lawful. Pure: entries in, decisions out, no files, no clock.

An auditor's verifier runs this over the ledger alone (`evidock ledger verify`,
hashing.audit); the dock's retention run (agent.records.retention) runs the same code
before it purges, so the two cannot disagree about what is lawful.

The rule, as an auditor re-implements it:

- **Class.** The strongest of: ``routine`` (every recording), ``evidence`` (a
  ``tag`` entry with retention ``evidence``, a ``tag`` of act kind
  ``evidence_preservation`` whatever its retention field says (Art. 4-5: such
  footage is evidence from the moment it is tagged), or an ``ingest`` entry
  that binds the recording to a case: bound into a case file, Art. 15),
  ``long-term`` (a ``tag`` with retention ``long-term``). A later, weaker tag
  never lowers it.
- **Start.** The later of the recording date (the ingest body's
  ``recorded_at``, else its ``source_mtime``) and the ingest entry's own time:
  a recording cannot reach the dock before it was made, so a camera clock set
  in the past never shortens a period.
- **Keep until.** The longest applicable rule wins (Art. 16): routine = start +
  ``routine_days`` but never less than one calendar year on the station's
  calendar (Art. 16: "at least one year"; the year is added to the local date
  at the policy's ``utc_offset_minutes``, then compared in UTC); evidence = the
  longest of that and start + the case type's days for every case it is
  evidence in (the case type from ``tag`` entries' ``case_type``; unknown or
  none: the policy's default type; no default: permanent); long-term and
  permanent: never. A date past the year 9999 is never.
- **Purge after.** keep_until + ``grace_days``.
- **Receipts.** An ``upload_receipt`` counts only if its ``receipt`` note is
  signed by a trusted platform key and states this station, and the file's
  digest, size and ingest entry. The newest such receipt before a point gives
  the platform's time at that point (its ``stored_at``): a dock cannot forge it.
- **Holds.** A ``hold`` on a file or a case covers the file (a case hold also
  covers recordings bound to the case after it was set) until a
  ``hold_release`` by a user whose role is admin at that point (``user``
  entries: added by the console or an enabled admin, not disabled since). A
  release by anyone else leaves the hold in force.
- **Lawful purge.** A ``purge`` entry is lawful iff, judged on the entries
  before it: the recording's ingest exists; a receipt for it precedes it and is
  the one it cites; the ``retention_policy`` entry it cites precedes it and is
  valid; the class, size, recorded_at, counted_from, keep_until and
  purge_after it states are those above; purge_after is at or before both the
  purge entry's time and the newest platform-attested time before it (which
  receipt it names in ``attested_by``), so a purge waits for a receipt dated
  after its date; no hold covers it; it was not purged before; and no later
  entry is dated before the purge (its time came from a clock that was ahead).

Without a platform key the receipts' signatures cannot be checked: a purge
that passes every other check is then *unverified*, not lawful.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeGuard

from hashing import canonical
from hashing.entries import HEX64_RE
from hashing.errors import EvidockError, InputError
from hashing.note import NoteVerifier, open_note, parse_note

# Entry types this rule reads. TAG, UPLOAD_RECEIPT and USER are written by
# agent.records.registry, uploader.sender and agent.users.accounts; they are named here so this
# module imports none of them.
INGEST = "ingest"
TAG = "tag"
UPLOAD_RECEIPT = "upload_receipt"
RETENTION_POLICY = "retention_policy"
PURGE = "purge"
HOLD = "hold"
HOLD_RELEASE = "hold_release"
USER = "user"
TYPES = (INGEST, TAG, UPLOAD_RECEIPT, RETENTION_POLICY, PURGE, HOLD, HOLD_RELEASE, USER)

ROUTINE, EVIDENCE, LONG_TERM = "routine", "evidence", "long-term"
CLASSES = (ROUTINE, EVIDENCE, LONG_TERM)  # weakest first
_STRENGTH = {c: i for i, c in enumerate(CLASSES)}
EVIDENCE_PRESERVATION = "evidence_preservation"  # the act kind that makes evidence (Art. 4-5)
# Art. 17 (1)-(4): dispute or complaint, obstruction, mass or sudden incident, other.
HOLD_REASONS = ("dispute", "obstruction", "incident", "other")
ADMIN = "admin"  # the role that may release a hold (agent.users.roles)
CONSOLE = "console:"  # `by` of a command run on the machine (agent.users.accounts)
RECEIPT_TYPE = "evidock-receipt"  # uploader.protocol.Receipt's note text type
_RECEIPT_FIELDS = frozenset(
    {"type", "v", "station", "sha256", "size", "seq", "stored_at", "held_size"}
)
MIN_ROUTINE_DAYS = 365  # Art. 16: routine footage is kept at least one year
MAX_DAYS = 36525  # 100 years: any longer period is spelled "permanent"
MAX_OFFSET_MINUTES = 1439  # a UTC offset is less than a day
PERMANENT = "permanent"  # how the configuration spells a case type kept for ever
BEYOND_CALENDAR = "its period ends after the year 9999: never purged"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def parse_when(text: object) -> datetime | None:
    """An RFC 3339 time with its zone, in UTC; None for anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        return None if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def rfc3339(when: datetime) -> str:
    """UTC, ``Z``, microseconds only when there are any (exact, and parses back)."""
    when = when.astimezone(UTC)
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
        f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    if when.microsecond:
        text += f".{when.microsecond:06d}"
    return text + "Z"


def add_years(when: datetime, years: int, utc_offset_minutes: int = 0) -> datetime:
    """The same local date and time ``years`` later on the calendar of a station
    at ``utc_offset_minutes``, in UTC; 29 February becomes 1 March. Raises
    ValueError or OverflowError past the years 1-9999."""
    local = when.astimezone(timezone(timedelta(minutes=utc_offset_minutes)))
    try:
        moved = local.replace(year=local.year + years)
    except ValueError:
        if (local.month, local.day) != (2, 29):
            raise
        moved = local.replace(year=local.year + years, month=3, day=1)
    return moved.astimezone(UTC)


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Policy:
    """The retention periods in force ([retention] in the configuration).

    ``evidence_days`` maps a case type to days, or to None: permanent.
    ``utc_offset_minutes`` is the station's zone ([offload] utc_offset_minutes):
    the calendar "one year" is counted on.
    """

    routine_days: int = MIN_ROUTINE_DAYS
    grace_days: int = 30
    evidence_days: Mapping[str, int | None] = field(default_factory=dict)
    default_case_type: str | None = None
    utc_offset_minutes: int = 0

    def problems(self) -> list[str]:
        """What makes this policy unusable for a purge (empty: none)."""
        found = []
        if self.routine_days < MIN_ROUTINE_DAYS:
            found.append(
                f"routine_days {self.routine_days} is under {MIN_ROUTINE_DAYS} "
                "(Art. 16: routine footage is kept at least one year)"
            )
        if self.routine_days > MAX_DAYS:
            found.append(f"routine_days {self.routine_days} is over {MAX_DAYS} (100 years)")
        if self.grace_days < 0:
            found.append(f"grace_days {self.grace_days} is negative")
        if self.grace_days > MAX_DAYS:
            found.append(f"grace_days {self.grace_days} is over {MAX_DAYS} (100 years)")
        for kind, days in self.evidence_days.items():
            if days is not None and days < 1:
                found.append(f"evidence_days for case type {kind!r} is {days}, not a period")
            if days is not None and days > MAX_DAYS:
                found.append(
                    f"evidence_days for case type {kind!r} is {days}, over {MAX_DAYS} "
                    f'(100 years): spell it "{PERMANENT}"'
                )
        if abs(self.utc_offset_minutes) > MAX_OFFSET_MINUTES:
            found.append(f"utc_offset_minutes {self.utc_offset_minutes} is not a UTC offset")
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
            "utc_offset_minutes": self.utc_offset_minutes,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Policy:
        """Read a ``retention_policy`` entry body (no ``utc_offset_minutes``: 0, UTC).
        Raises InputError naming the field."""
        routine, grace = body.get("routine_days"), body.get("grace_days")
        evidence, default = body.get("evidence_days"), body.get("default_case_type")
        offset = body.get("utc_offset_minutes", 0)
        for name, value in (
            ("routine_days", routine),
            ("grace_days", grace),
            ("utc_offset_minutes", offset),
        ):
            if not _whole(value):
                raise InputError(f"retention policy: {name} {value!r} is not a whole number")
        if abs(offset) > MAX_OFFSET_MINUTES:
            raise InputError(f"retention policy: utc_offset_minutes {offset} is not a UTC offset")
        if not isinstance(evidence, dict) or not all(
            isinstance(k, str) and (v is None or _whole(v)) for k, v in evidence.items()
        ):
            raise InputError("retention policy: evidence_days is not a map of type to days or null")
        if default is not None and not isinstance(default, str):
            raise InputError(f"retention policy: default_case_type {default!r} is not text")
        assert isinstance(routine, int) and isinstance(grace, int)  # noqa: S101 - checked above
        return cls(routine, grace, dict(evidence), default, offset)


@dataclass(frozen=True)
class Dates:
    """keep_until and purge_after; None for a recording that is never purged."""

    keep_until: datetime | None
    purge_after: datetime | None
    why: str  # what sets keep_until, e.g. "routine: 365 days from the recording date"


@dataclass(frozen=True)
class Attestation:
    """The platform's time at a point of the ledger: its newest receipt there."""

    receipt: int  # seq of the upload_receipt entry
    stored_at: datetime  # the time the platform signed


@dataclass(frozen=True)
class Standing:
    """A recording's position under the rule at one point of the ledger."""

    sha256: str
    size: int
    ingest: int  # seq of its ingest entry
    recorded: datetime  # the recording date its ingest states (the camera's clock)
    start: datetime  # the date the periods count from: the later of that and the ingest
    klass: str
    cases: tuple[str, ...]  # every case it is bound to (ingest case, tags)
    evidence_cases: tuple[str, ...]  # the cases it is evidence in
    case_types: tuple[str | None, ...]  # the types of those cases (None: not given)
    receipt: int | None  # seq of its first valid upload_receipt
    holds: tuple[int, ...]  # seqs of the unreleased holds covering it
    purged: int | None  # seq of its purge entry
    attested: Attestation | None = None  # the platform's newest time at this point
    refused_releases: tuple[str, ...] = ()  # releases of its holds that do not count

    def dates(self, policy: Policy) -> Dates:
        """When this recording may be purged under ``policy`` (longest rule wins).
        Total: a date past the calendar's end is never."""
        if self.klass == LONG_TERM:
            return Dates(None, None, "long-term: never purged")
        try:
            routine = max(
                self.start + timedelta(days=policy.routine_days),
                add_years(self.start, 1, policy.utc_offset_minutes),
            )
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
        except (OverflowError, ValueError):
            return Dates(None, None, BEYOND_CALENDAR)

    def held_or_unreceipted(self) -> list[str]:
        """Blockers that do not depend on the policy or the time."""
        found = []
        if self.purged is not None:
            found.append(f"already purged (entry {self.purged})")
        found += [f"under hold (entry {seq})" for seq in self.holds]
        found += list(self.refused_releases)
        if self.receipt is None:
            found.append(
                "no upload receipt: the platform has not confirmed a copy (a receipt counts "
                "when signed by the platform's key for this station, digest, size and entry)"
            )
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
        elif self.attested is None or self.attested.stored_at < dates.purge_after:
            newest = (
                "none yet"
                if self.attested is None
                else f"entry {self.attested.receipt}, stored_at {rfc3339(self.attested.stored_at)}"
            )
            found.append(
                f"due since {rfc3339(dates.purge_after)}, but no platform receipt attests a "
                f"time at or after it yet (newest: {newest}); it is purged after the next "
                "receipt the platform dates later"
            )
        return found


@dataclass(frozen=True)
class Verdict:
    """The judgement of one ``purge`` entry."""

    seq: int
    sha256: str
    lawful: bool
    reasons: tuple[str, ...]  # why it is unlawful (empty when lawful or unverified)
    unverified: bool = False  # passes every check but the receipts' signatures (no key)


@dataclass(frozen=True)
class ReceiptStatement:
    """What a receipt note says (uploader.protocol.Receipt's text)."""

    station: str
    sha256: str
    size: int
    seq: int
    stored_at: datetime


def read_receipt(note: object, keys: Sequence[NoteVerifier]) -> ReceiptStatement | None:
    """The statement of a receipt note, or None if it is not one. With ``keys``, only
    a note signed by one of them counts; without, the text is read unchecked."""
    if not isinstance(note, str):
        return None
    try:
        text = open_note(note, list(keys)).text if keys else parse_note(note)[0]
        value = canonical.loads(text[:-1].encode())
    except (EvidockError, ValueError):  # ValueError: text a note cannot hold (lone surrogates)
        return None
    if not isinstance(value, dict) or set(value) != _RECEIPT_FIELDS:
        return None
    if value["type"] != RECEIPT_TYPE or value["v"] != 1:
        return None
    station, sha, size, seq = value["station"], value["sha256"], value["size"], value["seq"]
    stored_at = parse_when(value["stored_at"])
    if not isinstance(station, str) or not isinstance(sha, str) or stored_at is None:
        return None
    if not (_whole(size) and _whole(seq)):
        return None
    return ReceiptStatement(station, sha, size, seq, stored_at)


class Roster:
    """Who holds which role at a point of the ledger, from its ``user`` entries.

    An ``add`` counts when made from the console or by an enabled admin; a
    ``disable`` always counts (the safe direction) and is final.
    """

    def __init__(self) -> None:
        self._roles: dict[str, str] = {}
        self._disabled: set[str] = set()

    def observe(self, body: Mapping[str, Any]) -> None:
        """Take one ``user`` entry into account; call in ledger order.

        An ``add`` not made from the console or by an enabled admin is ignored, so no
        one can grant a role, least of all admin, without an admin.
        """
        name, action = _text(body.get("name")), body.get("action")
        if name is None:
            return
        if action == "add":
            role, by = _text(body.get("role")), body.get("by")
            console = isinstance(by, str) and by.startswith(CONSOLE)
            if role is not None and (console or self.is_admin(by)):
                self._roles[name] = role
        elif action == "disable":
            self._disabled.add(name)

    def is_admin(self, name: object) -> bool:
        """Whether ``name`` is an enabled admin at this point of the ledger (may release holds)."""
        return (
            isinstance(name, str) and self._roles.get(name) == ADMIN and name not in self._disabled
        )


class _Record:
    __slots__ = (
        "cases",
        "evidence_cases",
        "ingest",
        "klass",
        "purged",
        "receipt",
        "recorded",
        "size",
        "start",
    )

    def __init__(
        self, ingest: int, size: int, recorded: datetime, start: datetime, case: str | None
    ) -> None:
        self.ingest, self.size, self.recorded, self.start = ingest, size, recorded, start
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


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND


class Judge:
    """Reads entries in ledger order and keeps every recording's standing.

    ``observe`` each entry (any type; the times of all are used, the rest of
    the types above); it returns the verdict on a ``purge`` entry, judged
    against the entries before it. A later entry dated before a lawful purge
    turns its verdict (in ``verdicts``) unlawful. Memory is one small record
    per recording; nothing is read twice.

    ``platform_keys``: the platform's receipt verifier keys (none: receipts
    are read unchecked and no purge is lawful, only unverified); ``station``:
    the station id receipts must name (None: not checked).
    """

    def __init__(
        self, platform_keys: Sequence[NoteVerifier] = (), station: str | None = None
    ) -> None:
        self.size = 0  # entries below this seq have been considered
        self.platform_keys = tuple(platform_keys)
        self.station = station
        self._records: dict[str, _Record] = {}
        self._case_types: dict[str, set[str]] = {}
        self._policies: dict[int, Policy | str] = {}  # seq -> policy, or why it is invalid
        self.latest_policy: tuple[int, Policy] | None = None
        self._holds: dict[int, _Hold] = {}  # unreleased holds
        self._file_holds: dict[str, set[int]] = {}
        self._case_holds: dict[str, set[int]] = {}
        self._refused: dict[int, list[str]] = {}  # hold seq -> releases that did not count
        self.released: dict[int, int] = {}  # hold seq -> the release entry that counted
        self.roster = Roster()
        self.attested: Attestation | None = None
        self._open: list[tuple[int, int]] = []  # (-time in µs, seq) of purges not yet refuted
        self.verdicts: dict[int, Verdict] = {}  # purge seq -> verdict

    # -- reading ---------------------------------------------------------------

    def observe(self, seq: int, kind: str, time: str, body: Mapping[str, Any]) -> Verdict | None:
        """Take one entry into account. Returns the verdict if it is a ``purge``."""
        self.size = max(self.size, seq + 1)
        when = parse_when(time)
        if when is not None and self._open:
            self._refute(seq, time, when)
        if kind == INGEST:
            self._ingest(seq, when, body)
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
            self._release(seq, body)
        elif kind == USER:
            self.roster.observe(body)
        elif kind == PURGE:
            return self._purge(seq, time, when, body)
        return None

    def _refute(self, seq: int, time: str, when: datetime) -> None:
        """Purges dated after ``when`` came from a clock that was ahead."""
        now = _micros(when)
        while self._open and -self._open[0][0] > now:
            _, purge = heapq.heappop(self._open)
            verdict = self.verdicts[purge]
            self.verdicts[purge] = replace(
                verdict,
                lawful=False,
                unverified=False,
                reasons=(
                    *verdict.reasons,
                    f"entry {seq} after it is dated {time}, before it: the purge was dated by "
                    "a clock that was ahead",
                ),
            )

    def _ingest(self, seq: int, when: datetime | None, body: Mapping[str, Any]) -> None:
        sha, size = body.get("sha256"), body.get("size")
        if not isinstance(sha, str) or sha in self._records or not _whole(size):
            return
        if when is None:  # an entry time that does not parse is reported by the audit
            return
        recorded = (
            parse_when(body.get("recorded_at")) or parse_when(body.get("source_mtime")) or when
        )
        start = max(recorded, when)
        self._records[sha] = _Record(seq, size, recorded, start, _text(body.get("case")))

    def _tag(self, body: Mapping[str, Any]) -> None:
        case, klass = _text(body.get("case")), body.get("retention")
        files = body.get("files")
        if case is None or not isinstance(files, list):
            return
        if body.get("kind") == EVIDENCE_PRESERVATION and _STRENGTH.get(str(klass), 0) < 1:
            klass = EVIDENCE  # Art. 4-5: evidence from the moment it is tagged
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
        statement = read_receipt(body.get("receipt"), self.platform_keys)
        if statement is None or (self.station is not None and statement.station != self.station):
            return
        self.attested = Attestation(seq, statement.stored_at)
        record = self._records.get(statement.sha256)
        if (
            record is not None
            and record.receipt is None
            and (statement.size, statement.seq) == (record.size, record.ingest)
        ):
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

    def _release(self, seq: int, body: Mapping[str, Any]) -> None:
        held = body.get("hold")
        if not _whole(held) or held not in self._holds:
            return
        by = body.get("by")
        if not self.roster.is_admin(by):
            self._refused.setdefault(held, []).append(
                f"hold {held}: its release (entry {seq}) is by {by!r}, not an admin at that "
                "point, so the hold stays in force"
            )
            return
        hold = self._holds.pop(held)
        self.released[held] = seq
        for sha in hold.files:
            self._file_holds[sha].discard(held)
        if hold.case is not None:
            self._case_holds[hold.case].discard(held)

    # -- standing --------------------------------------------------------------

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._records

    def __len__(self) -> int:
        return len(self._records)

    def digests(self) -> list[str]:
        """Every recording ingested so far, in the order of their ingest entries."""
        return list(self._records)

    def holds_covering(self, sha256: str) -> tuple[int, ...]:
        """The unreleased holds (entry seqs) on ``sha256`` itself or on one of its cases."""
        record = self._records.get(sha256)
        found = set(self._file_holds.get(sha256, ()))
        if record is not None:
            for case in record.cases:
                found |= self._case_holds.get(case, set())
        return tuple(sorted(found))

    def standing(self, sha256: str) -> Standing | None:
        """What the rule knows of a recording from the entries so far; None if not ingested."""
        record = self._records.get(sha256)
        if record is None:
            return None
        types: set[str | None] = set()
        for case in record.evidence_cases:
            types |= self._case_types.get(case) or {None}
        holds = self.holds_covering(sha256)
        return Standing(
            sha256=sha256,
            size=record.size,
            ingest=record.ingest,
            recorded=record.recorded,
            start=record.start,
            klass=record.klass,
            cases=tuple(sorted(record.cases)),
            evidence_cases=tuple(sorted(record.evidence_cases)),
            case_types=tuple(sorted(types, key=lambda t: (t is None, t or ""))),
            receipt=record.receipt,
            holds=holds,
            purged=record.purged,
            attested=self.attested,
            refused_releases=tuple(r for seq in holds for r in self._refused.get(seq, ())),
        )

    def policy(self, seq: int) -> Policy | str | None:
        """The policy recorded at ``seq``, the reason it is invalid, or None."""
        return self._policies.get(seq)

    # -- judging a purge -----------------------------------------------------

    def _purge(
        self, seq: int, time: str, when: datetime | None, body: Mapping[str, Any]
    ) -> Verdict:
        sha = body.get("sha256")
        if not isinstance(sha, str) or not HEX64_RE.fullmatch(sha):
            verdict = Verdict(seq, str(sha), False, ("names no SHA-256 digest",))
            self.verdicts[seq] = verdict
            return verdict
        reasons = self._reasons(sha, time, when, body)
        record = self._records.get(sha)
        if record is not None and record.purged is None:
            record.purged = seq
        unverified = not reasons and not self.platform_keys
        verdict = Verdict(seq, sha, not reasons and not unverified, tuple(reasons), unverified)
        self.verdicts[seq] = verdict
        if not reasons and when is not None:
            heapq.heappush(self._open, (-_micros(when), seq))
        return verdict

    def _reasons(
        self, sha: str, time: str, when: datetime | None, body: Mapping[str, Any]
    ) -> list[str]:
        standing = self.standing(sha)
        if standing is None:
            return ["no ingest entry before it records this digest"]
        if when is None:
            return [f"its time {time!r} is not a time"]
        reasons = []
        cited = body.get("policy")
        policy = self._policies.get(cited) if _whole(cited) else None
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
        reasons += _stated(body, "recorded_at", standing.recorded, "its ingest entry gives")
        reasons += _stated(body, "counted_from", standing.start, "the rule counts from")
        attested = standing.attested
        if attested is not None and body.get("attested_by") != attested.receipt:
            reasons.append(
                f"states attested_by {body.get('attested_by')!r}, the newest platform receipt "
                f"before it is entry {attested.receipt}"
            )
        if isinstance(policy, Policy):
            dates = standing.dates(policy)
            reasons += standing.blockers(policy, when, dates)
            if dates.purge_after is not None:
                reasons += _stated(body, "keep_until", dates.keep_until, "its policy gives")
                reasons += _stated(body, "purge_after", dates.purge_after, "its policy gives")
        else:
            # Without a usable policy the dates cannot be checked; the rest still can.
            reasons += standing.held_or_unreceipted()
        return reasons


def _stated(body: Mapping[str, Any], name: str, expected: datetime | None, whose: str) -> list[str]:
    if expected is None or parse_when(body.get(name)) == expected:
        return []
    return [f"states {name} {body.get(name)!r}, {whose} {rfc3339(expected)}"]


def judge(
    entries: Iterable[tuple[int, str, str, Mapping[str, Any]]],
    platform_keys: Sequence[NoteVerifier] = (),
    station: str | None = None,
) -> Judge:
    """A Judge that has read ``entries`` ((seq, type, time, body), in ledger order)."""
    j = Judge(platform_keys, station)
    for seq, kind, time, body in entries:
        j.observe(seq, kind, time, body)
    return j
