"""Uploads through crashes and outages (issue 4 §4): the dock's uploader SIGKILLed at
random points many times, the receiver SIGKILLed mid-file, and a link down for
longer than the platform keeps unfinished segments. Each time every file must
arrive byte-exact exactly once, with exactly one verified receipt entry each, and
the station's ledger must still verify.

Real parts only: mosquitto with TLS and passwords (tests/integration/broker.py),
the uploader in a process of its own (upload_worker.py), and the receiver as
``evidock receive`` in a process of its own where it is the one killed.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hashing.audit import audit
from hashing.note import NoteVerifier
from hashing.station import Station
from receiver import service as receiver_module
from receiver.service import Receiver, ReceiverSettings
from tests.integration._support import Built, assert_clean
from tests.integration.broker import TEST_PASSWORDS, Broker
from tests.integration.broker import broker as _broker  # noqa: F401
from tests.integration.broker import pki as _pki  # noqa: F401
from tests.integration.test_upload_e2e import (
    STATION,
    Platform,
    dock_mqtt,
    receipts_of,
    start_platform,
    wait_for,
)
from uploader.outbox import Outbox
from uploader.sender import Uploader, UploadSettings
from uploader.throttle import Bandwidth

KIB = 1 << 10
SEGMENT = 64 * KIB
RATE = 1_500_000  # bytes/s: the 5.6 MiB of the dock fixture take about 4 s, so kills land mid-file


def _files_on_platform(home: Path) -> dict[str, int]:
    """sha256 -> how many times the platform recorded storing it."""
    db = sqlite3.connect(f"file:{home / 'receiver.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT sha256, COUNT(*) FROM files GROUP BY sha256").fetchall()
    finally:
        db.close()
    return {str(sha): int(n) for sha, n in rows}


def _assert_exactly_once(platform_home: Path, built: Built) -> None:
    """Byte-exact on the platform, stored once, one receipt entry each, ledger verifies."""
    assert _files_on_platform(platform_home) == dict.fromkeys(built.shas, 1)
    check = Receiver(ReceiverSettings(platform_home, {STATION: (built.key,)}))
    try:
        for sha, source in zip(built.shas, built.sources, strict=True):
            stored = check.stored(sha)
            assert stored is not None, f"{sha} not stored"
            assert stored.read_bytes() == source.read_bytes()
    finally:
        check.close()
    station = Station.open(built.home)
    try:
        receipts = receipts_of(station)
        assert sorted(receipts) == sorted(built.shas), "one upload_receipt entry per file"
        assert_clean(audit(station))
    finally:
        station.close()


def _worker(broker: Broker, built: Built, platform_key: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.upload_worker",
            str(built.home),
            str(broker.tls_port),
            broker.ca_file,
            TEST_PASSWORDS[STATION],
            platform_key,
            str(SEGMENT),
            str(RATE),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def platform(broker: Broker, tmp_path: Path, dock: Built) -> Iterator[Platform]:
    p = start_platform(broker, tmp_path / "platform", dock)
    yield p
    p.stop()
    p.receiver.close()


def test_dock_killed_at_random_points_loses_and_duplicates_nothing(
    broker: Broker, platform: Platform, dock: Built
) -> None:
    rng = random.Random(7)
    key = platform.receiver.verifier.vkey
    progress: list[int] = []
    for _ in range(12):
        proc = _worker(broker, dock, key)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.2, 1.2))
        proc.kill()
        proc.wait(10)
        outbox = Outbox.for_home(dock.home)
        try:
            progress.append(outbox.summary()["unreceipted"])
        finally:
            outbox.close()
    # The kills fell while files were still on their way, not after the end.
    assert any(n > 0 for n in progress), progress
    final = _worker(broker, dock, key, "--drain", "90")
    assert final.wait(120) == 0, "the last uploader did not see every receipt"
    platform.stop()
    _assert_exactly_once(platform.home, dock)


def _receiver_config(tmp: Path, broker: Broker, home: Path, built: Built) -> Path:
    secret = tmp / "platform.password"
    secret.write_text(TEST_PASSWORDS["platform"])
    secret.chmod(0o600)
    config = tmp / "receiver.toml"
    config.write_text(
        f"""[mqtt]
host = "{broker.host}"
port = {broker.tls_port}
tls = true
ca_file = "{broker.ca_file}"
username = "platform"
password_file = "{secret}"

[receiver]
home = "{home}"
stations = [{{ id = "{STATION}", keys = ["{built.key.vkey}"] }}]
"""
    )
    return config


def _evidock(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def test_receiver_killed_mid_file_loses_and_duplicates_nothing(
    broker: Broker, tmp_path: Path, dock: Built
) -> None:
    home = tmp_path / "platform"
    config = _receiver_config(tmp_path, broker, home, dock)
    shown = subprocess.run(
        _evidock("receive", "--config", str(config), "--show-key"),
        capture_output=True,
        text=True,
        check=True,
    )
    platform_key = shown.stdout.strip()
    settings = UploadSettings(
        segment_bytes=SEGMENT,
        window_segments=4,
        bandwidth=Bandwidth(RATE, (), 0),
        platform_keys=(NoteVerifier.parse(platform_key),),
        result_timeout_s=3.0,
        receipt_timeout_s=3.0,
    )
    uploader = Uploader(dock.station, settings, dock_mqtt(broker))
    rng = random.Random(11)
    receiver = subprocess.Popen(_evidock("receive", "--config", str(config)))
    uploader.start()
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.4, 1.2))
            receiver.kill()
            receiver.wait(10)
            time.sleep(0.3)
            receiver = subprocess.Popen(_evidock("receive", "--config", str(config)))
        assert uploader.drain(90), uploader.snapshot()
    finally:
        uploader.close()
        receiver.terminate()
        receiver.wait(20)
    _assert_exactly_once(home, dock)


def test_link_down_longer_than_the_segment_lifetime(
    broker: Broker, tmp_path: Path, dock: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform drops the segments of a transfer idle past its TTL; when the link
    returns the dock learns the transfer is gone and sends the file again from init."""
    monkeypatch.setattr(receiver_module, "EXPIRE_EVERY_S", 0.2)
    receiver = Receiver(
        ReceiverSettings(tmp_path / "platform", {STATION: (dock.key,)}, min_segments_ttl_s=1)
    )
    platform = Platform(receiver, broker, tmp_path / "platform")
    platform.start()
    settings = UploadSettings(
        segment_bytes=SEGMENT,
        window_segments=4,
        bandwidth=Bandwidth(RATE, (), 0),
        platform_keys=(receiver.verifier,),
        segments_ttl_s=1,
        result_timeout_s=3.0,
        receipt_timeout_s=3.0,
    )
    uploader = Uploader(dock.station, settings, dock_mqtt(broker))
    uploader.start()
    try:
        wait_for(
            "some confirmed segments",
            lambda: any(uploader.outbox.confirmed_bytes(s) > 0 for s in dock.shas),
        )
        broker.stop()
        spool = tmp_path / "platform" / "spool"
        wait_for(
            "the platform to drop the idle transfer",
            lambda: not any(p.is_file() for p in spool.rglob("*")),
            timeout=15,
        )
        time.sleep(1.5)  # past the dock's segments TTL as well
        broker.start()
        assert uploader.drain(90), uploader.snapshot()
    finally:
        uploader.close()
        platform.stop()
        receiver.close()
    _assert_exactly_once(tmp_path / "platform", dock)
