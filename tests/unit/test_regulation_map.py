"""The README's "Under the regulation" table is true of the code.

Issue 6 is done when every article of regulation.md has its command or page,
its ledger entries and its tests. The README lists them per article; this test
holds each cell to the tree: every ``evidock …`` command parses, every kiosk
path is a route, every entry type is written somewhere in the code, and every
test named exists. A renamed command or a deleted test breaks the build, not
the promise to an auditor.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from agent.cli import build_parser

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
START, END = "<!-- regulation-map:start -->", "<!-- regulation-map:end -->"
SOURCES = ("agent", "hashing", "uploader", "drivers")
ARTICLES = {"1–2", "3", "4–5", "9–12", "13–14", "15", "16", "17", "18", "19", "20"}


def _rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, "README lost its regulation map markers"
    lines = [
        line.strip()
        for line in text[text.index(START) + len(START) : text.index(END)].splitlines()
        if line.strip().startswith("|")
    ]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Art.", "What evidock does", "Commands and pages", "Ledger entries", "Tests"]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


ROWS = _rows()


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_exists(words: list[str]) -> bool:
    parser = build_parser()
    for word in words:
        if word.startswith("-") or word.isupper() or not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        choices = _subcommands(parser)
        if not choices:
            break
        if word not in choices:
            return False
        parser = choices[word]
    return not _subcommands(parser)  # a whole command, not just a group


def _routes() -> set[str]:
    from agent.kiosk import app as kiosk_app

    source = Path(kiosk_app.__file__).read_text(encoding="utf-8")
    return set(re.findall(r'Route\("([^"]+)"', source))


def _written_types() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*.py")
    )


def test_every_article_has_a_row() -> None:
    assert {row[0] for row in ROWS} == ARTICLES


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_row_names_real_commands_pages_entries_and_tests(row: list[str]) -> None:
    article, _, commands, entries, tests = row
    if article in {"6–8", "21"}:
        return
    named = _ticked(commands)
    assert named, f"Art. {article}: no command or page"
    routes = _routes()
    for item in named:
        if item.startswith("evidock "):
            assert _command_exists(item.split()[1:]), f"Art. {article}: `{item}` does not parse"
        else:
            page = item.split("?")[0]
            assert page in routes, f"Art. {article}: kiosk page {page} is not a route"
    code = _written_types()
    for entry_type in _ticked(entries):
        assert re.search(rf"=\s*\"{re.escape(entry_type)}\"", code), (
            f"Art. {article}: no code defines the entry type {entry_type!r}"
        )
    named_tests = _ticked(tests)
    assert named_tests, f"Art. {article}: no tests"
    for item in named_tests:
        file, _, function = item.partition("::")
        test_file = ROOT / file
        assert test_file.is_file(), f"Art. {article}: {file} does not exist"
        source = test_file.read_text(encoding="utf-8")
        if function:
            assert re.search(rf"def {re.escape(function)}\b", source), (
                f"Art. {article}: {file} has no {function}"
            )
        else:
            assert "def test_" in source, f"Art. {article}: {file} holds no test"
