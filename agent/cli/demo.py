"""`evidock demo`: the demo dock (agent.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli._common import Add, Subparsers, station_home
from agent.demo.tour import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(station_home(args), Path(args.out) if args.out else None, serve=args.serve)


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    p = add(
        "demo", cmd_demo, "make sample footage, ingest, export and verify it, saying what happens"
    )
    p.add_argument(
        "--out", metavar="DIR", help="where to write the bundle (default HOME/../demo-export)"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="afterwards keep the demo dock and its kiosk page running until Ctrl-C",
    )
