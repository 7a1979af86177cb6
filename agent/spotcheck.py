"""Spot checks (Art. 19): a sample nobody can steer, playback, and recorded findings.

The legal-affairs team (role ``auditor``) draws a sample of recordings, plays
each one and records what it saw. The sample is a function of a signed
checkpoint that the dock, not the reviewer, chooses, so anyone holding the
checkpoint and the ledger entries can recompute it; a reviewer who draws again
to dodge a clip leaves a ``redraw_of`` entry that the list and the report show.

The rule, "evidock spotcheck v1" (the contract an auditor re-implements):

1. Checkpoint. The dock's latest signed checkpoint; if the ledger grew since,
   the dock signs a new one first. Its tree size S and root R (32 bytes) are
   written into the draw entry together with the full signed note.
2. Population. The ``ingest`` entries with seq < S, minus the digests named by
   ``purge`` entries with seq < S (they cannot be played any more), that match
   the draw's criteria:

   - ``officer``: the ingest body's ``officer`` equals it (null: every officer);
   - ``from`` / ``to``: the recording time lies in [from, to) (null: unbounded).
     The recording time is the ingest body's ``recorded_at``, else its
     ``source_mtime``, else the entry's ``time`` (the first of them that is an
     RFC 3339 time with a zone), which is how the dock's file index dates a
     recording for tagging and upload.

   N is the number of distinct digests in it.
3. Score. For each population digest d (64 hex digits):
   ``score(d) = SHA-256(b"evidock spotcheck v1\\n" || R || bytes.fromhex(d))``.
4. Sample. The k digests with the smallest scores (compared as byte strings),
   in ascending score order, where ``k = ceil(P * N / 100)`` for the percentage
   P (a decimal in (0, 100], stored as text, e.g. "5" or "2.5"). k >= 1 when
   N > 0. Distinct digests have distinct scores unless SHA-256 collides.

Entries written here (bodies are canonical JSON, no floats):

``spotcheck_draw``
    {rule, percent, officer, from, to, checkpoint (the signed note text), size,
    root (hex), population (N), sample [digests in score order], redraw_of
    (seq of the latest earlier draw it overlaps, or null), reason (why it was
    drawn again, or null), by (the kiosk user)}. ``from``/``to`` are UTC
    RFC 3339 times or null. Two draws overlap when their officers overlap
    (equal, or either is null) and their periods intersect.
``spotcheck_finding``
    {draw (seq), sha256, result: ok|conduct_issue|incomplete|unrelated, note,
    by, played (seq of the ``access`` entry in which ``by`` played the clip
    after the draw)}. A later finding for the same draw and clip amends the
    earlier one (entries are never overwritten) and must carry a new note.

Raises: InputError for bad criteria or an unknown draw, PermissionDeniedError
(an InputError) for a role that may not act, IntegrityError when entries do not
match the checkpoint they are checked against.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from itertools import chain
from typing import Any

from agent.access import PLAY, access_records
from agent.records import check_id
from agent.roles import ScopedActor, require
from hashing.checkpoint import Checkpoint, SignedCheckpoint
from hashing.entries import HEX64_RE, INGEST, Entry
from hashing.errors import InputError, IntegrityError
from hashing.merkle import root_of
from hashing.note import NoteVerifier, open_note, parse_note
from hashing.retention import PURGE, parse_when
from hashing.station import Station

log = logging.getLogger(__name__)

RULE = "evidock spotcheck v1"
DOMAIN = (RULE + "\n").encode()
DRAW = "spotcheck_draw"
FINDING = "spotcheck_finding"

OK, CONDUCT_ISSUE, INCOMPLETE, UNRELATED = "ok", "conduct_issue", "incomplete", "unrelated"
RESULTS = (OK, CONDUCT_ISSUE, INCOMPLETE, UNRELATED)
# Art. 20: a conduct issue or an incomplete recording must say what was seen.
NOTE_REQUIRED = frozenset({CONDUCT_ISSUE, INCOMPLETE})
NOTE_MAX = 2000
REASON_MAX = 500
PERCENT_DIGITS = 4  # at most 4 decimals: "0.0001" .. "100"

REVIEWED = "reviewed"
NOT_REVIEWED = "not reviewed"


# --- the rule (pure) -----------------------------------------------------------


def check_percent(text: str) -> str:
    """The percentage as canonical text ("5", "2.5"): a decimal in (0, 100] with at
    most four decimals. Raises InputError otherwise."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or not Decimal(0) < value <= Decimal(100):
        raise InputError(
            f"--percent {text!r}: give a number above 0 and at most 100, e.g. 5 or 2.5"
        )
    normal = value.normalize()
    if -int(normal.as_tuple().exponent) > PERCENT_DIGITS:
        raise InputError(f"--percent {text!r}: at most {PERCENT_DIGITS} decimals")
    return format(normal, "f")


