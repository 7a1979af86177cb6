"""The EMQX receipt service's loop (``serve_exports``) behind a real mosquitto (TLS, passwords, ACL).

mosquitto stands where EMQX routes ordinary MQTT: the dock's ledger mirror
messages reach the service, and the held checkpoint (retained) and receipts
reach the dock. The export folder is laid out as EMQX's local exporter does
(tests/unit/receiver/test_exports.py ``fs_export``). The ACL is the shipped
one plus the ledger topic (the platform reads it, each dock writes its own).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.demo.localbroker import SHIPPED_ACL
from hashing.note import NoteVerifier
from receiver.exports import LocalExports
from receiver.mirror import MirrorMessage
from receiver.receipts import ExportSettings, ReceiptService, serve_exports
from tests.integration.broker import Broker, BrokerFactory, free_port
from tests.integration.broker import broker_factory as _broker_factory  # noqa: F401
from tests.integration.broker import pki as _pki  # noqa: F401
from tests.integration.test_receiver_mqtt import DockClient, mqtt_settings
from tests.unit.receiver.test_exports import NAME, Dock, data_of, fs_export
from uploader.protocol import Receipt

WAIT_S = 20.0
NO_MATCHING_SUBSCRIBERS = 0x10
LEDGER_ACL = """
# -- the ledger mirror (EMQX kind; receiver/mirror.py) ---------------------
user platform
topic read evidock/v1/docks/+/ledger
pattern write evidock/v1/docks/%u/ledger
"""


@pytest.fixture
def broker(broker_factory: BrokerFactory, tmp_path: Path) -> Broker:
    acl = tmp_path / "acl"
    acl.write_text(SHIPPED_ACL.read_text() + LEDGER_ACL)
    return broker_factory(acl=acl)


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    d = Dock(tmp_path / "dock")
    yield d
    d.close()


def publish_ledger(client: DockClient, dock: Dock, payload: bytes) -> None:
    deadline = time.monotonic() + WAIT_S
    while client.publish(dock.ledger_topic(), payload, b"ledger") == NO_MATCHING_SUBSCRIBERS:
        assert time.monotonic() < deadline, "the receipt service never subscribed"
        time.sleep(0.1)


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_mirror_in_held_out_export_in_receipt_out(
    broker: Broker, dock: Dock, tmp_path: Path
) -> None:
    root = tmp_path / "exports"
    root.mkdir()
    settings = ExportSettings(tmp_path / "platform", {dock.id: (dock.key,)}, poll_s=0.2)
    service = ReceiptService(settings, [LocalExports(root)])
    until = threading.Event()
    thread = threading.Thread(target=serve_exports, args=(service, mqtt_settings(broker), until))
    thread.start()
    client = DockClient(broker)
    try:
        data = data_of(256 * 1024 + 3, 11)
        entry = dock.add(data)
        sha = hashlib.sha256(data).hexdigest()
        # EMQX exported the file before the mirror arrived: it waits, it is not refused.
        fs_export(root, dock.client_id, sha, NAME, data, dock.filemeta(data, entry))
        publish_ledger(client, dock, dock.mirror())
        held = client.wait(dock.topics.held)
        assert held.payload.decode() == dock.station.checkpoint().note
        receipt = Receipt.open(client.wait(dock.topics.receipts).payload, [service.verifier])
        assert (receipt.sha256, receipt.size, receipt.seq) == (sha, len(data), entry.seq)
        assert receipt.held_size == dock.station.ledger.size()

        # A rewritten history is refused and recorded; nothing is held for it.
        raw = [r for _, r in dock.station.ledger.raw_entries()]
        raw[-1] = raw[-1].replace(b'"size":', b'"size":1', 1)
        forged = MirrorMessage(0, tuple(raw), dock.station.checkpoint().note).to_json()
        publish_ledger(client, dock, forged)
        wait_for(lambda: service.refusals(dock.id), "the fork was not recorded")
        assert [r.kind for r in service.refusals(dock.id)] == ["fork"]

        # A dock connecting later reads the held checkpoint, retained.
        late = DockClient(broker)
        try:
            m = late.wait(dock.topics.held)
            assert m.retain and m.payload.decode() == dock.station.checkpoint().note
        finally:
            late.close()
    finally:
        client.close()
        until.set()
        thread.join(timeout=WAIT_S)
        service.close()
    assert not thread.is_alive()


def _config(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "platform.toml"
    cfg.write_text(f'[receiver]\nhome = "{tmp_path / "platform"}"\nsource = "emqx"\n{body}')
    return cfg


def test_receive_with_source_emqx_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main
    from agent.dock import wiring

    cfg = _config(tmp_path, "")
    assert main(["receive", "--config", str(cfg), "--show-key"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("evidock-platform+")
    # The same key as the mosquitto path's: the same state folder, the same file.
    broker_cfg = tmp_path / "broker.toml"
    broker_cfg.write_text(f'[receiver]\nhome = "{tmp_path / "platform"}"\n')
    assert main(["receive", "--config", str(broker_cfg), "--show-key"]) == 0
    assert capsys.readouterr().out.strip() == key
    # No export source: refused with the reason, by `config check` and at start.
    problems = [str(p) for p in wiring.check_file(cfg)]
    assert any("exports_dir or s3_bucket" in p for p in problems), problems
    assert main(["receive", "--config", str(cfg)]) == 2
    loose = tmp_path / "secret"
    loose.write_text("s3cr3t")
    loose.chmod(0o644)
    cfg = _config(
        tmp_path,
        f's3_bucket = "b"\ns3_access_key_file = "{loose}"\ns3_secret_key_file = "{loose}"\n',
    )
    problems = [str(p) for p in wiring.check_file(cfg)]
    assert any("s3_access_key_file" in p and "readable by others" in p for p in problems), problems


def test_the_service_process_receipts_an_s3_export(
    broker: Broker, dock: Dock, tmp_path: Path
) -> None:
    """`evidock receive` with source = "emqx" as its own process: S3 in moto, SIGTERM to end."""
    import os
    import signal
    import subprocess
    import sys

    from receiver.exports import S3Settings
    from tests.unit.receiver.test_exports import s3_export

    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    s3_server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3_server.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        endpoint = f"http://127.0.0.1:{port}"
        secrets = {}
        for name, value in (
            ("platform.password", broker.passwords["platform"]),
            ("ak", "k"),
            ("sk", "s"),
        ):
            secrets[name] = tmp_path / name
            secrets[name].write_text(value)
            secrets[name].chmod(0o600)
        s3 = S3Settings(endpoint, "emqx-exports", "us-east-1", "k", "s")
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=s3.region,
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
        )
        client.create_bucket(Bucket=s3.bucket)
        data = data_of(100_000, 12)
        entry = dock.add(data)
        sha = hashlib.sha256(data).hexdigest()
        s3_export(client, s3.bucket, dock.client_id, sha, NAME, data, dock.filemeta(data, entry))
        cfg = tmp_path / "platform.toml"
        cfg.write_text(
            f"""[mqtt]
host = "{broker.host}"
port = {broker.tls_port}
tls = true
ca_file = "{broker.ca_file}"
username = "platform"
password_file = "{secrets["platform.password"]}"

[receiver]
home = "{tmp_path / "platform"}"
source = "emqx"
stations = [{{ id = "{dock.id}", keys = ["{dock.key.vkey}"] }}]
s3_endpoint = "{endpoint}"
s3_bucket = "{s3.bucket}"
s3_access_key_file = "{secrets["ak"]}"
s3_secret_key_file = "{secrets["sk"]}"
poll_s = 1
"""
        )
        shown = subprocess.run(
            [sys.executable, "-m", "agent.cli", "receive", "--config", str(cfg), "--show-key"],
            check=True,
            capture_output=True,
        )
        key = NoteVerifier.parse(shown.stdout.decode().strip())
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "receive", "--config", str(cfg)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        client_mqtt = DockClient(broker)
        try:
            publish_ledger(client_mqtt, dock, dock.mirror())
            receipt = Receipt.open(client_mqtt.wait(dock.topics.receipts).payload, [key])
            assert (receipt.sha256, receipt.seq) == (sha, entry.seq)
        finally:
            client_mqtt.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        s3_server.stop()
