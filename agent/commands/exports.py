"""`evidock` subcommands for exports, disclosures, write-once images and the year-end archive (Art. 15, 17, 18)."""

from __future__ import annotations

from agent.commands import Add, Subparsers


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
