"""Recorders that arrive as folders: vendor sync tools, network shares, card readers.

Someone else (a vendor's sync tool, an automounter, an operator) puts each
recorder's files in a folder directly under a watched root::

    /srv/evidock/incoming/          <- a watched root
        ZFY0042/                    <- one recorder
            recorder.json           <- its identity (optional)
            DCIM/100MEDIA/ZFY0042_20260101080000_0001.MP4

``FolderDriver`` offloads such a folder; ``FolderWatcher`` reports folders as they
appear and disappear. A folder is taken for what it is: nothing is mounted, and
every file access goes through ``drivers._walk`` (no symlink followed, only
regular files opened). A folder that is itself a symbolic link is refused: a
link under a root could point the dock at any folder on the machine.

Identity comes from the identity file in the folder (strict JSON, below) or,
without one, from the folder's name. The identity file is never offered as a
recording.

Folders whose names start with ``.`` are ignored, so a tool can build a folder
under a hidden name and rename it into view when complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from drivers import _walk
from drivers.base import DeviceInfo, RecorderIdentity, Recording, Refused
from hashing.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

IDENTITY_FILE = "recorder.json"
MAX_IDENTITY_BYTES = 16 * 1024
MAX_TEXT = 128
# key -> type; "serial" is required. Unknown keys are refused: a misspelt
# "oficer" must not silently leave a recording unbound.
IDENTITY_KEYS: dict[str, type] = {
    "serial": str,
    "vendor": str,
    "model": str,
    "officer": str,
    "officer_name": str,
    "unit_no": str,
    "unit_name": str,
    "clock_offset_ms": int,
}
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class IdentityFileError(DeviceError):
    """The identity file in a recorder's folder is unusable (too big, not JSON, bad keys)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def parse_identity(data: bytes, where: str = IDENTITY_FILE) -> dict[str, str | int]:
    """Validate an identity file's bytes. Raises IdentityFileError saying what is wrong."""
    if len(data) > MAX_IDENTITY_BYTES:
        raise IdentityFileError(f"{where}: larger than {MAX_IDENTITY_BYTES} bytes; refused")
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IdentityFileError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise IdentityFileError(f"{where}: must hold a JSON object, not {type(value).__name__}")
    unknown = sorted(set(value) - set(IDENTITY_KEYS))
    if unknown:
        allowed = ", ".join(IDENTITY_KEYS)
        raise IdentityFileError(f"{where}: unknown keys {unknown} (allowed: {allowed})")
    out: dict[str, str | int] = {}
    for key, item in value.items():
        kind = IDENTITY_KEYS[key]
        if item is None:
            continue
        if not isinstance(item, kind) or isinstance(item, bool):
            raise IdentityFileError(f"{where}: {key} must be a {kind.__name__}")
        if isinstance(item, str):
            if not item.strip() or len(item) > MAX_TEXT or not item.isprintable():
                raise IdentityFileError(f"{where}: {key} must be 1-{MAX_TEXT} printable characters")
            out[key] = item.strip()
        elif isinstance(item, int):
            out[key] = item
    if "serial" not in out:
        raise IdentityFileError(f"{where}: serial is missing")
    return out


def serial_from_name(name: bytes) -> str:
    """A serial from a folder name: safe characters kept, others replaced by ``_``.

    If anything was replaced, a short hash of the raw name is appended, so two
    names that differ only in unsafe characters (张三, 李四) never share a serial.
    """
    kept = bytes(c if c in _SAFE_BYTES else ord("_") for c in name)
    text = kept.decode("ascii")[:64]
    if kept != name or len(name) > 64:
        text = f"{text}-{hashlib.sha256(name).hexdigest()[:8]}"
    return text


