"""The dock's link to the platform, from the configuration file to commands.

Builds the uploader's and the receiver's settings from ``[mqtt]``, ``[upload]``
and ``[receiver]`` (config/evidock.toml documents each key), and holds the
commands that work on them: ``evidock upload status|retry|drain`` on a dock
and ``evidock receive`` on the platform. The uploader itself lives in
``uploader/`` and never reads the configuration file.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import Config, Problem, read_secret
from agent.dock.daemon import STATUS_FILE
from hashing._fsutil import pid_alive
from hashing.errors import ConfigError, EvidockError
from hashing.findings import EXIT_OK, EXIT_TRANSIENT
from hashing.note import NoteVerifier
from hashing.station import Station
from receiver.exports import ExportSource, LocalExports, S3Exports, S3Settings
from receiver.receipts import ExportSettings, ReceiptService, serve_exports
from receiver.service import Receiver, ReceiverSettings, serve
from uploader import protocol
from uploader.link import MqttSettings
from uploader.outbox import Outbox
from uploader.sender import Uploader, UploadSettings

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
PLATFORM_USER = "platform"
RECEIVER_CLIENT_ID = "evidock-receiver"


def _secret(path_text: str, what: str) -> str:
    return read_secret(Path(path_text), what) if path_text else ""


def mqtt_settings(cfg: Config, *, username: str, client_id: str) -> MqttSettings | None:
    """``[mqtt]`` as connection settings; None when no broker is configured.

    ``username`` and ``client_id`` are the defaults for a dock (its station id)
    or the receiver, used when the file leaves them empty."""
    m = cfg.values["mqtt"]
    if not m["host"]:
        return None
    if not 0 < m["port"] < 65536:
        raise ConfigError(f"{cfg.source}: [mqtt] port {m['port']} is not a TCP port")
    if bool(m["cert_file"]) != bool(m["key_file"]):
        raise ConfigError(f"{cfg.source}: [mqtt] cert_file and key_file go together")
    return MqttSettings(
        host=m["host"],
        port=m["port"],
        client_id=m["client_id"] or client_id,
        username=m["username"] or username,
        password=_secret(m["password_file"], "[mqtt] password_file"),
        tls=m["tls"],
        ca_file=m["ca_file"],
        cert_file=m["cert_file"],
        key_file=m["key_file"],
        keepalive_s=max(5, m["keepalive_s"]),
    )


def check(cfg: Config) -> Iterator[Problem]:
    """What the uploader and the receiver would refuse at start (config.Check)."""
    try:
        upload_settings(cfg)
    except ConfigError as e:
        yield cfg.problem_from("upload", e)
    try:
        if cfg.get("receiver", "source") == "emqx":
            export_settings(cfg)
            export_sources(cfg)
        else:
            receiver_settings(cfg)
    except ConfigError as e:
        yield cfg.problem_from("receiver", e, default_key="stations")


def upload_settings(cfg: Config) -> UploadSettings:
    return UploadSettings.from_config(
        cfg.values["upload"], cfg.get("offload", "utc_offset_minutes")
    )


def build_uploader(station: Station, cfg: Config) -> Uploader:
    """The dock's uploader; with no broker configured it only keeps the queue."""
    mqtt = mqtt_settings(
        cfg, username=station.station_id, client_id=f"evidock-{station.station_id}"
    )
    return Uploader(station, upload_settings(cfg), mqtt)


def _receiver_stations(cfg: Config) -> dict[str, tuple[NoteVerifier, ...]]:
    """``[receiver] stations``: station id -> its pinned checkpoint keys (both sources)."""
    r = cfg.values["receiver"]
    where = f"{cfg.source}: [receiver]"
    stations: dict[str, tuple[NoteVerifier, ...]] = {}
    for item in r["stations"]:
        sid, keys = item.get("id"), item.get("keys")
        if not isinstance(sid, str) or not sid:
            raise ConfigError(f"{where} stations: each needs an id")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"{where} station {sid}: keys must be a non-empty list of strings")
        if sid in stations:
            raise ConfigError(f"{where} station {sid} is listed twice")
        try:
            stations[sid] = tuple(NoteVerifier.parse(k) for k in keys)
        except EvidockError as e:
            raise ConfigError(f"{where} station {sid}: {e}", hint=e.hint) from e
    return stations


def receiver_settings(cfg: Config, home: Path | None = None) -> ReceiverSettings:
    r = cfg.values["receiver"]
    stations = _receiver_stations(cfg)
    try:
        # `evidock receive` serves the mosquitto kind only: its prefix, or when empty (or
        # the file configures a dock for EMQX, whose prefix is not the receiver's) the
        # mosquitto kind's own.
        upload = cfg.values["upload"]
        mine = upload["topic_prefix"] if upload["broker"] == protocol.BROKER_MOSQUITTO else ""
        prefix = protocol.check_prefix(mine or protocol.DEFAULT_PREFIX)
    except EvidockError as e:
        raise ConfigError(f"{cfg.source}: [upload] {e}", hint=e.hint) from e
    return ReceiverSettings(
        home=home or Path(r["home"]),
        stations=stations,
        prefix_template=prefix,
        max_transfers_per_station=r["max_transfers_per_station"],
        max_spool_bytes_per_station=r["max_spool_mb_per_station"] << 20,
    )


