"""`evidock` subcommands for retention classes, purges and the scrub (Art. 15-16).

These are maintenance commands run at the machine (or by the systemd timers
evidock-retention.timer and evidock-scrub.timer): the ledger entries name the
Unix account (``console:<user>``), like `evidock user add`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, time, timedelta, timezone

from agent import config
from agent.cli._common import Add, Subparsers, command_group, open_station
from agent.records import retention as ret
from agent.records.scrub import scrub
from agent.users.console import console_actor
from hashing.errors import InputError
from hashing.findings import EXIT_INTEGRITY, EXIT_OK
from hashing.retention import Policy, rfc3339


def _policy_text(policy: Policy) -> str:
    evidence = ", ".join(
        f"{k} {'permanent' if v is None else f'{v} days'}" for k, v in policy.evidence_days.items()
    )
    default = policy.default_case_type or "none (evidence of an unknown type: permanent)"
    return (
        f"routine {policy.routine_days} days, grace {policy.grace_days} days; "
        f"evidence by case type: {evidence or 'none configured'}; default type {default}"
    )


def _when(value: datetime | None) -> str:
    return "never" if value is None else rfc3339(value)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config.load()
    policy = ret.policy_from_config(cfg)
    keys = ret.platform_keys_from_config(cfg)
    station = open_station(args)
    try:
        result = ret.run(
            station,
            policy,
            by=console_actor(),
            platform_keys=keys,
            require_synced_clock=bool(cfg.get("retention", "require_synced_clock")),
            dry_run=args.dry_run,
        )
    finally:
        station.close()
    failed = result.mismatched or result.errors or result.refused
    code = EXIT_INTEGRITY if failed else EXIT_OK
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=1))
        return code
    plan = result.plan
    cited = "not yet recorded" if result.policy_entry is None else f"entry {result.policy_entry}"
    print(f"retention policy ({cited}): {_policy_text(policy)}")
    if result.dry_run:
        for item in plan.due:
            print(f"would purge {item.sha256}  {item.klass}, kept until {_when(item.keep_until)}")
        for item in plan.unfinished:
            print(f"would finish the interrupted purge of {item.sha256} (entry {item.purged})")
    for sha, seq in result.purged:
        print(f"purged {sha} (entry {seq})")
    for sha in result.finished:
        print(f"finished the interrupted purge of {sha}")
    for sha, detail in result.mismatched + result.errors:
        print(f"NOT PURGED {sha}: {detail}")
    for sha, detail in result.skipped:
        print(f"not purged after all {sha}: {detail}")
    for sha, detail in result.kept:
        print(f"NOT FINISHED {sha}: {detail}")
    blocked = ", ".join(f"{k} {n}" for k, n in plan.counts().items()) or "none"
    print(f"kept: {blocked}; purged before: {plan.purged}")
    waiting = plan.counts().get(ret.AWAITING)
    if waiting:
        print(
            f"{waiting} recording(s) past their date wait for a platform receipt dated after it "
            "(the next upload): the platform's time, not this dock's clock, allows a purge"
        )
    if result.dry_run:
        print(f"dry run: nothing written; {len(plan.due)} recording(s) due")
        if not keys:
            print("no [upload] platform_key is configured: a real run purges nothing")
    else:
        print(f"{len(result.purged)} purged, {len(result.finished)} interrupted purge(s) finished")
    if result.refused:
        print(f"NOT PURGED: {result.refused}", file=sys.stderr)
    return code


def _until(text: str | None, zone: timezone) -> datetime | None:
    """A date (that whole local day in ``zone``) or a time (without a zone: in ``zone``)."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time(), zone) + timedelta(days=1) - timedelta(microseconds=1)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InputError(
            f"--until {text!r}: not a date", hint="use e.g. 2027-01-31 or 2027-01-31T08:00:00+08:00"
        ) from e
    return (when if when.tzinfo is not None else when.replace(tzinfo=zone)).astimezone(UTC)


def cmd_report(args: argparse.Namespace) -> int:
    cfg = config.load()
    zone = timezone(timedelta(minutes=int(cfg.get("offload", "utc_offset_minutes"))))
    until = _until(args.until, zone)
    policy = ret.policy_from_config(cfg)
    keys = ret.platform_keys_from_config(cfg)
    station = open_station(args)
    try:
        forecast = ret.report(station, policy, datetime.now(UTC), until, keys)
    finally:
        station.close()
    if args.json:
        print(
            json.dumps(forecast.as_dict() | {"policy": policy.body()}, ensure_ascii=False, indent=1)
        )
        return EXIT_OK
    print(f"retention report at {rfc3339(forecast.now)}; policy: {_policy_text(policy)}")
    print(f"{'EARLIEST PURGE':<28} {'CLASS':<9} {'STATE':<17} SHA256")
    for item in forecast.dated:
        print(f"{_when(item.purge_after):<28} {item.klass:<9} {item.state:<17} {item.sha256}")
    if until is not None:
        print(f"{forecast.later} more after {rfc3339(until)}")
    never = ", ".join(f"{why}: {n}" for why, n in forecast.never.items()) or "none"
    print(f"never purged: {never}")
    print(f"under hold: {forecast.held}; purged already: {forecast.purged}")
    return EXIT_OK


def cmd_scrub(args: argparse.Namespace) -> int:
    keys = ret.platform_keys_from_config(config.load())
    station = open_station(args)
    try:
        result = scrub(station, by=console_actor(), platform_keys=keys)
    finally:
        station.close()
    code = EXIT_OK if result.ok else EXIT_INTEGRITY
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=1))
        return code
    body = result.entry.body
    print(
        f"scrub recorded as entry {result.entry.seq}: {body['files']} files, {body['bytes']} bytes "
        f"re-read, {body['intact']} intact; ledger {body['ledger']}"
    )
    for f in result.failures:
        print(f"  {f['finding']:<17} {f['sha256']}: {f['detail']}")
    for f in result.ledger_findings:
        print(f"  {f['kind']:<17} {f['place']}: {f['detail']}")
    print("RESULT: OK" if result.ok else "RESULT: FAILURES FOUND (nothing was repaired)")
    return code


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    group = command_group(
        sub, "retention", "retention classes and purges of local copies (Art. 15-16)"
    )
    p = add(
        "run",
        cmd_run,
        "purge the local copies past their date, receipted by the platform (signed by "
        "[upload] platform_key), under no hold, once a platform receipt dated after that date "
        "arrived (each purge a ledger entry first); exit 2 without a platform key or with an "
        "unsynchronised or backward clock, exit 1 if a copy failed its digest or could not be "
        "removed",
        group,
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only say what would be purged; write nothing"
    )
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report, "what expires when: earliest purge date of each recording", group)
    p.add_argument(
        "--until",
        metavar="DATE",
        help="only recordings due by then (a date: that whole local day, [offload] "
        "utc_offset_minutes; or a time, without a zone in that one); default: all",
    )
    p.add_argument("--json", action="store_true")
    p = add(
        "scrub",
        cmd_scrub,
        "re-check every stored file and the ledger; record the result; exit 1 on any failure "
        "(never repairs)",
    )
    p.add_argument("--json", action="store_true")
