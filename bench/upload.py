"""Upload throughput and the dock's memory with a large queue (issue 4 §5).

Throughput: one recording goes from a station through a local mosquitto (TLS,
passwords, the shipped ACL) to `evidock receive`, timed from the uploader's
start until its signed receipt is in the ledger (so it includes the init, every
segment, the receiver's fsyncs, assembly, re-hash and the receipt). Baseline,
same run, same broker and TLS listener: a bare paho client publishes the same
bytes in 1 MiB QoS 1 messages to a bare subscriber in another process, timed
from the first publish until the subscriber has the last byte.

Memory: the dock's uploader runs in a child process of its own for a fixed
time, once with 1 GiB queued and once with 20 GiB queued (sparse files in the
store, each distinct), and reports the kernel's high-water mark of its
resident set. The outbox is SQL, segments are read into one buffer: the peak
must not grow with the queue.

Children: ``python -m bench.upload receiver|dock|subscriber|publisher ARGS``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.demo.localbroker import Broker, make_pki
from agent.offload.copier import CopyResult
from agent.offload.ingest import Binding, Source, commit
from bench._report import GIB, MIB, Row, Section, size_text
from bench._system import child_peak_mb, random_file
from hashing.digest import digest_file
from hashing.note import NoteVerifier
from hashing.station import Station
from receiver.service import CHECKPOINT_FILTER, Receiver, ReceiverSettings, serve
from uploader import link, protocol
from uploader.link import MqttSettings
from uploader.sender import Uploader, UploadSettings

STATION = "bench-up"
TARGET_RATIO = 0.5  # issue 4 §5: at least half the bare paho publish
FLAT_MB = 8.0  # 20x the queue may cost at most this much more peak RSS
MESSAGE = MIB
RECEIVER_ID = "evidock-receiver"
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.upload", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )


def _mqtt(broker: Broker, user: str, password: str, client_id: str) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.tls_port,
        client_id=client_id,
        username=user,
        password=password,
        tls=True,
        ca_file=broker.ca_file,
    )


def _station(home: Path, files: list[Path], *, adopt: bool) -> Station:
    """A station holding ``files``: copied in through the normal ingest, or (``adopt``,
    for the sparse memory test) renamed into the store with their digests."""
    station = Station.init(home, STATION)
    for path in files:
        if adopt:
            st = path.stat()
            digest = digest_file(path)
            copy = CopyResult(digest, st.st_size, st.st_mtime_ns)
            source = Source(None, str(path).encode(), st.st_size, st.st_mtime_ns)
            commit(station, path, copy, source, Binding(device="BENCH0001"))
        else:
            from agent.offload.ingest import ingest_paths  # noqa: PLC0415

            list(ingest_paths(station, [path], Binding(device="BENCH0001")))
    station.checkpoint()
    return station


class _Rig:
    """A broker and a receiver process for one measurement."""

    def __init__(self, scratch: Path) -> None:
        self.passwords = {u: secrets.token_urlsafe(12) for u in ("platform", STATION)}
        self.broker = Broker(make_pki(scratch / "pki"), users=self.passwords, debug_log=False)
        self.broker.start()
        self.scratch = scratch
        self.receiver: subprocess.Popen[str] | None = None
        self.platform_key = ""

    def start_receiver(self, station_key: str) -> None:
        """A fresh platform for a fresh station: first clear the retained checkpoint
        the previous station (another key, same id) left at the broker."""
        import paho.mqtt.client as mqtt  # noqa: PLC0415

        client = _paho(
            STATION, self.passwords[STATION], self.broker.ca_file, str(self.broker.tls_port)
        )
        assert isinstance(client, mqtt.Client)
        client.loop_start()
        client.publish(
            f"evidock/v1/docks/{STATION}/checkpoint", b"", qos=1, retain=True
        ).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        home = self.scratch / "platform"
        shutil.rmtree(home, ignore_errors=True)
        self._reset_receiver_session(subscribed=True)
        self.receiver = _child(
            "receiver",
            str(home),
            str(self.broker.tls_port),
            self.broker.ca_file,
            self.passwords["platform"],
            station_key,
        )
        assert self.receiver.stdout is not None
        self.platform_key = self.receiver.stdout.readline().strip()  # printed once subscribed

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.send_signal(signal.SIGTERM)
            self.receiver.wait(30)
            self.receiver = None
            self._reset_receiver_session(subscribed=False)

    def _reset_receiver_session(self, *, subscribed: bool) -> None:
        """Replace the receiver's broker session by an empty one, or by none.

        The receiver's session is persistent and subscribed to ``$file-async/+/#``,
        the very filter the bare baseline publishes on (the ACL confines the
        station to it), so while a receiver was stopped the broker queued the
        baseline's whole file for it, and the next receiver had to take that
        gigabyte alongside the upload it was being timed on. So the session goes
        when a receiver stops, and a fresh receiver home starts with a fresh
        session that already holds its subscriptions (as one that has run before
        does, so the dock's first command never finds nobody subscribed).
        """
        import paho.mqtt.client as mqtt  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415
        from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
        from paho.mqtt.properties import Properties  # noqa: PLC0415

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=RECEIVER_ID,
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set("platform", self.passwords["platform"])
        client.tls_set(ca_certs=self.broker.ca_file)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = link.SESSION_EXPIRY_S if subscribed else 0
        subscribed_now = threading.Event()
        client.on_subscribe = lambda *_: subscribed_now.set()
        client.connect(self.broker.host, self.broker.tls_port, clean_start=True, properties=props)
        client.loop_start()
        try:
            if subscribed:
                filters = [protocol.command_filter(protocol.DEFAULT_PREFIX), CHECKPOINT_FILTER]
                client.subscribe([(f, 1) for f in filters])
                if not subscribed_now.wait(10):
                    raise RuntimeError("the broker did not take the receiver's subscriptions")
        finally:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self.stop_receiver()
        self.broker.stop()
        self.broker.close()


def _time_evidock(rig: _Rig, source: Path, scratch: Path) -> float:
    home = scratch / "dock"
    shutil.rmtree(home, ignore_errors=True)
    station = _station(home, [source], adopt=False)
    key = station.keys.load().verifier.vkey
    station.close()
    rig.start_receiver(key)
    try:
        done = _child(
            "dock",
            str(home),
            str(rig.broker.tls_port),
            rig.broker.ca_file,
            rig.passwords[STATION],
            rig.platform_key,
            "600",
        )
        out, _ = done.communicate()
        if done.returncode != 0:
            raise RuntimeError(f"bench.upload dock failed: {out}")
        return float(out.split()[out.split().index("seconds") + 1])
    finally:
        rig.stop_receiver()
        shutil.rmtree(home, ignore_errors=True)


def _time_paho(rig: _Rig, source: Path) -> float:
    size = source.stat().st_size
    sub = _child(
        "subscriber",
        str(rig.broker.tls_port),
        rig.broker.ca_file,
        rig.passwords["platform"],
        str(size),
    )
    assert sub.stdout is not None
    sub.stdout.readline()  # "ready"
    pub = _child(
        "publisher",
        str(rig.broker.tls_port),
        rig.broker.ca_file,
        rig.passwords[STATION],
        str(source),
    )
    pub_out, _ = pub.communicate()
    sub_out, _ = sub.communicate(timeout=600)
    if pub.returncode or sub.returncode:
        raise RuntimeError(f"bare paho baseline failed: {pub_out!r} {sub_out!r}")
    return float(sub_out.split()[-1]) - float(pub_out.split()[-1])


def _sparse_queue(folder: Path, total: int) -> list[Path]:
    """``total`` bytes of distinct 1 GiB sparse files (zeros, a unique tail)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(max(1, total // GIB)):
        path = folder / f"q{i:03d}.bin"
        with path.open("wb") as f:
            f.truncate(GIB - 8)
            f.seek(GIB - 8)
            f.write(i.to_bytes(8, "big"))
        files.append(path)
    return files


def _rss(rig: _Rig, scratch: Path, queued: int, seconds: int) -> float:
    home = scratch / f"dock-rss-{queued}"
    shutil.rmtree(home, ignore_errors=True)
    files = _sparse_queue(scratch / f"sparse-{queued}", queued)
    station = _station(home, files, adopt=True)
    key = station.keys.load().verifier.vkey
    station.close()
    rig.start_receiver(key)
    try:
        return child_peak_mb(
            "bench.upload",
            "dock",
            str(home),
            str(rig.broker.tls_port),
            rig.broker.ca_file,
            rig.passwords[STATION],
            rig.platform_key,
            str(seconds),
            "--partial",
        )
    finally:
        rig.stop_receiver()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(scratch / f"sparse-{queued}", ignore_errors=True)


def run(out: Path, *, total: int, rounds: int, rss_queued: int, rss_seconds: int) -> Section:
    source = random_file(out / "data" / f"upload-{size_text(total).replace(' ', '')}.bin", total)
    scratch = out / "run" / "upload"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rig = _Rig(scratch)
    try:
        ours, bare = [], []
        for _ in range(rounds):
            bare.append(_time_paho(rig, source))
            ours.append(_time_evidock(rig, source, scratch))
        small = _rss(rig, scratch, GIB, rss_seconds)
        large = _rss(rig, scratch, rss_queued, rss_seconds)
        rig.close()
        # The EMQX path (issue 12) on its own beds, once mosquitto + `evidock receive`
        # are gone. Imported here: bench.upload_emqx imports this module's helpers.
        from bench import upload_emqx  # noqa: PLC0415

        emqx_rows, emqx_notes = upload_emqx.rows(
            source, scratch, rounds=rounds, rss_queued=rss_queued, rss_seconds=rss_seconds
        )
    finally:
        rig.close()
        shutil.rmtree(scratch, ignore_errors=True)
    t_ours, t_bare = statistics.median(ours), statistics.median(bare)
    ratio = t_bare / t_ours
    rows = [
        Row(
            f"upload {size_text(total)} to `evidock receive` (TLS)",
            f"{total / t_ours / MIB:.0f} MiB/s",
            f"bare paho 1 MiB QoS 1 {total / t_bare / MIB:.0f} MiB/s",
            ratio,
            f">= {TARGET_RATIO}x",
            ratio >= TARGET_RATIO,
        ),
        Row(
            f"dock peak RSS, {size_text(rss_queued)} queued",
            f"{large:.1f} MB",
            f"{size_text(GIB)} queued {small:.1f} MB",
            large / small,
            "flat",
            large - small <= FLAT_MB,
        ),
    ]
    notes = [
        f"upload: median of {rounds}; evidock is timed to the signed receipt in the ledger, "
        "the baseline to the subscriber's last byte",
        f"upload RSS: the uploader runs {rss_seconds} s in a child process; flat means <= {FLAT_MB:.0f} MB growth",
    ]
    return Section(rows + emqx_rows, notes + emqx_notes)


# -- children -------------------------------------------------------------------


def _peak_kib() -> int:
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _receiver_child(home: str, port: str, ca: str, password: str, station_key: str) -> int:
    receiver = Receiver(ReceiverSettings(Path(home), {STATION: (NoteVerifier.parse(station_key),)}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(receiver.verifier.vkey, flush=True)
    settings = MqttSettings(
        host="127.0.0.1",
        port=int(port),
        client_id=RECEIVER_ID,
        username="platform",
        password=password,
        tls=True,
        ca_file=ca,
    )
    try:
        serve(receiver, settings, stop)
    finally:
        receiver.close()
    return 0


def _dock_child(
    home: str, port: str, ca: str, password: str, platform_key: str, seconds: str, *rest: str
) -> int:
    station = Station.open(Path(home))
    settings = MqttSettings(
        host="127.0.0.1",
        port=int(port),
        client_id=f"evidock-{STATION}",
        username=STATION,
        password=password,
        tls=True,
        ca_file=ca,
    )
    uploader = Uploader(
        station,
        # The benchmark's platform is mosquitto + `evidock receive`.
        UploadSettings(
            platform_keys=(NoteVerifier.parse(platform_key),), broker=protocol.BROKER_MOSQUITTO
        ),
        settings,
    )
    return drain_and_report(uploader, station, seconds, rest)


def drain_and_report(
    uploader: Uploader, station: Station, seconds: str, rest: tuple[str, ...]
) -> int:
    """The dock child's measurement: run ``uploader`` until everything is receipted
    (or ``seconds`` pass), then print the time it took and the peak RSS."""
    started = time.perf_counter()
    uploader.start()
    try:
        done = uploader.drain(float(seconds))
    finally:
        uploader.close()
        station.close()
    elapsed = time.perf_counter() - started
    if not done and "--partial" not in rest:
        print(f"not drained within {seconds} s")
        return 1
    print(f"seconds {elapsed:.3f}")
    print(f"VmHWM-KiB {_peak_kib()}")
    return 0


def _paho(user: str, password: str, ca: str, port: str) -> object:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-{user}-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=ca)
    client.max_inflight_messages_set(20)
    client.connect("127.0.0.1", int(port))
    return client


def subscribe_until(port: str, ca: str, password: str, total: str, topic_filter: str) -> int:
    """The bare baseline's subscriber: prints ``ready``, then the time the last of
    ``total`` bytes arrived on ``topic_filter``."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415

    client = _paho("platform", password, ca, port)
    assert isinstance(client, mqtt.Client)
    want, got = int(total), [0]
    done, ready = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got[0] += len(msg.payload)
        if got[0] >= want:
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_: ready.set()
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    done.wait(600)
    end = time.time()
    client.loop_stop()
    print(f"{end:.6f}")
    return 0 if done.is_set() else 1


def publish_file(port: str, ca: str, password: str, source: str, topic: str, message: int) -> int:
    """The bare baseline's publisher: ``source`` in ``message``-byte QoS 1 messages on
    ``topic/<offset>``, 20 in flight; prints the time of the first publish."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415

    client = _paho(STATION, password, ca, port)
    assert isinstance(client, mqtt.Client)
    client.loop_start()
    start = time.time()
    infos = []
    with Path(source).open("rb") as f:
        offset = 0
        while chunk := f.read(message):
            infos.append(client.publish(f"{topic}/{offset}", chunk, qos=1))
            offset += len(chunk)
            if len(infos) >= 20:
                infos.pop(0).wait_for_publish(60)
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    print(f"{start:.6f}")
    return 0


def _subscriber_child(port: str, ca: str, password: str, total: str) -> int:
    return subscribe_until(port, ca, password, total, "$file-async/+/#")


def _publisher_child(port: str, ca: str, password: str, source: str) -> int:
    return publish_file(port, ca, password, source, f"$file-async/{STATION}/{'0' * 64}", MESSAGE)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    children: dict[str, Callable[..., int]] = {
        "receiver": _receiver_child,
        "dock": _dock_child,
        "subscriber": _subscriber_child,
        "publisher": _publisher_child,
    }
    sys.exit(children[mode](*args))
