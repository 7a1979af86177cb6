"""Copy a recording into staging while digesting it, then prove the copy.

design.md step 2: each recording is read once; the same buffer feeds SHA-256,
the 1 MiB chunk tree and the write into ``staging/``. The stored bytes are then
read back from the device, not from RAM, and must hash to the same digest.

The work runs as a pipeline so the slowest part (USB bus, disk or SHA-256) sets
the pace, not their sum: a reader thread fills buffers from the source, the
caller's thread digests them (StreamDigester hashes on two cores), a writer
thread writes them to the staging file and, every WINDOW bytes, starts the
kernel's write-back of that window and then waits for the previous one, drops
it from the page cache (POSIX_FADV_DONTNEED) and hands it to a verifier thread
that re-reads it from the device. A final fsync makes the whole file durable
before the ledger entry that names it is written. Memory is a fixed set of
buffers, whatever the file size.

Pages read from the source and re-read from the copy are dropped as soon as
they are used, as the written ones are: a recording is read once, and a card's
worth of footage must not push the ledger and everything else out of the page
cache (nor, on a VM that hands freed memory back to its host, make every copy
pay for fresh pages).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from hashing.digest import READ_SIZE, FileDigest, StreamDigester
from hashing.errors import DeviceError, DigestMismatchError

BUFFERS = 6
# Write-back window. What is left of a file once its last byte is read (the
# fsync and re-read of its last window or two) overlaps nothing, so the window
# is kept small, yet large enough for big requests to the disk. Per 128 MiB
# file here: 64 MiB windows ~370 ms, 32 MiB ~330 ms (bench/README.md).
WINDOW = 32 << 20

# sync_file_range(2) flags
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _start_writeback(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _WRITE)


def _finish_writeback(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is None or _sync_file_range(
        fd, offset, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER
    ):
        os.fdatasync(fd)


def _recycle(fd: int, offset: int, length: int) -> None:
    """Drop pages that were used once. Only a hint, so a refusal is no error (the
    drops that make the re-read come from the device are not hints: they raise)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


@dataclass(frozen=True)
class CopyResult:
    digest: FileDigest
    source_size: int
    source_mtime_ns: int


