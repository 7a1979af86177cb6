"""Spot checks (Art. 19): a sample nobody can steer, playback, and recorded findings.

The legal-affairs team (role ``auditor``) draws a sample of recordings, plays
each one and records what it saw. A draw is commit-then-reveal: the reviewer's
criteria go into the ledger first, and only then does the dock sign the
checkpoint whose signature chooses the sample. Anyone holding the ledger
entries and the station's verifier key can recompute the sample; a reviewer
who asks again to dodge a clip leaves a request with ``redraw_of`` and a reason
that the list and the report show.

The rule, "evidock spotcheck v2" (the contract an auditor re-implements):

1. Request. A ``spotcheck_request`` entry, at seq Q, records the criteria.
2. Seed. The dock then signs a checkpoint of its ledger: tree size S and root
   R with Q < S <= D, where D is the seq of the ``spotcheck_draw`` entry that
   answers the request (other entries may land between the two). The seed G
   is the 64-byte Ed25519 signature in that signed note by the station key in
   force at size S: the key of the genesis entry, or of the last
   ``key_rotation`` entry with seq < S. In the note's signature line
   ``— <key name> <base64(key id || signature)>`` it is the bytes after the
   4-byte key id.
3. Population. The ``ingest`` entries with seq < Q, minus the digests named by
   ``purge`` entries with seq < Q (they cannot be played any more), that match
   the request's criteria:

   - ``officer``: the ingest body's ``officer`` equals it (null: every officer);
   - ``from`` / ``to``: the recording time lies in [from, to) (null: unbounded).
     The recording time is the ingest body's ``recorded_at``, else its
     ``source_mtime``, else the entry's ``time`` (the first of them that is an
     RFC 3339 time with a zone), which is how the dock's file index dates a
     recording for tagging and upload.

   N is the number of distinct digests in it.
4. Score. For each population digest d (64 hex digits):
   ``score(d) = SHA-256(b"evidock spotcheck v2\\n" || G || bytes.fromhex(d))``.
5. Sample. The k digests with the smallest scores (compared as byte strings),
   in ascending score order, where ``k = ceil(P * N / 100)`` for the percentage
   P (a decimal in (0, 100], stored as text, e.g. "5" or "2.5"). k >= 1 when
   N > 0. Distinct digests have distinct scores unless SHA-256 collides.

What a reviewer can and cannot influence (the threat model). The reviewer
chooses the criteria and the moment of the request, and can read the ledger,
so they know the population. They cannot know the seed before they are bound
to the criteria: it is a signature over a tree that already holds their
request, made with a private key they do not hold, so no criteria can be tried
against it beforehand, and appending harmless entries (a kiosk view is an
``access`` entry) only changes it in ways nobody without the key can foresee.
Nor can they re-roll it: Ed25519 signing is deterministic (RFC 8032), so
signing the same checkpoint again gives the same seed. Every request stays in
the ledger. Asking again for an overlapping officer and period (equal officers
or either null, intersecting periods) is a redraw: it needs a reason, and the
list, show and report name it with the clips it dropped unreviewed. A request
the dock never drew (it stopped between the two entries) is listed as
"requested, not drawn"; it blocks nothing, but a later overlapping request is
still a redraw. The trust anchor is whoever holds the station's private key
(``keys/station.key``, the dock's service account): they can compute any seed
in advance, and as Ed25519 verification cannot tell a deterministic signature
from one made with another nonce, they could also pick among valid seeds. The
kiosk and ``--as`` users act through the dock and never read that key; an
account that can read it can forge checkpoints anyway. ``recompute`` checks
the signature against the key in force by the key history in the entries,
anchored by the verifier keys the auditor trusts.

Rule "evidock spotcheck v1" (draws made before v2, no longer made) seeded the
score with the checkpoint root R (32 bytes, domain ``evidock spotcheck v1\\n``),
took the population below the checkpoint's size S, and had no request: its
``spotcheck_draw`` entry carried the criteria, ``redraw_of`` and ``reason``
itself. Its seed could be computed from the entries before drawing and changed
by appending entries. Such draws are still listed, take findings and are
recomputed; each counts as its own request when later requests are checked for
overlap.

Entries written here (bodies are canonical JSON, no floats):

``spotcheck_request``
    {rule, percent, officer, from, to, redraw_of (seq of the latest earlier
    request it overlaps, a v1 draw counting as a request, or null), reason (why
    it was asked again, or null), by (the kiosk user)}. ``from``/``to`` are UTC
    RFC 3339 times or null.
``spotcheck_draw``
    {request (seq), checkpoint (the signed note text), size, root (hex),
    population (N), sample [digests in score order], by}.
``spotcheck_finding``
    {draw (seq of the ``spotcheck_draw`` entry), sha256, result:
    ok|conduct_issue|incomplete|unrelated, note, by, played (seq of the
    ``access`` entry in which ``by`` played the clip after the draw)}. A later
    finding for the same draw and clip amends the earlier one (entries are
    never overwritten) and must carry a new note.

Raises: InputError for bad criteria or an unknown draw, PermissionDeniedError
(an InputError) for a role that may not act, IntegrityError (SignatureError)
when entries, a draw and its signed checkpoint do not fit together.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import cached_property
from itertools import chain
from typing import Any

from agent._text import check_id, check_text
from agent.records.access import PLAY, access_records
from agent.users.roles import ScopedActor, require
from hashing.checkpoint import Checkpoint
from hashing.entries import GENESIS, HEX64_RE, INGEST, KEY_ROTATION, Entry
from hashing.errors import InputError, IntegrityError, UnknownSignerError
from hashing.keys import KeyHistory
from hashing.merkle import root_of
from hashing.note import NoteVerifier, open_note, parse_note
from hashing.retention import PURGE, parse_when
from hashing.station import Station
from hashing.verify import trusted_keys

log = logging.getLogger(__name__)

RULE = "evidock spotcheck v2"
RULE_V1 = "evidock spotcheck v1"
RULES = (RULE, RULE_V1)
REQUEST = "spotcheck_request"
DRAW = "spotcheck_draw"
FINDING = "spotcheck_finding"
SIGNATURE_SIZE = 64  # an Ed25519 signature: the v2 seed

OK, CONDUCT_ISSUE, INCOMPLETE, UNRELATED = "ok", "conduct_issue", "incomplete", "unrelated"
RESULTS = (OK, CONDUCT_ISSUE, INCOMPLETE, UNRELATED)
# Art. 20: a conduct issue or an incomplete recording must say what was seen.
NOTE_REQUIRED = frozenset({CONDUCT_ISSUE, INCOMPLETE})
NOTE_MAX = 2000
REASON_MAX = 500
PERCENT_DIGITS = 4  # at most 4 decimals: "0.0001" .. "100"

REVIEWED = "reviewed"
NOT_REVIEWED = "not reviewed"
DRAWN = "drawn"
NOT_DRAWN = "requested, not drawn"


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


def score(seed: bytes, sha256: str, rule: str = RULE) -> bytes:
    """SHA-256(rule || "\\n" || seed || digest bytes): the seed is the checkpoint
    signature under v2, the checkpoint root under v1."""
    return hashlib.sha256(f"{rule}\n".encode() + seed + bytes.fromhex(sha256)).digest()


def draw_sample(
    seed: bytes, population: Iterable[str], percent: str, rule: str = RULE
) -> list[str]:
    """The k digests of ``population`` with the smallest scores, smallest first."""
    unique = set(population)
    k = sample_size(percent, len(unique))
    return heapq.nsmallest(k, unique, key=lambda sha: score(seed, sha, rule))


def seed_of(note: str, key: NoteVerifier) -> bytes:
    """The v2 seed: ``key``'s Ed25519 signature in the signed note, verified.

    Raises InputError if the note is malformed, UnknownSignerError if ``key``
    did not sign it, SignatureError if its signature does not verify.
    """
    open_note(note, [key])
    _, signatures = parse_note(note)
    # open_note verified the first signature by this key; Go's reader ignores any later one.
    mine = next(s for s in signatures if (s.name, s.key_id) == (key.name, key.key_id))
    if len(mine.signature) != SIGNATURE_SIZE:
        raise InputError(f"the signature by {key.vkey} is not {SIGNATURE_SIZE} bytes long")
    return mine.signature


def recording_time(entry: Entry) -> datetime:
    """recorded_at, else source_mtime, else the entry's own time (see the rule)."""
    body = entry.body
    for value in (body.get("recorded_at"), body.get("source_mtime"), entry.time):
        when = parse_when(value)
        if when is not None:
            return when
    raise InputError(f"entry {entry.seq}: no usable time")  # entry.time always parses


