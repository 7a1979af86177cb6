"""Canonical JSON for ledger entries (design.md, "Formats that others can verify").

RFC 8785 (JCS) restricted to strings, integers, booleans, null, arrays and
objects: UTF-8, object keys sorted by their UTF-16 code units (RFC 8785 §3.2.3),
no insignificant whitespace, and the string escaping of RFC 8785 §3.2.2.2
(which is what ``json.dumps(ensure_ascii=False)`` produces). Floats are refused
because their text form is where JCS implementations disagree; integers are
kept within the IEEE-754 exact range (RFC 8785 §3.2.2.3, I-JSON) so every
language reads them back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from hashing.errors import InputError

JSONValue: TypeAlias = bool | int | str | Sequence["JSONValue"] | Mapping[str, "JSONValue"] | None

MAX_SAFE_INTEGER = 2**53 - 1
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _normalise(value: Any, where: str) -> Any:
    """Check the value is in the canonical subset and sort object keys as JCS does."""
    if value is None or isinstance(value, bool | str):
        if isinstance(value, str):
            _check_text(value, where)
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise InputError(f"{where}: integer {value} is outside the exact JSON range")
        return value
    if isinstance(value, Mapping):
        items = []
        for key in value:
            if not isinstance(key, str):
                raise InputError(f"{where}: object key {key!r} is not a string")
            _check_text(key, where)
            items.append(key)
        items.sort(key=_utf16_key)
        return {key: _normalise(value[key], f"{where}.{key}") for key in items}
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise InputError(f"{where}: {type(value).__name__} is not allowed in canonical JSON")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where}: string holds an unpaired surrogate; not valid UTF-8") from e


def dumps(value: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Return the canonical UTF-8 bytes of ``value``.

    Raises InputError for floats, out-of-range integers, non-string keys and
    text that is not valid Unicode.
    """
    # dict insertion order is preserved by json; _normalise inserts keys in JCS order.
    return _ENCODER.encode(_normalise(value, "$")).encode("utf-8")


def _reject_float(text: str) -> Any:
    raise ValueError(f"number {text} is not an integer")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


# Duplicate keys need no hook: the parsed object keeps one of them, so its
# canonical encoding is shorter than the input and the byte comparison in
# loads refuses it. Floats and NaN/Infinity are refused while parsing.
_DECODER = json.JSONDecoder(parse_float=_reject_float, parse_constant=_reject_constant)


def loads(data: bytes) -> Any:
    """Parse canonical JSON bytes, refusing anything that is not exactly canonical.

    A verifier must not accept two byte strings for one entry: the leaf hash is
    over the bytes, so the bytes themselves must be the unique encoding.
    Raises InputError with the reason.
    """
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"not canonical JSON: {e}") from e
    if not isinstance(value, dict | list):
        raise InputError("not canonical JSON: top level must be an object or array")
    if _needs_full_check(data):
        canonical = dumps(value)
    else:
        # Fast path for the common case (verifying a million entries): with no
        # characters at or above U+E000 (UTF-8 lead byte 0xEE), code-point order
        # equals JCS's UTF-16 order, and with no run of 16+ digits every integer
        # is in the exact range, so the C encoder's output is the canonical form.
        try:
            canonical = _FAST_ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError as e:  # an escaped lone surrogate, e.g. "\ud800"
            raise InputError("not canonical JSON: string holds an unpaired surrogate") from e
    if canonical != data:
        raise InputError("not canonical JSON: bytes differ from the canonical encoding")
    return value


_FAST_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
)
# Digits to "0", everything else to " ": a run of 16 digits becomes a run of 16 "0".
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_HIGH = bytes(range(0xEE, 0x100))


def _needs_full_check(data: bytes) -> bool:
    """Whether the C encoder's output might differ from JCS for this document:
    characters at or above U+E000 (lead bytes 0xEE-0xFF) sort differently in
    UTF-16, and a 16-digit run may be an integer outside the exact range.
    Plain C-level byte operations: this runs for every entry a verifier reads."""
    if not data.isascii() and len(data.translate(None, _HIGH)) != len(data):
        return True
    return b"0000000000000000" in data.translate(_DIGITS)
