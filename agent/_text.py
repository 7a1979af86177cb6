"""What people type into the ledger: ids (officers, serials, cases) and free text
(purposes, notes, reasons).

One rule for all of it, because an auditor reads every one of them: no control
characters, no format characters (bidirectional embeddings and marks,
zero-width spaces, soft hyphens: they reorder or hide text on the screen, so an
entry could read differently from what is stored or searched), no separators,
surrogates, private-use or unassigned code points. A text of several lines may
keep its line feeds and tabs.
"""

from __future__ import annotations

import re
import unicodedata

from hashing.errors import InputError

_ID = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def check_text(
    text: str | None,
    what: str,
    limit: int,
    *,
    missing: str | None = None,
    hint: str = "",
    lines: bool = False,
) -> str:
    """``text`` without surrounding blanks. Raises InputError: ``missing`` when it is
    empty (without ``missing`` an empty text is returned as ""), when it is longer
    than ``limit`` (``hint`` says what to write instead), or when it holds a
    character the rule above refuses."""
    value = (text or "").strip()
    if not value:
        if missing is not None:
            raise InputError(missing)
        return ""
    if len(value) > limit:
        raise InputError(
            f"{what} is {len(value)} characters long; at most {limit}", hint=hint or None
        )
    allowed = "\n\t" if lines else ""
    bad = next(
        (c for c in value if c not in allowed and unicodedata.category(c) in _UNPRINTABLE), None
    )
    if bad is not None:
        shape = "plain text" if lines else "one line of plain text"
        raise InputError(
            f"{what} holds the control or invisible character U+{ord(bad):04X}",
            hint=f"write it as {shape}",
        )
    return value


def check_id(value: str, what: str) -> str:
    """Officer ids, serials and case numbers: 1-64 printable characters."""
    if not _ID.fullmatch(value) or value != value.strip():
        raise InputError(f"{what} {value!r}: use 1-64 printable characters, no surrounding spaces")
    return value
