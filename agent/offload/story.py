"""The device's story (design.md step 5): what a recorder's files say about its use.

Regulation Art. 20 (1) forbids not recording an enforcement act and (2) deleting
footage; (5) asks that a recorder reporting errors or lost media be flagged.
A dock cannot see an act that was never filmed, but it can see the traces:
clip numbers that skip, holes in a shift's timeline, a clock that lies, files
dated in the future, recordings nobody is bound to, files that do not decode.
Each becomes an ``anomaly`` ledger entry for a supervisor to look at.

Everything here is pure: plain values in, ``Anomaly`` values out, no clock, no
files (style.md 3). The caller (agent.offload.session) supplies the dock's ``now``.

Vocabulary (``Anomaly.kind``; ``LABELS_ZH`` holds the kiosk labels, led by the
glossary's terms 缺失 / 时间异常 / 未绑定设备):

=======================  ============================================================
``unassigned_device``     recordings with no officer bound (device not registered)
``overdue_device``        the recorder had not docked for longer than allowed
``clock_offset``          device clock differs from the dock's beyond the tolerance
``future_dated``          recordings dated after the dock's now (clock offset applied)
``missing_clip_numbers``  the recorder's file counter skips numbers (Art. 20 (2))
``time_gap``              a hole inside a shift with no video or audio (Art. 20 (1))
``undecodable``           a recording does not decode to its end (Art. 20 (5))
``refused_file``          something on the recorder was not copied (link, FIFO, ...)
=======================  ============================================================

Times. Camera file names carry local wall-clock time with no zone; they are read
in ``StoryPolicy.utc_offset`` (default +08:00, China Standard Time, which has no
daylight saving). A time from the name is the recording's start. Without one,
the file's modification time is used, and it is taken as the recording's *end*
(a camera writes the file until it stops recording), so start = mtime - duration.
Gaps are reported in the device's own clock, because that is the clock burnt
into the footage a supervisor will scrub through; only ``future_dated`` corrects
by the device's measured clock offset, since it compares with the dock's clock.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from agent.offload._kinds import AUDIO, PHOTO, VIDEO, kind_of
from agent.records.anomalies import (
    CLOCK_OFFSET,
    FUTURE_DATED,
    MISSING_CLIP_NUMBERS,
    OVERDUE_DEVICE,
    REFUSED_FILE,
    TIME_GAP,
    UNASSIGNED_DEVICE,
    UNDECODABLE,
    key_of,
)

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


# zh-CN kiosk labels. The part before "：" is the glossary's term (glossary.md,
# "anomaly"); 无法解码, 未采集文件 and 超期未采集 are not in the glossary yet.
LABELS_ZH: Mapping[str, str] = {
    UNASSIGNED_DEVICE: "未绑定设备",
    OVERDUE_DEVICE: "超期未采集",
    CLOCK_OFFSET: "时间异常：设备时钟偏差",
    FUTURE_DATED: "时间异常：文件时间晚于当前时间",
    MISSING_CLIP_NUMBERS: "缺失：文件编号不连续",
    TIME_GAP: "缺失：录像时间空档",
    UNDECODABLE: "无法解码：文件不完整或损坏",
    REFUSED_FILE: "未采集文件",
}
KINDS = tuple(LABELS_ZH)  # in the order analyse() reports them

_MAX_INT = 2**53 - 1  # canonical JSON's exact integer range (hashing.canonical)
# Offsets and durations beyond this are not clocks or clips but garbage; they
# are reported, never used in date arithmetic (which would overflow).
_MAX_SANE = timedelta(days=366 * 100)
_LISTED = 5  # holes spelt out in one detail text; the body lists them all


@dataclass(frozen=True)
class ClipPattern:
    """A vendor's file-name scheme, matched (fullmatch) against the name without extension.

    Named groups, all optional: ``num`` (the clip counter), ``prefix`` (what the
    counter counts within; absent = ''), and the local recording start as
    ``stamp`` (YYYYMMDDhhmmss) or ``date`` (YYYYMMDD) plus ``time`` (hhmmss).
    """

    name: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, name: str, pattern: str) -> ClipPattern:
        # re.ASCII: \d must not match other scripts' digits in a hostile name.
        return cls(name, re.compile(pattern, re.ASCII))


DEFAULT_PATTERNS: tuple[ClipPattern, ...] = (
    # <SERIAL>[_<OFFICER>]_<YYYYMMDDhhmmss>_<NNNN>   e.g. DSJ0012345_20240301101502_0007
    ClipPattern.compile(
        "serial_stamp_number", r"(?:(?P<prefix>.+?)_)?(?P<stamp>\d{14})_(?P<num>\d{3,6})"
    ),
    # [<PREFIX>_]<YYYYMMDD>_<hhmmss>_<NNNN>           e.g. 20240301_101502_0007
    ClipPattern.compile(
        "date_time_number", r"(?:(?P<prefix>.+?)_)?(?P<date>\d{8})_(?P<time>\d{6})_(?P<num>\d{3,6})"
    ),
    # [<PREFIX>_]<YYYYMMDD>[_]<hhmmss>                 e.g. REC_20240301_101502 (a time, no counter)
    ClipPattern.compile("date_time", r"(?:(?P<prefix>.+?)_)?(?P<date>\d{8})_?(?P<time>\d{6})"),
    # DCF-style <PREFIX><NNNN>                        e.g. FILE0007, IMG_0007, MOVI0007, DSC_0007
    ClipPattern.compile("dcf", r"(?P<prefix>[A-Za-z][A-Za-z_-]{0,7})(?P<num>\d{3,6})"),
)


@dataclass(frozen=True)
class StoryPolicy:
    """The thresholds a station applies ([offload] in the config file)."""

    gap_minutes: int = 10  # a hole longer than this inside a shift is a time_gap
    shift_break_hours: int = 4  # a hole this long or longer separates two shifts
    clock_tolerance_s: int = 60  # |device clock - dock clock| allowed
    utc_offset: tzinfo = CHINA_STANDARD_TIME  # the zone of times in file names
    overdue_days: int = 3  # a recorder away longer than this is overdue_device
    patterns: tuple[ClipPattern, ...] = DEFAULT_PATTERNS  # tried in order; first match wins


DEFAULT_POLICY = StoryPolicy()


@dataclass(frozen=True)
class RecordingFact:
    """One recording on the recorder, as the story needs it.

    ``mtime`` is the file's modification time as an aware datetime; ``relpath``
    is the path as shown and recorded (what the ``files`` of an anomaly name).
    ``decodes`` and ``problem`` come from the probe (None: not checked);
    ``kind`` too, else it is taken from the name's extension.
    """

    name: str
    relpath: str
    mtime: datetime
    duration_ms: int | None
    size: int
    decodes: bool | None = None
    problem: str | None = None
    kind: str | None = None

    @property
    def media_kind(self) -> str:
        return self.kind or kind_of(self.name)


@dataclass(frozen=True)
class NameInfo:
    """What a file name says, under the first pattern that matched."""

    pattern: str
    prefix: str
    number: int | None
    width: int  # digits of the counter: it wraps after 10**width - 1
    start: datetime | None  # aware, in the policy's zone


@dataclass(frozen=True)
class Span:
    """When a recording ran, in the device's clock."""

    start: datetime
    end: datetime
    source: str  # "name" or "mtime"
    exact: bool  # False when the duration is unknown and the span is only a point


