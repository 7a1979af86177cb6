"""The one rule for free text in the ledger (agent._text): purposes, hold notes,
spot-check notes and reasons."""

from __future__ import annotations

import pytest

from agent._text import check_text
from hashing.errors import InputError


def test_blank_is_missing_or_empty() -> None:
    with pytest.raises(InputError, match="give a note"):
        check_text("  \t", "note", 10, missing="give a note")
    assert check_text(None, "note", 10) == ""
    assert check_text("  ok  ", "note", 10) == "ok"


def test_too_long_says_what_to_write() -> None:
    with pytest.raises(InputError, match=r"note is 11 characters long; at most 10$") as caught:
        check_text("x" * 11, "note", 10, hint="be brief")
    assert caught.value.hint == "be brief"


@pytest.mark.parametrize("c", ["\n", "\t", "\x1b", "\x85", "\u202e", "\u200b", "\u2028", "\ufeff"])
def test_one_line_refuses_controls_and_invisible_characters(c: str) -> None:
    with pytest.raises(InputError, match=f"U\\+{ord(c):04X}$") as caught:
        check_text(f"a{c}b", "note", 100)
    assert caught.value.hint == "write it as one line of plain text"


def test_several_lines_keep_line_feeds_and_tabs_but_nothing_hidden() -> None:
    assert check_text("line 1\n\tline 2", "note", 100, lines=True) == "line 1\n\tline 2"
    for c in ("\r", "\x00", "\u202e", "\u2066"):
        with pytest.raises(InputError, match="invisible character") as caught:
            check_text(f"a{c}b", "note", 100, lines=True)
        assert caught.value.hint == "write it as plain text"


def test_hold_and_spot_check_notes_follow_the_rule() -> None:
    from agent.records.holds import check_note

    with pytest.raises(InputError, match="U\\+202E"):
        check_note("complaint \u202e811-6102")
    assert check_note("投诉 2026-118") == "投诉 2026-118"
