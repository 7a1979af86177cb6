"""The machine under the benchmarks: page cache, test data, and a description.

Test data is random (incompressible, and unique per file so the store cannot
deduplicate it), written once and kept under the output folder keyed by size,
so a second run does not pay for it again.
"""

from __future__ import annotations

import mmap
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from bench._report import GIB, MIB, size_text

WRITE_BLOCK = 4 * MIB


def drop_from_cache(paths: list[Path]) -> None:
    """Make the next read of ``paths`` come from the disk, not from RAM.

    ``sync`` first: POSIX_FADV_DONTNEED only drops clean pages.
    """
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def random_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes at ``path``, made once and then reused."""
    if path.is_file() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        left = size
        while left:
            view = memoryview(os.urandom(min(WRITE_BLOCK, left)))
            while view:
                view = view[os.write(fd, view) :]
            left -= min(WRITE_BLOCK, left)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)
    return path


def random_files(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` random files of ``size`` bytes each, alone in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [folder / f"CLIP{i:04d}.MP4" for i in range(count)]
    for stray in set(folder.iterdir()) - set(wanted):
        if stray.is_dir():
            shutil.rmtree(stray)
        else:
            stray.unlink()
    return [random_file(path, size) for path in wanted]


def touch_memory(size: int) -> None:
    """Write to ``size`` bytes of fresh anonymous memory, then free it.

    On a VM whose host takes back idle guest memory, this leaves that much
    memory backed by the host again, so the next run does not pay for it.
    """
    block = b"\x5a" * WRITE_BLOCK
    with mmap.mmap(-1, size) as m:
        for offset in range(0, size - WRITE_BLOCK + 1, WRITE_BLOCK):
            m[offset : offset + WRITE_BLOCK] = block


def load_average() -> float:
    return os.getloadavg()[0]


def _mem_total() -> int:
    with Path("/proc/meminfo").open() as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _disk(folder: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "-h", "--output=source,fstype,size,avail", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        usage = shutil.disk_usage(folder)
        return f"{size_text(usage.total // GIB * GIB)} ({usage.free // GIB} GiB free)"
    source, fstype, size, avail = out[-1].split()
    return f"{source} {fstype}, {size} ({avail} free)"


def machine_lines(out: Path) -> list[str]:
    return [
        f"machine: {os.cpu_count()} CPUs ({_cpu_model()}), {_mem_total() / GIB:.1f} GiB RAM, "
        f"Linux {platform.release()}, Python {sys.version.split()[0]}",
        f"disk under {out}: {_disk(out)}",
        f"load average at start: {load_average():.2f} (other work on the machine skews the figures)",
    ]


def child_peak_mb(module: str, *args: str) -> float:
    """Run ``python -m module args...`` (which prints ``VmHWM-KiB N`` last) and return
    its peak RSS in MB (10**6 bytes): memory measured in a process of its own."""
    repo = Path(__file__).resolve().parents[1]
    path = [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited with {proc.returncode}")
    return int(proc.stdout.split()[-1]) * 1024 / 1e6