@dataclass(frozen=True)
class NumberGap:
    """A hole in a counter: numbers missing after ``after`` and before ``before``."""

    after: int
    before: int
    missing: tuple[tuple[int, int], ...]  # inclusive ranges, in counting order

    @property
    def count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.missing)


@dataclass(frozen=True)
class Anomaly:
    """One finding, ready to become an ``anomaly`` ledger entry (``as_body``)."""

    kind: str
    detail: str  # English, for supervisors and logs; the kiosk shows label_zh
    files: tuple[str, ...]
    device: str
    officer: str | None
    data: tuple[tuple[str, Any], ...] = ()  # kind-specific body fields

    @property
    def label_zh(self) -> str:
        return LABELS_ZH[self.kind]

    @property
    def key(self) -> str:
        """Identifies the finding (kind, device, files, data) apart from its wording.

        The story is told over everything on the recorder at each docking, so a
        recorder docked again before its files are wiped repeats file-based
        findings; a caller can skip one whose key it has recorded already.
        """
        return key_of(self.as_body())

    def as_body(self) -> dict[str, Any]:
        """The entry body: strings, integers, booleans, null, arrays, objects only."""
        body: dict[str, Any] = {key: _jsonable(value) for key, value in self.data}
        body.update(
            kind=self.kind,
            detail=self.detail,
            device=_clean(self.device),
            officer=None if self.officer is None else _clean(self.officer),
            files=[_clean(f) for f in self.files],
        )
        return body


