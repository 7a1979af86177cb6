"""FileMeta as emqx_ft decodes, compares and encodes it (emqx_ft_schema.erl schema(filemeta)).

decode (emqx_ft_schema.erl decode/2 through hocon_tconf:check_plain/3):
- the payload must be JSON, else ``{invalid_filemeta_json, _}``;
- a JSON value that is not an object makes decode/2 crash (no clause), which the hook
  runner swallows (emqx_hooks.erl do_run_fold/3): see ``NotAnObjectError``;
- unknown root keys are dropped silently (hocon_tconf.erl filter_by_roots/3);
- ``name`` is required (its field says ``required => true``; the rest are optional,
  emqx_ft_schema.erl passes ``required => false``), a string, at most 240 UTF-8 bytes
  (?MAX_FILENAME_BYTELEN) and is_filename_safe;
- ``size`` and ``expire_at`` non_neg_integer, ``segments_ttl`` pos_integer; a digit
  string is converted to an integer first (hocon_schema_builtin.erl convert/2);
- ``checksum`` 64 hex digits (converter(checksum)), kept as {sha256, Bytes}, so its
  case does not matter for equality;
- ``user_data`` any JSON value.
Every schema failure is ``{invalid_filemeta, Errors}``, described as ``invalid_filemeta``
(emqx_ft_error.erl format/1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tests.emqx_ft._erlang import is_filename_safe, jiffy_encode, string_to_integer_whole

MAX_FILENAME_BYTELEN = 240  # emqx_ft_schema.erl ?MAX_FILENAME_BYTELEN


class FilemetaError(Exception):
    """A refused filemeta; ``reason`` is the Erlang error term's first atom."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NotAnObjectError(Exception):
    """Valid JSON that is not an object: emqx_ft_schema.erl decode/2 has no clause for it,
    the 'message.puback' callback crashes and EMQX answers the hook's default code."""


_MISSING = object()


def _strict(value: Any) -> Any:
    """A form whose == is Erlang's exact match on decoded JSON: 1 and 1.0 differ,
    and so do true and 1."""
    if isinstance(value, bool) or value is None:
        return ("atom", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, str):
        return ("bin", value)
    if isinstance(value, list):
        return ("list", tuple(_strict(v) for v in value))
    if isinstance(value, dict):
        return ("map", tuple(sorted((k, _strict(v)) for k, v in value.items())))
    raise TypeError(f"not a JSON value: {type(value).__name__}")


@dataclass(frozen=True)
class FileMeta:
    """A decoded filemeta; ``user_data`` is kept as parsed JSON (None means absent,
    ``user_data_present`` tells a JSON null from an absent key)."""

    name: str
    size: int | None = None
    checksum: bytes | None = None  # the SHA-256 digest, 32 bytes
    expire_at: int | None = None
    segments_ttl: int | None = None
    user_data: Any = None
    user_data_present: bool = False

    def same_as(self, other: FileMeta) -> bool:
        """emqx_ft_storage_fs.erl store_filemeta/3: ``{ok, Meta}`` matches the stored
        term exactly (Erlang term equality, so 1 /= 1.0)."""
        return self._key() == other._key()

    def _key(self) -> tuple[Any, ...]:
        ud = _strict(self.user_data) if self.user_data_present else _MISSING
        return (self.name, self.size, self.checksum, self.expire_at, self.segments_ttl, ud)

    def serializable(self, checksum: bytes | None = None) -> dict[str, Any]:
        """emqx_ft_schema.erl encode(filemeta, _) (hocon make_serializable): present
        fields only, the checksum as UPPERCASE hex (binary:encode_hex/1)."""
        out: dict[str, Any] = {"name": self.name}
        digest = checksum if checksum is not None else self.checksum
        if digest is not None:
            out["checksum"] = digest.hex().upper()
        for key in ("size", "expire_at", "segments_ttl"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.user_data_present:
            out["user_data"] = self.user_data
        return out

    def encode(self, checksum: bytes | None = None, *, uescape: bool = False) -> str:
        """The JSON text EMQX writes for this filemeta (see serializable)."""
        return jiffy_encode(self.serializable(checksum), uescape=uescape)


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, str):
        converted = string_to_integer_whole(value)
        value = converted if converted is not None else value
    if isinstance(value, bool) or not isinstance(value, int):
        raise FilemetaError("invalid_filemeta", f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise FilemetaError("invalid_filemeta", f"{key}: must be >= {minimum}, got {value}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        # converter(unicode_string): throw({expected_type, string})
        raise FilemetaError("invalid_filemeta", f"name: expected a string, got {value!r}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTELEN:
        raise FilemetaError("invalid_filemeta", "name: max_length_exceeded")
    unsafe = is_filename_safe(value)
    if unsafe is not None:
        raise FilemetaError("invalid_filemeta", f"name: {unsafe}")
    return value


def _checksum(value: Any) -> bytes:
    # converter(checksum): a binary of exactly 64 bytes, then binary:decode_hex/1
    # (a crash in it is a converter_crashed validation error: hocon_tconf do_apply_converter).
    if not isinstance(value, str) or len(value.encode()) != 64:
        raise FilemetaError("invalid_filemeta", f"checksum: expected 64 hex digits, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError as e:
        raise FilemetaError("invalid_filemeta", f"checksum: not hex: {value!r}") from e


def _no_nan(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise FilemetaError("invalid_filemeta_json", "NaN or Infinity is not JSON")


def decode(payload: bytes) -> FileMeta:
    """Decode and validate an init payload as emqx_ft.erl decode_filemeta/1 does.

    Raises FilemetaError (``invalid_filemeta_json`` or ``invalid_filemeta``) or
    NotAnObjectError."""
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=lambda c: _no_nan(float(c)))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FilemetaError("invalid_filemeta_json", str(e)) from e
    if not isinstance(data, dict):
        raise NotAnObjectError(type(data).__name__)
    if "name" not in data or data["name"] is None:
        raise FilemetaError("invalid_filemeta", "name: required_field")
    fields: dict[str, Any] = {"name": _name(data["name"])}
    for key, minimum in (("size", 0), ("expire_at", 0), ("segments_ttl", 1)):
        if data.get(key) is not None:
            fields[key] = _integer(key, data[key], minimum)
    if data.get("checksum") is not None:
        fields["checksum"] = _checksum(data["checksum"])
    if "user_data" in data:
        fields["user_data"] = data["user_data"]
        fields["user_data_present"] = True
    return FileMeta(**fields)
