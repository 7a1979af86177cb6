"""`evidock report` subcommands: conduct reports (Art. 20) and statistics (Art. 3).

Both need the ``report`` action (supervisors and auditors). Periods are dates
or times; dates are local days in ``--tz`` (default: the station's
``[offload] utc_offset_minutes``) and ``--to DATE`` includes that day.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli._common import (
    Add,
    Subparsers,
    acting_user,
    add_user_options,
    command_group,
    open_station,
    period_options,
)
from agent.records import reports
from hashing._fsutil import write_atomic
from hashing.errors import InputError
from hashing.findings import EXIT_OK


def _period(args: argparse.Namespace) -> reports.Period:
    tz = reports.parse_tz(args.tz) if args.tz else reports.default_tz()
    return reports.Period.parse(args.start, args.end, tz)


def cmd_conduct(args: argparse.Namespace) -> int:
    period = _period(args)
    if args.not_docked_days < 1:
        raise InputError(f"--not-docked-days {args.not_docked_days}: give 1 or more days")
    if args.pdf:
        reports.chromium()  # fail before any work when there is no printer
    station = open_station(args)
    acting_user(args, station, "report")
    facts = reports.load_facts(station)
    officers = [args.officer] if args.officer else reports.officers_in(facts, period)
    if not officers:
        raise InputError(
            f"no officer has recordings, anomalies or offload sessions in {period.label}; "
            "check --from/--to, or name one with --officer ID"
        )
    out = Path(args.out)
    for officer in officers:
        report = reports.conduct(facts, officer, period, not_docked_days=args.not_docked_days)
        for path in reports.write_conduct(report, out, pdf=args.pdf):
            print(path)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    period = _period(args)
    station = open_station(args)
    acting_user(args, station, "report")
    rows = reports.stats(reports.load_facts(station), period, args.by)
    text = reports.stats_csv(rows, args.by)
    if args.out:
        write_atomic(Path(args.out), text.encode("utf-8"))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    elif not args.out:
        sys.stdout.write(text)
    return EXIT_OK


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    group = command_group(sub, "report", "Art. 20 conduct reports and Art. 3 statistics", "KIND")

    p = add(
        "conduct",
        cmd_conduct,
        "per officer: recordings per shift and day, gaps, anomalies, docking, wipes, purges, "
        "failed verifications, spot-check findings, access (HTML with a chart, CSV, PDF)",
        group,
    )
    period_options(p, required=True)
    p.add_argument(
        "--officer",
        metavar="ID",
        help="only this officer (default: every officer active in the period)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for conduct-<officer>-<from>-<to>.html/.csv",
    )
    p.add_argument(
        "--not-docked-days",
        type=int,
        default=3,
        metavar="N",
        help="list devices of the officer not docked for more than N days (default 3)",
    )
    p.add_argument("--pdf", action="store_true", help="also print a PDF with headless Chromium")
    add_user_options(p)

    p = add(
        "stats",
        cmd_stats,
        "counts per officer, device, case or day as CSV (or JSON): recordings, bytes, duration, "
        "anomalies, tagged, evidence, long-term, receipted uploads",
        group,
    )
    p.add_argument("--by", required=True, choices=reports.STAT_KEYS)
    period_options(p, required=True)
    p.add_argument("--out", metavar="FILE", help="write the CSV here instead of to standard output")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_user_options(p)
