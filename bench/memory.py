"""Peak memory of ingesting one large file, in a child process.

The child (``python -m bench.memory HOME FILE``) creates a station, ingests
the file and reports the kernel's high-water mark of its resident set
(``VmHWM`` in /proc/self/status). Not ``ru_maxrss`` (RUSAGE_CHILDREN or
``wait4``): exec records the forking parent's peak into it, so a child of a
large benchmark process would report the parent's size. The same is done for
a file 16 times smaller: the copier's memory is a fixed set of buffers, so the
two peaks must be about equal, whatever the file size.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from bench._report import Row, Section, size_text
from bench._system import child_peak_mb, drop_from_cache, random_file
from hashing.station import Station

NAME = "peak RSS"
LIMIT_MB = 100.0  # from the issue
FLAT_MB = 8.0  # the large file may cost at most this much more than the small one


def _child_peak(home: Path, source: Path) -> float:
    drop_from_cache([source])
    return child_peak_mb("bench.memory", str(home), str(source))


def _peak_kib() -> int:
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def run(out: Path, *, large: int, small: int) -> Section:
    data = out / "data"
    big = random_file(data / f"rss-{size_text(large).replace(' ', '')}.bin", large)
    little = random_file(data / f"rss-{size_text(small).replace(' ', '')}.bin", small)
    scratch = out / "run" / "rss"
    peaks: dict[int, float] = {}
    for size, source in ((small, little), (large, big)):
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            peaks[size] = _child_peak(scratch, source)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    peak, base = peaks[large], peaks[small]
    flat = peak - base <= FLAT_MB
    row = Row(
        f"{NAME}, ingest one {size_text(large)} file",
        f"{peak:.1f} MB",
        f"{size_text(small)} file {base:.1f} MB",
        peak / base,
        f"< {LIMIT_MB:.0f} MB, flat",
        peak < LIMIT_MB and flat,
    )
    note = (
        f"{NAME}: a child process per file, VmHWM; "
        f"growth {peak - base:+.1f} MB for {large // small}x the bytes (flat means <= {FLAT_MB:.0f} MB)"
    )
    return Section([row], [note])


def _child(home: Path, source: Path) -> int:
    station = Station.init(home, "bench-rss")
    try:
        results = list(ingest_paths(station, [source], Binding(device="BENCH0001")))
    finally:
        station.close()
    if len(results) != 1 or not isinstance(results[0], IngestResult):
        print(f"bench.memory: ingest failed: {results}", file=sys.stderr)
        return 1
    print(f"VmHWM-KiB {_peak_kib()}")
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
