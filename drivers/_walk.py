"""Listing, opening and deleting files on a recorder without trusting it.

A camera's file system is input from outside (style.md 6). Every step goes
through directory file descriptors with O_NOFOLLOW, so a symlink, at any depth,
is reported and never followed; only regular files are opened; names are kept
as raw bytes (GBK and worse survive untouched); and a path component that is
empty, ``.`` or ``..`` is refused before any system call sees it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from drivers.base import Recording, Refused
from hashing.errors import DeviceError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "is a symbolic link; not followed"
    if stat.S_ISFIFO(mode):
        return "is a FIFO, not a recording"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device node, not a recording"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a recording"
    return f"is not a regular file ({stat.filemode(mode)})"


def open_root(root: Path) -> int:
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise DeviceError(f"{root}: cannot open the recorder's folder: {e.strerror}") from e


def walk(
    root: Path, include: Callable[[bytes], bool] | None = None
) -> Iterator[Recording | Refused]:
    """Regular files under ``root`` in a stable order, and everything refused.

    ``include`` filters by relative path (e.g. only ``DCIM/``); refused entries
    are reported whatever the filter says, since a link or device node on a
    camera is worth an anomaly in itself.
    """
    top = open_root(root)
    stack: list[tuple[int, bytes]] = [(top, b"")]
    try:
        while stack:
            fd, prefix = stack.pop()
            try:
                yield from _walk_one(fd, prefix, stack, include)
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)


def _walk_one(
    fd: int,
    prefix: bytes,
    stack: list[tuple[int, bytes]],
    include: Callable[[bytes], bool] | None,
) -> Iterator[Recording | Refused]:
    try:
        names = sorted(os.fsencode(n) for n in os.listdir(fd))
    except OSError as e:
        yield Refused(prefix or b".", f"folder unreadable: {e.strerror}")
        return
    subdirs: list[tuple[int, bytes]] = []
    for name in names:
        rel = prefix + name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as e:
            yield Refused(rel, f"unreadable: {e.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                subdirs.append((os.open(name, _DIR_FLAGS, dir_fd=fd), rel + b"/"))
            except OSError as e:
                yield Refused(rel, f"folder unreadable: {e.strerror}")
        elif stat.S_ISREG(st.st_mode):
            if include is None or include(rel):
                yield Recording(rel, st.st_size, st.st_mtime_ns)
        else:
            yield Refused(rel, _kind(st.st_mode))
    stack.extend(reversed(subdirs))


def _components(relpath: bytes) -> list[bytes]:
    parts = relpath.split(b"/")
    if relpath.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise DeviceError(f"{relpath!r}: unsafe path on a recorder; refused")
    return parts


def _open_parent(root: Path, relpath: bytes) -> tuple[int, bytes]:
    *dirs, name = _components(relpath)
    fd = open_root(root)
    try:
        for d in dirs:
            nxt = os.open(d, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as e:
        os.close(fd)
        raise DeviceError(f"{relpath!r}: cannot reach its folder: {e.strerror}") from e
    return fd, name


def open_file(root: Path, relpath: bytes) -> int:
    """Open a recording read-only; refuse links, FIFOs, device nodes. Raises DeviceError."""
    parent, name = _open_parent(root, relpath)
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent
        )
    except OSError as e:
        why = "is a symbolic link; not followed" if e.errno == errno.ELOOP else e.strerror
        raise DeviceError(f"{relpath.decode('utf-8', 'backslashreplace')}: {why}") from e
    finally:
        os.close(parent)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DeviceError(f"{relpath.decode('utf-8', 'backslashreplace')}: {_kind(mode)}")
    os.set_blocking(fd, True)
    return fd


def unlink_file(root: Path, relpath: bytes) -> None:
    """Delete one regular file on a recorder (wipe). Raises DeviceError."""
    parent, name = _open_parent(root, relpath)
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise DeviceError(f"{relpath!r}: {_kind(st.st_mode)}; not deleted")
        os.unlink(name, dir_fd=parent)
        os.fsync(parent)
    except OSError as e:
        raise DeviceError(f"{relpath!r}: cannot delete: {e.strerror}") from e
    finally:
        os.close(parent)
