"""The one adapter from pyudev to ``DeviceInfo`` (style.md 5), and udev hot-plug watching.

Drivers only ever see frozen ``DeviceInfo`` values; this module is the only
place that touches pyudev, so drivers are tested with plain values and the
daemon's wiring is the only thing that needs libudev.

- ``device_info(dev)``: a pyudev device as a ``DeviceInfo``: its subsystem,
  syspath, device node, every udev property, a few attributes of its own
  (``size``, ``ro``) and the useful sysfs attributes of its USB parent
  (``idVendor``, ``idProduct``, ``serial``, ``manufacturer``, ``product``, ...).
- ``existing_block_devices(context)``: USB block devices carrying a
  filesystem that are already present (cameras docked before the daemon
  started).
- ``UdevWatcher``: add / change / remove events for block devices, delivered
  to a callback from one thread; ``stop()`` returns at once.

Tested against umockdev (tests/integration/hardware.py), which emulates
sysfs and the udev netlink socket for a process started with its preload
library; no udevd runs on the test machines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import pyudev

from drivers.base import DeviceInfo

log = logging.getLogger(__name__)

# Actions handed to the callback; "bind", "unbind", "move", "online"... are not
# about a filesystem appearing or going, so they are dropped.
ACTIONS = frozenset({"add", "change", "remove"})

# sysfs attributes of the USB device (the parent with subsystem "usb", devtype
# "usb_device") copied into DeviceInfo.attributes under their sysfs names.
USB_ATTRIBUTES = (
    "idVendor",
    "idProduct",
    "serial",
    "manufacturer",
    "product",
    "bcdDevice",
    "speed",
    "busnum",
    "devnum",
)
# The block device's own attributes: size in 512-byte sectors, read-only flag.
BLOCK_ATTRIBUTES = ("size", "ro")

EventCallback = Callable[[str, DeviceInfo], None]


def _read_attributes(dev: Any, names: tuple[str, ...], into: dict[str, str]) -> None:
    attrs = dev.attributes
    for name in names:
        try:
            raw = attrs.get(name)
        except (KeyError, OSError, ValueError) as e:  # vanished mid-read (unplugged)
            log.debug("%s: attribute %s unreadable: %s", dev.sys_path, name, e)
            continue
        if raw is None:
            continue
        value = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
        into[name] = value.strip()


def device_info(dev: pyudev.Device) -> DeviceInfo:
    """A pyudev device as a frozen ``DeviceInfo``. Never raises for a vanished device.

    On a ``remove`` event sysfs is usually gone already: the properties come
    from the event itself, the attributes are then simply missing.
    """
    properties = {str(k): str(v) for k, v in dev.properties.items()}
    attributes: dict[str, str] = {}
    _read_attributes(dev, BLOCK_ATTRIBUTES, attributes)
    try:
        usb = dev.find_parent("usb", "usb_device")
    except (OSError, ValueError) as e:
        log.debug("%s: USB parent unreadable: %s", dev.sys_path, e)
        usb = None
    if usb is not None:
        _read_attributes(usb, USB_ATTRIBUTES, attributes)
    return DeviceInfo.make(
        str(dev.subsystem or ""),
        str(dev.sys_path),
        dev.device_node,
        properties,
        attributes,
    )


def is_usb_filesystem(info: DeviceInfo) -> bool:
    """A block device on the USB bus that carries a filesystem (a partition, or a
    whole "superfloppy" disk as many cameras present)."""
    return (
        info.subsystem == "block"
        and info.prop("ID_BUS") == "usb"
        and bool(info.fs_type)
        and info.prop("ID_FS_USAGE") in (None, "filesystem")
    )


def existing_block_devices(context: pyudev.Context) -> list[DeviceInfo]:
    """USB block devices with a filesystem present now (cameras docked before start).

    libudev ORs several property filters, so only ``ID_BUS`` is given to it and
    the rest is checked here.
    """
    found = [device_info(dev) for dev in context.list_devices(subsystem="block", ID_BUS="usb")]
    return sorted((i for i in found if is_usb_filesystem(i)), key=lambda i: i.sys_path)


class UdevWatcher:
    """Delivers ``(action, DeviceInfo)`` for block devices to ``callback``, from one thread.

    ``start()`` opens the netlink monitor before it returns, so no event after
    it is lost; then (with ``existing=True``) the thread first reports every
    USB filesystem already present as an ``"add"`` and then each event as it
    comes. A device docked during start-up may therefore be reported twice;
    callers key their sessions by ``sys_path`` anyway. The callback runs in the
    watcher's thread and should hand work off quickly; an exception from it is
    logged and the watcher goes on (one bad camera never stops the others).

    ``stop()`` wakes the thread through a pipe and returns as soon as it has
    ended (at once, unless a callback is still running).
    """

    def __init__(
        self,
        callback: EventCallback,
        context: pyudev.Context | None = None,
        *,
        subsystem: str = "block",
        existing: bool = True,
    ) -> None:
        self.callback = callback
        self.context = context
        self.subsystem = subsystem
        self.existing = existing
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._monitor: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open the udev monitor and start the thread. Raises OSError if udev is unusable."""
        if self._thread is not None:
            raise RuntimeError("UdevWatcher.start() called twice")
        if self.context is None:
            self.context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(self.context)
        monitor.filter_by(self.subsystem)
        monitor.start()
        self._monitor = monitor
        self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(
            target=self._run, args=(monitor, self._wake[0]), name="udev-watcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread. Safe to call more than once, and from the callback itself."""
        self._stopping.set()
        with self._lock:
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):  # already woken
                    os.write(self._wake[1], b"x")
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("udev watcher did not stop within %.1f s (a callback is busy)", timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------

    def _deliver(self, action: str, info: DeviceInfo) -> None:
        try:
            self.callback(action, info)
        except Exception:  # error boundary (style.md 9): the watcher outlives any callback
            log.exception("udev %s of %s: the handler failed", action, info.sys_path)

    def _run(self, monitor: Any, wake: int) -> None:
        try:
            self._loop(monitor, wake)
        finally:
            with self._lock:
                if self._wake is not None:
                    os.close(self._wake[0])
                    os.close(self._wake[1])
                    self._wake = None
                self._monitor = None

    def _loop(self, monitor: Any, wake: int) -> None:
        if self.existing and self.subsystem == "block":
            try:
                for info in existing_block_devices(self.context):
                    if self._stopping.is_set():
                        return
                    self._deliver("add", info)
            except OSError as e:
                log.error("listing the USB disks already present failed: %s", e)
        poller = select.poll()
        poller.register(monitor.fileno(), select.POLLIN)
        poller.register(wake, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                if fd == wake:
                    return
                if events & (select.POLLHUP | select.POLLNVAL):
                    log.error("the udev monitor socket closed; no more hot-plug events")
                    return
                self._drain(monitor)  # POLLIN, or POLLERR for a pending ENOBUFS

    def _drain(self, monitor: Any) -> None:
        while True:
            try:
                dev = monitor.poll(timeout=0)
            except OSError as e:
                # ENOBUFS: the kernel dropped events; what was missed shows up
                # again at the next start (existing devices are re-listed).
                log.warning("udev events lost or unreadable: %s", e)
                return
            if dev is None or self._stopping.is_set():
                return
            action = str(dev.action or "")
            if action in ACTIONS:
                self._deliver(action, device_info(dev))
