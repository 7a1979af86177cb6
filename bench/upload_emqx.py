"""Upload throughput and the dock's memory on the EMQX path (issue 12, "Benchmark").

Throughput: one recording goes from a station configured for EMQX
(``UploadSettings(broker="emqx")``: prefix ``$file-async``, the frozen init, the
ledger mirror) through the emqx_ft stand-in (tests/emqx_ft/bed.py ``EmqxBed``:
mosquitto with TLS, passwords and an ACL behind the front, EMQX's local exporter) to
the platform's receipt service (receiver/receipts.py ``ReceiptService`` +
``serve_exports`` on ``LocalExports`` of the bed's export root, in a process of its
own), timed from the uploader's start until the signed receipt (an
``upload_receipt`` entry) is in the dock's ledger: the init, every segment, the
front's segment writes, fin, assembly and export, the ledger mirror, the service's
poll, re-hash, content-addressed store and the receipt.

Baseline, same run, same bed: a bare paho client publishes the same bytes in QoS 1
messages of the dock's segment size (1 MiB less the room the dock leaves for the
header: EMQX's Maximum Packet Size is 1 MB, so a 1 MiB payload cannot pass the
front) on an ordinary topic to a bare subscriber in another process, through the
same front (``bed.port``, TLS), timed from the first publish until the subscriber
has the last byte. For information, the same straight to the bed's mosquitto
(``bed.broker.tls_port``): what the front itself costs.

Memory: as bench/upload.py, but the uploader talks to the stand-in: 1 GiB vs the
large queue of sparse files, in a child process, the kernel's high-water mark.

Each measurement gets a fresh bed (no retained held note, session or export of a
previous station survives into the next). Children:
``python -m bench.upload_emqx receipts|dock|subscriber|publisher ARGS``.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from bench._report import GIB, MIB, Row, size_text
from bench._system import child_peak_mb
from bench.upload import (
    FLAT_MB,
    REPO,
    STATION,
    _env,
    _sparse_queue,
    _station,
    drain_and_report,
    publish_file,
    subscribe_until,
)
from hashing.note import NoteVerifier
from hashing.station import Station
from receiver.exports import LocalExports
from receiver.receipts import LEDGER_FILTER, ExportSettings, ReceiptService, serve_exports
from tests.emqx_ft.bed import EMQX_ACL, EmqxBed
from tests.emqx_ft.front import EMQX_MAX_PACKET_SIZE
from uploader import link, protocol
from uploader.link import MqttSettings
from uploader.transfer import PACKET_OVERHEAD, UploadSettings

TARGET_RATIO = 0.6  # issue 12: at least 0.6x the bare paho publish through the same broker
GOAL_RATIO = 0.8
SERVICE_ID = "evidock-receiver"
POLL_S = 0.2  # the service's export poll; production's default is 10 s (receipt latency only)
# The dock's segment: what uploader.transfer link_up leaves of EMQX's packet limit.
SEGMENT = min(MIB, EMQX_MAX_PACKET_SIZE - PACKET_OVERHEAD - len(protocol.EMQX_PREFIX.encode()))
BASE_TOPIC = f"bench/{STATION}/bytes"
# The bed's ACL plus one ordinary topic tree the bare baseline may use.
ACL = EMQX_ACL + "pattern readwrite bench/#\n"


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.upload_emqx", *args],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def _bed(scratch: Path) -> EmqxBed:
    passwords = {u: secrets.token_urlsafe(12) for u in ("platform", STATION)}
    shutil.rmtree(scratch / "emqx", ignore_errors=True)
    return EmqxBed(scratch / "emqx", exporter="local", users=passwords, acl=ACL)


def _subscribe_service_session(bed: EmqxBed) -> None:
    """Give the service's client id a persistent session already subscribed to the
    ledger mirror (as a service that has run before has), so the dock's first mirror
    message is queued for it even if the service child has not yet connected."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=SERVICE_ID,
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("platform", bed.passwords["platform"])
    client.tls_set(ca_certs=bed.ca_file)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = link.SESSION_EXPIRY_S
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(bed.host, bed.port, clean_start=True, properties=props)
    client.loop_start()
    try:
        client.subscribe([(LEDGER_FILTER, 1)])
        if not subscribed.wait(10):
            raise RuntimeError("the broker did not take the receipt service's subscription")
    finally:
        client.disconnect()
        client.loop_stop()