class _Failure:
    """First error raised by any pipeline stage; the others stop when it is set."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.event = threading.Event()

    def set(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.event.set()


def open_source(path: Path) -> int:
    """Open a recording for reading, refusing links, FIFOs and device nodes.

    O_NOFOLLOW refuses a symlink in the last component; O_NONBLOCK keeps a
    FIFO from hanging the open; the fstat check refuses anything not a
    regular file. Raises DeviceError with the reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(f"{path}: cannot open: {e.strerror}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DeviceError(f"{path}: not a regular file ({stat.filemode(mode)}); not copied")
    os.set_blocking(fd, True)
    return fd


class StoppedError(DeviceError):
    """The copy was asked to stop (the daemon is shutting down); nothing was recorded."""


def copy_and_verify(
    src_fd: int, staged: Path, *, source_name: str, stop: threading.Event | None = None
) -> CopyResult:
    """Copy ``src_fd`` to the new file ``staged``, digest, fsync, re-read and compare.

    Raises DeviceError if the source fails or changes size while read (a camera
    pulled out, a clip still being written), DigestMismatchError if the bytes
    read back differ. On any error the staging file is removed.
    """
    before = os.fstat(src_fd)
    out_fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    check_fd = -1
    try:
        check_fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
        if before.st_size < SMALL_FILE:
            digest, reread = _copy_small(
                src_fd, out_fd, check_fd, source_name, before.st_size, stop
            )
        else:
            digest, reread = _run_pipeline(src_fd, out_fd, check_fd, source_name, stop)
        after = os.fstat(src_fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (
            digest.size != before.st_size
        ):
            raise DeviceError(
                f"{source_name}: changed while copied ({before.st_size} bytes before, "
                f"{after.st_size} after, {digest.size} read); will copy again"
            )
        if reread != (digest.sha256, digest.size):
            raise DigestMismatchError(
                f"{source_name}: the copy read back from disk differs from what was read "
                "from the recorder (disk or memory fault); not committed"
            )
    except BaseException:
        _close(out_fd, check_fd)
        staged.unlink(missing_ok=True)
        raise
    _close(out_fd, check_fd)
    return CopyResult(digest, before.st_size, before.st_mtime_ns)


# Photos and audio clips: below this size the pipeline's threads and buffers
# cost more than they overlap, so the same steps run in order, in one thread.
SMALL_FILE = READ_SIZE


def _copy_small(
    src_fd: int,
    out_fd: int,
    check_fd: int,
    source_name: str,
    expected: int,
    stop: threading.Event | None,
) -> tuple[FileDigest, tuple[bytes, int]]:
    """Read, digest, write, fsync, drop from the cache, re-read and hash: in order."""
    buf = bytearray(min(READ_SIZE, expected + 1) or 1)  # +1: a file that grew shows here
    view = memoryview(buf)
    digester = StreamDigester(parallel=False)
    try:
        while True:
            _check_stop(stop, source_name)
            try:
                n = os.readv(src_fd, [buf])
            except OSError as e:
                raise DeviceError(f"{source_name}: read failed: {e.strerror}") from e
            if n == 0:
                break
            digester.update(view[:n])
            chunk = view[:n]
            while chunk:
                chunk = chunk[os.write(out_fd, chunk) :]
    finally:
        digest = digester.finish()
    _recycle(src_fd, 0, digest.size)
    os.fsync(out_fd)
    os.posix_fadvise(out_fd, 0, digest.size, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(check_fd, 0, digest.size, os.POSIX_FADV_DONTNEED)
    check = hashlib.sha256()
    done = 0
    while n := os.preadv(check_fd, [buf], done):
        check.update(view[:n])
        done += n
    _recycle(check_fd, 0, done)
    return digest, (check.digest(), done)


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _check_stop(stop: threading.Event | None, source_name: str) -> None:
    if stop is not None and stop.is_set():
        raise StoppedError(
            f"{source_name}: copy stopped (the dock is shutting down); copied again next time"
        )


def _run_pipeline(
    src_fd: int,
    out_fd: int,
    check_fd: int,
    source_name: str,
    stop: threading.Event | None = None,
) -> tuple[FileDigest, tuple[bytes, int]]:
    failure = _Failure()
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(READ_SIZE))
    to_hash: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    to_write: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    to_check: queue.Queue[tuple[int, int] | None] = queue.Queue()
    check = hashlib.sha256()
    checked = [0]

    def reader() -> None:
        pos = 0
        try:
            with contextlib.suppress(OSError):  # a hint: more read-ahead
                os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while not failure.event.is_set():
                _check_stop(stop, source_name)
                buf = free.get()
                try:
                    n = os.readv(src_fd, [buf])
                except OSError as e:
                    raise DeviceError(f"{source_name}: read failed: {e.strerror}") from e
                if n == 0:
                    free.put(buf)
                    break
                _recycle(src_fd, pos, n)  # read once (module docstring)
                pos += n
                to_hash.put((buf, n))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failure.set(e)
        finally:
            to_hash.put(None)

    def writer() -> None:
        written = window_start = 0
        pending: tuple[int, int] | None = None  # a window whose write-back has started
        try:
            while (item := to_write.get()) is not None:
                buf, n = item
                if not failure.event.is_set():
                    view = memoryview(buf)[:n]
                    while view:
                        view = view[os.write(out_fd, view) :]
                    written += n
                    if written - window_start >= WINDOW:
                        _start_writeback(out_fd, window_start, written - window_start)
                        if pending is not None:
                            _settle(*pending)
                        pending = (window_start, written - window_start)
                        window_start = written
                free.put(buf)
            if failure.event.is_set():
                return
            if pending is not None:
                _settle(*pending)  # so that its re-read overlaps the fsync below
            # design.md step 2: fsync, then re-read what is left.
            os.fsync(out_fd)
            if written > window_start:
                os.posix_fadvise(
                    out_fd, window_start, written - window_start, os.POSIX_FADV_DONTNEED
                )
                to_check.put((window_start, written - window_start))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failure.set(e)
            while (item := to_write.get()) is not None:
                free.put(item[0])
        finally:
            to_check.put(None)

    def _settle(start: int, length: int) -> None:
        _finish_writeback(out_fd, start, length)
        os.posix_fadvise(out_fd, start, length, os.POSIX_FADV_DONTNEED)
        to_check.put((start, length))

    def verifier() -> None:
        buf = bytearray(READ_SIZE)
        try:
            while (item := to_check.get()) is not None:
                start, length = item
                if failure.event.is_set():
                    continue
                os.posix_fadvise(check_fd, start, length, os.POSIX_FADV_DONTNEED)
                end = start + length
                while start < end:
                    n = os.preadv(check_fd, [memoryview(buf)[: min(READ_SIZE, end - start)]], start)
                    if n == 0:
                        raise DigestMismatchError(
                            f"{source_name}: staged copy is shorter than written"
                        )
                    check.update(memoryview(buf)[:n])
                    _recycle(check_fd, start, n)
                    start += n
                    checked[0] += n
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failure.set(e)
            while to_check.get() is not None:
                pass

    threads = [
        threading.Thread(target=reader, name="copy-read", daemon=True),
        threading.Thread(target=writer, name="copy-write", daemon=True),
        threading.Thread(target=verifier, name="copy-verify", daemon=True),
    ]
    for t in threads:
        t.start()
    digester = StreamDigester()
    try:
        while (item := to_hash.get()) is not None:
            buf, n = item
            if not failure.event.is_set():
                try:
                    digester.update(memoryview(buf)[:n])
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    failure.set(e)
            to_write.put(item)
    finally:
        to_write.put(None)
        for t in threads:
            t.join()
        digest = digester.finish()
    if failure.error is not None:
        raise failure.error
    return digest, (check.digest(), checked[0])
