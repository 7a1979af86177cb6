"""The README's demo: a dock, a simulated body-worn camera, and an auditor.

A station is created; a simulated camera (real MP4 clips, a deliberate hole in
its clip numbers and time) is docked into a watched folder, where the dock
daemon notices it, offloads it (one-pass copy + digests, re-read check, media
probe, ledger entries) and says when it is safe to unplug; its story is told
as anomalies; a supervisor tags the clips to a case; the clips are uploaded
through a local mosquitto (TLS, passwords, the shipped ACL) to the platform's
receiver, which answers with signed receipts; a demo supervisor (a kiosk
user whose generated password is written to a 0600 file beside the station)
exports the case for a stated purpose, and the export is
verified offline with only the station's public key and with coreutils, and a
one-byte edit in a copy of the export is caught.

The daemon is built as `evidock agent` builds it (agent.dock.wiring), from a
configuration file the demo writes beside its dock folder: the watched folder
instead of USB and no broker, so its uploader only keeps the queue (a normal
state the kiosk page shows). With ``--serve`` that dock and its kiosk page go on
running, and the demo says how to log in: as the supervisor, or as a demo
auditor (made then, its password in a 0600 file too) who also reads the access log.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent import config
from agent.config import Config
from agent.demo.localbroker import Broker, make_pki, mosquitto_missing
from agent.dock import wiring
from agent.dock.daemon import Daemon
from agent.records import index
from agent.records import registry as records
from agent.records.exports import export, export_lines
from agent.users.accounts import User, Users
from agent.users.console import console_actor
from drivers.demo import DemoCamera, Gap
from hashing.bundle import Selection
from hashing.errors import ConfigError, EvidockError
from hashing.findings import EXIT_OK
from hashing.station import Station
from hashing.verify import verify_bundle
from receiver.service import Receiver, ReceiverSettings, serve
from uploader.link import MqttSettings
from uploader.protocol import BROKER_MOSQUITTO
from uploader.sender import Uploader, UploadSettings

if TYPE_CHECKING:
    from agent.kiosk.server import KioskServer

CASE = "CASE-2026-0001"
SERIAL = "DEMO0001"
OFFICER = "100001"
SUPERVISOR = "demo-supervisor"
AUDITOR = "demo-auditor"  # with --serve: the access log on the kiosk page


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(home: Path, out: Path | None = None, *, serve: bool = False) -> int:
    """Run the demo; returns the process exit code. With ``serve`` the demo dock
    and its kiosk page keep running afterwards, until Ctrl-C."""
    if home.exists() and any(home.iterdir()):
        raise ConfigError(f"{home} is not empty; the demo wants a fresh station folder")
    work = Path(tempfile.mkdtemp(prefix="evidock-demo-"))
    out = out or home.parent / "demo-export"
    if out.exists():
        shutil.rmtree(out)
    try:
        code = _steps(home, out, work)
        if code == EXIT_OK and serve:
            _serve(home, work)
    except EvidockError as e:
        print(f"evidock demo: {e}", file=sys.stderr)
        code = 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return code


def _kiosk_port(address: str, port: int) -> int:
    """``port`` if nothing listens on it, else a free one: the demo's page must not
    fail because another kiosk (or another demo) already serves the default."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as KioskServer binds
        try:
            probe.bind((address, port))
        except OSError:
            pass
        else:
            return port
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _demo_config(dock: Path) -> Config:
    """The demo dock's configuration file, written once beside its dock folder and read
    as `evidock agent` reads /etc/evidock/evidock.toml: the watched folder instead of
    USB, no wipe, no free-space margin, no broker (uploads stay queued; step 5 sends
    them through its own local broker), the kiosk on its default address."""
    path = dock.parent / "evidock.toml"
    if not path.exists():
        k = config.load(Path(os.devnull)).values["kiosk"]
        port = _kiosk_port(k["address"], k["port"])
        if port != k["port"]:
            _say(f"   (port {k['port']} is taken: the demo's kiosk page uses port {port})")
        path.write_text(
            "# The demo dock (config/evidock.toml documents every key).\n"
            "[checkpoint]\ninterval_s = 60\n"
            '[offload]\nwipe = "never"\nfree_margin_mb = 0\n'
            "[usb]\nenabled = false\n"
            f"[folder]\nroots = [{json.dumps(str(dock))}]\nquiet_s = 1\n"
            f"[kiosk]\nport = {port}\n",
            encoding="utf-8",
        )
    return config.load(path)


def _kiosk(station: Station, cfg: Config, daemon: Daemon) -> KioskServer | None:
    """The kiosk page, started as the agent starts it ([kiosk] address and port)."""
    kiosk = wiring.start_kiosk(station, cfg, daemon)
    if kiosk is not None:
        _say(f"   kiosk page (可以拔出 shows on the tile): {kiosk.url}")
    return kiosk


