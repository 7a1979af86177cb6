"""From the configuration file to running parts: drivers, watchers, policy, daemon.

The only place that knows both the config schema and the drivers' constructors
(drivers take plain values and never read the config themselves).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent import config
from agent.config import Config, Problem, read_secret
from agent.dock import uplink
from agent.dock.daemon import Daemon, EventSink, IdentitySource, Preparer, Watcher, WatcherFactory
from agent.offload.session import OffloadPolicy
from agent.records import retention
from drivers.base import Driver
from hashing.errors import ConfigError, explain
from hashing.station import Station

if TYPE_CHECKING:
    from agent.kiosk.server import KioskServer

log = logging.getLogger(__name__)


def check_file(path: Path) -> list[Problem]:
    """Every problem of the configuration file at ``path``: what config.check finds,
    then what each part that owns settings refuses (the drivers, the uploader and
    the receiver, the retention rule). For `evidock config check`."""
    return config.check(path, (check, uplink.check, retention.check))


def check(cfg: Config) -> Iterator[Problem]:
    """What building the drivers would refuse: each [usb] rule (config.Check)."""
    from drivers.usb_storage import MatchRule  # noqa: PLC0415 - as in build_parts

    for i, rule in enumerate(cfg.get("usb", "rules")):
        try:
            MatchRule.from_mapping(rule, where=f"rule {i + 1}")
        except ConfigError as e:
            yield cfg.problem("usb", "rules", explain(e))


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


def start_kiosk(station: Station, cfg: Config, daemon: Daemon) -> KioskServer | None:
    """Serve the kiosk ([kiosk] address and port) showing ``daemon``'s snapshot; None
    if it cannot start: the dock goes on offloading without its screen (logged)."""
    from agent.kiosk.app import KioskSettings, create_app  # noqa: PLC0415 - the web stack
    from agent.kiosk.server import KioskServer  # noqa: PLC0415
    from agent.users.accounts import UserPolicy, Users  # noqa: PLC0415

    k = cfg.values["kiosk"]
    try:
        users = Users(station, UserPolicy.from_config(k))
    except Exception:  # error boundary: no screen is better than no dock
        log.exception("kiosk not started: the user store cannot be opened")
        return None
    settings = KioskSettings(
        language=k["language"],
        utc_offset_minutes=int(cfg.get("offload", "utc_offset_minutes")),
        hosts=("127.0.0.1", "localhost", "::1", k["address"]),
        retention=retention.policy_from_config(cfg),
    )
    try:
        app = create_app(station, daemon.snapshot, users, settings)
        server = KioskServer(app, k["address"], k["port"], closers=[users.close])
        server.start()
    except ConfigError as e:  # the port is taken, the address is not this machine's
        log.error("%s; the dock runs without its screen", e)
        users.close()
        return None
    except Exception:
        log.exception("kiosk not started")
        users.close()
        return None
    return server
