"""The emqx_ft stand-in (tests/emqx_ft) through a real mosquitto, with a raw paho MQTT 5
client over TLS with a password: what a dock sees of a stock EMQX's file transfer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.emqx_ft._erlang import escape_filename, transfer_hash_hex
from tests.emqx_ft.bed import EmqxBed, s3_client
from tests.integration.broker import require_mosquitto

CLIENT = "evidock-dock-01"
RESULTS = "evidock/v1/docks/dock-01/results"
DATA = b"".join(bytes([i % 251]) * 1000 for i in range(300))  # 300 kB, 3 segments
SHA = hashlib.sha256(DATA).hexdigest()
SEG = 100_000


class Client:
    """A paho MQTT 5 client collecting messages and PUBACK reason codes."""

    def __init__(self, bed: EmqxBed, user: str, client_id: str, *, port: int | None = None) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.c.tls_set(ca_certs=bed.ca_file)
        self.c.username_pw_set(user, bed.passwords[user])
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.connack: Any = None
        self.connected = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        self.c.on_publish = self._on_publish
        self.c.connect(bed.host, port or bed.port)
        self.c.loop_start()
        assert self.connected.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, props: Any) -> None:
        self.connack = (rc, props)
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.acked:
            self.acks[mid] = int(rc.value)
            self.acked.notify_all()

    def sub(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        time.sleep(0.3)  # SUBACK: paho gives no blocking wait

    def pub(
        self, topic: str, payload: bytes, *, corr: bytes | None = None, rt: str | None = RESULTS
    ) -> int:
        """Publish QoS 1 and return the PUBACK reason code."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if rt is not None:
            props.ResponseTopic = rt
        if corr is not None:
            props.CorrelationData = corr
        info = self.c.publish(topic, payload, qos=1, properties=props)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, 15), topic
            return self.acks[info.mid]

    def result(self, timeout: float = 15) -> tuple[dict[str, Any], bytes | None]:
        m = self.messages.get(timeout=timeout)
        corr = getattr(m.properties, "CorrelationData", None)
        return json.loads(m.payload), corr

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(name="bed", scope="module")
def bed_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmqxBed]:
    require_mosquitto()
    with EmqxBed(tmp_path_factory.mktemp("emqx"), exporter="local") as b:
        yield b


@pytest.fixture(name="dock")
def dock_fixture(bed: EmqxBed) -> Iterator[Client]:
    c = Client(bed, "dock-01", CLIENT)
    c.sub(RESULTS)
    yield c
    c.close()


def meta(**over: Any) -> bytes:
    m: dict[str, Any] = {
        "name": "clip.mp4",
        "size": len(DATA),
        "checksum": SHA,
        "segments_ttl": 600,
    }
    m.update(over)
    return json.dumps(m).encode()


def upload(dock: Client, file_id: str, prefix: str = "$file-async", body: bytes = DATA) -> None:
    assert dock.pub(f"{prefix}/{file_id}/init", meta(size=len(body)), corr=b"i") == 0
    assert dock.result()[0]["reason_code"] == 0
    for off in range(0, len(body), SEG):
        chunk = body[off : off + SEG]
        topic = f"{prefix}/{file_id}/{off}/{hashlib.sha256(chunk).hexdigest()}"
        assert dock.pub(topic, chunk) == 0
        assert dock.result()[0]["reason_description"] == "success"


def test_upload_exports_file_and_manifest_at_emqx_path(bed: EmqxBed, dock: Client) -> None:
    file_id = SHA
    upload(dock, file_id)
    assert dock.pub(f"$file-async/{file_id}/fin/{len(DATA)}/{SHA}", b"", corr=b"fin") == 0
    res, corr = dock.result()
    assert corr == b"fin"
    assert res == {
        "vsn": "0.1",
        "topic": f"$file-async/{file_id}/fin/{len(DATA)}/{SHA}",
        "packet_id": res["packet_id"],
        "reason_code": 0,
        "reason_description": "success",
    }
    h = transfer_hash_hex(CLIENT, file_id)
    assert bed.export_root is not None
    folder = bed.export_root / h[:2] / h[2:4] / h[4:] / CLIENT / file_id
    assert (folder / "clip.mp4").read_bytes() == DATA
    manifest = json.loads((folder / "clip.mp4.MANIFEST.json").read_bytes())
    assert manifest == [
        "filemeta",
        1,
        {"name": "clip.mp4", "size": len(DATA), "checksum": SHA.upper(), "segments_ttl": 600},
    ]
    # A repeated fin for an exported file succeeds (check_if_already_exported).
    assert dock.pub(f"$file-async/{file_id}/fin/{len(DATA)}/{SHA}", b"", corr=b"again") == 0
    again, corr = dock.result()
    assert (again["reason_code"], again["reason_description"], corr) == (0, "success", b"again")
    # segments were collected after the export
    assert not (bed.segments_root / CLIENT / file_id).exists()


def test_sync_fin_and_default_response_topic(bed: EmqxBed, dock: Client) -> None:
    dock.sub(f"$file-response/{CLIENT}")
    upload(dock, "sync-1", prefix="$file")
    assert dock.pub(f"$file/sync-1/fin/{len(DATA)}", b"", rt=None) == 0
    res, corr = dock.result()
    assert res["reason_description"] == "success" and corr is None
    assert dock.pub("$file/sync-1/fin/999", b"", rt=None) == 0  # already exported


