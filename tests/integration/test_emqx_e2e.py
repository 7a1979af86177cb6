"""A dock configured for EMQX, end to end, through the emqx_ft stand-in (tests/emqx_ft:
EMQX's file transfer written from its source, in front of a real mosquitto with TLS,
passwords and an ACL) and the platform's receipt service (receiver.receipts), with
EMQX's local exporter and its S3 exporter (moto's S3 server).

What an agency relies on: the dock uploads, EMQX exports, the receipt service
verifies the recording against the dock's mirrored ledger and receipts it, and only
then does the ``after_receipt`` policy wipe the camera; a dock killed mid-transfer
resumes with the same init (EMQX accepts only a byte-identical one); a dock restored
from an old backup (a fork) is refused and recorded; a permanent refusal ends the
transfer with EMQX's reason and is not retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import config
from agent.cli import main
from agent.dock import wiring
from drivers.demo import DemoCamera
from hashing.audit import audit
from hashing.station import Station
from receiver.exports import ExportSource, LocalExports, S3Exports, S3Settings
from receiver.receipts import ExportSettings, ReceiptService, serve_exports
from tests.emqx_ft.bed import EmqxBed
from tests.integration._support import assert_clean
from uploader.link import MqttSettings
from uploader.outbox import UPLOAD_RECEIPT

pytestmark = pytest.mark.slow

STATION = "dock-01"
CLIENT_ID = f"evidock-{STATION}"
Exporter = Literal["local", "s3"]


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def receipts_of(station: Station) -> list[str]:
    return [str(e.body["sha256"]) for e in station.ledger.entries_of_type(UPLOAD_RECEIPT)]


# -- the platform: EMQX (the stand-in) and the receipt service ------------------------


@dataclass
class Platform:
    """The stand-in EMQX and the receipt service, served in a thread through it."""

    bed: EmqxBed
    home: Path
    service: ReceiptService | None = None
    until: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def sources(self) -> list[ExportSource]:
        if self.bed.exporter == "local":
            assert self.bed.export_root is not None
            return [LocalExports(self.bed.export_root)]
        s3 = self.bed.s3
        assert s3 is not None
        return [
            S3Exports(S3Settings(s3.endpoint, s3.bucket, s3.region, s3.access_key, s3.secret_key))
        ]

    def start(self, station: Station) -> None:
        settings = ExportSettings(self.home, {STATION: (station.keys.load().verifier,)}, poll_s=0.2)
        self.service = ReceiptService(settings, self.sources())
        link = MqttSettings(
            self.bed.host,
            self.bed.port,
            "evidock-receiver",
            username="platform",
            password=self.bed.passwords["platform"],
            tls=True,
            ca_file=self.bed.ca_file,
            reconnect_min_s=1,
            reconnect_max_s=2,
        )
        self.until.clear()
        self.thread = threading.Thread(
            target=serve_exports, args=(self.service, link, self.until), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.until.set()
        if self.thread is not None:
            self.thread.join(20)
            self.thread = None
        if self.service is not None:
            self.service.close()

    @property
    def key(self) -> str:
        assert self.service is not None
        return self.service.verifier.vkey


@pytest.fixture(params=["local", "s3"])
def exporter(request: pytest.FixtureRequest) -> Exporter:
    value: Exporter = request.param
    return value


@pytest.fixture
def bed(tmp_path: Path, exporter: Exporter) -> Iterator[EmqxBed]:
    with EmqxBed(tmp_path / "emqx", exporter=exporter) as b:
        yield b


def dock_config(tmp: Path, bed: EmqxBed, platform_key: str, root: Path, extra: str = "") -> Path:
    secret = tmp / "mqtt.password"
    secret.write_text(bed.passwords[STATION])
    secret.chmod(0o600)
    path = tmp / "evidock.toml"
    path.write_text(
        f"""[mqtt]
host = "{bed.host}"
port = {bed.port}
ca_file = "{bed.ca_file}"
password_file = "{secret}"

[upload]
broker = "emqx"
platform_key = "{platform_key}"
result_timeout_s = 5
receipt_timeout_s = 5

[folder]
roots = ["{root}"]
quiet_s = 0

[usb]
enabled = false

[offload]
wipe = "after_receipt"
free_margin_mb = 0

