"""Reading the station's configuration file (TOML; ``config/evidock.toml`` documents it).

Unknown sections and keys are errors, not silently ignored: a misspelt
setting in an evidence system must not quietly fall back to a default.
Values are checked here, at the edge (style.md 6); the rest of the code gets
typed values.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashing.errors import ConfigError
from hashing.station import DEFAULT_HOME

SYSTEM_CONFIG = Path("/etc/evidock/evidock.toml")

# section -> key -> (kind, default); kinds: str, int, bool, "list[str]", "list[table]"
SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "station": {"home": (str, str(DEFAULT_HOME))},
    "checkpoint": {"interval_s": (int, 300)},
    "offload": {
        "wipe": (str, "after_receipt"),
        "gap_minutes": (int, 10),
        "shift_break_hours": (int, 4),
        "clock_tolerance_s": (int, 60),
        "free_margin_mb": (int, 1024),
        "utc_offset_minutes": (int, 480),
        "max_sessions": (int, 20),
    },
    "usb": {
        "enabled": (bool, True),
        "mount_root": (str, "/run/evidock/mnt"),
        "rules": ("list[table]", [{"layout": "DCIM"}]),
    },
    "folder": {"roots": ("list[str]", []), "quiet_s": (int, 2)},
    "gat947": {
        "library": (str, ""),
        "password_file": (str, ""),
        "usb_ids": ("list[str]", []),
    },
    "mqtt": {
        "host": (str, ""),
        "port": (int, 8883),
        "tls": (bool, True),
        "ca_file": (str, ""),
        "cert_file": (str, ""),
        "key_file": (str, ""),
        "username": (str, ""),
        "password_file": (str, ""),
        "client_id": (str, ""),
        "keepalive_s": (int, 30),
    },
    "upload": {
        "topic_prefix": (str, "$file-async/{station}"),
        "segment_bytes": (int, 1048576),
        "window_segments": (int, 8),
        "bandwidth_bytes_per_s": (int, 0),
        "schedule": ("list[table]", []),
        "platform_key": (str, ""),
        "segments_ttl_s": (int, 86400),
        "result_timeout_s": (int, 30),
        "receipt_timeout_s": (int, 120),
    },
    "receiver": {
        "home": (str, "/var/lib/evidock-receiver"),
        "stations": ("list[table]", []),
        "max_transfers_per_station": (int, 64),
        "max_spool_mb_per_station": (int, 65536),
    },
}


@dataclass(frozen=True)
class Config:
    values: dict[str, dict[str, Any]]
    source: Path | None  # the file read, if any

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    @property
    def home(self) -> Path:
        return Path(self.get("station", "home"))

    @property
    def checkpoint_interval_s(self) -> int:
        return int(self.get("checkpoint", "interval_s"))


def _check(path: Path, section: str, key: str, kind: Any, value: Any) -> Any:
    where = f"{path}: [{section}] {key}"
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
    elif kind == "list[table]":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f'{where} must be a list of tables, e.g. [{{ layout = "DCIM" }}]')
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
    elif not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{where} must be a {kind.__name__}")
    if kind is int and value < 0:
        raise ConfigError(f"{where} must not be negative")
    return value


def load(path: Path | None = None) -> Config:
    """Load ``path``, else $EVIDOCK_CONFIG, else /etc/evidock/evidock.toml if present.

    Raises ConfigError naming the file, the key and what is wrong.
    """
    if path is None:
        env = os.environ.get("EVIDOCK_CONFIG")
        path = Path(env) if env else (SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None)
    values: dict[str, dict[str, Any]] = {
        s: {k: d for k, (_, d) in keys.items()} for s, keys in SCHEMA.items()
    }
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
        for section, table in data.items():
            if section not in SCHEMA or not isinstance(table, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            for key, value in table.items():
                if key not in SCHEMA[section]:
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
                kind = SCHEMA[section][key][0]
                values[section][key] = _check(path, section, key, kind, value)
    if values["checkpoint"]["interval_s"] <= 0:
        raise ConfigError(f"{path}: [checkpoint] interval_s must be positive")
    return Config(values, path)


def read_secret(path: Path, what: str) -> str:
    """A secret from a root-only file (0600 or stricter); never from the config itself."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from e
    if st.st_mode & 0o077:
        raise ConfigError(f"{what}: {path} is readable by others; chmod 600 it")
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text
