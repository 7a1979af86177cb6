"""The upload cap: schedule lookup against a minute-by-minute model, and the token
bucket's rate on a simulated clock (no real sleeping)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing.errors import ConfigError
from uploader.throttle import DAY_S, Bandwidth, Throttle, Window, parse_schedule

MIDNIGHT_UTC = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC: a wall clock at 00:00 with offset 0


@dataclass
class SimClock:
    """Monotonic and wall clocks that move only when someone sleeps."""

    now: float = 0.0
    wall0: float = MIDNIGHT_UTC
    slept: float = 0.0

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall0 + self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        self.slept += seconds


def throttle(bandwidth: Bandwidth, clock: SimClock, burst: int = 1 << 20) -> Throttle:
    return Throttle(bandwidth, burst=burst, clock=clock.clock, wall=clock.wall, sleep=clock.sleep)


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# -- schedule -------------------------------------------------------------------


def model_rate(windows: list[tuple[int, int, int]], default: int, minute: int) -> int | None:
    """The schedule by brute force: walk each window minute by minute, first one wins."""
    for start, end, rate in windows:
        m = start
        while m != end:
            if m == minute:
                return rate
            m = (m + 1) % 1440
    return default or None


window_specs = st.lists(
    st.tuples(st.integers(0, 1439), st.integers(0, 1439), st.integers(0, 10_000_000)).filter(
        lambda w: w[0] != w[1]
    ),
    max_size=4,
)


@settings(max_examples=300)
@given(
    specs=window_specs,
    default=st.integers(0, 5_000_000),
    offset=st.integers(-720, 840),
    second=st.integers(0, DAY_S - 1),
)
def test_schedule_lookup_matches_model(
    specs: list[tuple[int, int, int]], default: int, offset: int, second: int
) -> None:
    bw = Bandwidth(default, tuple(Window(hhmm(a), hhmm(b), r) for a, b, r in specs), offset)
    local_minute = second // 60
    wall = MIDNIGHT_UTC + second - offset * 60  # this wall time is `second` in local time
    assert bw.second_of_day(wall) == pytest.approx(second)
    assert bw.rate_at(wall) == model_rate(specs, default, local_minute)


@settings(max_examples=200)
@given(specs=window_specs.filter(bool), second=st.integers(0, DAY_S - 1))
def test_next_change_is_the_next_boundary(specs: list[tuple[int, int, int]], second: int) -> None:
    bw = Bandwidth(0, tuple(Window(hhmm(a), hhmm(b), r) for a, b, r in specs), 0)
    ahead = bw.next_change(MIDNIGHT_UTC + second)
    edges = {60 * m for a, b, _ in specs for m in (a, b)}
    assert 0 < ahead <= DAY_S
    assert (second + ahead) % DAY_S in edges
    # No boundary lies strictly in between.
    assert not any(0 < (e - second) % DAY_S < ahead for e in edges)


def test_window_crossing_midnight() -> None:
    bw = Bandwidth(5_000, (Window("22:00", "06:00", 1_000_000),), 480)
    # 23:30 and 05:59 local (UTC+8) are inside, 06:00 and 12:00 outside.
    at = {
        hm: MIDNIGHT_UTC + (int(hm[:2]) * 60 + int(hm[3:])) * 60 - 480 * 60
        for hm in ("23:30", "05:59", "06:00", "12:00", "22:00")
    }
    assert bw.rate_at(at["23:30"]) == 1_000_000
    assert bw.rate_at(at["05:59"]) == 1_000_000
    assert bw.rate_at(at["22:00"]) == 1_000_000
    assert bw.rate_at(at["06:00"]) == 5_000
    assert bw.rate_at(at["12:00"]) == 5_000


def test_no_cap_without_rate_or_schedule() -> None:
    assert Bandwidth().rate_at(MIDNIGHT_UTC) is None
    assert Bandwidth().next_change(MIDNIGHT_UTC) == float("inf")


def test_parse_schedule_reads_the_config_form() -> None:
    windows = parse_schedule(
        [
            {"from": "07:00", "to": "19:00", "bytes_per_s": 2_000_000},
            {"from": "23:00", "to": "01:30", "bytes_per_s": 0},
        ]
    )
    assert windows == (Window("07:00", "19:00", 2_000_000), Window("23:00", "01:30", 0))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"from": "7:00", "to": "19:00", "bytes_per_s": 1}, "'7:00' is not a time of day"),
        ({"from": "07:00", "to": "24:00", "bytes_per_s": 1}, "'24:00' is not a time of day"),
        ({"from": "07:00", "to": "07:00", "bytes_per_s": 1}, "is empty"),
        ({"from": "07:00", "to": "19:00", "bytes_per_s": -1}, "must not be negative"),
        ({"from": "07:00", "to": "19:00", "bytes_per_s": "fast"}, "must be an integer"),
        ({"from": "07:00", "to": "19:00", "bytes_per_s": True}, "must be an integer"),
        ({"from": "07:00", "to": "19:00"}, "missing bytes_per_s"),
        ({"from": "07:00", "to": "19:00", "bytes_per_s": 1, "days": "mon"}, "unknown key(s) days"),
        ({"start": "07:00", "to": "19:00", "bytes_per_s": 1}, "unknown key(s) start"),
    ],
)
def test_parse_schedule_errors_name_the_window(table: dict[str, object], message: str) -> None:
    ok = {"from": "01:00", "to": "02:00", "bytes_per_s": 5}
    with pytest.raises(ConfigError) as e:
        parse_schedule([ok, table])
    assert "[upload] schedule window 2" in str(e.value)
    assert message in str(e.value)


# -- rate -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(10_000, 50_000_000),
    chunk_ratio=st.floats(0.01, 0.2),
    duration=st.floats(1.0, 10.0),
    idle=st.floats(0.0, 30.0),
)
def test_rate_over_a_second_or_more(
    rate: int, chunk_ratio: float, duration: float, idle: float
) -> None:
    """Over any stretch of a second or more, what passes is within a few % of the cap,
    and the burst is at most one chunk (the segment), even after a long idle."""
    chunk = max(1, int(rate * chunk_ratio))
    clock = SimClock()
    t = throttle(Bandwidth(rate, (), 0), clock, burst=chunk)
    clock.sleep(idle) if idle > 0 else None
    start, sent = clock.now, 0
    while clock.now - start < duration:
        assert t.take(chunk)
        sent += chunk
    elapsed = clock.now - start
    # At most one burst above the rate; and never more than a chunk behind it.
    assert sent <= rate * elapsed + chunk + 1
    assert sent >= rate * elapsed - chunk - 1
    assert abs(sent / elapsed - rate) <= 0.03 * rate + 2 * chunk / elapsed


def test_request_larger_than_burst_still_passes() -> None:
    clock = SimClock()
    t = throttle(Bandwidth(1000, (), 0), clock, burst=100)
    assert t.take(5000)
    assert clock.now == pytest.approx(5.0)


def test_unlimited_never_waits() -> None:
    clock = SimClock()
    t = throttle(Bandwidth(), clock)
    for _ in range(1000):
        assert t.try_take(1 << 20) == 0
    assert clock.slept == 0


def test_paused_window_waits_for_its_end() -> None:
    """0 inside a window pauses; uploading resumes at the window's end, at the default cap."""
    clock = SimClock(wall0=MIDNIGHT_UTC + 8 * 3600)  # 08:00 UTC, offset 0
    bw = Bandwidth(1_000_000, (Window("08:00", "08:10", 0),), 0)
    t = throttle(bw, clock, burst=100_000)
    assert t.delay(100_000) > 0
    assert t.take(100_000)
    # Paused for ten minutes, then 0.1 s for the bytes at 1 MB/s.
    assert clock.now == pytest.approx(600 + 0.1, abs=1e-6)


def test_rate_follows_the_schedule_across_a_boundary() -> None:
    clock = SimClock(wall0=MIDNIGHT_UTC + 7 * 3600 + 3590)  # 07:59:50
    bw = Bandwidth(1_000_000, (Window("08:00", "09:00", 100_000),), 0)
    t = throttle(bw, clock, burst=10_000)
    sent_fast = 0
    while clock.now < 10:  # until 08:00: 1 MB/s
        t.take(10_000)
        sent_fast += 10_000
    assert sent_fast == pytest.approx(10_000_000, rel=0.02)
    start, sent_slow = clock.now, 0
    while clock.now - start < 10:  # after 08:00: 100 kB/s
        t.take(10_000)
        sent_slow += 10_000
    assert sent_slow / (clock.now - start) == pytest.approx(100_000, rel=0.1)


def test_take_gives_up_when_stopped() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    t = Throttle(Bandwidth(1, (), 0), burst=1)
    assert t.take(1_000_000, stop) is False
