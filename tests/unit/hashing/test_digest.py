"""One-pass digests: whole-file SHA-256, length and the RFC 9162 chunk tree."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing.digest import (
    CHUNK_SIZE,
    FileDigest,
    StreamDigester,
    chunk_ranges_differing,
    digest_file,
)
from hashing.merkle import EMPTY_ROOT
from tests.unit.hashing.test_merkle import model_mth

SMALL = 64  # a small chunk size, so that pieces cross chunk boundaries all the time


def model_chunks(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def model_chunk_hashes(data: bytes, chunk_size: int) -> tuple[bytes, ...]:
    return tuple(
        hashlib.sha256(b"\x00" + chunk).digest() for chunk in model_chunks(data, chunk_size)
    )


def check_digest(result: FileDigest, data: bytes, chunk_size: int) -> None:
    assert result.sha256 == hashlib.sha256(data).digest()
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.chunk_size == chunk_size
    assert result.chunk_hashes == model_chunk_hashes(data, chunk_size)
    assert result.chunk_root == model_mth(model_chunks(data, chunk_size))


@st.composite
def data_and_pieces(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Random bytes and a random way to cut them (empty pieces included)."""
    data = draw(st.binary(max_size=1500))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=150, deadline=None)
@given(data_and_pieces(), st.booleans(), st.sampled_from([1, 3, SMALL, 100]))
def test_stream_digester_matches_hashlib_and_chunk_model(
    case: tuple[bytes, list[bytes]], parallel: bool, chunk_size: int
) -> None:
    data, pieces = case
    with StreamDigester(chunk_size, parallel=parallel) as digester:
        for piece in pieces:
            digester.update(piece)
        assert digester.size == len(data)
        result = digester.finish()
    check_digest(result, data, chunk_size)


@settings(max_examples=60, deadline=None)
@given(data_and_pieces(), st.booleans())
def test_caller_may_reuse_its_buffer(case: tuple[bytes, list[bytes]], parallel: bool) -> None:
    """update() must be done with the buffer when it returns (style.md 10)."""
    data, pieces = case
    buf = bytearray(max((len(p) for p in pieces), default=0) + 1)
    view = memoryview(buf)
    with StreamDigester(SMALL, parallel=parallel) as digester:
        for piece in pieces:
            buf[: len(piece)] = piece
            digester.update(view[: len(piece)])
            buf[:] = b"\xa5" * len(buf)  # scribble over it at once
        result = digester.finish()
    check_digest(result, data, SMALL)


@pytest.mark.parametrize("parallel", [True, False])
def test_empty_input(parallel: bool) -> None:
    with StreamDigester(SMALL, parallel=parallel) as digester:
        digester.update(b"")
        result = digester.finish()
    assert result.sha256 == hashlib.sha256(b"").digest()
    assert (result.size, result.chunk_hashes) == (0, ())
    assert result.chunk_root == EMPTY_ROOT


@pytest.mark.parametrize("parallel", [True, False])
def test_exact_chunk_boundaries(parallel: bool) -> None:
    rng = random.Random(7)
    for n in (SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 3 * SMALL - 1, 8 * SMALL):
        data = rng.randbytes(n)
        for step in (1, SMALL, SMALL - 1, SMALL + 1, n):
            with StreamDigester(SMALL, parallel=parallel) as digester:
                for i in range(0, n, step):
                    digester.update(data[i : i + step])
                check_digest(digester.finish(), data, SMALL)


def test_accepts_bytes_bytearray_memoryview_and_wide_views() -> None:
    data = bytes(range(256)) * 3
    with StreamDigester(SMALL) as digester:
        digester.update(data[:100])
        digester.update(bytearray(data[100:300]))
        digester.update(memoryview(data[300:400]))
        # A view with 4-byte items: update counts bytes, not items.
        digester.update(memoryview(bytearray(data[400:768])).cast("I"))
        result = digester.finish()
    check_digest(result, data, SMALL)


