"""One-pass digests of a recording (design.md step 2).

The copy loop feeds every buffer it reads to a ``StreamDigester``, which keeps
three things at once: the whole-file SHA-256 (what ``sha256sum`` and the
platform check), the byte length (a camera can be pulled mid-copy, style.md 10),
and the RFC 9162 tree over 1 MiB chunks, with each chunk's leaf hash kept so a
verifier can name the byte ranges that changed.

Two SHA-256 streams over the same bytes would halve throughput on one core.
hashlib releases the GIL on buffers over 2 KiB, so the whole-file hash runs on
a helper thread while the caller hashes chunks: on the dock's two or more cores
the pair costs about what one plain ``hashlib.sha256`` does.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hashing.merkle import leaf_hash, root_of

CHUNK_SIZE = 1 << 20  # 1 MiB chunks (design.md step 2)
READ_SIZE = 4 << 20  # fed in 4 MiB blocks: fewer thread hand-offs, still cache-friendly


@dataclass(frozen=True)
class FileDigest:
    """What evidock knows of a file's bytes."""

    sha256: bytes
    size: int
    chunk_size: int
    chunk_hashes: tuple[bytes, ...]

    @property
    def chunk_root(self) -> bytes:
        """RFC 9162 tree head over the chunk leaf hashes."""
        return root_of(self.chunk_hashes)

    @property
    def sha256_hex(self) -> str:
        """The whole-file SHA-256 in lowercase hex, as ``sha256sum`` and the store name it."""
        return self.sha256.hex()


class _WholeFileHasher(threading.Thread):
    """Runs ``hashlib.sha256().update`` on a buffer handed over by the caller."""

    def __init__(self) -> None:
        super().__init__(name="sha256-whole", daemon=True)
        self.hash = hashlib.sha256()
        self._work: memoryview | None = None
        self._have_work = threading.Event()
        self._done = threading.Event()
        self._stop = False
        self._error: BaseException | None = None

    def run(self) -> None:
        while True:
            self._have_work.wait()
            self._have_work.clear()
            if self._stop:
                return
            try:
                if self._work is not None:
                    self.hash.update(self._work)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                self._error = e
            self._work = None
            self._done.set()

    def submit(self, data: memoryview) -> None:
        self._done.clear()
        self._work = data
        self._have_work.set()

    def wait(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop = True
        self._have_work.set()


class StreamDigester:
    """Feed bytes in order with ``update``; ``finish`` returns the FileDigest.

    ``update`` returns only when it no longer needs the buffer, so the caller
    may reuse it (style.md 10: one reusable buffer). Use as a context manager,
    or call ``close`` to stop the helper thread.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE, *, parallel: bool = True) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._chunks: list[bytes] = []
        self._partial = hashlib.sha256(b"\x00")
        self._partial_len = 0
        self._whole: _WholeFileHasher | None = None
        self._serial_whole = hashlib.sha256()
        if parallel and (os.cpu_count() or 1) > 1:
            self._whole = _WholeFileHasher()
            self._whole.start()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Digest the next bytes of the file, in order.

        Returns only when both hashes are done with ``data``, so the caller may
        refill its buffer at once. Re-raises what the whole-file thread raised.
        """
        view = memoryview(data).cast("B")
        if not view:
            return
        if self._whole is not None:
            self._whole.submit(view)
        else:
            self._serial_whole.update(view)
        try:
            self._chunk(view)
        finally:
            if self._whole is not None:
                self._whole.wait()
        self.size += len(view)

    def _chunk(self, view: memoryview) -> None:
        pos, n = 0, len(view)
        while pos < n:
            take = min(self.chunk_size - self._partial_len, n - pos)
            if self._partial_len == 0 and take == self.chunk_size:
                self._chunks.append(leaf_hash(view[pos : pos + take]))
            else:
                self._partial.update(view[pos : pos + take])
                self._partial_len += take
                if self._partial_len == self.chunk_size:
                    self._chunks.append(self._partial.digest())
                    self._partial = hashlib.sha256(b"\x00")
                    self._partial_len = 0
            pos += take

    def finish(self) -> FileDigest:
        """Close the last, partial chunk, stop the helper thread and return the digest.

        Call it once, after the last ``update``.
        """
        if self._partial_len:
            self._chunks.append(self._partial.digest())
            self._partial = hashlib.sha256(b"\x00")
            self._partial_len = 0
        whole = self._whole.hash if self._whole is not None else self._serial_whole
        result = FileDigest(whole.digest(), self.size, self.chunk_size, tuple(self._chunks))
        self.close()
        return result

    def close(self) -> None:
        """Stop the whole-file helper thread; idempotent (the context manager calls it)."""
        if self._whole is not None:
            self._whole.stop()
            self._whole = None

    def __enter__(self) -> StreamDigester:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def digest_file(
    path: Path, *, chunk_size: int = CHUNK_SIZE, drop_cache: bool = False
) -> FileDigest:
    """Digest a file already on disk (verifiers, scrubs).

    With ``drop_cache`` the kernel is asked to forget the file's cached pages
    first, so the bytes come from the device and not from RAM.
    """
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f, StreamDigester(chunk_size) as d:
        if drop_cache:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while n := f.readinto(buf):
            d.update(view[:n])
        return d.finish()


def chunk_ranges_differing(
    expected: tuple[bytes, ...] | list[bytes],
    actual: tuple[bytes, ...] | list[bytes],
    expected_size: int,
    actual_size: int,
    chunk_size: int = CHUNK_SIZE,
) -> list[tuple[int, int]]:
    """Byte ranges [start, end) where a file differs from its recorded chunk hashes.

    Adjacent differing chunks are merged; a length change shows as a range
    reaching the longer of the two ends.
    """
    ranges: list[tuple[int, int]] = []
    for i in range(max(len(expected), len(actual))):
        same = i < len(expected) and i < len(actual) and expected[i] == actual[i]
        if same:
            continue
        start = i * chunk_size
        end = min((i + 1) * chunk_size, max(expected_size, actual_size))
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges
