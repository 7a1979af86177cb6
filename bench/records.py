"""Records management (issue 6): retention plan, spot-check draw, conduct reports, scrub.

Each of the first three reads the whole ledger of a busy station (the kiosk
benchmark's: ``recordings`` ingest entries with their index rows, a third
tagged, some anomalies). Their baseline is the least any such job must do,
measured on the same station in the same run: read every entry from SQLite and
parse it (``Entry.parse`` of each row's bytes). The ratio says how much the
rules themselves cost on top of reading the ledger once.

The scrub re-reads every stored file against its digest and audits the ledger;
its baseline is coreutils ``sha256sum`` over the same store files, the tool an
operator would otherwise run, after the page cache was dropped for both (as a
weekly scrub meets a cold disk).
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import kiosk
from bench._report import MIB, Row, Section, seconds

AUDITOR_PASSWORD = "bench-auditor-1"  # noqa: S105 - a throwaway user in a scratch station


def _scan(home: Path) -> float:
    """Seconds to read and parse every entry of the ledger (the baseline)."""
    from hashing.entries import Entry  # noqa: PLC0415 - only when the benchmark runs
    from hashing.station import Station  # noqa: PLC0415

    station = Station.open(home)
    try:
        began = time.perf_counter()
        for _, raw in station.ledger.raw_entries():
            Entry.parse(raw)
        return time.perf_counter() - began
    finally:
        station.close()


def _best(runs: int, job: object) -> float:
    assert callable(job)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        job()
        times.append(time.perf_counter() - began)
    return min(times)


def _receipt_all(station: Any, platform: Any) -> None:
    """A platform-signed receipt for every recording, as uploader.sender records them,
    so the retention plan verifies as many receipt signatures as on a dock."""
    from hashing.note import open_note  # noqa: PLC0415
    from uploader.outbox import UPLOAD_RECEIPT  # noqa: PLC0415
    from uploader.protocol import Receipt  # noqa: PLC0415

    rows = station.ledger.execute("SELECT sha256, size, seq FROM files ORDER BY seq")
    stored_at = "2026-11-20T00:00:00.000000Z"
    for start in range(0, len(rows), 1000):
        with station.ledger.transaction() as tx:
            for sha, size, seq in rows[start : start + 1000]:
                note = Receipt(
                    station.station_id, str(sha), int(size), int(seq), stored_at, tx.size
                ).sign(platform)
                body = {
                    "sha256": str(sha),
                    "size": int(size),
                    "seq": int(seq),
                    "platform_key": open_note(note, [platform.verifier]).verified[0].vkey,
                    "stored_at": stored_at,
                    "receipt": note,
                }
                tx.append(UPLOAD_RECEIPT, body)


def ledger_jobs(home: Path, recordings: int, rounds: int) -> Section:
    from agent.records import reports, retention, spotcheck  # noqa: PLC0415
    from agent.users.accounts import Users  # noqa: PLC0415
    from hashing.note import NoteSigner  # noqa: PLC0415
    from hashing.retention import Policy  # noqa: PLC0415
    from hashing.station import Station  # noqa: PLC0415

    kiosk.build(home, recordings)
    station = Station.open(home)
    section = Section()
    platform = NoteSigner.generate("platform.bench/receipts")
    try:
        _receipt_all(station, platform)
        users = Users(station)
        try:
            users.add(
                "bench-auditor", "auditor", AUDITOR_PASSWORD, officer=None, by="console:bench"
            )
            auditor = users.get("bench-auditor")
        finally:
            users.close()
        assert auditor is not None
        baseline = min(_scan(home) for _ in range(rounds))
        now = datetime(2028, 6, 1, tzinfo=UTC)
        policy = Policy(routine_days=365, grace_days=30)
        keys = (platform.verifier,)
        plan_s = _best(rounds, lambda: retention.plan(station, policy, now, keys))
        period = reports.Period.parse("2026-03-01", "2026-12-31", reports.parse_tz("+08:00"))

        def report() -> None:
            facts = reports.load_facts(station)
            for officer in reports.officers_in(facts, period):
                reports.conduct_rows(reports.conduct(facts, officer, period, now=now))
            for by in reports.STAT_KEYS:
                reports.stats(facts, period, by)

        report_s = _best(rounds, report)
        draws: list[float] = []
        for i in range(rounds):
            criteria = spotcheck.Criteria(
                percent="5",
                start=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=i),
                end=datetime(2027, 1, 1, tzinfo=UTC),
            )
            began = time.perf_counter()
            spotcheck.draw(
                station, auditor, criteria, redraw_reason=None if i == 0 else "benchmark round"
            )
            draws.append(time.perf_counter() - began)
        draw_s = min(draws)
    finally:
        station.close()
    base = f"read + parse {recordings:,} entries: {seconds(baseline)}"
    for name, value in (
        ("retention plan", plan_s),
        ("conduct reports + stats", report_s),
        ("spot-check draw 5 %", draw_s),
    ):
        section.rows.append(
            Row(
                f"records: {name}, {recordings:,} recordings",
                seconds(value),
                base,
                value / baseline,
            )
        )
    section.notes.append(
        "records: each figure is the best of "
        f"{rounds} runs; the baseline reads the same ledger once (see bench/records.py)"
    )
    return section


def _drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def scrub(work: Path, *, total: int, count: int, rounds: int) -> Section:
    import shutil  # noqa: PLC0415

    from agent.offload.ingest import Binding, ingest_paths  # noqa: PLC0415
    from agent.records.scrub import scrub as run_scrub  # noqa: PLC0415
    from hashing.station import Station  # noqa: PLC0415

    shutil.rmtree(work, ignore_errors=True)
    source = work / "source"
    source.mkdir(parents=True)
    size = total // count
    for i in range(count):
        block = os.urandom(MIB)  # each file its own bytes: the store keeps one copy per digest
        with (source / f"clip{i:03d}.mp4").open("wb") as f:
            for j in range(size // MIB):
                f.write(block[j % 7 :] + block[: j % 7] if j % 2 else block)
    station = Station.init(work / "home", "bench-scrub")
    try:
        for ingested in ingest_paths(station, [source], Binding(officer="100001", device="CAM")):
            assert not isinstance(ingested, tuple), ingested
        shutil.rmtree(source)
        stored = sorted(p for p in station.store.root.rglob("*") if p.is_file())
        assert len(stored) == count, f"{len(stored)} stored files, expected {count}"
        ours, theirs = [], []
        for _ in range(rounds):
            _drop_cache(stored)
            began = time.perf_counter()
            result = run_scrub(station, by="console:bench")
            ours.append(time.perf_counter() - began)
            assert result.ok, result.failures
            _drop_cache(stored)
            began = time.perf_counter()
            subprocess.run(["sha256sum", *map(str, stored)], check=True, capture_output=True)
            theirs.append(time.perf_counter() - began)
    finally:
        station.close()
    mib = total // MIB
    row = Row(
        f"records: scrub {mib} MiB in {count} files, cold cache",
        f"{seconds(min(ours))} ({mib / min(ours):.0f} MiB/s)",
        f"sha256sum of the same files: {seconds(min(theirs))} ({mib / min(theirs):.0f} MiB/s)",
        min(ours) / min(theirs),
    )
    return Section([row], [])


def run(out: Path, *, recordings: int, scrub_total: int, scrub_files: int, rounds: int) -> Section:
    work = out / "run" / "records"
    first = ledger_jobs(work / "ledger", recordings, rounds)
    second = scrub(work / "scrub", total=scrub_total, count=scrub_files, rounds=rounds)
    return Section(first.rows + second.rows, first.notes + second.notes)
