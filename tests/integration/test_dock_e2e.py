"""The dock end to end: `evidock agent` as a real process, cameras hot-plugged through a
umockdev test bed as exFAT images on loop devices (FUSE), real H.264 footage.

Issue "Recorders: detection, drivers and the offload daemon", tests that must exist.
Each test builds its own station; a ``Rig`` (tests/integration/dock_support.py)
kills every process, unmounts every mount and detaches every loop device it
made, also when the test fails, and then fails the test if anything leaked.
"""

from __future__ import annotations

import errno
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.offload.session import OffloadPolicy, OffloadSession, SessionStatus
from drivers.base import DeviceInfo
from drivers.demo import STATION_TIME, DemoCamera, Gap
from drivers.usb_storage import MatchRule, UsbStorageDriver
from hashing.station import Station
from tests.integration.dock_support import (
    HEX64,
    MEDIA,
    Footage,
    Rig,
    assert_store_matches_ledger,
    checkpoint_sizes,
    committed,
    entries,
    file_sha256,
    of_type,
    random_bytes,
    read_back,
    require,
    sessions,
    sha256_hex,
    staging_parts,
    stored,
)
from tests.integration.hardware import (
    exfat_image,
    ext4_image,
    fuse_pid,
    kill_fuse,
    loop_device,
    mount_options,
    need,
    run,
    sha256sum,
    umount,
)

# Camera clocks are local time; fixed, in the past, so runs are alike.
DAY = datetime(2026, 3, 2, 8, 0, 0)  # a camera's wall clock: no zone


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Footage:
    need("ffmpeg")
    return Footage(tmp_path_factory.mktemp("footage"))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        rig.init_station()
        rig.configure()
        yield rig
    finally:
        rig.close()


# -- 1. hot-plug ---------------------------------------------------------------------------


