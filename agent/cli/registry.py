"""`evidock` commands on the records beside the recordings: the device registry,
tags, and everything known of one recording (agent.records.registry)."""

from __future__ import annotations

import argparse
import json

from agent.cli._common import Add, Subparsers, open_indexed_station, zoned_time
from agent.records import registry as records
from hashing.errors import InputError
from hashing.findings import EXIT_OK


def cmd_device_assign(args: argparse.Namespace) -> int:
    station = open_indexed_station(args)
    officer = None if args.unassign else args.officer
    if officer is None and not args.unassign:
        raise InputError("give --officer ID, or --unassign")
    entry = records.assign_device(station, args.serial, officer, model=args.model, notes=args.notes)
    who = officer or "nobody"
    print(f"device {args.serial} assigned to {who} (entry {entry.seq})")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace) -> int:
    station = open_indexed_station(args)
    rows = records.devices(station)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], ensure_ascii=False, indent=1))
        return EXIT_OK
    print(f"{'SERIAL':<20} {'OFFICER':<12} {'MODEL':<16} NOTES")
    for r in rows:
        print(f"{r.serial:<20} {r.officer or '-':<12} {r.model or '-':<16} {r.notes or ''}")
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    station = open_indexed_station(args)
    files = list(args.sha256 or [])
    if args.device:
        if not (args.start and args.end):
            raise InputError("--device needs --from and --to")
        files += records.files_by_device(
            station, args.device, zoned_time(args.start, "--from"), zoned_time(args.end, "--to")
        )
        if not files:
            raise InputError(f"no recordings of {args.device} between {args.start} and {args.end}")
    entry = records.tag(
        station,
        files,
        case=args.case,
        kind=args.kind,
        retention=args.retention,
        reason=args.reason,
        case_type=args.case_type,
    )
    print(f"tagged {len(entry.body['files'])} recording(s) to case {args.case} (entry {entry.seq})")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    station = open_indexed_station(args)
    info = records.show(station, args.sha256)
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=1))
        return EXIT_OK
    media = info.get("media") or {}
    lines = [
        f"recording   {info['sha256']}",
        f"size        {info['size']} bytes, chunk root {info['chunk_root']}",
        f"entry       {info['entry']} (ingested {info['ingested']})",
        f"device      {info.get('device') or '-'}    officer {info.get('officer') or '-'}",
        f"source      {info.get('source_path')}  (modified {info.get('source_mtime')})",
    ]
    if media:
        lines.append(
            "media       "
            + ", ".join(
                f"{k} {media.get(k)}"
                for k in (
                    "kind",
                    "duration_ms",
                    "fps",
                    "frames",
                    "width",
                    "height",
                    "codec",
                    "decodes",
                )
                if k in media
            )
        )
    for t in info["tags"]:
        lines.append(
            f"tag         case {t['case']}, {t['kind']}, {t['retention']} (entry {t['seq']})"
        )
    for a in info["anomalies"]:
        lines.append(f"anomaly     {a['kind']}: {a['detail']} (entry {a['seq']})")
    for w in info["wiped_from_device"]:
        lines.append(f"wiped       from the recorder (entry {w['seq']})")
    lines.append(f"upload      {info['upload']}")
    ret = info.get("retention")
    if ret is not None:
        cases = ", ".join(ret["cases"]) or "no case"
        lines.append(f"retention   {ret['class']} ({cases}); {ret['why']}")
        lines.append(
            f"keep until  {ret['keep_until'] or 'never purged'}"
            f"    earliest purge {ret['purge_after'] or 'never'}"
        )
        if ret["purged"] is not None:
            lawful = "lawful" if ret["purge_lawful"] else "NOT LAWFUL"
            left = "; the file is still stored" if ret["stored"] else ""
            lines.append(f"purged      entry {ret['purged']} ({lawful}){left}")
        else:
            lines.append(f"purge       {ret['state']}: {'; '.join(ret['blockers']) or 'due'}")
    for h in info.get("holds", []):
        what = f"case {h['case']}" if h["case"] is not None else "this recording"
        state = f"released (entry {h['released']})" if h["released"] is not None else "in force"
        lines.append(f"hold        entry {h['seq']}: {what}, {h['reason']}, by {h['by']}; {state}")
    print("\n".join(lines))
    return EXIT_OK


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    device = sub.add_parser("device", help="the registry of recorders").add_subparsers(
        dest="device_command", required=True, metavar="ACTION"
    )
    p = add("assign", cmd_device_assign, "bind a recorder (serial) to an officer", device)
    p.add_argument("serial", metavar="SERIAL")
    p.add_argument("--officer", metavar="ID")
    p.add_argument("--unassign", action="store_true", help="bind it to nobody")
    p.add_argument("--model", metavar="MODEL")
    p.add_argument("--notes", metavar="TEXT")
    p = add("list", cmd_device_list, "list registered recorders", device)
    p.add_argument("--json", action="store_true")

    p = add("tag", cmd_tag, "bind recordings to a case, an act kind and a retention class")
    p.add_argument("sha256", nargs="*", metavar="SHA256")
    p.add_argument(
        "--device",
        metavar="SERIAL",
        help="with --from/--to: that recorder's recordings in the period",
    )
    p.add_argument("--from", dest="start", metavar="TIME", help="e.g. 2026-11-27T08:00:00+08:00")
    p.add_argument("--to", dest="end", metavar="TIME")
    p.add_argument("--case", required=True, metavar="ID")
    p.add_argument("--kind", required=True, choices=records.ACT_KINDS)
    p.add_argument("--retention", default="routine", choices=records.RETENTION_CLASSES)
    p.add_argument("--reason", metavar="TEXT", help="why (required for evidence and long-term)")
    p.add_argument(
        "--case-type",
        metavar="TYPE",
        help="the kind of case file, for how long evidence is kept ([retention] evidence_days)",
    )

    p = add("show", cmd_show, "everything known of one recording")
    p.add_argument("sha256", metavar="SHA256")
    p.add_argument("--json", action="store_true")
