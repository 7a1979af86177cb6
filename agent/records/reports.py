"""Conduct reports (Art. 20) and statistics as electronic data (Art. 3).

A conduct report covers one officer over a period: recordings per day and per
shift, a chart of recordings and gaps per day, anomalies by kind (gaps,
missing clip numbers, clock faults, undecodable and refused files), devices
bound to the officer that were not docked for N days, wipes and purges of
their recordings, failed verifications, spot-check findings and who accessed
their recordings. Every number names the ledger entries (seq) it is counted
from, so an auditor can check it against `evidock ledger entries`.

Statistics count recordings, bytes, duration, anomalies, tagged / evidence /
long-term recordings and receipted uploads per officer, device, case or day,
as CSV (RFC 4180 through the csv module, UTF-8, formula-injection safe) or JSON.

Reading. One pass over the ledger per report: each entry type is read once
(``entries_of_type``) into ``Facts`` and everything is counted from memory, so
a report over 10,000 recordings takes seconds, not a scan per officer.

Times. Periods are given as dates or times; a date is a whole local day and
``--to DATE`` includes that day (a time is an exclusive end). Local days are
in a fixed UTC offset: ``--tz`` (e.g. +08:00), by default the station's
``[offload] utc_offset_minutes`` (the zone its cameras' clocks are read in),
so the days of a report are the days the footage shows. A recording's time is
its ``recorded_at``, else its source file's modification time, else its ingest
entry's time (as agent.records.spotcheck's rule and the file index date it).

Attribution. A recording is the officer's its ingest entry names; an anomaly
is the officer's its body names, else the officer the device registry bound
its device to at that point of the ledger. A time gap is dated by its start,
missing clip numbers by the earliest recording named beside the hole, other
anomalies by their entry (the docking that found them). A device is the
officer's in the period when its latest ``device_assign`` before the period's
end (or now) binds it to them, or when one of the officer's offload sessions
in the period used it; a rebinding inside the period is not split out.

Raises InputError for bad periods, zones or keys; EvidockError when a PDF
cannot be made.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import jinja2

from agent import config
from agent.records._csv import csv_text
from agent.records.access import AccessRecord, access_records
from agent.records.anomalies import (
    CLOCK_OFFSET,
    FUTURE_DATED,
    MISSING_CLIP_NUMBERS,
    OVERDUE_DEVICE,
    REFUSED_FILE,
    TIME_GAP,
    UNASSIGNED_DEVICE,
    UNDECODABLE,
)
from agent.records.registry import ANOMALY, DEVICE_ASSIGN, OFFLOAD_SESSION, TAG, WIPE
from agent.records.spotcheck import FINDING, RESULTS, recording_time
from hashing._fsutil import make_private_dir, write_atomic
from hashing.entries import HEX64_RE, INGEST, parse_time
from hashing.errors import EvidockError, InputError
from hashing.retention import PURGE, parse_when
from hashing.station import Station

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("report_templates")
SCRUB = "scrub"
UPLOAD_RECEIPT = "upload_receipt"  # uploader.outbox.UPLOAD_RECEIPT, without importing paho
# Art. 20 (1): holes in the record, drawn on the chart beside the recordings.
GAP_KINDS = (TIME_GAP, MISSING_CLIP_NUMBERS)
ANOMALY_ORDER = (
    TIME_GAP,
    MISSING_CLIP_NUMBERS,
    CLOCK_OFFSET,
    FUTURE_DATED,
    UNDECODABLE,
    REFUSED_FILE,
    OVERDUE_DEVICE,
    UNASSIGNED_DEVICE,
)
STAT_KEYS = ("officer", "device", "case", "day")
STAT_COLUMNS = (
    "recordings",
    "bytes",
    "duration_ms",
    "anomalies",
    "tagged",
    "evidence",
    "long_term",
    "uploads_receipted",
)
CONDUCT_COLUMNS = ("officer", "section", "key", "metric", "value", "entries", "detail")
_CLASS_RANK = {"routine": 0, "evidence": 1, "long-term": 2}
# OWASP "CSV injection": a spreadsheet runs a cell starting with these as a formula.
_TZ = re.compile(r"([+-])(\d{2}):?(\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- periods and zones -------------------------------------------------------------


def parse_tz(text: str) -> timezone:
    """'+08:00', '-0530', 'Z' or 'UTC' as a fixed offset. Raises InputError."""
    if text in ("Z", "UTC", "utc"):
        return UTC
    match = _TZ.fullmatch(text.strip())
    if match is None or int(match[2]) > 14 or int(match[3]) > 59:
        raise InputError(f"--tz {text!r}: give a UTC offset such as +08:00, -05:30 or Z")
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def default_tz() -> timezone:
    """The station's zone: [offload] utc_offset_minutes of the configuration."""
    minutes = int(config.load().get("offload", "utc_offset_minutes"))
    return timezone(timedelta(minutes=minutes))