def sample_size(percent: str, population: int) -> int:
    """k = ceil(P * N / 100), exactly (no binary floating point)."""
    return math.ceil(Fraction(Decimal(check_percent(percent))) * population / 100)


def score(root: bytes, sha256: str) -> bytes:
    """SHA-256(b"evidock spotcheck v1\\n" || root || digest bytes)."""
    return hashlib.sha256(DOMAIN + root + bytes.fromhex(sha256)).digest()


def draw_sample(root: bytes, population: Iterable[str], percent: str) -> list[str]:
    """The k digests of ``population`` with the smallest scores, smallest first."""
    unique = set(population)
    k = sample_size(percent, len(unique))
    return heapq.nsmallest(k, unique, key=lambda sha: score(root, sha))


def recording_time(entry: Entry) -> datetime:
    """recorded_at, else source_mtime, else the entry's own time (see the rule)."""
    body = entry.body
    for value in (body.get("recorded_at"), body.get("source_mtime"), entry.time):
        when = parse_when(value)
        if when is not None:
            return when
    raise InputError(f"entry {entry.seq}: no usable time")  # entry.time always parses


def utc_text(when: datetime | None) -> str | None:
    """A bound as stored in a draw entry: UTC RFC 3339, or null."""
    if when is None:
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if when.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return when.astimezone(UTC).strftime(fmt)


