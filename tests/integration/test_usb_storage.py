"""UsbStorageDriver and drivers.udev against real parts: exFAT through FUSE and ext4
images on loop devices, real H.264 clips, umockdev hot-plug (tests/integration/hardware.py).

Every test checks on the way out that nothing stays mounted under its folder;
loop devices are detached by their context managers, also on failure.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceInfo, Recording, Refused
from drivers.udev import UdevWatcher
from drivers.usb_storage import MatchRule, UsbStorageDriver
from hashing.errors import DeviceError
from tests.integration.hardware import (
    Lines,
    UdevTestbed,
    digest_fd,
    exfat_image,
    ext4_image,
    ffmpeg_clip,
    kill_fuse,
    loop_device,
    mount_options,
    mounts,
    mounts_under,
    need,
    run,
    sha256sum,
    stop_process,
)

CHINESE = "DCIM/100MEDIA/执法记录仪_0003.MP4".encode()
GBK = b"DCIM/" + "执法记录仪".encode("gbk") + b".MP4"
LISTENER = Path(__file__).with_name("udev_listener.py")


def usb_disk(devnode: str, fs_type: str = "exfat", **props: str) -> DeviceInfo:
    """A DeviceInfo as drivers.udev makes it for a camera's partition."""
    base = {
        "ID_BUS": "usb",
        "ID_FS_TYPE": fs_type,
        "ID_FS_USAGE": "filesystem",
        "DEVTYPE": "partition",
        "DEVNAME": devnode,
        "ID_SERIAL_SHORT": "CAM0001",
        "ID_VENDOR_ID": "2e8a",
        "ID_MODEL_ID": "0001",
    }
    return DeviceInfo.make(
        "block", f"/sys/devices/test/{Path(devnode).name}", devnode, base | props
    )


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[bytes, bytes]:
    """What the camera holds: two real clips, a Chinese-named clip, audio, and non-recordings."""
    need("ffmpeg", "mkfs.exfat", "mount.exfat-fuse", "losetup", "mke2fs")
    tmp = tmp_path_factory.mktemp("clips")
    clip1 = ffmpeg_clip(tmp / "a.mp4", seconds=2)
    clip2 = ffmpeg_clip(tmp / "b.mp4", seconds=1, size="160x120")
    return {
        b"DCIM/100MEDIA/CLIP0001.MP4": clip1,
        b"DCIM/100MEDIA/CLIP0002.mp4": clip2,
        CHINESE: clip2[::-1],
        b"DCIM/100MEDIA/REC0004.WAV": b"RIFF" + bytes(range(256)) * 40,
        b"DCIM/100MEDIA/INDEX.DAT": b"not a recording",
        b"MISC/OUTSIDE.MP4": b"outside the layout",
        b"DCIM/EMPTY/": b"",
    }


RECORDINGS = (b"DCIM/100MEDIA/CLIP0001.MP4", b"DCIM/100MEDIA/CLIP0002.mp4", CHINESE)


@pytest.fixture(scope="module")
def exfat_camera(tmp_path_factory: pytest.TempPathFactory, footage: dict[bytes, bytes]) -> Path:
    return exfat_image(tmp_path_factory.mktemp("img") / "cam.img", footage, size_mb=16)


@pytest.fixture
def mount_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "mnt"
    yield root
    leaked = mounts_under(tmp_path)
    for mp in reversed(leaked):  # never leave a mount behind, even when a test fails
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    assert not leaked, f"left mounted: {leaked}"


@pytest.fixture
def driver(mount_root: Path) -> UsbStorageDriver:
    return UsbStorageDriver([MatchRule()], mount_root)


def test_attach_mounts_read_only_through_fuse_and_cleans_up(
    driver: UsbStorageDriver, exfat_camera: Path, mount_root: Path
) -> None:
    with loop_device(exfat_camera) as dev:
        device = usb_disk(dev)
        assert driver.matches(device)
        with driver.attach(device) as root:
            assert root.parent == mount_root
            assert stat.S_IMODE(mount_root.stat().st_mode) == 0o700
            opts = mount_options(root)
            assert opts is not None and {"ro", "nosuid", "nodev", "noexec"} <= opts
            row = next(r for r in mounts() if r[1] == str(root))
            assert row[0] == dev and row[2] == "fuseblk"  # exFAT through exfat-fuse here
            with pytest.raises(OSError) as e:
                (root / "DCIM" / "new.mp4").write_bytes(b"x")
            assert e.value.errno == errno.EROFS
            with pytest.raises(OSError):
                (root / "DCIM" / "NEWDIR").mkdir()
            with pytest.raises(OSError):
                (root / "DCIM" / "100MEDIA" / "CLIP0001.MP4").unlink()
        assert mount_options(root) is None
        assert not root.exists()