def utc_text(when: datetime | None) -> str | None:
    """A bound as stored in a request entry: UTC RFC 3339, or null."""
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


def population(entries: Iterable[Entry], before: int, criteria: Criteria) -> list[str]:
    """Step 3 of the rule over any iterable of entries (ingest and purge are read,
    everything else, and every entry at ``before`` or later, ignored), sorted."""
    chosen: set[str] = set()
    purged: set[str] = set()
    for entry in entries:
        if entry.seq >= before:
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


# --- requests and draws as recorded ------------------------------------------------


def _int(body: Mapping[str, Any], name: str, seq: int) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"entry {seq}: {name} is not a number")
    return value


def _optional_int(body: Mapping[str, Any], name: str, seq: int) -> int | None:
    return None if body.get(name) is None else _int(body, name, seq)


@dataclass(frozen=True)
class Request:
    """What a reviewer asked for: a ``spotcheck_request`` entry, or a v1
    ``spotcheck_draw`` entry, which was its own request."""

    seq: int
    time: str
    by: str
    rule: str
    criteria: Criteria
    redraw_of: int | None  # the latest earlier request it overlaps
    reason: str | None

    @classmethod
    def of(cls, entry: Entry) -> Request:
        """Raises InputError unless the entry is a request (or a v1 draw)."""
        b = entry.body
        rule = b.get("rule")
        if (entry.type, rule) not in ((REQUEST, RULE), (DRAW, RULE_V1)):
            raise InputError(
                f"entry {entry.seq} is a {entry.type} of rule {rule!r}, not a spot-check request"
            )
        return cls(
            seq=entry.seq,
            time=entry.time,
            by=str(b.get("by")),
            rule=str(rule),
            criteria=Criteria.from_body(b),
            redraw_of=_optional_int(b, "redraw_of", entry.seq),
            reason=None if b.get("reason") is None else str(b["reason"]),
        )


