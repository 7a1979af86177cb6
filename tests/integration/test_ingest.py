"""Ingest against real files on disk, including what a hostile camera holds."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.offload.ingest import Binding, IngestResult, ingest_file, ingest_paths
from hashing.audit import audit
from hashing.errors import DeviceError, DigestMismatchError, EvidockError
from hashing.station import Station


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return Station.init(tmp_path / "home", "ST-1")


def results(
    station: Station, paths: list[Path], binding: Binding | None = None
) -> tuple[list[IngestResult], list[tuple[Path, EvidockError]]]:
    ok: list[IngestResult] = []
    bad: list[tuple[Path, EvidockError]] = []
    for item in ingest_paths(station, paths, binding or Binding()):
        if isinstance(item, IngestResult):
            ok.append(item)
        else:
            bad.append(item)
    return ok, bad


def test_hostile_camera_tree(station: Station, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    (cam / "DCIM").mkdir(parents=True)
    good = cam / "DCIM" / "GOOD0001.MP4"
    good.write_bytes(os.urandom(5000))
    gbk = os.fsencode(cam / "DCIM") + b"/\xd6\xd0\xce\xc4\xc2\xbc\xcf\xf1.MP4"  # "中文录像" in GBK
    with open(gbk, "wb") as f:
        f.write(b"gbk-named clip")
    (cam / "DCIM" / "..\\..\\etc\\evil.MP4").write_bytes(b"backslash name")
    (cam / "DCIM" / "passwd.MP4").symlink_to("/etc/passwd")
    (cam / "LINKDIR").symlink_to("/etc")
    os.mkfifo(cam / "DCIM" / "fifo.MP4")
    device_made = True
    try:
        os.mknod(cam / "DCIM" / "null.MP4", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        device_made = False

    ok, bad = results(station, [cam])
    names = {Path(r.source).name for r in ok}
    assert "GOOD0001.MP4" in names
    assert "..\\..\\etc\\evil.MP4" in names  # a name, stored by digest only
    assert len(ok) == 3
    refused = {p.name: str(e) for p, e in bad}
    assert "symbolic link" in refused["passwd.MP4"]
    assert "symbolic link" in refused["LINKDIR"]
    assert "not a regular file" in refused["fifo.MP4"]
    if device_made:
        assert "not a regular file" in refused["null.MP4"]
    # Nothing from /etc came in, and the store holds only digests.
    assert all(len(p.name) == 64 for p in station.store.root.rglob("*") if p.is_file())
    assert not any(station.store.staging.iterdir())

    gbk_result = next(r for r in ok if os.fsencode(r.source) == gbk)
    gbk_entry = station.ledger.entry(gbk_result.seq or 0)
    assert bytes.fromhex(str(gbk_entry.body["source_path_hex"])) == gbk
    assert station.ledger.entry(ok[0].seq or 0).body["sha256"] == ok[0].sha256
    assert audit(station).exit_code == 0


def test_same_bytes_from_another_path_recorded_once(station: Station, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "a.mp4").write_bytes(data)
    (tmp_path / "b.mp4").write_bytes(data)
    first = ingest_file(station, tmp_path / "a.mp4", Binding(device="CAM1"))
    second = ingest_file(station, tmp_path / "b.mp4", Binding(device="CAM2"))
    assert first.new and not second.new
    assert first.sha256 == second.sha256 and first.seq == second.seq
    assert station.ledger.size() == 2  # genesis + one ingest


def test_file_growing_while_read_is_not_committed(station: Station, tmp_path: Path) -> None:
    clip = tmp_path / "growing.mp4"
    clip.write_bytes(os.urandom(96 << 20))
    stop = threading.Event()

    def grow() -> None:
        with clip.open("ab") as f:
            while not stop.is_set():
                f.write(b"x" * 4096)
                f.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        with pytest.raises(DeviceError, match="changed while copied"):
            ingest_file(station, clip, Binding())
    finally:
        stop.set()
        writer.join()
    assert station.ledger.size() == 1
    assert not any(station.store.staging.iterdir())
    # Once the camera stops writing, the same file goes in.
    assert ingest_file(station, clip, Binding()).new


def test_reread_mismatch_is_caught(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that reads back differently (bad disk, bad RAM) is never committed."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(os.urandom(2 << 20))
    real_preadv = os.preadv

    def flipping_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        buffers[0][0] ^= 0xFF
        return n

    monkeypatch.setattr(os, "preadv", flipping_preadv)
    with pytest.raises(DigestMismatchError):
        ingest_file(station, clip, Binding())
    assert station.ledger.size() == 1
    assert not any(station.store.staging.iterdir())


def test_unreadable_source_is_a_device_error(station: Station, tmp_path: Path) -> None:
    d = tmp_path / "dir.mp4"
    d.mkdir()
    with pytest.raises(DeviceError):
        ingest_file(station, d, Binding())


def test_resume_after_crash_between_store_and_commit(station: Station, tmp_path: Path) -> None:
    """A file renamed into the store whose entry never committed is committed on re-ingest."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(os.urandom(1 << 20))
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from pathlib import Path
from hashing.station import Station
from agent.offload.ingest import ingest_file, Binding
import hashing.ledger as ledger_mod
station = Station.open(Path({str(station.home)!r}))
def die(*a, **k):
    os._exit(9)  # power cut after the rename, before the commit
ledger_mod.Ledger.transaction = die
ingest_file(station, Path({str(clip)!r}), Binding())
"""
    done = subprocess.run([sys.executable, "-c", code], check=False)
    assert done.returncode == 9
    assert len(station.store.stored()) == 1
    assert station.ledger.size() == 1
    assert audit(station).kinds() == {"file_added"}
    result = ingest_file(station, clip, Binding())
    assert result.new
    assert station.ledger.size() == 2
    assert audit(station).exit_code == 0
