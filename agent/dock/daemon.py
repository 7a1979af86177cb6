"""`evidock agent`: the dock daemon, in the foreground (systemd-friendly).

It watches for recorders (udev for USB disks, inotify for watched folders,
cameras already docked at start included), runs one OffloadSession per
recorder in its own thread, many at once, each inside an error boundary so
one bad camera never stops the daemon or another slot (style.md 9), writes
what it is doing to ``status.json`` for `evidock status` and the kiosk, and
signs a checkpoint every few minutes if the ledger grew (design.md step 10).

SIGTERM or SIGINT stops it cleanly: watchers first, then each session at the
end of the file it is copying; what was not committed is copied next time.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from agent.dock import sdnotify
from agent.offload.session import OffloadPolicy, OffloadSession, SessionStatus
from drivers.base import DeviceInfo, Driver, RecorderIdentity
from hashing._fsutil import write_atomic
from hashing.station import Station

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_EVERY_S = 1.0
KEEP_FINISHED_S = 600  # a finished tile stays visible until its recorder leaves, at most this long
# An offload session that shows no sign of life for this long is hung, and the
# daemon stops petting the systemd watchdog (see Daemon.hung). Signs of life: a
# status change (each file, each state) and each look at its stop event, which
# the copy takes once per buffer. The quiet stretches of a healthy session are
# shorter: a probe is killed after 120 s, a busy ledger is waited for 60 s.
STALL_S = 300.0


class Watcher(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Uplink(Protocol):
    """The uploader, as the daemon drives it (uploader.sender.Uploader)."""

    def start(self) -> None: ...
    def stop(self, timeout_s: float = 10.0) -> None: ...
    def wake(self) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


@runtime_checkable
class Liveness(Protocol):
    """An uplink that can say whether its worker is alive and making progress; the
    watchdog is petted only while it is (an uplink without ``alive`` is not asked)."""

    def alive(self) -> bool: ...


class IdentitySource(Protocol):
    """Identities read before a recorder became a disk (GA/T 947.4 SDK mode)."""

    def take(self, serial: str | None) -> RecorderIdentity | None: ...


@runtime_checkable
class Preparer(Protocol):
    """A driver that readies a device (identify, sync clock, switch to disk mode)
    instead of offloading it; the disk it turns into is offloaded by another driver."""

    key: ClassVar[str]

    def matches(self, device: DeviceInfo) -> bool: ...
    def prepare(self, device: DeviceInfo) -> RecorderIdentity: ...


EventSink = Callable[[str, DeviceInfo], None]
WatcherFactory = Callable[[EventSink], Watcher]


class _Pulse(threading.Event):
    """A session's stop event that also records when it was last asked: the copy
    asks once per buffer, so a long copy is alive while it reads, and a read that
    blocks for good stops the asking (Daemon.hung)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = time.monotonic()

    def is_set(self) -> bool:
        self.asked = time.monotonic()
        return super().is_set()


@dataclass
class _Slot:
    device: DeviceInfo
    session: OffloadSession
    thread: threading.Thread
    stop: threading.Event
    present: bool = True