# --- reading names and times -------------------------------------------------


def parse_name(name: str, policy: StoryPolicy = DEFAULT_POLICY) -> NameInfo | None:
    """Counter and start time from a file name, by the first pattern that matches."""
    stem = name.rsplit("/", 1)[-1]
    if "." in stem.lstrip("."):
        stem = stem.rsplit(".", 1)[0]
    for pattern in policy.patterns:
        m = pattern.regex.fullmatch(stem)
        if m is None:
            continue
        groups = m.groupdict()
        num = groups.get("num")
        stamp = groups.get("stamp") or (
            (groups["date"] + groups["time"]) if groups.get("date") and groups.get("time") else None
        )
        return NameInfo(
            pattern=pattern.name,
            prefix=groups.get("prefix") or "",
            number=int(num) if num else None,
            width=len(num) if num else 0,
            start=_local_time(stamp, policy.utc_offset) if stamp else None,
        )
    return None


def _local_time(digits: str, zone: tzinfo) -> datetime | None:
    try:
        return datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            int(digits[12:14]),
            tzinfo=zone,
        )
    except (ValueError, OverflowError):
        return None  # 20241345... is not a time; the file's mtime is used instead


def recorded_span(fact: RecordingFact, policy: StoryPolicy = DEFAULT_POLICY) -> Span:
    """When the recording ran, in the device's clock (see the module docstring)."""
    _aware(fact.mtime, "mtime")
    info = parse_name(fact.name, policy)
    length = _duration(fact.duration_ms)
    exact = length is not None or fact.media_kind == PHOTO
    length = length or timedelta(0)
    try:
        if info is not None and info.start is not None:
            return Span(info.start, info.start + length, "name", exact)
        return Span(fact.mtime - length, fact.mtime, "mtime", exact)
    except OverflowError:  # a date at the edge of the calendar
        when = info.start if info is not None and info.start is not None else fact.mtime
        return Span(when, when, "name" if when is not fact.mtime else "mtime", False)


def recorded_start(fact: RecordingFact, policy: StoryPolicy = DEFAULT_POLICY) -> datetime:
    """When the recording started, as the device's clock says: for ``recorded_at``."""
    return recorded_span(fact, policy).start


def _duration(ms: int | None) -> timedelta | None:
    if ms is None or isinstance(ms, bool) or ms < 0:
        return None
    length = timedelta(milliseconds=min(ms, _MAX_INT))
    return length if length <= _MAX_SANE else None


# --- the clip counter ----------------------------------------------------------


def number_gaps(numbers: Iterable[int], width: int) -> list[NumberGap]:
    """Holes in a recorder's clip counter of ``width`` digits.

    The counter runs up to 10**width - 1 and wraps (9999 -> 0001 or 0000).
    The numbers present are placed on that circle; the largest hole between
    neighbours is the counter's unused stretch (before the oldest and after the
    newest file) and is not reported, so a wrap-around raises no alarm and the
    result does not depend on the file times, which a faulty clock can scramble.
    Every other hole is reported. Number 0 is never reported missing: counters
    start at 0 or at 1 depending on the vendor.
    """
    modulus = 10 ** max(width, 1)
    present = sorted({n for n in numbers if 0 <= n < modulus})
    if len(present) < 2:
        return []
    holes: list[NumberGap] = []
    for i, after in enumerate(present):
        before = present[(i + 1) % len(present)]
        holes.append(NumberGap(after, before, _between(after, before, modulus)))
    # The unused stretch: the largest hole; on a tie, the one that wraps, so a
    # counter that never wrapped reads in its natural order.
    last = len(holes) - 1
    unused = max(range(len(holes)), key=lambda j: (holes[j].count, j == last))
    ordered = holes[unused + 1 :] + holes[:unused]
    return [hole for hole in ordered if hole.missing]


def _between(after: int, before: int, modulus: int) -> tuple[tuple[int, int], ...]:
    if before > after:
        spans = [(after + 1, before - 1)]
    else:  # the hole wraps past the counter's top
        spans = [(after + 1, modulus - 1), (1, before - 1)]
    return tuple((lo, hi) for lo, hi in spans if lo <= hi)