def test_recordings_listed_with_raw_names_and_sizes(
    driver: UsbStorageDriver, exfat_camera: Path, footage: dict[bytes, bytes]
) -> None:
    with loop_device(exfat_camera) as dev, driver.attach(usb_disk(dev)) as root:
        found = list(driver.recordings(root))
    assert all(isinstance(r, Recording) for r in found)
    by_path = {r.relpath: r.size for r in found if isinstance(r, Recording)}
    wanted = (*RECORDINGS, b"DCIM/100MEDIA/REC0004.WAV")
    assert by_path == {p: len(footage[p]) for p in wanted}
    assert CHINESE in by_path  # the exact UTF-8 bytes of 执法记录仪


def test_opened_files_hash_like_sha256sum(
    driver: UsbStorageDriver, exfat_camera: Path, footage: dict[bytes, bytes]
) -> None:
    with loop_device(exfat_camera) as dev, driver.attach(usb_disk(dev)) as root:
        for rec in driver.recordings(root):
            assert isinstance(rec, Recording)
            fd = driver.open(root, rec)
            try:
                assert os.get_blocking(fd)
                digest, size = digest_fd(fd)
            finally:
                os.close(fd)
            on_camera = sha256sum(Path(os.fsdecode(os.fsencode(root) + b"/" + rec.relpath)))
            assert digest == on_camera == hashlib.sha256(footage[rec.relpath]).hexdigest()
            assert size == rec.size


