"""The daemon as a systemd service: the units verify, readiness and the watchdog.

systemd itself is stood in for by what it offers a Type=notify service: a real
AF_UNIX datagram socket named by $NOTIFY_SOCKET, and $WATCHDOG_USEC. The tests
read what the daemon sends there: READY=1 once it runs, WATCHDOG=1 while its
loops are alive, and no WATCHDOG=1 once an offload session hangs.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.dock import sdnotify
from agent.dock.daemon import Daemon, EventSink, Watcher
from agent.offload.copier import copy_and_verify
from agent.offload.session import OffloadPolicy
from drivers.base import Recording
from drivers.demo import DemoCamera
from drivers.folder import FolderDriver, FolderWatcher
from hashing.errors import DeviceError
from hashing.station import Station

REPO = Path(__file__).parents[2]
UNITS = REPO / "systemd"
EVIDOCK = REPO / ".venv" / "bin" / "evidock"
INSTALLED = "/usr/local/bin/evidock"


class NotifySocket:
    """What systemd listens on for sd_notify: every datagram, with when it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self, since: float = 0.0) -> list[tuple[float, str]]:
        """(time, one VAR=value line) received after ``since``."""
        with self._lock:
            return [(t, line) for t, m in self.messages if t > since for line in m.splitlines()]

    def count(self, line: str, since: float = 0.0) -> int:
        return sum(1 for _, got in self.lines(since) if got == line)

    def wait_for(self, found: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not found():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.lines()}")
            time.sleep(0.05)

    def first(self, prefix: str, since: float = 0.0) -> tuple[float, str] | None:
        return next(((t, m) for t, m in self.lines(since) if m.startswith(prefix)), None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short folder of its own: AF_UNIX paths are limited to 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="evd-notify-"))
    sock = NotifySocket(folder / "notify")
    yield sock
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


