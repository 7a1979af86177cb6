"""`evidock spotcheck` subcommands (Art. 19).

``draw`` and ``finding`` act on the record and need the ``spotcheck`` action
(auditors). ``list``, ``show`` and ``report`` read it and need ``report``
(supervisors and auditors): reading spot-check results is part of the conduct
reporting of Art. 20, and every role allowed ``spotcheck`` is allowed
``report`` (tests/unit/agent/records/test_spotcheck.py keeps it so). ``recompute``
needs no station and no user: it is the auditor's own check of a draw from the
ledger entries (its request, its signed checkpoint and the key history).
"""

from __future__ import annotations

import argparse
import json
from datetime import timezone
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
from agent.records import spotcheck
from agent.records._csv import csv_text
from agent.records.reports import Period, default_tz, parse_bound, parse_tz
from hashing.errors import InputError, UnverifiableError
from hashing.findings import EXIT_INTEGRITY, EXIT_OK
from hashing.verify import read_key

REPORT_COLUMNS = (
    "request",
    "draw",
    "status",
    "time",
    "by",
    "officer",
    "from",
    "to",
    "percent",
    "population",
    "sample",
    "reviewed",
    "not_reviewed",
    "dropped_by_redraw",
    *spotcheck.RESULTS,
    "amendments",
    "redraw_of",
    "reason",
    "redrawn_by",
)


def _tz(args: argparse.Namespace) -> timezone:
    return parse_tz(args.tz) if args.tz else default_tz()


def _criteria(args: argparse.Namespace) -> spotcheck.Criteria:
    tz = _tz(args)
    start = parse_bound(args.start, tz, end=False, option="--from") if args.start else None
    end = parse_bound(args.end, tz, end=True, option="--to") if args.end else None
    return spotcheck.Criteria(args.percent, args.officer, start, end)


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=1))


def cmd_draw(args: argparse.Namespace) -> int:
    criteria = _criteria(args)
    station = open_station(args)
    user = acting_user(args, station, "spotcheck")
    entry = spotcheck.draw(station, user, criteria, redraw_reason=args.redraw_reason)
    request = station.ledger.entry(int(entry.body["request"]))
    body = {**request.body, **entry.body}
    if args.json:
        _print_json({"draw": entry.seq, **body})
        return EXIT_OK
    redraw = (
        f"; REDRAW of {_request_name(body['redraw_of'], spotcheck.review(station))}: "
        f"{body['reason']}"
        if body["redraw_of"] is not None
        else ""
    )
    print(
        f"draw {entry.seq} (request {request.seq}): {len(body['sample'])} of "
        f"{body['population']} recording(s) ({criteria.describe()}), seeded by the station's "
        f"signature on checkpoint size {body['size']} root {body['root']}{redraw}"
    )
    for rank, sha in enumerate(body["sample"], 1):
        print(f"  {rank:>3}  {sha}")
    print(
        f'play each with `evidock play SHA256 --purpose "spot check {entry.seq}" --as {user.name}`, '
        f"then `evidock spotcheck finding {entry.seq} SHA256 --result RESULT --note TEXT --as {user.name}`"
    )
    return EXIT_OK


def cmd_finding(args: argparse.Namespace) -> int:
    station = open_station(args)
    user = acting_user(args, station, "spotcheck")
    entry = spotcheck.record_finding(station, user, args.draw, args.sha256, args.result, args.note)
    amended = [
        f
        for f in spotcheck.review(station).findings.get((args.draw, args.sha256), [])
        if f.seq == entry.seq and f.amends is not None
    ]
    what = f" (amends finding {amended[0].amends})" if amended else ""
    print(f"finding {entry.seq}: {args.sha256} of draw {args.draw} is {args.result}{what}")
    return EXIT_OK


def _reader(args: argparse.Namespace) -> spotcheck.Review:
    station = open_station(args)
    acting_user(args, station, "report")
    return spotcheck.review(station)


def _request_name(seq: int, review: spotcheck.Review) -> str:
    made = review.drawn(seq)
    return f"request {seq} (not drawn)" if made is None else f"draw {made.seq} (request {seq})"