def is_v1_draw(entry: Entry) -> bool:
    return entry.type == DRAW and "request" not in entry.body


@dataclass(frozen=True)
class Draw:
    seq: int
    time: str
    by: str
    request: Request
    size: int
    root: str
    checkpoint: str
    population: int
    sample: tuple[str, ...]

    @property
    def criteria(self) -> Criteria:
        return self.request.criteria

    @property
    def rule(self) -> str:
        return self.request.rule

    @classmethod
    def of(cls, entry: Entry, requests: Mapping[int, Request]) -> Draw:
        """A draw entry with its request (for a v1 draw, the entry itself).

        Raises IntegrityError if it names no request, a request after it, or one
        of another rule.
        """
        b = entry.body
        if is_v1_draw(entry):
            request = Request.of(entry)
        else:
            seq = _int(b, "request", entry.seq)
            found = requests.get(seq)
            if found is None or found.rule != RULE or not seq < entry.seq:
                raise IntegrityError(
                    f"draw {entry.seq} names entry {seq}, which is not an earlier "
                    f"{REQUEST} of rule {RULE!r}"
                )
            request = found
        return cls(
            seq=entry.seq,
            time=entry.time,
            by=str(b.get("by")),
            request=request,
            size=_int(b, "size", entry.seq),
            root=str(b.get("root")),
            checkpoint=str(b.get("checkpoint")),
            population=_int(b, "population", entry.seq),
            sample=tuple(str(s) for s in b.get("sample") or ()),
        )


# --- recomputing offline ---------------------------------------------------------


