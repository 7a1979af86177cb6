"""What each role may do: the one table (issue 5, "Users and roles").

The kiosk and the command line ask this module before they act; nothing else
holds a list of permissions. The README's "Users and roles" table is this
table too (tests/unit/agent/users/test_roles.py parses it and compares), so the
code and what an auditor reads cannot drift apart.

Threat-model decisions recorded here:

- An officer sees only the devices and recordings bound to their own officer
  id (``officer_scope``); every other role that may look at recordings sees all.
- Only supervisors tag (design.md step 6) and set long-term holds; only
  admins assign devices, manage users and release holds (Art. 17: whoever
  sets a hold cannot also lift it). The legal-affairs team (auditors) draws
  spot checks and records findings (Art. 19). Admins manage the appliance, not evidence: they do not view or
  play footage, so a compromised admin account is not a window onto recordings.
- Nobody deletes a recording (Art. 20 (2)): deletion happens only by the
  retention and wipe rules. ``delete`` is in the table so that this is visible,
  and a test keeps its row empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from hashing.errors import InputError

OFFICER = "officer"
SUPERVISOR = "supervisor"
AUDITOR = "auditor"
ADMIN = "admin"
ROLES: tuple[str, ...] = (OFFICER, SUPERVISOR, AUDITOR, ADMIN)

# action -> what it means, in the order the README lists them.
ACTIONS: Mapping[str, str] = MappingProxyType(
    {
        "view_own": "see the devices and recordings bound to your own officer id",
        "view_all": "see every device and recording",
        "view_devices": "list the device registry",
        "play": "play a recording in the page (among those you may see)",
        "tag": "bind recordings to a case, an act kind and a retention class",
        "export": "copy or export recordings with their proofs, for a stated purpose",
        "view_access_log": "read the access log: who viewed, played or exported what",
        "hold": "put recordings or a case under a long-term hold (Art. 17)",
        "release_hold": "release a long-term hold",
        "spotcheck": "draw a spot-check sample and record findings (Art. 19)",
        "report": "read conduct reports and statistics (Art. 20, Art. 3)",
        "assign_device": "bind a recorder to an officer",
        "manage_users": "add users, set passwords and PINs, disable users",
        "delete": "delete a recording (nobody: only the retention and wipe rules delete)",
    }
)

PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        OFFICER: frozenset({"view_own", "play"}),
        SUPERVISOR: frozenset(
            {"view_all", "view_devices", "play", "tag", "export", "hold", "report"}
        ),
        AUDITOR: frozenset(
            {
                "view_all",
                "view_devices",
                "play",
                "export",
                "view_access_log",
                "spotcheck",
                "report",
            }
        ),
        ADMIN: frozenset(
            {"view_devices", "view_access_log", "assign_device", "manage_users", "release_hold"}
        ),
    }
)


class PermissionDeniedError(InputError):
    """A user asked for something their role does not allow (CLI exit code 2)."""


class Actor(Protocol):
    """Who is acting: agent.users.accounts.User, or anything shaped like it."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def disabled(self) -> bool: ...


class ScopedActor(Actor, Protocol):
    @property
    def officer(self) -> str | None: ...


def can(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action``. An unknown role may do nothing.

    Raises ValueError for an action not in the table: a misspelt action in the
    caller must fail loudly, not quietly deny (or, worse, be compared elsewhere).
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; the table knows {', '.join(ACTIONS)}")
    return action in PERMISSIONS.get(role, frozenset())


def who_may(action: str) -> list[str]:
    """The roles allowed ``action``, in table order (for messages and docs)."""
    return [role for role in ROLES if can(role, action)]


def require(user: Actor | None, action: str) -> None:
    """Raise PermissionDeniedError unless ``user`` (enabled) may do ``action``.

    The message says who asked, for what, and which roles may, so an officer at
    the kiosk and an operator reading the log both know why.
    """
    if user is None:
        raise PermissionDeniedError(f"log in first: {ACTIONS.get(action, action)} needs a user")
    if user.disabled:
        raise PermissionDeniedError(f"user {user.name!r} is disabled")
    if not can(user.role, action):
        allowed = " or ".join(who_may(action)) or "nobody"
        raise PermissionDeniedError(
            f"user {user.name!r} ({user.role}) may not {action}: {ACTIONS[action]} is for {allowed}"
        )


def officer_scope(user: ScopedActor | None) -> str | None:
    """Which recordings ``user`` may see: None for all of them, else the officer id
    whose devices and recordings are theirs. Raises PermissionDeniedError if the
    user may see none (an admin; an officer account without an officer id)."""
    if user is not None and not user.disabled and can(user.role, "view_all"):
        return None
    require(user, "view_own")
    officer = user.officer if user is not None else None
    if not officer:
        name = user.name if user is not None else "?"
        raise PermissionDeniedError(
            f"user {name!r} has no officer id, so no recordings are theirs; "
            "an admin must bind the account to an officer id"
        )
    return officer


def markdown_table() -> str:
    """The permissions as the README's markdown table (✓ allowed, — not)."""
    lines = [
        "| action | " + " | ".join(ROLES) + " |",
        "|---|" + "---|" * len(ROLES),
    ]
    for action, meaning in ACTIONS.items():
        marks = " | ".join("✓" if can(role, action) else "—" for role in ROLES)
        lines.append(f"| `{action}`: {meaning} | {marks} |")
    return "\n".join(lines) + "\n"