def _with_service(
    bed: EmqxBed, scratch: Path, station_key: str, body: Callable[[str], float]
) -> float:
    """Run ``body(platform_key)`` while a receipt service child serves the bed."""
    assert bed.export_root is not None
    _subscribe_service_session(bed)
    home = scratch / "platform"
    shutil.rmtree(home, ignore_errors=True)
    service = _child(
        "receipts",
        str(home),
        str(bed.export_root),
        str(bed.port),
        bed.ca_file,
        bed.passwords["platform"],
        station_key,
    )
    try:
        assert service.stdout is not None
        platform_key = service.stdout.readline().strip()
        if not platform_key:
            raise RuntimeError("the receipt service child did not start")
        return body(platform_key)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def _time_evidock(scratch: Path, source: Path) -> tuple[float, float, float]:
    """(evidock, bare paho through the front, bare paho to mosquitto) seconds, one bed."""
    home = scratch / "dock"
    shutil.rmtree(home, ignore_errors=True)
    with _bed(scratch) as bed:
        assert bed.broker is not None
        t_front = _time_paho(bed, bed.port, source)
        t_direct = _time_paho(bed, bed.broker.tls_port, source)
        station = _station(home, [source], adopt=False)
        key = station.keys.load().verifier.vkey
        station.close()

        def dock(platform_key: str) -> float:
            done = _child(
                "dock", str(home), str(bed.port), bed.ca_file, bed.passwords[STATION],
                platform_key, "600",
            )  # fmt: skip
            out, _ = done.communicate()
            if done.returncode != 0:
                raise RuntimeError(f"bench.upload_emqx dock failed: {out}")
            return float(out.split()[out.split().index("seconds") + 1])

        try:
            t_ours = _with_service(bed, scratch, key, dock)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return t_ours, t_front, t_direct


def _time_paho(bed: EmqxBed, port: int, source: Path) -> float:
    size = source.stat().st_size
    sub = _child("subscriber", str(port), bed.ca_file, bed.passwords["platform"], str(size))
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "ready":
        raise RuntimeError("the bare subscriber did not subscribe")
    pub = _child("publisher", str(port), bed.ca_file, bed.passwords[STATION], str(source))
    pub_out, _ = pub.communicate()
    sub_out, _ = sub.communicate(timeout=600)
    if pub.returncode or sub.returncode:
        raise RuntimeError(f"bare paho baseline failed: {pub_out!r} {sub_out!r}")
    return float(sub_out.split()[-1]) - float(pub_out.split()[-1])


def _rss(scratch: Path, queued: int, seconds: int) -> float:
    home = scratch / f"dock-rss-{queued}"
    shutil.rmtree(home, ignore_errors=True)
    files = _sparse_queue(scratch / f"sparse-{queued}", queued)
    try:
        station = _station(home, files, adopt=True)
        key = station.keys.load().verifier.vkey
        station.close()
        with _bed(scratch) as bed:

            def dock(platform_key: str) -> float:
                return child_peak_mb(
                    "bench.upload_emqx", "dock", str(home), str(bed.port), bed.ca_file,
                    bed.passwords[STATION], platform_key, str(seconds), "--partial",
                )  # fmt: skip

            return _with_service(bed, scratch, key, dock)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(scratch / f"sparse-{queued}", ignore_errors=True)