# --- the story -----------------------------------------------------------------


def analyse(
    facts: Sequence[RecordingFact],
    policy: StoryPolicy,
    *,
    now: datetime,
    serial: str,
    officer: str | None,
    clock_offset_ms: int | None = None,
    unassigned: bool = False,
    refused: Sequence[tuple[str, str]] = (),
    last_docked: datetime | None = None,
) -> list[Anomaly]:
    """Every anomaly in one recorder session, in a fixed order.

    ``facts``: every recording on the recorder (already ingested ones too).
    ``now``: the dock's clock. ``clock_offset_ms``: device clock minus dock
    clock, if the driver could read it. ``unassigned``: the device is not in
    the registry. ``refused``: (path, reason) of what was not copied.
    ``last_docked``: the end of this recorder's previous session, if any.
    Raises ValueError only for a naive ``now``, ``mtime`` or ``last_docked``
    (a caller's bug); hostile names, sizes and durations never raise.
    """
    _aware(now, "now")
    ctx = _Context(serial, officer)
    spans = {id(f): recorded_span(f, policy) for f in facts}
    out: list[Anomaly] = []
    out += _unassigned(ctx, facts, unassigned)
    out += _overdue(ctx, policy, now, last_docked)
    out += _clock(ctx, policy, clock_offset_ms)
    out += _future(ctx, policy, facts, spans, now, clock_offset_ms)
    out += _missing_numbers(ctx, policy, facts)
    out += _time_gaps(ctx, policy, facts, spans)
    out += _undecodable(ctx, facts)
    out += _refused(ctx, refused)
    return out


@dataclass(frozen=True)
class _Context:
    serial: str
    officer: str | None

    def anomaly(self, kind: str, detail: str, files: Iterable[str], **data: Any) -> Anomaly:
        return Anomaly(
            kind,
            _clean(detail),
            tuple(dict.fromkeys(files)),
            self.serial,
            self.officer,
            tuple(data.items()),
        )


def _unassigned(ctx: _Context, facts: Sequence[RecordingFact], unassigned: bool) -> list[Anomaly]:
    if not unassigned and ctx.officer is not None:
        return []
    n = len(facts)
    if unassigned:
        detail = f"recorder {ctx.serial} is not registered to an officer; its {n} recording(s) are kept without a verified officer"
        if ctx.officer is not None:
            detail += f" (the recorder itself names officer {ctx.officer})"
        detail += f"; bind it with `evidock device assign {ctx.serial} --officer ID` and tag the recordings"
    else:
        detail = f"recorder {ctx.serial} is registered but has no officer bound; its {n} recording(s) are kept without an officer"
    return [
        ctx.anomaly(
            UNASSIGNED_DEVICE,
            detail,
            (f.relpath for f in facts),
            registered=not unassigned,
            recordings=n,
        )
    ]


def _overdue(
    ctx: _Context, policy: StoryPolicy, now: datetime, last_docked: datetime | None
) -> list[Anomaly]:
    if last_docked is None:
        return []
    _aware(last_docked, "last_docked")
    away = now - last_docked
    if away <= timedelta(days=policy.overdue_days):
        return []
    detail = (
        f"recorder {ctx.serial} was last docked {_human(away)} ago ({_local(last_docked, policy)}), "
        f"more than the {policy.overdue_days} day(s) allowed; recordings made and deleted on it "
        "in that time leave no trace at the dock"
    )
    return [
        ctx.anomaly(
            OVERDUE_DEVICE,
            detail,
            (),
            last_docked=_utc(last_docked),
            away_s=_clamp(int(away.total_seconds())),
        )
    ]


def _clock(ctx: _Context, policy: StoryPolicy, offset_ms: int | None) -> list[Anomaly]:
    if offset_ms is None or abs(offset_ms) <= policy.clock_tolerance_s * 1000:
        return []
    way = "ahead of" if offset_ms > 0 else "behind"
    detail = (
        f"recorder {ctx.serial}'s clock is {_human(timedelta(milliseconds=min(abs(offset_ms), _MAX_INT)))} "
        f"{way} the dock's (tolerance {policy.clock_tolerance_s} s); the times it gives its "
        "recordings are off by as much"
    )
    return [
        ctx.anomaly(
            CLOCK_OFFSET,
            detail,
            (),
            offset_ms=_clamp(offset_ms),
            tolerance_s=policy.clock_tolerance_s,
        )
    ]


