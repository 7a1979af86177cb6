"""Conduct reports and statistics from a real station's ledger.

The station holds two officers' recordings over the last days (recording times
set as the offload path sets them: ``recorded_at`` and ``media.duration_ms`` in
the ingest entry), offload sessions, anomalies, a wipe, a purge, a failed scrub,
a spot-check finding and playbacks. Entries written by the test itself (wipes,
access) carry today's time, so the period runs from four days ago to tomorrow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

import pytest

from agent.offload.copier import open_source
from agent.offload.ingest import Binding, Source, commit, copy_to_staging
from agent.records import registry as records
from agent.records import reports, spotcheck
from agent.records._csv import csv_text, safe_cell
from agent.records.access import record_access
from agent.users.accounts import User
from hashing.errors import InputError
from hashing.station import Station
from tests.unit.agent.records.test_spotcheck import OFFICER_A, OFFICER_B, add_users

TZ = timezone(timedelta(hours=8))
HOSTILE = '<script>alert("x")</script>'


def utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(
    station: Station,
    folder: Path,
    name: str,
    *,
    officer: str | None,
    device: str,
    when: datetime,
    duration_ms: int,
    size: int,
    case: str | None = None,
) -> str:
    """Copy a file in as an offload session does, with its recording time and duration."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(random.Random(name).randbytes(size))
    fd = open_source(path)
    try:
        st = os.fstat(fd)
        source = Source(device, name.encode(), st.st_size, st.st_mtime_ns)
        staged, copy = copy_to_staging(station, fd, source)
    finally:
        os.close(fd)
    extra = {"recorded_at": utc_text(when), "media": {"kind": "video", "duration_ms": duration_ms}}
    binding = Binding(officer=officer, device=device, case=case)
    return commit(station, staged, copy, source, binding, extra).sha256


