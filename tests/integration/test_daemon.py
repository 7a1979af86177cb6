"""The daemon in-process with the folder driver: dock, offload, status, stop."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from agent import config
from agent.cli import main
from agent.dock import wiring
from drivers.demo import DemoCamera
from hashing.audit import audit
from hashing.station import Station


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_daemon_offloads_a_docked_folder_camera(tmp_path: Path) -> None:
    root = tmp_path / "dock"
    root.mkdir()
    cfg_path = tmp_path / "evidock.toml"
    cfg_path.write_text(
        f'[folder]\nroots = ["{root}"]\nquiet_s = 0\n[usb]\nenabled = false\n'
        '[offload]\nwipe = "never"\nfree_margin_mb = 0\n[checkpoint]\ninterval_s = 1\n'
    )
    station = Station.init(tmp_path / "home", "ST-1")
    docked_at_boot = DemoCamera(tmp_path / "cam0", "CAM0", size=(160, 120))
    docked_at_boot.record(2, 1)
    docked_at_boot.plug_into(root)

    daemon = wiring.build_daemon(station, config.load(cfg_path))
    stop = threading.Event()
    server = threading.Thread(target=daemon.serve, args=(stop,))
    daemon.start()
    server.start()
    try:
        cam = DemoCamera(tmp_path / "cam1", "CAM1", size=(160, 120))
        cam.record(3, 1)
        cam.plug_into(root)

        def committed() -> bool:
            status = json.loads((station.home / "status.json").read_text())
            states = {s["serial"]: s for s in status["sessions"]}
            return all(states.get(c, {}).get("safe_to_unplug") for c in ("CAM0", "CAM1"))

        wait_for(committed)
        status = json.loads((station.home / "status.json").read_text())
        by_serial = {s["serial"]: s for s in status["sessions"]}
        assert by_serial["CAM1"]["files_done"] == by_serial["CAM1"]["files_total"] == 3
        assert by_serial["CAM0"]["files_total"] == 2
        assert main(["status", "--home", str(station.home)]) == 0
    finally:
        stop.set()
        server.join(30)
    assert not server.is_alive()
    kinds = [json.loads(raw)["type"] for _, raw in station.ledger.raw_entries()]
    assert kinds.count("ingest") == 5
    assert kinds.count("offload_session") == 2
    assert audit(station).exit_code == 0


def test_stop_aborts_a_long_copy_promptly_and_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM's path: the session's stop event aborts the copy within a buffer;
    nothing half-copied is recorded, and the next docking copies it whole."""
    import os

    from agent.offload.session import OffloadPolicy, OffloadSession
    from drivers.mounted import MountedDriver, mounted_device

    camera = tmp_path / "cam"
    media = camera / "DCIM" / "100MEDIA"
    media.mkdir(parents=True)
    big = media / "CAM5_20261127080000_0001.MP4"
    with big.open("wb") as f:
        for _ in range(96):
            f.write(os.urandom(2 << 20))
    station = Station.init(tmp_path / "home", "ST-1")
    policy = OffloadPolicy(wipe="never", free_margin_bytes=0)
    stop = threading.Event()
    session = OffloadSession(
        station, MountedDriver(), mounted_device(camera, "CAM5"), policy, stop=stop
    )
    runner = threading.Thread(target=session.run)
    runner.start()
    wait_for(lambda: session.status.state == "copying" and session.status.current is not None)
    stop.set()
    started = time.monotonic()
    runner.join(30)
    assert not runner.is_alive()
    assert time.monotonic() - started < 5, "the copy did not stop within a few buffers"
    assert session.status.state == "interrupted"
    assert not session.status.safe_to_unplug
    assert station.store.stored() == []
    assert not any(station.store.staging.iterdir())
    sessions = [json.loads(raw) for _, raw in station.ledger.raw_entries()]
    assert [e["body"]["state"] for e in sessions if e["type"] == "offload_session"] == [
        "interrupted"
    ]

    again = OffloadSession(station, MountedDriver(), mounted_device(camera, "CAM5"), policy).run()
    assert again.status.state == "committed" and len(again.new) == 1
    assert audit(station).exit_code == 0
