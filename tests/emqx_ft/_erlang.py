"""The few Erlang/OTP behaviours emqx_ft's observable output depends on.

Each function re-states a rule of the Erlang source it names; none is a general
implementation of the Erlang library function.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# emqx_ft_fs_util.erl, ?IS_UNSAFE(C): '%', ':', '\\', '/'.
_UNSAFE = frozenset("%:\\/")


def is_printable(c: str) -> bool:
    """emqx_ft_fs_util.erl ?IS_PRINTABLE(C) (after io_lib:printable_unicode_list/1)."""
    o = ord(c)
    return 32 <= o <= 126 or 0xA0 <= o < 0xD800 or 0xDFFF < o < 0xFFFE or 0xFFFF < o <= 0x10FFFF


def is_filename_safe(name: str) -> str | None:
    """emqx_ft_fs_util.erl is_filename_safe/1: None when safe, else the error atom's name
    (``empty``, ``special``, ``unsafe``, ``nonprintable``). Note that
    verify_filename_safe/1 skips a '%' without looking at it, so '%' is allowed."""
    if name == "":
        return "empty"
    if name in (".", ".."):
        return "special"
    for c in name:
        if c == "%":
            continue
        if c in _UNSAFE:
            return "unsafe"
        if not is_printable(c):
            return "nonprintable"
    return None


def _percent(raw: bytes) -> str:
    # emqx_ft_fs_util.erl percent_encode/2 + dec2hex/1: '%' and two UPPERCASE hex digits per byte.
    return "".join(f"%{b:02X}" for b in raw)


def escape_filename(name: str) -> str:
    """emqx_ft_fs_util.erl escape_filename/1: "." and ".." are percent-encoded whole;
    otherwise each unsafe or non-printable character is replaced by its UTF-8 bytes
    percent-encoded, the rest kept."""
    if name in (".", ".."):
        return _percent(name.encode())
    return "".join(_percent(c.encode()) if c in _UNSAFE or not is_printable(c) else c for c in name)


def unescape_filename(name: str) -> str:
    """emqx_ft_fs_util.erl unescape_filename/1 (readers of the exports use it)."""
    out = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%" and i + 3 <= len(name):
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out += name[i].encode()
            i += 1
    return out.decode()


# External term format (erts "External Term Format"): version 131, SMALL_TUPLE_EXT 104,
# BINARY_EXT 109 with a 4-byte big-endian length.
_VERSION, _SMALL_TUPLE_EXT, _BINARY_EXT = 131, 104, 109


def term_to_binary_binaries(*items: bytes) -> bytes:
    """erlang:term_to_binary/1 of a tuple of binaries (arity < 256), e.g. the transfer
    ``{ClientId, FileId}`` emqx_ft_storage_exporter_fs.erl mk_transfer_hash/1 hashes."""
    out = bytearray([_VERSION, _SMALL_TUPLE_EXT, len(items)])
    for item in items:
        out += bytes([_BINARY_EXT]) + len(item).to_bytes(4, "big") + item
    return bytes(out)


def transfer_hash_hex(client_id: str, file_id: str) -> str:
    """binary:encode_hex(crypto:hash(sha, term_to_binary({ClientId, FileId}))): UPPERCASE
    hex (emqx_ft_storage_exporter_fs.erl mk_result_reldir/1, ?BUCKET_HASH = sha)."""
    term = term_to_binary_binaries(client_id.encode(), file_id.encode())
    return hashlib.sha1(term, usedforsecurity=False).hexdigest().upper()


_INTEGER = re.compile(r"[+-]?[0-9]+")


def string_to_integer_whole(text: str) -> int | None:
    """``{Int, <<>>} = string:to_integer(Bin)``: an optional sign and decimal digits,
    nothing after them (emqx_ft.erl do_validate/2, offset and size)."""
    if _INTEGER.fullmatch(text) is None:
        return None
    return int(text)


def jiffy_encode(value: Any, *, uescape: bool = False) -> str:
    """emqx_utils_json:encode/1,2 (jiffy) of a decoded JSON value: compact, map keys in
    Erlang map order, which for the small maps emqx_ft encodes (at most 32 keys) is
    sorted; ``uescape`` writes non-ASCII as \\uXXXX. (Floats may differ from jiffy's
    shortest form in the exponent notation; evidock sends none.)"""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=uescape)
