"""Reading the station's configuration file (TOML; ``config/evidock.toml`` documents it).

Unknown sections and keys are errors, not silently ignored: a misspelt
setting in an evidence system must not quietly fall back to a default.
Values are checked here, at the edge (style.md 8); the rest of the code gets
typed values. This module is a leaf: it imports no other part of the dock.
What a part refuses beyond a value's kind and range (a USB rule, the upload
settings, a case type) that part checks itself, with a ``check(cfg)`` that
yields ``Problem``s; `evidock config check` collects them (``check``'s
``parts``), so a setting is judged by the code that uses it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashing.errors import ConfigError, explain
from hashing.retention import MAX_DAYS, MIN_ROUTINE_DAYS
from hashing.station import DEFAULT_HOME

SYSTEM_CONFIG = Path("/etc/evidock/evidock.toml")

# section -> key -> (kind, default); kinds: str, int, bool, "list[str]", "list[table]", "table"
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
        "broker": (str, "emqx"),
        "topic_prefix": (str, ""),
        "segment_bytes": (int, 1048576),
        "window_segments": (int, 32),
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
        # The EMQX receipt service (receiver.receipts): source = "emqx".
        "source": (str, "broker"),
        "exports_dir": (str, ""),
        "s3_endpoint": (str, ""),
        "s3_bucket": (str, ""),
        "s3_region": (str, "us-east-1"),
        "s3_access_key_file": (str, ""),
        "s3_secret_key_file": (str, ""),
        "poll_s": (int, 10),
        "partition": (int, 0),
        "partitions": (int, 1),
    },
    "retention": {
        "routine_days": (int, 365),
        "grace_days": (int, 30),
        "evidence_days": ("table", {}),
        "default_case_type": (str, ""),
        "require_synced_clock": (bool, True),
    },
    "kiosk": {
        "address": (str, "127.0.0.1"),
        "port": (int, 8470),
        "session_minutes": (int, 30),
        "max_failed_logins": (int, 5),
        "lockout_minutes": (int, 15),
        "language": (str, "zh-CN"),
    },
}

LANGUAGES = ("zh-CN", "en")  # the kiosk's languages; [kiosk] language picks the default


@dataclass(frozen=True)
class Config:
    values: dict[str, dict[str, Any]]
    source: Path | None  # the file read, if any
    # Where each setting is written, when read for a check.
    lines: _Lines | None = field(default=None, compare=False, repr=False)

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def problem(self, section: str, key: str | None, message: str) -> Problem:
        """A problem with ``[section] key`` of this file, on the line it is written."""
        line = self.lines.of(section, key) if self.lines is not None else None
        return Problem(self.source, line, section, key, message)

    def problem_from(
        self, section: str, error: Exception, default_key: str | None = None
    ) -> Problem:
        """A part's refusal (its ConfigError) as a problem of the key it names: the
        longest key of ``section`` the message mentions, else ``default_key``."""
        text = explain(error).removeprefix(f"{self.source}: ").removeprefix(f"[{section}] ")
        key = next(
            (
                k
                for k in sorted(SCHEMA[section], key=len, reverse=True)
                if re.search(rf"\b{k}\b", text)
            ),
            default_key,
        )
        if key is not None:
            text = text.removeprefix(f"{key}: ").removeprefix(f"{key} ")
        return self.problem(section, key, text)

    @property
    def home(self) -> Path:
        return Path(self.get("station", "home"))

    @property
    def checkpoint_interval_s(self) -> int:
        return int(self.get("checkpoint", "interval_s"))


# -- values beyond their kind ----------------------------------------------------

Rule = Callable[[Any], str | None]  # a message if the value is unusable


def _at_least(low: int) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low}"

    return rule


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be positive"


def _one_of(choices: tuple[str, ...]) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}"

    return rule


# Case types are case-file kinds ("penalty", "刑事"): 1-64 printable characters.
_CASE_TYPE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
PERMANENT = "permanent"  # evidence_days value: the case file is kept for ever


def _case_type_problem(name: str) -> str | None:
    if not _CASE_TYPE.fullmatch(name) or name != name.strip():
        return f"case type {name!r}: use 1-64 printable characters, no surrounding spaces"
    return None


def _days(low: int) -> Rule:
    """A period in days: at least ``low``, at most 100 years (MAX_DAYS)."""

    def rule(value: Any) -> str | None:
        if value < low:
            return f"must be at least {low}"
        if value > MAX_DAYS:
            return f"must be at most {MAX_DAYS} (100 years)"
        return None

    return rule


def _evidence_days(value: Any) -> str | None:
    """Case type -> days (a whole number, 1 to 100 years) or "permanent"."""
    for name, days in value.items():
        problem = _case_type_problem(name)
        if problem is not None:
            return problem
        if days == PERMANENT:
            continue
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            return (
                f"case type {name!r}: {days!r} is neither a number of days (at least 1) "
                f'nor "{PERMANENT}"'
            )
        if days > MAX_DAYS:
            return (
                f"case type {name!r}: {days} days is over 100 years ({MAX_DAYS} days); "
                f'use "{PERMANENT}" for a case file kept for ever'
            )
    return None


def _case_type(value: Any) -> str | None:
    return None if value == "" else _case_type_problem(value)


def _port(value: Any) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _ip_address(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address such as 127.0.0.1 or ::1 (not a host name)"
    return None


# (section, key) -> rule. The wipe policies are agent.offload.session.WIPE_POLICIES (a
# test keeps the two equal; importing the offload machinery here would make
# reading the config file pull in the media probe).
RULES: dict[tuple[str, str], Rule] = {
    ("checkpoint", "interval_s"): _positive,
    ("offload", "wipe"): _one_of(("never", "after_verified", "after_receipt")),
    ("offload", "max_sessions"): _at_least(1),
    ("mqtt", "port"): _port,
    ("receiver", "source"): _one_of(("broker", "emqx")),
    ("receiver", "poll_s"): _positive,
    ("receiver", "partitions"): _at_least(1),
    # uploader.protocol.BROKERS; the prefix each kind parses is the uploader's check.
    ("upload", "broker"): _one_of(("emqx", "mosquitto")),
    # EMQX refuses an init whose segments_ttl is not a positive integer (emqx_ft_schema.erl).
    ("upload", "segments_ttl_s"): _positive,
    # Art. 16: routine footage is kept at least one year.
    ("retention", "routine_days"): _days(MIN_ROUTINE_DAYS),
    ("retention", "grace_days"): _days(0),
    ("retention", "evidence_days"): _evidence_days,
    ("retention", "default_case_type"): _case_type,
    ("kiosk", "address"): _ip_address,
    ("kiosk", "port"): _port,
    ("kiosk", "session_minutes"): _at_least(1),
    ("kiosk", "max_failed_logins"): _at_least(1),
    ("kiosk", "lockout_minutes"): _at_least(1),
    ("kiosk", "language"): _one_of(LANGUAGES),
}


def _kind_problem(kind: Any, value: Any) -> str | None:
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings"
    elif kind == "list[table]":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            return 'must be a list of tables, e.g. [{ layout = "DCIM" }]'
    elif kind == "table":
        if not isinstance(value, dict):
            return 'must be a table, e.g. { penalty = 10950, criminal = "permanent" }'
    elif kind is bool:
        if not isinstance(value, bool):
            return "must be true or false"
    elif not isinstance(value, kind) or isinstance(value, bool):
        return f"must be a {kind.__name__}"
    if kind is int and value < 0:
        return "must not be negative"
    return None


# -- problems, with the line they are on ------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file, printed as
    ``FILE:LINE: [section] key: message`` (LINE left out when unknown)."""

    path: Path | None
    line: int | None
    section: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "(defaults)"
        if self.line is not None:
            where += f":{self.line}"
        if self.section is None:
            return f"{where}: {self.message}"
        what = f"[{self.section}] {self.key}" if self.key is not None else f"[{self.section}]"
        return f"{where}: {what}: {self.message}"


