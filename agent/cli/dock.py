"""`evidock` commands of the dock: one offload session, the running agent's status,
and the agent itself."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from pathlib import Path

from agent import config
from agent.cli._common import Add, Subparsers, open_indexed_station, station_home
from agent.dock import uplink, wiring
from agent.dock.daemon import STATUS_FILE
from agent.offload.session import OffloadSession
from drivers.mounted import MountedDriver, mounted_device
from hashing._fsutil import pid_alive
from hashing.errors import InputError
from hashing.findings import EXIT_OK, EXIT_USAGE

log = logging.getLogger(__name__)


def cmd_offload(args: argparse.Namespace) -> int:
    station = open_indexed_station(args)
    cfg = config.load()
    mountpoint = Path(args.mountpoint)
    session = OffloadSession(
        station,
        MountedDriver(),
        mounted_device(mountpoint, args.device),
        wiring.offload_policy(cfg),
    )
    summary = session.run()
    status = summary.status
    result = {
        "state": status.state,
        "serial": status.serial,
        "officer": status.officer,
        "files": status.files_total,
        "new": len(summary.new),
        "skipped": summary.skipped,
        "refused": summary.refused,
        "failed": summary.failed,
        "bytes": status.bytes_total,
        "anomalies": status.anomalies,
        "errors": status.errors,
        "wiped": status.wiped,
        "safe_to_unplug": status.safe_to_unplug,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        print(
            f"{status.serial}: {status.state}; {status.files_total} files ({len(summary.new)} new, "
            f"{summary.skipped} already in the ledger, {summary.refused} refused, {summary.failed} failed), "
            f"{status.bytes_total} bytes, {len(status.anomalies)} anomalies"
        )
        for line in status.anomalies:
            print(f"  anomaly: {line}")
        for line in status.errors:
            print(f"  error: {line}")
        print(
            "safe to unplug (可以拔出)" if status.safe_to_unplug else "do not unplug yet (请勿拔出)"
        )
    return summary.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    home = station_home(args)
    path = home / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no status; is `evidock agent` running for {home}?") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable status: {e}") from e
    age = time.time() - float(status.get("updated", 0))
    alive = pid_alive(int(status.get("pid", 0))) and age < 30
    if args.json:
        print(json.dumps(status | {"running": alive}, ensure_ascii=False, indent=1))
        return EXIT_OK if alive else EXIT_USAGE
    print(
        f"station {status.get('station')}: agent {'running' if alive else 'NOT running'} (status {age:.0f} s old)"
    )
    for s in status.get("sessions", []):
        pct = 100 * s["bytes_done"] // s["bytes_total"] if s["bytes_total"] else 100
        unplug = "可以拔出 safe to unplug" if s["safe_to_unplug"] else "请勿拔出 do not unplug"
        print(
            f"  {s.get('serial') or s['slot']}  officer {s.get('officer') or 'unassigned'}  {s['state']}  "
            f"{s['files_done']}/{s['files_total']} files  {pct}%  {s['speed_bps'] >> 20} MiB/s  {unplug}"
        )
        for a in s.get("anomalies", []):
            print(f"      anomaly: {a}")
        for err in s.get("errors", []):
            print(f"      error: {err}")
    if not status.get("sessions"):
        print("  no recorder docked")
    upload = status.get("upload")
    if isinstance(upload, dict):
        print(uplink.describe_upload(upload))
    return EXIT_OK if alive else EXIT_USAGE


def cmd_agent(args: argparse.Namespace) -> int:
    station = open_indexed_station(args)
    cfg = config.load()
    daemon = wiring.build_daemon(station, cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kiosk = wiring.start_kiosk(station, cfg, daemon)  # before READY=1; None: no screen
    daemon.start()
    log.warning("evidock agent running for station %s in %s", station.station_id, station.home)
    try:
        daemon.serve(stop)
    finally:
        if kiosk is not None:
            kiosk.stop()
    return EXIT_OK


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    p = add("offload", cmd_offload, "run one offload session on a recorder that is already mounted")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--device", metavar="SERIAL", help="the recorder's serial (default: the folder name)"
    )
    p.add_argument("--json", action="store_true")

    p = add("status", cmd_status, "what the running agent is doing: each docked recorder")
    p.add_argument("--json", action="store_true")

    add("agent", cmd_agent, "run the dock daemon in the foreground (SIGTERM stops it cleanly)")