def parse_bound(text: str, tz: timezone, *, end: bool, option: str) -> datetime:
    """A date (the local day's start; for an end, the next day's start) or a time
    (without a zone: in ``tz``). Raises InputError naming ``option``."""
    text = text.strip()
    try:
        if _DATE.fullmatch(text):
            start = datetime.combine(date.fromisoformat(text), time(), tz)
            return start + timedelta(days=1) if end else start
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{option} {text!r}: give a date (2024-05-01) or a time (2024-05-01T08:00:00+08:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


@dataclass(frozen=True)
class Period:
    """[start, end) with the zone its days are counted in."""

    start: datetime
    end: datetime
    tz: timezone

    @classmethod
    def parse(cls, start: str, end: str, tz: timezone) -> Period:
        period = cls(
            parse_bound(start, tz, end=False, option="--from"),
            parse_bound(end, tz, end=True, option="--to"),
            tz,
        )
        if not period.start < period.end:
            raise InputError(f"the period is empty: --from {start} is not before --to {end}")
        return period

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end

    def day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    @property
    def first_day(self) -> date:
        return self.day(self.start)

    @property
    def last_day(self) -> date:
        return self.day(self.end - timedelta(microseconds=1))

    def days(self) -> list[date]:
        count = (self.last_day - self.first_day).days + 1
        return [self.first_day + timedelta(days=i) for i in range(count)]

    @property
    def label(self) -> str:
        return f"{self.first_day.isoformat()} – {self.last_day.isoformat()} (UTC{_offset(self.tz)})"


def _offset(tz: timezone) -> str:
    delta = tz.utcoffset(None)
    minutes = int(delta.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# --- what the ledger says, read once -----------------------------------------------


@dataclass(frozen=True)
class Recording:
    seq: int
    sha256: str
    size: int
    officer: str | None
    device: str | None
    case: str | None
    recorded: datetime
    name: str
    duration_ms: int


@dataclass(frozen=True)
class AnomalyRow:
    seq: int
    when: datetime
    kind: str
    device: str | None
    officer: str | None  # as attributed (see the module docstring)
    detail: str
    files: tuple[str, ...]  # digests of the recordings it names, where known


@dataclass(frozen=True)
class SessionRow:
    seq: int
    device: str | None
    officer: str | None
    started: datetime
    failed: int
    refused: int
    new: int


@dataclass(frozen=True)
class Event:
    """A wipe, purge, scrub failure or spot-check finding about one recording."""

    seq: int
    when: datetime
    sha256: str
    what: str  # wipe: the device; purge: the class; scrub: the finding; finding: the result
    detail: str


@dataclass
class Facts:
    """Every entry type a report reads, parsed once (``load_facts``)."""

    recordings: dict[str, Recording] = field(default_factory=dict)
    assigns: dict[str, list[tuple[int, datetime, str | None]]] = field(default_factory=dict)
    sessions: list[SessionRow] = field(default_factory=list)
    anomalies: list[AnomalyRow] = field(default_factory=list)
    wipes: list[Event] = field(default_factory=list)
    purges: list[Event] = field(default_factory=list)
    scrub_failures: list[Event] = field(default_factory=list)
    findings: list[Event] = field(default_factory=list)
    receipts: dict[str, int] = field(default_factory=dict)
    tags: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    access: list[AccessRecord] = field(default_factory=list)

    def binding(self, serial: str | None, before_seq: int) -> str | None:
        """The officer the registry bound ``serial`` to just before entry ``before_seq``."""
        history = self.assigns.get(serial or "")
        if not history:
            return None
        i = bisect_right([seq for seq, _, _ in history], before_seq)
        return history[i - 1][2] if i else None

    def strongest_class(self, sha256: str) -> str | None:
        tags = self.tags.get(sha256)
        if not tags:
            return None
        return max((t[2] for t in tags), key=lambda c: _CLASS_RANK.get(c, 0))

    def cases(self, rec: Recording) -> list[str]:
        found = {rec.case} if rec.case else set()
        found.update(case for _, case, _ in self.tags.get(rec.sha256, ()))
        return sorted(found)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def load_facts(station: Station) -> Facts:
    """Read each entry type once."""
    facts = Facts()
    ledger = station.ledger
    by_path: dict[tuple[str | None, str], str] = {}
    for e in ledger.entries_of_type(INGEST):
        b = e.body
        sha = str(b.get("sha256"))
        media = b.get("media")
        media = media if isinstance(media, dict) else {}
        facts.recordings[sha] = Recording(
            seq=e.seq,
            sha256=sha,
            size=_int(b.get("size")),
            officer=None if b.get("officer") is None else str(b["officer"]),
            device=None if b.get("device") is None else str(b["device"]),
            case=None if b.get("case") is None else str(b["case"]),
            recorded=recording_time(e),
            name=str(b.get("name") or ""),
            duration_ms=_int(media.get("duration_ms")),
        )
        by_path[(facts.recordings[sha].device, str(b.get("source_path")))] = sha
    for e in ledger.entries_of_type(DEVICE_ASSIGN):
        officer = e.body.get("officer")
        facts.assigns.setdefault(str(e.body.get("serial")), []).append(
            (e.seq, parse_time(e.time), None if officer is None else str(officer))
        )
    for e in ledger.entries_of_type(OFFLOAD_SESSION):
        b = e.body
        facts.sessions.append(
            SessionRow(
                seq=e.seq,
                device=None if b.get("device") is None else str(b["device"]),
                officer=None if b.get("officer") is None else str(b["officer"]),
                started=parse_when(b.get("started")) or parse_time(e.time),
                failed=_int(b.get("failed")),
                refused=_int(b.get("refused")),
                new=_int(b.get("new")),
            )
        )
    for e in ledger.entries_of_type(ANOMALY):
        b = e.body
        device = None if b.get("device") is None else str(b["device"])
        officer = b.get("officer")
        named = []
        for f in b.get("files") or ():
            text = str(f)
            if HEX64_RE.fullmatch(text) and text in facts.recordings:
                named.append(text)
            elif (device, text) in by_path:
                named.append(by_path[(device, text)])
        kind = str(b.get("kind"))
        when = parse_time(e.time)
        if kind == TIME_GAP:
            when = parse_when(b.get("gap_from")) or when
        elif kind == MISSING_CLIP_NUMBERS and named:
            when = min(facts.recordings[sha].recorded for sha in named)
        facts.anomalies.append(
            AnomalyRow(
                seq=e.seq,
                when=when,
                kind=kind,
                device=device,
                officer=str(officer) if officer is not None else facts.binding(device, e.seq),
                detail=str(b.get("detail") or ""),
                files=tuple(named),
            )
        )
    for e in ledger.entries_of_type(WIPE):
        b = e.body
        facts.wipes.append(
            Event(e.seq, parse_time(e.time), str(b.get("sha256")), str(b.get("device") or "-"), "")
        )
    for e in ledger.entries_of_type(PURGE):
        b = e.body
        facts.purges.append(
            Event(
                e.seq,
                parse_time(e.time),
                str(b.get("sha256")),
                str(b.get("class") or "-"),
                f"kept until {b.get('keep_until')}",
            )
        )
    for e in ledger.entries_of_type(SCRUB):
        for failure in e.body.get("failures") or ():
            if isinstance(failure, dict):
                facts.scrub_failures.append(
                    Event(
                        e.seq,
                        parse_time(e.time),
                        str(failure.get("sha256")),
                        str(failure.get("finding") or "-"),
                        str(failure.get("detail") or ""),
                    )
                )
    for e in ledger.entries_of_type(FINDING):
        b = e.body
        facts.findings.append(
            Event(
                e.seq,
                parse_time(e.time),
                str(b.get("sha256")),
                str(b.get("result")),
                f"draw {b.get('draw')}, by {b.get('by')}: {b.get('note') or ''}",
            )
        )
    for e in ledger.entries_of_type(UPLOAD_RECEIPT):
        facts.receipts.setdefault(str(e.body.get("sha256")), e.seq)
    for e in ledger.entries_of_type(TAG):
        for sha in e.body.get("files") or ():
            facts.tags.setdefault(str(sha), []).append(
                (e.seq, str(e.body.get("case")), str(e.body.get("retention") or "routine"))
            )
    facts.access = list(access_records(station))
    return facts


# --- counts that name their entries -----------------------------------------------


@dataclass(frozen=True)
class Count:
    """A number and the ledger entries it was counted from."""

    value: int
    entries: tuple[int, ...]

    @classmethod
    def of(cls, seqs: Iterable[int]) -> Count:
        unique = tuple(sorted(set(seqs)))
        return cls(len(unique), unique)

    @property
    def refs(self) -> str:
        return seq_ranges(self.entries)


def seq_ranges(seqs: Sequence[int]) -> str:
    """'3-5 9' for [3, 4, 5, 9]: entry numbers, runs shortened."""
    parts: list[str] = []
    run: list[int] = []
    for seq in sorted(seqs):
        if run and seq == run[-1] + 1:
            run.append(seq)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [seq]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return " ".join(parts)


@dataclass(frozen=True)
class DayRow:
    day: date
    recordings: Count
    bytes: int
    duration_ms: int
    gaps: Count


@dataclass(frozen=True)
class ShiftRow:
    session: int | None  # the offload_session entry; None: not offloaded in a session
    device: str
    started: str
    recordings: Count
    bytes: int
    duration_ms: int
    first: str
    last: str
    failed: int
    refused: int


@dataclass(frozen=True)
class NotDocked:
    device: str
    since: datetime
    until: datetime
    days: int
    entries: tuple[int, ...]  # the device_assign and the dockings around the gap
    open_end: bool  # still not docked at the end of the period (or now)


@dataclass(frozen=True)
class AccessRow:
    user: str
    role: str
    action: str
    count: Count
    recordings: int


@dataclass(frozen=True)
class Conduct:
    officer: str
    period: Period
    generated: datetime
    not_docked_days: int
    recordings: tuple[Recording, ...]
    days: tuple[DayRow, ...]
    shifts: tuple[ShiftRow, ...]
    anomalies: tuple[AnomalyRow, ...]
    anomaly_counts: dict[str, Count]
    devices: tuple[str, ...]
    not_docked: tuple[NotDocked, ...]
    wipes: tuple[Event, ...]
    purges: tuple[Event, ...]
    failed_sessions: tuple[SessionRow, ...]
    scrub_failures: tuple[Event, ...]
    findings: tuple[Event, ...]
    finding_counts: dict[str, Count]
    access: tuple[AccessRow, ...]

    @property
    def total(self) -> Count:
        return Count.of(r.seq for r in self.recordings)

    @property
    def gaps(self) -> Count:
        return Count.of(a.seq for a in self.anomalies if a.kind in GAP_KINDS)

    def summary(self) -> list[tuple[str, Count | int]]:
        return [
            ("recordings", self.total),
            ("bytes", sum(r.size for r in self.recordings)),
            ("duration_ms", sum(r.duration_ms for r in self.recordings)),
            ("gaps", self.gaps),
            ("anomalies", Count.of(a.seq for a in self.anomalies)),
            (
                "devices_not_docked",
                Count(
                    len({n.device for n in self.not_docked}),
                    tuple(sorted({s for n in self.not_docked for s in n.entries})),
                ),
            ),
            ("wipes", Count.of(e.seq for e in self.wipes)),
            ("purges", Count.of(e.seq for e in self.purges)),
            (
                "failed_verifications",
                Count.of(
                    [s.seq for s in self.failed_sessions] + [e.seq for e in self.scrub_failures]
                ),
            ),
            ("spotcheck_findings", Count.of(e.seq for e in self.findings)),
            ("accesses", Count.of(s for a in self.access for s in a.count.entries)),
        ]


def officers_in(facts: Facts, period: Period) -> list[str]:
    """Officers with recordings, anomalies or offload sessions in the period."""
    found = {r.officer for r in facts.recordings.values() if period.contains(r.recorded)}
    found.update(a.officer for a in facts.anomalies if period.contains(a.when))
    found.update(s.officer for s in facts.sessions if period.contains(s.started))
    return sorted(o for o in found if o)


def conduct(
    facts: Facts,
    officer: str,
    period: Period,
    *,
    not_docked_days: int = 3,
    now: datetime | None = None,
) -> Conduct:
    """One officer's conduct report over ``period`` from facts already read."""
    if not_docked_days < 1:
        raise InputError(f"--not-docked-days {not_docked_days}: give 1 or more days")
    now = now or datetime.now(UTC)
    mine = {sha: r for sha, r in facts.recordings.items() if r.officer == officer}
    recs = sorted(
        (r for r in mine.values() if period.contains(r.recorded)), key=lambda r: (r.recorded, r.seq)
    )
    anomalies = sorted(
        (a for a in facts.anomalies if a.officer == officer and period.contains(a.when)),
        key=lambda a: a.seq,
    )
    by_day: dict[date, list[Recording]] = defaultdict(list)
    for r in recs:
        by_day[period.day(r.recorded)].append(r)
    gaps_by_day: dict[date, list[int]] = defaultdict(list)
    for a in anomalies:
        if a.kind in GAP_KINDS:
            gaps_by_day[period.day(a.when)].append(a.seq)
    days = tuple(
        DayRow(
            day,
            Count.of(r.seq for r in by_day.get(day, ())),
            sum(r.size for r in by_day.get(day, ())),
            sum(r.duration_ms for r in by_day.get(day, ())),
            Count.of(gaps_by_day.get(day, ())),
        )
        for day in period.days()
    )
    kinds: dict[str, list[int]] = defaultdict(list)
    for a in anomalies:
        kinds[a.kind].append(a.seq)
    order = [k for k in ANOMALY_ORDER if k in kinds] + sorted(
        k for k in kinds if k not in ANOMALY_ORDER
    )
    in_period = [s for s in facts.sessions if period.contains(s.started)]
    devices = _devices_of(facts, officer, period, now, in_period)
    finding_rows = tuple(e for e in facts.findings if e.sha256 in mine and period.contains(e.when))
    by_result: dict[str, list[int]] = {r: [] for r in RESULTS}
    for e in finding_rows:
        by_result.setdefault(e.what, []).append(e.seq)
    return Conduct(
        officer=officer,
        period=period,
        generated=now,
        not_docked_days=not_docked_days,
        recordings=tuple(recs),
        days=days,
        shifts=_shifts(facts, recs, period),
        anomalies=tuple(anomalies),
        anomaly_counts={k: Count.of(kinds[k]) for k in order},
        devices=tuple(devices),
        not_docked=tuple(
            row
            for device in devices
            for row in _not_docked(facts, device, period, now, not_docked_days)
        ),
        wipes=tuple(e for e in facts.wipes if e.sha256 in mine and period.contains(e.when)),
        purges=tuple(e for e in facts.purges if e.sha256 in mine and period.contains(e.when)),
        failed_sessions=tuple(s for s in in_period if s.officer == officer and s.failed > 0),
        scrub_failures=tuple(
            e for e in facts.scrub_failures if e.sha256 in mine and period.contains(e.when)
        ),
        findings=finding_rows,
        finding_counts={k: Count.of(v) for k, v in by_result.items()},
        access=_access(facts.access, mine, period),
    )


def _shifts(facts: Facts, recs: Sequence[Recording], period: Period) -> tuple[ShiftRow, ...]:
    """A shift is what one offload session of the device brought in: a recording
    belongs to the first session of its device after its ingest entry."""
    sessions: dict[str | None, list[SessionRow]] = defaultdict(list)
    for s in facts.sessions:
        sessions[s.device].append(s)
    groups: dict[int | None, list[Recording]] = defaultdict(list)
    found: dict[int, SessionRow] = {}
    for r in recs:
        of_device = sessions.get(r.device, []) if r.device else []
        i = bisect_right([s.seq for s in of_device], r.seq)
        if i < len(of_device):
            found[of_device[i].seq] = of_device[i]
            groups[of_device[i].seq].append(r)
        else:
            groups[None].append(r)
    rows = []
    for seq in sorted(groups, key=lambda s: (s is None, s or 0)):
        members = groups[seq]
        session = found.get(seq) if seq is not None else None
        rows.append(
            ShiftRow(
                session=seq,
                device=(session.device if session else None) or members[0].device or "-",
                started=_local(session.started, period.tz) if session else "-",
                recordings=Count.of(r.seq for r in members),
                bytes=sum(r.size for r in members),
                duration_ms=sum(r.duration_ms for r in members),
                first=_local(min(r.recorded for r in members), period.tz),
                last=_local(max(r.recorded for r in members), period.tz),
                failed=session.failed if session else 0,
                refused=session.refused if session else 0,
            )
        )
    return tuple(rows)


def _devices_of(
    facts: Facts, officer: str, period: Period, now: datetime, sessions: Sequence[SessionRow]
) -> list[str]:
    horizon = min(period.end, now)
    devices = {s.device for s in sessions if s.officer == officer and s.device}
    for serial, history in facts.assigns.items():
        before = [h for h in history if h[1] < horizon]
        if before and before[-1][2] == officer:
            devices.add(serial)
    return sorted(devices)


def _not_docked(
    facts: Facts, device: str, period: Period, now: datetime, limit_days: int
) -> list[NotDocked]:
    """Stretches longer than ``limit_days`` without a docking, within the period
    (up to now): from the last docking before it (or the period's start), between
    dockings, and to the period's end (or now)."""
    horizon = min(period.end, now)
    if horizon <= period.start:
        return []
    limit = timedelta(days=limit_days)
    docks = sorted((s.started, s.seq) for s in facts.sessions if s.device == device)
    before = [d for d in docks if d[0] < period.start]
    assign = [h[0] for h in facts.assigns.get(device, []) if h[1] < horizon]
    context = tuple(assign[-1:])
    points: list[tuple[datetime, int | None]] = [before[-1] if before else (period.start, None)]
    points += [d for d in docks if period.start <= d[0] < horizon]
    points.append((horizon, None))
    rows = []
    for (since, last), (until, nxt) in pairwise(points):
        if until - since > limit:
            seqs = tuple(sorted({*context, *(s for s in (last, nxt) if s is not None)}))
            rows.append(
                NotDocked(device, since, until, (until - since).days, seqs, open_end=nxt is None)
            )
    return rows


def _access(
    records: Sequence[AccessRecord], mine: Mapping[str, Recording], period: Period
) -> tuple[AccessRow, ...]:
    groups: dict[tuple[str, str, str], list[AccessRecord]] = defaultdict(list)
    for record in records:
        if not any(f in mine for f in record.files):
            continue
        when = datetime.fromisoformat(record.time.replace("Z", "+00:00"))
        if period.contains(when):
            groups[(record.user, record.role, record.action)].append(record)
    return tuple(
        AccessRow(
            user,
            role,
            action,
            Count.of(r.seq for r in rows),
            len({f for r in rows for f in r.files if f in mine}),
        )
        for (user, role, action), rows in sorted(groups.items())
    )


def _local(when: datetime, tz: timezone) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def conduct_rows(report: Conduct) -> list[tuple[object, ...]]:
    """The report as (officer, section, key, metric, value, entries, detail) rows."""
    o = report.officer
    rows: list[tuple[object, ...]] = []

    def add(section: str, key: str, metric: str, value: Count | int, detail: str = "") -> None:
        if isinstance(value, Count):
            rows.append((o, section, key, metric, value.value, value.refs, detail))
        else:
            rows.append((o, section, key, metric, value, "", detail))

    for metric, value in report.summary():
        add("summary", report.period.label, metric, value)
    for d in report.days:
        key = d.day.isoformat()
        add("day", key, "recordings", d.recordings)
        add("day", key, "bytes", d.bytes)
        add("day", key, "duration_ms", d.duration_ms)
        add("day", key, "gaps", d.gaps)
    for s in report.shifts:
        key = f"session {s.session}" if s.session is not None else "no session"
        detail = f"device {s.device}, docked {s.started}, recorded {s.first} to {s.last}"
        add("shift", key, "recordings", s.recordings, detail)
        add("shift", key, "bytes", s.bytes)
        add("shift", key, "duration_ms", s.duration_ms)
    for kind, count in report.anomaly_counts.items():
        add("anomaly", kind, "count", count)
    for n in report.not_docked:
        until = "now" if n.open_end else _local(n.until, report.period.tz)
        add(
            "not_docked",
            n.device,
            "days",
            Count(n.days, n.entries),
            f"not docked from {_local(n.since, report.period.tz)} to {until}",
        )
    for e in report.wipes:
        add("wipe", e.sha256, "wiped", Count(1, (e.seq,)), f"from recorder {e.what}")
    for e in report.purges:
        add("purge", e.sha256, "purged", Count(1, (e.seq,)), f"class {e.what}, {e.detail}")
    for fs in report.failed_sessions:
        add(
            "failed_verification",
            f"session {fs.seq}",
            "failed",
            Count(fs.failed, (fs.seq,)),
            f"device {fs.device}",
        )
    for e in report.scrub_failures:
        add("failed_verification", e.sha256, e.what, Count(1, (e.seq,)), e.detail)
    for result, count in report.finding_counts.items():
        add("spotcheck", result, "findings", count)
    for a in report.access:
        add("access", a.user, a.action, a.count, f"role {a.role}; {a.recordings} recording(s)")
    return rows


# --- HTML, chart and PDF ------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    day: str
    x: int
    recordings: Count
    gaps: Count
    rec_height: int
    gap_height: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    base: int
    bar_width: int
    top: int
    bars: tuple[Bar, ...]


def chart(days: Sequence[DayRow]) -> Chart:
    """Geometry of the recordings-and-gaps bar chart: one bar group per day."""
    step, bar, plot, base = 28, 10, 160, 180
    top = max([1, *(d.recordings.value for d in days), *(d.gaps.value for d in days)])
    bars = tuple(
        Bar(
            d.day.isoformat(),
            40 + i * step,
            d.recordings,
            d.gaps,
            round(plot * d.recordings.value / top),
            round(plot * d.gaps.value / top),
        )
        for i, d in enumerate(days)
    )
    return Chart(max(320, 60 + len(days) * step), base + 50, base, bar, top, bars)


def _environment() -> jinja2.Environment:
    # Autoescape on for every template: officer ids, case ids, notes and file
    # names come from outside and may hold markup.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["local"] = _local
    return env


def conduct_html(report: Conduct) -> str:
    return (
        _environment()
        .get_template("conduct.html")
        .render(
            r=report,
            tz=report.period.tz,
            chart=chart(report.days),
            summary=report.summary(),
            results=RESULTS,
        )
    )


def safe_name(text: str) -> str:
    """A file-name part for an id that may hold anything: unsafe characters become
    '_' and a short digest of the real id keeps two ids apart."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:48]
    if name != text or name.startswith("."):
        name += "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name


def write_conduct(report: Conduct, out: Path, *, pdf: bool = False) -> list[Path]:
    """Write the HTML and CSV (and PDF) of one report into ``out``; returns the paths."""
    make_private_dir(out)
    stem = f"conduct-{safe_name(report.officer)}-{report.period.first_day}-{report.period.last_day}"
    html_path, csv_path = out / f"{stem}.html", out / f"{stem}.csv"
    write_atomic(html_path, conduct_html(report).encode())
    write_atomic(csv_path, csv_text(CONDUCT_COLUMNS, conduct_rows(report)).encode())
    written = [html_path, csv_path]
    if pdf:
        pdf_path = out / f"{stem}.pdf"
        print_pdf(html_path, pdf_path)
        written.append(pdf_path)
    return written


def chromium() -> str:
    """The browser that prints PDFs. Raises EvidockError when there is none."""
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise EvidockError(
        "--pdf needs Chromium to print the report, and none was found (/usr/bin/chromium or "
        "chromium on PATH): install Debian's chromium package, or leave out --pdf and print the HTML"
    )


def print_pdf(html: Path, pdf: Path, *, timeout_s: float = 120) -> None:
    """Print ``html`` to ``pdf`` with headless Chromium (no network: the page has
    no external asset). Raises EvidockError if it fails or makes no PDF."""
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="evidock-pdf-") as profile:
        tmp = pdf.with_name(f".{pdf.name}.tmp")
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={tmp}",
            html.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EvidockError(f"{browser} could not print {html} to PDF: {e}") from e
        try:
            head = tmp.read_bytes()[:5] if tmp.exists() else b""
            if done.returncode != 0 or head != b"%PDF-":
                err = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
                raise EvidockError(
                    f"{browser} did not print {html} to PDF (exit {done.returncode}): "
                    f"{' / '.join(err) or 'no output'}"
                )
            tmp.replace(pdf)
        finally:
            tmp.unlink(missing_ok=True)


# --- statistics (Art. 3) ----------------------------------------------------------------


def stats(facts: Facts, period: Period, by: str) -> list[dict[str, Any]]:
    """Counts per ``by`` key over recordings recorded and anomalies dated in the period."""
    if by not in STAT_KEYS:
        raise InputError(f"--by {by!r}: one of {', '.join(STAT_KEYS)}")
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STAT_COLUMNS, 0))
    for rec in facts.recordings.values():
        if not period.contains(rec.recorded):
            continue
        strongest = facts.strongest_class(rec.sha256)
        for key in _rec_keys(facts, rec, by, period):
            row = table[key]
            row["recordings"] += 1
            row["bytes"] += rec.size
            row["duration_ms"] += rec.duration_ms
            row["tagged"] += strongest is not None
            row["evidence"] += strongest == "evidence"
            row["long_term"] += strongest == "long-term"
            row["uploads_receipted"] += rec.sha256 in facts.receipts
    for a in facts.anomalies:
        if period.contains(a.when):
            for key in _anomaly_keys(facts, a, by, period):
                table[key]["anomalies"] += 1
    return [{by: key, **table[key]} for key in sorted(table)]


def _rec_keys(facts: Facts, rec: Recording, by: str, period: Period) -> list[str]:
    if by == "officer":
        return [rec.officer or ""]
    if by == "device":
        return [rec.device or ""]
    if by == "day":
        return [period.day(rec.recorded).isoformat()]
    return facts.cases(rec) or [""]


def _anomaly_keys(facts: Facts, a: AnomalyRow, by: str, period: Period) -> list[str]:
    if by == "officer":
        return [a.officer or ""]
    if by == "device":
        return [a.device or ""]
    if by == "day":
        return [period.day(a.when).isoformat()]
    cases = {
        c for sha in a.files if sha in facts.recordings for c in facts.cases(facts.recordings[sha])
    }
    return sorted(cases) or [""]


def stats_csv(rows: Sequence[Mapping[str, Any]], by: str) -> str:
    return csv_text((by, *STAT_COLUMNS), ([r[by], *(r[c] for c in STAT_COLUMNS)] for r in rows))
