"""From the configuration file to running parts: drivers, watchers, policy, daemon.

The only place that knows both the config schema and the drivers' constructors
(drivers take plain values and never read the config themselves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from agent import uplink
from agent.config import Config, read_secret
from agent.daemon import Daemon, EventSink, IdentitySource, Preparer, Watcher, WatcherFactory
from agent.offload import OffloadPolicy
from drivers.base import Driver
from hashing.errors import ConfigError
from hashing.station import Station

log = logging.getLogger(__name__)


def offload_policy(cfg: Config) -> OffloadPolicy:
    o = cfg.values["offload"]
    try:
        return OffloadPolicy(
            wipe=o["wipe"],
            gap_minutes=o["gap_minutes"],
            shift_break_hours=o["shift_break_hours"],
            clock_tolerance_s=o["clock_tolerance_s"],
            free_margin_bytes=o["free_margin_mb"] << 20,
            utc_offset_minutes=o["utc_offset_minutes"],
        )
    except Exception as e:
        raise ConfigError(f"{cfg.source}: [offload] {e}") from e


@dataclass
class Parts:
    drivers: list[Driver] = field(default_factory=list)
    watchers: list[WatcherFactory] = field(default_factory=list)
    preparers: list[Preparer] = field(default_factory=list)
    identities: list[IdentitySource] = field(default_factory=list)


def build_drivers(cfg: Config) -> tuple[list[Driver], list[WatcherFactory]]:
    parts = build_parts(cfg)
    return parts.drivers, parts.watchers


def build_parts(cfg: Config) -> Parts:
    """The drivers the config enables, the watchers that feed them events, and the
    GA/T 947.4 preparer with the identities it hands over to the USB driver."""
    parts = Parts()
    drivers, watchers = parts.drivers, parts.watchers
    folder_roots = [Path(p) for p in cfg.get("folder", "roots")]
    if folder_roots:
        from drivers.folder import FolderDriver, FolderWatcher  # noqa: PLC0415 - optional part

        drivers.append(FolderDriver(folder_roots))
        quiet = float(cfg.get("folder", "quiet_s"))

        def folder_watcher(sink: EventSink) -> Watcher:
            return FolderWatcher(folder_roots, sink, quiet_s=quiet)

        watchers.append(folder_watcher)
    if cfg.get("usb", "enabled"):
        from drivers.udev import UdevWatcher  # noqa: PLC0415 - needs libudev
        from drivers.usb_storage import MatchRule, UsbStorageDriver  # noqa: PLC0415

        rules = [MatchRule.from_mapping(r) for r in cfg.get("usb", "rules")]
        usb = UsbStorageDriver(rules, Path(cfg.get("usb", "mount_root")))
        drivers.append(usb)

        def udev_watcher(sink: EventSink) -> Watcher:
            return UdevWatcher(sink)

        watchers.append(udev_watcher)
        library = cfg.get("gat947", "library")
        if library:
            from drivers.gat947 import Gat947Driver  # noqa: PLC0415 - loads a vendor library

            secret_file = cfg.get("gat947", "password_file")
            password = (
                read_secret(Path(secret_file), "[gat947] password_file") if secret_file else None
            )
            gat = Gat947Driver(
                Path(library),
                password,
                usb_ids=cfg.get("gat947", "usb_ids"),
                usb_driver_factory=lambda: usb,
                setting_hint="[gat947] password_file in /etc/evidock/evidock.toml (a 0600 file holding the camera admin password)",
            )
            parts.preparers.append(gat)
            parts.identities.append(gat.cache)

            def sdk_watcher(sink: EventSink) -> Watcher:
                return UdevWatcher(sink, subsystem="usb")

            watchers.append(sdk_watcher)
    return parts


def build_daemon(station: Station, cfg: Config) -> Daemon:
    parts = build_parts(cfg)
    if not parts.drivers:
        raise ConfigError(
            f"{cfg.source or 'the default configuration'}: no recorder driver is enabled; "
            "enable [usb] or list [folder] roots"
        )
    uploader = uplink.build_uploader(station, cfg)
    daemon = Daemon(
        station,
        parts.drivers,
        offload_policy(cfg),
        parts.watchers,
        max_sessions=int(cfg.get("offload", "max_sessions")),
        checkpoint_interval_s=cfg.checkpoint_interval_s,
        preparers=parts.preparers,
        identities=parts.identities,
        uplink=uploader,
    )
    uploader.on_receipt = daemon.notify_receipt
    return daemon
