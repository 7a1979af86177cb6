"""The one table of what each role may do, and the README's copy of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.users import roles
from agent.users.accounts import User
from agent.users.roles import PERMISSIONS, PermissionDeniedError, can, officer_scope, require
from hashing.errors import InputError

README = Path(__file__).parents[4] / "README.md"
START, END = "<!-- roles-table:start -->", "<!-- roles-table:end -->"


def readme_table() -> dict[str, set[str]]:
    """action -> roles ticked, parsed from the README's table."""
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, "README lost its roles table markers"
    rows = [
        line.strip()
        for line in text[text.index(START) + len(START) : text.index(END)].splitlines()
        if line.strip().startswith("|")
    ]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[1:] == list(roles.ROLES), header
    table: dict[str, set[str]] = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        found = re.match(r"`([a-z_]+)`", cells[0])
        assert found, f"no `action` in README row {row!r}"
        marks = cells[1:]
        assert all(m in ("✓", "—") for m in marks), row
        table[found.group(1)] = {r for r, m in zip(roles.ROLES, marks, strict=True) if m == "✓"}
    return table


def test_readme_table_is_the_code_table() -> None:
    expected = {action: {r for r in roles.ROLES if can(r, action)} for action in roles.ACTIONS}
    assert readme_table() == expected, (
        "README.md's roles table differs from agent/users/roles.py; paste this between the markers:\n"
        + roles.markdown_table()
    )
    assert roles.markdown_table() in README.read_text(encoding="utf-8")


def test_every_permission_is_a_known_action_and_role() -> None:
    assert set(PERMISSIONS) == set(roles.ROLES)
    for granted in PERMISSIONS.values():
        assert granted <= set(roles.ACTIONS)


def test_the_issue_rules() -> None:
    assert roles.who_may("delete") == []  # nobody deletes a recording
    assert roles.who_may("tag") == ["supervisor"]
    assert roles.who_may("assign_device") == ["admin"]
    assert roles.who_may("manage_users") == ["admin"]
    # an officer sees their own, never everyone's
    assert can("officer", "view_own") and not can("officer", "view_all")
    assert not can("officer", "view_devices")
    # admins run the appliance; they do not watch evidence
    assert not any(can("admin", a) for a in ("view_all", "view_own", "play", "export"))


def test_unknown_action_is_a_bug_and_unknown_role_may_nothing() -> None:
    with pytest.raises(ValueError, match="unknown action 'tagg'"):
        can("supervisor", "tagg")
    assert not any(can("root", a) for a in roles.ACTIONS)


def test_require_says_who_what_and_who_may() -> None:
    officer = User("li", "officer", "100001", disabled=False)
    with pytest.raises(PermissionDeniedError) as e:
        require(officer, "tag")
    assert str(e.value) == (
        "user 'li' (officer) may not tag: bind recordings to a case, an act kind and a "
        "retention class is for supervisor"
    )
    assert isinstance(e.value, InputError)  # exit code 2 on the command line
    require(User("wang", "supervisor", None, disabled=False), "tag")
    with pytest.raises(PermissionDeniedError, match="disabled"):
        require(User("wang", "supervisor", None, disabled=True), "tag")
    with pytest.raises(PermissionDeniedError, match="log in first"):
        require(None, "play")
    with pytest.raises(PermissionDeniedError, match="is for nobody"):
        require(User("root", "admin", None, disabled=False), "delete")


@given(st.sampled_from(roles.ROLES), st.sampled_from(list(roles.ACTIONS)), st.booleans())
def test_require_agrees_with_can(role: str, action: str, disabled: bool) -> None:
    user = User("u", role, "100001", disabled)
    if can(role, action) and not disabled:
        require(user, action)
    else:
        with pytest.raises(PermissionDeniedError):
            require(user, action)


def test_officer_scope() -> None:
    assert officer_scope(User("li", "officer", "100001", False)) == "100001"
    assert officer_scope(User("wang", "supervisor", None, False)) is None
    assert officer_scope(User("zhao", "auditor", None, False)) is None
    with pytest.raises(PermissionDeniedError, match="admin"):
        officer_scope(User("root", "admin", None, False))
    with pytest.raises(PermissionDeniedError, match="disabled"):
        officer_scope(User("wang", "supervisor", None, True))
    with pytest.raises(PermissionDeniedError, match="no officer id"):
        officer_scope(User("li", "officer", None, False))
    with pytest.raises(PermissionDeniedError):
        officer_scope(None)