def read_identity_file(folder: Path, name: str = IDENTITY_FILE) -> bytes | None:
    """The identity file's bytes, or None if there is none. Never follows a link;
    reads at most MAX_IDENTITY_BYTES + 1. Raises IdentityFileError, DeviceError."""
    dirfd = _walk.open_root(folder)
    try:
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IdentityFileError(f"{folder}/{name}: is a symbolic link; refused") from e
            raise DeviceError(f"{folder}/{name}: unreadable: {e.strerror}") from e
    finally:
        os.close(dirfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IdentityFileError(f"{folder}/{name}: not a regular file; refused")
        chunks: list[bytes] = []
        left = MAX_IDENTITY_BYTES + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise DeviceError(f"{folder}/{name}: unreadable: {e.strerror}") from e
    finally:
        os.close(fd)


def folder_identity(folder: Path, identity_file: str = IDENTITY_FILE) -> RecorderIdentity:
    """Identity from the folder's identity file, else from its name. Raises IdentityFileError."""
    data = read_identity_file(folder, identity_file)
    raw_name = os.fsencode(folder.name)
    if data is None:
        serial = serial_from_name(raw_name)
        extra = [("identity", "folder name")]
        if serial != folder.name:
            extra.append(("folder_name", raw_name.decode("utf-8", "backslashreplace")))
        return RecorderIdentity(driver=FolderDriver.key, serial=serial, extra=tuple(extra))
    fields = parse_identity(data, f"{folder}/{identity_file}")

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    offset = fields.get("clock_offset_ms")
    return RecorderIdentity(
        driver=FolderDriver.key,
        serial=str(fields["serial"]),
        vendor=text("vendor"),
        model=text("model"),
        officer=text("officer"),
        officer_name=text("officer_name"),
        unit_no=text("unit_no"),
        unit_name=text("unit_name"),
        clock_offset_ms=offset if isinstance(offset, int) else None,
        extra=(("identity", identity_file),),
    )


def _norm_roots(roots: Sequence[Path]) -> tuple[Path, ...]:
    # Roots come from configuration (trusted): resolve them once, so a root that is
    # itself a link (e.g. /srv/incoming -> /data/incoming) compares correctly.
    return tuple(Path(os.path.realpath(r)) for r in roots)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class FolderDriver:
    """Each folder directly under one of ``roots`` is one recorder (see module docstring)."""

    key: ClassVar[str] = "folder"

    def __init__(self, roots: Sequence[Path], identity_file: str = IDENTITY_FILE) -> None:
        if "/" in identity_file or identity_file in ("", ".", ".."):
            raise ConfigError(f"identity file {identity_file!r} must be a plain file name")
        self.roots = _norm_roots(roots)
        self.identity_file = identity_file
        self._identity_bytes = os.fsencode(identity_file)

    def _folder(self, device: DeviceInfo) -> Path | None:
        """The device's folder if it sits directly under a root, by its path alone."""
        if device.subsystem != "folder":
            return None
        folder = Path(os.path.normpath(device.sys_path))
        if not folder.is_absolute() or folder.name.startswith("."):
            return None
        if folder.parent not in self.roots:
            return None
        return folder

    def matches(self, device: DeviceInfo) -> bool:
        return self._folder(device) is not None

    def _checked(self, device: DeviceInfo) -> Path:
        folder = self._folder(device)
        if folder is None:
            raise DeviceError(f"{device.sys_path}: not a folder under a watched root")
        try:
            mode = os.lstat(folder).st_mode
        except OSError as e:
            raise DeviceError(f"{folder}: gone: {e.strerror}") from e
        if stat.S_ISLNK(mode):
            raise DeviceError(f"{folder}: is a symbolic link; not followed")
        if not stat.S_ISDIR(mode):
            raise DeviceError(f"{folder}: not a folder")
        return folder

    @contextmanager
    def _as_is(self, device: DeviceInfo) -> Iterator[Path]:
        yield self._checked(device)

    def attach(self, device: DeviceInfo) -> AbstractContextManager[Path]:
        """The folder itself: nothing to mount. Read-only by discipline (only _walk opens)."""
        return self._as_is(device)

    def identify(self, device: DeviceInfo, root: Path) -> RecorderIdentity:
        """From the identity file in ``root``, else its name. Raises DeviceError
        (``IdentityFileError`` when the file is present but unusable)."""
        return folder_identity(root, self.identity_file)

    def recordings(self, root: Path) -> Iterator[Recording | Refused]:
        return _walk.walk(root, include=lambda rel: rel != self._identity_bytes)

    def open(self, root: Path, recording: Recording) -> int:
        return _walk.open_file(root, recording.relpath)

    def writable(self, device: DeviceInfo, root: Path) -> AbstractContextManager[Path]:
        return self._as_is(device)

    def wipe(self, root: Path, recording: Recording) -> None:
        _walk.unlink_file(root, recording.relpath)


# -- watching -----------------------------------------------------------------

Action = Literal["add", "remove"]
Callback = Callable[[Action, DeviceInfo], None]


def device_info(folder: Path, identity_file: str = IDENTITY_FILE) -> DeviceInfo:
    """The DeviceInfo the watcher reports for ``folder``; identity problems become properties."""
    props = {"EVIDOCK_FOLDER_NAME": os.fsencode(folder.name).decode("utf-8", "backslashreplace")}
    try:
        ident = folder_identity(folder, identity_file)
    except DeviceError as e:
        props["ID_SERIAL_SHORT"] = serial_from_name(os.fsencode(folder.name))
        props["EVIDOCK_IDENTITY_ERROR"] = str(e)
    else:
        props["ID_SERIAL_SHORT"] = ident.serial
        props["EVIDOCK_IDENTITY"] = dict(ident.extra).get("identity", "")
        optional = {
            "ID_VENDOR": ident.vendor,
            "ID_MODEL": ident.model,
            "EVIDOCK_OFFICER": ident.officer,
        }
        props.update({k: v for k, v in optional.items() if v})
    return DeviceInfo.make("folder", str(folder), properties=props)


class _Forward(FileSystemEventHandler):
    def __init__(self, events: queue.Queue[FileSystemEvent | None]) -> None:
        self._events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Reads (our own included) are not changes.
        if event.event_type not in (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE):
            self._events.put(event)


class FolderWatcher:
    """Reports recorder folders under ``roots`` to ``callback(action, device)``.

    ``("add", DeviceInfo(subsystem="folder", sys_path=<folder>, properties=...))``
    once a folder has *settled*: no change anywhere inside it for ``quiet_s``
    seconds. Vendor sync tools and copies over a network fill a folder
    progressively; offloading a half-copied folder would record a partial camera.
    Folders already present at ``start`` (cameras docked while the dock was down)
    are reported the same way, ``quiet_s`` after start if nothing moves. Once
    reported, changes inside a folder are the offload session's business.

    ``("remove", <the same DeviceInfo>)`` when a reported folder is deleted or moved
    away (moved elsewhere under a root counts as a remove and an add). A folder
    that vanishes before it settled is never reported at all.

    Symbolic links, plain files and hidden names (``.``) under a root are ignored.
    Properties: ``ID_SERIAL_SHORT`` (from the identity file or the name),
    ``ID_VENDOR``, ``ID_MODEL``, ``EVIDOCK_OFFICER``, ``EVIDOCK_IDENTITY`` (where
    the identity came from) or ``EVIDOCK_IDENTITY_ERROR``.

    Events come from inotify (watchdog's Observer). Network shares (CIFS, NFS)
    do not deliver inotify events for changes made on other machines: pass
    ``polling=True`` there (watchdog's PollingObserver, scanning every
    ``poll_s``, which should be well under ``quiet_s``).

    The callback runs on the watcher's own thread, one call at a time, in event
    order; an exception from it is logged and does not stop the watcher.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        callback: Callback,
        *,
        quiet_s: float = 2.0,
        identity_file: str = IDENTITY_FILE,
        polling: bool = False,
        poll_s: float = 0.5,
    ) -> None:
        self.roots = _norm_roots(roots)
        self.callback = callback
        self.quiet_s = quiet_s
        self.identity_file = identity_file
        self._events: queue.Queue[FileSystemEvent | None] = queue.Queue()
        self._observer: BaseObserver = PollingObserver(timeout=poll_s) if polling else Observer()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending: dict[Path, float] = {}  # folder -> settles at (monotonic)
        self._reported: dict[Path, DeviceInfo] = {}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Watch the roots and schedule the folders already there. Raises DeviceError."""
        handler = _Forward(self._events)
        try:
            for root in self.roots:
                if not _is_real_dir(root):
                    raise DeviceError(f"{root}: watched root is not a folder")
                self._observer.schedule(handler, str(root), recursive=True)
            self._observer.start()
            # After the watches exist, so nothing created in between is missed.
            deadline = time.monotonic() + self.quiet_s
            for root in self.roots:
                for entry in sorted(os.scandir(root), key=lambda e: e.name):
                    folder = Path(entry.path)
                    if self._candidate(folder):
                        self._pending[folder] = deadline
        except OSError as e:
            # e.g. the inotify watch limit (fs.inotify.max_user_watches) reached
            raise DeviceError(f"cannot watch {', '.join(map(str, self.roots))}: {e}") from e
        self._thread = threading.Thread(target=self._run, name="evidock-folder-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching; returns within about ``timeout`` seconds."""
        self._stopping.set()
        self._events.put(None)
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the worker ----------------------------------------------------------------

    def _candidate(self, folder: Path) -> bool:
        if folder.name.startswith("."):
            return False
        if _is_real_dir(folder):
            return True
        if folder.is_symlink():
            log.warning("%s: symbolic link under a watched root; ignored", folder)
        return False

    def _top(self, path: str | bytes) -> Path | None:
        """The recorder folder (direct child of a root) that ``path`` is in or is."""
        p = Path(os.fsdecode(path))
        for root in self.roots:
            if p.parent == root:
                return p
            if root in p.parents:
                return root / p.relative_to(root).parts[0]
        return None

    def _run(self) -> None:
        tick = min(0.2, self.quiet_s / 4) if self.quiet_s > 0 else 0.05
        while not self._stopping.is_set():
            try:
                event = self._events.get(timeout=tick)
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(event)
            self._settle()

    def _handle(self, event: FileSystemEvent) -> None:
        now = time.monotonic()
        touched = [(event.src_path, event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED))]
        if event.event_type == EVENT_TYPE_MOVED:
            touched.append((event.dest_path, False))
        for raw, left in touched:
            folder = self._top(raw)
            if folder is None or folder.name.startswith("."):
                continue
            # The folder itself deleted or moved away counts even if a new one of the
            # same name is already there: that one is a different recorder visit.
            went = left and Path(os.fsdecode(raw)) == folder
            if went or not _is_real_dir(folder):
                self._pending.pop(folder, None)
                info = self._reported.pop(folder, None)
                if info is not None:
                    self._emit("remove", info)
            if folder not in self._reported and _is_real_dir(folder):
                self._pending[folder] = now + self.quiet_s

    def _settle(self) -> None:
        now = time.monotonic()
        for folder in [f for f, due in self._pending.items() if due <= now]:
            del self._pending[folder]
            if not self._candidate(folder):
                continue
            info = device_info(folder, self.identity_file)
            self._reported[folder] = info
            self._emit("add", info)

    def _emit(self, action: Action, info: DeviceInfo) -> None:
        try:
            self.callback(action, info)
        except Exception:
            log.exception("folder watcher: callback failed for %s %s", action, info.sys_path)
