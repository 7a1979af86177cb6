"""A recorder that is already mounted somewhere: what `evidock offload MOUNTPOINT` uses.

For scripts, recovery and tests. The dock mounts nothing and unmounts nothing;
whoever mounted it keeps that job (and, for the wipe step, must have mounted it
writable, or wipes fail with a clear error and nothing else changes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from drivers import _walk
from drivers.base import DeviceInfo, RecorderIdentity, Recording, Refused
from drivers.usb_storage import MatchRule

_RULE = MatchRule(layout="")


def mounted_device(mountpoint: Path, serial: str | None) -> DeviceInfo:
    props = {"ID_SERIAL_SHORT": serial} if serial else {}
    return DeviceInfo.make("mounted", str(mountpoint.absolute()), None, props)


class MountedDriver:
    key: ClassVar[str] = "mounted"

    def matches(self, device: DeviceInfo) -> bool:
        return device.subsystem == "mounted"

    @contextmanager
    def attach(self, device: DeviceInfo) -> Iterator[Path]:
        root = Path(device.sys_path)
        os.close(_walk.open_root(root))  # fails clearly if it is not a folder
        yield root

    def identify(self, device: DeviceInfo, root: Path) -> RecorderIdentity:
        serial = device.serial or root.name or "unknown"
        return RecorderIdentity(driver=self.key, serial=serial)

    def recordings(self, root: Path) -> Iterator[Recording | Refused]:
        # Recordings only, by extension, as the USB driver's default rule does:
        # index, log and identity files are not evidence and stay where they are.
        return _walk.walk(root, include=_RULE.includes)

    def open(self, root: Path, recording: Recording) -> int:
        return _walk.open_file(root, recording.relpath)

    @contextmanager
    def writable(self, device: DeviceInfo, root: Path) -> Iterator[Path]:
        yield root

    def wipe(self, root: Path, recording: Recording) -> None:
        _walk.unlink_file(root, recording.relpath)