@dataclass(frozen=True)
class Recomputed:
    draw: int
    request: int
    rule: str
    criteria: Criteria
    size: int
    root: str
    key: str  # the verifier key whose signature the checkpoint carries
    anchored: bool  # that key was checked against keys the auditor gave
    population: int
    sample: tuple[str, ...]
    problems: tuple[str, ...]  # where the draw entry differs from the rule


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
            raise InputError(f"entries line {number}: {e}", hint=e.hint) from e
        if entry.seq != len(entries):
            raise InputError(
                f"entries line {number}: entry {entry.seq} where {len(entries)} was expected; "
                "give the whole output of `evidock ledger entries` from the start"
            )
        entries.append(entry)
    return entries


def _key_in_force(
    entries: Sequence[Entry], size: int, anchors: Sequence[NoteVerifier]
) -> NoteVerifier:
    """The key that must have signed a checkpoint of ``size``, by the key history
    in the entries; with ``anchors``, it must be one of them or handed over to
    by one (UnknownSignerError otherwise)."""
    history = KeyHistory.from_entries(
        e for e in entries[:size] if e.type in (GENESIS, KEY_ROTATION)
    )
    key = history.key_for_size(size)
    if anchors and key not in trusted_keys(history, anchors):
        raise UnknownSignerError(
            f"the key in force at tree size {size} is {key.vkey}; neither it nor a key that "
            "handed over to it is among the keys you trust (--key)"
        )
    return key


def recompute(
    entries: Sequence[Entry], seq: int, anchors: Sequence[NoteVerifier] = ()
) -> Recomputed:
    """Recompute draw ``seq`` from the entries alone, as an auditor does it.

    Raises InputError unless entry ``seq`` is a draw with its request;
    IntegrityError if its checkpoint was not signed between the request and the
    draw (v2) or the entries are not the checkpoint's (their RFC 9162 root over
    its first ``size`` leaves differs); SignatureError (an IntegrityError) if the
    note is not signed by the key in force at its size, or that key is not
    trusted. Differences between the draw entry and the rule are returned as
    ``problems``.
    """
    if not 0 <= seq < len(entries) or entries[seq].type != DRAW:
        raise InputError(f"entry {seq} of the entries given is not a spot-check draw")
    entry = entries[seq]
    requests = {}
    if not is_v1_draw(entry):
        asked = _int(entry.body, "request", seq)
        if 0 <= asked < len(entries) and entries[asked].type == REQUEST:
            requests[asked] = Request.of(entries[asked])
    recorded = Draw.of(entry, requests)
    request = recorded.request
    text, _ = parse_note(recorded.checkpoint)
    checkpoint = Checkpoint.parse(text)
    size = checkpoint.size
    if request.rule == RULE and not request.seq < size <= seq:
        raise IntegrityError(
            f"draw {seq}: its checkpoint covers {size} entries, but the rule needs one signed "
            f"after request {request.seq} and before the draw (size {request.seq + 1} to {seq})"
        )
    if not size <= seq:
        raise IntegrityError(f"draw {seq}: its checkpoint covers {size} entries, not all before it")
    root = root_of([e.leaf for e in entries[:size]])
    if root != checkpoint.root:
        raise IntegrityError(
            f"the entries do not match the checkpoint: their root at size {size} "
            f"is {root.hex()}, the checkpoint says {checkpoint.root.hex()}"
        )
    key = _key_in_force(entries, size, anchors)
    signature = seed_of(recorded.checkpoint, key)
    if request.rule == RULE:
        seed, before = signature, request.seq
    else:
        seed, before = checkpoint.root, size
    pop = population(entries, before, request.criteria)
    sample = tuple(draw_sample(seed, pop, request.criteria.percent, request.rule))
    problems = []
    if (recorded.size, recorded.root) != (size, checkpoint.root.hex()):
        problems.append(
            f"draw {seq} records size {recorded.size} root {recorded.root}, "
            f"its checkpoint says size {size} root {checkpoint.root.hex()}"
        )
    if recorded.population != len(pop):
        problems.append(
            f"draw {seq} records a population of {recorded.population}, recomputed {len(pop)}"
        )
    if recorded.sample != sample:
        problems.append(f"draw {seq} records a different sample than the rule gives")
    return Recomputed(
        draw=seq,
        request=request.seq,
        rule=request.rule,
        criteria=request.criteria,
        size=size,
        root=checkpoint.root.hex(),
        key=key.vkey,
        anchored=bool(anchors),
        population=len(pop),
        sample=sample,
        problems=tuple(problems),
    )