def _future(
    ctx: _Context,
    policy: StoryPolicy,
    facts: Sequence[RecordingFact],
    spans: Mapping[int, Span],
    now: datetime,
    offset_ms: int | None,
) -> list[Anomaly]:
    offset = timedelta(0)
    if offset_ms is not None and abs(offset_ms) <= _MAX_SANE.total_seconds() * 1000:
        offset = timedelta(milliseconds=offset_ms)
    try:
        limit = now + timedelta(seconds=policy.clock_tolerance_s)
    except OverflowError:
        limit = now
    late: list[tuple[datetime, RecordingFact]] = []
    for fact in facts:
        end = spans[id(fact)].end
        try:
            dock_time = end - offset  # device time -> dock time
        except OverflowError:
            dock_time = end
        if dock_time > limit:
            late.append((dock_time, fact))
    if not late:
        return []
    late.sort(key=lambda item: item[0])
    latest, last_fact = late[-1]
    corrected = (
        f"after correcting by the device's clock offset of {offset_ms} ms"
        if offset_ms is not None
        else "the device's clock offset is unknown"
    )
    detail = (
        f"{len(late)} recording(s) are dated after the dock's time ({corrected}); the latest, "
        f"{last_fact.relpath}, ends {_local(latest, policy)}, {_human(latest - now)} ahead: "
        "the recorder's clock was wrong when they were made"
    )
    return [
        ctx.anomaly(
            FUTURE_DATED,
            detail,
            (f.relpath for _, f in late),
            latest=_utc(latest),
            offset_ms=None if offset_ms is None else _clamp(offset_ms),
        )
    ]


def _missing_numbers(
    ctx: _Context, policy: StoryPolicy, facts: Sequence[RecordingFact]
) -> list[Anomaly]:
    # A counter is per folder and prefix: DCF cameras continue it across
    # folders (each folder's run is still unbroken), cameras with a folder per
    # day restart it, and both read right this way.
    sequences: dict[tuple[str, str], list[tuple[int, int, RecordingFact]]] = defaultdict(list)
    for fact in facts:
        info = parse_name(fact.name, policy)
        if info is None or info.number is None:
            continue
        folder = fact.relpath.rsplit("/", 1)[0] if "/" in fact.relpath else ""
        sequences[(folder, info.prefix)].append((info.number, info.width, fact))
    out = []
    for (folder, prefix), members in sorted(sequences.items()):
        width = max(w for _, w, _ in members)
        holes = number_gaps((n for n, _, _ in members), width)
        if not holes:
            continue
        by_number: dict[int, list[str]] = defaultdict(list)
        for n, _, fact in sorted(members, key=lambda m: (m[0], m[2].relpath)):
            by_number[n].append(fact.relpath)
        name = f"{folder}/{prefix}" if folder else prefix
        sequence = name + "#" * width
        count = sum(h.count for h in holes)
        parts = [
            f"{_ranges(h.missing, width)} (between {by_number[h.after][0]} and {by_number[h.before][0]})"
            for h in holes[:_LISTED]
        ]
        if len(holes) > _LISTED:
            parts.append(f"and {len(holes) - _LISTED} more hole(s)")
        detail = (
            f"clip numbers missing in {sequence}: {', '.join(parts)}; {count} file(s) the "
            "recorder numbered are not on it (deleted or lost before docking)"
        )
        files = [f for h in holes for f in by_number[h.after] + by_number[h.before]]
        out.append(
            ctx.anomaly(
                MISSING_CLIP_NUMBERS,
                detail,
                files,
                sequence=sequence,
                missing=[[lo, hi] for h in holes for lo, hi in h.missing],
                missing_count=count,
            )
        )
    return out


