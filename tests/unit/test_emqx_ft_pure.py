"""The pure parts of the emqx_ft stand-in, against values derived by hand from the
Erlang source's rules (cited per test)."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.emqx_ft import ft
from tests.emqx_ft._erlang import (
    escape_filename,
    is_filename_safe,
    term_to_binary_binaries,
    transfer_hash_hex,
    unescape_filename,
)
from tests.emqx_ft.filemeta import FilemetaError, NotAnObjectError, decode


def test_term_to_binary_of_two_binaries() -> None:
    # External Term Format: 131, SMALL_TUPLE_EXT(104) arity 2, BINARY_EXT(109) len32 bytes.
    assert term_to_binary_binaries(b"a", b"bc") == bytes(
        [131, 104, 2, 109, 0, 0, 0, 1, 97, 109, 0, 0, 0, 2, 98, 99]
    )
    expected = hashlib.sha1(
        bytes([131, 104, 2, 109, 0, 0, 0, 1]) + b"c" + bytes([109, 0, 0, 0, 1]) + b"f",
        usedforsecurity=False,
    ).hexdigest()
    assert transfer_hash_hex("c", "f") == expected.upper()  # binary:encode_hex is uppercase


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        (".", "%2E"),  # escape_filename(<<".">>): percent_encode of the whole name
        ("..", "%2E%2E"),
        ("a/b", "a%2Fb"),  # ?IS_UNSAFE
        ("50%", "50%25"),
        ("c:\\d", "c%3A%5Cd"),
        ("évidence", "évidence"),  # 0xE9 >= 0xA0: printable
        ("a\nb", "a%0Ab"),  # < 32
        ("\x7f", "%7F"),  # 127 is not in 32..126
        ("\u0085", "%C2%85"),  # below 0xA0: its UTF-8 bytes
        ("evidock-dock-01", "evidock-dock-01"),
    ],
)
def test_escape_filename(name: str, escaped: str) -> None:
    assert escape_filename(name) == escaped
    assert unescape_filename(escaped) == name


@given(st.text())
def test_escape_roundtrips(name: str) -> None:
    name = name.encode("utf-8", "replace").decode("utf-8", "replace")
    assert unescape_filename(escape_filename(name)) == name


@pytest.mark.parametrize(
    ("name", "error"),
    [("", "empty"), (".", "special"), ("..", "special"), ("a/b", "unsafe"), ("a:b", "unsafe"),
     ("a\\b", "unsafe"), ("a\tb", "nonprintable"), ("100%", None), ("clip.mp4", None)],
)  # fmt: skip
def test_is_filename_safe(name: str, error: str | None) -> None:
    assert is_filename_safe(name) == error


def _meta(**kw: object) -> bytes:
    return json.dumps({"name": "f.mp4", **kw}).encode()


@pytest.mark.parametrize(
    "payload",
    [
        _meta(segments_ttl=0),  # pos_integer
        _meta(size=-1),
        _meta(size=True),
        _meta(size=1.5),
        _meta(checksum="ab"),
        _meta(checksum="z" * 64),
        _meta(name="x" * 241),
        _meta(name="a/b"),
        _meta(name=5),
        json.dumps({"foo": "bar"}).encode(),  # name is required
    ],
)
def test_invalid_filemeta(payload: bytes) -> None:
    with pytest.raises(FilemetaError) as e:
        decode(payload)
    assert e.value.reason == "invalid_filemeta"


def test_filemeta_json_and_shape() -> None:
    with pytest.raises(FilemetaError) as e:
        decode(b"{oops;")
    assert e.value.reason == "invalid_filemeta_json"
    with pytest.raises(NotAnObjectError):
        decode(b"[1]")


def test_filemeta_decoding_rules() -> None:
    m = decode(_meta(size="12", extra=1, user_data={"b": 1, "a": [True, None]}, name="é" * 120))
    assert m.size == 12  # hocon converts digit strings
    assert m.encode() == (
        '{"name":"' + "é" * 120 + '","size":12,"user_data":{"a":[true,null],"b":1}}'
    )
    assert m.encode(uescape=True).startswith('{"name":"\\u00e9')
    sha = "ab" * 32
    assert decode(_meta(checksum=sha)).same_as(decode(_meta(checksum=sha.upper())))
    assert not decode(_meta(user_data=1)).same_as(decode(_meta(user_data=1.0)))
    assert not decode(_meta()).same_as(decode(_meta(user_data=None)))


@pytest.mark.parametrize(
    ("topic", "kind", "detail"),
    [
        ("$file/f/init/x", ft.Refused, "invalid_offset"),
        ("$file/f", ft.Refused, "invalid_file_command"),
        ("$file/f/", ft.Refused, "invalid_offset"),
        ("$file/", ft.Refused, "invalid_fileid"),
        ("$file/f/fin/offset", ft.Refused, "invalid_size"),
        ("$file/f/fin/42/xyz", ft.Refused, "invalid_checksum"),
        ("$file/f/fin/1/2/3", ft.Refused, "invalid_file_command"),
        ("$file/f/fin", ft.Refused, "invalid_offset"),
        ("$file-async/f/abort", ft.Abort, None),
        ("$file-async/f/+5", ft.Segment, None),  # string:to_integer takes a sign
        ("$file-async/f/fin/10", ft.Fin, None),
    ],
)
def test_parse(topic: str, kind: type, detail: str | None) -> None:
    cmd = ft.parse(topic, b"")
    assert isinstance(cmd, kind)
    if isinstance(cmd, ft.Refused):
        assert cmd.error.description == detail
        assert ft.rc(cmd.error) == 0x80


def test_segment_checksum() -> None:
    good = hashlib.sha256(b"abc").hexdigest()
    assert isinstance(ft.parse(f"$file/f/0/{good}", b"abc"), ft.Segment)
    bad = ft.parse(f"$file/f/0/{good}", b"abd")
    assert isinstance(bad, ft.Refused) and bad.error.description == "checksum_mismatch"


def test_transfer_state_and_coverage() -> None:
    t = ft.Transfer("c", "f")
    a, b = decode(_meta(size=10)), decode(_meta(size=11))
    r, t = ft.on_init(t, a)
    assert isinstance(r, ft.Ok)
    assert isinstance(ft.on_init(t, a)[0], ft.Ok)
    assert ft.on_init(t, b)[0] == ft.Error("filemeta_conflict")
    for off, n in ((0, 4), (4, 6), (0, 2), (2, 8), (3, 0)):
        _, t = ft.on_segment(t, off, n)
    plan = ft.fin_plan(t, 10)
    assert isinstance(plan, list)
    assert plan[0][0] == 0 and sum(n for _, n in plan) == 10  # a contiguous chain 0..10
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(plan))
    assert ft.fin_plan(t, 9) == ft.Error("incomplete", "missing segments below 9")
    assert ft.fin_plan(ft.Transfer("c", "f"), 0) == ft.Error("incomplete", "missing filemeta")
    assert ft.coverage(frozenset(), 0) == []


def test_fin_checksum_mismatch_is_internal_error() -> None:
    m = decode(_meta(checksum="00" * 32))
    assert ft.export_checksum(m, None, b"\x01" * 32).description == "internal_error"
    assert isinstance(ft.export_checksum(m, b"\x01" * 32, b"\x01" * 32), ft.Ok)


def test_clamp_segments_ttl() -> None:
    assert ft.clamp_segments_ttl(None, 300, 86400) == 86400
    assert ft.clamp_segments_ttl(1, 300, 86400) == 300
    assert ft.clamp_segments_ttl(10**9, 300, 86400) == 86400
    assert ft.clamp_segments_ttl(600, 300, 86400) == 600


def test_response_shape() -> None:
    assert ft.response("$file/f/init", 7, ft.Error("filemeta_conflict")) == {
        "vsn": "0.1", "topic": "$file/f/init", "packet_id": 7, "reason_code": 128,
        "reason_description": "filemeta_conflict",
    }  # fmt: skip
