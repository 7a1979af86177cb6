"""Reading the station's configuration file (TOML, ``config/evidock.toml`` documents it).

Unknown sections and keys are errors, not silently ignored: a misspelt
setting in an evidence system must not quietly fall back to a default.
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

# section -> key -> (type, default)
SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "station": {"home": (str, str(DEFAULT_HOME))},
    "checkpoint": {"interval_s": (int, 300)},
}


@dataclass(frozen=True)
class Config:
    home: Path
    checkpoint_interval_s: int
    source: Path | None  # the file read, if any


def load(path: Path | None = None) -> Config:
    """Load ``path``, else $EVIDOCK_CONFIG, else /etc/evidock/evidock.toml if present.

    Raises ConfigError naming the file and the bad key.
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
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise ConfigError(f"{path}: [{section}] {key} must be a {kind.__name__}")
                values[section][key] = value
    interval = int(values["checkpoint"]["interval_s"])
    if interval <= 0:
        raise ConfigError(f"{path}: [checkpoint] interval_s must be positive")
    return Config(Path(values["station"]["home"]), interval, path)