[checkpoint]
interval_s = 1
{extra}"""
    )
    return path


@dataclass
class Dock:
    """A station whose daemon runs in this process, built from its TOML file as
    `evidock agent` builds it."""

    station: Station
    cfg: Path
    root: Path
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        daemon = wiring.build_daemon(self.station, config.load(self.cfg))
        self.stop.clear()
        daemon.start()
        self.thread = threading.Thread(target=daemon.serve, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
            self.thread = None


@pytest.fixture
def platform(bed: EmqxBed, tmp_path: Path) -> Iterator[Platform]:
    p = Platform(bed, tmp_path / "platform")
    yield p
    p.stop()


def make_dock(tmp_path: Path, bed: EmqxBed, platform: Platform) -> Dock:
    station = Station.init(tmp_path / "home", STATION)
    platform.start(station)
    root = tmp_path / "slots"
    root.mkdir()
    return Dock(station, dock_config(tmp_path, bed, platform.key, root), root)


# -- 1. uploaded, receipted, wiped ---------------------------------------------------


def test_a_dock_for_emqx_uploads_is_receipted_and_wipes(
    bed: EmqxBed, platform: Platform, tmp_path: Path
) -> None:
    dock = make_dock(tmp_path, bed, platform)
    dock.start()
    camera = DemoCamera(tmp_path / "cam", "CAM1", size=(160, 120))
    camera.record(3, 1)
    try:
        camera.plug_into(dock.root)
        wait_for("three receipts", lambda: len(receipts_of(dock.station)) == 3, timeout=90)
        wait_for(
            "the receipted clips to be wiped from the camera",
            lambda: not list((dock.root / "CAM1").rglob("*.MP4")),
        )
    finally:
        dock.close()
    station = dock.station
    assert platform.service is not None
    for sha in receipts_of(station):
        stored = platform.service.stored(sha)
        assert stored is not None, f"{sha} not in the platform's store"
        assert stored.read_bytes() == station.store.path_for(sha).read_bytes()
    wipes = sorted(str(e.body["sha256"]) for e in station.ledger.entries_of_type("wipe"))
    assert wipes == sorted(receipts_of(station))
    # The platform holds the dock to its whole history: its mirror is the dock's ledger.
    assert platform.service.mirror_size(STATION) >= 1
    assert platform.service.refusals(STATION) == []
    assert "filemeta_conflict" not in bed.front_log
    assert_clean(audit(station))


# -- 2. killed mid-transfer: the same init again ----------------------------------------


def agent_process(home: Path, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"EVIDOCK_HOME": str(home), "EVIDOCK_CONFIG": str(cfg)}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "agent", "--verbose"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def confirmed_bytes(home: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "upload", "status", "--json", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        return 0
    return int(json.loads(out.stdout)["queue"]["confirmed_bytes"])


@pytest.mark.parametrize("exporter", ["local"], indirect=True)
def test_an_agent_killed_mid_transfer_resumes_with_the_same_init(
    bed: EmqxBed, platform: Platform, tmp_path: Path
) -> None:
    station = Station.init(tmp_path / "home", STATION)
    platform.start(station)
    root = tmp_path / "slots"
    root.mkdir()
    # A slow link (the bandwidth cap) so the kill lands in the middle of the transfer.
    cfg = dock_config(tmp_path, bed, platform.key, root, "")
    text = cfg.read_text().replace(
        "[upload]\n", "[upload]\nbandwidth_bytes_per_s = 100000\nsegment_bytes = 65536\n", 1
    )
    cfg.write_text(text)
    camera = DemoCamera(tmp_path / "cam", "CAM2", size=(640, 480))
    camera.record(1, 20)
    log = tmp_path / "agent.log"
    proc = agent_process(station.home, cfg, log)
    try:
        camera.plug_into(root)
        wait_for(
            "part of the recording confirmed by EMQX",
            lambda: confirmed_bytes(station.home) > 0,
            timeout=120,
        )
        os.killpg(proc.pid, signal.SIGKILL)  # a power cut: nothing is closed cleanly
        proc.wait(30)
        proc = agent_process(station.home, cfg, log)
        wait_for("the receipt after the restart", lambda: len(receipts_of(station)) == 1, 180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    front = bed.front_log
    assert "filemeta_conflict" not in front, front[-2000:]
    assert platform.service is not None and platform.service.refusals(STATION) == []
    assert_clean(audit(station))


# -- 3. a fork: the dock restored from an old backup --------------------------------


@pytest.mark.parametrize("exporter", ["local"], indirect=True)
def test_a_dock_restored_from_an_old_backup_is_refused_as_a_fork(
    bed: EmqxBed, platform: Platform, tmp_path: Path
) -> None:
    dock = make_dock(tmp_path, bed, platform)
    backup = tmp_path / "backup"
    shutil.copytree(dock.station.home, backup, symlinks=True)
    dock.start()
    camera = DemoCamera(tmp_path / "cam", "CAM3", size=(160, 120))
    camera.record(2, 1)
    try:
        camera.plug_into(dock.root)
        wait_for("two receipts", lambda: len(receipts_of(dock.station)) == 2, timeout=90)
    finally:
        dock.close()
    # Unplugged: the restored dock sees only the new camera (a recording still on
    # CAM3 would be copied again, byte-identical, and rightly receipted).
    shutil.rmtree(dock.root / "CAM3")
    assert platform.service is not None
    held = platform.service.mirror_size(STATION)
    # The station folder is replaced by the backup (key and signer state included) and
    # records something else: its ledger now contradicts what the platform mirrored.
    dock.station.close()
    shutil.rmtree(dock.station.home)
    shutil.copytree(backup, dock.station.home, symlinks=True)
    restored = Station.open(dock.station.home)
    # Other footage (another frame size), and enough of it that the restored ledger
    # grows past what the platform holds: only then does the dock mirror it.
    other = DemoCamera(tmp_path / "cam-other", "CAM4", size=(192, 144))
    other.record(3, 1)
    forked = Dock(restored, dock.cfg, dock.root)
    forked.start()
    try:
        other.plug_into(dock.root)
        service = platform.service
        wait_for(
            "the fork to be refused and recorded",
            lambda: any(r.kind in ("fork", "rollback", "chain") for r in service.refusals(STATION)),
            timeout=90,
        )
    finally:
        forked.close()
    assert platform.service.mirror_size(STATION) == held  # nothing of the fork applied
    assert receipts_of(restored) == []  # and nothing it sent is receipted


# -- 4. a permanent refusal ends the transfer with its reason ----------------------------


def occupy_file_id(bed: EmqxBed, file_id: str, size: int) -> None:
    """Open the transfer {evidock-dock-01, file_id} first with another filemeta, as a
    second program using the dock's client id would: EMQX then refuses the dock's own
    init with ``filemeta_conflict`` (emqx_ft_storage_fs.erl ``store_filemeta``)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=bed.ca_file)
    client.username_pw_set(STATION, bed.passwords[STATION])
    client.connect(bed.host, bed.port)
    client.loop_start()
    try:
        meta = {"name": "other.bin", "size": size, "checksum": file_id, "segments_ttl": 600}
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"evidock/v1/docks/{STATION}/results"
        props.CorrelationData = b"occupy"
        info = client.publish(
            f"$file-async/{file_id}/init", json.dumps(meta).encode(), qos=1, properties=props
        )
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.parametrize("exporter", ["local"], indirect=True)
def test_a_permanent_refusal_ends_the_transfer_with_emqx_reason(
    bed: EmqxBed, platform: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dock = make_dock(tmp_path, bed, platform)
    camera = DemoCamera(tmp_path / "cam", "CAM5", size=(160, 120))
    camera.record(1, 1)
    clip = next(camera.folder.rglob("*.MP4"))
    data = clip.read_bytes()
    occupy_file_id(bed, hashlib.sha256(data).hexdigest(), len(data))
    dock.start()
    try:
        camera.plug_into(dock.root)

        def failed() -> bool:
            capsys.readouterr()
            main(["upload", "status", "--json", "--home", str(dock.station.home)])
            status = json.loads(capsys.readouterr().out)
            return bool(status["queue"]["counts"].get("failed"))

        wait_for("the transfer to fail", failed, timeout=60)
        capsys.readouterr()
        assert main(["upload", "status", "--home", str(dock.station.home)]) == 0
        shown = capsys.readouterr().out
        assert "filemeta_conflict" in shown, shown
        conflicts = bed.front_log.count("filemeta_conflict")
        time.sleep(8)  # longer than result_timeout_s: a retry would have come by now
        assert bed.front_log.count("filemeta_conflict") == conflicts, "the refusal was retried"
    finally:
        dock.close()
    assert receipts_of(dock.station) == []
    assert list((dock.root / "CAM5").rglob("*.MP4")), "the camera was wiped without a receipt"
