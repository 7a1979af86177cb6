"""``python -m bench [--quick] [--only NAMES] [--out DIR]``: run and print the table."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import digester, ingest, kiosk, ledger, memory, offload, records, upload
from bench._report import GIB, MIB, Row, Section, error_row, table
from bench._system import load_average, machine_lines

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Scale:
    ingest_total: int
    ingest_files: int
    rounds: int
    settle: float
    digest_size: int
    digest_repeats: int
    durable_appends: int
    batched_appends: int
    batch: int
    ledger_entries: int
    proofs: int
    rss_large: int
    rss_small: int
    recorders: int
    recorder_files: int
    recorder_file_size: int
    small_files: int
    small_size: int
    offload_rss_large: int
    upload_total: int
    upload_rss_queued: int
    upload_rss_seconds: int
    upload_rounds: int
    kiosk_recordings: int
    kiosk_requests: int
    kiosk_cpu_seconds: float
    records_recordings: int
    records_scrub_total: int
    records_scrub_files: int


FULL = Scale(
    ingest_total=1 * GIB,
    ingest_files=8,
    rounds=3,
    settle=5.0,
    digest_size=256 * MIB,
    digest_repeats=5,
    durable_appends=500,
    batched_appends=5000,
    batch=1000,
    ledger_entries=1_000_000,
    proofs=1000,
    rss_large=4 * GIB,
    rss_small=256 * MIB,
    recorders=8,
    recorder_files=2,
    recorder_file_size=64 * MIB,
    small_files=2000,
    small_size=64 * 1024,
    offload_rss_large=2 * GIB,
    upload_total=1 * GIB,
    upload_rss_queued=20 * GIB,
    upload_rss_seconds=15,
    upload_rounds=3,
    kiosk_recordings=10_000,
    kiosk_requests=300,
    kiosk_cpu_seconds=20.0,
    records_recordings=20_000,
    records_scrub_total=1 * GIB,
    records_scrub_files=8,
)
QUICK = Scale(
    ingest_total=64 * MIB,
    ingest_files=4,
    rounds=3,
    settle=0.5,
    digest_size=64 * MIB,
    digest_repeats=3,
    durable_appends=50,
    batched_appends=1000,
    batch=500,
    ledger_entries=20_000,
    proofs=200,
    rss_large=256 * MIB,
    rss_small=16 * MIB,
    recorders=8,
    recorder_files=1,
    recorder_file_size=4 * MIB,
    small_files=100,
    small_size=16 * 1024,
    offload_rss_large=128 * MIB,
    upload_total=64 * MIB,
    upload_rss_queued=2 * GIB,
    upload_rss_seconds=4,
    upload_rounds=1,
    kiosk_recordings=2_000,
    kiosk_requests=60,
    kiosk_cpu_seconds=4.0,
    records_recordings=2_000,
    records_scrub_total=64 * MIB,
    records_scrub_files=4,
)


def _ledger_suite(out: Path, s: Scale) -> Section:
    built = ledger.build(out, s.ledger_entries)
    first = ledger.verify(built)
    second = ledger.proofs(built, samples=s.proofs)
    return Section(first.rows + second.rows, first.notes + second.notes)


BENCHMARKS: dict[str, Callable[[Path, Scale], Section]] = {
    "ingest": lambda out, s: ingest.run(
        out, total=s.ingest_total, count=s.ingest_files, rounds=s.rounds, settle=s.settle
    ),
    "digest": lambda out, s: digester.run(size=s.digest_size, repeats=s.digest_repeats),
    "appends": lambda out, s: ledger.appends(
        out, durable=s.durable_appends, batched=s.batched_appends, batch=s.batch
    ),
    "ledger": _ledger_suite,
    "rss": lambda out, s: memory.run(out, large=s.rss_large, small=s.rss_small),
    "offload": lambda out, s: offload.run(
        out,
        recorders=s.recorders,
        files_each=s.recorder_files,
        file_size=s.recorder_file_size,
        small_files=s.small_files,
        small_size=s.small_size,
        rounds=s.rounds,
        rss_small=s.rss_small,
        rss_large=s.offload_rss_large,
    ),
    "upload": lambda out, s: upload.run(
        out,
        total=s.upload_total,
        rounds=s.upload_rounds,
        rss_queued=s.upload_rss_queued,
        rss_seconds=s.upload_rss_seconds,
    ),
    "kiosk": lambda out, s: kiosk.run(
        out,
        recordings=s.kiosk_recordings,
        requests=s.kiosk_requests,
        cpu_seconds=s.kiosk_cpu_seconds,
    ),
    "records": lambda out, s: records.run(
        out,
        recordings=s.records_recordings,
        scrub_total=s.records_scrub_total,
        scrub_files=s.records_scrub_files,
        rounds=s.rounds,
    ),
}


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - BENCHMARKS.keys())
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown) or '(none)'}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="evidock benchmarks: each figure beside a baseline measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="scaled down (64 MiB ingest, 20,000 entries): < 60 s"
    )
    parser.add_argument(
        "--only",
        type=_names,
        default=list(BENCHMARKS),
        metavar="NAMES",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for test data, cached ledgers and scratch files (default: bench/out)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    print(
        f"evidock benchmarks ({'quick' if args.quick else 'full'}), "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    for line in machine_lines(out):
        print(line)
    sys.stdout.flush()  # before the progress lines on stderr
    rows: list[Row] = []
    notes: list[str] = []
    failed = False
    for name in args.only:
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            section = BENCHMARKS[name](out, scale)
        except Exception as e:  # noqa: BLE001 - reported in the table; exit status says so
            traceback.print_exc()
            rows.append(error_row(name, e))
            failed = True
            continue
        rows.extend(section.rows)
        notes.extend(section.notes)
        print(f"bench: {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        (out / "run").rmdir()  # scratch space; each benchmark empties what it used
    print()
    print(table(rows))
    print()
    for note in notes:
        print(f"  {note}")
    print(
        f"  load average at end: {load_average():.2f}; total {time.perf_counter() - started:.0f} s"
    )
    missed = [r.name for r in rows if r.passed is False]
    if missed:
        print(f"  missed targets (reported, not enforced): {'; '.join(missed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