_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r""""(?:[^"\\]|\\.)*"|'[^']*'"""
_DOTTED = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_TABLE_LINE = re.compile(rf"\s*\[\[?\s*(?P<name>{_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"\s*(?P<name>{_DOTTED})\s*=")
_KEY_PART = re.compile(rf"{_BARE}|{_QUOTED}")


def _key_parts(dotted: str) -> list[str]:
    parts = []
    for raw in _KEY_PART.findall(dotted):
        if raw.startswith('"'):
            try:
                parts.append(str(json.loads(raw)))  # TOML basic strings escape like JSON
            except ValueError:
                parts.append(raw[1:-1])
        elif raw.startswith("'"):
            parts.append(raw[1:-1])
        else:
            parts.append(raw)
    return parts


@dataclass
class _Lines:
    """Where each section and key is written (tomllib keeps no positions): found
    by scanning for ``[section]`` headers and ``key =`` lines, skipping the inside
    of multi-line strings. First occurrence wins (TOML refuses duplicates)."""

    sections: dict[str, int]
    keys: dict[tuple[str, str], int]

    @classmethod
    def scan(cls, text: str) -> _Lines:
        sections: dict[str, int] = {}
        keys: dict[tuple[str, str], int] = {}
        table: list[str] = []
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2:
                    in_string = None
                continue
            header = _TABLE_LINE.match(line)
            if header:
                table = _key_parts(header.group("name"))
                sections.setdefault(table[0], number)
                if len(table) > 1:
                    keys.setdefault((table[0], table[1]), number)
                continue
            key = _KEY_LINE.match(line)
            if key:
                parts = table[:1] + _key_parts(key.group("name"))
                sections.setdefault(parts[0], number)
                if len(parts) > 1:
                    keys.setdefault((parts[0], parts[1]), number)
            for quotes in ('"""', "'''"):
                if line.count(quotes) % 2:
                    in_string = quotes
                    break
        return cls(sections, keys)

    def of(self, section: str, key: str | None = None) -> int | None:
        if key is not None and (section, key) in self.keys:
            return self.keys[(section, key)]
        return self.sections.get(section)


def _syntax_problem(path: Path, error: tomllib.TOMLDecodeError) -> Problem:
    text = str(error)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
    if found:
        message = f"{text[: found.start()]} (column {found.group(2)})"
        return Problem(path, int(found.group(1)), None, None, f"TOML syntax error: {message}")
    return Problem(path, None, None, None, f"TOML syntax error: {text}")


def _close(word: str, choices: Iterable[str], form: str = "{!r}") -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {form.format(near[0])}?" if near else ""


def _validate(
    path: Path | None, data: dict[str, Any], lines: _Lines
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """The settings with the file's values over the defaults, and every problem."""
    values: dict[str, dict[str, Any]] = {
        s: {k: d for k, (_, d) in keys.items()} for s, keys in SCHEMA.items()
    }
    problems: list[Problem] = []
    for section, table in data.items():
        line = lines.of(section)
        if section not in SCHEMA:
            message = f"unknown section [{section}]{_close(section, SCHEMA, '[{}]')}"
            problems.append(Problem(path, line, section, None, message))
            continue
        if not isinstance(table, dict):
            message = f"must be a section ([{section}] on a line of its own), not a value"
            problems.append(Problem(path, line, section, None, message))
            continue
        for key, value in table.items():
            line = lines.of(section, key)
            if key not in SCHEMA[section]:
                message = f"unknown key {key!r} in [{section}]{_close(key, SCHEMA[section])}"
                problems.append(Problem(path, line, section, key, message))
                continue
            problem = _kind_problem(SCHEMA[section][key][0], value)
            rule = RULES.get((section, key))
            if problem is None and rule is not None:
                problem = rule(value)
            if problem is not None:
                problems.append(Problem(path, line, section, key, problem))
            else:
                values[section][key] = value
    return values, problems


def _parse(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and its TOML data. Raises ConfigError (unreadable, or a
    syntax error, with its line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(_syntax_problem(path, e))) from e


def default_path() -> Path | None:
    """$EVIDOCK_CONFIG, else /etc/evidock/evidock.toml if present, else None (defaults)."""
    env = os.environ.get("EVIDOCK_CONFIG")
    return Path(env) if env else (SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None)


def load(path: Path | None = None) -> Config:
    """Load ``path``, else $EVIDOCK_CONFIG, else /etc/evidock/evidock.toml if present.

    Raises ConfigError naming the file, the line, the key and what is wrong
    (every problem of the file, one per line).
    """
    if path is None:
        path = default_path()
    if path is None:
        values, _ = _validate(None, {}, _Lines({}, {}))
        return Config(values, None)
    text, data = _parse(path)
    values, problems = _validate(path, data, _Lines.scan(text))
    if problems:
        raise ConfigError("\n".join(map(str, problems)))
    return Config(values, path)


Check = Callable[[Config], Iterator[Problem]]  # a part's own check of its settings


def check(path: Path, parts: Iterable[Check] = ()) -> list[Problem]:
    """Every problem of the file at ``path``, with its line: syntax, unknown sections
    and keys, values of the wrong kind or out of range (what ``load`` refuses),
    the files the settings name (secret files must be 0600), then what each of
    ``parts`` refuses (the daemon would refuse it at start). A section that
    already has a problem is not judged again by a part (one cause, one report).
    Empty when the file is fine. For `evidock config check`."""
    try:
        text, data = _parse(path)
    except ConfigError as e:
        cause = e.__cause__
        if isinstance(cause, tomllib.TOMLDecodeError):
            return [_syntax_problem(path, cause)]
        return [Problem(path, None, None, None, str(e).removeprefix(f"{path}: "))]
    lines = _Lines.scan(text)
    values, problems = _validate(path, data, lines)
    bad = {p.section for p in problems}
    cfg = Config(values, path, lines)
    problems += (p for p in _files(cfg) if p.section not in bad)
    for part in parts:
        problems += (p for p in part(cfg) if p.section not in bad)
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


# Settings that name a file the daemon opens at start (password files: via read_secret).
FILE_KEYS = (
    ("gat947", "library"),
    ("gat947", "password_file"),
    ("mqtt", "ca_file"),
    ("mqtt", "cert_file"),
    ("mqtt", "key_file"),
    ("mqtt", "password_file"),
)


def _files(cfg: Config) -> Iterator[Problem]:
    """The files the settings name: absolute paths that exist; secrets 0600."""
    for section, key in FILE_KEYS:
        name = cfg.get(section, key)
        if not name:
            continue
        where = Path(name)
        if not where.is_absolute():
            yield cfg.problem(section, key, f"{name}: give an absolute path")
        elif key == "password_file":
            try:
                read_secret(where, f"[{section}] {key}")
            except ConfigError as e:
                yield cfg.problem(section, key, explain(e).removeprefix(f"[{section}] {key}: "))
        elif not where.is_file():
            yield cfg.problem(section, key, f"{name}: no such file")


def read_secret(path: Path, what: str) -> str:
    """A secret from a root-only file (0600 or stricter); never from the config itself."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from e
    if st.st_mode & 0o077:
        raise ConfigError(f"{what}: {path} is readable by others", hint=f"chmod 600 {path}")
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text