def export_settings(cfg: Config, home: Path | None = None) -> ExportSettings:
    """``[receiver]`` for the EMQX receipt service (``source = "emqx"``)."""
    r = cfg.values["receiver"]
    return ExportSettings(
        home=home or Path(r["home"]),
        stations=_receiver_stations(cfg),
        poll_s=float(r["poll_s"]),
        partition=r["partition"],
        partitions=r["partitions"],
    )


def export_sources(cfg: Config) -> list[ExportSource]:
    """Where EMQX exports: ``exports_dir`` (local exporter), ``s3_bucket`` (S3), or both."""
    r = cfg.values["receiver"]
    where = f"{cfg.source}: [receiver]"
    sources: list[ExportSource] = []
    if r["exports_dir"]:
        if not Path(r["exports_dir"]).is_absolute():
            raise ConfigError(f"{where} exports_dir: {r['exports_dir']}: give an absolute path")
        sources.append(LocalExports(Path(r["exports_dir"])))
    if r["s3_bucket"]:
        s3 = S3Settings(
            endpoint=r["s3_endpoint"],
            bucket=r["s3_bucket"],
            region=r["s3_region"],
            access_key=_secret(r["s3_access_key_file"], "[receiver] s3_access_key_file"),
            secret_key=_secret(r["s3_secret_key_file"], "[receiver] s3_secret_key_file"),
        )
        sources.append(S3Exports(s3))
    if not sources:
        raise ConfigError(
            f'{where} source = "emqx" reads EMQX\'s exports: set exports_dir or s3_bucket'
        )
    return sources


# -- commands -----------------------------------------------------------------


