"""The demo camera: a real camera's layout, consecutive numbering, deliberate gaps, clips that decode."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import pytest

from drivers.base import DeviceInfo, Recording
from drivers.demo import FPS, STATION_TIME, DemoCamera, Gap, make_clips
from drivers.folder import FolderDriver, parse_identity
from hashing.errors import ConfigError

NAME = re.compile(r"^(?P<serial>[A-Z0-9]+)_(?P<stamp>\d{14})_(?P<number>\d{4})\.MP4$")
SMALL = (160, 96)


def parsed(paths: list[Path]) -> list[tuple[str, datetime, int]]:
    out = []
    for p in paths:
        m = NAME.match(p.name)
        assert m, p.name
        out.append((m["serial"], datetime.strptime(m["stamp"], "%Y%m%d%H%M%S"), int(m["number"])))
    return out


def frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened(), path
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape[:2] in ((SMALL[1], SMALL[0]), (360, 640))
            n += 1
        return n
    finally:
        cap.release()


def test_layout_numbering_and_times(tmp_path: Path) -> None:
    cam = DemoCamera(tmp_path / "cam", serial="DEMO0007", officer="100007", size=SMALL)
    start = datetime(2026, 3, 1, 8, 0, 0)
    first = cam.record(3, 1, start=start)
    more = cam.record(2, 1)  # the next shift: numbering and time run on

    assert all(p.parent == tmp_path / "cam" / "DCIM" / "100MEDIA" for p in first + more)
    info = parsed(first + more)
    assert [n for _, _, n in info] == [1, 2, 3, 4, 5]
    assert {s for s, _, _ in info} == {"DEMO0007"}
    assert [t for _, t, _ in info] == [start + timedelta(seconds=i) for i in range(5)]
    # mtime = end of the clip (device local time)
    assert int((first[0]).stat().st_mtime) == int((start + timedelta(seconds=1)).timestamp())

    ident = parse_identity((tmp_path / "cam" / "recorder.json").read_bytes())
    assert ident == {
        "serial": "DEMO0007",
        "vendor": "evidock",
        "model": "demo camera",
        "officer": "100007",
    }


def test_deliberate_gap_in_numbers_and_time(tmp_path: Path) -> None:
    cam = DemoCamera(tmp_path / "cam", size=SMALL)
    start = datetime(2026, 3, 1, 8, 0, 0)
    paths = cam.record(4, 2, start=start, gap=Gap(after=2, missing=3, seconds=600))
    info = parsed(paths)
    assert [n for _, _, n in info] == [1, 2, 6, 7]
    times = [t for _, t, _ in info]
    assert times[1] - times[0] == timedelta(seconds=2)
    assert times[2] - times[1] == timedelta(seconds=2 + 3 * 2 + 600)
    assert times[3] - times[2] == timedelta(seconds=2)


def test_default_start_ends_now(tmp_path: Path) -> None:
    # the demo camera keeps station time (+08:00), as the story reads file names
    before = datetime.now(STATION_TIME).replace(microsecond=0, tzinfo=None)
    paths = DemoCamera(tmp_path / "cam", size=SMALL).record(2, 1)
    last = parsed(paths)[-1][1]
    assert before - timedelta(seconds=3) <= last <= before + timedelta(seconds=2)


def test_clips_decode(tmp_path: Path) -> None:
    paths = DemoCamera(tmp_path / "cam", size=SMALL).record(2, 1)
    for p in paths:
        assert frames(p) == FPS


def test_make_clips_as_the_demo_uses_them(tmp_path: Path) -> None:
    paths = make_clips(tmp_path / "DCIM", count=2, seconds=1)
    assert [p.name[-9:] for p in paths] == ["_0001.MP4", "_0002.MP4"]
    assert all(p.name.startswith("DEMO0001_") for p in paths)
    assert [frames(p) for p in paths] == [FPS, FPS]


def test_plugged_into_a_watched_root_through_the_folder_driver(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    cam = DemoCamera(tmp_path / "bench", serial="DEMO0009", officer="100009", size=SMALL)
    cam.record(2, 1)
    folder = cam.plug_into(root)
    assert folder == root / "DEMO0009"
    assert sorted(p.name for p in root.iterdir()) == ["DEMO0009"]

    driver = FolderDriver([root])
    device = DeviceInfo.make("folder", str(folder))
    assert driver.matches(device)
    with driver.attach(device) as where:
        ident = driver.identify(device, where)
        assert (ident.serial, ident.officer) == ("DEMO0009", "100009")
        recs = [r for r in driver.recordings(where) if isinstance(r, Recording)]
    assert [r.relpath.rsplit(b"/", 1)[0] for r in recs] == [b"DCIM/100MEDIA"] * 2
    with pytest.raises(ConfigError, match="exists"):
        DemoCamera(tmp_path / "other", serial="DEMO0009").plug_into(root)


def test_identity_file_is_utf8_json(tmp_path: Path) -> None:
    cam = DemoCamera(tmp_path / "cam", officer_name="张三", size=SMALL)
    cam.record(1, 1)
    data = json.loads((tmp_path / "cam" / "recorder.json").read_text("utf-8"))
    assert data["officer_name"] == "张三"
