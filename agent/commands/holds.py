"""`evidock` subcommands for long-term holds (Art. 17)."""

from __future__ import annotations

from agent.commands import Add, Subparsers


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
