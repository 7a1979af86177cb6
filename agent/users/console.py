"""Who acts at the machine's console: a maintenance command names its Unix user."""

from __future__ import annotations

import os
import pwd

from agent.users.accounts import CONSOLE


def console_actor() -> str:
    """``console:<unix user>``: who runs a maintenance command at the machine.
    Whoever can run it there can write the station folder: the trust anchor."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return f"{CONSOLE}{name}"