def _demo_daemon(station: Station, cfg: Config) -> Daemon:
    """The daemon as `evidock agent` builds it: drivers, policy and uploader from ``cfg``."""
    return wiring.build_daemon(station, cfg)


def _close_uplink(daemon: Daemon) -> None:
    """The daemon stops its uploader; the uploader's outbox is closed here."""
    if isinstance(daemon.uplink, Uploader):
        daemon.uplink.close()


def _serve(home: Path, work: Path) -> None:
    """Keep the demo dock and its kiosk running: drop camera folders into the dock."""
    station = Station.open(home)
    dock = work / "dock"
    cfg = _demo_config(dock)
    auditor_file = home.parent / f"{AUDITOR}.password"
    _kiosk_user(station, AUDITOR, "auditor", auditor_file)
    daemon = _demo_daemon(station, cfg)
    kiosk = _kiosk(station, cfg, daemon)
    supervisor_file = home.parent / f"{SUPERVISOR}.password"
    _say(f"   log in (登录) as {SUPERVISOR}, password in {supervisor_file}: recordings")
    _say(f"   or as {AUDITOR}, password in {auditor_file}: recordings and the access log")
    _say(f"   dock folder (put a camera folder here): {dock}; Ctrl-C stops")
    _say(f"   add a user: evidock user add NAME --role ROLE --home {home}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    try:
        daemon.serve(stop)
    except KeyboardInterrupt:
        daemon.stop()
    finally:
        if kiosk is not None:
            kiosk.stop()
        _close_uplink(daemon)
        station.close()


def _dock(station: Station, camera: DemoCamera, dock: Path) -> None:
    """Run the daemon on a watched folder, plug the camera in, follow its tile."""
    cfg = _demo_config(dock)
    daemon = _demo_daemon(station, cfg)
    stop = threading.Event()
    server = threading.Thread(target=daemon.serve, args=(stop,), name="demo-daemon")
    kiosk = _kiosk(station, cfg, daemon)
    daemon.start()
    server.start()
    try:
        camera.plug_into(dock)
        shown = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sessions = daemon.snapshot()["sessions"]
            if sessions:
                s = sessions[0]
                line = (
                    f"   [{s['serial'] or '?'}] {s['state']:<10} {s['files_done']}/{s['files_total']} files, "
                    f"{s['bytes_done'] >> 10}/{s['bytes_total'] >> 10} KiB  "
                    + (
                        "可以拔出 safe to unplug"
                        if s["safe_to_unplug"]
                        else "请勿拔出 do not unplug"
                    )
                )
                if line != shown:
                    _say(line)
                    shown = line
                if s["finished"]:
                    for a in s["anomalies"]:
                        _say(f"   anomaly: {a}")
                    return
            time.sleep(0.2)
        raise EvidockError("the demo camera was not offloaded within two minutes")
    finally:
        stop.set()
        server.join(60)
        if kiosk is not None:
            kiosk.stop()
        _close_uplink(daemon)


def _upload(station: Station, work: Path) -> None:
    """Upload everything through a local broker to a receiver; show the receipts."""
    missing = mosquitto_missing()
    if missing is not None:
        uploader = Uploader(station, UploadSettings(broker=BROKER_MOSQUITTO), None)
        uploader.outbox.sync(station.ledger)
        queued = uploader.outbox.summary()["unreceipted"]
        uploader.close()
        _say(f"   no local broker ({missing}): {queued} recordings stay queued in the outbox")
        return
    sid = station.station_id
    passwords = {"platform": secrets.token_urlsafe(16), sid: secrets.token_urlsafe(16)}
    broker = Broker(make_pki(work / "pki"), users=passwords)
    broker.start()
    receiver = Receiver(ReceiverSettings(work / "platform", {sid: (station.keys.load().verifier,)}))
    stop = threading.Event()

    def settings(user: str, client_id: str) -> MqttSettings:
        return MqttSettings(
            host=broker.host,
            port=broker.tls_port,
            client_id=client_id,
            username=user,
            password=passwords[user],
            tls=True,
            ca_file=broker.ca_file,
        )

    server = threading.Thread(
        target=serve,
        args=(receiver, settings("platform", "evidock-receiver"), stop),
        name="demo-receiver",
    )
    server.start()
    uploader = Uploader(
        station,
        # The demo's platform is a local mosquitto and `evidock receive`.
        UploadSettings(platform_keys=(receiver.verifier,), broker=BROKER_MOSQUITTO),
        settings(sid, f"evidock-{sid}"),
    )
    try:
        _say(f"   broker mqtts://{broker.host}:{broker.tls_port} (TLS, passwords, ACL)")
        _say(f"   platform receipt key: {receiver.verifier.vkey}")
        uploader.start()
        if not uploader.drain(120):
            raise EvidockError("the uploads were not receipted within two minutes")
    finally:
        uploader.close()
        stop.set()
        server.join(30)
        receiver.close()
        broker.stop()
        broker.close()
    receipts = list(station.ledger.entries_of_type("upload_receipt"))
    for entry in receipts:
        _say(
            f"   receipt for {entry.body['sha256'][:16]}… ({entry.body['size']} bytes), "
            f"stored by the platform at {entry.body['stored_at']}: entry {entry.seq}"
        )
    if receipts:
        _say("   the last receipt, a signed note by the platform key:")
        for line in str(receipts[-1].body["receipt"]).splitlines():
            _say(f"   | {line}")


def _supervisor(station: Station, secret_file: Path) -> User:
    """The demo's supervisor, who tags and exports (step 6)."""
    return _kiosk_user(station, SUPERVISOR, "supervisor", secret_file)


def _kiosk_user(station: Station, name: str, role: str, secret_file: Path) -> User:
    """A kiosk user with a generated password, kept in a 0600 file (as
    `evidock user add --password-file` reads one), logged in as the CLI would."""
    secret = secrets.token_urlsafe(18)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.encode() + b"\n")
    finally:
        os.close(fd)
    users = Users(station)
    try:
        users.add(name, role, secret, officer=None, by=console_actor())
        users.logout(users.login(name, secret, source=console_actor()).token)
        user = users.get(name)
    finally:
        users.close()
    if user is None:
        raise EvidockError(f"the demo user {name} could not be created")
    return user