def session(
    station: Station, device: str, officer: str | None, started: datetime, *, failed: int = 0
) -> int:
    body = {
        "device": device,
        "officer": officer,
        "driver": "mounted",
        "state": "complete",
        "files": 0,
        "new": 0,
        "bytes": 0,
        "refused": 0,
        "failed": failed,
        "anomalies": 0,
        "wiped": 0,
        "started": started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return station.ledger.append(records.OFFLOAD_SESSION, body).seq


@dataclass
class World:
    station: Station
    users: dict[str, User]
    today: date
    a: list[str]  # officer A's recordings, in order
    b: list[str]
    hostile: list[str]
    seq: dict[str, int]

    def day(self, offset: int, hour: int = 12) -> datetime:
        return datetime.combine(self.today + timedelta(days=offset), time(hour), TZ)

    def period(self) -> reports.Period:
        return reports.Period.parse(
            (self.today - timedelta(days=3)).isoformat(),
            (self.today + timedelta(days=1)).isoformat(),
            TZ,
        )


def build_world(station: Station, folder: Path) -> World:
    users = add_users(station)
    today = datetime.now(TZ).date()
    w = World(station, users, today, [], [], [], {})
    records.assign_device(station, "CAM-A", OFFICER_A)
    records.assign_device(station, "CAM-B", OFFICER_B)
    w.seq["dock_a_before"] = session(station, "CAM-A", OFFICER_A, w.day(-8, 10))
    # Officer A: two recordings on day -3 (shift 1), one on day -1 (shift 2).
    w.a.append(
        record(
            station,
            folder,
            "A1.MP4",
            officer=OFFICER_A,
            device="CAM-A",
            when=w.day(-3, 9),
            duration_ms=60_000,
            size=1000,
        )
    )
    w.a.append(
        record(
            station,
            folder,
            "A2.MP4",
            officer=OFFICER_A,
            device="CAM-A",
            when=w.day(-3, 10),
            duration_ms=30_000,
            size=500,
            case="C-1",
        )
    )
    w.seq["shift_a1"] = session(station, "CAM-A", OFFICER_A, w.day(-3, 20))
    w.a.append(
        record(
            station,
            folder,
            "A3.MP4",
            officer=OFFICER_A,
            device="CAM-A",
            when=w.day(-1, 8),
            duration_ms=5_000,
            size=300,
        )
    )
    w.seq["shift_a2"] = session(station, "CAM-A", OFFICER_A, w.day(-1, 9), failed=1)
    # Officer B: one recording on day -2; docks on day -2 and day -1.
    w.b.append(
        record(
            station,
            folder,
            "B1.MP4",
            officer=OFFICER_B,
            device="CAM-B",
            when=w.day(-2, 9),
            duration_ms=1_000,
            size=700,
            case="C-1",
        )
    )
    w.seq["dock_b1"] = session(station, "CAM-B", OFFICER_B, w.day(-2, 12))
    w.seq["dock_b2"] = session(station, "CAM-B", OFFICER_B, w.day(-1, 12))
    # A hostile officer id and case id: everything must come out escaped.
    w.hostile.append(
        record(
            station,
            folder,
            "H1.MP4",
            officer=HOSTILE,
            device="=cmd|' /C calc'!A0",
            when=w.day(-2, 15),
            duration_ms=0,
            size=10,
            case="@SUM(1+1)",
        )
    )
    # Anomalies: a time gap on day -3 (dated by its start), missing clip numbers
    # beside A3 (dated by A3), a clock offset found today, one outside the period.
    w.seq["gap"] = records.record_anomaly(
        station,
        {
            "kind": "time_gap",
            "device": "CAM-A",
            "officer": OFFICER_A,
            "detail": "no recording for 40 min",
            "files": ["A1.MP4", "A2.MP4"],
            "gap_from": utc_text(
                w.day(
                    -3,
                    9,
                )
            ),
            "gap_to": utc_text(w.day(-3, 10)),
            "gap_s": 2400,
        },
    ).seq
    w.seq["missing"] = records.record_anomaly(
        station,
        {
            "kind": "missing_clip_numbers",
            "device": "CAM-A",
            "officer": None,
            "detail": "clip 4 missing",
            "files": ["A3.MP4"],
        },
    ).seq
    w.seq["clock"] = records.record_anomaly(
        station,
        {
            "kind": "clock_offset",
            "device": "CAM-A",
            "officer": OFFICER_A,
            "detail": "clock 5 min fast",
            "files": [],
        },
    ).seq
    w.seq["old_gap"] = records.record_anomaly(
        station,
        {
            "kind": "time_gap",
            "device": "CAM-A",
            "officer": OFFICER_A,
            "detail": "old",
            "files": [],
            "gap_from": utc_text(w.day(-30)),
        },
    ).seq
    w.seq["wipe"] = records.record_wipe(
        station, {"sha256": w.a[0], "device": "CAM-A", "source_path": "A1.MP4"}
    ).seq
    w.seq["purge"] = station.ledger.append(
        "purge",
        {
            "sha256": w.a[1],
            "size": 500,
            "class": "routine",
            "keep_until": "2025-01-01",
            "by": "console:test",
        },
    ).seq
    w.seq["scrub"] = station.ledger.append(
        "scrub",
        {
            "files": 5,
            "intact": 4,
            "failures": [
                {"sha256": w.a[2], "finding": "digest_mismatch", "detail": "bytes 0-1023 changed"}
            ],
            "ledger": "ok",
            "by": "console:test",
        },
    ).seq
    records.tag(
        station,
        [w.a[1]],
        case="C-2",
        kind="evidence_preservation",
        retention="evidence",
        reason="assault",
    )
    records.tag(
        station, [w.b[0]], case="C-1", kind="other", retention="long-term", reason="complaint"
    )
    station.ledger.append(
        "upload_receipt", {"sha256": w.a[0], "size": 1000, "seq": 0, "receipt": "r"}
    )
    draw = spotcheck.draw(station, users["audrey"], spotcheck.Criteria("100", OFFICER_A))
    w.seq["draw"] = draw.seq
    w.seq["play"] = record_access(
        station, users["audrey"], "play", [w.a[2]], f"spot check {draw.seq}"
    ).seq
    w.seq["finding"] = spotcheck.record_finding(
        station, users["audrey"], draw.seq, w.a[2], "incomplete", "ends early"
    ).seq
    w.seq["view"] = record_access(
        station, users["sam"], "view", [w.a[0], w.a[2], w.b[0]], "complaint 7"
    ).seq
    return w


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    station = Station.init(tmp_path / "home", "dock-01")
    yield build_world(station, tmp_path / "src")
    station.close()


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def value(rows: list[dict[str, str]], section: str, key: str, metric: str) -> tuple[str, str]:
    found = [
        (r["value"], r["entries"])
        for r in rows
        if (r["section"], r["key"], r["metric"]) == (section, key, metric)
    ]
    assert len(found) == 1, (section, key, metric, found)
    return found[0]


# --- periods ---------------------------------------------------------------------


def test_periods_dates_times_and_zones() -> None:
    p = reports.Period.parse("2024-05-01", "2024-05-03", TZ)
    assert p.start == datetime(2024, 4, 30, 16, tzinfo=UTC)
    assert p.end == datetime(2024, 5, 3, 16, tzinfo=UTC)  # --to DATE includes that day
    assert [d.isoformat() for d in p.days()] == ["2024-05-01", "2024-05-02", "2024-05-03"]
    q = reports.Period.parse("2024-05-01T00:00:00Z", "2024-05-01T09:00", TZ)
    assert q.end == datetime(2024, 5, 1, 1, tzinfo=UTC)  # a time without zone is in --tz
    assert reports.parse_tz("-05:30").utcoffset(None) == -timedelta(hours=5, minutes=30)
    assert reports.parse_tz("Z") is UTC
    for bad in ("8", "+25:00", "CST"):
        with pytest.raises(InputError, match="--tz"):
            reports.parse_tz(bad)
    with pytest.raises(InputError, match="empty"):
        reports.Period.parse("2024-05-03", "2024-05-01", TZ)
    with pytest.raises(InputError, match="--from"):
        reports.Period.parse("yesterday", "2024-05-01", TZ)


# --- conduct report ------------------------------------------------------------------


def test_conduct_numbers_name_their_entries(world: World) -> None:
    facts = reports.load_facts(world.station)
    period = world.period()
    now = world.day(0, 12)
    report = reports.conduct(facts, OFFICER_A, period, not_docked_days=3, now=now)
    rows = rows_of(csv_text(reports.CONDUCT_COLUMNS, reports.conduct_rows(report)))
    seq_of = {sha: facts.recordings[sha].seq for sha in world.a}
    a1, a2, a3 = (seq_of[s] for s in world.a)
    summary = period.label
    assert value(rows, "summary", summary, "recordings") == (
        "3",
        f"{a1}-{a2} {a3}" if a2 == a1 + 1 else f"{a1} {a2} {a3}",
    )
    assert value(rows, "summary", summary, "bytes") == ("1800", "")
    assert value(rows, "summary", summary, "duration_ms") == ("95000", "")
    # Gaps: the time gap (day -3) and the missing clip numbers (dated by A3: day -1),
    # attributed to A through the registry although its body names no officer.
    assert value(rows, "summary", summary, "gaps") == (
        "2",
        f"{world.seq['gap']} {world.seq['missing']}"
        if world.seq["missing"] != world.seq["gap"] + 1
        else f"{world.seq['gap']}-{world.seq['missing']}",
    )
    d = {k: (world.today + timedelta(days=k)).isoformat() for k in (-3, -2, -1, 0, 1)}
    assert value(rows, "day", d[-3], "recordings")[0] == "2"
    assert value(rows, "day", d[-3], "bytes")[0] == "1500"
    assert value(rows, "day", d[-3], "duration_ms")[0] == "90000"
    assert value(rows, "day", d[-3], "gaps") == ("1", str(world.seq["gap"]))
    assert value(rows, "day", d[-2], "recordings") == ("0", "")
    assert value(rows, "day", d[-1], "recordings") == ("1", str(a3))
    assert value(rows, "day", d[-1], "gaps") == ("1", str(world.seq["missing"]))
    assert [
        r["key"] for r in rows if r["section"] == "day" and r["metric"] == "recordings"
    ] == list(d.values())
    # Shifts: A1 and A2 came in with the first session after them, A3 with the next.
    assert value(rows, "shift", f"session {world.seq['shift_a1']}", "recordings") == (
        "2",
        f"{a1}-{a2}",
    )
    assert value(rows, "shift", f"session {world.seq['shift_a2']}", "recordings") == ("1", str(a3))
    # Anomalies by kind; the one dated a month ago is outside the period.
    assert value(rows, "anomaly", "time_gap", "count") == ("1", str(world.seq["gap"]))
    assert value(rows, "anomaly", "clock_offset", "count") == ("1", str(world.seq["clock"]))
    # CAM-A docked on day -8 (before the period), then not until day -3 at 20:00.
    not_docked = [r for r in rows if r["section"] == "not_docked"]
    assert value(rows, "summary", summary, "devices_not_docked")[0] == "1"
    assert [(r["key"], r["value"]) for r in not_docked] == [("CAM-A", "5")]
    assert {str(world.seq["dock_a_before"]), str(world.seq["shift_a1"])} <= set(
        not_docked[0]["entries"].split()
    )
    assert not_docked[0]["detail"].endswith(
        f"to {(world.today - timedelta(days=3)).isoformat()} 20:00:00"
    )
    assert value(rows, "wipe", world.a[0], "wiped") == ("1", str(world.seq["wipe"]))
    assert value(rows, "purge", world.a[1], "purged") == ("1", str(world.seq["purge"]))
    assert value(rows, "failed_verification", f"session {world.seq['shift_a2']}", "failed") == (
        "1",
        str(world.seq["shift_a2"]),
    )
    assert value(rows, "failed_verification", world.a[2], "digest_mismatch") == (
        "1",
        str(world.seq["scrub"]),
    )
    assert value(rows, "spotcheck", "incomplete", "findings") == ("1", str(world.seq["finding"]))
    assert value(rows, "spotcheck", "ok", "findings") == ("0", "")
    assert value(rows, "access", "audrey", "play") == ("1", str(world.seq["play"]))
    assert value(rows, "access", "sam", "view") == ("1", str(world.seq["view"]))
    assert "2 recording(s)" in next(r["detail"] for r in rows if r["key"] == "sam")


def test_not_docked_threshold_and_the_other_officer(world: World) -> None:
    facts = reports.load_facts(world.station)
    period = world.period()
    now = world.day(0, 12)
    b = reports.conduct(facts, OFFICER_B, period, not_docked_days=3, now=now)
    assert b.devices == ("CAM-B",)
    assert b.not_docked == ()  # docked on days -2 and -1
    strict = reports.conduct(facts, OFFICER_B, period, not_docked_days=1, now=now)
    # From the period's start (day -3, 00:00) to the first docking (day -2, 12:00);
    # then a day between dockings and a day to now: not more than one day.
    assert [(n.since, n.until, n.days) for n in strict.not_docked] == [
        (period.start, world.day(-2, 12), 1)
    ]
    assert [r.sha256 for r in b.recordings] == world.b
    assert b.anomalies == ()
    with pytest.raises(InputError, match="--not-docked-days"):
        reports.conduct(facts, OFFICER_B, period, not_docked_days=0)
    assert reports.officers_in(facts, period) == sorted([OFFICER_A, OFFICER_B, HOSTILE])


def test_html_has_a_bar_group_per_day_escapes_and_names_entries(
    world: World, tmp_path: Path
) -> None:
    facts = reports.load_facts(world.station)
    period = world.period()
    report = reports.conduct(facts, HOSTILE, period)
    paths = reports.write_conduct(report, tmp_path / "out")
    html = paths[0].read_text(encoding="utf-8")
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "src=" not in html
    groups = re.findall(r'<g class="day" data-day="([0-9-]+)">', html)
    assert groups == [d.isoformat() for d in period.days()]
    # A file name that cannot carry the id as it is: safe characters and a digest.
    tag = hashlib.sha256(HOSTILE.encode()).hexdigest()[:8]
    stem = f"conduct-_script_alert__x____script__{tag}-{period.first_day}-{period.last_day}"
    assert [p.name for p in paths] == [f"{stem}.html", f"{stem}.csv"]
    # Officer A's page: every count is followed by the entries it comes from.
    a = reports.conduct_html(reports.conduct(facts, OFFICER_A, period))
    assert f"(entries {world.seq['gap']})" in a
    assert f"(entries {world.seq['finding']})" in a
    assert a.count('<g class="day"') == 5


def test_csv_cells_cannot_become_formulas(world: World) -> None:
    facts = reports.load_facts(world.station)
    rows = reports.stats(facts, world.period(), "device")
    text = reports.stats_csv(rows, "device")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["device", *reports.STAT_COLUMNS]
    cells = [c for row in parsed for c in row]
    assert "'=cmd|' /C calc'!A0" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert safe_cell("-1") == "'-1"
    assert safe_cell(-1) == -1
    assert text.endswith("\r\n")


def test_stats_per_key(world: World) -> None:
    facts = reports.load_facts(world.station)
    period = world.period()
    by_officer = {r["officer"]: r for r in reports.stats(facts, period, "officer")}
    assert by_officer[OFFICER_A] == {
        "officer": OFFICER_A,
        "recordings": 3,
        "bytes": 1800,
        "duration_ms": 95_000,
        "anomalies": 3,  # gap, missing clip numbers (by the registry), clock offset
        "tagged": 1,
        "evidence": 1,
        "long_term": 0,
        "uploads_receipted": 1,
    }
    assert by_officer[OFFICER_B]["long_term"] == 1
    assert by_officer[HOSTILE]["recordings"] == 1
    by_case = {r["case"]: r for r in reports.stats(facts, period, "case")}
    # A2: ingested with case C-1 and tagged C-2; B1: case C-1 (and tagged to it again).
    assert by_case["C-1"]["recordings"] == 2
    assert by_case["C-2"]["recordings"] == 1
    assert by_case["@SUM(1+1)"]["recordings"] == 1
    assert by_case[""]["recordings"] == 2  # A1 and A3
    assert by_case["C-1"]["anomalies"] == 1  # the time gap names A2
    by_day = {r["day"]: r for r in reports.stats(facts, period, "day")}
    assert by_day[(world.today - timedelta(days=3)).isoformat()]["recordings"] == 2
    assert by_day[(world.today - timedelta(days=2)).isoformat()]["recordings"] == 2
    by_device = {r["device"]: r for r in reports.stats(facts, period, "device")}
    assert by_device["CAM-A"]["recordings"] == 3 and by_device["CAM-A"]["anomalies"] == 3
    assert sum(r["recordings"] for r in by_device.values()) == 5
    with pytest.raises(InputError, match="--by"):
        reports.stats(facts, period, "colour")


def test_one_read_of_the_ledger_serves_every_officer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = world.station.ledger.entries_of_type

    def counting(kind: str) -> Iterator[object]:
        calls.append(kind)
        return original(kind)

    monkeypatch.setattr(world.station.ledger, "entries_of_type", counting)
    facts = reports.load_facts(world.station)
    for officer in reports.officers_in(facts, world.period()):
        reports.conduct(facts, officer, world.period())
    assert len(calls) == len(set(calls))


def test_ten_thousand_recordings_all_counted(tmp_path: Path) -> None:
    """Every recording of a busy station is counted once (the speed is measured in
    bench/records.py, not timed here)."""
    station = Station.init(tmp_path / "home", "dock-01")
    start = datetime(2024, 5, 1, tzinfo=UTC)
    with station.ledger.transaction() as tx:
        for i in range(10_000):
            tx.append(
                "ingest",
                {
                    "sha256": f"{i:064x}",
                    "size": 1000,
                    "officer": f"1000{i % 20:02d}",
                    "device": f"CAM-{i % 20}",
                    "recorded_at": utc_text(start + timedelta(minutes=4 * i)),
                    "media": {"duration_ms": 1000},
                },
            )
    period = reports.Period.parse("2024-05-01", "2024-06-30", TZ)
    facts = reports.load_facts(station)
    per_officer = [
        reports.conduct(facts, officer, period) for officer in reports.officers_in(facts, period)
    ]
    assert sum(r.total.value for r in per_officer) == 10_000
    assert sum(r["recordings"] for r in reports.stats(facts, period, "day")) == 10_000
    assert sum(r["recordings"] for r in reports.stats(facts, period, "officer")) == 10_000
    station.close()
