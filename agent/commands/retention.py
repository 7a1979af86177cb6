"""`evidock` subcommands for retention classes, purges and the scrub (Art. 15-16)."""

from __future__ import annotations

from agent.commands import Add, Subparsers


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
