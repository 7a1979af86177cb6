"""`evidock` subcommands for the access log and playback from the command line (Art. 18, Art. 20 (3))."""

from __future__ import annotations

from agent.commands import Add, Subparsers


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