# -- the units ------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    units = sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.timer"))
    assert {u.name for u in units} >= {
        "evidock.service",
        "evidock-receive.service",
        "evidock-checkpoint.timer",
        "evidock-retention.service",
        "evidock-retention.timer",
        "evidock-scrub.service",
        "evidock-scrub.timer",
    }
    if not Path(INSTALLED).exists():
        # Not installed on this machine: verify the same units with ExecStart on
        # the development venv's evidock (verify insists the binary exists).
        for unit in units:
            text = unit.read_text(encoding="utf-8").replace(INSTALLED, str(EVIDOCK))
            (tmp_path / unit.name).write_text(text, encoding="utf-8")
        units = [tmp_path / u.name for u in units]
    done = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, check=False
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "evidock" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_daemon_unit_is_a_hardened_notify_service() -> None:
    s = unit_settings("evidock.service")
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30"],
        "Restart": ["on-failure"],
        "ExecStart": [f"{INSTALLED} agent"],  # the other units' path convention
        "ProtectSystem": ["strict"],
        "ReadWritePaths": ["/var/lib/evidock /run/evidock"],
        "StateDirectory": ["evidock"],
        "StateDirectoryMode": ["0700"],
        "RuntimeDirectory": ["evidock"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "ProtectHome": ["yes"],
        "ProtectKernelTunables": ["yes"],
        "UMask": ["0077"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"],
        "CapabilityBoundingSet": ["CAP_SYS_ADMIN CAP_DAC_READ_SEARCH"],
        "DevicePolicy": ["closed"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    assert "/dev/fuse rw" in s["DeviceAllow"] and "block-sd rw" in s["DeviceAllow"]
    # these would break the dock (the unit says why)
    for key in ("ProtectKernelModules", "ProtectClock", "PrivateDevices"):
        assert key not in s, key
    checkpoint = unit_settings("evidock-checkpoint.service")
    assert checkpoint["ExecStart"][0].startswith(INSTALLED)


# -- sd_notify ---------------------------------------------------------------------


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert sdnotify.notify("READY=1") is False  # never raises


def test_notify_reaches_path_and_abstract_sockets(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    assert sdnotify.notify("READY=1\nSTATUS=测试")
    notify_socket.wait_for(lambda: notify_socket.count("STATUS=测试") == 1, 5, "STATUS")
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"evidock-test-{os.getpid()}-{time.monotonic_ns()}"
    abstract.bind("\0" + name)
    abstract.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1")
        assert abstract.recv(64) == b"WATCHDOG=1"
    finally:
        abstract.close()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # inherited from a parent: not ours
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    for bad in ("0", "-5", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


# -- `evidock agent` under a stand-in systemd ----------------------------------------


def test_agent_is_ready_pets_the_watchdog_and_says_it_stops(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "dock"
    root.mkdir()
    cfg = tmp_path / "evidock.toml"
    cfg.write_text(
        f'[folder]\nroots = ["{root}"]\nquiet_s = 0\n[usb]\nenabled = false\n'
        '[offload]\nwipe = "never"\nfree_margin_mb = 0\n'
    )
    home = tmp_path / "home"
    Station.init(home, "ST-1").close()
    env = {
        **os.environ,
        "EVIDOCK_HOME": str(home),
        "EVIDOCK_CONFIG": str(cfg),
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "2000000",
    }
    env.pop("WATCHDOG_PID", None)
    agent = subprocess.Popen([str(EVIDOCK), "agent"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        notify_socket.wait_for(lambda: notify_socket.count("READY=1") == 1, 60, "READY=1")
        ready_at, _ = notify_socket.first("READY=1") or (0.0, "")
        assert (home / "status.json").exists()  # READY only after the first status
        assert notify_socket.first("STATUS=0 recorder(s) docked") is not None
        notify_socket.wait_for(
            lambda: notify_socket.count("WATCHDOG=1", ready_at) >= 4, 15, "4 x WATCHDOG=1"
        )
        pets = [t for t, m in notify_socket.lines(ready_at) if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        assert max(gaps) < 2.0, gaps  # each pet before WATCHDOG_USEC ran out
        cam = DemoCamera(tmp_path / "cam", "CAM1", size=(160, 120))
        cam.record(2, 1)
        cam.plug_into(root)
        notify_socket.wait_for(
            lambda: notify_socket.first("STATUS=1 recorder(s) docked") is not None,
            30,
            "a STATUS line naming the docked recorder",
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert notify_socket.first("STOPPING=1") is not None


# -- the watchdog and a hung offload ------------------------------------------------


class StallingDriver(FolderDriver):
    """The real folder driver, except that opening a recording blocks until
    released: an offload loop stuck in a read of a dead recorder."""

    key: ClassVar[str] = "stalling-folder"

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(roots)
        self.entered = threading.Event()
        self.release = threading.Event()

    def open(self, root: Path, recording: Recording) -> int:
        self.entered.set()
        self.release.wait()
        return super().open(root, recording)


class SlowDriver(FolderDriver):
    """Slow but alive: each recording takes a while to open, then copies normally."""

    key: ClassVar[str] = "slow-folder"

    def open(self, root: Path, recording: Recording) -> int:
        time.sleep(0.4)
        return super().open(root, recording)


def run_daemon(
    tmp_path: Path,
    driver: FolderDriver,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    notify_socket: NotifySocket,
    **kwargs: Any,
) -> tuple[Daemon, threading.Event, threading.Thread]:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    station = Station.init(tmp_path / "home", "ST-1")

    def watcher(sink: EventSink) -> Watcher:
        return FolderWatcher([root], sink, quiet_s=0)

    daemon = Daemon(
        station,
        [driver],
        OffloadPolicy(wipe="never", free_margin_bytes=0),
        [watcher],
        **kwargs,
    )
    stop = threading.Event()
    daemon.start()
    server = threading.Thread(target=daemon.serve, args=(stop,), daemon=True)
    server.start()
    return daemon, stop, server


def dock(tmp_path: Path, root: Path, serial: str, clips: int) -> None:
    cam = DemoCamera(tmp_path / serial, serial, size=(160, 120))
    cam.record(clips, 1)
    cam.plug_into(root)


def test_a_hung_offload_stops_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "dock"
    root.mkdir()
    driver = StallingDriver([root])
    daemon, stop, server = run_daemon(
        tmp_path, driver, root, monkeypatch, notify_socket, stall_s=1.5
    )
    try:
        notify_socket.wait_for(lambda: notify_socket.count("READY=1") == 1, 10, "READY=1")
        notify_socket.wait_for(lambda: notify_socket.count("WATCHDOG=1") >= 2, 10, "pets")
        dock(tmp_path, root, "CAM1", 2)
        assert driver.entered.wait(30), "the session never reached open()"
        notify_socket.wait_for(
            lambda: notify_socket.first("STATUS=stalled:") is not None, 10, "STATUS=stalled"
        )
        stalled_at, status = notify_socket.first("STATUS=stalled:") or (0.0, "")
        assert re.fullmatch(
            r"STATUS=stalled: offload of CAM1 \(copying\) has shown no progress for \d+ s", status
        ), status
        hung = daemon.hung()
        assert hung is not None and "CAM1" in hung
        time.sleep(3.5)  # more than WATCHDOG_USEC: systemd would have killed it by now
        assert notify_socket.count("WATCHDOG=1", stalled_at) == 0
        # once the recorder answers again the loop is alive again
        driver.release.set()
        notify_socket.wait_for(
            lambda: notify_socket.count("WATCHDOG=1", stalled_at) >= 2, 30, "pets again"
        )
        notify_socket.wait_for(
            lambda: bool(daemon.snapshot()["sessions"][0]["safe_to_unplug"]), 60, "committed"
        )
    finally:
        driver.release.set()
        stop.set()
        server.join(60)
    assert not server.is_alive()
    assert notify_socket.first("STOPPING=1") is not None


def test_a_slow_but_progressing_offload_keeps_the_watchdog_petted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "dock"
    root.mkdir()
    driver = SlowDriver([root])
    daemon, stop, server = run_daemon(
        tmp_path, driver, root, monkeypatch, notify_socket, stall_s=1.5
    )
    try:
        dock(tmp_path, root, "CAM2", 8)  # 8 x 0.4 s of opening: longer than stall_s
        notify_socket.wait_for(
            lambda: bool(
                daemon.snapshot()["sessions"] and daemon.snapshot()["sessions"][0]["safe_to_unplug"]
            ),
            60,
            "committed",
        )
    finally:
        stop.set()
        server.join(60)
    assert notify_socket.first("STATUS=stalled") is None
    pets = [t for t, m in notify_socket.lines() if m == "WATCHDOG=1"]
    assert len(pets) >= 3
    assert max(b - a for a, b in itertools.pairwise(pets)) < 2.0  # within WATCHDOG_USEC


def test_a_long_copy_is_alive_while_it_reads(tmp_path: Path) -> None:
    """Within one file the copy shows life by asking its stop event once per read
    (the _Pulse the daemon gives each session). A source that trickles for 3 s
    keeps the pulse fresh throughout."""
    from agent.dock.daemon import _Pulse

    pulse = _Pulse()
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            copy_and_verify(read_fd, tmp_path / "staged", source_name="trickle", stop=pulse)
        except DeviceError as e:  # a pipe has no size to compare: expected at the end
            errors.append(e)

    copier = threading.Thread(target=copy)
    copier.start()
    ages = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        os.write(write_fd, b"x" * 64)
        time.sleep(0.1)
        ages.append(time.monotonic() - pulse.asked)
    os.close(write_fd)
    copier.join(10)
    os.close(read_fd)
    assert max(ages) < 0.5, ages
    assert errors and "changed while copied" in str(errors[0])


class DeadUplink:
    """An uplink whose worker has died (Daemon.Liveness)."""

    def __init__(self) -> None:
        self.alive_now = True

    def start(self) -> None: ...
    def stop(self, timeout_s: float = 10.0) -> None: ...
    def wake(self) -> None: ...
    def snapshot(self) -> dict[str, Any]:
        return {}

    def alive(self) -> bool:
        return self.alive_now


def test_a_dead_upload_worker_stops_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "dock"
    root.mkdir()
    uplink = DeadUplink()
    daemon, stop, server = run_daemon(
        tmp_path, FolderDriver([root]), root, monkeypatch, notify_socket, uplink=uplink
    )
    try:
        notify_socket.wait_for(lambda: notify_socket.count("WATCHDOG=1") >= 2, 10, "pets")
        uplink.alive_now = False
        notify_socket.wait_for(
            lambda: notify_socket.first("STATUS=stalled: the upload worker") is not None,
            10,
            "stalled",
        )
        stalled_at, _ = notify_socket.first("STATUS=stalled") or (0.0, "")
        time.sleep(2.5)
        assert notify_socket.count("WATCHDOG=1", stalled_at) == 0
        assert daemon.hung() == "the upload worker is not alive"
    finally:
        stop.set()
        server.join(60)
