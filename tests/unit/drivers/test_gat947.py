"""GA/T 947.4 driver parts that need no library: layout, decoding, clock parsing, matching,
configuration checks. The conversation with a library is in tests/integration/test_gat947.py."""

from __future__ import annotations

import ctypes
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from drivers.base import DeviceInfo
from drivers.gat947 import Gat947Driver, ZfyInfo, decode_field, parse_device_time
from hashing.errors import ConfigError

LIB = Path("/nonexistent/libzfy.so")


def usb(vid: str = "2B1E", pid: str = "0947", **props: str) -> DeviceInfo:
    return DeviceInfo.make(
        "usb",
        "/sys/devices/usb1/1-1",
        properties={"DEVTYPE": "usb_device", "ID_VENDOR_ID": vid, "ID_MODEL_ID": pid, **props},
    )


def test_zfy_info_layout_matches_vendor_headers() -> None:
    assert ctypes.sizeof(ZfyInfo) == 94
    assert [(f[0], getattr(ZfyInfo, f[0]).offset) for f in ZfyInfo._fields_] == [
        ("cSerial", 0),
        ("userNo", 8),
        ("userName", 15),
        ("unitNo", 48),
        ("unitName", 61),
    ]


@pytest.mark.parametrize(
    ("raw", "text", "clean"),
    [
        ("张三".encode("gbk"), "张三", True),
        (b"100234", "100234", True),
        (b"  ZFY0042 ", "ZFY0042", True),
        (b"", "", True),
        (b"\xd5\xc5\xff", "张\ufffd", False),  # truncated / invalid GBK
        (b"ab\x1bc", "ab\ufffdc", False),  # an escape sequence must not reach a terminal or log
    ],
)
def test_decode_field(raw: bytes, text: str, clean: bool) -> None:
    assert decode_field(raw) == (text, clean)


def test_parse_device_time() -> None:
    tz8 = timezone(timedelta(hours=8))
    want = datetime(2026, 3, 1, 8, 30, 5, tzinfo=tz8)
    for text in ("2026-03-01 08:30:05", "20260301083005", "2026/03/01 08:30:05"):
        assert parse_device_time(text, tz8) == want
    local = parse_device_time("2026-03-01 08:30:05")
    assert local.tzinfo is not None
    assert local.replace(tzinfo=None) == datetime(2026, 3, 1, 8, 30, 5)
    for bad in ("", "yesterday", "2026-13-01 00:00:00", "2026-03-01T08:30:05Z"):
        with pytest.raises(ValueError, match="unrecognised device time"):
            parse_device_time(bad, UTC)


def test_matches_only_listed_usb_devices() -> None:
    d = Gat947Driver(LIB, "x", usb_ids=["2b1e:0947", "ABCD:0001"])
    assert d.matches(usb())
    assert d.matches(usb("abcd", "0001"))
    assert not d.matches(usb("2b1e", "0948"))
    assert not d.matches(usb(DEVTYPE="usb_interface"))
    assert not d.matches(
        DeviceInfo.make("block", "/sys/block/sdb", properties=dict(usb().properties))
    )
    by_attr = DeviceInfo.make("usb", "/sys/x", attributes={"idVendor": "2b1e", "idProduct": "0947"})
    assert d.matches(by_attr)
    assert not Gat947Driver(LIB, "x").matches(usb())  # no ids configured: nothing matches


@pytest.mark.parametrize("bad", ["2b1e", "2b1e:947", "2b1e:09470", "zzzz:0947", ":", ""])
def test_usb_ids_are_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="vvvv:pppp"):
        Gat947Driver(LIB, "x", usb_ids=[bad])


def test_password_is_never_shown_and_must_be_usable() -> None:
    d = Gat947Driver(LIB, "Hunter2-Admin")
    assert "Hunter2" not in repr(d)
    assert "Hunter2" not in repr(vars(d))
    with pytest.raises(ConfigError, match="NUL") as info:
        Gat947Driver(LIB, "ab\0cd")
    assert "ab\0cd" not in str(info.value)
    with pytest.raises(ConfigError, match="GBK") as info:
        Gat947Driver(LIB, "pässwörd-😀")
    assert "😀" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