def test_default_chunk_size_is_one_mebibyte() -> None:
    assert CHUNK_SIZE == 1 << 20
    data = random.Random(1).randbytes(CHUNK_SIZE * 2 + 12345)
    with StreamDigester() as digester:
        digester.update(data)
        result = digester.finish()
    check_digest(result, data, CHUNK_SIZE)
    assert len(result.chunk_hashes) == 3


@pytest.mark.parametrize("drop_cache", [False, True])
def test_digest_file(tmp_path: Path, drop_cache: bool) -> None:
    data = random.Random(2).randbytes(5 * 1024 + 17)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    check_digest(digest_file(path, chunk_size=1024, drop_cache=drop_cache), data, 1024)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    check_digest(digest_file(empty, chunk_size=1024), b"", 1024)


# --------------------------------------------------------------------------
# chunk_ranges_differing
# --------------------------------------------------------------------------


def model_ranges(a: bytes, b: bytes, chunk_size: int) -> list[tuple[int, int]]:
    """Byte ranges of the chunks whose bytes differ, adjacent ones merged."""
    longest = max(len(a), len(b))
    n = -(-longest // chunk_size)
    differing = [
        i
        for i in range(n)
        if a[i * chunk_size : (i + 1) * chunk_size] != b[i * chunk_size : (i + 1) * chunk_size]
    ]
    ranges: list[list[int]] = []
    for i in differing:
        start, end = i * chunk_size, min((i + 1) * chunk_size, longest)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
    return [(s, e) for s, e in ranges]


def _ranges(a: bytes, b: bytes, chunk_size: int = SMALL) -> list[tuple[int, int]]:
    return chunk_ranges_differing(
        model_chunk_hashes(a, chunk_size),
        model_chunk_hashes(b, chunk_size),
        len(a),
        len(b),
        chunk_size,
    )


def test_chunk_ranges_name_the_right_ranges() -> None:
    a = bytes(1000)
    assert _ranges(a, a) == []
    one = bytearray(a)
    one[130] = 1
    assert _ranges(a, bytes(one)) == [(128, 192)]
    two = bytearray(one)
    two[700] = 1
    assert _ranges(a, bytes(two)) == [(128, 192), (640, 704)]
    adjacent = bytearray(a)
    adjacent[191] = adjacent[192] = 1
    assert _ranges(a, bytes(adjacent)) == [(128, 256)]
    last = bytearray(a)
    last[999] = 1
    assert _ranges(a, bytes(last)) == [(960, 1000)]  # the short last chunk ends at the size
    assert _ranges(a, a[:900]) == [(896, 1000)]  # truncated: reaches the longer end
    assert _ranges(a, a + b"more") == [(960, 1004)]  # grew
    assert _ranges(a, a + bytes(24)) == [(960, 1024)]
    assert _ranges(a, a + bytes(25)) == [(960, 1025)]
    assert _ranges(b"", b"x") == [(0, 1)]
    assert _ranges(a, b"") == [(0, 1000)]
    assert _ranges(a, a, chunk_size=1024) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=700), st.data())
def test_chunk_ranges_match_model(original: bytes, data: st.DataObject) -> None:
    edited = bytearray(original)
    for pos in data.draw(st.lists(st.integers(0, max(len(original) - 1, 0)), max_size=5)):
        if pos < len(edited):
            edited[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.sampled_from(["same", "truncate", "extend"]))
    if cut == "truncate":
        edited = edited[: data.draw(st.integers(0, len(edited)))]
    elif cut == "extend":
        edited += data.draw(st.binary(min_size=1, max_size=200))
    got = _ranges(original, bytes(edited))
    assert got == model_ranges(original, bytes(edited), SMALL)
    # Every byte that differs is inside a named range, and ranges never overlap.
    for i in range(max(len(original), len(edited))):
        x = original[i] if i < len(original) else None
        y = edited[i] if i < len(edited) else None
        if x != y:
            assert any(s <= i < e for s, e in got)
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(got))