def rows(
    source: Path, scratch: Path, *, rounds: int, rss_queued: int, rss_seconds: int
) -> tuple[list[Row], list[str]]:
    """The EMQX rows and notes (bench/upload.py ``run`` adds them to its section)."""
    total = source.stat().st_size
    timings = [_time_evidock(scratch, source) for _ in range(rounds)]
    small = _rss(scratch, GIB, rss_seconds)
    large = _rss(scratch, rss_queued, rss_seconds)
    t_ours = statistics.median(t[0] for t in timings)
    t_front = statistics.median(t[1] for t in timings)
    t_direct = statistics.median(t[2] for t in timings)
    ratio = t_front / t_ours
    direct = t_direct / t_ours
    out = [
        Row(
            f"upload {size_text(total)} via emqx_ft stand-in to receipt service (TLS)",
            f"{total / t_ours / MIB:.0f} MiB/s",
            f"bare paho QoS 1 via same front {total / t_front / MIB:.0f} MiB/s",
            ratio,
            f">= {TARGET_RATIO}x (goal {GOAL_RATIO}x)",
            ratio >= TARGET_RATIO,
        ),
        Row(
            f"upload {size_text(total)} via emqx_ft stand-in, vs mosquitto direct",
            f"{total / t_ours / MIB:.0f} MiB/s",
            f"bare paho QoS 1 to mosquitto {total / t_direct / MIB:.0f} MiB/s",
            direct,
        ),
        Row(
            f"EMQX dock peak RSS, {size_text(rss_queued)} queued",
            f"{large:.1f} MB",
            f"{size_text(GIB)} queued {small:.1f} MB",
            large / small,
            "flat",
            large - small <= FLAT_MB,
        ),
    ]
    notes = [
        f"upload (EMQX): median of {rounds}; timed to the signed receipt in the dock's ledger "
        f"(service polls exports every {POLL_S} s); baselines: {SEGMENT}-byte QoS 1 messages "
        "(the dock's segment size under EMQX's 1 MB packet limit) to the subscriber's last byte",
        f"upload (EMQX) RSS: the uploader runs {rss_seconds} s against the stand-in; "
        f"flat means <= {FLAT_MB:.0f} MB growth",
    ]
    return out, notes


# -- children -------------------------------------------------------------------


def _mqtt(port: str, ca: str, user: str, password: str, client_id: str) -> MqttSettings:
    return MqttSettings(
        host=EmqxBed.host,
        port=int(port),
        client_id=client_id,
        username=user,
        password=password,
        tls=True,
        ca_file=ca,
    )


def _receipts_child(
    home: str, export_root: str, port: str, ca: str, password: str, station_key: str
) -> int:
    settings = ExportSettings(
        Path(home), {STATION: (NoteVerifier.parse(station_key),)}, poll_s=POLL_S
    )
    service = ReceiptService(settings, [LocalExports(Path(export_root))])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(service.verifier.vkey, flush=True)
    try:
        serve_exports(service, _mqtt(port, ca, "platform", password, SERVICE_ID), stop)
    finally:
        service.close()
    return 0


def _dock_child(
    home: str, port: str, ca: str, password: str, platform_key: str, seconds: str, *rest: str
) -> int:
    from uploader.sender import Uploader  # noqa: PLC0415

    station = Station.open(Path(home))
    uploader = Uploader(
        station,
        UploadSettings(
            platform_keys=(NoteVerifier.parse(platform_key),), broker=protocol.BROKER_EMQX
        ),
        _mqtt(port, ca, STATION, password, f"evidock-{STATION}"),
    )
    return drain_and_report(uploader, station, seconds, rest)


def _subscriber_child(port: str, ca: str, password: str, total: str) -> int:
    return subscribe_until(port, ca, password, total, f"{BASE_TOPIC}/#")


def _publisher_child(port: str, ca: str, password: str, source: str) -> int:
    return publish_file(port, ca, password, source, BASE_TOPIC, SEGMENT)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    children: dict[str, Callable[..., int]] = {
        "receipts": _receipts_child,
        "dock": _dock_child,
        "subscriber": _subscriber_child,
        "publisher": _publisher_child,
    }
    sys.exit(children[mode](*args))
