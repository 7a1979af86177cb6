"""Recorders that show up as a USB disk (mass storage): most body-worn cameras once unlocked.

The driver recognises a USB block device that carries a filesystem and whose
udev properties match one of its ``MatchRule``s, mounts it read-only under a
private folder (``mount_root/<device>-XXXX``, 0700), checks that the rule's
layout folder (``DCIM`` by default) is there, and lists the recordings under
that folder by extension. It is built from plain values (the agent's wiring
reads the configuration; drivers never do)::

    UsbStorageDriver([MatchRule(vendor_id="2e8a", layout="DCIM")], Path("/run/evidock/mnt"))

Mounting: ``ro,nosuid,nodev,noexec``, files owned by root and private
(``uid=0,gid=0,fmask=0077,dmask=0077`` on FAT/exFAT/NTFS), UTF-8 names; the
kernel driver when there is one, else a FUSE helper (exfat-fuse), see
drivers/_mount.py. The folder is always unmounted and removed when
``attach()`` ends, lazily if something still holds a file open.

Wiping happens only inside ``writable()``, which switches the same mount to
read-write for the duration and back to read-only after (for a FUSE mount:
unmount and mount again, refused while a file is still open).

``recordings``, ``open``, ``writable`` and ``wipe`` take the folder that
``attach()`` yielded (the driver remembers which rule and mount it belongs
to); any other folder is a DeviceError. A daemon that was killed can leave
mounts behind: ``release_stale_mounts()`` at start unmounts them.

Every failure is a DeviceError (transient: the session retries, or the
officer plugs the camera in again) saying what, where and what to do.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import stat
import tempfile
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from drivers import _mount, _walk
from drivers.base import DeviceInfo, RecorderIdentity, Recording, Refused
from hashing.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

# What a body-worn camera (GA/T 947) or a dash/voice recorder writes: video
# containers and raw streams, audio, photos. Matched case-insensitively on the
# last extension. Index, log and GPS files are not evidence recordings and stay
# on the device; a rule's ``extensions`` replaces this list (empty: every file).
DEFAULT_EXTENSIONS: tuple[str, ...] = (
    # video
    "mp4", "mov", "avi", "mkv", "ts", "mts", "m4v", "3gp", "264", "h264", "265", "h265",
    # audio
    "wav", "mp3", "aac", "amr", "m4a",
    # photo
    "jpg", "jpeg", "png",
)  # fmt: skip

# Filesystems a recorder uses, and nothing else: each type mounted is a kernel
# (or FUSE) parser exposed to an image from outside, so a USB stick with, say,
# btrfs or squashfs on it is not ours and is never mounted.
DEFAULT_FILESYSTEMS = frozenset({"vfat", "exfat", "ntfs", "ext2", "ext3", "ext4"})

_GLOB_FIELDS = ("vendor_id", "model_id", "serial", "vendor", "model")
_EXT_RE = re.compile(r"[0-9A-Za-z_+-]{1,16}")


def _candidates(device: DeviceInfo, name: str) -> list[str]:
    """The device's values a rule field is matched against (udev property, then sysfs)."""
    keys: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        "vendor_id": (("ID_VENDOR_ID",), ("idVendor",)),
        "model_id": (("ID_MODEL_ID",), ("idProduct",)),
        "serial": (("ID_SERIAL_SHORT",), ("serial",)),
        "vendor": (("ID_VENDOR", "ID_VENDOR_FROM_DATABASE"), ("manufacturer",)),
        "model": (("ID_MODEL", "ID_MODEL_FROM_DATABASE"), ("product",)),
    }
    props, attrs = keys[name]
    values = [device.prop(k) for k in props] + [device.attr(k) for k in attrs]
    return [v for v in values if v]


