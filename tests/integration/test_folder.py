"""The folder driver and watcher on real folders, with watchdog's real inotify observer."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.base import DeviceInfo, Recording, Refused
from drivers.folder import (
    MAX_IDENTITY_BYTES,
    FolderDriver,
    FolderWatcher,
    IdentityFileError,
    serial_from_name,
)
from hashing.errors import DeviceError

QUIET = 0.3
WAIT = 5.0


class Seen:
    """Collects watcher reports; lets a test wait for them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, DeviceInfo, float]] = []
        self._cond = threading.Condition()

    def __call__(self, action: str, info: DeviceInfo) -> None:
        with self._cond:
            self.events.append((action, info, time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[tuple[str, DeviceInfo, float]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= count, timeout)
            assert len(self.events) >= count, f"expected {count} reports, got {self.summary()}"
            return list(self.events)

    def summary(self) -> list[tuple[str, str]]:
        return [(a, Path(i.sys_path).name) for a, i, _ in self.events]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "incoming"
    r.mkdir()
    return r


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def watch(root: Path, seen: Seen) -> Iterator[FolderWatcher]:
    watcher = FolderWatcher([root], seen, quiet_s=QUIET)
    yield watcher
    watcher.stop()


def identity(folder: Path, **values: object) -> None:
    (folder / "recorder.json").write_text(json.dumps(values), encoding="utf-8")


def test_folders_present_at_start_are_reported(
    root: Path, tmp_path: Path, seen: Seen, watch: FolderWatcher
) -> None:
    (root / "CAM1" / "DCIM").mkdir(parents=True)
    identity(root / "CAM1", serial="ZFY0001", vendor="Acme", officer="100001")
    (root / "CAM2").mkdir()
    (root / ".partial").mkdir()
    (root / "notes.txt").write_text("not a recorder")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "LINKED").symlink_to(elsewhere, target_is_directory=True)

    watch.start()
    events = seen.wait_for(2)
    time.sleep(QUIET * 2)
    assert sorted(seen.summary()) == [("add", "CAM1"), ("add", "CAM2")]
    infos = {Path(i.sys_path).name: i for _, i, _ in events}
    assert infos["CAM1"].subsystem == "folder"
    assert infos["CAM1"].sys_path == str(root / "CAM1")
    assert infos["CAM1"].serial == "ZFY0001"
    assert infos["CAM1"].vendor == "Acme"
    assert infos["CAM1"].prop("EVIDOCK_OFFICER") == "100001"
    assert infos["CAM1"].prop("EVIDOCK_IDENTITY") == "recorder.json"
    assert infos["CAM2"].serial == "CAM2"
    assert infos["CAM2"].prop("EVIDOCK_IDENTITY") == "folder name"


def test_new_folder_is_reported_once_settled_then_removal(root: Path, seen: Seen) -> None:
    quiet = 0.6  # wide margin over the gaps between writes below, for a loaded CI machine
    watch = FolderWatcher([root], seen, quiet_s=quiet)
    watch.start()
    try:
        _settle_then_remove(root, seen, quiet)
    finally:
        watch.stop()


def _settle_then_remove(root: Path, seen: Seen, quiet: float) -> None:
    cam = root / "ZFY0042"
    (cam / "DCIM").mkdir(parents=True)
    # A sync tool copying progressively: changes closer together than the quiet period.
    clip = cam / "DCIM" / "ZFY0042_20260101080000_0001.MP4"
    for n in range(5):
        with clip.open("ab") as f:
            f.write(os.urandom(4096))
        last_write = time.monotonic()
        time.sleep(0.1)
        assert seen.events == [], f"reported while still being copied (write {n})"
    action, info, at = seen.wait_for(1)[0]
    assert action == "add"
    assert info.sys_path == str(cam)
    assert at - last_write >= quiet * 0.9

    # Changes inside a reported folder are the session's business, not a new report.
    (cam / "DCIM" / "more.MP4").write_bytes(b"x")
    time.sleep(QUIET * 2)
    assert len(seen.events) == 1

    shutil.rmtree(cam)
    action, gone, _ = seen.wait_for(2)[1]
    assert (action, gone) == ("remove", info)


def test_moved_in_and_moved_out(
    root: Path, tmp_path: Path, seen: Seen, watch: FolderWatcher
) -> None:
    watch.start()
    # Built under a hidden name (ignored), then renamed into view.
    staging = root / ".CAM7.partial"
    (staging / "DCIM").mkdir(parents=True)
    (staging / "DCIM" / "a.MP4").write_bytes(b"a")
    staging.rename(root / "CAM7")
    # Moved in from outside the root.
    outside = tmp_path / "CAM8"
    outside.mkdir()
    outside.rename(root / "CAM8")
    seen.wait_for(2)
    assert sorted(seen.summary()) == [("add", "CAM7"), ("add", "CAM8")]

    (root / "CAM7").rename(tmp_path / "archived")
    (root / "CAM8").rename(root / "CAM9")  # within the root: a remove and an add
    seen.wait_for(5)
    time.sleep(QUIET)
    assert sorted(seen.summary()[2:]) == [("add", "CAM9"), ("remove", "CAM7"), ("remove", "CAM8")]


def test_folder_gone_before_it_settled_is_never_reported(
    root: Path, seen: Seen, watch: FolderWatcher
) -> None:
    watch.start()
    (root / "BLINK").mkdir()
    time.sleep(QUIET / 3)
    (root / "BLINK").rmdir()
    time.sleep(QUIET * 3)
    assert seen.events == []


def test_symlinked_folder_is_refused_not_followed(
    root: Path, tmp_path: Path, seen: Seen, watch: FolderWatcher
) -> None:
    secret = tmp_path / "etc-like"
    secret.mkdir()
    (secret / "shadow").write_text("not for the dock")
    watch.start()
    link = root / "EVIL"
    link.symlink_to(secret, target_is_directory=True)
    (root / "GOOD").mkdir()
    seen.wait_for(1)
    time.sleep(QUIET * 2)
    assert seen.summary() == [("add", "GOOD")]

    driver = FolderDriver([root])
    device = DeviceInfo.make("folder", str(link))
    with pytest.raises(DeviceError, match="symbolic link"), driver.attach(device):
        pass
    # Even handed the link as a root, listing refuses to go through it.
    with pytest.raises(DeviceError):
        list(driver.recordings(link))


def test_callback_failure_does_not_stop_the_watcher(root: Path) -> None:
    got: list[str] = []

    def flaky(action: str, info: DeviceInfo) -> None:
        got.append(Path(info.sys_path).name)
        if len(got) == 1:
            raise RuntimeError("agent hiccup")

    with FolderWatcher([root], flaky, quiet_s=QUIET):
        (root / "A").mkdir()
        time.sleep(QUIET * 2)
        (root / "B").mkdir()
        deadline = time.monotonic() + WAIT
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert got == ["A", "B"]


def test_stop_returns_promptly(root: Path, seen: Seen) -> None:
    watcher = FolderWatcher([root], seen, quiet_s=30)
    watcher.start()
    (root / "SLOW").mkdir()
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 1.5
    assert seen.events == []


def test_missing_root_is_refused(tmp_path: Path, seen: Seen) -> None:
    watcher = FolderWatcher([tmp_path / "absent"], seen)
    with pytest.raises(DeviceError, match="not a folder"):
        watcher.start()
    watcher.stop()


# -- the driver ------------------------------------------------------------------


def device(folder: Path) -> DeviceInfo:
    return DeviceInfo.make("folder", str(folder))


def test_driver_offloads_a_folder(root: Path) -> None:
    cam = root / "ZFY0042"
    (cam / "DCIM" / "100MEDIA").mkdir(parents=True)
    (cam / "DCIM" / "100MEDIA" / "ZFY0042_20260101080000_0001.MP4").write_bytes(b"one")
    (cam / "DCIM" / "100MEDIA" / "ZFY0042_20260101081000_0002.MP4").write_bytes(b"two")
    (cam / "DCIM" / "link.MP4").symlink_to(cam / "DCIM" / "100MEDIA")
    identity(cam, serial="ZFY0042", officer="100234", officer_name="张三", clock_offset_ms=-1200)
    driver = FolderDriver([root])
    dev = device(cam)
    assert driver.matches(dev)
    for other in (
        DeviceInfo.make("block", str(cam)),
        device(root),
        device(cam / "DCIM"),
        device(root / ".hidden"),
        device(Path("incoming/ZFY0042")),
    ):
        assert not driver.matches(other), other

    with driver.attach(dev) as where:
        assert where == cam
        ident = driver.identify(dev, where)
        assert (ident.driver, ident.serial, ident.officer) == ("folder", "ZFY0042", "100234")
        assert ident.officer_name == "张三"
        assert ident.clock_offset_ms == -1200
        found = list(driver.recordings(where))
        recs = [r for r in found if isinstance(r, Recording)]
        refused = [r for r in found if isinstance(r, Refused)]
        assert [r.name for r in recs] == [
            "ZFY0042_20260101080000_0001.MP4",
            "ZFY0042_20260101081000_0002.MP4",
        ]  # the identity file is not a recording
        assert [r.relpath for r in refused] == [b"DCIM/link.MP4"]
        fd = driver.open(where, recs[0])
        try:
            assert os.read(fd, 10) == b"one"
        finally:
            os.close(fd)
    with driver.writable(dev, cam) as where:
        driver.wipe(where, recs[0])
    assert not (cam / "DCIM" / "100MEDIA" / "ZFY0042_20260101080000_0001.MP4").exists()


def test_identity_from_folder_name_is_sanitised(root: Path) -> None:
    driver = FolderDriver([root])
    for name in ("CAM-01", "张三", "李四", "a b;rm -rf", "x" * 100):
        (root / name).mkdir()
    ids = {n.name: driver.identify(device(n), n) for n in root.iterdir()}
    assert ids["CAM-01"].serial == "CAM-01"
    assert dict(ids["CAM-01"].extra) == {"identity": "folder name"}
    assert ids["张三"].serial != ids["李四"].serial
    for ident in ids.values():
        assert set(ident.serial) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
        )
        assert len(ident.serial) <= 73
    assert dict(ids["张三"].extra)["folder_name"] == "张三"
    assert serial_from_name(b"\xff\xfe") == serial_from_name(b"\xff\xfe")
    assert serial_from_name(b"\xff") != serial_from_name(b"\xfe")


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b" " * MAX_IDENTITY_BYTES + b'{"serial": "X"}', "larger than"),
        (b'{"serial": "X"', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"serial": "X", "oficer": "1"}', "unknown keys \\['oficer'\\]"),
        (b'["serial", "X"]', "must hold a JSON object, not list"),
        (b'"X"', "must hold a JSON object, not str"),
        (b"null", "must hold a JSON object"),
        (b'{"serial": "X", "serial": "Y"}', "appears twice"),
        (b'{"serial": "X", "clock_offset_ms": NaN}', "NaN is not JSON"),
        (b'{"serial": "X", "clock_offset_ms": true}', "clock_offset_ms must be a int"),
        (b'{"serial": "X", "clock_offset_ms": 1.5}', "clock_offset_ms must be a int"),
        (b'{"serial": 42}', "serial must be a str"),
        (b'{"officer": "1"}', "serial is missing"),
        (b'{"serial": "   "}', "printable characters"),
        (b'{"serial": "X\\u0000Y"}', "printable characters"),
        (b'{"serial": "' + b"X" * 200 + b'"}', "printable characters"),
        (b"[" * 100_000, "larger than"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON|must hold a JSON object"),
    ],
)
def test_hostile_identity_files_are_refused(root: Path, content: bytes, complaint: str) -> None:
    cam = root / "CAM"
    cam.mkdir()
    (cam / "recorder.json").write_bytes(content)
    with pytest.raises(IdentityFileError, match=complaint):
        FolderDriver([root]).identify(device(cam), cam)