def _line(p: spotcheck.Progress, review: spotcheck.Review) -> str:
    r, d = p.request, p.draw
    what = (
        spotcheck.NOT_DRAWN
        if d is None
        else f"{len(d.sample):>4} of {d.population:<6} reviewed {p.reviewed:>4}  "
        f"not reviewed {p.not_reviewed:>4}"
    )
    text = (
        f"{'-' if d is None else d.seq:>6}  {r.seq:>7}  {r.time[:19]}  {r.by:<12} {what}  "
        f"{r.criteria.describe()}"
    )
    if r.redraw_of is not None:
        text += f"\n        REDRAW of {_request_name(r.redraw_of, review)}: {r.reason}"
    if p.redrawn_by:
        later = ", ".join(_request_name(seq, review) for seq in p.redrawn_by)
        text += f"\n        REDRAWN by {later}; {p.dropped} clip(s) dropped unreviewed"
    return text


def _header() -> str:
    return f"{'DRAW':>6}  {'REQUEST':>7}  {'TIME (UTC)':<19}  {'BY':<12} SAMPLE"


def cmd_list(args: argparse.Namespace) -> int:
    review = _reader(args)
    progress = review.all_progress()
    if args.json:
        rows = [{k: v for k, v in p.as_dict().items() if k != "clips"} for p in progress]
        _print_json(rows)
        return EXIT_OK
    print(_header())
    for p in progress:
        print(_line(p, review))
    if not progress:
        print(
            "no spot-check draws yet; draw one with `evidock spotcheck draw --percent P --as USER`"
        )
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    review = _reader(args)
    drawn = review.draw(args.draw)
    p = review.progress(drawn.request.seq)
    if args.json:
        _print_json(p.as_dict())
        return EXIT_OK
    print(_header())
    print(_line(p, review))
    print(f"        {drawn.rule}; checkpoint size {drawn.size}, root {drawn.root}")
    for c in p.clips:
        print(f"  {c.rank:>3}  {c.sha256}  {c.status}")
        for play in c.plays:
            print(f"         played by {play.user} (entry {play.seq}, {play.time})")
        for f in c.findings:
            amends = f", amends {f.amends}" if f.amends is not None else ""
            print(f"         finding {f.result} by {f.by} (entry {f.seq}{amends}): {f.note}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    tz = _tz(args)
    period = Period.parse(args.start, args.end, tz)
    review = _reader(args)
    chosen = [
        p
        for p in review.all_progress()
        if period.contains(parse_bound(p.request.time, tz, end=False, option="request time"))
    ]
    rows = []
    for p in chosen:
        d = p.as_dict()
        rows.append(
            [
                d["request"],
                d["draw"],
                d["status"],
                d["time"],
                d["by"],
                d["officer"],
                d["from"],
                d["to"],
                d["percent"],
                d["population"],
                d["sample"],
                d["reviewed"],
                d["not_reviewed"],
                d["dropped_by_redraw"],
                *(d["results"][r] for r in spotcheck.RESULTS),
                d["amendments"],
                d["redraw_of"],
                d["reason"],
                " ".join(map(str, d["redrawn_by"])),
            ]
        )
    totals = {
        "requests": len(chosen),
        "not_drawn": sum(1 for p in chosen if p.draw is None),
        "redraws": sum(1 for p in chosen if p.request.redraw_of is not None),
        "sampled": sum(len(p.sample) for p in chosen),
        "reviewed": sum(p.reviewed for p in chosen),
        "not_reviewed": sum(p.not_reviewed for p in chosen),
        "dropped_by_redraw": sum(p.dropped for p in chosen),
        **{r: sum(p.results()[r] for p in chosen) for r in spotcheck.RESULTS},
    }
    if args.csv:
        Path(args.csv).write_text(csv_text(REPORT_COLUMNS, rows), encoding="utf-8")
    if args.json:
        _print_json(
            {
                "from": period.start.isoformat(),
                "to": period.end.isoformat(),
                "totals": totals,
                "requests": [dict(zip(REPORT_COLUMNS, row, strict=True)) for row in rows],
            }
        )
        return EXIT_OK
    print(f"spot checks requested {period.label}")
    print("  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in totals.items()))
    if chosen:
        print(_header())
    for p in chosen:
        print(_line(p, review))
    return EXIT_OK


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UnverifiableError(f"{what} {path}: cannot read: {e.strerror}") from e


def cmd_recompute(args: argparse.Namespace) -> int:
    """Raises UnverifiableError (exit code 3) when the auditor's inputs cannot be read."""
    entries = spotcheck.parse_entries(_read(args.entries, "--entries").splitlines())
    try:
        # The verifiers' loader: a key text is a key, never a file of that name.
        keys = [k for value in args.key or () for k in read_key(value)]
    except InputError as e:
        raise UnverifiableError(str(e), hint=e.hint) from e
    result = spotcheck.recompute(entries, args.draw, keys)
    if args.json:
        _print_json(
            {
                "rule": result.rule,
                "draw": result.draw,
                "request": result.request,
                **result.criteria.as_body(),
                "size": result.size,
                "root": result.root,
                "key": result.key,
                "key_anchored": result.anchored,
                "population": result.population,
                "sample": list(result.sample),
                "matches": not result.problems,
                "problems": list(result.problems),
            }
        )
    else:
        trust = (
            "a key you trust"
            if result.anchored
            else "the key history in these entries (give --key to anchor it)"
        )
        print(
            f"{result.rule}: draw {result.draw} (request {result.request}): "
            f"{len(result.sample)} of {result.population} recording(s) "
            f"({result.criteria.describe()}) from checkpoint size {result.size} root "
            f"{result.root}, signed by {result.key}, the key in force by {trust}"
        )
        for rank, sha in enumerate(result.sample, 1):
            print(f"  {rank:>3}  {sha}")
        print(
            f"draw {result.draw}: "
            + ("; ".join(result.problems) if result.problems else "matches the rule")
        )
    return EXIT_INTEGRITY if result.problems else EXIT_OK


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    group = command_group(
        sub, "spotcheck", "Art. 19 spot checks: draw a sample, record findings, report"
    )

    p = add(
        "draw",
        cmd_draw,
        "request a sample, then draw it from the station's signature over the request (auditors)",
        group,
    )
    p.add_argument("--percent", required=True, metavar="P", help="share to sample, e.g. 5 or 2.5")
    p.add_argument("--officer", metavar="ID", help="only this officer's recordings")
    period_options(p, required=False)
    p.add_argument(
        "--redraw-reason",
        metavar="TEXT",
        help="why a period already requested is drawn again (required then; shown in every report)",
    )
    p.add_argument("--json", action="store_true")
    add_user_options(p)

    p = add(
        "finding",
        cmd_finding,
        "record what a sampled recording shows, after playing it (auditors)",
        group,
    )
    p.add_argument("draw", type=int, metavar="DRAW", help="the draw's entry number")
    p.add_argument("sha256", metavar="SHA256")
    p.add_argument("--result", required=True, choices=spotcheck.RESULTS)
    p.add_argument(
        "--note", metavar="TEXT", help="what was seen (required for conduct_issue and incomplete)"
    )
    add_user_options(p)

    p = add(
        "list",
        cmd_list,
        "every request with its draw and progress; redraws and undrawn requests marked",
        group,
    )
    p.add_argument("--json", action="store_true")
    add_user_options(p)

    p = add("show", cmd_show, "one draw: its sample, who played what, the findings", group)
    p.add_argument("draw", type=int, metavar="DRAW")
    p.add_argument("--json", action="store_true")
    add_user_options(p)

    p = add(
        "report",
        cmd_report,
        "requests made in a period: samples, reviewed / not reviewed, findings, redraws",
        group,
    )
    period_options(p, required=True)
    p.add_argument("--csv", metavar="FILE", help="also write one row per request to this CSV file")
    p.add_argument("--json", action="store_true")
    add_user_options(p)

    p = add(
        "recompute",
        cmd_recompute,
        "recompute a recorded draw offline from `evidock ledger entries` output; exit 1 if it differs",
        group,
    )
    p.add_argument(
        "--entries", required=True, metavar="FILE", help="`evidock ledger entries` output"
    )
    p.add_argument("--draw", required=True, type=int, metavar="SEQ", help="the draw's entry number")
    p.add_argument(
        "--key",
        action="append",
        metavar="KEY",
        help="verifier key you trust (or a file holding one); without it the key history "
        "in the entries is taken as given",
    )
    p.add_argument("--json", action="store_true")