@dataclass(frozen=True)
class MatchRule:
    """Which USB disks are recorders, where their recordings are, which files count.

    The five glob fields (``fnmatch``, case-insensitive) are matched against
    the device's udev properties and its USB parent's sysfs attributes:
    ``vendor_id`` (ID_VENDOR_ID / idVendor, e.g. "2e8a"), ``model_id``
    (ID_MODEL_ID / idProduct), ``serial`` (ID_SERIAL_SHORT / serial),
    ``vendor`` and ``model`` (ID_VENDOR, ID_MODEL, their *_FROM_DATABASE
    forms, manufacturer, product). "*" matches anything, even a missing value.

    ``layout``: a folder (may be nested, "DCIM/100MEDIA") that must exist at the
    filesystem's root once mounted, compared ignoring ASCII case; only files
    under it are recordings. "" accepts any layout and the whole disk.

    ``extensions``: file extensions that are recordings (no dot, any case);
    empty means every regular file. Refused entries (links, FIFOs, device nodes)
    are reported wherever they are.

    Raises ConfigError for an unusable value.
    """

    vendor_id: str = "*"
    model_id: str = "*"
    serial: str = "*"
    vendor: str = "*"
    model: str = "*"
    layout: str = "DCIM"
    extensions: tuple[str, ...] = field(default=DEFAULT_EXTENSIONS)

    def __post_init__(self) -> None:
        for name in _GLOB_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "\0" in value:
                raise ConfigError(
                    f'usb rule: {name} must be a non-empty glob such as "*" or "2e8a"; got {value!r}'
                )
        if not isinstance(self.layout, str):
            raise ConfigError(f"usb rule: layout must be a folder name; got {self.layout!r}")
        layout = self.layout.strip("/")
        parts = layout.split("/") if layout else []
        if "\0" in layout or any(p in ("", ".", "..") for p in parts):
            raise ConfigError(
                f'usb rule: layout {self.layout!r} must be a plain folder path such as "DCIM" '
                'or "DCIM/100MEDIA" (no "." or ".." parts), or "" for any'
            )
        given: object = self.extensions
        if not isinstance(given, tuple | list) or not all(isinstance(e, str) for e in given):
            raise ConfigError(
                f'usb rule: extensions must be a list of strings such as ["mp4", "wav"]; '
                f"got {given!r}"
            )
        exts = tuple(str(e).lstrip(".").lower() for e in given)
        bad = [e for e in exts if not _EXT_RE.fullmatch(e)]
        if bad:
            raise ConfigError(
                f'usb rule: {bad[0]!r} is not a file extension (letters and digits, e.g. "mp4")'
            )
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "extensions", tuple(dict.fromkeys(exts)))

    @classmethod
    def from_mapping(cls, d: Mapping[str, object], *, where: str = "usb rule") -> MatchRule:
        """A rule from a config table, e.g. ``{vendor_id = "2e8a", layout = "DCIM"}``.

        Unknown keys are errors (a misspelt key must not widen the match).
        Raises ConfigError naming ``where``.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: must be a table of keys, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"a rule takes {', '.join(known)}"
            )
        kwargs: dict[str, str | tuple[str, ...]] = {}
        for name in known:
            if name not in d:
                continue
            value = d[name]
            if name == "extensions":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise ConfigError(
                        f'{where}: extensions must be a list of strings such as ["mp4", "wav"]'
                    )
                kwargs[name] = tuple(value)
            elif isinstance(value, str):
                kwargs[name] = value
            else:
                raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except ConfigError as e:
            raise ConfigError(f"{where}: {str(e).removeprefix('usb rule: ')}") from None

    def matches(self, device: DeviceInfo) -> bool:
        """Whether the device's identity fits every glob (the layout is checked once mounted)."""
        for name in _GLOB_FIELDS:
            pattern = getattr(self, name).casefold()
            if pattern == "*":
                continue
            values = _candidates(device, name) or [""]
            if not any(fnmatch.fnmatchcase(v.casefold(), pattern) for v in values):
                return False
        return True

    @cached_property
    def _prefix(self) -> bytes:
        return os.fsencode(self.layout).lower() + b"/" if self.layout else b""

    @cached_property
    def _exts(self) -> frozenset[bytes]:
        return frozenset(os.fsencode(e) for e in self.extensions)

    def includes(self, relpath: bytes) -> bool:
        """Whether a regular file at ``relpath`` (raw bytes, relative to the root) is a recording."""
        if self._prefix and not relpath.lower().startswith(self._prefix):
            return False
        if not self._exts:
            return True
        name = relpath.rsplit(b"/", 1)[-1]
        _, dot, ext = name.rpartition(b".")
        return bool(dot) and ext.lower() in self._exts


