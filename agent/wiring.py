"""From the configuration file to running parts: drivers, watchers, policy, daemon.

The only place that knows both the config schema and the drivers' constructors
(drivers take plain values and never read the config themselves).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.config import Config
from agent.daemon import Daemon, EventSink, Watcher, WatcherFactory
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


def build_drivers(cfg: Config) -> tuple[list[Driver], list[WatcherFactory]]:
    """The drivers the config enables, and the watchers that feed them events."""
    drivers: list[Driver] = []
    watchers: list[WatcherFactory] = []
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
        drivers.append(UsbStorageDriver(rules, Path(cfg.get("usb", "mount_root"))))

        def udev_watcher(sink: EventSink) -> Watcher:
            return UdevWatcher(sink)

        watchers.append(udev_watcher)
    return drivers, watchers


def build_daemon(station: Station, cfg: Config) -> Daemon:
    drivers, watchers = build_drivers(cfg)
    if not drivers:
        raise ConfigError(
            f"{cfg.source or 'the default configuration'}: no recorder driver is enabled; "
            "enable [usb] or list [folder] roots"
        )
    return Daemon(
        station,
        drivers,
        offload_policy(cfg),
        watchers,
        max_sessions=int(cfg.get("offload", "max_sessions")),
        checkpoint_interval_s=cfg.checkpoint_interval_s,
    )
