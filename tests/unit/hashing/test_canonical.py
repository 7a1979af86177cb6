"""Canonical JSON: RFC 8785 (JCS) restricted to strings, integers, booleans,
null, arrays and objects, checked against an encoder written here from the RFC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing import canonical
from hashing.canonical import MAX_SAFE_INTEGER
from hashing.errors import InputError

# --------------------------------------------------------------------------
# The model: RFC 8785 §3.2 for the allowed subset.
# --------------------------------------------------------------------------

_SHORT_ESCAPES = {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}


def utf16_units(text: str) -> list[int]:
    """The UTF-16 code units of ``text``, computed by hand (RFC 8785 §3.2.3)."""
    units: list[int] = []
    for ch in text:
        cp = ord(ch)
        if cp > 0xFFFF:
            cp -= 0x10000
            units += [0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)]
        else:
            units.append(cp)
    return units


def model_string(text: str) -> str:
    """RFC 8785 §3.2.2.2: escape '"', '\\' and controls; everything else literal."""
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if cp in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[cp])
        elif cp < 0x20:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def model_encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return model_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(model_encode(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=utf16_units)
        return "{" + ",".join(f"{model_string(k)}:{model_encode(value[k])}" for k in keys) + "}"
    raise TypeError(type(value))


def as_lists(value: Any) -> Any:
    """What loads gives back for a value (tuples become lists)."""
    if isinstance(value, list | tuple):
        return [as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------
# Strategies over the allowed value space
# --------------------------------------------------------------------------

# Any Unicode scalar value (surrogates are tested apart, below), with the
# characters where encoders go wrong made likely.
texts = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # scalar values only: no surrogates
        st.sampled_from(
            ['"', "\\", "/", "\x00", "\x1f", "\x7f", "\u2028", "\ue000", "\U0001f600", "\ufeff"]
        ),
    ),
    max_size=12,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.sampled_from([0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(texts, inner, max_size=5),
    ),
    max_leaves=25,
)
documents = st.one_of(st.lists(values, max_size=5), st.dictionaries(texts, values, max_size=6))


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@settings(max_examples=300)
@given(documents)
def test_dumps_equals_rfc8785_model_and_round_trips(doc: Any) -> None:
    data = canonical.dumps(doc)
    assert data == model_encode(doc).encode("utf-8")
    back = canonical.loads(data)
    assert back == as_lists(doc)
    assert canonical.dumps(back) == data
    # Any conforming JSON parser reads the same value.
    assert json.loads(data) == as_lists(doc)


@given(st.dictionaries(texts, st.integers(0, 9), min_size=2, max_size=8))
def test_keys_are_sorted_by_utf16_code_units(obj: dict[str, int]) -> None:
    parsed = json.loads(canonical.dumps(obj), object_pairs_hook=list)
    keys = [k for k, _ in parsed]
    assert [utf16_units(k) for k in keys] == sorted(utf16_units(k) for k in obj)


def test_key_order_is_utf16_not_code_point() -> None:
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+E000 (RFC 8785 §3.2.3),
    # although its code point is larger.
    obj = {"\ue000": 1, "\U0001f600": 2}
    data = canonical.dumps(obj)
    assert data == '{"\U0001f600":2,"\ue000":1}'.encode()
    assert canonical.loads(data) == obj
    code_point_order = '{"\ue000":1,"\U0001f600":2}'.encode()
    assert json.loads(code_point_order) == obj
    with pytest.raises(InputError):
        canonical.loads(code_point_order)


def test_rfc8785_property_sorting_example() -> None:
    # RFC 8785 §3.2.3's example object, with its stated result order.
    obj = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    parsed = json.loads(canonical.dumps(obj), object_pairs_hook=list)
    assert [v for _, v in parsed] == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


def test_rfc8785_string_escaping_example() -> None:
    # RFC 8785 §3.2.2.2: "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"
    # serialises as "€$\u000f\nA'B\"\\\\\"/".
    source = b'["\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/"]'
    value = json.loads(source)
    assert canonical.dumps(value) == '["€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"]'.encode()
    with pytest.raises(InputError):
        canonical.loads(source)


def test_exact_integer_range_edges() -> None:
    for n in (MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0):
        assert canonical.loads(canonical.dumps([n])) == [n]
    assert MAX_SAFE_INTEGER == 2**53 - 1


def test_empty_containers_and_literals() -> None:
    assert canonical.dumps({}) == b"{}"
    assert canonical.dumps([]) == b"[]"
    assert canonical.dumps([None, True, False, "", [], {}]) == b'[null,true,false,"",[],{}]'
    assert canonical.loads(b'[null,true,false,"",[],{}]') == [None, True, False, "", [], {}]


# --------------------------------------------------------------------------
# Values outside the canonical subset
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        [1.0],
        [0.5],
        [float("nan")],
        [float("inf")],
        [-float("inf")],
        {"a": {"b": [1, 2.5]}},
        [2**53],
        [-(2**53)],
        [2**64],
        {"n": -(2**63)},
        {1: "x"},
        {None: "x"},
        {True: "x"},
        {b"k": "x"},
        {(1, 2): "x"},
        ["\ud800"],
        ["ok", "a\udfffb"],
        {"\udc00": 1},
        {"k": {"\ud83d": 1}},
        [b"bytes"],
        [{1, 2}],
        [object()],
    ],
    ids=repr,
)
def test_dumps_refuses_values_outside_the_subset(value: Any) -> None:
    with pytest.raises(InputError):
        canonical.dumps(value)


@given(st.one_of(st.floats(), st.integers().filter(lambda n: abs(n) > MAX_SAFE_INTEGER)))
def test_dumps_refuses_any_float_or_inexact_integer(number: float) -> None:
    with pytest.raises(InputError):
        canonical.dumps({"v": [number]})


@given(st.text(min_size=0, max_size=4), st.integers(0xD800, 0xDFFF), st.text(max_size=4))
def test_dumps_refuses_any_lone_surrogate(before: str, surrogate: int, after: str) -> None:
    bad = before + chr(surrogate) + after
    with pytest.raises(InputError):
        canonical.dumps([bad])
    with pytest.raises(InputError):
        canonical.dumps({bad: 0})


# --------------------------------------------------------------------------
# Bytes that are not exactly canonical
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}',  # whitespace after ':'
        b'{"a":1 }',
        b' {"a":1}',
        b'{"a":1}\n',
        b"[1, 2]",
        b"[\n1]",
        b'{"b":1,"a":2}',  # unsorted keys
        b'{"a":1,"a":1}',  # duplicate keys, even with equal values
        b'{"a":1,"a":2}',
        b"[1.0]",  # a float, even an integral one
        b"[1e2]",
        b"[1E2]",
        b"[0.0]",
        b"[-0]",  # negative zero
        b"[01]",
        b"[+1]",
        b"[9007199254740992]",  # 2**53
        b"[-9007199254740992]",
        b"[NaN]",
        b"[Infinity]",
        b"[-Infinity]",
        b'["\\u0041"]',  # escaped where a literal is canonical
        b'["\\/"]',
        b'["\\u00e9"]',
        b'["\\u001F"]',  # upper-case hex: JCS writes lower case
        b'["\\u0009"]',  # JCS writes \\t
        b'["\\u007f"]',  # DEL is written literally
        b'["\\ud83d\\ude00"]',  # a pair escaped where the literal is canonical
        b'["\\ud800"]',  # an escaped lone surrogate
        b'{"\\udfff":1}',
        b'["\\ude00\\ud83d"]',  # a pair in the wrong order: two lone surrogates
        b'["\xff"]',  # not UTF-8
        b'["\xed\xa0\x80"]',  # a surrogate in UTF-8 (CESU)
        b'\xef\xbb\xbf{"a":1}',  # byte order mark
        b"1",  # top level must be an object or an array
        b'"text"',
        b"null",
        b"true",
        b"",
        b"[",
        b"[1,]",
        b'{"a":1}{"a":1}',
        b'["a"] ',
    ],
    ids=repr,
)
def test_loads_refuses_non_canonical_bytes(data: bytes) -> None:
    with pytest.raises(InputError):
        canonical.loads(data)


def test_loads_accepts_the_canonical_spellings_of_the_refused_ones() -> None:
    for data in (
        b'{"a":1}',
        b"[1,2]",
        b'{"a":2,"b":1}',
        b"[0]",
        b"[9007199254740991]",
        b'["A"]',
        b'["/"]',
        b'["\xc3\xa9"]',
        b'["\\u001f"]',
        b'["\\t"]',
        b'["\x7f"]',
        '["\U0001f600"]'.encode(),
    ):
        assert canonical.dumps(canonical.loads(data)) == data


@settings(max_examples=200)
@given(st.dictionaries(texts, values, min_size=1, max_size=6))
def test_loads_refuses_other_encodings_of_the_same_value(obj: dict[str, Any]) -> None:
    canonical_bytes = canonical.dumps(obj)
    variants = [
        json.dumps(obj, ensure_ascii=True, separators=(",", ":"), sort_keys=True),
        json.dumps(obj, ensure_ascii=False),
        # Code-point key order: canonical only where it agrees with UTF-16 order.
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"), indent=1),
        json.dumps(dict(reversed(list(obj.items()))), ensure_ascii=False, separators=(",", ":")),
        canonical_bytes.decode() + " ",
    ]
    for variant in variants:
        data = variant.encode("utf-8")
        if data == canonical_bytes:
            continue  # the same bytes by chance (e.g. one ASCII key)
        with pytest.raises(InputError):
            canonical.loads(data)


@given(documents)
def test_loads_refuses_duplicated_keys_anywhere(doc: Any) -> None:
    data = canonical.dumps({"k": doc})
    duplicated = b'{"k":' + canonical.dumps(doc) + b',"k":' + canonical.dumps(doc) + b"}"
    assert canonical.loads(data) == {"k": as_lists(doc)}
    with pytest.raises(InputError):
        canonical.loads(duplicated)


@settings(max_examples=300)
@given(documents, st.booleans(), st.booleans(), st.sampled_from([None, (",", ":"), (", ", ": ")]))
def test_loads_accepts_exactly_the_model_encoding(
    doc: Any, ascii_only: bool, sort: bool, separators: tuple[str, str] | None
) -> None:
    """Whatever JSON text is offered, loads accepts it iff it is the model's bytes."""
    data = json.dumps(doc, ensure_ascii=ascii_only, sort_keys=sort, separators=separators).encode()
    if data == model_encode(json.loads(data)).encode():
        assert canonical.loads(data) == as_lists(doc)
    else:
        with pytest.raises(InputError):
            canonical.loads(data)