def _has_layout(root: Path, layout: str) -> bool:
    """Whether ``layout`` exists under ``root`` as real folders (no links), ignoring ASCII case."""
    if not layout:
        return True
    fd = _walk.open_root(root)
    try:
        for part in os.fsencode(layout).split(b"/"):
            nxt = _open_subdir(fd, part)
            if nxt < 0:
                return False
            os.close(fd)
            fd = nxt
    except OSError as e:
        raise DeviceError(f"{root}: cannot read the recorder's folders: {e.strerror}") from e
    finally:
        os.close(fd)
    return True


def _open_subdir(fd: int, part: bytes) -> int:
    """The folder named ``part`` (ignoring ASCII case) in ``fd``, opened; -1 if none."""
    want = part.lower()
    for entry in os.scandir(fd):
        if os.fsencode(entry.name).lower() != want:
            continue
        try:
            return os.open(entry.name, _walk._DIR_FLAGS, dir_fd=fd)
        except OSError:  # a file or a symlink by that name: not the layout
            continue
    return -1


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class _Attached:
    device: DeviceInfo
    devnode: str
    rule: MatchRule
    how: _mount.MountPlan
    writable: bool = False


class UsbStorageDriver:
    """Driver ``usb``: USB mass-storage recorders. See the module docstring."""

    key: ClassVar[str] = "usb"

    def __init__(
        self,
        rules: Sequence[MatchRule],
        mount_root: Path,
        *,
        filesystems: Collection[str] = DEFAULT_FILESYSTEMS,
        timeout_s: float = 60.0,
    ) -> None:
        self.rules = tuple(rules)
        self.mount_root = Path(mount_root)
        self.filesystems = frozenset(filesystems)
        self.timeout_s = timeout_s
        self._attached: dict[Path, _Attached] = {}
        self._lock = threading.Lock()

    # -- recognising -------------------------------------------------------------

    def candidate_rules(self, device: DeviceInfo) -> list[MatchRule]:
        """The rules whose globs fit the device, in order ([] if it is no USB filesystem of ours)."""
        if not (
            device.subsystem == "block"
            and device.prop("ID_BUS") == "usb"
            and device.devnode
            and device.fs_type in self.filesystems
            and device.prop("ID_FS_USAGE") in (None, "filesystem")
        ):
            return []
        return [r for r in self.rules if r.matches(device)]

    def matches(self, device: DeviceInfo) -> bool:
        return bool(self.candidate_rules(device))

    # -- mounting ------------------------------------------------------------------

    def _prepare_root(self) -> None:
        root = self.mount_root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(root)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise DeviceError(
                    f"{root}: the mount folder is not a directory owned by this user (a symlink?)",
                    hint="fix or remove it",
                )
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(root, 0o700)
        except OSError as e:
            raise DeviceError(f"{root}: cannot prepare the mount folder: {e.strerror}") from e

    def _make_mountpoint(self, devnode: str) -> Path:
        self._prepare_root()
        safe = _UNSAFE.sub("_", Path(devnode).name)[:40] or "usb"
        try:
            return Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=self.mount_root))
        except OSError as e:
            raise DeviceError(f"{self.mount_root}: cannot make a mount folder: {e.strerror}") from e

    @contextlib.contextmanager
    def attach(self, device: DeviceInfo) -> Iterator[Path]:
        """Mount read-only, check the layout, yield the mountpoint; always unmount after.

        Raises DeviceError: no rule fits, the filesystem cannot be mounted here,
        mounting failed, or no candidate rule's layout folder is present.
        """
        rules = self.candidate_rules(device)
        if not rules or device.devnode is None or device.fs_type is None:
            raise DeviceError(
                f"{device.sys_path}: not a USB disk that a [usb] rule accepts; not mounted"
            )
        devnode = device.devnode
        how = _mount.plan(device.fs_type)
        mountpoint = self._make_mountpoint(devnode)
        try:
            _mount.mount(devnode, mountpoint, how, timeout=self.timeout_s)
            try:
                rule = next((r for r in rules if _has_layout(mountpoint, r.layout)), None)
                if rule is None:
                    layouts = ", ".join(sorted({f"{r.layout}/" for r in rules}))
                    raise DeviceError(
                        f"{devnode} ({device.serial or 'no serial'}): mounted, but none of "
                        f"{layouts} is at its root; not a recorder the [usb] rules describe "
                        '(add a rule with the right layout, or layout = "" for any)'
                    )
                with self._lock:
                    self._attached[mountpoint] = _Attached(device, devnode, rule, how)
                try:
                    yield mountpoint
                finally:
                    with self._lock:
                        del self._attached[mountpoint]
            finally:
                _mount.unmount(mountpoint, timeout=self.timeout_s)
        finally:
            self._remove_mountpoint(mountpoint)

    def _remove_mountpoint(self, mountpoint: Path) -> bool:
        if _mount.mount_entry(mountpoint) is not None:
            log.error("%s is still mounted; leaving the folder in place", mountpoint)
            return False
        try:
            mountpoint.rmdir()
        except OSError as e:
            log.error("cannot remove the mount folder %s: %s", mountpoint, e.strerror)
            return False
        return True

    def release_stale_mounts(self) -> list[Path]:
        """Unmount and remove what an earlier run left under ``mount_root`` (a daemon killed
        mid-session); call once at start, before any attach. Returns the folders released.

        Only this driver's own folders (``<device>-XXXXXXXX`` directly under
        ``mount_root``) are touched, and a folder is removed only once nothing
        is mounted on it; never recursively, so a recorder's files cannot be hit.
        """
        released: list[Path] = []
        try:
            # The entry's own type, never a look through it: a FUSE mount whose
            # helper died with the daemon answers every stat with ENOTCONN.
            with os.scandir(self.mount_root) as it:
                entries = [
                    Path(e.path)
                    for e in it
                    if e.is_dir(follow_symlinks=False) or _mount.mount_entry(Path(e.path))
                ]
        except FileNotFoundError:
            return released
        except OSError as e:
            raise DeviceError(
                f"{self.mount_root}: cannot list the mount folder: {e.strerror}"
            ) from e
        with self._lock:
            busy = set(self._attached)
        for folder in sorted(entries):
            if folder in busy:
                continue
            try:
                for _ in range(4):  # a mount stacked on another one needs one unmount each
                    if _mount.mount_entry(folder) is None:
                        break
                    log.warning("%s: still mounted from an earlier run; unmounting", folder)
                    _mount.unmount(folder, timeout=self.timeout_s)
                if self._remove_mountpoint(folder):
                    released.append(folder)
            except (OSError, DeviceError) as e:  # one bad folder must not stop the others
                log.error("%s: left from an earlier run and cannot be released: %s", folder, e)
        return released

    def _lookup(self, root: Path) -> _Attached:
        with self._lock:
            attached = self._attached.get(Path(root))
        if attached is None:
            raise DeviceError(
                f"{root}: not a recorder this driver has attached",
                hint="use the folder attach() yields",
            )
        return attached

    # -- identity and files ----------------------------------------------------------

    def identify(self, device: DeviceInfo, root: Path) -> RecorderIdentity:
        """Serial from udev (ID_SERIAL_SHORT), else the USB serial attribute, else the
        filesystem UUID (stable until the card is formatted again). Raises DeviceError
        when there is none of them."""
        extra: dict[str, str] = {}
        serial = (device.prop("ID_SERIAL_SHORT") or "").strip()
        source = "udev"
        if not serial:
            serial, source = (device.attr("serial") or "").strip(), "usb"
        if not serial and device.prop("ID_FS_UUID"):
            serial, source = f"fs-uuid-{device.prop('ID_FS_UUID')}", "fs_uuid"
        if not serial:
            raise DeviceError(
                f"{device.devnode or device.sys_path}: the recorder reports no serial number "
                "and its filesystem no UUID, so its recordings cannot be bound to it; "
                "offload it through a folder import with an explicit --device instead"
            )
        extra["serial_source"] = source
        vid = device.vendor_id or device.attr("idVendor")
        pid = device.model_id or device.attr("idProduct")
        if vid or pid:
            extra["usb_id"] = f"{vid or '?'}:{pid or '?'}"
        for key, prop in (
            ("fs_type", "ID_FS_TYPE"),
            ("fs_uuid", "ID_FS_UUID"),
            ("fs_label", "ID_FS_LABEL"),
        ):
            value = device.prop(prop)
            if value:
                extra[key] = value
        return RecorderIdentity(
            driver=self.key,
            serial=serial,
            vendor=device.vendor or device.attr("manufacturer"),
            model=device.model or device.attr("product"),
            extra=tuple(sorted(extra.items())),
        )

    def recordings(self, root: Path) -> Iterator[Recording | Refused]:
        """Regular files under the rule's layout with a recording extension, and every
        refused entry (links, FIFOs, device nodes) anywhere. Raises DeviceError."""
        rule = self._lookup(root).rule
        try:
            yield from _walk.walk(root, include=rule.includes)
        except OSError as e:
            raise DeviceError(f"{root}: listing the recorder failed: {e.strerror}") from e

    def open(self, root: Path, recording: Recording) -> int:
        """A read-only descriptor (never following links). Raises DeviceError."""
        try:
            return _walk.open_file(root, recording.relpath)
        except OSError as e:  # the recorder went away between open and fstat
            raise DeviceError(f"{recording.display}: cannot open: {e.strerror}") from e

    @contextlib.contextmanager
    def writable(self, device: DeviceInfo, root: Path) -> Iterator[Path]:
        """The same mount, read-write, for the wipe step; read-only again after.

        If going back to read-only fails, the recorder is unmounted rather than
        left writable. Raises DeviceError.
        """
        attached = self._lookup(root)
        if attached.writable:
            raise DeviceError(f"{root}: already writable (nested writable() calls)")
        _mount.remount(attached.devnode, root, attached.how, writable=True, timeout=self.timeout_s)
        attached.writable = True
        try:
            yield root
        except BaseException:
            self._back_to_readonly(attached, root, quiet=True)
            raise
        self._back_to_readonly(attached, root, quiet=False)

    def _back_to_readonly(self, attached: _Attached, root: Path, *, quiet: bool) -> None:
        attached.writable = False
        try:
            _mount.remount(
                attached.devnode, root, attached.how, writable=False, timeout=self.timeout_s
            )
        except DeviceError as e:
            log.error("%s; unmounting rather than leaving it writable", e)
            _mount.unmount(root, timeout=self.timeout_s)
            if not quiet:
                raise

    def wipe(self, root: Path, recording: Recording) -> None:
        """Delete one recording; only inside ``writable()``. Raises DeviceError."""
        if not self._lookup(root).writable:
            raise DeviceError(
                f"{recording.display}: not deleted: the recorder is mounted read-only "
                "(wipe only inside writable())"
            )
        _walk.unlink_file(root, recording.relpath)
        log.info("wiped %s from %s", recording.display, root)