def test_second_init_equal_ok_different_conflict(dock: Client) -> None:
    assert dock.pub("$file-async/f-conf/init", meta()) == 0
    dock.result()
    # Same decoded filemeta (checksum case and key order do not matter) is accepted.
    same = json.dumps(
        {"segments_ttl": 600, "checksum": SHA.upper(), "size": len(DATA), "name": "clip.mp4"}
    )
    assert dock.pub("$file-async/f-conf/init", same.encode()) == 0
    assert dock.result()[0]["reason_code"] == 0
    assert dock.pub("$file-async/f-conf/init", meta(user_data={"seq": 2}), corr=b"c") == 0x80
    res, corr = dock.result()
    assert (res["reason_code"], res["reason_description"], corr) == (
        0x80,
        "filemeta_conflict",
        b"c",
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (meta(segments_ttl=0), "invalid_filemeta"),
        (meta(name="../x"), "invalid_filemeta"),
        (meta(name="a:b"), "invalid_filemeta"),
        (meta(name="x" * 241), "invalid_filemeta"),
        (meta(checksum="abc"), "invalid_filemeta"),
        (json.dumps({"size": 1}).encode(), "invalid_filemeta"),
        (b"{oops;", "invalid_filemeta_json"),
    ],
)
def test_invalid_filemeta(dock: Client, payload: bytes, reason: str) -> None:
    assert dock.pub("$file-async/f-bad/init", payload, corr=b"x") == 0x80
    res, corr = dock.result()
    assert (res["reason_description"], corr) == (reason, b"x")


def test_segment_refusals_and_abort(dock: Client) -> None:
    assert dock.pub(f"$file-async/f-seg/0/{'0' * 64}", b"data") == 0x80
    assert dock.result()[0]["reason_description"] == "checksum_mismatch"
    assert dock.pub("$file-async/f-seg/x1", b"data") == 0x80
    assert dock.result()[0]["reason_description"] == "invalid_offset"
    assert dock.pub("$file-async/f-seg/1/2/3/4", b"") == 0x80
    assert dock.result()[0]["reason_description"] == "invalid_file_command"
    assert dock.pub("$file-async/f-seg/abort", b"") == 0
    assert dock.result()[0]["reason_description"] == "success"
    # fin before all bytes are there
    assert dock.pub("$file-async/f-seg/init", meta()) == 0
    dock.result()
    assert dock.pub("$file-async/f-seg/fin/10", b"") == 0  # async: PUBACKed at once
    assert dock.result()[0]["reason_description"] == "incomplete"
    # a non-object filemeta crashes EMQX's hook: PUBACK 0x10 and no result
    assert dock.pub("$file-async/f-seg/init", b"[1]") == 0x10


def test_file_commands_never_reach_subscribers(bed: EmqxBed, dock: Client) -> None:
    platform = Client(bed, "platform", "spy")
    platform.sub("#")
    platform.sub("$file-async/#")
    platform.sub("$file/#")
    try:
        assert dock.pub("$file-async/f-spy/init", meta()) == 0
        dock.result()
        # ordinary topics are routed both ways
        dock.c.publish("evidock/v1/docks/dock-01/ledger", b"L", qos=1).wait_for_publish(5)
        platform.c.publish(RESULTS, b"hello", qos=1).wait_for_publish(5)
        assert dock.messages.get(timeout=5).payload == b"hello"
        seen = []
        with contextlib.suppress(queue.Empty):
            while True:
                seen.append(platform.messages.get(timeout=0.5).topic)
        # the spy sees the ledger message and the results (a broker publish), no command
        assert "evidock/v1/docks/dock-01/ledger" in seen
        assert RESULTS in seen
        assert not [t for t in seen if t.startswith("$file")]
    finally:
        platform.close()


def test_connack_and_auth_come_from_mosquitto(bed: EmqxBed, dock: Client) -> None:
    _, props = dock.connack
    assert props.MaximumPacketSize == 1024 * 1024
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=paho.MQTTv5)
    c.tls_set(ca_certs=bed.ca_file)
    c.username_pw_set("dock-01", "wrong")
    codes: queue.Queue[int] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: codes.put(int(rc.value))
    c.connect(bed.host, bed.port)
    c.loop_start()
    try:
        assert codes.get(timeout=10) in (0x86, 0x87)
    finally:
        c.loop_stop()


def test_s3_export_object_and_metadata(tmp_path: Path) -> None:
    require_mosquitto()
    with EmqxBed(tmp_path, exporter="s3") as bed:
        dock = Client(bed, "dock-01", CLIENT)
        dock.sub(RESULTS)
        try:
            upload(dock, "f-s3")
            assert dock.pub(f"$file-async/f-s3/fin/{len(DATA)}", b"") == 0
            assert dock.result()[0]["reason_description"] == "success"
            assert bed.s3 is not None
            obj = s3_client(bed.s3).get_object(
                Bucket=bed.s3.bucket, Key=f"{escape_filename(CLIENT)}/f-s3/clip.mp4"
            )
            assert obj["Body"].read() == DATA
            md = obj["Metadata"]
            assert md["clientid"] == CLIENT and md["fileid"] == "f-s3"
            assert md["filemeta-vsn"] == "1"
            assert json.loads(md["filemeta"]) == {
                "name": "clip.mp4",
                "size": len(DATA),
                "checksum": SHA.upper(),
                "segments_ttl": 600,
            }
            # user metadata over S3's 2 KB: the export fails (internal_error), as on S3
            big = meta(
                name="big.bin",
                size=4,
                checksum=hashlib.sha256(b"abcd").hexdigest(),
                user_data={"p": "x" * 2100},
            )
            assert dock.pub("$file-async/f-big/init", big) == 0
            dock.result()
            assert dock.pub("$file-async/f-big/0", b"abcd") == 0
            dock.result()
            assert dock.pub("$file-async/f-big/fin/4", b"") == 0
            assert dock.result()[0]["reason_description"] == "internal_error"
        finally:
            dock.close()
