"""`evidock` commands of the uplink: the outbox of uploads, and the platform's
receiver (agent.dock.uplink)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent import config
from agent.cli._common import Add, Handler, Subparsers, open_station
from agent.dock import uplink


def _with_station(handler: uplink.StationHandler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        station = open_station(args)
        try:
            return handler(station, config.load(), args)
        finally:
            station.close()

    return run


def cmd_receive(args: argparse.Namespace) -> int:
    return uplink.cmd_receive(config.load(Path(args.config) if args.config else None), args)


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    upload = sub.add_parser("upload", help="the outbox of uploads to the platform").add_subparsers(
        dest="upload_command", required=True, metavar="ACTION"
    )
    p = add(
        "status",
        _with_station(uplink.cmd_upload_status),
        "the broker link and what is queued, sending, awaiting a receipt or receipted",
        upload,
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="transfers to list")
    p = add(
        "retry",
        _with_station(uplink.cmd_upload_retry),
        "send one recording again from the start (after the platform refused it)",
        upload,
    )
    p.add_argument("sha256", type=uplink.check_sha256, metavar="SHA256")
    p = add(
        "drain",
        _with_station(uplink.cmd_upload_drain),
        "send everything queued and wait for the receipts (exit 0 when all are receipted)",
        upload,
    )
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")

    p = add(
        "receive",
        cmd_receive,
        "platform side: take uploads from the broker, store them, answer with signed receipts",
    )
    p.add_argument("--config", metavar="FILE", help="receiver configuration (TOML)")
    p.add_argument("--receiver-home", metavar="DIR", help="state folder (default [receiver] home)")
    p.add_argument(
        "--show-key",
        action="store_true",
        help="print the receipt verifier key for the docks' [upload] platform_key, then exit",
    )