class Daemon:
    def __init__(
        self,
        station: Station,
        drivers: Sequence[Driver],
        policy: OffloadPolicy,
        watchers: Sequence[WatcherFactory],
        *,
        max_sessions: int = 20,
        checkpoint_interval_s: int = 300,
        preparers: Sequence[Preparer] = (),
        identities: Sequence[IdentitySource] = (),
        uplink: Uplink | None = None,
        stall_s: float = STALL_S,
    ) -> None:
        self.station = station
        self.uplink = uplink
        self.drivers = list(drivers)
        self.preparers = list(preparers)
        self.identities = list(identities)
        self.policy = policy
        self.watcher_factories = list(watchers)
        self.watchers: list[Watcher] = []
        self.checkpoint_interval_s = checkpoint_interval_s
        self.stopping = threading.Event()
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._capacity = threading.BoundedSemaphore(max_sessions)
        self.status_path = station.home / STATUS_FILE
        self.heartbeat = time.monotonic()
        self._receipts = threading.Event()
        # systemd: readiness, status and watchdog (sdnotify; Daemon.hung)
        self.stall_s = stall_s
        self._beats: dict[str, float] = {}  # slot -> last sign of life, once running
        self._watchdog_s = sdnotify.watchdog_interval()
        self._sd_status = ""
        self._stalled: str | None = None

    # -- events --------------------------------------------------------------

    def on_event(self, action: str, device: DeviceInfo) -> None:
        """Called by watchers, from their threads."""
        try:
            if action == "add":
                self._attach(device)
            elif action == "remove":
                self._detach(device)
        except Exception:  # error boundary: a watcher thread must survive anything
            log.exception("handling %s of %s failed", action, device.sys_path)

    def _driver_for(self, device: DeviceInfo) -> Driver | None:
        return next((d for d in self.drivers if d.matches(device)), None)

    def _attach(self, device: DeviceInfo) -> None:
        if self.stopping.is_set():
            return
        preparer = next((p for p in self.preparers if p.matches(device)), None)
        if preparer is not None:
            threading.Thread(
                target=self._prepare,
                args=(preparer, device),
                name=f"prepare {device.sys_path}",
                daemon=True,
            ).start()
            return
        driver = self._driver_for(device)
        if driver is None:
            log.debug("ignoring %s: no driver matches", device.sys_path)
            return
        with self._lock:
            slot = self._slots.get(device.sys_path)
            if slot is not None and slot.thread.is_alive():
                return
            stop = _Pulse()
            self._beats.pop(device.sys_path, None)  # not running until it has a session slot
            known = next(
                (i for i in (src.take(device.serial) for src in self.identities) if i is not None),
                None,
            )
            session = OffloadSession(
                self.station,
                driver,
                device,
                self.policy,
                on_change=self._changed,
                stop=stop,
                identity=known,
            )
            thread = threading.Thread(
                target=self._run, args=(session,), name=f"offload {device.sys_path}", daemon=True
            )
            self._slots[device.sys_path] = _Slot(device, session, thread, stop)
        log.info("recorder docked: %s (%s)", device.sys_path, driver.key)
        thread.start()

    def _prepare(self, preparer: Preparer, device: DeviceInfo) -> None:
        """Error boundary around a preparer: a refused password or a dead camera is logged."""
        try:
            identity = preparer.prepare(device)
            log.info(
                "recorder %s prepared (%s); waiting for its disk", identity.serial, preparer.key
            )
        except Exception:
            log.exception("preparing %s with %s failed", device.sys_path, preparer.key)

    def _run(self, session: OffloadSession) -> None:
        with self._capacity:
            self._beats[session.device.sys_path] = time.monotonic()
            try:
                summary = session.run()
                log.info(
                    "session %s ended %s: %d new, %d skipped, %d anomalies",
                    session.device.sys_path,
                    summary.status.state,
                    len(summary.new),
                    summary.skipped,
                    len(summary.anomaly_entries),
                )
            except Exception:  # error boundary (style.md 9)
                log.exception("session %s crashed", session.device.sys_path)
                session.status.state = "failed"
                session.status.errors.append("internal error; see the log")
            if self.uplink is not None:
                self.uplink.wake()  # new recordings and a new checkpoint to send

    def _detach(self, device: DeviceInfo) -> None:
        with self._lock:
            slot = self._slots.get(device.sys_path)
            if slot is None:
                return
            slot.present = False
            slot.stop.set()
        log.info("recorder removed: %s", device.sys_path)

    def notify_receipt(self, sha256: str) -> None:
        """The platform receipted a recording (called from the uploader's thread).

        Cameras usually stay docked to charge: with the ``after_receipt`` policy
        the serve loop then runs a new session for each recorder still docked,
        which copies nothing new and wipes what the platform now holds."""
        if self.policy.wipe == "after_receipt":
            self._receipts.set()

    def _rewipe_docked(self) -> None:
        if not self._receipts.is_set():
            return
        self._receipts.clear()
        with self._lock:
            idle = [s.device for s in self._slots.values() if s.present and not s.thread.is_alive()]
        for device in idle:
            log.info("receipts arrived: wiping what the platform holds from %s", device.sys_path)
            self._attach(device)

    def _changed(self, status: SessionStatus) -> None:
        self.heartbeat = time.monotonic()
        self._beats[status.slot] = self.heartbeat

    # -- status --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            for key, slot in list(self._slots.items()):
                done = slot.session.status.finished
                if (
                    not slot.thread.is_alive()
                    and done
                    and (not slot.present or now - done > KEEP_FINISHED_S)
                ):
                    del self._slots[key]
            sessions = [
                s.session.status.as_dict() | {"present": s.present} for s in self._slots.values()
            ]
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "updated": now,
            "station": self.station.station_id,
            "sessions": sessions,
        }
        if self.uplink is not None:
            status["upload"] = self.uplink.snapshot()
        return status

    def write_status(self) -> None:
        write_atomic(self.status_path, json.dumps(self.snapshot(), ensure_ascii=False).encode())

    # -- systemd watchdog ----------------------------------------------------

    def hung(self) -> str | None:
        """Why the daemon is stuck, or None while its loops are alive.

        Stuck: an offload session running (it has its session slot, so not one
        waiting for a free slot) with no sign of life for ``stall_s`` (a status
        change, or a look at its stop event), or an uplink that says its worker
        is not alive. The serve loop itself is covered by being the one that
        pets: if it hangs, nothing pets.
        """
        now = time.monotonic()
        with self._lock:
            slots = list(self._slots.items())
        for key, slot in slots:
            beat = self._beats.get(key)
            if beat is None or not slot.thread.is_alive():
                continue
            asked = slot.stop.asked if isinstance(slot.stop, _Pulse) else 0.0
            quiet = now - max(beat, asked)
            if quiet > self.stall_s:
                status = slot.session.status
                return (
                    f"offload of {status.serial or key} ({status.state}) "
                    f"has shown no progress for {quiet:.0f} s"
                )
        uplink: object = self.uplink  # Liveness is optional: not part of Uplink
        if isinstance(uplink, Liveness) and not uplink.alive():
            return "the upload worker is not alive"
        return None

    def _describe(self) -> str:
        with self._lock:
            slots = list(self._slots.values())
        docked = sum(1 for s in slots if s.present)
        busy = sum(1 for s in slots if s.thread.is_alive())
        return f"{docked} recorder(s) docked, {busy} offloading"

    def _pet_watchdog(self) -> None:
        """WATCHDOG=1 (when systemd asked for a watchdog) and STATUS= changes, unless
        hung(): then systemd restarts the daemon after WatchdogSec."""
        try:
            problem = self.hung()
        except Exception:  # a fault in the check itself: better restarted than blind
            log.exception("the watchdog check failed")
            problem = "the watchdog check failed (see the log)"
        if problem is not None:
            if self._stalled is None:
                log.error("%s; no longer petting the systemd watchdog", problem)
                sdnotify.notify(f"STATUS=stalled: {problem}")
            self._stalled = problem
            return
        if self._stalled is not None:
            log.warning("progress again after: %s", self._stalled)
            self._stalled = None
            self._sd_status = ""
        messages = ["WATCHDOG=1"] if self._watchdog_s is not None else []
        status = self._describe()
        if status != self._sd_status:
            self._sd_status = status
            messages.append(f"STATUS={status}")
        if messages:
            sdnotify.notify("\n".join(messages))

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for driver in self.drivers:
            release = getattr(driver, "release_stale_mounts", None)
            if not callable(release):
                continue
            try:
                for folder in release():
                    log.warning("released a mount left by an earlier run: %s", folder)
            except Exception:  # the dock must still start; new mounts get new folders
                log.exception("releasing stale mounts of %s failed", driver.key)
        if self.uplink is not None:
            self.uplink.start()
        for factory in self.watcher_factories:
            watcher = factory(self.on_event)
            watcher.start()
            self.watchers.append(watcher)
        self.write_status()
        self._sd_status = self._describe()
        sdnotify.notify(f"READY=1\nSTATUS={self._sd_status}")

    def serve(self, until: threading.Event | None = None) -> None:
        """Run until ``until`` (or self.stopping) is set; then stop cleanly."""
        until = until or self.stopping
        next_checkpoint = time.monotonic() + self.checkpoint_interval_s
        while not until.wait(STATUS_EVERY_S):
            self.heartbeat = time.monotonic()
            try:
                self._rewipe_docked()
                self.write_status()
                if time.monotonic() >= next_checkpoint:
                    self.station.checkpoint()
                    next_checkpoint = time.monotonic() + self.checkpoint_interval_s
                    if self.uplink is not None:
                        self.uplink.wake()
            except Exception:  # the loop must outlive a full disk or a busy database
                log.exception("status or checkpoint failed; retrying")
            self._pet_watchdog()
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> None:
        sdnotify.notify("STOPPING=1\nSTATUS=stopping: ending sessions, signing a checkpoint")
        self.stopping.set()
        for watcher in self.watchers:
            try:
                watcher.stop()
            except Exception:
                log.exception("stopping a watcher failed")
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            slot.stop.set()
        deadline = time.monotonic() + timeout_s
        for slot in slots:
            slot.thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.station.checkpoint()
        finally:
            if self.uplink is not None:
                try:
                    self.uplink.stop()
                except Exception:
                    log.exception("stopping the uploader failed")
            self.write_status()
