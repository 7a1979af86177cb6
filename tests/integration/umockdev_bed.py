"""A umockdev test bed driven over stdin; run by Debian's /usr/bin/python3 under umockdev-wrapper.

Not imported by pytest (the venv has no gi): tests/integration/hardware.py
starts it as ``umockdev-wrapper /usr/bin/python3 umockdev_bed.py`` and talks
to it line by line. It prints the test bed's root folder first (the
``UMOCKDEV_DIR`` for processes under test), then one reply per command:
``ok ...`` or ``error MESSAGE``. Commands (words split as by a POSIX shell,
so values may be quoted):

    add NAME SERIAL DEVNODE FSTYPE VENDOR_ID MODEL_ID [KEY=VALUE ...]
        a USB device ``usb-NAME`` (sysfs idVendor, idProduct, serial,
        manufacturer, product) with a block partition NAME below it carrying
        DEVTYPE=partition, ID_BUS=usb, ID_SERIAL_SHORT, ID_VENDOR_ID,
        ID_MODEL_ID, ID_FS_TYPE, ID_FS_USAGE=filesystem, DEVNAME=DEVNODE, plus
        the extra KEY=VALUE properties (manufacturer/product come from
        ID_VENDOR / ID_MODEL when given). add_device emits the "add" uevent
        itself. Reply: ``ok SYSPATH``.
    uevent NAME ACTION     e.g. "change"
    remove NAME            "remove" uevents (partition, then USB device), then
                           removal from sysfs (remove_device emits nothing).
    quit                   (or end of input) ends the process and the bed.
"""

from __future__ import annotations

import shlex
import sys

import gi  # type: ignore[import-not-found, unused-ignore]

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # type: ignore[import-not-found, unused-ignore]  # noqa: E402


def _flat(pairs: dict[str, str]) -> list[str]:
    return [x for kv in pairs.items() for x in kv]


def main() -> int:
    bed = UMockdev.Testbed.new()
    print(bed.get_root_dir(), flush=True)
    devices: dict[str, tuple[str, str]] = {}  # NAME -> (usb syspath, partition syspath)
    for line in sys.stdin:
        words = shlex.split(line)
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            if cmd == "quit":
                break
            if cmd == "add" and len(args) >= 6:
                name, serial, devnode, fs_type, vid, pid = args[:6]
                extra = dict(a.split("=", 1) for a in args[6:])
                if name in devices:
                    raise ValueError(f"{name} exists")
                usb = bed.add_device(
                    "usb",
                    f"usb-{name}",
                    None,
                    _flat(
                        {
                            "idVendor": vid,
                            "idProduct": pid,
                            "serial": serial,
                            "manufacturer": extra.get("ID_VENDOR", "Evidock"),
                            "product": extra.get("ID_MODEL", "Test camera"),
                        }
                    ),
                    ["DEVTYPE", "usb_device", "PRODUCT", f"{vid}/{pid}/100"],
                )
                props = {
                    "DEVTYPE": "partition",
                    "DEVNAME": devnode,
                    "ID_BUS": "usb",
                    "ID_SERIAL_SHORT": serial,
                    "ID_VENDOR_ID": vid,
                    "ID_MODEL_ID": pid,
                    "ID_FS_TYPE": fs_type,
                    "ID_FS_USAGE": "filesystem",
                    **extra,
                }
                part = bed.add_device(
                    "block",
                    name,
                    usb,
                    ["size", "131072", "partition", "1", "ro", "0"],
                    _flat(props),
                )
                if usb is None or part is None:
                    raise RuntimeError("add_device returned None: not under umockdev-wrapper?")
                devices[name] = (usb, part)
                print(f"ok {part}", flush=True)
            elif cmd == "uevent" and len(args) == 2:
                bed.uevent(devices[args[0]][1], args[1])
                print("ok", flush=True)
            elif cmd == "remove" and len(args) == 1:
                usb, part = devices.pop(args[0])
                bed.uevent(part, "remove")
                bed.remove_device(part)
                bed.uevent(usb, "remove")
                bed.remove_device(usb)
                print("ok", flush=True)
            else:
                print(f"error bad command: {line.strip()}", flush=True)
        except (KeyError, ValueError, RuntimeError) as e:
            print(f"error {type(e).__name__}: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