def test_unmounts_after_an_exception_even_with_a_file_open(
    driver: UsbStorageDriver, exfat_camera: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with loop_device(exfat_camera) as dev:
        device = usb_disk(dev)
        with pytest.raises(RuntimeError, match="boom"), driver.attach(device) as root:
            raise RuntimeError("boom")
        assert mount_options(root) is None and not root.exists()

        caplog.set_level(logging.WARNING, logger="drivers._mount")
        fd = -1
        with pytest.raises(RuntimeError, match="boom"), driver.attach(device) as root:
            fd = driver.open(root, Recording(RECORDINGS[0], 0, 0))
            raise RuntimeError("boom")
        try:
            assert mount_options(root) is None and not root.exists()
            assert "detaching it lazily" in caplog.text
            assert os.read(fd, 4)  # a lazily detached FUSE mount still serves open files
        finally:
            os.close(fd)


def test_layout_missing_is_refused_and_unmounted(tmp_path: Path, mount_root: Path) -> None:
    image = exfat_image(tmp_path / "nodcim.img", {b"VIDEO/CLIP0001.MP4": b"x"}, size_mb=8)
    driver = UsbStorageDriver([MatchRule(layout="DCIM"), MatchRule(layout="Record")], mount_root)
    with loop_device(image) as dev:
        with (
            pytest.raises(DeviceError, match=r"none of DCIM/, Record/ is at its root"),
            driver.attach(usb_disk(dev)),
        ):
            pytest.fail("attached without a layout folder")
        assert list(mount_root.iterdir()) == []
        # A rule accepting any layout takes it, and lists every recording on it.
        anywhere = UsbStorageDriver([MatchRule(layout="")], mount_root)
        with anywhere.attach(usb_disk(dev)) as root:
            assert [r.relpath for r in anywhere.recordings(root)] == [b"VIDEO/CLIP0001.MP4"]


def test_mount_failures_leave_nothing_behind(tmp_path: Path, mount_root: Path) -> None:
    image = ext4_image(tmp_path / "ext4.img", {b"DCIM/A.MP4": b"a"}, size_mb=8)
    driver = UsbStorageDriver([MatchRule()], mount_root)
    with loop_device(image) as dev:
        with (
            pytest.raises(DeviceError, match=r"mounting exfat \(exfat-fuse\) at .* failed"),
            driver.attach(usb_disk(dev, fs_type="exfat")),  # udev was wrong about it
        ):
            pytest.fail("mounted")
        assert list(mount_root.iterdir()) == []
    with (
        pytest.raises(DeviceError, match="the recorder has gone"),
        driver.attach(usb_disk("/dev/evidock-no-such-disk")),
    ):
        pytest.fail("mounted")
    with (
        pytest.raises(DeviceError, match="not a block device"),
        driver.attach(usb_disk("/dev/null")),
    ):
        pytest.fail("mounted")
    assert list(mount_root.iterdir()) == []


def test_stale_mounts_from_an_earlier_run_are_released(
    exfat_camera: Path, mount_root: Path, tmp_path: Path
) -> None:
    driver = UsbStorageDriver([MatchRule()], mount_root)
    assert driver.release_stale_mounts() == []  # no folder yet: nothing to do
    kept = mount_root / "not-empty"
    kept.mkdir(parents=True)
    (kept / "file").write_bytes(b"x")
    with loop_device(exfat_camera) as dev:
        stale = mount_root / "loop9-abcd1234"
        stale.mkdir()
        run(["mount.exfat-fuse", "-o", "ro", dev, str(stale)])  # left by a killed daemon
        assert mount_options(stale) is not None
        assert driver.release_stale_mounts() == [stale]
        assert mount_options(stale) is None and not stale.exists()
    assert kept.exists()  # never removed recursively


def test_wipe_inside_writable_deletes_only_that_file(
    tmp_path: Path, mount_root: Path, footage: dict[bytes, bytes]
) -> None:
    image = exfat_image(tmp_path / "wipe.img", footage, size_mb=16)
    driver = UsbStorageDriver([MatchRule()], mount_root)
    victim = Recording(RECORDINGS[1], len(footage[RECORDINGS[1]]), 0)
    with loop_device(image) as dev:
        device = usb_disk(dev)
        with driver.attach(device) as root:
            with pytest.raises(DeviceError, match="read-only"):
                driver.wipe(root, victim)
            fd = driver.open(root, victim)
            try:  # exfat-fuse cannot switch in place; with a file open it must not try
                with (
                    pytest.raises(DeviceError, match="still in use"),
                    driver.writable(device, root),
                ):
                    pytest.fail("made writable under an open file")
                assert "ro" in (mount_options(root) or set())
            finally:
                os.close(fd)
            with driver.writable(device, root) as w:
                assert w == root
                opts = mount_options(root)
                assert opts is not None and {"rw", "nosuid", "nodev", "noexec"} <= opts
                driver.wipe(root, victim)
                with pytest.raises(DeviceError, match="unsafe path"):
                    driver.wipe(root, Recording(b"DCIM/../MISC/OUTSIDE.MP4", 0, 0))
            opts = mount_options(root)
            assert opts is not None and "ro" in opts
            left = {r.relpath for r in driver.recordings(root) if isinstance(r, Recording)}
        with driver.attach(device) as root:  # mounted afresh: the deletion is on the device
            again = {r.relpath: r for r in driver.recordings(root) if isinstance(r, Recording)}
            for rel, rec in again.items():
                fd = driver.open(root, rec)
                try:
                    assert digest_fd(fd)[0] == hashlib.sha256(footage[rel]).hexdigest()
                finally:
                    os.close(fd)
            assert (root / "MISC" / "OUTSIDE.MP4").read_bytes() == footage[b"MISC/OUTSIDE.MP4"]
    assert victim.relpath not in left
    assert (
        set(again)
        == left
        == {
            RECORDINGS[0],
            RECORDINGS[2],
            b"DCIM/100MEDIA/REC0004.WAV",
        }
    )


def test_ext4_links_fifos_and_device_nodes_are_refused_never_opened(
    tmp_path: Path, mount_root: Path
) -> None:
    image = ext4_image(
        tmp_path / "ext4.img",
        {GBK: b"gbk-named clip", b"DCIM/CLIP0001.MP4": b"clip"},
        symlinks={b"DCIM/LINK.MP4": b"/etc/shadow", b"DCIM/LINKDIR": b"/etc"},
        fifos=[b"DCIM/FIFO.MP4"],
        device_nodes=[b"DCIM/NULL.MP4"],
    )
    driver = UsbStorageDriver([MatchRule()], mount_root)
    with loop_device(image) as dev:
        device = usb_disk(dev, fs_type="ext4")
        with driver.attach(device) as root:
            opts = mount_options(root)
            assert opts is not None and {"ro", "nosuid", "nodev", "noexec"} <= opts
            found = list(driver.recordings(root))
            refused = {r.relpath: r.reason for r in found if isinstance(r, Refused)}
            recs = {r.relpath: r.size for r in found if isinstance(r, Recording)}
            assert recs == {GBK: 14, b"DCIM/CLIP0001.MP4": 4}  # raw GBK bytes kept as they are
            assert set(refused) == {
                b"DCIM/LINK.MP4",
                b"DCIM/LINKDIR",
                b"DCIM/FIFO.MP4",
                b"DCIM/NULL.MP4",
            }
            assert "symbolic link" in refused[b"DCIM/LINK.MP4"]
            assert "FIFO" in refused[b"DCIM/FIFO.MP4"]
            assert "device node" in refused[b"DCIM/NULL.MP4"]
            for rel in refused:
                started = time.monotonic()
                with pytest.raises(DeviceError):
                    driver.open(root, Recording(rel, 0, 0))
                assert time.monotonic() - started < 2  # a FIFO never blocks the open
            fd = driver.open(root, Recording(GBK, 14, 0))
            try:
                assert os.read(fd, 100) == b"gbk-named clip"
            finally:
                os.close(fd)
            # A kernel filesystem is remounted in place for the wipe, and back.
            with driver.writable(device, root):
                opts = mount_options(root)
                assert opts is not None and {"rw", "nosuid", "nodev", "noexec"} <= opts
                with pytest.raises(DeviceError, match=r"symbolic link.*not deleted"):
                    driver.wipe(root, Recording(b"DCIM/LINK.MP4", 0, 0))
                driver.wipe(root, Recording(GBK, 14, 0))
            opts = mount_options(root)
            assert opts is not None and "ro" in opts
            left = {r.relpath for r in driver.recordings(root) if isinstance(r, Recording)}
            assert left == {b"DCIM/CLIP0001.MP4"}
            assert (root / "DCIM" / "LINK.MP4").is_symlink()


def test_unplug_mid_read_fails_cleanly(tmp_path: Path, mount_root: Path) -> None:
    from agent.offload.copier import copy_and_verify  # the daemon's real reader

    big = os.urandom(6 << 20)
    image = exfat_image(tmp_path / "unplug.img", {b"DCIM/CLIP0001.MP4": big}, size_mb=16)
    driver = UsbStorageDriver([MatchRule()], mount_root)
    outcome: dict[str, Any] = {}
    with loop_device(image) as dev, driver.attach(usb_disk(dev)) as root:
        rec = next(r for r in driver.recordings(root) if isinstance(r, Recording))
        fd = driver.open(root, rec)
        try:
            assert len(os.read(fd, 1 << 20)) == 1 << 20
            kill_fuse(root)  # the camera is yanked out

            def copy() -> None:
                try:
                    copy_and_verify(fd, tmp_path / "staged", source_name=rec.display)
                except BaseException as e:  # noqa: BLE001 - inspected below
                    outcome["error"] = e

            reader = threading.Thread(target=copy, daemon=True)
            reader.start()
            reader.join(10)
            assert not reader.is_alive(), "reading from an unplugged recorder hung"
            assert isinstance(outcome.get("error"), DeviceError), outcome
            assert "read failed" in str(outcome["error"])
            assert not (tmp_path / "staged").exists()
            with pytest.raises(OSError) as e:
                os.read(fd, 4096)
            assert e.value.errno == errno.ENOTCONN
            with pytest.raises(DeviceError):
                list(driver.recordings(root))
        finally:
            with suppress(OSError):  # close() of a file on a dead FUSE mount fails: ENOTCONN
                os.close(fd)
    assert mounts_under(mount_root) == []


# -- udev through umockdev -----------------------------------------------------------------


class Listener:
    """The JSON lines of tests/integration/udev_listener.py, matched in any order: the
    watcher's thread may report a replayed "add" before the main thread says "ready"."""

    def __init__(self, out: Lines) -> None:
        self.out = out
        self.unread: list[dict[str, Any]] = []

    def wait(self, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        def fits(msg: dict[str, Any]) -> bool:
            return msg.get("kind") == kind and all(msg.get(k) == v for k, v in match.items())

        deadline = time.monotonic() + timeout
        while True:
            for msg in self.unread:
                if fits(msg):
                    self.unread.remove(msg)
                    return msg
            msg = json.loads(self.out.readline(max(deadline - time.monotonic(), 0.0)))
            if msg.get("kind") == "error":
                raise AssertionError(f"listener: {msg}")
            self.unread.append(msg)


def test_udev_hotplug_reaches_the_watcher_and_mounts(
    exfat_camera: Path, footage: dict[bytes, bytes], tmp_path: Path, mount_root: Path
) -> None:
    with UdevTestbed() as bed, loop_device(exfat_camera) as dev:
        docked = bed.add("sdc1", devnode=dev, serial="PRE0001", ID_FS_UUID="4A1B-22CC")
        proc = bed.popen(
            [sys.executable, str(LISTENER), "--mount-root", str(mount_root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            out = Listener(Lines(proc.stdout, "udev listener"))
            existing = out.wait("existing")["devices"]
            assert [d["sys_path"] for d in existing] == [docked]
            assert existing[0]["properties"]["ID_FS_UUID"] == "4A1B-22CC"
            out.wait("ready")
            # Docked before start: replayed as "add", and really mounted from its /dev/loopN.
            replay = out.wait("event", action="add")
            assert replay["device"]["sys_path"] == docked and replay["matches"]
            attached = out.wait("attached", sys_path=docked)
            assert attached["identity"]["serial"] == "PRE0001"

            plugged = bed.add("sdb1", devnode=dev, serial="CAM0042", ID_VENDOR="Evidock")
            event = out.wait("event", action="add")
            device = event["device"]
            assert device["sys_path"] == plugged == "/sys/devices/usb-sdb1/sdb1"
            assert device["devnode"] == dev
            props = device["properties"]
            assert props["ID_BUS"] == "usb" and props["ID_FS_TYPE"] == "exfat"
            assert props["ID_SERIAL_SHORT"] == "CAM0042" and props["DEVTYPE"] == "partition"
            assert props["DEVNAME"] == dev and props["ID_VENDOR"] == "Evidock"
            attrs = device["attributes"]  # from the USB parent's sysfs
            assert attrs["idVendor"] == "2e8a" and attrs["idProduct"] == "0001"
            assert attrs["serial"] == "CAM0042" and attrs["manufacturer"] == "Evidock"
            assert event["matches"] is True

            attached = out.wait("attached", sys_path=plugged)
            assert attached["identity"]["serial"] == "CAM0042"
            assert attached["identity"]["vendor"] == "Evidock"
            assert {"ro", "nosuid", "nodev", "noexec"} <= set(attached["mount_options"])
            listed = {bytes.fromhex(p): size for p, size in attached["recordings"]}
            assert listed[CHINESE] == len(footage[CHINESE]) and len(listed) == 4

            bed.remove("sdb1")
            gone = out.wait("event", action="remove")
            assert gone["device"]["sys_path"] == plugged
            assert gone["device"]["properties"]["ID_SERIAL_SHORT"] == "CAM0042"

            # Not ours: a non-recorder filesystem is reported but does not match.
            bed.add("sdd1", devnode=dev, serial="STICK", fs_type="btrfs")
            other = out.wait("event", action="add")
            assert other["device"]["sys_path"].endswith("/sdd1") and other["matches"] is False

            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
            stopped = out.wait("stopped")
            assert stopped["seconds"] < 1.0 and stopped["running"] is False
        finally:
            stop_process(proc)
    assert mounts_under(mount_root) == []


def test_watcher_stops_promptly_without_udev_events() -> None:
    """In this process (no preload): a real netlink monitor that never hears anything."""
    seen: list[tuple[str, DeviceInfo]] = []
    watcher = UdevWatcher(lambda action, info: seen.append((action, info)))
    watcher.start()
    running_before = watcher.running
    time.sleep(0.1)
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 1.0
    assert (running_before, watcher.running) == (True, False)
    watcher.stop()  # again: harmless
    assert all(info.prop("ID_BUS") == "usb" for _, info in seen)