def _steps(home: Path, out: Path, work: Path) -> int:
    _say(f"1. Creating station DOCK-DEMO in {home}")
    station = Station.init(home, "DOCK-DEMO")
    key = station.keys.load().verifier.vkey
    _say(f"   verifier key: {key}")
    records.assign_device(station, SERIAL, OFFICER, model="demo camera")
    _say(f"   camera {SERIAL} registered to officer {OFFICER}")

    _say(
        f"2. Camera {SERIAL} records a shift: 5 clips, with clip 0004 missing and 20 minutes unrecorded"
    )
    camera = DemoCamera(work / "camera", SERIAL, OFFICER)
    camera.record(5, 3, gap=Gap(after=3, missing=1, seconds=1200))

    dock = work / "dock"
    dock.mkdir()
    _say("3. Docking it: the daemon copies, digests, re-reads, probes and commits each clip")
    _dock(station, camera, dock)

    shas = index.device_digests(station.ledger, SERIAL)
    entry = records.tag(
        station,
        shas,
        case=CASE,
        kind="inspection",
        retention="evidence",
        reason="on-site inspection, case opened",
    )
    _say(
        f"4. A supervisor tags the {len(shas)} clips to case {CASE} as evidence (entry {entry.seq})"
    )
    _say("5. Uploading to the platform: EMQX file transfer over MQTT, resumable, receipted")
    _upload(station, work)
    signed = station.checkpoint()
    _say(f"   signed checkpoint (C2SP signed note), tree size {signed.checkpoint.size}:")
    for line in signed.note.splitlines():
        _say(f"   | {line}")

    secret_file = home.parent / f"{SUPERVISOR}.password"
    supervisor = _supervisor(station, secret_file)
    _say(
        f"6. Supervisor {SUPERVISOR} (password in {secret_file}, mode 0600) exports case "
        f"{CASE} to {out}, purpose 'demo'"
    )
    result = export(station, supervisor, Selection(case=CASE), out, "demo")
    for line in export_lines(result):
        _say(f"   {line}")

    _say("7. Verifying the export offline with only the public key:")
    report = verify_bundle(out, [station.keys.load().verifier])
    for line in report.render().splitlines():
        _say(f"   {line}")
    if report.exit_code != EXIT_OK:
        return report.exit_code

    if shutil.which("sha256sum"):
        _say("8. Checking file digests with coreutils alone (sha256sum -c SHA256SUMS):")
        done = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"],
            cwd=out,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in done.stdout.splitlines():
            _say(f"   {line}")
        if done.returncode != 0:
            return 1

    _say("9. Tampering with a copy of the export (one byte of one clip) and verifying again:")
    tampered = work / "tampered"
    shutil.copytree(out, tampered)
    victim = sorted((tampered / "files").iterdir())[0]
    victim.chmod(0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    caught = verify_bundle(tampered, [station.keys.load().verifier])
    for f in caught.findings:
        _say(f"   caught: {f.kind} {f.place}: {f.detail}")
    if caught.exit_code == EXIT_OK:
        _say("   the tampering was NOT detected")
        return 1
    _say("")
    _say("Demo complete. Try it yourself:")
    _say(f"   evidock verify {out} --key '{key}'")
    _say(f"   python3 {out}/verifier/verify.py {out} --key '{key}'   (no evidock needed)")
    _say(f"   EVIDOCK_HOME={home} evidock ledger verify")
    station.close()
    return EXIT_OK
