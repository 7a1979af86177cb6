"""The upload speed cap: a token bucket whose rate follows a time-of-day schedule.

A dock often shares a police station's uplink with everything else, so the
agency caps it (``[upload] bandwidth_bytes_per_s``) and may cap it harder, or
pause it, during office hours (``[upload] schedule``, design.md step 7). The
schedule is in station local time (``[offload] utc_offset_minutes``), because
that is how people write "07:00 to 19:00".

Pure: the clocks and the sleep are injected, so the rate and the schedule are
tested on a simulated clock (style.md 3).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hashing.errors import ConfigError

DAY_S = 24 * 3600
MAX_WAIT_S = 60.0  # a paused uploader looks again at least this often (clock steps, stop)
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _minute_of_day(text: str, where: str) -> int:
    match = _HHMM.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f'{where}: {text!r} is not a time of day "HH:MM" (00:00-23:59)')
    return int(match[1]) * 60 + int(match[2])


@dataclass(frozen=True)
class Window:
    """From ``start`` (inclusive) to ``end`` (exclusive), station local time, the cap is
    ``bytes_per_s``; 0 pauses uploads. ``end`` before ``start`` crosses midnight."""

    start: str
    end: str
    bytes_per_s: int

    def __post_init__(self) -> None:
        start = _minute_of_day(self.start, "schedule window start")
        end = _minute_of_day(self.end, "schedule window end")
        if start == end:
            raise ConfigError(
                f"schedule window {self.start}-{self.end} is empty; for a cap all day long "
                "set [upload] bandwidth_bytes_per_s instead"
            )
        if isinstance(self.bytes_per_s, bool) or not isinstance(self.bytes_per_s, int):
            raise ConfigError(
                f"schedule window {self.start}-{self.end}: bytes_per_s must be an integer"
            )
        if self.bytes_per_s < 0:
            raise ConfigError(
                f"schedule window {self.start}-{self.end}: bytes_per_s must not be negative"
            )

    @property
    def start_s(self) -> int:
        """The start as seconds after midnight."""
        return _minute_of_day(self.start, "start") * 60

    @property
    def end_s(self) -> int:
        """The end as seconds after midnight."""
        return _minute_of_day(self.end, "end") * 60

    def contains(self, second_of_day: float) -> bool:
        """Whether the window covers ``second_of_day`` (station local time)."""
        start, end = self.start_s, self.end_s
        if start < end:
            return start <= second_of_day < end
        return second_of_day >= start or second_of_day < end  # crosses midnight


def parse_schedule(tables: Sequence[Mapping[str, Any]]) -> tuple[Window, ...]:
    """``[upload] schedule``: ``[{ from = "07:00", to = "19:00", bytes_per_s = 2000000 }, ...]``.

    Raises ConfigError naming the window and what is wrong. Where windows
    overlap, the first one listed wins.
    """
    windows = []
    for n, table in enumerate(tables, 1):
        where = f"[upload] schedule window {n}"
        if not isinstance(table, Mapping):
            raise ConfigError(f'{where}: want {{ from = "HH:MM", to = "HH:MM", bytes_per_s = N }}')
        unknown = set(table) - {"from", "to", "bytes_per_s"}
        missing = {"from", "to", "bytes_per_s"} - set(table)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(sorted(missing))}")
        try:
            windows.append(Window(table["from"], table["to"], table["bytes_per_s"]))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
    return tuple(windows)


@dataclass(frozen=True)
class Bandwidth:
    """The cap: ``bytes_per_s`` (0 = none) except inside a schedule window."""

    bytes_per_s: int = 0
    schedule: tuple[Window, ...] = ()
    utc_offset_minutes: int = 480

    def second_of_day(self, wall: float) -> float:
        """Seconds after local midnight at wall-clock time ``wall`` (time.time())."""
        return (wall + self.utc_offset_minutes * 60) % DAY_S

    def rate_at(self, wall: float) -> int | None:
        """Bytes per second allowed at wall-clock time ``wall``: None = no cap, 0 = paused."""
        second = self.second_of_day(wall)
        for window in self.schedule:
            if window.contains(second):
                return window.bytes_per_s
        return self.bytes_per_s or None

    def next_change(self, wall: float) -> float:
        """Seconds from ``wall`` to the next window boundary (inf without a schedule)."""
        second = self.second_of_day(wall)
        best = float("inf")
        for window in self.schedule:
            for edge in (window.start_s, window.end_s):
                ahead = (edge - second) % DAY_S
                best = min(best, ahead if ahead > 0 else DAY_S)
        return best


@dataclass
class Throttle:
    """A token bucket over ``bandwidth``: bytes accrue at the current rate up to
    ``burst`` (at least the request), starting empty, so over any stretch of time
    T at most rate*T + burst bytes pass and a long run averages the rate.

    Not thread-safe by design beyond one lock: one uploader thread takes from it.
    """

    bandwidth: Bandwidth
    burst: int = 1 << 20
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(default=0.0, init=False)
    _last: float | None = field(default=None, init=False)
    _rate: int | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _refill(self, cap: float) -> None:
        now = self.clock()
        if self._last is not None and self._rate:
            # Bytes accrue at the rate that was in force since the last look; callers
            # wake at window boundaries (next_change), so one interval has one rate.
            self._tokens = min(cap, self._tokens + self._rate * max(0.0, now - self._last))
        self._tokens = min(self._tokens, cap)
        self._last = now
        rate = self.bandwidth.rate_at(self.wall())
        if rate is None:
            self._tokens = cap  # no cap: a later cap starts with at most one burst
        self._rate = rate

    def delay(self, n: int) -> float:
        """Seconds to wait before ``n`` bytes may go (0: now). Takes nothing."""
        with self._lock:
            return self._delay(n)

    def _delay(self, n: int) -> float:
        cap = float(max(self.burst, n))
        self._refill(cap)
        rate = self._rate
        if rate is None:
            return 0.0
        change = self.bandwidth.next_change(self.wall())
        if rate == 0:
            return min(change, MAX_WAIT_S)
        missing = n - self._tokens
        if missing <= 0.5:  # within half a byte: float rounding, not a reason to sleep
            return 0.0
        return min(missing / rate, change, MAX_WAIT_S)

    def try_take(self, n: int) -> float:
        """Take ``n`` bytes if allowed now and return 0; else return the seconds to wait."""
        with self._lock:
            wait = self._delay(n)
            if wait == 0:
                self._tokens -= n
            return wait

    def take(self, n: int, stop: threading.Event | None = None) -> bool:
        """Block until ``n`` bytes are allowed and take them. False if ``stop`` was set."""
        while True:
            wait = self.try_take(n)
            if wait == 0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                self.sleep(wait)

    def rate_now(self) -> int | None:
        """The cap in force now: None = no cap, 0 = paused."""
        return self.bandwidth.rate_at(self.wall())
