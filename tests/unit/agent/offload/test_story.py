"""The device's story (agent.offload.story): pure rules over plain values, property-tested."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.offload.story import (
    CHINA_STANDARD_TIME,
    KINDS,
    LABELS_ZH,
    Anomaly,
    ClipPattern,
    RecordingFact,
    StoryPolicy,
    analyse,
    number_gaps,
    parse_name,
    recorded_span,
)
from agent.records import anomalies
from hashing import canonical

POLICY = StoryPolicy()
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # 20:00 in Beijing
SHIFT = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)  # 08:00 in Beijing


def fact(
    name: str,
    *,
    start: datetime | None = None,
    minutes: float | None = 5,
    folder: str = "DCIM/100MEDIA",
    mtime: datetime | None = None,
    decodes: bool | None = True,
    problem: str | None = None,
) -> RecordingFact:
    """A recording; without an explicit mtime, its mtime is its end (start + duration)."""
    duration = None if minutes is None else round(minutes * 60_000)
    if mtime is None:
        mtime = (start or SHIFT) + timedelta(milliseconds=duration or 0)
    return RecordingFact(
        name=name,
        relpath=f"{folder}/{name}" if folder else name,
        mtime=mtime,
        duration_ms=duration,
        size=1000,
        decodes=decodes,
        problem=problem,
    )


def run(facts: list[RecordingFact], **kw: object) -> list[Anomaly]:
    args: dict[str, object] = {"now": NOW, "serial": "CAM0001", "officer": "100001"}
    args.update(kw)
    policy = args.pop("policy", POLICY)
    assert isinstance(policy, StoryPolicy)
    return analyse(facts, policy, **args)  # type: ignore[arg-type]


def of_kind(anomalies: list[Anomaly], kind: str) -> list[Anomaly]:
    return [a for a in anomalies if a.kind == kind]


def local(text: str) -> datetime:
    """A wall-clock time at the station (+08:00)."""
    return datetime.fromisoformat(text).replace(tzinfo=CHINA_STANDARD_TIME)


# --- names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pattern", "prefix", "number", "width", "start"),
    [
        (
            "DSJ0012345_20240301101502_0007.MP4",
            "serial_stamp_number",
            "DSJ0012345",
            7,
            4,
            "2024-03-01T10:15:02",
        ),
        (
            "DSJ01_100001_20240301101502_0007.mp4",
            "serial_stamp_number",
            "DSJ01_100001",
            7,
            4,
            "2024-03-01T10:15:02",
        ),
        ("20240301_101502_0007.MP4", "date_time_number", "", 7, 4, "2024-03-01T10:15:02"),
        ("CAM_20240301_101502_012.MP4", "date_time_number", "CAM", 12, 3, "2024-03-01T10:15:02"),
        ("REC_20240301_101502.WAV", "date_time", "REC", None, 0, "2024-03-01T10:15:02"),
        ("20240301101502.mp4", "date_time", "", None, 0, "2024-03-01T10:15:02"),
        ("FILE0001.MP4", "dcf", "FILE", 1, 4, None),
        ("IMG_0042.JPG", "dcf", "IMG_", 42, 4, None),
        ("MOVI0999.AVI", "dcf", "MOVI", 999, 4, None),
        ("DSC_00001.jpg", "dcf", "DSC_", 1, 5, None),
    ],
)
def test_vendor_names(
    name: str, pattern: str, prefix: str, number: int | None, width: int, start: str | None
) -> None:
    info = parse_name(name)
    assert info is not None
    assert (info.pattern, info.prefix, info.number, info.width) == (pattern, prefix, number, width)
    assert info.start == (local(start) if start else None)


def test_names_that_say_nothing() -> None:
    for name in ("notes.txt", "MISC", ".hidden", "clip.final.mp4", "FILE٠٠٠١.MP4"):
        assert parse_name(name) is None, name  # Arabic-Indic digits are not a counter


def test_an_impossible_time_in_a_name_falls_back_to_mtime() -> None:
    info = parse_name("DSJ1_20241345996099_0003.MP4")
    assert info is not None and info.number == 3 and info.start is None
    f = fact("DSJ1_20241345996099_0003.MP4", minutes=2, mtime=SHIFT)
    span = recorded_span(f)
    assert (span.source, span.start, span.end) == ("mtime", SHIFT - timedelta(minutes=2), SHIFT)


def test_name_times_are_read_in_the_stations_zone() -> None:
    f = fact("20240301_101502_0001.MP4", minutes=1, mtime=NOW)
    assert recorded_span(f).start == datetime(2024, 3, 1, 2, 15, 2, tzinfo=UTC)
    india = StoryPolicy(utc_offset=timezone(timedelta(hours=5, minutes=30)))
    assert recorded_span(f, india).start == datetime(2024, 3, 1, 4, 45, 2, tzinfo=UTC)


def test_mtime_is_the_end_of_a_recording() -> None:
    span = recorded_span(fact("FILE0001.MP4", minutes=10, mtime=SHIFT))
    assert (span.start, span.end, span.exact) == (SHIFT - timedelta(minutes=10), SHIFT, True)
    unknown = recorded_span(fact("FILE0001.MP4", minutes=None, mtime=SHIFT))
    assert (unknown.start, unknown.end, unknown.exact) == (SHIFT, SHIFT, False)


def test_patterns_are_a_parameter() -> None:
    policy = StoryPolicy(
        patterns=(ClipPattern.compile("vendor_x", r"V(?P<num>\d{5})_(?P<stamp>\d{14})"),)
    )
    info = parse_name("V00017_20240301101502.MP4", policy)
    assert info is not None and (info.pattern, info.number) == ("vendor_x", 17)
    assert parse_name("FILE0001.MP4", policy) is None


# --- the clip counter (property tests) -----------------------------------------------

TOP = 9999  # a 4-digit counter: 0001 ... 9999, then 0001 (or 0000) again


def counter(start: int, length: int) -> list[int]:
    """``length`` consecutive numbers from ``start`` on a counter that wraps 9999 -> 0001."""
    return [(start - 1 + i) % TOP + 1 for i in range(length)]


@given(
    start=st.integers(1, TOP),
    length=st.integers(2, 400),
    data=st.data(),
)
def test_removed_numbers_are_reported_exactly(start: int, length: int, data: st.DataObject) -> None:
    run_ = counter(start, length)
    inner = run_[1:-1]
    removed = (
        set(data.draw(st.lists(st.sampled_from(inner), unique=True, max_size=40)))
        if inner
        else set()
    )
    left = data.draw(st.permutations([n for n in run_ if n not in removed]))
    holes = number_gaps(left, 4)
    reported = [n for h in holes for lo, hi in h.missing for n in range(lo, hi + 1)]
    assert sorted(reported) == sorted(removed)
    assert len(reported) == len(set(reported))
    for h in holes:  # each hole is named by the numbers on either side
        assert h.after in left and h.before in left
        assert (h.after % TOP) + 1 == h.missing[0][0] or h.missing[0][0] == 1


@given(start=st.integers(TOP - 300, TOP), length=st.integers(302, 700))
def test_wrap_around_is_no_alarm(start: int, length: int) -> None:
    numbers = counter(start, length)
    assert 1 in numbers and TOP in numbers  # it did wrap
    assert number_gaps(numbers, 4) == []
    assert number_gaps([*numbers, 0], 4) == []  # a counter that uses 0000 too


@given(start=st.integers(1, TOP), length=st.integers(2, 200), copies=st.integers(1, 3))
def test_duplicates_and_order_do_not_matter(start: int, length: int, copies: int) -> None:
    numbers = counter(start, length) * copies
    assert number_gaps(numbers, 4) == []
    assert number_gaps(list(reversed(numbers)), 4) == []


def test_holes_across_the_wrap_are_in_counting_order() -> None:
    holes = number_gaps([9996, 9998, 1, 2, 5], 4)
    assert [(h.after, h.before, h.missing) for h in holes] == [
        (9996, 9998, ((9997, 9997),)),
        (9998, 1, ((9999, 9999),)),
        (2, 5, ((3, 4),)),
    ]


def test_three_digit_counter_wraps_at_999() -> None:
    assert number_gaps([998, 999, 1, 2], 3) == []
    assert number_gaps([997, 999, 1], 3)[0].missing == ((998, 998),)


def test_one_number_or_none_has_no_holes() -> None:
    assert number_gaps([], 4) == []
    assert number_gaps([7], 4) == []


# --- missing_clip_numbers ----------------------------------------------------------


def test_missing_clip_numbers_name_the_neighbours() -> None:
    facts = [
        fact(f"FILE{n:04d}.MP4", start=SHIFT + timedelta(minutes=6 * n))
        for n in (1, 2, 3, 7, 8, 10)
    ]
    [a] = of_kind(run(facts), anomalies.MISSING_CLIP_NUMBERS)
    body = a.as_body()
    assert body["missing"] == [[4, 6], [9, 9]]
    assert body["missing_count"] == 4
    assert body["sequence"] == "DCIM/100MEDIA/FILE####"
    assert a.files == tuple(f"DCIM/100MEDIA/FILE{n:04d}.MP4" for n in (3, 7, 8, 10))
    assert (
        "0004-0006 (between DCIM/100MEDIA/FILE0003.MP4 and DCIM/100MEDIA/FILE0007.MP4)" in a.detail
    )
    assert body["device"] == "CAM0001" and body["officer"] == "100001"


def test_counters_are_per_folder_and_prefix() -> None:
    facts = [
        fact("IMG_0001.JPG"),
        fact("IMG_0002.JPG"),
        fact("MOVI0005.AVI"),
        fact("MOVI0006.AVI"),
        # a camera with a folder per day restarts its counter in each
        fact("FILE0001.MP4", folder="2024-03-01"),
        fact("FILE0002.MP4", folder="2024-03-01"),
        fact("FILE0001.MP4", folder="2024-03-02"),
        fact("FILE0003.MP4", folder="2024-03-02"),
    ]
    [a] = of_kind(run(facts), anomalies.MISSING_CLIP_NUMBERS)
    assert a.as_body()["sequence"] == "2024-03-02/FILE####"
    assert a.as_body()["missing"] == [[2, 2]]


def test_serial_stamped_names_count_per_serial() -> None:
    facts = [
        fact("CAM0001_20240301080000_0011.MP4"),
        fact("CAM0001_20240301081000_0013.MP4"),
        fact("CAM0002_20240301080000_0001.MP4"),
        fact("CAM0002_20240301081000_0002.MP4"),
    ]
    [a] = of_kind(run(facts), anomalies.MISSING_CLIP_NUMBERS)
    assert a.as_body()["missing"] == [[12, 12]]
    assert a.as_body()["sequence"] == "DCIM/100MEDIA/CAM0001####"


def test_a_long_list_of_holes_is_summarised_in_the_detail_only() -> None:
    facts = [fact(f"FILE{n:04d}.MP4") for n in range(1, 40, 2)]
    [a] = of_kind(run(facts), anomalies.MISSING_CLIP_NUMBERS)
    assert a.as_body()["missing_count"] == 19
    assert len(a.as_body()["missing"]) == 19
    assert "and 14 more hole(s)" in a.detail


# --- time gaps -----------------------------------------------------------------------


def test_a_hole_inside_a_shift_is_a_time_gap() -> None:
    facts = [
        fact("20240301_080000_0001.MP4", minutes=10),
        fact("20240301_081000_0002.MP4", minutes=10),  # back to back: no hole
        fact("20240301_090500_0003.MP4", minutes=5),  # 45 min after 08:20
        fact("20240301_091500_0004.MP4", minutes=5),  # 5 min: under the threshold
        fact("20240301_180000_0005.MP4", minutes=5),  # next shift (8 h 40 min later)
    ]
    [gap] = of_kind(run(facts), anomalies.TIME_GAP)
    body = gap.as_body()
    assert body["gap_s"] == 45 * 60
    assert (body["gap_from"], body["gap_to"]) == ("2024-03-01T00:20:00Z", "2024-03-01T01:05:00Z")
    assert body["approximate"] is False
    assert gap.files == (
        "DCIM/100MEDIA/20240301_081000_0002.MP4",
        "DCIM/100MEDIA/20240301_090500_0003.MP4",
    )
    assert "no recording for 45 min" in gap.detail
    assert "(ends 2024-03-01 08:20:00 +08:00)" in gap.detail


def test_threshold_and_shift_break_are_exclusive_bounds() -> None:
    policy = StoryPolicy(gap_minutes=10, shift_break_hours=4)
    facts = [
        fact("20240301_080000.MP4", minutes=0),
        fact("20240301_081000.MP4", minutes=0),  # exactly 10 min: not over the threshold
        fact("20240301_082001.MP4", minutes=0),  # 10 min 1 s: a gap
        fact("20240301_122001.MP4", minutes=0),  # exactly 4 h: a shift break
    ]
    gaps = of_kind(run(facts, policy=policy), anomalies.TIME_GAP)
    assert [g.as_body()["gap_s"] for g in gaps] == [601]


@settings(max_examples=60)
@given(
    holes=st.lists(st.integers(0, 6 * 3600), min_size=1, max_size=12),
    lengths=st.data(),
    gap_minutes=st.integers(1, 60),
)
def test_time_gaps_are_exactly_the_holes_between_threshold_and_break(
    holes: list[int], lengths: st.DataObject, gap_minutes: int
) -> None:
    policy = StoryPolicy(gap_minutes=gap_minutes, shift_break_hours=4)
    facts, t = [], SHIFT
    for i, hole in enumerate([0, *holes]):
        t += timedelta(seconds=hole)
        seconds = lengths.draw(st.integers(1, 1800))
        # times from mtime (the end), so start = mtime - duration
        facts.append(
            RecordingFact(
                name=f"FILE{i + 1:04d}.MP4",
                relpath=f"FILE{i + 1:04d}.MP4",
                mtime=t + timedelta(seconds=seconds),
                duration_ms=seconds * 1000,
                size=1,
            )
        )
        t += timedelta(seconds=seconds)
    expected = [h for h in holes if gap_minutes * 60 < h < 4 * 3600]
    gaps = of_kind(analyse(facts, policy, now=NOW, serial="C", officer="O"), anomalies.TIME_GAP)
    assert [g.as_body()["gap_s"] for g in gaps] == expected


def test_overlapping_recordings_leave_no_false_hole() -> None:
    facts = [
        fact("20240301_080000.MP4", minutes=60),  # a long one ...
        fact("20240301_081000.WAV", minutes=5),  # ... with a short audio clip inside it
        fact("20240301_090500.MP4", minutes=5),  # 5 min after the long one ends
    ]
    assert of_kind(run(facts), anomalies.TIME_GAP) == []


def test_photos_do_not_fill_a_hole_but_are_named() -> None:
    facts = [
        fact("20240301_080000_0001.MP4", minutes=5),
        fact("20240301_082000_0002.JPG", minutes=None),
        fact("20240301_090000_0003.MP4", minutes=5),
    ]
    [gap] = of_kind(run(facts), anomalies.TIME_GAP)
    assert gap.as_body()["gap_s"] == 55 * 60
    assert gap.files[-1] == "DCIM/100MEDIA/20240301_082000_0002.JPG"
    assert "1 photo(s) taken in between" in gap.detail


def test_unknown_duration_makes_a_gap_approximate() -> None:
    facts = [fact("20240301_080000.MP4", minutes=None), fact("20240301_090000.MP4", minutes=5)]
    [gap] = of_kind(run(facts), anomalies.TIME_GAP)
    assert gap.as_body()["approximate"] is True
    assert "approximate" in gap.detail


# --- clocks ----------------------------------------------------------------------------


def test_clock_offset_beyond_tolerance() -> None:
    assert of_kind(run([], clock_offset_ms=60_000), anomalies.CLOCK_OFFSET) == []
    assert of_kind(run([], clock_offset_ms=None), anomalies.CLOCK_OFFSET) == []
    [ahead] = of_kind(run([], clock_offset_ms=192_500), anomalies.CLOCK_OFFSET)
    assert ahead.as_body()["offset_ms"] == 192_500 and ahead.as_body()["tolerance_s"] == 60
    assert "3 min 12 s ahead of the dock's" in ahead.detail
    [behind] = of_kind(run([], clock_offset_ms=-2 * 86_400_000), anomalies.CLOCK_OFFSET)
    assert "2 d behind" in behind.detail


def test_future_dated_corrects_by_the_known_offset() -> None:
    # Beijing 20:30, half an hour after the dock's now
    late = fact("20240301_202500_0001.MP4", minutes=5)
    [future] = of_kind(run([late], clock_offset_ms=None), anomalies.FUTURE_DATED)
    assert future.files == (late.relpath,)
    assert future.as_body()["latest"] == "2024-03-01T12:30:00Z"
    assert future.as_body()["offset_ms"] is None
    # The device is known to run an hour fast: the clip was made at 19:30 dock time.
    assert of_kind(run([late], clock_offset_ms=3_600_000), anomalies.FUTURE_DATED) == []
    # Within the tolerance is not the future.
    soon = fact("20240301_195900_0002.MP4", minutes=1.5)
    assert of_kind(run([soon]), anomalies.FUTURE_DATED) == []


# --- who ----------------------------------------------------------------------------------


def test_unassigned_device() -> None:
    facts = [fact("FILE0001.MP4"), fact("FILE0002.MP4")]
    assert of_kind(run(facts), anomalies.UNASSIGNED_DEVICE) == []
    [a] = of_kind(run(facts, unassigned=True, officer="100001"), anomalies.UNASSIGNED_DEVICE)
    assert a.as_body()["registered"] is False and a.as_body()["recordings"] == 2
    assert len(a.files) == 2
    assert "names officer 100001" in a.detail
    [b] = of_kind(run(facts, officer=None), anomalies.UNASSIGNED_DEVICE)
    assert b.as_body()["registered"] is True and b.as_body()["officer"] is None


def test_overdue_device() -> None:
    assert of_kind(run([], last_docked=NOW - timedelta(days=2)), anomalies.OVERDUE_DEVICE) == []
    [a] = of_kind(run([], last_docked=NOW - timedelta(days=5, hours=3)), anomalies.OVERDUE_DEVICE)
    assert a.as_body()["away_s"] == (5 * 24 + 3) * 3600
    assert "5 d 3 h ago" in a.detail


# --- files --------------------------------------------------------------------------------


def test_undecodable_and_refused() -> None:
    facts = [
        fact("FILE0001.MP4", decodes=False, problem="decoding stops after frame 26 of the 75"),
        fact("FILE0002.MP4", decodes=None),  # not checked: no alarm
        fact("FILE0003.MP4"),
    ]
    refused = [
        ("DCIM/link", "is a symbolic link; not followed"),
        ("DCIM/fifo", "is a FIFO, not a recording"),
        ("x/l2", "is a symbolic link; not followed"),
    ]
    out = run(facts, refused=refused)
    [bad] = of_kind(out, anomalies.UNDECODABLE)
    assert bad.files == ("DCIM/100MEDIA/FILE0001.MP4",)
    assert bad.as_body()["problem"] == "decoding stops after frame 26 of the 75"
    assert "frame 26" in bad.detail
    by_reason = {a.as_body()["reason"]: a.files for a in of_kind(out, anomalies.REFUSED_FILE)}
    assert by_reason == {
        "is a FIFO, not a recording": ("DCIM/fifo",),
        "is a symbolic link; not followed": ("DCIM/link", "x/l2"),
    }


def test_kinds_come_in_a_fixed_order_and_all_have_labels() -> None:
    facts = [
        fact("FILE0001.MP4", start=SHIFT, decodes=False),
        fact("FILE0003.MP4", start=SHIFT + timedelta(hours=1)),
        fact("FILE0004.MP4", start=NOW + timedelta(days=1)),
    ]
    out = run(
        facts,
        officer=None,
        unassigned=True,
        clock_offset_ms=-600_000,
        refused=[("a", "b")],
        last_docked=NOW - timedelta(days=30),
    )
    assert [a.kind for a in out] == list(KINDS)
    assert set(LABELS_ZH) == set(KINDS)
    for term in ("缺失", "时间异常", "未绑定设备"):  # glossary.md, "anomaly"
        assert any(label.startswith(term) for label in LABELS_ZH.values())
    for a in out:
        assert a.label_zh
        canonical.dumps(a.as_body())


def test_key_ignores_wording_but_not_files() -> None:
    a = Anomaly("undecodable", "one wording", ("x.MP4",), "CAM", "100001", (("size", 3),))
    b = Anomaly("undecodable", "another wording", ("x.MP4",), "CAM", "100002", (("size", 3),))
    c = Anomaly("undecodable", "one wording", ("y.MP4",), "CAM", "100001", (("size", 3),))
    assert a.key == b.key != c.key


def test_naive_times_are_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run([], now=datetime(2024, 3, 1, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        run([fact("FILE0001.MP4", mtime=datetime(2024, 3, 1))])


# --- hostile input -----------------------------------------------------------------------

names = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[A-Z_]{1,8}\d{3,6}\.(MP4|JPG|WAV)", fullmatch=True),
    st.from_regex(r"[A-Z0-9]{1,10}_\d{14}_\d{4}\.MP4", fullmatch=True),
    st.builds(lambda b: b.decode("utf-8", "surrogateescape"), st.binary(max_size=30)),
)
aware = st.datetimes(timezones=st.sampled_from([UTC, CHINA_STANDARD_TIME]))


@settings(max_examples=150)
@given(
    facts=st.lists(
        st.builds(
            RecordingFact,
            name=names,
            relpath=names,
            mtime=aware,
            duration_ms=st.one_of(st.none(), st.integers(-(2**63), 2**63)),
            size=st.integers(0, 2**63),
            decodes=st.one_of(st.none(), st.booleans()),
            problem=st.one_of(st.none(), st.text(max_size=20)),
        ),
        max_size=15,
    ),
    now=aware,
    offset=st.one_of(st.none(), st.integers(-(2**63), 2**63)),
    last=st.one_of(st.none(), aware),
    refused=st.lists(st.tuples(names, st.text(max_size=20)), max_size=3),
)
def test_hostile_values_never_raise_and_bodies_are_canonical(
    facts: list[RecordingFact],
    now: datetime,
    offset: int | None,
    last: datetime | None,
    refused: list[tuple[str, str]],
) -> None:
    assume(all(f.size >= 0 for f in facts))
    out = analyse(
        facts,
        POLICY,
        now=now,
        serial="CAM\udcff\x00",
        officer=None,
        clock_offset_ms=offset,
        unassigned=True,
        refused=refused,
        last_docked=last,
    )
    for a in out:
        assert a.kind in KINDS
        canonical.dumps(a.as_body())  # raises on floats, big integers, lone surrogates
