"""Ingest versus ``cp`` + ``sync`` of the same files.

Both sides read the same source files from the disk (the benchmark syncs and
drops them from the page cache before every timed run) and both end with every
byte written and synced: ``cp`` then ``sync``, against evidock's ingest, which
also digests every byte (whole-file SHA-256 and the 1 MiB chunk tree), re-reads
the copy from the disk and hashes it again, renames it into the store and
commits a ledger entry per file. The two alternate which goes first, each
round writes into a fresh folder that is removed afterwards, and the medians
are compared.

The comparison is run in two memory states, because on this VM the first touch
of guest memory the host has reclaimed costs about 1.5 s per GiB, and ``cp``
fills 2 GiB of new page cache per GiB copied (evidock recycles a few MiB):

* settled: the machine is left idle for a few seconds before each timed run,
  as a dock is when a camera is docked; the host takes back freed memory, and
  ``cp`` + ``sync`` of 1 GiB took 1.6-4.7 s here.
* pre-touched: just before each timed run the benchmark writes to and frees
  three times the data size of anonymous memory, so both sides get memory the
  host has backed, as on bare metal; ``cp`` + ``sync`` then took 1.0-1.6 s
  (up to 2.6 s with other work on the machine).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from bench._report import Row, Section, median, size_text
from bench._report import mb_per_s as rate
from bench._report import seconds_list as secs
from bench._system import drop_from_cache, random_files, touch_memory
from hashing.station import Station

NAME = "ingest"
TARGET = 1.3  # evidock time / (cp + sync) time, from the issue


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _time_cp(sources: list[Path], dest: Path, prepare: Callable[[], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cp`` + ``sync``."""
    dest.mkdir(parents=True)
    drop_from_cache(sources)
    prepare()
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["cp", "--", *map(str, sources), str(dest)], check=True)
    subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - start
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu
    for src in sources:
        if (dest / src.name).stat().st_size != src.stat().st_size:
            raise RuntimeError(f"cp left {dest / src.name} incomplete")
    return elapsed, cpu


def _time_ingest(
    folder: Path, sources: list[Path], home: Path, prepare: Callable[[], None]
) -> tuple[float, float]:
    """(wall, CPU) seconds of evidock's ingest (CPU: all of this process's threads)."""
    station = Station.init(home, "bench-ingest")
    try:
        drop_from_cache(sources)  # also syncs what Station.init wrote
        prepare()
        cpu = _cpu(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = list(ingest_paths(station, [folder], Binding(device="BENCH0001")))
        elapsed = time.perf_counter() - start
        cpu = _cpu(resource.RUSAGE_SELF) - cpu
    finally:
        station.close()
    new = [r for r in results if isinstance(r, IngestResult) and r.new]
    if len(new) != len(sources):
        raise RuntimeError(f"ingest did not take every file: {results}")
    return elapsed, cpu


def _compare(
    folder: Path,
    sources: list[Path],
    scratch: Path,
    rounds: int,
    prepare: Callable[[], None],
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of each run of each side; cp goes first in even rounds."""
    runs: dict[str, list[tuple[float, float]]] = {"cp": [], "evidock": []}
    shutil.rmtree(scratch, ignore_errors=True)
    for r in range(rounds):
        for which in ("cp", "evidock") if r % 2 == 0 else ("evidock", "cp"):
            target = scratch / f"{which}-{r}"
            try:
                if which == "cp":
                    runs[which].append(_time_cp(sources, target, prepare))
                else:
                    runs[which].append(_time_ingest(folder, sources, target, prepare))
            finally:
                shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return runs


def run(out: Path, *, total: int, count: int, rounds: int, settle: float) -> Section:
    size = total // count
    folder = out / "data" / f"ingest-{count}x{size_text(size).replace(' ', '')}"
    sources = random_files(folder, count, size)
    states: list[tuple[str, Callable[[], None], str]] = [
        ("settled", lambda: time.sleep(settle), f"{settle:g} s idle before each run"),
        (
            "pre-touched",
            lambda: touch_memory(3 * total),
            f"{size_text(3 * total)} of memory touched and freed before each run",
        ),
    ]
    section = Section()
    for state, prepare, how in states:
        runs = _compare(folder, sources, out / "run", rounds, prepare)
        cp_times, ev_times = [w for w, _ in runs["cp"]], [w for w, _ in runs["evidock"]]
        cp_cpu, ev_cpu = (median([c for _, c in runs[k]]) for k in ("cp", "evidock"))
        cp_t, ev_t = median(cp_times), median(ev_times)
        ratio = ev_t / cp_t
        section.rows.append(
            Row(
                f"{NAME} {size_text(total)} ({count} x {size_text(size)}), {state}",
                f"{ev_t:.2f} s ({rate(total, ev_t):.0f} MB/s)",
                f"cp + sync {cp_t:.2f} s ({rate(total, cp_t):.0f} MB/s)",
                ratio,
                f"<= {TARGET:.2f}x",
                ratio <= TARGET,
            )
        )
        section.notes.append(
            f"{NAME}, {state} ({how}): {rounds} rounds, medians, cp first in odd rounds; "
            f"cp + sync {secs(cp_times)} s; evidock {secs(ev_times)} s; "
            f"median CPU time (user + sys) cp + sync {cp_cpu:.2f} s, evidock {ev_cpu:.2f} s"
        )
    return section
