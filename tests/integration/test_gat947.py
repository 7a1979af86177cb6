"""The GA/T 947.4 driver against a stand-in vendor library compiled from C (gat947_standin.c).

The stand-in is a real shared library loaded through ctypes exactly as a
vendor's would be; it records every call in a file, so the tests can check the
order the dock talks to a camera in, not just the result.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import cast

import pytest

from drivers import gat947
from drivers.base import DeviceInfo, Driver, RecorderIdentity, Recording
from drivers.gat947 import Gat947Driver, Gat947Library, IdentityCache, PasswordRefusedError
from hashing.errors import ConfigError, DeviceError

SOURCE = Path(__file__).with_name("gat947_standin.c")
ADMIN_PIN = "Std-4711-admin"  # the stand-in camera's; a test value, never a default
USB_ID = "2b1e:0947"
DEVICE = DeviceInfo.make(
    "usb",
    "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3",
    properties={
        "DEVTYPE": "usb_device",
        "ID_VENDOR_ID": "2b1e",
        "ID_MODEL_ID": "0947",
        "ID_SERIAL_SHORT": "USB0042",
        "ID_VENDOR": "StandIn",
        "ID_MODEL": "ZFY-947",
    },
)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stand-in built three ways: complete, without SetMSDC, without ReadDevTime."""
    gcc = shutil.which("gcc")
    if gcc is None:
        if os.environ.get("CI"):
            pytest.fail("gcc is needed to build the GA/T 947.4 stand-in: apt-get install gcc")
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("gat947-build")
    variants = {
        "full": [],
        "no_setmsdc": ["-DSTANDIN_NO_SETMSDC"],
        "no_clock": ["-DSTANDIN_NO_CLOCK"],
    }
    built = {}
    for name, flags in variants.items():
        target = out / name / "libzfy.so"
        target.parent.mkdir()
        cmd = [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", *flags, "-o", str(target)]
        subprocess.run([*cmd, str(SOURCE)], check=True, capture_output=True)
        built[name] = target
    return built


@pytest.fixture
def camera(
    tmp_path: Path, builds: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh copy of the complete stand-in (its own dlopen state) and a call log; returns the log."""
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("GAT947_STANDIN_LOG", str(calls))
    monkeypatch.setenv("GAT947_STANDIN_PASSWORD", ADMIN_PIN)
    monkeypatch.setenv("GAT947_STANDIN_CLOCK_OFFSET_S", "0")
    for name in ("GAT947_STANDIN_NAME_HEX", "GAT947_STANDIN_ABSENT", "GAT947_STANDIN_FAIL"):
        monkeypatch.delenv(name, raising=False)
    yield calls


def install(builds: dict[str, Path], tmp_path: Path, variant: str = "full") -> Path:
    lib = tmp_path / variant / "libzfy.so"
    lib.parent.mkdir(exist_ok=True)
    shutil.copy2(builds[variant], lib)
    return lib


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def driver(
    lib: Path,
    password: str | None = ADMIN_PIN,
    *,
    usb_driver_factory: Callable[[], Driver] | None = None,
    setting_hint: str = gat947.DEFAULT_SETTING_HINT,
) -> Gat947Driver:
    return Gat947Driver(
        lib,
        password,
        usb_ids=[USB_ID],
        usb_driver_factory=usb_driver_factory,
        setting_hint=setting_hint,
    )


def test_identity_clock_before_sync_and_disk_mode_last(
    camera: Path, builds: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAT947_STANDIN_CLOCK_OFFSET_S", "90")  # the camera runs 90 s fast
    d = driver(install(builds, tmp_path))
    assert d.matches(DEVICE)

    identity = d.prepare(DEVICE)

    assert identity.driver == "gat947"
    assert identity.serial == "ZFY0042"
    assert identity.officer == "100234"
    assert identity.officer_name == "张三"
    assert identity.unit_no == "440103000000"
    assert identity.unit_name == "城关派出所"
    assert (identity.vendor, identity.model) == ("StandIn", "ZFY-947")
    assert identity.clock_offset_ms is not None
    assert abs(identity.clock_offset_ms - 90_000) <= 1_500, identity.clock_offset_ms
    extra = dict(identity.extra)
    assert extra["id_code"] == "EVD01"
    assert extra["usb_serial"] == "USB0042"
    assert not any(k.endswith("_hex") for k in extra)

    # Identity and clock read while the clock was still 90 s off; disk mode last.
    assert calls(camera) == [
        "Init_Device",
        "GetIDCode",
        "GetZFYInfo",
        "ReadDevTime offset=90",
        "SyncDevTime",
        "SetMSDC",
        "UnInit_Device",
    ]
    # Remembered for the disk that comes back, by recorder serial and by USB serial.
    assert d.cache.lookup("zfy0042") == identity
    disk = DeviceInfo.make(
        "block", "/sys/block/sdb/sdb1", properties={"ID_SERIAL_SHORT": "USB0042"}
    )
    assert not d.matches(disk)
    assert d.identify(disk, tmp_path) == identity
    assert d.cache.take("USB0042") == identity
    assert d.cache.lookup("ZFY0042") is None


def test_wrong_password_is_refused_and_never_shown(
    camera: Path,
    builds: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "Wrong-pw-0815"
    d = driver(install(builds, tmp_path), password=wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DeviceError) as info:
        d.prepare(DEVICE)
    err = info.value
    assert isinstance(err, PasswordRefusedError)
    assert "administrator password" in str(err)
    assert "GetZFYInfo" in str(err)
    texts = [str(err), repr(err), repr(err.args), repr(err.__cause__), repr(err.__context__)]
    texts += [caplog.text, repr(d), repr(d.__dict__), calls(camera).__repr__()]
    for text in texts:
        assert wrong not in text
        assert ADMIN_PIN not in text
    # Nothing on the camera was changed.
    assert calls(camera) == [
        "Init_Device",
        "GetIDCode",
        "GetZFYInfo password-refused",
        "UnInit_Device",
    ]
    assert len(d.cache) == 0


def test_missing_library_is_a_config_error(camera: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        driver(tmp_path / "nowhere" / "libzfy.so").prepare(DEVICE)
    with pytest.raises(ConfigError, match="absolute path"):
        Gat947Library(Path("libzfy.so"))
    not_elf = tmp_path / "libbroken.so"
    not_elf.write_bytes(b"not a shared library")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        Gat947Library(not_elf)


def test_no_password_configured_is_a_config_error(
    camera: Path, builds: dict[str, Path], tmp_path: Path
) -> None:
    for password in (None, ""):
        d = driver(install(builds, tmp_path), password=password)
        with pytest.raises(ConfigError, match=r"no GA/T 947.4 administrator password") as caught:
            d.prepare(DEVICE)
        assert "[gat947]" in (caught.value.hint or "")
    assert calls(camera) == []  # the camera was not even asked
    hinted = driver(install(builds, tmp_path), password=None, setting_hint="[x] y")
    with pytest.raises(ConfigError) as caught:
        hinted.prepare(DEVICE)
    assert caught.value.hint is not None and caught.value.hint.startswith("set it in [x] y")


def test_library_missing_a_function_names_it(
    camera: Path, builds: dict[str, Path], tmp_path: Path
) -> None:
    d = driver(install(builds, tmp_path, "no_setmsdc"))
    with pytest.raises(ConfigError, match=r"does not export SetMSDC\(\)"):
        d.prepare(DEVICE)
    # Found out before the camera's clock was touched.
    assert calls(camera) == []


def test_library_without_clock_getter_still_syncs(
    camera: Path, builds: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = driver(install(builds, tmp_path, "no_clock"))
    identity = d.prepare(DEVICE)
    assert identity.clock_offset_ms is None
    assert dict(identity.extra)["clock"] == "no ReadDevTime"
    assert "exports no ReadDevTime" in caplog.text
    assert calls(camera)[-3:] == ["SyncDevTime", "SetMSDC", "UnInit_Device"]


def test_absent_camera_is_a_device_error(
    camera: Path, builds: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAT947_STANDIN_ABSENT", "1")
    d = driver(install(builds, tmp_path))
    with pytest.raises(DeviceError, match="Init_Device: the recorder did not answer"):
        d.prepare(DEVICE)
    assert calls(camera) == ["Init_Device absent", "UnInit_Device"]


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        ("SyncDevTime", "SyncDevTime: the recorder did not accept the time"),
        ("SetMSDC", "SetMSDC: the recorder did not switch to disk mode"),
    ],
)
def test_failing_step_is_a_device_error_and_nothing_is_remembered(
    camera: Path,
    builds: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
    message: str,
) -> None:
    monkeypatch.setenv("GAT947_STANDIN_FAIL", failing)
    d = driver(install(builds, tmp_path))
    with pytest.raises(DeviceError, match=message) as info:
        d.prepare(DEVICE)
    assert not isinstance(info.value, PasswordRefusedError)
    assert len(d.cache) == 0
    log = calls(camera)
    assert log[-2:] == [f"{failing} failed", "UnInit_Device"]
    assert "SetMSDC" not in "".join(log[:-2])


def test_undecodable_name_keeps_raw_bytes(
    camera: Path, builds: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAT947_STANDIN_NAME_HEX", "d5c5ff07")  # 张, a lone 0xff, a BEL
    identity = driver(install(builds, tmp_path)).prepare(DEVICE)
    assert identity.officer_name is not None
    assert identity.officer_name.startswith("张")
    assert "\x07" not in identity.officer_name
    assert dict(identity.extra)["officer_name_hex"] == "d5c5ff07"


def test_disk_mode_delegates_mounting_and_walks_the_root(
    camera: Path, builds: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "mnt"
    (root / "DCIM").mkdir(parents=True)
    (root / "DCIM" / "ZFY0042_20260101080000_0001.MP4").write_bytes(b"clip")
    attached: list[str] = []

    class Mounter:
        """Stands for the USB storage driver: only its attach/writable are used."""

        key = "usb"

        @contextmanager
        def _mount(self, device: DeviceInfo) -> Iterator[Path]:
            attached.append(device.sys_path)
            yield root

        def attach(self, device: DeviceInfo) -> AbstractContextManager[Path]:
            return self._mount(device)

        def writable(self, device: DeviceInfo, root_: Path) -> AbstractContextManager[Path]:
            return self._mount(device)

    bare = driver(install(builds, tmp_path))
    with pytest.raises(DeviceError, match="USB storage driver"):
        bare.attach(DEVICE)

    d = driver(install(builds, tmp_path), usb_driver_factory=lambda: cast(Driver, Mounter()))
    with d.attach(DEVICE) as where:
        found = list(d.recordings(where))
        assert [r.relpath for r in found] == [b"DCIM/ZFY0042_20260101080000_0001.MP4"]
        rec = found[0]
        assert isinstance(rec, Recording)
        fd = d.open(where, rec)
        try:
            assert os.read(fd, 10) == b"clip"
        finally:
            os.close(fd)
    with d.writable(DEVICE, root) as where:
        d.wipe(where, rec)
    assert list(d.recordings(root)) == []
    assert attached == [DEVICE.sys_path, DEVICE.sys_path]
    with pytest.raises(DeviceError, match=r"no GA/T 947\.4 identity remembered"):
        d.identify(DEVICE, root)


def test_identity_cache_expires() -> None:
    now = [100.0]
    cache = IdentityCache(ttl_s=10, clock=lambda: now[0])
    ident = RecorderIdentity(driver="gat947", serial="ZFY0042")
    cache.remember(ident, "USB0042", None, "")
    assert cache.lookup("usb0042") is ident
    assert len(cache) == 1
    now[0] += 10
    assert cache.lookup("ZFY0042") is None
    assert len(cache) == 0


def test_daemon_prepares_then_offloads_the_disk_with_the_sdk_identity(
    camera: Path, builds: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole hand-over: SDK-mode device -> prepare -> the disk it becomes is
    offloaded under the identity and clock offset read before the time sync."""
    import time

    from agent.dock.daemon import Daemon
    from agent.offload.session import OffloadPolicy
    from drivers.demo import DemoCamera
    from drivers.mounted import MountedDriver, mounted_device
    from hashing.station import Station

    monkeypatch.setenv("GAT947_STANDIN_CLOCK_OFFSET_S", "90")
    gat = driver(install(builds, tmp_path))
    station = Station.init(tmp_path / "home", "ST-1")
    daemon = Daemon(
        station,
        [MountedDriver()],
        OffloadPolicy(wipe="never", free_margin_bytes=0),
        [],
        preparers=[gat],
        identities=[gat.cache],
    )
    daemon.on_event("add", DEVICE)
    deadline = time.monotonic() + 20
    while gat.cache.lookup("USB0042") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gat.cache.lookup("USB0042") is not None

    disk = DemoCamera(tmp_path / "disk", "USB0042", size=(160, 120))
    disk.record(2, 1)
    daemon.on_event("add", mounted_device(disk.folder, "USB0042"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sessions = daemon.snapshot()["sessions"]
        if sessions and sessions[0]["finished"]:
            break
        time.sleep(0.05)
    daemon.stop()
    session = daemon.snapshot()["sessions"][0]
    assert session["state"] == "committed", session
    assert session["serial"] == "ZFY0042" and session["officer"] == "100234"
    ingests = list(station.ledger.entries_of_type("ingest"))
    assert len(ingests) == 2
    assert ingests[0].body["device"] == "ZFY0042"
    recorder = ingests[0].body["recorder"]
    assert isinstance(recorder, dict) and recorder["officer_name"] == "张三"
    offsets = [
        e for e in station.ledger.entries_of_type("anomaly") if e.body["kind"] == "clock_offset"
    ]
    assert len(offsets) == 1 and offsets[0].body["device"] == "ZFY0042"