def test_hotplug_offloads_proves_and_releases_the_camera(
    rig: Rig, footage: Footage, tmp_path: Path
) -> None:
    serial, officer = "ZFY0001234", "100234"
    clips = footage.camera(serial, DAY, 3)
    files = {
        **clips,
        f"{MEDIA}/INDEX.DAT".encode(): b"an index, not a recording",
        b"MISC/OUTSIDE.MP4": b"outside the DCIM layout",
    }
    image = exfat_image(tmp_path / "cam.img", files, size_mb=16)
    image_before = sha256sum(image)
    assign = rig.cli("device", "assign", serial, "--officer", officer)
    assert assign.returncode == 0, assign.stderr

    agent = rig.start_agent()
    plugged = rig.plug(image, serial)
    status = agent.wait_status(committed(serial), "a committed session", timeout=60)

    (tile,) = sessions(status, serial)
    assert tile["slot"] == plugged.syspath and tile["driver"] == "usb"
    assert tile["officer"] == officer and tile["present"] is True
    assert (tile["files_total"], tile["files_done"]) == (3, 3)
    assert tile["bytes_done"] == tile["bytes_total"] == sum(len(b) for b in clips.values())
    assert tile["errors"] == [] and tile["current"] is None
    shown = rig.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["running"] is True

    code, seconds = agent.terminate()
    assert code == 0, agent.log_tail()
    assert seconds < 10, f"SIGTERM took {seconds:.1f} s"
    assert rig.mounts() == [], "the agent left the camera mounted"
    assert list(rig.mount_root.iterdir()) == [], "the agent left its mount folder behind"

    verify = rig.cli("ledger", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    ingests = assert_store_matches_ledger(rig.home)
    on_camera = read_back(image, tmp_path / "readback")
    assert sha256sum(image) == image_before, "the camera's filesystem was written to"
    assert {e["body"]["source_path"].encode() for e in ingests} == set(clips)
    for entry in ingests:
        body = entry["body"]
        rel = body["source_path"].encode()
        assert body["sha256"] == on_camera[rel], f"{rel!r}: digest differs from sha256sum"
        assert body["size"] == len(clips[rel])
        assert body["device"] == serial and body["officer"] == officer
        assert body["recorder"]["serial"] == serial and body["recorder"]["driver"] == "usb"
        media = body["media"]
        assert media["kind"] == "video" and media["decodes"] is True, media
        assert (media["width"], media["height"]) == (320, 240), media
        assert 800 <= media["duration_ms"] <= 1200, media
        assert media["codec"] == "h264", media

    (session,) = of_type(rig.home, "offload_session")
    assert session["body"]["device"] == serial and session["body"]["state"] == "committed"
    assert session["body"]["new"] == 3 and session["body"]["wiped"] == 0
    assert of_type(rig.home, "anomaly") == [], "a clean camera produced anomalies"
    sizes = checkpoint_sizes(rig.home)
    assert any(size > session["seq"] for size in sizes), "no checkpoint after the session"
    assert sizes[-1] == len(entries(rig.home)), "the last entries were never signed"
    assert staging_parts(rig.home) == []


# -- 2. unplugged mid-copy -----------------------------------------------------------------

BIG = 320 << 20  # copying it takes long enough to pull the camera out in the middle


def wait_for_partial_copy(rig: Rig, at_least: int, timeout: float = 30.0) -> Path:
    """A staging file that has grown past ``at_least`` bytes: the big clip is being copied."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for part in staging_parts(rig.home):
            with suppress(FileNotFoundError):
                if part.stat().st_size >= at_least:
                    return part
        time.sleep(0.005)
    raise AssertionError(f"no staging file reached {at_least} bytes within {timeout} s")


@dataclass(frozen=True)
class BigCamera:
    serial: str
    files: dict[bytes, bytes]
    big: bytes  # the relpath of the big clip
    image: Path
    digest: str  # of the whole image: a read-only camera stays byte for byte the same


@pytest.fixture(scope="module")
def big_camera(footage: Footage, tmp_path_factory: pytest.TempPathFactory) -> BigCamera:
    """Four clips, the third one BIG: two are done before it, one comes after. Only ever
    mounted read-only, so both unplug tests share it."""
    serial = "ZFY0005678"
    files = footage.camera(serial, DAY, 4)
    big = sorted(files)[2]
    files[big] = random_bytes(BIG, seed=3)
    folder = tmp_path_factory.mktemp("big-camera")
    image = exfat_image(folder / "cam.img", files, size_mb=(BIG >> 20) + 40)
    return BigCamera(serial, files, big, image, file_sha256(image))


@pytest.mark.slow
@pytest.mark.parametrize(
    "removed_first",
    [
        pytest.param(False, id="pulled"),
        pytest.param(
            True,
            id="removed-first",
        ),
    ],
)
def test_unplug_mid_copy_then_replug_resumes(
    rig: Rig, big_camera: BigCamera, removed_first: bool
) -> None:
    """The camera pulled out while its big clip is half copied: reads fail (FUSE helper
    killed) and udev says "remove", in either order. The agent survives, keeps nothing
    partial, and the same camera plugged in again resumes where it stopped."""
    serial, files, image = big_camera.serial, big_camera.files, big_camera.image
    names = sorted(files)
    agent = rig.start_agent()
    first = rig.plug(image, serial)
    part = wait_for_partial_copy(rig, 32 << 20)
    (mountpoint,) = rig.mounts()
    if removed_first:
        rig.unplug(first)
        kill_fuse(Path(mountpoint))
    else:
        kill_fuse(Path(mountpoint))  # the camera is yanked: reads fail with ENOTCONN
        status = agent.wait_status(
            lambda s: any(t["finished"] for t in sessions(s, serial)), "the session to end"
        )
        (tile,) = sessions(status, serial)
        assert tile["state"] == "interrupted", tile
        assert tile["safe_to_unplug"] is False and tile["files_done"] < 4, tile
        assert tile["errors"], "the failure is not shown"
        rig.unplug(first)  # the kernel's remove event follows
    agent.wait_status(lambda s: not sessions(s, serial), "the tile to go after the remove")
    assert agent.alive(), agent.log_tail()
    shown = rig.cli("status", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["running"] is True, shown.stderr
    assert rig.mounts() == [], "the dead mount was not released"
    rig.detach(first)

    assert not part.exists() and staging_parts(rig.home) == [], "a partial copy was left"
    before = assert_store_matches_ledger(rig.home)
    done = {e["body"]["source_path"].encode(): e["body"]["sha256"] for e in before}
    assert big_camera.big not in done, "the interrupted clip was recorded"
    assert set(done) >= set(names[:2]), "the clips copied before the unplug are missing"
    for rel, sha in done.items():
        assert sha == sha256_hex(files[rel])
    verify = rig.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    rig.plug(image, serial)  # the same camera again: new loop device, new udev add
    status = agent.wait_status(committed(serial), "the resumed session to commit", timeout=60)
    (tile,) = sessions(status, serial)
    assert (tile["files_total"], tile["files_done"]) == (4, 4)
    code, _ = agent.terminate()
    assert code == 0, agent.log_tail()

    after = assert_store_matches_ledger(rig.home)  # each digest exactly once
    got = {e["body"]["source_path"].encode(): e["body"]["sha256"] for e in after}
    assert got == {rel: sha256_hex(data) for rel, data in files.items()}
    logged = [s["body"] for s in of_type(rig.home, "offload_session")]
    assert logged[-1]["state"] == "committed"
    assert logged[-1]["new"] == 4 - len(done), "committed clips were copied again"
    assert agent.log.read_text().count("ingested DCIM/") == 4
    verify = rig.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert rig.mounts() == []
    assert file_sha256(image) == big_camera.digest, "the camera's filesystem was written to"
    states = [body["state"] for body in logged]
    require(states == ["interrupted", "committed"], f"docking sessions recorded: {states}")


# -- 3. the agent killed at random moments -------------------------------------------------

ROUNDS = 10
KILL_BUDGET_S = 45.0  # of kill rounds, whatever the machine's speed
SEED = 947


def camera_with_big_clips(
    footage: Footage, serial: str, clips: int, big: int, big_size: int
) -> dict[bytes, bytes]:
    """``clips`` real clips, then ``big`` random ones big enough to be probed in a child."""
    files = footage.camera(serial, DAY, clips)
    for i in range(big):
        number = clips + 1 + i
        when = DAY + timedelta(seconds=clips + i)
        name = f"{MEDIA}/{serial}_{when:%Y%m%d%H%M%S}_{number:04d}.MP4"
        files[name.encode()] = random_bytes(big_size, seed=number)
    return files


def pids_of_parts(rig: Rig) -> set[int]:
    return {int(p.name.split(".", 1)[0]) for p in staging_parts(rig.home)}


@pytest.mark.slow
def test_agent_killed_at_random_points_converges(
    rig: Rig, footage: Footage, tmp_path: Path
) -> None:
    """SIGKILL at seeded random moments (starting, mounting, copying, probing, committing);
    each restart must release the dead agent's mounts and partial copies, and in the end
    every recording is in the store exactly once and the ledger audits clean."""
    rng = random.Random(SEED)
    serial = "ZFY0009999"
    files = camera_with_big_clips(footage, serial, clips=3, big=5, big_size=12 << 20)
    image = exfat_image(tmp_path / "cam.img", files, size_mb=96)
    assert rig.cli("device", "assign", serial, "--officer", "100999").returncode == 0
    rig.plug(image, serial)  # docked all along: each agent finds it at start

    log: list[str] = []
    stale: set[str] = set()  # mounts left by killed agents, not yet released
    deadline = time.monotonic() + KILL_BUDGET_S
    mid_copy = 0
    for n in range(ROUNDS):
        if time.monotonic() > deadline:
            break
        delay = rng.uniform(0.3, 2.5)
        agent = rig.start_agent(wait=False)
        time.sleep(delay)
        started = agent.status() is not None  # past start-up: stale state released by now
        mounts, parts = set(rig.mounts()), pids_of_parts(rig)
        agent.crash()
        log.append(f"round {n}: killed after {delay:.2f} s; up={started} parts={parts}")
        if started:
            assert not stale & mounts, f"stale mounts not released: {stale & mounts}; {log}"
            assert parts <= {agent.proc.pid}, f"dead agents' partial copies kept; {log}"
            stale.clear()
        mid_copy += agent.proc.pid in parts
        stale |= set(rig.mounts())

    agent = rig.start_agent()
    assert not stale & set(rig.mounts()), f"stale mounts not released: {stale}; {log}"
    assert pids_of_parts(rig) <= {agent.proc.pid}, f"dead agents' partial copies kept; {log}"
    agent.wait_status(committed(serial), "the last session to commit", timeout=90)
    code, _ = agent.terminate()
    assert code == 0, agent.log_tail()
    assert staging_parts(rig.home) == []
    assert rig.mounts() == [] and list(rig.mount_root.iterdir()) == []
    ingests = assert_store_matches_ledger(rig.home)  # every digest once
    got = {e["body"]["source_path"].encode(): e["body"]["sha256"] for e in ingests}
    assert got == {rel: sha256_hex(data) for rel, data in files.items()}, log
    assert all(e["body"]["device"] == serial for e in ingests)
    verify = rig.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr + "\n".join(log)
    assert mid_copy, f"no kill landed inside a copy: the seed tests nothing; {log}"


def crash_mid_session(rig: Rig, footage: Footage, tmp_path: Path, serial: str) -> list[str]:
    """Dock a camera, kill the agent while it is mounted; the stale mountpoints."""
    files = camera_with_big_clips(footage, serial, clips=1, big=2, big_size=16 << 20)
    image = exfat_image(tmp_path / "cam.img", files, size_mb=64)
    agent = rig.start_agent()
    rig.plug(image, serial)
    deadline = time.monotonic() + 30
    while not rig.mounts():
        assert time.monotonic() < deadline, f"never mounted\n{agent.log_tail()}"
        time.sleep(0.005)
    agent.crash()
    stale = rig.mounts()
    assert stale, "the killed agent left nothing mounted; the test proves nothing"
    return stale


def restart_and_finish(rig: Rig, serial: str, stale: list[str]) -> None:
    again = rig.start_agent(wait=False)
    while again.status() is None:
        require(again.alive(), f"the agent could not start:\n{again.log_tail()}")
        time.sleep(0.05)
    assert not set(stale) & set(rig.mounts()), "a restarted agent kept the stale mount"
    assert not any(Path(mp).exists() for mp in stale), "the stale mount folder was kept"
    assert fuse_pid(Path(stale[0])) is None, "the stale FUSE helper still runs"
    again.wait_status(committed(serial), "the session after the restart", timeout=60)
    code, _ = again.terminate()
    assert code == 0, again.log_tail()
    assert rig.mounts() == []
    assert_store_matches_ledger(rig.home)
    assert len(of_type(rig.home, "ingest")) == 3


def test_restarted_agent_releases_mounts_left_by_a_killed_one(
    rig: Rig, footage: Footage, tmp_path: Path
) -> None:
    stale = crash_mid_session(rig, footage, tmp_path, "ZFY0008888")
    assert fuse_pid(Path(stale[0])) is not None, "its FUSE helper died with it"
    restart_and_finish(rig, "ZFY0008888", stale)


def test_restarted_agent_releases_a_dead_fuse_mount(
    rig: Rig, footage: Footage, tmp_path: Path
) -> None:
    stale = crash_mid_session(rig, footage, tmp_path, "ZFY0008889")
    kill_fuse(Path(stale[0]))  # its helper dies too: the mount answers ENOTCONN
    deadline = time.monotonic() + 10  # once the kernel's cached attributes expire (1 s)
    while True:
        try:
            Path(stale[0]).stat()
        except OSError as e:
            assert e.errno == errno.ENOTCONN, e
            break
        assert time.monotonic() < deadline, "a dead FUSE mount still answers stat()"
        time.sleep(0.05)
    restart_and_finish(rig, "ZFY0008889", stale)


# -- 4. several cameras at once ------------------------------------------------------------


@pytest.mark.slow
def test_three_cameras_at_once(rig: Rig, footage: Footage, tmp_path: Path) -> None:
    serials = ("ZFY0000101", "ZFY0000202", "ZFY0000303")
    cameras = {
        serial: footage.camera(serial, DAY + timedelta(hours=i), 3 + i)
        for i, serial in enumerate(serials)
    }
    images = {
        serial: exfat_image(tmp_path / f"{serial}.img", files, size_mb=16)
        for serial, files in cameras.items()
    }
    agent = rig.start_agent()
    plugged = {serial: rig.plug(images[serial], serial) for serial in serials}
    for serial in serials:
        status = agent.wait_status(committed(serial), f"{serial} committed", timeout=60)
    tiles = {serial: sessions(status, serial) for serial in serials}
    assert all(len(t) == 1 for t in tiles.values()), tiles
    slots = {serial: t[0]["slot"] for serial, t in tiles.items()}
    assert slots == {serial: p.syspath for serial, p in plugged.items()}
    assert len(set(slots.values())) == 3
    for serial, (tile,) in tiles.items():
        assert tile["files_done"] == tile["files_total"] == len(cameras[serial])
    code, _ = agent.terminate()
    assert code == 0, agent.log_tail()
    mounted_at = re.findall(r"mounted (/dev/loop\d+) .* at (\S+)", agent.log.read_text())
    assert len({mp for _, mp in mounted_at}) == 3, mounted_at

    ingests = assert_store_matches_ledger(rig.home)
    expected = {
        (serial, rel, sha256_hex(data))
        for serial, files in cameras.items()
        for rel, data in files.items()
    }
    got = {
        (e["body"]["device"], e["body"]["source_path"].encode(), e["body"]["sha256"])
        for e in ingests
    }
    assert got == expected
    assert all(e["body"]["recorder"]["serial"] == e["body"]["device"] for e in ingests)
    by_device = {s["body"]["device"]: s["body"] for s in of_type(rig.home, "offload_session")}
    assert set(by_device) == set(serials)
    assert all(b["state"] == "committed" for b in by_device.values())
    verify = rig.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert rig.mounts() == []


# -- 5. the device's story, through the folder driver ----------------------------------------


def anomalies(rig: Rig) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in of_type(rig.home, "anomaly"):
        out.setdefault(entry["body"]["kind"], []).append(entry["body"])
    return out


def test_story_anomalies_and_assignment_through_the_folder_driver(rig: Rig, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    rig.configure(usb={"enabled": False}, folder={"roots": [str(incoming)], "quiet_s": 0})
    serial = "DEMO0042"
    camera = DemoCamera(tmp_path / "camera", serial=serial, officer="100001", size=(160, 96))
    start = DAY.replace(tzinfo=STATION_TIME)
    # What a GA/T 947.4 camera reports, here through the identity file: its clock is
    # 12 min 34 s behind the dock's (clock_offset, beyond the 60 s tolerance).
    camera.folder.mkdir(parents=True)
    identity = camera.identity() | {"clock_offset_ms": -754_000}
    (camera.folder / "recorder.json").write_text(json.dumps(identity), encoding="utf-8")
    # Clips 1, 2, then 3 and 4 missing and 15 minutes with nothing, then 5, 6.
    first = camera.record(4, seconds=1, start=start, gap=Gap(after=2, missing=2, seconds=900))
    rel = [f"{MEDIA}/{p.name}" for p in first]
    assert [p.name[-8:-4] for p in first] == ["0001", "0002", "0005", "0006"]

    agent = rig.start_agent(udev=False)
    camera.plug_into(incoming)
    status = agent.wait_status(committed(serial), "the demo camera committed")
    (tile,) = sessions(status, serial)
    assert tile["driver"] == "folder" and tile["officer"] == "100001"
    assert len(tile["anomalies"]) == 4, tile["anomalies"]

    found = anomalies(rig)
    kinds = ["clock_offset", "missing_clip_numbers", "time_gap", "unassigned_device"]
    assert sorted(found) == kinds
    (clock,) = found["clock_offset"]
    assert clock["device"] == serial and clock["offset_ms"] == -754_000
    assert clock["tolerance_s"] == 60 and "behind" in clock["detail"]
    (missing,) = found["missing_clip_numbers"]
    assert missing["device"] == serial and missing["officer"] == "100001"
    assert missing["missing"] == [[3, 4]] and missing["missing_count"] == 2
    assert missing["files"] == [rel[1], rel[2]], "the clips around the hole are not named"
    assert rel[1] in missing["detail"] and rel[2] in missing["detail"]
    (gap,) = found["time_gap"]
    assert gap["device"] == serial and gap["files"] == [rel[1], rel[2]]
    assert gap["gap_s"] == 2 * 1 + 900 and gap["approximate"] is False
    (unassigned,) = found["unassigned_device"]
    assert unassigned["device"] == serial and unassigned["registered"] is False
    assert unassigned["files"] == rel
    assert f"evidock device assign {serial}" in unassigned["detail"]
    assert {e["body"]["officer"] for e in of_type(rig.home, "ingest")} == {"100001"}

    assign = rig.cli("device", "assign", serial, "--officer", "200002")
    assert assign.returncode == 0, assign.stderr
    away = tmp_path / "away"
    away.mkdir()
    camera.folder = (incoming / serial).rename(away / serial)  # undocked
    agent.wait_status(lambda s: not sessions(s, serial), "the camera to leave the status")
    second = camera.record(2, seconds=1)  # clips 7 and 8, right after clip 6
    camera.plug_into(incoming)
    status = agent.wait_status(
        lambda s: committed(serial)(s) and sessions(s, serial)[0]["files_total"] == 6,
        "the second docking committed",
    )
    assert sessions(status, serial)[0]["officer"] == "200002"
    code, _ = agent.terminate()
    assert code == 0, agent.log_tail()

    officers = {e["body"]["name"]: e["body"]["officer"] for e in of_type(rig.home, "ingest")}
    assert officers == {p.name: "100001" for p in first} | {p.name: "200002" for p in second}
    again = anomalies(rig)  # nothing new: the same holes are not recorded twice
    assert {k: len(v) for k, v in again.items()} == dict.fromkeys(kinds, 1)
    sessions_logged = of_type(rig.home, "offload_session")
    assert [s["body"]["officer"] for s in sessions_logged] == ["100001", "200002"]
    assert [s["body"]["anomalies"] for s in sessions_logged] == [4, 0]
    verify = rig.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- 6. hostile content through a real offload session ---------------------------------------


def offload(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    """`evidock offload ... --json` through main(); (exit code, its JSON, stderr)."""
    code = main(["offload", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


@pytest.fixture
def in_process(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """The rig's home and config for commands run through main() in this process."""
    monkeypatch.setenv("EVIDOCK_HOME", str(rig.home))
    monkeypatch.setenv("EVIDOCK_CONFIG", str(rig.config))
    return rig


def test_hostile_recorder_through_evidock_offload(
    in_process: Rig, footage: Footage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = in_process
    serial = "ZFY0007777"
    gbk = f"{MEDIA}/".encode() + "执法记录仪_0002".encode("gbk") + b".MP4"
    good = footage.camera(serial, DAY, 1)
    files = {**good, gbk: footage.clip("gbk-named")}
    links = {f"{MEDIA}/PASSWD.MP4".encode(): b"/etc/passwd", b"DCIM/ETC": b"/etc"}
    fifo, node = f"{MEDIA}/FIFO.MP4".encode(), f"{MEDIA}/NULL.MP4".encode()
    image = ext4_image(
        tmp_path / "hostile.img", files, symlinks=links, fifos=[fifo], device_nodes=[node]
    )
    recorder = tmp_path / "recorder"
    recorder.mkdir()
    with loop_device(image, read_only=True) as dev:
        run(["mount", "-t", "ext4", "-o", "ro,nosuid,nodev,noexec", dev, str(recorder)])
        try:
            started = time.monotonic()
            code, result, err = offload(capsys, str(recorder), "--device", serial)
            took = time.monotonic() - started
        finally:
            umount(recorder)

    # Documented: exit 0 when every recording is committed; what is not a recording
    # (links, FIFOs, device nodes) is refused, reported, and does not hold the camera.
    assert code == 0, (result, err)
    assert took < 30, "a FIFO or device node held the session"
    assert result["state"] == "committed" and result["safe_to_unplug"] is True
    assert (result["files"], result["new"], result["refused"], result["failed"]) == (2, 2, 4, 0)
    ingests = assert_store_matches_ledger(rig.home)
    by_path = {e["body"].get("source_path_hex") or e["body"]["source_path"]: e for e in ingests}
    assert set(by_path) == {gbk.hex(), f"{MEDIA}/{serial}_20260302080000_0001.MP4"}
    assert by_path[gbk.hex()]["body"]["sha256"] == sha256_hex(files[gbk])
    assert all(e["body"]["device"] == serial for e in ingests)
    passwd = sha256_hex(Path("/etc/passwd").read_bytes())
    assert passwd not in stored(rig.home), "a symlink was followed into the dock"
    thumbs = [p.name for p in (rig.home / "thumbs").iterdir()]
    assert all(len(t) == 68 and t.endswith(".jpg") and set(t[:64]) <= HEX64 for t in thumbs)
    assert staging_parts(rig.home) == []

    refused = {tuple(a["files"]): a for a in anomalies(rig).get("refused_file", [])}
    assert set(refused) == {
        ("DCIM/ETC", f"{MEDIA}/PASSWD.MP4"),
        (f"{MEDIA}/FIFO.MP4",),
        (f"{MEDIA}/NULL.MP4",),
    }
    assert all(a["device"] == serial for a in refused.values())
    assert "symbolic link" in refused[("DCIM/ETC", f"{MEDIA}/PASSWD.MP4")]["reason"]
    assert "FIFO" in refused[(f"{MEDIA}/FIFO.MP4",)]["reason"]
    assert "device node" in refused[(f"{MEDIA}/NULL.MP4",)]["reason"]
    assert main(["ledger", "verify"]) == 0, capsys.readouterr().out


class Grower:
    """Appends to a file until stopped, as a camera still recording a clip does."""

    def __init__(self, path: Path, chunk: int = 16 << 10, every_s: float = 0.001) -> None:
        self.path, self.chunk, self.every_s = path, chunk, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.written = 0

    def _run(self) -> None:
        rng = random.Random(5)
        with self.path.open("ab") as f:
            while not self.stop.is_set():
                f.write(rng.randbytes(self.chunk))
                f.flush()
                self.written += self.chunk
                time.sleep(self.every_s)

    def __enter__(self) -> Grower:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_clip_still_growing_is_not_committed_until_it_stops(
    in_process: Rig, footage: Footage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = in_process
    serial = "ZFY0006666"
    recorder = tmp_path / serial
    clips = footage.camera(serial, DAY, 2)
    growing_rel = sorted(clips)[1]
    for rel, data in clips.items():
        (recorder / rel.decode()).parent.mkdir(parents=True, exist_ok=True)
        (recorder / rel.decode()).write_bytes(data)
    growing = recorder / growing_rel.decode()
    with Grower(growing) as grower:
        while grower.written < 4 << 20:  # a few MiB in, still recording
            time.sleep(0.01)
        code, result, _ = offload(capsys, str(recorder))
    # Documented: exit 4 (transient) when the session was interrupted before every
    # recording was committed; it is copied next time.
    assert code == 4, result
    assert result["serial"] == serial and result["state"] == "interrupted"
    assert result["safe_to_unplug"] is False
    assert (result["new"], result["failed"]) == (1, 1), result
    assert any("changed while copied" in e for e in result["errors"]), result["errors"]
    assert staging_parts(rig.home) == []
    (entry,) = assert_store_matches_ledger(rig.home)
    assert entry["body"]["source_path"] != growing_rel.decode()

    code, result, _ = offload(capsys, str(recorder))  # the camera stopped recording
    assert code == 0, result
    assert (result["state"], result["new"], result["skipped"]) == ("committed", 1, 1)
    ingests = assert_store_matches_ledger(rig.home)
    final = {e["body"]["source_path"]: e["body"] for e in ingests}[growing_rel.decode()]
    assert final["sha256"] == sha256sum(growing) and final["size"] == growing.stat().st_size
    assert main(["ledger", "verify"]) == 0, capsys.readouterr().out


def test_clip_not_copied_this_time_is_not_reported_missing(
    in_process: Rig, footage: Footage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = in_process
    serial = "ZFY0006667"
    recorder = tmp_path / serial
    clips = footage.camera(serial, DAY, 3)
    for rel, data in clips.items():
        (recorder / rel.decode()).parent.mkdir(parents=True, exist_ok=True)
        (recorder / rel.decode()).write_bytes(data)
    middle = recorder / sorted(clips)[1].decode()
    with Grower(middle) as grower:
        while grower.written < 1 << 20:
            time.sleep(0.01)
        code, result, _ = offload(capsys, str(recorder))
    assert (code, result["new"], result["failed"]) == (4, 2, 1), result  # try again
    found = anomalies(rig).get("missing_clip_numbers")
    require(found is None, f"a clip on the camera reported missing: {found}")


# -- 7. wipe policy -----------------------------------------------------------------------


NOT_RECORDINGS = {
    f"{MEDIA}/INDEX.DAT".encode(): b"the camera's index",
    f"{MEDIA}/GPS0001.LOG".encode(): b"$GPRMC,...",
    b"MISC/OUTSIDE.MP4": b"outside the DCIM layout",
}


def receipt(home: Path, sha256: str) -> None:
    """An upload_receipt entry for ``sha256``: only what the wipe policy reads (the
    uploader that will write real, signed receipts does not exist yet)."""
    station = Station.open(home)
    try:
        station.ledger.append("upload_receipt", {"sha256": sha256, "size": 0})
    finally:
        station.close()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["after_verified", "after_receipt", "never"])
def test_wipe_policy(rig: Rig, footage: Footage, tmp_path: Path, policy: str) -> None:
    rig.configure(offload={"wipe": policy})
    serial = f"ZFY00W{len(policy):04d}"
    clips = footage.camera(serial, DAY, 3)
    files = {**clips, **NOT_RECORDINGS}
    image = exfat_image(tmp_path / "cam.img", files, size_mb=16)
    digests = {rel: sha256_hex(data) for rel, data in files.items()}

    agent = rig.start_agent()
    first = rig.plug(image, serial)  # a writable loop device: the wipe can really delete
    status = agent.wait_status(committed(serial), "committed", timeout=60)
    wiped = 3 if policy == "after_verified" else 0
    assert sessions(status, serial)[0]["wiped"] == wiped
    if policy == "after_receipt":  # a receipt for one clip, then the camera docks again
        rig.unplug(first)
        agent.wait_status(lambda s: not sessions(s, serial), "the camera gone")
        rig.detach(first)
        receipted = sorted(clips)[0]
        receipt(rig.home, digests[receipted])
        rig.plug(image, serial)
        status = agent.wait_status(committed(serial), "committed again", timeout=60)
        assert sessions(status, serial)[0]["wiped"] == 1
    code, _ = agent.terminate()
    assert code == 0, agent.log_tail()

    left = read_back(image, tmp_path / "readback")
    deleted = {
        "after_verified": set(clips),
        "after_receipt": {sorted(clips)[0]},
        "never": set(),
    }[policy]
    assert set(left) == set(files) - deleted
    assert all(left[rel] == digests[rel] for rel in left), "a file left behind was changed"
    wipes = of_type(rig.home, "wipe")
    assert sorted(w["body"]["source_path"].encode() for w in wipes) == sorted(deleted)
    ingest_seq = {e["body"]["sha256"]: e["seq"] for e in of_type(rig.home, "ingest")}
    for w in wipes:
        body = w["body"]
        assert body["sha256"] == digests[body["source_path"].encode()]
        assert body["device"] == serial and body["policy"] == policy
        assert w["seq"] > ingest_seq[body["sha256"]], "wiped before it was committed"
    assert sum(s["body"]["wiped"] for s in of_type(rig.home, "offload_session")) == len(deleted)
    assert_store_matches_ledger(rig.home)
    verify = rig.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert rig.mounts() == []


def usb_disk(devnode: str, serial: str) -> DeviceInfo:
    """A DeviceInfo as drivers.udev makes it for a camera's exFAT partition."""
    props = {
        "ID_BUS": "usb",
        "ID_FS_TYPE": "exfat",
        "ID_FS_USAGE": "filesystem",
        "DEVTYPE": "partition",
        "DEVNAME": devnode,
        "ID_SERIAL_SHORT": serial,
    }
    return DeviceInfo.make("block", f"/sys/devices/test/{Path(devnode).name}", devnode, props)


def test_safe_to_unplug_only_after_the_wipe(rig: Rig, footage: Footage, tmp_path: Path) -> None:
    serial = "ZFY00W9999"
    image = exfat_image(tmp_path / "cam.img", footage.camera(serial, DAY, 2), size_mb=16)
    seen: list[tuple[bool, int, set[str] | None]] = []
    driver = UsbStorageDriver([MatchRule()], rig.mount_root)
    station = Station.open(rig.home)
    try:
        with loop_device(image) as dev:
            device = usb_disk(dev, serial)

            def changed(status: SessionStatus) -> None:
                mounted = [mount_options(Path(mp)) for mp in rig.mounts()]
                seen.append((status.safe_to_unplug, status.wiped, mounted[0] if mounted else None))

            policy = OffloadPolicy(wipe="after_verified", free_margin_bytes=0)
            session = OffloadSession(station, driver, device, policy, on_change=changed)
            summary = session.run()
    finally:
        station.close()
    assert summary.status.state == "committed" and summary.status.wiped == 2
    safe = [(wiped, opts) for ok, wiped, opts in seen if ok]
    assert safe, "never safe to unplug"
    for wiped, opts in safe:
        require(wiped == 2, f"safe to unplug with {wiped} of 2 wiped: {seen}")
        require(opts is None or "rw" not in opts, f"safe to unplug while mounted rw: {seen}")


# -- 8. capacity ----------------------------------------------------------------------------


def test_not_enough_space_refuses_the_session(rig: Rig, footage: Footage, tmp_path: Path) -> None:
    rig.configure(offload={"wipe": "after_verified", "free_margin_mb": 1 << 40})
    serial = "ZFY0000888"
    image = exfat_image(tmp_path / "cam.img", footage.camera(serial, DAY, 2), size_mb=16)
    before = sha256sum(image)
    agent = rig.start_agent()
    rig.plug(image, serial)
    status = agent.wait_status(
        lambda s: any(t["finished"] for t in sessions(s, serial)), "the session to end"
    )
    (tile,) = sessions(status, serial)
    assert tile["safe_to_unplug"] is False and tile["state"] in ("refused", "failed"), tile
    (error,) = tile["errors"]
    assert "not enough space" in error and "Nothing was copied and nothing deleted" in error
    assert "MiB" in error and "free space on the dock" in error
    shown = rig.cli("status")
    assert "not enough space" in shown.stdout and "请勿拔出" in shown.stdout, shown.stdout
    code, _ = agent.terminate()
    assert code == 0, agent.log_tail()
    assert of_type(rig.home, "ingest") == [] and stored(rig.home) == {}
    assert staging_parts(rig.home) == [] and of_type(rig.home, "wipe") == []
    assert sha256sum(image) == before, "the camera was changed"
    assert rig.mounts() == []


def test_not_enough_space_reads_refused(
    in_process: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_process.configure(offload={"free_margin_mb": 1 << 40})
    recorder = tmp_path / "ZFY0000889"
    (recorder / MEDIA).mkdir(parents=True)
    (recorder / MEDIA / "ZFY0000889_20260302080000_0001.MP4").write_bytes(b"clip")
    code, result, _ = offload(capsys, str(recorder))
    assert code == 2 and result["new"] == 0
    require(result["state"] == "refused", f"state {result['state']!r}")
