"""`evidock` subcommands for conduct reports and statistics (Art. 20, Art. 3)."""

from __future__ import annotations

from agent.commands import Add, Subparsers


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