# --- the record: requests, draws, findings, plays ---------------------------------------


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
    dropped_by: int | None  # the later draw whose sample left it out


@dataclass(frozen=True)
class Progress:
    """One request: its draw (if the dock made it), the clips and what became of them."""

    request: Request
    draw: Draw | None
    clips: tuple[Clip, ...]
    redrawn_by: tuple[int, ...]  # later requests overlapping this one
    redraw_of_draw: int | None  # the draw of the request this one redraws, if made

    @property
    def status(self) -> str:
        return NOT_DRAWN if self.draw is None else DRAWN

    @property
    def sample(self) -> tuple[str, ...]:
        return () if self.draw is None else self.draw.sample

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
        r, d = self.request, self.draw
        return {
            "request": r.seq,
            "draw": None if d is None else d.seq,
            "status": self.status,
            "rule": r.rule,
            "time": r.time,
            "drawn_at": None if d is None else d.time,
            "by": r.by,
            **r.criteria.as_body(),
            "checkpoint_size": None if d is None else d.size,
            "root": None if d is None else d.root,
            "population": None if d is None else d.population,
            "sample": len(self.sample),
            "reviewed": self.reviewed,
            "not_reviewed": self.not_reviewed,
            "dropped_by_redraw": self.dropped,
            "results": self.results(),
            "amendments": self.amendments,
            "redraw_of": r.redraw_of,
            "redraw_of_draw": self.redraw_of_draw,
            "reason": r.reason,
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
    """Every request and draw with its findings and the playbacks that back them."""

    requests: dict[int, Request]
    draws: dict[int, Draw]
    findings: dict[tuple[int, str], list[Finding]] = field(default_factory=dict)
    plays: dict[str, list[Play]] = field(default_factory=dict)

    @cached_property
    def _answers(self) -> dict[int, Draw]:
        answers: dict[int, Draw] = {}
        for seq in sorted(self.draws):
            answers.setdefault(self.draws[seq].request.seq, self.draws[seq])
        return answers

    def drawn(self, request: int) -> Draw | None:
        """The draw that answered a request, if the dock made it."""
        return self._answers.get(request)

    def draw(self, seq: int) -> Draw:
        try:
            return self.draws[seq]
        except KeyError:
            pass
        if seq in self.requests:
            answer = self.drawn(seq)
            if answer is None:
                raise InputError(
                    f"entry {seq} is a spot-check request that was never drawn; "
                    "see `evidock spotcheck list`"
                )
            raise InputError(
                f"entry {seq} is the request of draw {answer.seq}", hint=f"give {answer.seq}"
            )
        raise InputError(
            f"entry {seq} is not a spot-check draw", hint="see `evidock spotcheck list`"
        )

    def redrawn_by(self, request: Request) -> list[int]:
        """Later requests overlapping this one (each is a redraw)."""
        return [
            r.seq
            for r in self.requests.values()
            if r.seq > request.seq and r.criteria.overlaps(request.criteria)
        ]

    def progress(self, request_seq: int) -> Progress:
        request = self.requests[request_seq]
        made = self.drawn(request_seq)
        later = self.redrawn_by(request)
        clips = () if made is None else self._clips(made, later)
        earlier = None if request.redraw_of is None else self.drawn(request.redraw_of)
        return Progress(
            request, made, clips, tuple(later), None if earlier is None else earlier.seq
        )

    def _clips(self, made: Draw, later: list[int]) -> tuple[Clip, ...]:
        later_draws = [d for d in map(self.drawn, later) if d is not None]
        clips = []
        for rank, sha in enumerate(made.sample, 1):
            found = tuple(self.findings.get((made.seq, sha), ()))
            plays = tuple(p for p in self.plays.get(sha, ()) if p.seq > made.seq)
            dropped = None
            if not found:
                dropped = next((d.seq for d in later_draws if sha not in d.sample), None)
            if found:
                status = REVIEWED
            elif dropped is not None:
                status = f"{NOT_REVIEWED} (dropped by redraw {dropped})"
            else:
                status = NOT_REVIEWED
            clips.append(
                Clip(rank, sha, status, found[-1].result if found else None, found, plays, dropped)
            )
        return tuple(clips)

    def all_progress(self) -> list[Progress]:
        return [self.progress(seq) for seq in sorted(self.requests)]


def requests_in(station: Station) -> list[Request]:
    """Every request, v1 draws included, in ledger order."""
    found = [Request.of(e) for e in station.ledger.entries_of_type(REQUEST)]
    found += [Request.of(e) for e in station.ledger.entries_of_type(DRAW) if is_v1_draw(e)]
    return sorted(found, key=lambda r: r.seq)


def review(station: Station) -> Review:
    """Read requests, draws, findings and playbacks (one query per entry type)."""
    requests = {r.seq: r for r in requests_in(station)}
    draws = {e.seq: Draw.of(e, requests) for e in station.ledger.entries_of_type(DRAW)}
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
    return Review(requests, draws, dict(findings), dict(plays))


# --- acting: draw and record findings ----------------------------------------------


def draw(
    station: Station, user: ScopedActor, criteria: Criteria, *, redraw_reason: str | None = None
) -> Entry:
    """Request a sample, sign a checkpoint over the request, draw by the rule and
    append the ``spotcheck_draw`` entry, which is returned.

    A request overlapping an earlier one is a redraw: it needs ``redraw_reason``
    (InputError naming the earlier requests otherwise) and records ``redraw_of``.
    Raises PermissionDeniedError unless the user may ``spotcheck``, InputError if
    no recording matches (nothing is written then).
    """
    require(user, "spotcheck")
    reason = check_text(redraw_reason, "--redraw-reason", REASON_MAX, lines=True) or None
    with station.ledger.transaction() as tx:
        earlier = [r for r in requests_in(station) if r.criteria.overlaps(criteria)]
        if earlier and reason is None:
            names = ", ".join(f"{r.seq} ({r.criteria.describe()}, by {r.by})" for r in earlier)
            raise InputError(
                f"this draw overlaps earlier request(s) {names}: drawing again is a redraw and "
                "stays on the record",
                hint="give --redraw-reason TEXT, or review the earlier sample "
                "(`evidock spotcheck list`)",
            )
        if not earlier and reason is not None:
            raise InputError(
                "--redraw-reason given, but this draw overlaps no earlier request",
                hint="leave it out",
            )
        # Commit: the criteria go into the ledger before the seed exists.
        entries = chain(
            station.ledger.entries_of_type(INGEST), station.ledger.entries_of_type(PURGE)
        )
        pop = population(entries, tx.size, criteria)
        if not pop:
            raise InputError(
                f"no recordings in the ledger match {criteria.describe()}: nothing to draw"
            )
        request = tx.append(
            REQUEST,
            {
                "rule": RULE,
                **criteria.as_body(),
                "redraw_of": earlier[-1].seq if earlier else None,
                "reason": reason,
                "by": user.name,
            },
        )
    # Reveal: the station's signature over a tree holding the request.
    signed = station.checkpoint()
    size = signed.checkpoint.size
    seed = seed_of(signed.note, station.keys.load().verifier)
    body: dict[str, Any] = {
        "request": request.seq,
        "checkpoint": signed.note,
        "size": size,
        "root": signed.checkpoint.root.hex(),
        "population": len(pop),
        "sample": draw_sample(seed, pop, criteria.percent),
        "by": user.name,
    }
    entry = station.ledger.append(DRAW, body)
    log.info(
        "spot-check draw %d (request %d): %d of %d recordings",
        entry.seq,
        request.seq,
        len(body["sample"]),
        len(pop),
    )
    return entry


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
    text = check_text(note, "--note", NOTE_MAX, lines=True)
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
