"""The receiver's segment spool: one folder per open transfer, one file per segment.

    spool/<token>/<start, 20 digits>.seg

``token`` is random and kept in the transfer's database row, so no name on
disk is ever derived from what a station sent (a station id or a file name
cannot walk out of the spool). A segment is written to a temporary file in
its folder, fsynced, renamed into place and the folder fsynced (style.md 11)
before the database records it, and the receiver answers OK only after that
commit: a segment answered OK survives a power cut. A file without a row
(a crash between the rename and the commit) was never acknowledged; the
receiver removes it on start (``sweep``) and the station sends it again.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from hashing._fsutil import FILE_MODE, fsync_dir, make_private_dir
from hashing.errors import IntegrityError

BUFFER_BYTES = 1 << 20  # one reusable buffer for assembling and re-reading (style.md 10)
_TOKEN = re.compile(r"[0-9a-f]{32}")
_SEGMENT = re.compile(r"([0-9]{20})\.seg")


def new_token() -> str:
    return secrets.token_hex(16)


def segment_name(start: int) -> str:
    return f"{start:020d}.seg"


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        make_private_dir(self.root)

    def folder(self, token: str) -> Path:
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"spool token {token!r} is not 32 hex digits")
        return self.root / token

    def write(self, token: str, start: int, data: bytes) -> Path:
        """Store one segment durably: temp file, fsync, rename, fsync the folder."""
        folder = self.folder(token)
        if not folder.is_dir():
            make_private_dir(folder)
            fsync_dir(self.root)
        final = folder / segment_name(start)
        tmp = folder / f".{final.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(folder)
        return final

    def discard(self, token: str, start: int) -> None:
        (self.folder(token) / segment_name(start)).unlink(missing_ok=True)

    def remove(self, token: str) -> None:
        """Delete a transfer's folder (finished, aborted, expired or restarted)."""
        folder = self.folder(token)
        if folder.is_dir():
            shutil.rmtree(folder)
            fsync_dir(self.root)

    def tokens(self) -> list[str]:
        """Names of the folders present (anything else in the spool is not ours)."""
        return sorted(p.name for p in self.root.iterdir() if _TOKEN.fullmatch(p.name))

    def strays(self) -> list[Path]:
        """Entries in the spool that are no transfer folder at all."""
        return [p for p in self.root.iterdir() if not _TOKEN.fullmatch(p.name) or not p.is_dir()]

    def remove_path(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def sweep(self, token: str, keep: dict[int, int]) -> tuple[list[Path], list[int]]:
        """Reconcile a transfer folder with its segment rows (``keep``: start -> length).

        Returns (files removed: temporaries and segments no row records,
        starts whose row has no intact file). The caller drops those rows, so
        the station is asked for those bytes again at ``fin``.
        """
        folder = self.folder(token)
        removed: list[Path] = []
        present: dict[int, int] = {}
        if folder.is_dir():
            for path in folder.iterdir():
                m = _SEGMENT.fullmatch(path.name)
                start = int(m.group(1)) if m else -1
                if m and start in keep and path.is_file() and not path.is_symlink():
                    present[start] = path.stat().st_size
                    continue
                self.remove_path(path)
                removed.append(path)
        broken = [s for s, n in keep.items() if present.get(s) != n]
        for start in broken:
            if start in present:
                (folder / segment_name(start)).unlink()
                removed.append(folder / segment_name(start))
        return removed, broken

    def assemble(self, token: str, segments: Iterable[tuple[int, int]], out: Path) -> str:
        """Concatenate segments (start, length), in order and contiguous, into ``out``.

        Streams through one 1 MiB buffer while hashing, then fsyncs ``out``.
        Returns the hex SHA-256 of the bytes written. Raises IntegrityError if a
        segment file is shorter or longer than its row says (the spool was
        damaged or altered).
        """
        folder = self.folder(token)
        h = hashlib.sha256()
        buf = bytearray(BUFFER_BYTES)
        view = memoryview(buf)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            for start, length in segments:
                path = folder / segment_name(start)
                got = 0
                with path.open("rb", buffering=0) as f:
                    while n := f.readinto(view):
                        h.update(view[:n])
                        chunk = view[:n]
                        while chunk:
                            chunk = chunk[os.write(fd, chunk) :]
                        got += n
                        if got > length:
                            break
                if got != length:
                    raise IntegrityError(
                        f"spool segment {path} holds {got} bytes, not {length}: the spool was altered"
                    )
            os.fsync(fd)
        finally:
            os.close(fd)
        return h.hexdigest()


def rehash(path: Path) -> tuple[str, int]:
    """SHA-256 and length of a file as read back from the disk (page cache dropped first).

    The receipt says the platform *stored* a byte-exact copy, so the digest
    that is compared is that of the bytes read back after the fsync, not of
    the bytes as they passed through memory on the way in.
    """
    h = hashlib.sha256()
    buf = bytearray(BUFFER_BYTES)
    view = memoryview(buf)
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            while n := f.readinto(view):
                h.update(view[:n])
                size += n
    finally:
        os.close(fd)
    return h.hexdigest(), size
