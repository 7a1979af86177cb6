"""The driver interface (style.md 4-6): what every kind of recorder offers the dock.

A driver recognises a device from plain values (``DeviceInfo``, built from udev
properties or a watched folder, so drivers are tested without udev), makes its
files reachable under a folder (``attach``: mount read-only, or nothing for a
folder someone else mounted), says who the recorder is (``identify``), lists
its recordings (``recordings``), opens one for reading (``open``) and deletes
one when the wipe policy allows (``wipe``, inside ``writable``).

Drivers never talk to MQTT or the ledger; the offload session (agent/) does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the dock first sees it: udev properties, or a folder that appeared."""

    subsystem: str  # "block", "folder", "demo", ...
    sys_path: str  # udev syspath, or the folder's path: unique while attached
    devnode: str | None = None  # /dev/sdb1
    properties: tuple[tuple[str, str], ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(
        cls,
        subsystem: str,
        sys_path: str,
        devnode: str | None = None,
        properties: Mapping[str, str] | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> DeviceInfo:
        return cls(
            subsystem,
            sys_path,
            devnode,
            tuple(sorted((properties or {}).items())),
            tuple(sorted((attributes or {}).items())),
        )

    def prop(self, name: str) -> str | None:
        return dict(self.properties).get(name)

    def attr(self, name: str) -> str | None:
        return dict(self.attributes).get(name)

    @property
    def serial(self) -> str | None:
        return self.prop("ID_SERIAL_SHORT") or self.prop("ID_SERIAL")

    @property
    def vendor_id(self) -> str | None:
        return self.prop("ID_VENDOR_ID")

    @property
    def model_id(self) -> str | None:
        return self.prop("ID_MODEL_ID")

    @property
    def vendor(self) -> str | None:
        return self.prop("ID_VENDOR")

    @property
    def model(self) -> str | None:
        return self.prop("ID_MODEL")

    @property
    def fs_type(self) -> str | None:
        return self.prop("ID_FS_TYPE")


@dataclass(frozen=True)
class RecorderIdentity:
    """Who a recorder is, as far as it (or its folder) says."""

    driver: str
    serial: str
    vendor: str | None = None
    model: str | None = None
    officer: str | None = None  # police number (警号) when the device knows it
    officer_name: str | None = None
    unit_no: str | None = None
    unit_name: str | None = None
    # Device clock minus dock clock, read before any time sync (GA/T 947.4).
    clock_offset_ms: int | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class Recording:
    """One file on a recorder, by its path relative to the recorder's root, as raw bytes."""

    relpath: bytes
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return os.fsdecode(self.relpath.rsplit(b"/", 1)[-1])

    @property
    def display(self) -> str:
        """The path as text; undecodable bytes shown as \\xNN."""
        return self.relpath.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Refused:
    """Something on a recorder that is not copied, and why (symlink, FIFO, device...)."""

    relpath: bytes
    reason: str

    @property
    def display(self) -> str:
        return self.relpath.decode("utf-8", "backslashreplace")


@runtime_checkable
class Driver(Protocol):
    key: ClassVar[str]

    def matches(self, device: DeviceInfo) -> bool:
        """True if this driver handles the device."""
        ...

    def attach(self, device: DeviceInfo) -> AbstractContextManager[Path]:
        """Make the recorder's files reachable (read-only) under the yielded folder."""
        ...

    def identify(self, device: DeviceInfo, root: Path) -> RecorderIdentity:
        """Read the recorder's identity. Raises DeviceError."""
        ...

    def recordings(self, root: Path) -> Iterator[Recording | Refused]:
        """Every recording under ``root`` (never following links), and what was refused."""
        ...

    def open(self, root: Path, recording: Recording) -> int:
        """A read-only file descriptor for the recording. Raises DeviceError."""
        ...

    def writable(self, device: DeviceInfo, root: Path) -> AbstractContextManager[Path]:
        """The recorder's files, writable, for the wipe step only."""
        ...

    def wipe(self, root: Path, recording: Recording) -> None:
        """Delete one recording from the recorder. Raises DeviceError."""
        ...