def test_identity_file_must_be_a_regular_file(root: Path, tmp_path: Path) -> None:
    driver = FolderDriver([root])
    cam = root / "CAM"
    cam.mkdir()
    target = tmp_path / "real.json"
    target.write_text('{"serial": "STOLEN"}')
    (cam / "recorder.json").symlink_to(target)
    with pytest.raises(IdentityFileError, match="symbolic link"):
        driver.identify(device(cam), cam)
    (cam / "recorder.json").unlink()
    (cam / "recorder.json").mkdir()
    with pytest.raises(IdentityFileError, match="not a regular file"):
        driver.identify(device(cam), cam)
    (cam / "recorder.json").rmdir()
    os.mkfifo(cam / "recorder.json")  # must not block waiting for a writer
    with pytest.raises(IdentityFileError, match="not a regular file"):
        driver.identify(device(cam), cam)


def test_watcher_reports_identity_errors_as_properties(
    root: Path, seen: Seen, watch: FolderWatcher
) -> None:
    (root / "CAM").mkdir()
    (root / "CAM" / "recorder.json").write_text("{not json")
    watch.start()
    _, info, _ = seen.wait_for(1)[0]
    assert info.serial == "CAM"
    assert "not valid JSON" in (info.prop("EVIDOCK_IDENTITY_ERROR") or "")
