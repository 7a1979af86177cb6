"""`evidock report conduct` and `evidock report stats` through main([...]) on a
real station: files per officer, exact CSV numbers, the chart, escaping, PDF,
CSV per key, formula injection, roles."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.cli import main
from hashing.station import Station
from tests.unit.agent.records.test_reports import HOSTILE, World, build_world
from tests.unit.agent.records.test_spotcheck import OFFICER_A, OFFICER_B, SECRET


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    station = Station.init(tmp_path / "home", "dock-01")
    yield build_world(station, tmp_path / "src")
    station.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def run(
    world: World, secret: Path, capsys: pytest.CaptureFixture[str], *argv: str, user: str = "sam"
) -> tuple[int, str, str]:
    period = [
        "--from",
        str(world.today - timedelta(days=3)),
        "--to",
        str(world.today + timedelta(days=1)),
        "--tz",
        "+08:00",
    ]
    code = main(
        [
            *argv,
            *period,
            "--home",
            str(world.station.home),
            "--as",
            user,
            "--password-file",
            str(secret),
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_conduct_reports_per_officer(
    world: World, secret: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "reports"
    code, out, err = run(world, secret, capsys, "report", "conduct", "--out", str(out_dir))
    assert code == 0, err
    first, last = world.today - timedelta(days=3), world.today + timedelta(days=1)
    written = sorted(p.name for p in out_dir.iterdir())
    assert f"conduct-{OFFICER_A}-{first}-{last}.html" in written
    assert f"conduct-{OFFICER_B}-{first}-{last}.csv" in written
    assert len(written) == 6  # officers A, B and the hostile id, HTML and CSV each
    assert sorted(Path(line).name for line in out.splitlines()) == written
    rows = list(
        csv.DictReader(
            io.StringIO(
                (out_dir / f"conduct-{OFFICER_A}-{first}-{last}.csv").read_text(encoding="utf-8")
            )
        )
    )
    summary = {r["metric"]: r["value"] for r in rows if r["section"] == "summary"}
    assert summary["recordings"] == "3"
    assert summary["bytes"] == "1800"
    assert summary["gaps"] == "2"
    assert summary["anomalies"] == "3"
    assert summary["wipes"] == "1" and summary["purges"] == "1"
    assert summary["failed_verifications"] == "2"
    assert summary["spotcheck_findings"] == "1"
    day3 = {
        r["metric"]: (r["value"], r["entries"])
        for r in rows
        if r["section"] == "day" and r["key"] == str(first)
    }
    assert day3["recordings"][0] == "2" and day3["gaps"] == ("1", str(world.seq["gap"]))
    html = (out_dir / f"conduct-{OFFICER_A}-{first}-{last}.html").read_text(encoding="utf-8")
    assert len(re.findall(r'<g class="day" data-day="', html)) == 5
    hostile = next(
        p for p in out_dir.iterdir() if p.name.startswith("conduct-_script") and p.suffix == ".html"
    )
    text = hostile.read_text(encoding="utf-8")
    assert HOSTILE not in text and "<script" not in text.lower()
    code, _, err = run(
        world,
        secret,
        capsys,
        "report",
        "conduct",
        "--out",
        str(out_dir),
        "--officer",
        "nobody",
        user="audrey",
    )
    assert code == 0, err
    nobody = (out_dir / f"conduct-nobody-{first}-{last}.csv").read_text()
    assert ",summary," in nobody and ",recordings,0," in nobody


@pytest.mark.skipif(
    shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists(),
    reason="no chromium binary",
)
def test_conduct_report_as_pdf(
    world: World, secret: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "pdf"
    code, _, err = run(
        world,
        secret,
        capsys,
        "report",
        "conduct",
        "--officer",
        OFFICER_A,
        "--out",
        str(out_dir),
        "--pdf",
    )
    assert code == 0, err
    pdf = next(out_dir.glob("*.pdf"))
    assert pdf.read_bytes().startswith(b"%PDF")
    assert pdf.stat().st_size > 1000


@pytest.mark.parametrize("key", ["officer", "device", "case", "day"])
def test_stats_csv_per_key(
    world: World, secret: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, key: str
) -> None:
    path = tmp_path / f"stats-{key}.csv"
    code, out, err = run(
        world, secret, capsys, "report", "stats", "--by", key, "--out", str(path), user="audrey"
    )
    assert code == 0, err
    raw = path.read_bytes()
    raw.decode("utf-8")
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[0] == [
        key,
        "recordings",
        "bytes",
        "duration_ms",
        "anomalies",
        "tagged",
        "evidence",
        "long_term",
        "uploads_receipted",
    ]
    assert sum(int(r[1]) for r in rows[1:]) >= 5
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r)
    code, out, _ = run(
        world, secret, capsys, "report", "stats", "--by", key, "--json", user="audrey"
    )
    data = json.loads(out)
    assert [str(r[key]) for r in data] == [r[0].removeprefix("'") for r in rows[1:]]
    if key == "officer":
        a = next(r for r in data if r["officer"] == OFFICER_A)
        assert (a["recordings"], a["bytes"], a["duration_ms"], a["anomalies"]) == (
            3,
            1800,
            95_000,
            3,
        )
    if key == "device":
        assert rows[1][:2] == ["'=cmd|' /C calc'!A0", "1"]
    if key == "case":
        assert any(r[0] == "'@SUM(1+1)" for r in rows)
    # Without --out or --json the CSV goes to standard output.
    code, out, _ = run(world, secret, capsys, "report", "stats", "--by", key, user="audrey")
    assert out.encode() == raw


@pytest.mark.parametrize("name", ["olive", "adam"])
def test_officers_and_admins_get_no_report(
    world: World, secret: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    out_dir = tmp_path / "denied"
    code, _, err = run(world, secret, capsys, "report", "conduct", "--out", str(out_dir), user=name)
    assert code == 2 and "may not report" in err
    assert not out_dir.exists()
    code, out, err = run(world, secret, capsys, "report", "stats", "--by", "officer", user=name)
    assert code == 2 and "may not report" in err and out == ""


def test_bad_input_says_what_to_do(
    world: World, secret: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        [
            "report",
            "stats",
            "--by",
            "day",
            "--from",
            "2024-05-09",
            "--to",
            "2024-05-01",
            "--home",
            str(world.station.home),
            "--as",
            "sam",
            "--password-file",
            str(secret),
        ]
    )
    assert code == 2 and "the period is empty" in capsys.readouterr().err
    code = main(
        [
            "report",
            "conduct",
            "--from",
            "2001-01-01",
            "--to",
            "2001-01-02",
            "--out",
            str(tmp_path / "x"),
            "--home",
            str(world.station.home),
            "--as",
            "sam",
            "--password-file",
            str(secret),
        ]
    )
    assert code == 2 and "--officer ID" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["report", "conduct"], ["report", "stats"]], ids=" ".join)
def test_every_report_command_has_help(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: evidock" in out and "--home" in out
