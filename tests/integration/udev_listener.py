"""A process under a UdevTestbed: reports what drivers.udev sees, as JSON lines on stdout.

Run by the venv's Python with ``UdevTestbed.env()`` (LD_PRELOAD of umockdev;
no gi needed). Prints, in order:

    {"kind": "existing", "devices": [DEVICE, ...]}     existing_block_devices()
    {"kind": "ready"}                                  UdevWatcher started
    {"kind": "event", "action": ..., "device": DEVICE, "matches": bool}
    {"kind": "attached", "sys_path": ..., "identity": {...}, "recordings": [[hex relpath, size], ...],
     "mount_options": [...]}                           with --mount-root, per matching "add"
    {"kind": "error", "sys_path": ..., "error": "..."}
    {"kind": "stopped", "seconds": S}                  after "stop" (or end of input) on stdin

DEVICE = {"sys_path", "devnode", "subsystem", "properties": {...}, "attributes": {...}}.
With ``--mount-root DIR`` each matching "add" is attached through
UsbStorageDriver (really mounted), listed and detached, in the watcher's thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyudev

from drivers._mount import mount_entry
from drivers.base import DeviceInfo, Recording
from drivers.udev import UdevWatcher, existing_block_devices
from drivers.usb_storage import MatchRule, UsbStorageDriver
from hashing.errors import DeviceError

_out = threading.Lock()


def emit(**fields: Any) -> None:
    with _out:
        sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
        sys.stdout.flush()


def as_json(info: DeviceInfo) -> dict[str, Any]:
    return {
        "sys_path": info.sys_path,
        "devnode": info.devnode,
        "subsystem": info.subsystem,
        "properties": dict(info.properties),
        "attributes": dict(info.attributes),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mount-root", type=Path)
    parser.add_argument("--verbose", action="store_true", help="log to stderr")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(relativeCreated)6d %(name)s %(message)s")
    driver = UsbStorageDriver([MatchRule(layout="DCIM")], args.mount_root or Path("/nonexistent"))

    def on_event(action: str, info: DeviceInfo) -> None:
        matches = driver.matches(info)
        emit(kind="event", action=action, device=as_json(info), matches=matches)
        if action != "add" or not matches or args.mount_root is None:
            return
        try:
            with driver.attach(info) as root:
                entry = mount_entry(root)
                listed = [
                    [r.relpath.hex(), r.size]
                    for r in driver.recordings(root)
                    if isinstance(r, Recording)
                ]
                emit(
                    kind="attached",
                    sys_path=info.sys_path,
                    identity=dataclasses.asdict(driver.identify(info, root)),
                    recordings=listed,
                    mount_options=sorted(entry.mount_options) if entry else [],
                )
        except DeviceError as e:
            emit(kind="error", sys_path=info.sys_path, error=str(e))

    context = pyudev.Context()
    emit(kind="existing", devices=[as_json(i) for i in existing_block_devices(context)])
    watcher = UdevWatcher(on_event, context)
    watcher.start()
    emit(kind="ready")
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    started = time.monotonic()
    watcher.stop()
    emit(kind="stopped", seconds=time.monotonic() - started, running=watcher.running)
    return 0


if __name__ == "__main__":
    sys.exit(main())