@dataclass(frozen=True)
class Criteria:
    """What a draw samples from: a percentage of one officer's (or everyone's)
    recordings made in [start, end)."""

    percent: str
    officer: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "percent", check_percent(self.percent))
        if self.officer is not None:
            check_id(self.officer, "officer")
        for bound in (self.start, self.end):
            if bound is not None and bound.tzinfo is None:
                raise InputError(f"{bound}: a spot-check bound needs a time zone")
        if self.start is not None and self.end is not None and not self.start < self.end:
            raise InputError(
                f"the period is empty: --from {utc_text(self.start)} is not before --to {utc_text(self.end)}"
            )

    def admits(self, officer: object, when: datetime) -> bool:
        if self.officer is not None and officer != self.officer:
            return False
        if self.start is not None and when < self.start:
            return False
        return self.end is None or when < self.end

    def overlaps(self, other: Criteria) -> bool:
        """Same officer (or either covers all) and intersecting periods."""
        if self.officer is not None and other.officer is not None and self.officer != other.officer:
            return False
        before = self.end is not None and other.start is not None and self.end <= other.start
        after = other.end is not None and self.start is not None and other.end <= self.start
        return not (before or after)

    def as_body(self) -> dict[str, Any]:
        return {
            "percent": self.percent,
            "officer": self.officer,
            "from": utc_text(self.start),
            "to": utc_text(self.end),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Criteria:
        return cls(
            str(body["percent"]),
            None if body.get("officer") is None else str(body["officer"]),
            parse_when(body.get("from")),
            parse_when(body.get("to")),
        )

    def describe(self) -> str:
        who = f"officer {self.officer}" if self.officer else "every officer"
        start = utc_text(self.start) or "the beginning"
        end = utc_text(self.end) or "now"
        return f"{self.percent}% of {who}'s recordings from {start} to {end}"


def population(entries: Iterable[Entry], size: int, criteria: Criteria) -> list[str]:
    """Step 2 of the rule over any iterable of entries (ingest and purge are read,
    everything else ignored), sorted."""
    chosen: set[str] = set()
    purged: set[str] = set()
    for entry in entries:
        if entry.seq >= size:
            continue
        if entry.type == INGEST:
            sha = entry.body.get("sha256")
            if (
                isinstance(sha, str)
                and HEX64_RE.fullmatch(sha)
                and criteria.admits(entry.body.get("officer"), recording_time(entry))
            ):
                chosen.add(sha)
        elif entry.type == PURGE and isinstance(entry.body.get("sha256"), str):
            purged.add(str(entry.body["sha256"]))
    return sorted(chosen - purged)


# --- recomputing offline ---------------------------------------------------------


@dataclass(frozen=True)
class Recomputed:
    size: int
    root: str
    population: int
    sample: tuple[str, ...]


def parse_entries(lines: Iterable[bytes]) -> list[Entry]:
    """`evidock ledger entries` output: one entry per line, in order from seq 0."""
    entries: list[Entry] = []
    for number, line in enumerate(lines, 1):
        raw = line.rstrip(b"\n")
        if not raw:
            continue
        try:
            entry = Entry.parse(raw)
        except InputError as e:
            raise InputError(f"entries line {number}: {e}") from e
        if entry.seq != len(entries):
            raise InputError(
                f"entries line {number}: entry {entry.seq} where {len(entries)} was expected; "
                "give the whole output of `evidock ledger entries` from the start"
            )
        entries.append(entry)
    return entries


def open_checkpoint(note: str, keys: Sequence[NoteVerifier] = ()) -> Checkpoint:
    """Parse a signed checkpoint note; with ``keys``, verify its signature first
    (SignatureError). Raises InputError if it is not a checkpoint."""
    text = open_note(note, list(keys)).text if keys else parse_note(note)[0]
    return Checkpoint.parse(text)


def recompute(entries: Sequence[Entry], checkpoint: Checkpoint, criteria: Criteria) -> Recomputed:
    """The sample from entries and a checkpoint alone, as an auditor does it.

    The entries are first proven to be the checkpoint's: their RFC 9162 root over
    the first ``size`` leaves must equal its root, else IntegrityError.
    """
    if len(entries) < checkpoint.size:
        raise InputError(
            f"the checkpoint covers {checkpoint.size} entries but only {len(entries)} were given"
        )
    root = root_of([e.leaf for e in entries[: checkpoint.size]])
    if root != checkpoint.root:
        raise IntegrityError(
            f"the entries do not match the checkpoint: their root at size {checkpoint.size} "
            f"is {root.hex()}, the checkpoint says {checkpoint.root.hex()}"
        )
    pop = population(entries, checkpoint.size, criteria)
    sample = draw_sample(checkpoint.root, pop, criteria.percent)
    return Recomputed(checkpoint.size, checkpoint.root.hex(), len(pop), tuple(sample))


# --- the record: draws, findings, plays -------------------------------------------


@dataclass(frozen=True)
class Draw:
    seq: int
    time: str
    by: str
    criteria: Criteria
    size: int
    root: str
    checkpoint: str
    population: int
    sample: tuple[str, ...]
    redraw_of: int | None
    reason: str | None

    @classmethod
    def of(cls, entry: Entry) -> Draw:
        b = entry.body
        return cls(
            seq=entry.seq,
            time=entry.time,
            by=str(b.get("by")),
            criteria=Criteria.from_body(b),
            size=int(b["size"]),
            root=str(b["root"]),
            checkpoint=str(b["checkpoint"]),
            population=int(b["population"]),
            sample=tuple(str(s) for s in b["sample"]),
            redraw_of=None if b.get("redraw_of") is None else int(b["redraw_of"]),
            reason=None if b.get("reason") is None else str(b["reason"]),
        )


@dataclass(frozen=True)
class Finding:
    seq: int
    time: str
    draw: int
    sha256: str
    result: str
    note: str
    by: str
    played: int | None
    amends: int | None  # the earlier finding for the same draw and clip, if any


@dataclass(frozen=True)
class Play:
    seq: int
    time: str
    user: str


@dataclass(frozen=True)
class Clip:
    """One sampled recording of a draw and what became of it."""

    rank: int
    sha256: str
    status: str  # "reviewed", "not reviewed", "not reviewed (dropped by redraw N)"
    result: str | None  # of the latest finding
    findings: tuple[Finding, ...]
    plays: tuple[Play, ...]  # playbacks after the draw, by anyone
    dropped_by: int | None


@dataclass(frozen=True)
class Progress:
    draw: Draw
    clips: tuple[Clip, ...]
    redrawn_by: tuple[int, ...]

    @property
    def reviewed(self) -> int:
        return sum(1 for c in self.clips if c.findings)

    @property
    def not_reviewed(self) -> int:
        return len(self.clips) - self.reviewed

    @property
    def dropped(self) -> int:
        return sum(1 for c in self.clips if c.dropped_by is not None)

    def results(self) -> dict[str, int]:
        counts = dict.fromkeys(RESULTS, 0)
        for clip in self.clips:
            if clip.result is not None:
                counts[clip.result] += 1
        return counts

    @property
    def amendments(self) -> int:
        return sum(1 for c in self.clips for f in c.findings if f.amends is not None)

    def as_dict(self) -> dict[str, Any]:
        d = self.draw
        return {
            "draw": d.seq,
            "time": d.time,
            "by": d.by,
            **d.criteria.as_body(),
            "checkpoint_size": d.size,
            "root": d.root,
            "population": d.population,
            "sample": len(d.sample),
            "reviewed": self.reviewed,
            "not_reviewed": self.not_reviewed,
            "dropped_by_redraw": self.dropped,
            "results": self.results(),
            "amendments": self.amendments,
            "redraw_of": d.redraw_of,
            "reason": d.reason,
            "redrawn_by": list(self.redrawn_by),
            "clips": [
                {
                    "rank": c.rank,
                    "sha256": c.sha256,
                    "status": c.status,
                    "result": c.result,
                    "findings": [f.__dict__ for f in c.findings],
                    "plays": [p.__dict__ for p in c.plays],
                }
                for c in self.clips
            ],
        }


@dataclass(frozen=True)
class Review:
    """Every draw with its findings and the playbacks that back them."""

    draws: dict[int, Draw]
    findings: dict[tuple[int, str], list[Finding]] = field(default_factory=dict)
    plays: dict[str, list[Play]] = field(default_factory=dict)

    def draw(self, seq: int) -> Draw:
        try:
            return self.draws[seq]
        except KeyError:
            raise InputError(
                f"entry {seq} is not a spot-check draw; see `evidock spotcheck list`"
            ) from None

    def redrawn_by(self, draw: Draw) -> list[int]:
        """Later draws overlapping this one (each is a redraw)."""
        return [
            d.seq
            for d in self.draws.values()
            if d.seq > draw.seq and d.criteria.overlaps(draw.criteria)
        ]

    def progress(self, seq: int) -> Progress:
        draw = self.draw(seq)
        later = self.redrawn_by(draw)
        clips = []
        for rank, sha in enumerate(draw.sample, 1):
            found = tuple(self.findings.get((seq, sha), ()))
            plays = tuple(p for p in self.plays.get(sha, ()) if p.seq > seq)
            dropped = None
            if not found:
                dropped = next((r for r in later if sha not in self.draws[r].sample), None)
            if found:
                status = REVIEWED
            elif dropped is not None:
                status = f"{NOT_REVIEWED} (dropped by redraw {dropped})"
            else:
                status = NOT_REVIEWED
            clips.append(
                Clip(rank, sha, status, found[-1].result if found else None, found, plays, dropped)
            )
        return Progress(draw, tuple(clips), tuple(later))

    def all_progress(self) -> list[Progress]:
        return [self.progress(seq) for seq in sorted(self.draws)]


def review(station: Station) -> Review:
    """Read draws, findings and playbacks (one query per entry type)."""
    draws = {e.seq: Draw.of(e) for e in station.ledger.entries_of_type(DRAW)}
    findings: dict[tuple[int, str], list[Finding]] = defaultdict(list)
    for e in station.ledger.entries_of_type(FINDING):
        b = e.body
        key = (int(b["draw"]), str(b["sha256"]))
        earlier = findings[key]
        findings[key].append(
            Finding(
                seq=e.seq,
                time=e.time,
                draw=key[0],
                sha256=key[1],
                result=str(b["result"]),
                note=str(b.get("note") or ""),
                by=str(b.get("by")),
                played=None if b.get("played") is None else int(b["played"]),
                amends=earlier[-1].seq if earlier else None,
            )
        )
    sampled = {sha for d in draws.values() for sha in d.sample}
    plays: dict[str, list[Play]] = defaultdict(list)
    for record in access_records(station):
        if record.action != PLAY:
            continue
        for sha in record.files:
            if sha in sampled:
                plays[sha].append(Play(record.seq, record.time, record.user))
    return Review(draws, dict(findings), dict(plays))


# --- acting: draw and record findings ----------------------------------------------


def _check_text(text: str | None, what: str, limit: int) -> str:
    value = (text or "").strip()
    if len(value) > limit or any(
        (ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in value
    ):
        raise InputError(f"{what}: at most {limit} printable characters")
    return value


def _draws_in(station: Station) -> Iterator[Draw]:
    return (Draw.of(e) for e in station.ledger.entries_of_type(DRAW))


def draw(
    station: Station, user: ScopedActor, criteria: Criteria, *, redraw_reason: str | None = None
) -> Entry:
    """Draw a sample by the rule and append the ``spotcheck_draw`` entry.

    A draw overlapping an earlier one is a redraw: it needs ``redraw_reason``
    (InputError naming the earlier draws otherwise) and records ``redraw_of``.
    Raises PermissionDeniedError unless the user may ``spotcheck``, InputError if
    no recording matches.
    """
    require(user, "spotcheck")
    reason = _check_text(redraw_reason, "--redraw-reason", REASON_MAX) or None
    # The reviewer cannot choose the checkpoint: the latest one, signed now if
    # the ledger grew since (Art. 19: a sample nobody can steer).
    signed = station.ledger.latest_checkpoint()
    if signed is None or signed.checkpoint.size < station.ledger.size():
        signed = station.checkpoint()
    with station.ledger.transaction() as tx:
        earlier = [d for d in _draws_in(station) if d.criteria.overlaps(criteria)]
        if earlier and reason is None:
            names = ", ".join(f"{d.seq} ({d.criteria.describe()}, by {d.by})" for d in earlier)
            raise InputError(
                f"this draw overlaps earlier draw(s) {names}: drawing again is a redraw and "
                "stays on the record; give --redraw-reason TEXT, or review the earlier sample "
                f"(`evidock spotcheck show {earlier[-1].seq}`)"
            )
        if not earlier and reason is not None:
            raise InputError(
                "--redraw-reason given, but this draw overlaps no earlier draw; leave it out"
            )
        body = _draw_body(station, signed, criteria)
        if not body["sample"]:
            raise InputError(
                f"no recordings in the signed ledger match {criteria.describe()}: nothing to draw"
            )
        body.update(redraw_of=earlier[-1].seq if earlier else None, reason=reason, by=user.name)
        entry = tx.append(DRAW, body)
    log.info(
        "spot-check draw %d: %d of %d recordings",
        entry.seq,
        len(body["sample"]),
        body["population"],
    )
    return entry


def _draw_body(station: Station, signed: SignedCheckpoint, criteria: Criteria) -> dict[str, Any]:
    cp = signed.checkpoint
    entries = chain(station.ledger.entries_of_type(INGEST), station.ledger.entries_of_type(PURGE))
    pop = population(entries, cp.size, criteria)
    return {
        "rule": RULE,
        **criteria.as_body(),
        "checkpoint": signed.note,
        "size": cp.size,
        "root": cp.root.hex(),
        "population": len(pop),
        "sample": draw_sample(cp.root, pop, criteria.percent),
    }


def record_finding(
    station: Station,
    user: ScopedActor,
    draw_seq: int,
    sha256: str,
    result: str,
    note: str | None,
) -> Entry:
    """Append a ``spotcheck_finding`` for a clip of a draw.

    Raises InputError unless the clip is in the draw's sample, the user played it
    after the draw (an ``access`` entry of action play naming it), the result is
    known, a conduct issue or incomplete recording has a note, and a second
    finding for the clip brings a new note. PermissionDeniedError unless the user
    may ``spotcheck``.
    """
    require(user, "spotcheck")
    if result not in RESULTS:
        raise InputError(f"--result {result!r}: one of {', '.join(RESULTS)}")
    text = _check_text(note, "--note", NOTE_MAX)
    if result in NOTE_REQUIRED and not text:
        raise InputError(f"--result {result} needs --note TEXT saying what the recording shows")
    with station.ledger.transaction() as tx:
        state = review(station)
        the_draw = state.draw(draw_seq)
        if sha256 not in the_draw.sample:
            raise InputError(
                f"{sha256} is not in the sample of draw {draw_seq}; "
                f"see `evidock spotcheck show {draw_seq}`"
            )
        played = [
            p for p in state.plays.get(sha256, []) if p.seq > draw_seq and p.user == user.name
        ]
        if not played:
            raise InputError(
                f"user {user.name!r} has not played {sha256} since draw {draw_seq}: play it first "
                f'with `evidock play {sha256} --purpose "spot check {draw_seq}" --as {user.name}` '
                "(or on the kiosk page), then record the finding"
            )
        earlier = state.findings.get((draw_seq, sha256), [])
        if earlier and (not text or any(f.note == text for f in earlier)):
            raise InputError(
                f"{sha256} of draw {draw_seq} already has a finding (entry {earlier[-1].seq}); "
                "an amendment needs a new --note saying what changed"
            )
        body = {
            "draw": draw_seq,
            "sha256": sha256,
            "result": result,
            "note": text,
            "by": user.name,
            "played": played[-1].seq,
        }
        return tx.append(FINDING, body)
