"""Offload benchmarks (recorders issue): many recorders at once, many small files,
CPU per GB, and peak RSS against file size.

Each recorder is a folder tree offloaded by a real ``OffloadSession`` (the
daemon's per-recorder unit: listing, copy + digests + re-read, media probe in a
child process for video-sized files, ledger commits, story, session entry,
checkpoint) through the ``mounted`` driver, all sessions in threads at once as
the daemon runs them. The baseline is ``cp -r`` of the same trees followed by
``sync``, from the same disk with the sources dropped from the page cache
before each run, alternating which side goes first.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.offload.session import OffloadPolicy, OffloadSession, SessionSummary
from bench._report import MIB, Row, Section, median, size_text
from bench._system import child_peak_mb, drop_from_cache, random_file
from drivers.mounted import MountedDriver, mounted_device
from hashing.station import Station

TARGET_AGGREGATE = 0.8  # evidock throughput / (cp -r + sync) throughput, from the issue
FLAT_MB = 8.0
_POLICY = OffloadPolicy(wipe="never", free_margin_bytes=0)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _trees(data: Path, recorders: int, files: int, size: int, ext: str) -> list[Path]:
    """``recorders`` camera trees (DCIM/100MEDIA/...) of random files, made once."""
    trees = []
    for r in range(recorders):
        tree = data / f"rec-{recorders}x{files}x{size}-{ext}" / f"CAM{r:03d}"
        media = tree / "DCIM" / "100MEDIA"
        for i in range(files):
            random_file(media / f"CAM{r:03d}_20261127080000_{i + 1:04d}.{ext}", size)
        trees.append(tree)
    return trees


def _files(trees: list[Path]) -> list[Path]:
    return [p for t in trees for p in sorted((t / "DCIM" / "100MEDIA").iterdir())]


def _time_cp(trees: list[Path], dest: Path) -> tuple[float, float]:
    dest.mkdir(parents=True)
    drop_from_cache(_files(trees))
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", "--", *map(str, trees), str(dest)], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - start, _cpu(resource.RUSAGE_CHILDREN) - cpu


def _time_offload(trees: list[Path], home: Path) -> tuple[float, float]:
    """(wall, CPU incl. probe children) of one session per tree, all at once."""
    station = Station.init(home, "bench-offload")
    summaries: list[SessionSummary] = []
    try:
        drop_from_cache(_files(trees))
        sessions = [
            OffloadSession(station, MountedDriver(), mounted_device(t, t.name), _POLICY)
            for t in trees
        ]
        threads = [threading.Thread(target=lambda s=s: summaries.append(s.run())) for s in sessions]
        cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu
    finally:
        station.close()
    bad = [s.status.as_dict() for s in summaries if s.status.state != "committed"]
    if bad or len(summaries) != len(trees):
        raise RuntimeError(f"offload did not commit every recorder: {bad}")
    return elapsed, cpu


def _compare(trees: list[Path], scratch: Path, rounds: int) -> dict[str, list[tuple[float, float]]]:
    runs: dict[str, list[tuple[float, float]]] = {"cp": [], "evidock": []}
    shutil.rmtree(scratch, ignore_errors=True)
    for r in range(rounds):
        for which in ("cp", "evidock") if r % 2 == 0 else ("evidock", "cp"):
            target = scratch / f"{which}-{r}"
            try:
                if which == "cp":
                    runs[which].append(_time_cp(trees, target))
                else:
                    runs[which].append(_time_offload(trees, target))
            finally:
                shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return runs


def run(
    out: Path,
    *,
    recorders: int,
    files_each: int,
    file_size: int,
    small_files: int,
    small_size: int,
    rounds: int,
    rss_small: int,
    rss_large: int,
) -> Section:
    data, scratch = out / "data", out / "run" / "offload"
    rows: list[Row] = []
    notes: list[str] = []

    trees = _trees(data, recorders, files_each, file_size, "MP4")
    total = recorders * files_each * file_size
    runs = _compare(trees, scratch, rounds)
    cp_wall = median([w for w, _ in runs["cp"]])
    ev_wall = median([w for w, _ in runs["evidock"]])
    ev_cpu = median([c for _, c in runs["evidock"]])
    ratio = cp_wall / ev_wall
    rows.append(
        Row(
            f"offload, {recorders} recorders at once ({size_text(total)})",
            f"{total / MIB / ev_wall:.0f} MB/s",
            f"cp -r + sync {total / MIB / cp_wall:.0f} MB/s",
            ratio,
            f">= {TARGET_AGGREGATE}x",
            ratio >= TARGET_AGGREGATE,
        )
    )
    gib = total / (1 << 30)
    rows.append(
        Row(
            "offload, CPU seconds per GiB",
            f"{ev_cpu / gib:.1f} s",
            f"cp -r + sync {median([c for _, c in runs['cp']]) / gib:.1f} s",
            ev_cpu / max(median([c for _, c in runs["cp"]]), 1e-6),
        )
    )
    notes.append(
        f"offload: {recorders} OffloadSessions in threads (as the daemon runs them), "
        f"{files_each} x {size_text(file_size)} random .MP4 each (probed in a child process, "
        "flagged undecodable); wall evidock "
        + ", ".join(f"{w:.2f}" for w, _ in runs["evidock"])
        + " s; cp "
        + ", ".join(f"{w:.2f}" for w, _ in runs["cp"])
        + " s"
    )

    small = _trees(data, 1, small_files, small_size, "JPG")
    small_runs = _compare(small, scratch, rounds)
    ev = median([w for w, _ in small_runs["evidock"]])
    cp = median([w for w, _ in small_runs["cp"]])
    rows.append(
        Row(
            f"offload, {small_files} small files ({size_text(small_size)}) from one recorder",
            f"{small_files / ev:.0f} files/s",
            f"cp -r + sync {small_files / cp:.0f} files/s",
            cp / ev,
        )
    )
    notes.append(
        "small files: each is a durable ledger commit (WAL fsync), an fsynced and re-read "
        "staging copy, a rename with two folder fsyncs and a photo probe; cp + one sync does none of that"
    )

    peaks = {}
    for size in (rss_small, rss_large):
        source = _trees(data, 1, 1, size, "MP4")[0]
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            peaks[size] = _child_peak(scratch / "home", source)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    peak, base = peaks[rss_large], peaks[rss_small]
    rows.append(
        Row(
            f"offload peak RSS, one {size_text(rss_large)} recording",
            f"{peak:.1f} MB",
            f"{size_text(rss_small)}: {base:.1f} MB",
            peak / base,
            "flat",
            peak - base <= FLAT_MB,
        )
    )
    return Section(rows, notes)


def _child_peak(home: Path, tree: Path) -> float:
    drop_from_cache(_files([tree]))
    return child_peak_mb("bench.offload", str(home), str(tree))


def _child(home: Path, tree: Path) -> int:
    station = Station.init(home, "bench-offload-rss")
    try:
        summary = OffloadSession(
            station, MountedDriver(), mounted_device(tree, tree.name), _POLICY
        ).run()
    finally:
        station.close()
    if summary.status.state != "committed":
        print(f"bench.offload: {summary.status.as_dict()}", file=sys.stderr)
        return 1
    with Path("/proc/self/status").open() as f:
        peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    print(f"VmHWM-KiB {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
