"""The EMQX receipt service (receiver.receipts) on what EMQX exports (receiver.exports).

The dock is real (``Station.init``: its key, its ledger, its checkpoints) and
mirrors its ledger as the contract says. Exports are laid out exactly as
EMQX's exporters write them: the local exporter's hashed folders and
``<name>.MANIFEST.json`` (emqx_ft_storage_exporter_fs.erl ``complete``,
``mk_result_reldir``), and S3 objects put into a real S3-API server (moto's
server mode on 127.0.0.1, through boto3) with the key and user metadata of
emqx_ft_storage_exporter_s3.erl (``s3_key``, ``s3_headers``). Receipts are
verified with the platform key, as a dock does.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hashing.entries import INGEST, Entry
from hashing.note import NoteVerifier
from hashing.station import Station
from receiver.exports import (
    MANIFEST_SUFFIX,
    LocalExports,
    S3Exports,
    S3Settings,
    escape_filename,
    transfer_reldir,
    unescape_filename,
)
from receiver.mirror import MirrorMessage
from receiver.receipts import (
    RECEIPTED,
    REFUSED,
    WAITING,
    ExportSettings,
    ReceiptService,
    station_partition,
)
from receiver.service import Outgoing
from uploader.protocol import Receipt, Topics

STATION = "dock-01"
NAME = "CLIP0001.MP4"


class Dock:
    """A real station that records files and mirrors its ledger to the platform."""

    def __init__(self, home: Path, station_id: str = STATION) -> None:
        self.station = Station.init(home, station_id)
        self.id = station_id
        self.client_id = f"evidock-{station_id}"
        self.topics = Topics(station_id)
        self.sent = 0  # what the platform holds, as the dock would read it on `held`

    @property
    def key(self) -> NoteVerifier:
        return self.station.keys.load().verifier

    def add(self, data: bytes) -> Entry:
        entry = self.station.ledger.append(
            INGEST, {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        )
        self.station.checkpoint()
        return entry

    def ledger_topic(self) -> str:
        return f"evidock/v1/docks/{self.id}/ledger"

    def mirror(self, start: int | None = None) -> bytes:
        """The mirror message from ``start`` (default: what it sent last) to its checkpoint."""
        start = self.sent if start is None else start
        note = self.station.checkpoint().note
        raw = [r for _, r in self.station.ledger.raw_entries(start)]
        self.sent = start + len(raw)
        return MirrorMessage(start, tuple(raw), note).to_json()

    def filemeta(self, data: bytes, entry: Entry, **over: Any) -> dict[str, Any]:
        """The filemeta as EMQX records it: checksum upper-case (emqx_ft_schema.erl)."""
        meta: dict[str, Any] = {
            "name": NAME,
            "size": len(data),
            "checksum": hashlib.sha256(data).hexdigest().upper(),
            "segments_ttl": 3600,
            "user_data": {"evidock": 1, "seq": entry.seq, "station": self.id},
        }
        meta.update(over)
        return meta

    def close(self) -> None:
        self.station.close()


def fs_export(
    root: Path, client_id: str, file_id: str, name: str, data: bytes, meta: dict[str, Any]
) -> Path:
    """Write an export as emqx_ft_storage_exporter_fs.erl ``complete`` leaves it."""
    folder = root.joinpath(*transfer_reldir(client_id, file_id))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (name + MANIFEST_SUFFIX)).write_text(json.dumps(["filemeta", 1, meta]))
    (folder / name).write_bytes(data)
    return folder / name


def s3_export(
    s3: Any, bucket: str, client_id: str, file_id: str, name: str, data: bytes, meta: dict[str, Any]
) -> str:
    """Put an object as emqx_ft_storage_exporter_s3.erl does: ``s3_key``, ``s3_headers``."""
    key = f"{escape_filename(client_id)}/{escape_filename(file_id)}/{name}"
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        Metadata={
            "clientid": client_id,
            "fileid": file_id,
            "filemeta": json.dumps(meta, separators=(",", ":"), ensure_ascii=True),
            "filemeta-vsn": "1",
        },
    )
    return key


def receipts(out: list[Outgoing], station: str = STATION) -> list[Outgoing]:
    return [o for o in out if o.topic == Topics(station).receipts]


def data_of(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    d = Dock(tmp_path / "dock")
    yield d
    d.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "exports"
    r.mkdir()
    return r


def make_service(home: Path, dock: Dock, *sources: Any, **kw: Any) -> ReceiptService:
    return ReceiptService(ExportSettings(home, {dock.id: (dock.key,)}, **kw), sources)


@pytest.fixture
def service(tmp_path: Path, dock: Dock, root: Path) -> Iterator[ReceiptService]:
    s = make_service(tmp_path / "platform", dock, LocalExports(root))
    yield s
    s.close()


def mirror(service: ReceiptService, dock: Dock) -> list[Outgoing]:
    return service.handle_ledger(dock.ledger_topic(), dock.mirror())


# -- the local exporter ------------------------------------------------------------------


def test_an_export_is_stored_and_receipted(
    service: ReceiptService, dock: Dock, root: Path, tmp_path: Path
) -> None:
    data = data_of(3 * 1024 * 1024 + 17, 1)  # more than one streaming read
    entry = dock.add(data)
    held = mirror(service, dock)
    assert held == [
        Outgoing(dock.topics.held, dock.station.checkpoint().note.encode(), retain=True)
    ]
    sha = hashlib.sha256(data).hexdigest()
    fs_export(root, dock.client_id, sha, NAME, data, dock.filemeta(data, entry))
    out = receipts(service.poll())
    assert len(out) == 1
    r = Receipt.open(out[0].payload, [service.verifier])
    assert (r.station, r.sha256, r.size, r.seq) == (STATION, sha, len(data), entry.seq)
    assert r.held_size == dock.station.ledger.size()
    stored = service.stored(sha)
    assert stored is not None and stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o400
    assert [(s, row.status) for s, _, row in service.exports()] == [("fs", RECEIPTED)]
    assert service.poll() == []  # answered once per process
    service.close()
    again = make_service(tmp_path / "platform", dock, LocalExports(root))
    try:
        assert receipts(again.poll()) == out  # seen again after a restart: the same receipt
    finally:
        again.close()


def test_temp_files_and_files_without_a_manifest_do_not_count(
    service: ReceiptService, dock: Dock, root: Path
) -> None:
    data = data_of(1000, 2)
    entry = dock.add(data)
    mirror(service, dock)
    sha = hashlib.sha256(data).hexdigest()
    (root / "tmp").mkdir()
    (root / "tmp" / f"{NAME}.000000000000001F").write_bytes(data[:10])  # mk_temp_filename
    folder = root.joinpath(*transfer_reldir(dock.client_id, sha))
    folder.mkdir(parents=True)
    (folder / NAME).write_bytes(data)  # no manifest
    assert service.poll() == []
    manifest = folder / (NAME + MANIFEST_SUFFIX)
    text = json.dumps(["filemeta", 1, dock.filemeta(data, entry)])
    manifest.write_text(text[: len(text) // 2])  # still being written
    assert service.poll() == []
    assert service.exports() == []
    manifest.write_text(text)
    assert len(receipts(service.poll())) == 1


def test_an_export_waits_for_the_mirror(service: ReceiptService, dock: Dock, root: Path) -> None:
    first = data_of(500, 3)
    dock.add(first)
    mirror(service, dock)  # the platform holds the ledger up to the first file
    data = data_of(700, 4)
    entry = dock.add(data)
    sha = hashlib.sha256(data).hexdigest()
    fs_export(root, dock.client_id, sha, NAME, data, dock.filemeta(data, entry))
    assert service.poll() == []
    assert [row.status for _, _, row in service.exports()] == [WAITING]
    mirror(service, dock)
    out = receipts(service.poll())
    assert [Receipt.open(o.payload, [service.verifier]).seq for o in out] == [entry.seq]


@pytest.mark.parametrize("fault", ["entry", "size", "station", "bytes", "checksum", "user_data"])
def test_refused_exports_get_no_receipt_and_a_recorded_reason(
    tmp_path: Path, dock: Dock, root: Path, fault: str
) -> None:
    service = make_service(tmp_path / "platform", dock, LocalExports(root))
    try:
        other = data_of(300, 5)
        other_entry = dock.add(other)
        data = data_of(400, 6)
        entry = dock.add(data)
        mirror(service, dock)
        sha = hashlib.sha256(data).hexdigest()
        client_id, meta, content = dock.client_id, dock.filemeta(data, entry), data
        if fault == "entry":  # user_data names the entry of another file
            meta = dock.filemeta(data, other_entry)
        elif fault == "size":  # the filemeta and the entry agree on a size the bytes do not have
            content = data + b"x"
        elif fault == "station":
            client_id = "evidock-dock-99"
        elif fault == "bytes":  # right size, other bytes: only the re-hash can tell
            content = bytes([data[0] ^ 1]) + data[1:]
        elif fault == "checksum":
            meta = dock.filemeta(data, entry, checksum=hashlib.sha256(other).hexdigest())
        elif fault == "user_data":
            meta = dock.filemeta(data, entry, user_data={"evidock": 1, "seq": entry.seq})
        fs_export(root, client_id, sha, NAME, content, meta)
        assert receipts(service.poll()) == []
        rows = service.exports()
        assert [row.status for _, _, row in rows] == [REFUSED], rows
        detail = rows[0][2].detail
        expected = {"entry": "entry", "size": "size", "station": "station", "bytes": "bytes"}
        assert detail.startswith(expected.get(fault, "filemeta")), detail
        assert service.stored(sha) is None
        assert not any((tmp_path / "platform" / "staging").iterdir())
        assert service.poll() == []  # and not again
    finally:
        service.close()


# -- the ledger mirror through the database -----------------------------------------------


def test_a_fork_is_refused_recorded_and_never_applied(
    service: ReceiptService, dock: Dock, tmp_path: Path
) -> None:
    dock.add(b"one")
    mirror(service, dock)
    size = service.mirror_size(STATION)
    raw = [r for _, r in dock.station.ledger.raw_entries()]
    raw[1] = raw[1].replace(b'"size":3', b'"size":4')
    forged = MirrorMessage(0, tuple(raw), dock.station.checkpoint().note).to_json()
    assert service.handle_ledger(dock.ledger_topic(), forged) == []
    assert [r.kind for r in service.refusals(STATION)] == ["fork"]
    assert service.mirror_size(STATION) == size
    # The honest mirror again is stale: the held note is published again, nothing stored.
    out = service.handle_ledger(dock.ledger_topic(), dock.mirror(0))
    assert [o.topic for o in out] == [dock.topics.held]
    assert service.held_notes() == [(STATION, dock.station.checkpoint().note)]


def test_messages_of_unknown_stations_or_malformed_are_ignored(
    service: ReceiptService, dock: Dock
) -> None:
    dock.add(b"x")
    assert service.handle_ledger("evidock/v1/docks/dock-99/ledger", dock.mirror(0)) == []
    assert service.handle_ledger(dock.ledger_topic(), b"{not json") == []
    assert service.handle_ledger(dock.ledger_topic(), b"") == []
    assert service.mirror_size(STATION) == 0 and service.refusals() == []


def test_stations_are_split_across_instances_by_hash(
    tmp_path: Path, dock: Dock, root: Path
) -> None:
    part = station_partition(STATION, 3)
    assert all(0 <= station_partition(f"dock-{i:02}", 3) < 3 for i in range(50))
    dock.add(b"y")
    message = dock.mirror(0)
    for index in range(3):
        s = make_service(
            tmp_path / f"p{index}", dock, LocalExports(root), partition=index, partitions=3
        )
        try:
            out = s.handle_ledger(dock.ledger_topic(), message)
            assert bool(out) == (index == part)
        finally:
            s.close()


# -- EMQX's naming -----------------------------------------------------------------------


def test_names_are_escaped_as_emqx_does() -> None:
    assert escape_filename("a/b:c%d\\e") == "a%2Fb%3Ac%25d%5Ce"
    assert escape_filename("..") == "%2E%2E"
    assert escape_filename("tab\there") == "tab%09here"
    assert unescape_filename("a%2Fb%3ac") == "a/b:c"


@given(st.text(min_size=1, max_size=40))
def test_escaping_round_trips(name: str) -> None:
    try:
        name.encode()
    except UnicodeEncodeError:
        return  # lone surrogates: not a client id MQTT can carry
    assert unescape_filename(escape_filename(name)) == name
    assert "/" not in escape_filename(name)


def test_the_bucket_folders_hash_the_erlang_term() -> None:
    # term_to_binary({<<"a">>, <<"b">>}): 131, SMALL_TUPLE_EXT 104, arity 2, BINARY_EXT 109 ...
    term = bytes([131, 104, 2, 109, 0, 0, 0, 1, 97, 109, 0, 0, 0, 1, 98])
    h = hashlib.sha1(term).hexdigest().upper()  # noqa: S324 - EMQX's bucket hash, not security
    assert transfer_reldir("a", "b") == (h[:2], h[2:4], h[4:], "a", "b")


# -- S3, through a real S3-API server ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[tuple[S3Settings, Any]]:
    import boto3

    settings = S3Settings(
        s3_endpoint, f"exports-{os.urandom(4).hex()}", "us-east-1", "test-key", "test-secret"
    )
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
    )
    client.create_bucket(Bucket=settings.bucket)
    yield settings, client


def test_an_s3_export_is_stored_and_receipted(
    tmp_path: Path, dock: Dock, s3: tuple[S3Settings, Any]
) -> None:
    settings, client = s3
    service = make_service(tmp_path / "platform", dock, S3Exports(settings))
    try:
        data = data_of(2 * 1024 * 1024 + 5, 7)
        entry = dock.add(data)
        sha = hashlib.sha256(data).hexdigest()
        s3_export(
            client, settings.bucket, dock.client_id, sha, NAME, data, dock.filemeta(data, entry)
        )
        client.put_object(Bucket=settings.bucket, Key="stray/object", Body=b"not EMQX's")
        assert service.poll() == []  # waiting for the mirror
        mirror(service, dock)
        out = receipts(service.poll())
        assert len(out) == 1
        r = Receipt.open(out[0].payload, [service.verifier])
        assert (r.sha256, r.size, r.seq) == (sha, len(data), entry.seq)
        stored = service.stored(sha)
        assert stored is not None and stored.read_bytes() == data
    finally:
        service.close()


def test_an_s3_object_whose_bytes_do_not_match_is_refused(
    tmp_path: Path, dock: Dock, s3: tuple[S3Settings, Any]
) -> None:
    settings, client = s3
    service = make_service(tmp_path / "platform", dock, S3Exports(settings))
    try:
        data = data_of(1000, 8)
        entry = dock.add(data)
        mirror(service, dock)
        sha = hashlib.sha256(data).hexdigest()
        bad = bytes(len(data))
        s3_export(
            client, settings.bucket, dock.client_id, sha, NAME, bad, dock.filemeta(data, entry)
        )
        assert service.poll() == []
        [(source, _, row)] = service.exports()
        assert (source, row.status) == ("s3", REFUSED) and row.detail.startswith("bytes")
        assert service.stored(sha) is None
    finally:
        service.close()


def test_a_receipt_the_mirror_does_not_record_is_sent_again_until_it_does(
    service: ReceiptService, dock: Dock, root: Path
) -> None:
    """EMQX answers a dock's repeated fin itself: a receipt lost on its way would never
    come again. Each mirror message says what the dock has recorded; the receipts
    its ledger lacks go with the answer, until an ``upload_receipt`` entry shows."""
    data = data_of(900, 9)
    entry = dock.add(data)
    mirror(service, dock)
    sha = hashlib.sha256(data).hexdigest()
    fs_export(root, dock.client_id, sha, NAME, data, dock.filemeta(data, entry))
    (sent,) = receipts(service.poll())
    # The dock asks again (the last batch once more): the receipt goes again.
    again = service.handle_ledger(dock.ledger_topic(), dock.mirror(dock.sent - 1))
    assert receipts(again) == [sent]
    # The dock records it; the mirror shows it: nothing is owed any more.
    dock.station.ledger.append("upload_receipt", {"sha256": sha, "receipt": "…"})
    assert receipts(mirror(service, dock)) == []
    assert receipts(service.handle_ledger(dock.ledger_topic(), dock.mirror(dock.sent - 1))) == []
