"""StreamDigester versus one bare ``hashlib.sha256`` over the same bytes in RAM.

The digester computes two SHA-256 streams (the whole file, and the leaf hash of
every 1 MiB chunk), the second on a helper thread; on two cores the pair should
cost about what one plain hash does. Both sides are fed the same 4 MiB blocks
(the size the copier reads) of the same buffer, alternating, and the medians of
their throughputs are compared. The digests are checked to agree.
"""

from __future__ import annotations

import hashlib
import os
import time

from bench._report import MIB, Row, Section, median, size_text
from bench._report import mb_per_s as rate
from hashing.digest import READ_SIZE, StreamDigester

NAME = "digest"
TARGET = 0.9  # digester throughput / hashlib throughput, from the issue


def _hashlib(view: memoryview) -> tuple[float, bytes]:
    start = time.perf_counter()
    h = hashlib.sha256()
    for i in range(0, len(view), READ_SIZE):
        h.update(view[i : i + READ_SIZE])
    digest = h.digest()
    return time.perf_counter() - start, digest


def _digester(view: memoryview) -> tuple[float, bytes]:
    start = time.perf_counter()
    with StreamDigester() as d:
        for i in range(0, len(view), READ_SIZE):
            d.update(view[i : i + READ_SIZE])
        result = d.finish()
    elapsed = time.perf_counter() - start
    if len(result.chunk_hashes) != -(-len(view) // MIB):
        raise RuntimeError("the digester lost chunks")
    return elapsed, result.sha256


def run(*, size: int, repeats: int) -> Section:
    view = memoryview(os.urandom(size))
    base: list[float] = []
    ours: list[float] = []
    digests: set[bytes] = set()
    _hashlib(view[: 16 * MIB])  # warm up: thread start, page faults, CPU clocks
    _digester(view[: 16 * MIB])
    for r in range(repeats):
        for which in ("hashlib", "digester") if r % 2 == 0 else ("digester", "hashlib"):
            elapsed, digest = _hashlib(view) if which == "hashlib" else _digester(view)
            (base if which == "hashlib" else ours).append(rate(size, elapsed))
            digests.add(digest)
    if len(digests) != 1:
        raise RuntimeError("StreamDigester and hashlib disagree on the SHA-256")
    ours_rate, base_rate = median(ours), median(base)
    ratio = ours_rate / base_rate
    row = Row(
        f"{NAME} {size_text(size)} in {size_text(READ_SIZE)} blocks",
        f"StreamDigester {ours_rate:.0f} MB/s",
        f"hashlib.sha256 {base_rate:.0f} MB/s",
        ratio,
        f">= {TARGET:.2f}x",
        ratio >= TARGET,
    )
    notes = [
        f"{NAME}: {repeats} repeats, medians; StreamDigester "
        + " ".join(f"{v:.0f}" for v in ours)
        + " MB/s; hashlib "
        + " ".join(f"{v:.0f}" for v in base)
        + " MB/s"
    ]
    return Section([row], notes)