def _time_gaps(
    ctx: _Context, policy: StoryPolicy, facts: Sequence[RecordingFact], spans: Mapping[int, Span]
) -> list[Anomaly]:
    """Holes inside a shift with neither video nor audio running.

    Photos do not fill a hole (a photo is not a record of an act's whole
    process); one taken inside a hole is named, since it shows the officer was
    at work while nothing recorded.
    """
    threshold = timedelta(minutes=policy.gap_minutes)
    shift_break = timedelta(hours=policy.shift_break_hours)
    running = sorted(
        ((spans[id(f)], f) for f in facts if f.media_kind in (VIDEO, AUDIO)),
        key=lambda item: (item[0].start, item[0].end, item[1].relpath),
    )
    photos = sorted(
        ((spans[id(f)].start, f) for f in facts if f.media_kind == PHOTO),
        key=lambda item: (item[0], item[1].relpath),
    )
    out = []
    frontier: tuple[Span, RecordingFact] | None = None  # the recording that ends last so far
    for span, fact in running:
        if frontier is not None:
            last, last_fact = frontier
            hole = span.start - last.end
            if threshold < hole < shift_break:
                inside = [p for t, p in photos if last.end < t < span.start]
                approximate = not (last.exact and span.exact)
                detail = (
                    f"no recording for {_human(hole)} between {last_fact.relpath} "
                    f"(ends {_local(last.end, policy)}) and {fact.relpath} "
                    f"(starts {_local(span.start, policy)}), device clock"
                )
                if inside:
                    detail += f"; {len(inside)} photo(s) taken in between"
                if approximate:
                    detail += "; approximate: a recording's duration is unknown"
                out.append(
                    ctx.anomaly(
                        TIME_GAP,
                        detail,
                        [last_fact.relpath, fact.relpath, *(p.relpath for p in inside)],
                        gap_from=_utc(last.end),
                        gap_to=_utc(span.start),
                        gap_s=_clamp(int(hole.total_seconds())),
                        approximate=approximate,
                    )
                )
        if frontier is None or span.end > frontier[0].end:
            frontier = (span, fact)
    return out


def _undecodable(ctx: _Context, facts: Sequence[RecordingFact]) -> list[Anomaly]:
    out = []
    for fact in sorted(facts, key=lambda f: f.relpath):
        if fact.decodes is not False:
            continue
        why = fact.problem or "no reason given"
        detail = (
            f"{fact.relpath} ({fact.size} bytes) does not decode to its end: {why}; "
            "it is kept exactly as copied, check the recorder and its storage"
        )
        out.append(
            ctx.anomaly(
                UNDECODABLE, detail, [fact.relpath], problem=fact.problem, size=_clamp(fact.size)
            )
        )
    return out


def _refused(ctx: _Context, refused: Sequence[tuple[str, str]]) -> list[Anomaly]:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, reason in refused:
        by_reason[reason].append(path)
    out = []
    for reason, paths in sorted(by_reason.items()):
        shown = ", ".join(paths[:_LISTED]) + (
            f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
        )
        detail = f"{len(paths)} item(s) on the recorder were not copied: {shown}: {reason}"
        out.append(ctx.anomaly(REFUSED_FILE, detail, paths, reason=reason))
    return out


# --- wording and values ----------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    """Text safe for canonical JSON: lone surrogates (undecodable bytes in a name)
    become \\udcXX, control characters \\xNN."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _clamp(n: int) -> int:
    return max(-_MAX_INT, min(_MAX_INT, n))


def _aware(when: datetime, what: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {when!r}")


def _utc(when: datetime) -> str:
    """RFC 3339 UTC to the second, zero-padded even for years before 1000."""
    try:
        u = when.astimezone(UTC)
    except OverflowError:
        u = when.replace(tzinfo=UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def _local(when: datetime, policy: StoryPolicy) -> str:
    """The station's wall-clock time, as an officer reads it: 2024-03-01 10:15:02 +08:00."""
    try:
        t = when.astimezone(policy.utc_offset)
    except OverflowError:
        t = when
    offset = t.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d} "
        f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    )


def _human(span: timedelta) -> str:
    """A duration as a supervisor reads it: 47 min, 2 h 5 min, 3 d 4 h, 12 s."""
    s = abs(int(span.total_seconds()))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, seconds = divmod(s, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {seconds} s" if seconds and minutes < 10 else f"{minutes} min"
    return f"{seconds} s"


def _ranges(ranges: Iterable[tuple[int, int]], width: int) -> str:
    return ", ".join(
        f"{lo:0{width}d}" if lo == hi else f"{lo:0{width}d}-{hi:0{width}d}" for lo, hi in ranges
    )