def _daemon_running(home: Path) -> bool:
    try:
        status = json.loads((home / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return pid_alive(int(status.get("pid", 0))) and time.time() - float(status["updated"]) < 30


def _daemon_link(home: Path) -> dict[str, Any] | None:
    try:
        status = json.loads((home / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    upload = status.get("upload")
    return upload.get("link") if isinstance(upload, dict) else None


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def describe_upload(upload: dict[str, Any]) -> str:
    """Two lines for `evidock status`: the broker link, then the queue."""
    link, queue = upload.get("link") or {}, upload.get("queue") or {}
    if not link.get("configured", True):
        line = "uplink: no broker configured; uploads stay queued"
    else:
        state = "connected" if link.get("connected") else "NOT connected"
        error = f" ({link['last_error']})" if link.get("last_error") else ""
        line = f"uplink: {link.get('broker')} {state} since {_when(link.get('since'))}{error}"
    counts = queue.get("counts", {})
    return (
        f"{line}\n  queue: {queue.get('unreceipted', 0)} awaiting upload or receipt "
        f"({queue.get('pending_bytes', 0) >> 20} MiB), {counts.get('receipted', 0)} receipted, "
        f"{counts.get('failed', 0)} failed; last receipt {_when(queue.get('last_receipt'))}"
    )


def cmd_upload_status(station: Station, cfg: Config, args: argparse.Namespace) -> int:
    outbox = Outbox(station.home / OUTBOX_FILE)
    try:
        outbox.sync(station.ledger)
        summary = outbox.summary()
        rows = outbox.list(limit=args.limit)
        failed = outbox.list(limit=args.limit, state="failed")
    finally:
        outbox.close()
    link = _daemon_link(station.home) if _daemon_running(station.home) else None
    if args.json:
        doc = {"queue": summary, "link": link, "transfers": rows, "failed": failed}
        print(json.dumps(doc, indent=1))
        return EXIT_OK
    broker = cfg.get("mqtt", "host")
    if not broker:
        print("uplink: no broker configured ([mqtt] host); uploads stay queued")
    elif link is None:
        print(f"uplink: {broker} (agent not running)")
    else:
        state = "connected" if link.get("connected") else "NOT connected"
        error = f" ({link['last_error']})" if link.get("last_error") else ""
        print(f"uplink: {link.get('broker')} {state} since {_when(link.get('since'))}{error}")
    counts = summary.get("counts", {})
    print(
        "queue: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in Outbox.STATES)
        + f"; {summary.get('pending_bytes', 0) >> 20} MiB not yet receipted"
    )
    print(f"oldest unsent: {summary.get('oldest_unsent') or 'none'}")
    print(f"last receipt: {_when(summary.get('last_receipt'))}")
    for row in rows:
        err = f"  {row['last_error']}" if row.get("last_error") else ""
        print(
            f"  {row['sha256']}  {row['state']:<11} {row['confirmed_bytes'] >> 20}/{row['size'] >> 20} MiB"
            f"  {row['name']}{err}"
        )
    if failed:
        # Refused for good (never retried alone): each with the platform's reason.
        print(f"failed ({counts.get('failed', 0)}); `evidock upload retry SHA256` once fixed:")
        for row in failed:
            print(f"  {row['sha256']}  {row['name']}: {row['last_error'] or 'no reason recorded'}")
    return EXIT_OK


def cmd_upload_retry(station: Station, cfg: Config, args: argparse.Namespace) -> int:
    outbox = Outbox(station.home / OUTBOX_FILE)
    try:
        outbox.sync(station.ledger)
        outbox.retry(args.sha256)
    finally:
        outbox.close()
    print(f"{args.sha256}: queued again; it is sent from the start at the next chance")
    return EXIT_OK


def cmd_upload_drain(station: Station, cfg: Config, args: argparse.Namespace) -> int:
    """Send everything queued and wait for the receipts (0 when all are receipted).

    If the agent is running it owns the station's MQTT client id, so this only
    waits for it; otherwise it runs the uploader itself until done."""
    deadline = time.monotonic() + args.timeout
    if _daemon_running(station.home):
        outbox = Outbox(station.home / OUTBOX_FILE)
        try:
            while True:
                outbox.sync(station.ledger)
                pending = outbox.summary().get("unreceipted", 0)
                if not pending or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
        finally:
            outbox.close()
        done = not pending
    else:
        uploader = build_uploader(station, cfg)
        if uploader.mqtt is None:
            raise ConfigError("no broker configured ([mqtt] host); nothing can be sent")
        uploader.start()
        try:
            done = uploader.drain(args.timeout)
        finally:
            uploader.stop()
    if done:
        print("all recordings receipted by the platform")
        return EXIT_OK
    # Transient: the broker or the platform is slow or gone; the outbox keeps all.
    print(f"not all recordings receipted within {args.timeout:.0f} s; see `evidock upload status`")
    return EXIT_TRANSIENT


def _lock(path: Path) -> int:
    """An exclusive lock held while the process lives; ConfigError if another has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"{path.parent}: another `evidock receive` is serving it") from None
    return fd


def cmd_receive(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.get("receiver", "source") == "emqx":
        return _receive_emqx(cfg, args)
    settings = receiver_settings(cfg, Path(args.receiver_home) if args.receiver_home else None)
    receiver = Receiver(settings)
    try:
        if args.show_key:
            print(receiver.verifier.vkey)
            return EXIT_OK

        def run(mqtt: MqttSettings, stop: threading.Event) -> None:
            log.warning(
                "evidock receive: %d station(s), receipts signed by %s",
                len(settings.stations),
                receiver.verifier.vkey,
            )
            serve(receiver, mqtt, stop)

        _serve_platform(cfg, settings.home, bool(settings.stations), RECEIVER_CLIENT_ID, run)
    finally:
        receiver.close()
    return EXIT_OK


def _receive_emqx(cfg: Config, args: argparse.Namespace) -> int:
    """`evidock receive` with ``source = "emqx"``: the receipt service (receiver.receipts)."""
    settings = export_settings(cfg, Path(args.receiver_home) if args.receiver_home else None)
    service = ReceiptService(settings, [] if args.show_key else export_sources(cfg))
    try:
        if args.show_key:
            print(service.verifier.vkey)
            return EXIT_OK
        client_id = RECEIVER_CLIENT_ID
        if settings.partitions > 1:  # each partition keeps its own persistent session
            client_id = f"{RECEIVER_CLIENT_ID}-{settings.partition}"

        def run(mqtt: MqttSettings, stop: threading.Event) -> None:
            log.warning(
                "evidock receive (emqx): %d station(s), partition %d of %d, receipts signed by %s",
                len(settings.mine),
                settings.partition,
                settings.partitions,
                service.verifier.vkey,
            )
            serve_exports(service, mqtt, stop)

        _serve_platform(cfg, settings.home, bool(settings.stations), client_id, run)
    finally:
        service.close()
    return EXIT_OK


def _serve_platform(
    cfg: Config,
    home: Path,
    has_stations: bool,
    client_id: str,
    run: Callable[[MqttSettings, threading.Event], None],
) -> None:
    """What both kinds of `evidock receive` do around their loop: one process per
    state folder (the lock), a station list and a broker to listen to, and
    SIGTERM/SIGINT to stop ``run(mqtt, stop)`` cleanly."""
    lock = _lock(home / "receive.lock")
    try:
        if not has_stations:
            raise ConfigError(f"{cfg.source}: [receiver] stations is empty; no upload is accepted")
        mqtt = mqtt_settings(cfg, username=PLATFORM_USER, client_id=client_id)
        if mqtt is None:
            raise ConfigError(f"{cfg.source}: [mqtt] host is empty; nothing to listen to")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        run(mqtt, stop)
    finally:
        os.close(lock)


StationHandler = Callable[[Station, Config, argparse.Namespace], int]


def check_sha256(text: str) -> str:
    """argparse type: a recording's digest as the ledger writes it."""
    if not protocol.SHA256_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SHA-256 digest (64 lowercase hex characters)"
        )
    return text
