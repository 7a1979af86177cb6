"""`evidock` subcommands for long-term holds (Art. 17).

Setting a hold needs a supervisor, releasing one an admin (agent.users.roles), acting
as themselves with ``--as``: the entries name them.
"""

from __future__ import annotations

import argparse
import json

from agent.cli._common import (
    Add,
    Subparsers,
    acting_user,
    add_user_options,
    command_group,
    open_station,
)
from agent.records import holds
from hashing.findings import EXIT_OK
from hashing.retention import HOLD_REASONS


def cmd_add(args: argparse.Namespace) -> int:
    station = open_station(args)
    try:
        user = acting_user(args, station, "hold")
        entry = holds.add_hold(
            station,
            user,
            files=list(args.sha256 or ()),
            case=args.case,
            reason=args.reason,
            note=args.note,
        )
    finally:
        station.close()
    what = (
        f"case {args.case}" if args.case is not None else f"{len(entry.body['files'])} recording(s)"
    )
    print(f"hold set on {what} ({args.reason}) by {user.name}: entry {entry.seq}")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    station = open_station(args)
    try:
        user = acting_user(args, station, "release_hold")
        entry = holds.release_hold(station, user, args.seq, args.note)
    finally:
        station.close()
    print(f"hold {args.seq} released by {user.name}: entry {entry.seq}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    station = open_station(args)
    try:
        found = holds.holds(station)
    finally:
        station.close()
    if not args.all:
        found = [h for h in found if h.active]
    if args.json:
        print(json.dumps([h.as_dict() for h in found], ensure_ascii=False, indent=1))
        return EXIT_OK
    print(f"{'ENTRY':<7} {'STATE':<15} {'REASON':<12} {'BY':<16} WHAT")
    for h in found:
        state = "in force" if h.active else f"released {h.released}"
        what = f"case {h.case}" if h.case is not None else ", ".join(h.files)
        print(f"{h.seq:<7} {state:<15} {h.reason:<12} {h.by:<16} {what}")
        print(f"{'':<7} note: {h.note}")
    if not found:
        print("no holds in force" if not args.all else "no holds")
    return EXIT_OK


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    group = command_group(sub, "hold", "long-term holds: recordings never purged (Art. 17)")
    p = add(
        "add",
        cmd_add,
        "put recordings, or every recording of a case (now or later), under a hold (supervisors)",
        group,
    )
    p.add_argument("sha256", nargs="*", metavar="SHA256")
    p.add_argument("--case", metavar="ID", help="hold every recording bound to this case")
    p.add_argument(
        "--reason",
        required=True,
        choices=HOLD_REASONS,
        help="Art. 17: dispute or complaint; obstruction; mass or sudden incident; other",
    )
    p.add_argument("--note", required=True, metavar="TEXT", help="why, e.g. a complaint number")
    add_user_options(p)
    p = add("release", cmd_release, "release a hold (admins); the release is logged", group)
    p.add_argument(
        "seq", type=int, metavar="SEQ", help="the hold's entry (see `evidock hold list`)"
    )
    p.add_argument("--note", required=True, metavar="TEXT", help="why it is released")
    add_user_options(p)
    p = add("list", cmd_list, "the holds in force (--all: released ones too)", group)
    p.add_argument("--all", action="store_true", help="include released holds")
    p.add_argument("--json", action="store_true")
