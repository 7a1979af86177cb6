"""The receiver's spool: one folder per open transfer, one data file per folder.

    spool/<token>/data

``token`` is random and kept in the transfer's database row, so no name on
disk is ever derived from what a station sent (a station id or a file name
cannot walk out of the spool). ``data`` is the file being received, sparse:
each segment is written (``pwrite``) at its own offset, so at ``fin`` the file
is already whole and enters the store by a hard link, not a copy. One file
costs one fdatasync per batch of segments, where a file per segment cost a
temporary file, an fsync, a rename and a folder fsync for each (about 11 ms
per 1 MiB segment, measured) and a second full copy at ``fin``.

What is written is not what is trusted: the database's segment rows are. A
segment's bytes are written only after every check passed (a range a row
records is never written again, so acknowledged bytes are never replaced),
then the receiver calls ``sync`` (``fdatasync`` of every data file written
since the last call) and only then commits the rows, and only after that
commit answers OK. So a range a committed row records is on the disk, and
bytes written without a committed row (a crash, a failed batch) are ignored:
the station was never told they arrived and sends them again, and they are
written over.

Creating a transfer's folder and data file fsyncs the folders above them at
once, so the names exist on the disk before any row that relies on them
commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

from hashing._fsutil import FILE_MODE, fsync_dir, make_private_dir

BUFFER_BYTES = 1 << 20  # one reusable buffer for reading the data file back (style.md 10)
DROP_BEHIND_BYTES = 8 << 20  # read back this much, then let it leave the page cache
DATA = "data"
_TOKEN = re.compile(r"[0-9a-f]{32}")


def new_token() -> str:
    return secrets.token_hex(16)


class Spool:
    """The spool folder. Not thread-safe: the receiver serialises calls under its lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # token -> [fd, lowest, highest byte written] of a data file written since sync
        self._unsynced: dict[str, list[int]] = {}

    def ensure(self) -> None:
        make_private_dir(self.root)

    def folder(self, token: str) -> Path:
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"spool token {token!r} is not 32 hex digits")
        return self.root / token

    def data_path(self, token: str) -> Path:
        return self.folder(token) / DATA

    def create(self, token: str) -> Path:
        """The transfer's data file, created empty (with its folder) if it is not there.

        New names are made durable at once (fsync of the folder, and of the
        spool when the folder is new): a row committed later may rely on them.
        """
        folder = self.folder(token)
        if not folder.is_dir():
            make_private_dir(folder)
            fsync_dir(self.root)
        path = folder / DATA
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            return path
        os.close(fd)
        fsync_dir(folder)
        return path

    def write(self, token: str, start: int, data: bytes) -> None:
        """Write one segment's bytes at ``start`` of the transfer's data file.

        Not durable by itself: ``sync`` makes it so, and a row may record the
        range only after that.
        """
        written = self._unsynced.get(token)
        if written is None:
            path = self.create(token)
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            written = self._unsynced[token] = [fd, start, start]
        fd = written[0]
        view = memoryview(data)
        pos = start
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
        written[1], written[2] = min(written[1], start), max(written[2], pos)

    def sync(self) -> None:
        """fdatasync every data file written since the last call, then close them.

        The synced range then leaves the page cache (POSIX_FADV_DONTNEED): the
        receiver reads those bytes again only at ``fin``, from the disk, so
        caching them only evicts what is worth caching, and the pages it
        frees are the ones the next segments are written into; filling fresh
        pages costs several times more than the write itself (measured: about
        3 ms against 0.4 ms per MiB). Raises OSError if a file cannot be
        synced (every file is closed all the same): the caller must then not
        commit the rows of what it wrote.
        """
        error: OSError | None = None
        unsynced, self._unsynced = self._unsynced, {}
        for fd, low, high in unsynced.values():
            try:
                if error is None:
                    os.fdatasync(fd)
                    with contextlib.suppress(OSError):  # only advice: durability is the sync's
                        os.posix_fadvise(fd, low, high - low, os.POSIX_FADV_DONTNEED)
            except OSError as e:
                error = e
            finally:
                os.close(fd)
        if error is not None:
            raise error

    def digest(self, token: str) -> tuple[str, int]:
        """SHA-256 and length of the data file as read back from the disk.

        The receipt says the platform *stored* a byte-exact copy, so what is
        compared with the file id is the digest of the bytes read back, not of
        the bytes as they passed through memory on the way in: the file is
        fdatasynced (a no-op unless a failed batch left pages unwritten), its
        cached pages dropped (POSIX_FADV_DONTNEED drops only pages already on
        the disk, which after the fdatasync is all of them), and read once,
        hashed through one reusable buffer. That single read is the only pass
        over the bytes at ``fin``. What was hashed leaves the page cache as the
        read goes on (see ``sync``). Raises FileNotFoundError without the file.
        """
        h = hashlib.sha256()
        buf = bytearray(BUFFER_BYTES)
        view = memoryview(buf)
        size = dropped = 0
        fd = os.open(self.data_path(token), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := os.readv(fd, [view]):
                h.update(view[:n])
                size += n
                if size - dropped >= DROP_BEHIND_BYTES:
                    os.posix_fadvise(fd, dropped, size - dropped, os.POSIX_FADV_DONTNEED)
                    dropped = size
        finally:
            os.close(fd)
        return h.hexdigest(), size

    def remove(self, token: str) -> None:
        """Delete a transfer's folder (finished, aborted, expired or restarted)."""
        written = self._unsynced.pop(token, None)
        if written is not None:
            os.close(written[0])
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

        Returns (what was removed: anything in the folder but the data file,
        such as the one-file-per-segment spool of an older receiver; starts of
        rows whose range the data file does not reach). The caller drops those
        rows, so the station is asked for those bytes again at ``fin``. Bytes
        the data file holds beyond the rows are left: they are never trusted,
        and are written over when the station sends those ranges.
        """
        folder = self.folder(token)
        removed: list[Path] = []
        length = -1
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name == DATA and path.is_file() and not path.is_symlink():
                    length = path.stat().st_size
                    continue
                self.remove_path(path)
                removed.append(path)
        broken = [start for start, n in keep.items() if start + n > length]
        return removed, broken
