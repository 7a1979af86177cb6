"""Uploads as an operator meets them: the agent configured from its TOML file uploads
what it offloads, the platform's receipts make the ``after_receipt`` wipe act at the
next docking, `evidock status` shows the link, and `evidock upload
status|retry|drain` and `evidock receive --show-key` do what their help says.
Real mosquitto (TLS, passwords, shipped ACL) and the real receiver throughout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config
from agent.cli import main
from agent.dock import wiring
from drivers.demo import DemoCamera
from hashing.audit import audit
from hashing.station import Station
from receiver.service import Receiver, ReceiverSettings
from tests.integration._support import Built, assert_clean
from tests.integration.broker import TEST_PASSWORDS, Broker
from tests.integration.broker import broker as _broker  # noqa: F401
from tests.integration.broker import pki as _pki  # noqa: F401
from tests.integration.test_upload_e2e import STATION, Platform, receipts_of, wait_for


def _config(tmp: Path, broker: Broker, platform_key: str, extra: str = "") -> Path:
    secret = tmp / "mqtt.password"
    secret.write_text(TEST_PASSWORDS[STATION])
    secret.chmod(0o600)
    path = tmp / "evidock.toml"
    path.write_text(
        f"""[mqtt]
host = "{broker.host}"
port = {broker.tls_port}
ca_file = "{broker.ca_file}"
password_file = "{secret}"

[upload]
broker = "mosquitto"
platform_key = "{platform_key}"
result_timeout_s = 5
receipt_timeout_s = 5
{extra}"""
    )
    return path


@pytest.fixture
def platform_for(broker: Broker, tmp_path: Path) -> Iterator[dict[str, Platform]]:
    """Start the platform's receiver for a station key: ``platform_for["start"]``."""
    made: dict[str, Platform] = {}
    yield made
    for p in made.values():
        p.stop()
        p.receiver.close()


def _start_platform(
    made: dict[str, Platform], broker: Broker, home: Path, station: Station
) -> Platform:
    receiver = Receiver(ReceiverSettings(home, {STATION: (station.keys.load().verifier,)}))
    p = Platform(receiver, broker, home)
    p.start()
    made[str(home)] = p
    return p


def test_agent_uploads_and_wipes_after_receipt_at_the_next_docking(
    broker: Broker,
    tmp_path: Path,
    platform_for: dict[str, Platform],
    capsys: pytest.CaptureFixture[str],
) -> None:
    station = Station.init(tmp_path / "home", STATION)
    platform = _start_platform(platform_for, broker, tmp_path / "platform", station)
    root = tmp_path / "dock"
    root.mkdir()
    cfg = _config(
        tmp_path,
        broker,
        platform.receiver.verifier.vkey,
        f'[folder]\nroots = ["{root}"]\nquiet_s = 0\n[usb]\nenabled = false\n'
        '[offload]\nwipe = "after_receipt"\nfree_margin_mb = 0\n[checkpoint]\ninterval_s = 1\n',
    )
    daemon = wiring.build_daemon(station, config.load(cfg))
    stop = threading.Event()
    server = threading.Thread(target=daemon.serve, args=(stop,))
    daemon.start()
    server.start()
    camera = DemoCamera(tmp_path / "cam", "CAM1", size=(160, 120))
    camera.record(3, 1)
    try:
        camera.plug_into(root)
        wait_for("three receipts", lambda: len(receipts_of(station)) == 3, timeout=60)
        # The camera stays docked (charging): the receipts make the dock wipe it now.
        wait_for(
            "the receipted clips to be wiped while docked",
            lambda: not list((root / "CAM1").rglob("*.MP4")),
            timeout=30,
        )
        wait_for("the status file to show the link", lambda: "upload" in _status(station))
        capsys.readouterr()
        assert main(["status", "--home", str(station.home)]) == 0
        shown = capsys.readouterr().out
        assert "uplink:" in shown and " connected" in shown, shown

        # It records again and docks again: the new clip is copied, not wiped yet.
        camera.folder.rename(tmp_path / "cam")  # unplug
        camera.folder = tmp_path / "cam"
        camera.record(1, 1)
        time.sleep(0.5)
        camera.plug_into(root)
        wait_for("the fourth recording", lambda: len(_ingested(station)) == 4, timeout=60)
        wait_for("its receipt", lambda: len(receipts_of(station)) == 4, timeout=60)
        wait_for(
            "the fourth clip to be wiped",
            lambda: not list((root / "CAM1").rglob("*.MP4")),
            timeout=30,
        )
    finally:
        stop.set()
        server.join(30)
    wipes = list(station.ledger.entries_of_type("wipe"))
    assert sorted(str(e.body["sha256"]) for e in wipes) == sorted(receipts_of(station))
    assert_clean(audit(station))
    for sha in receipts_of(station):
        stored = platform.receiver.stored(sha)
        assert stored is not None
        assert stored.read_bytes() == station.store.path_for(sha).read_bytes()


def _ingested(station: Station) -> list[str]:
    return [str(e.body["sha256"]) for e in station.ledger.entries_of_type("ingest")]


def _status(station: Station) -> dict[str, object]:
    try:
        value = json.loads((station.home / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def test_upload_commands(
    broker: Broker,
    tmp_path: Path,
    dock: Built,
    platform_for: dict[str, Platform],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = ["--home", str(dock.home)]
    # No broker configured: the queue is kept and shown, drain refuses.
    monkeypatch.setenv("EVIDOCK_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    assert main(["upload", "status", "--json", *home]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["queue"]["unreceipted"] == len(dock.shas)
    assert main(["upload", "status", *home]) == 0
    assert "no broker configured" in capsys.readouterr().out
    assert main(["upload", "drain", "--timeout", "1", *home]) == 2
    assert main(["upload", "retry", "0" * 64, *home]) == 2
    assert main(["upload", "retry", "not-a-digest", *home]) == 2
    assert main(["upload", "retry", dock.shas[0], *home]) == 0

    platform = _start_platform(platform_for, broker, tmp_path / "platform", dock.station)
    monkeypatch.setenv(
        "EVIDOCK_CONFIG", str(_config(tmp_path, broker, platform.receiver.verifier.vkey))
    )
    capsys.readouterr()
    assert main(["upload", "drain", "--timeout", "60", *home]) == 0
    assert "all recordings receipted" in capsys.readouterr().out
    assert sorted(receipts_of(dock.station)) == sorted(dock.shas)
    assert main(["upload", "status", "--json", *home]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["queue"]["unreceipted"] == 0
    assert shown["queue"]["counts"]["receipted"] == len(dock.shas)


def test_receive_show_key_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "receiver.toml"
    cfg.write_text(f'[receiver]\nhome = "{tmp_path / "platform"}"\n')
    assert main(["receive", "--config", str(cfg), "--show-key"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("evidock-platform+")
    assert main(["receive", "--config", str(cfg), "--show-key"]) == 0
    assert capsys.readouterr().out.strip() == key, "the key is made once and kept"
    # Nothing to accept, nothing to listen to: clear refusals, not a silent service.
    assert main(["receive", "--config", str(cfg)]) == 2
    assert "stations is empty" in capsys.readouterr().err
    cfg.write_text(
        f'[receiver]\nhome = "{tmp_path / "platform"}"\n'
        'stations = [{ id = "dock-01", keys = ["not a key"] }]\n'
    )
    assert main(["receive", "--config", str(cfg)]) == 2
    assert "dock-01" in capsys.readouterr().err
