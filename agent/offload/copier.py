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
            _write_fully(out_fd, view[:n])
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


def _write_fully(fd: int, view: memoryview) -> None:
    """Write all of ``view``: os.write may write less than it is given."""
    while view:
        view = view[os.write(fd, view) :]


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
    """Copy a large file through the pipeline; returns (digest, (re-read SHA-256, length)).

    Raises the first error any stage raised (DeviceError, DigestMismatchError,
    StoppedError, OSError), after every stage has stopped.
    """
    return _Pipeline(src_fd, out_fd, check_fd, source_name, stop).run()


class _Pipeline:
    """The stages of one large copy (module docstring) and the queues between them.

    Buffers go free -> reader -> digest (the caller's thread) -> writer -> free;
    the writer hands settled windows (offset, length) to the verifier. Each
    stage catches what it raises into ``failure``; after one, buffers still
    return to ``free`` and every queue still ends with its None, so no stage
    waits for ever. ``run`` joins them all and raises the first error.
    """

    def __init__(
        self,
        src_fd: int,
        out_fd: int,
        check_fd: int,
        source_name: str,
        stop: threading.Event | None,
    ) -> None:
        self.src_fd, self.out_fd, self.check_fd = src_fd, out_fd, check_fd
        self.source_name = source_name
        self.stop = stop
        self.failure = _Failure()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(BUFFERS):
            self.free.put(bytearray(READ_SIZE))
        self.to_hash: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.to_write: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.to_check: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self.check = hashlib.sha256()  # of the bytes re-read from the staged copy
        self.checked = 0  # how many bytes were re-read

    def run(self) -> tuple[FileDigest, tuple[bytes, int]]:
        """Start the stages, digest in this thread, join them; raise the first error."""
        threads = [
            threading.Thread(target=self._reader, name="copy-read", daemon=True),
            threading.Thread(target=self._writer, name="copy-write", daemon=True),
            threading.Thread(target=self._verifier, name="copy-verify", daemon=True),
        ]
        for t in threads:
            t.start()
        digester = StreamDigester()
        try:
            self._digest(digester)
        finally:
            self.to_write.put(None)
            for t in threads:
                t.join()
            digest = digester.finish()
        if self.failure.error is not None:
            raise self.failure.error
        return digest, (self.check.digest(), self.checked)

    # -- digest: the caller's thread ---------------------------------------

    def _digest(self, digester: StreamDigester) -> None:
        """Digest each buffer read, then pass it on to the writer (even after a failure)."""
        while (item := self.to_hash.get()) is not None:
            buf, n = item
            if not self.failure.event.is_set():
                try:
                    digester.update(memoryview(buf)[:n])
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self.failure.set(e)
            self.to_write.put(item)

    # -- read --------------------------------------------------------------

    def _reader(self) -> None:
        try:
            self._read_source()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self.failure.set(e)
        finally:
            self.to_hash.put(None)

    def _read_source(self) -> None:
        """Fill free buffers from the source until its end, a failure or a stop."""
        pos = 0
        with contextlib.suppress(OSError):  # a hint: more read-ahead
            os.posix_fadvise(self.src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while not self.failure.event.is_set():
            _check_stop(self.stop, self.source_name)
            buf = self.free.get()
            try:
                n = os.readv(self.src_fd, [buf])
            except OSError as e:
                raise DeviceError(f"{self.source_name}: read failed: {e.strerror}") from e
            if n == 0:
                self.free.put(buf)
                break
            _recycle(self.src_fd, pos, n)  # read once (module docstring)
            pos += n
            self.to_hash.put((buf, n))

    # -- write -------------------------------------------------------------

    def _writer(self) -> None:
        try:
            self._write_copy()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self.failure.set(e)
            while (item := self.to_write.get()) is not None:
                self.free.put(item[0])
        finally:
            self.to_check.put(None)

    def _write_copy(self) -> None:
        """Write each digested buffer, settle it window by window, then fsync the file."""
        written = window_start = 0
        pending: tuple[int, int] | None = None  # a window whose write-back has started
        while (item := self.to_write.get()) is not None:
            buf, n = item
            if not self.failure.event.is_set():
                _write_fully(self.out_fd, memoryview(buf)[:n])
                written += n
                if written - window_start >= WINDOW:
                    _start_writeback(self.out_fd, window_start, written - window_start)
                    if pending is not None:
                        self._settle(*pending)
                    pending = (window_start, written - window_start)
                    window_start = written
            self.free.put(buf)
        if self.failure.event.is_set():
            return
        if pending is not None:
            self._settle(*pending)  # so that its re-read overlaps the fsync below
        # design.md step 2: fsync, then re-read what is left.
        os.fsync(self.out_fd)
        if written > window_start:
            os.posix_fadvise(
                self.out_fd, window_start, written - window_start, os.POSIX_FADV_DONTNEED
            )
            self.to_check.put((window_start, written - window_start))

    def _settle(self, start: int, length: int) -> None:
        """Wait for a window's write-back, drop it from the cache, queue its re-read."""
        _finish_writeback(self.out_fd, start, length)
        os.posix_fadvise(self.out_fd, start, length, os.POSIX_FADV_DONTNEED)
        self.to_check.put((start, length))

    # -- re-read -----------------------------------------------------------

    def _verifier(self) -> None:
        try:
            self._reread_windows()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self.failure.set(e)
            while self.to_check.get() is not None:
                pass

    def _reread_windows(self) -> None:
        """Hash every settled window as read back from the device, in order."""
        view = memoryview(bytearray(READ_SIZE))
        while (item := self.to_check.get()) is not None:
            if not self.failure.event.is_set():
                self._reread(view, *item)

    def _reread(self, view: memoryview, start: int, length: int) -> None:
        """Read ``[start, start + length)`` of the staged copy from the device into ``check``.

        Raises DigestMismatchError if the copy ends early: fewer bytes are on
        the disk than were written.
        """
        os.posix_fadvise(self.check_fd, start, length, os.POSIX_FADV_DONTNEED)
        end = start + length
        while start < end:
            n = os.preadv(self.check_fd, [view[: min(READ_SIZE, end - start)]], start)
            if n == 0:
                raise DigestMismatchError(
                    f"{self.source_name}: staged copy is shorter than written"
                )
            self.check.update(view[:n])
            _recycle(self.check_fd, start, n)
            start += n
            self.checked += n
