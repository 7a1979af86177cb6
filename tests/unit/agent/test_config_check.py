"""`evidock config check`: every problem of a configuration file, each with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config
from agent.cli import main
from agent.dock import wiring
from agent.offload.session import WIPE_POLICIES
from hashing.errors import ConfigError

SHIPPED = Path(__file__).parents[3] / "config" / "evidock.toml"


def write(tmp_path: Path, text: str, name: str = "evidock.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def lines(tmp_path: Path, text: str) -> list[str]:
    """check()'s problems, with the folder left out for short expectations."""
    path = write(tmp_path, text)
    return [str(p).removeprefix(f"{tmp_path}/") for p in wiring.check_file(path)]


def test_the_shipped_file_is_clean_and_documents_the_kiosk() -> None:
    assert wiring.check_file(SHIPPED) == []
    kiosk = config.load(SHIPPED).values["kiosk"]
    assert kiosk == {
        "address": "127.0.0.1",
        "port": 8470,
        "session_minutes": 30,
        "max_failed_logins": 5,
        "lockout_minutes": 15,
        "language": "zh-CN",
    }
    text = SHIPPED.read_text(encoding="utf-8")
    section = text[text.index("[kiosk]") :]
    for word in ("Minutes", "TCP port", "IP address", '"zh-CN"', "12 hours"):
        assert word in section


def test_every_problem_at_once_each_with_its_line(tmp_path: Path) -> None:
    text = """\
# a comment
[station]
hoem = "/x"

[checkpoint]
interval_s = 0

[stations]
x = 1

[kiosk]
address = "localhost"
port = 70000
language = "fr"
session_minutes = "long"

[offload]
wipe = "sometimes"
max_sessions = -1
"""
    assert lines(tmp_path, text) == [
        "evidock.toml:3: [station] hoem: unknown key 'hoem' in [station]; did you mean 'home'?",
        "evidock.toml:6: [checkpoint] interval_s: must be positive",
        "evidock.toml:8: [stations]: unknown section [stations]; did you mean [station]?",
        "evidock.toml:12: [kiosk] address: must be an IP address such as 127.0.0.1 or ::1 "
        "(not a host name)",
        "evidock.toml:13: [kiosk] port: must be a TCP port (1-65535)",
        "evidock.toml:14: [kiosk] language: must be one of 'zh-CN', 'en'",
        "evidock.toml:15: [kiosk] session_minutes: must be a int",
        "evidock.toml:18: [offload] wipe: must be one of 'never', 'after_verified', "
        "'after_receipt'",
        "evidock.toml:19: [offload] max_sessions: must not be negative",
    ]


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    assert lines(tmp_path, "[station]\nhome = '/x'\n\n[usb\nenabled = true\n") == [
        "evidock.toml:4: TOML syntax error: Expected ']' at the end of a table declaration "
        "(column 5)"
    ]
    assert lines(tmp_path, "[station]\nhome = '/x'\nhome = '/y'\n")[0].startswith(
        "evidock.toml:3: TOML syntax error: Cannot overwrite a value"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # quoted keys and headers
        ('[station]\n"hoem" = "/x"\n', "evidock.toml:2: [station] hoem:"),
        ("[ 'station' ]\n  'hoem' = '/x'\n", "evidock.toml:2: [station] hoem:"),
        # dotted keys at the top and dotted headers
        ('# top\nstation.hoem = "/x"\n', "evidock.toml:2: [station] hoem:"),
        ("[kiosk]\nport = 1\n[station.home]\n", "evidock.toml:3: [station] home: must be a str"),
        ('kiosk = { port = "x" }\n', "evidock.toml:1: [kiosk] port: must be a int"),
        # a table's value given as a plain key
        ('station = "/x"\n', "evidock.toml:1: [station]: must be a section"),
        # arrays of tables
        ("[[usb]]\nenabled = true\n", "evidock.toml:1: [usb]: must be a section"),
    ],
)
def test_lines_of_quoted_dotted_and_inline_keys(tmp_path: Path, text: str, expected: str) -> None:
    found = lines(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_keys_inside_multiline_strings_are_not_taken_for_settings(tmp_path: Path) -> None:
    text = '[mqtt]\nusername = """\nhoem = 1\n"""\n[station]\nhoem = 2\n'
    assert lines(tmp_path, text) == [
        "evidock.toml:6: [station] hoem: unknown key 'hoem' in [station]; did you mean 'home'?"
    ]


def test_what_the_daemon_would_refuse_at_start(tmp_path: Path) -> None:
    loose = tmp_path / "loose.passwd"
    loose.write_text("secret\n")
    loose.chmod(0o644)
    tight = tmp_path / "tight.passwd"
    tight.write_text("secret\n")
    tight.chmod(0o600)
    text = f"""\
[usb]
rules = [
  {{ layout = "DCIM" }},
  {{ layot = "DCIM" }},
]
[upload]
schedule = [{{ from = "07:00", to = "19:00", bytes_per_s = "fast" }}]
[receiver]
stations = [{{ id = "dock-01" }}]
[mqtt]
password_file = "{loose}"
ca_file = "ca.pem"
cert_file = "{tmp_path / "missing.pem"}"
[gat947]
password_file = "{tight}"
"""
    assert lines(tmp_path, text) == [
        "evidock.toml:2: [usb] rules: rule 2: unknown key layot; a rule takes vendor_id, "
        "model_id, serial, vendor, model, layout, extensions",
        "evidock.toml:7: [upload] schedule: window 1: schedule window 07:00-19:00: "
        "bytes_per_s must be an integer",
        "evidock.toml:9: [receiver] stations: station dock-01: keys must be a non-empty "
        "list of strings",
        f"evidock.toml:11: [mqtt] password_file: {loose} is readable by others; chmod 600 {loose}",
        "evidock.toml:12: [mqtt] ca_file: ca.pem: give an absolute path",
        f"evidock.toml:13: [mqtt] cert_file: {tmp_path / 'missing.pem'}: no such file",
    ]


def test_load_refuses_what_check_reports_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "[kiosk]\nport = 0\nlanguage = 'de'\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value).splitlines() == [
        f"{path}:2: [kiosk] port: must be a TCP port (1-65535)",
        f"{path}:3: [kiosk] language: must be one of 'zh-CN', 'en'",
    ]


def test_wipe_choices_are_the_offload_policies() -> None:
    rule = config.RULES[("offload", "wipe")]
    assert all(rule(p) is None for p in WIPE_POLICIES)
    assert rule("sometimes") is not None


def test_cli_config_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(SHIPPED)]) == 0
    assert capsys.readouterr().out == f"{SHIPPED}: ok\n"
    bad = write(tmp_path, "[station]\nhoem = 1\n[kiosk]\nport = 0\n")
    assert main(["config", "check", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{bad}:2: [station] hoem: unknown key 'hoem' in [station]; did you mean 'home'?",
        f"{bad}:4: [kiosk] port: must be a TCP port (1-65535)",
    ]
    assert "2 problem(s)" in err
    # without FILE: $EVIDOCK_CONFIG
    monkeypatch.setenv("EVIDOCK_CONFIG", str(bad))
    assert main(["config", "check"]) == 2
    capsys.readouterr()
    assert main(["config", "check", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read" in capsys.readouterr().out
    # neither FILE nor $EVIDOCK_CONFIG nor /etc/evidock/evidock.toml: the defaults
    monkeypatch.delenv("EVIDOCK_CONFIG")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "etc-absent.toml")
    assert main(["config", "check"]) == 0
    assert "the built-in defaults apply" in capsys.readouterr().out
    assert main(["config", "check", "--help"]) == 0
    assert "usage: evidock config check" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # EMQX reads the level after the prefix as the file id: only "$file-async" parses.
        (
            '[upload]\ntopic_prefix = "$file-async/{station}"\n',
            "evidock.toml:2: [upload] topic_prefix: '$file-async/{station}': EMQX parses only",
        ),
        (
            '[upload]\nbroker = "emqx"\ntopic_prefix = "$file"\n',
            "evidock.toml:3: [upload] topic_prefix",
        ),
        # mosquitto: the ACL confines each dock by its {station} level.
        (
            '[upload]\nbroker = "mosquitto"\ntopic_prefix = "$file-async"\n',
            "evidock.toml:3: [upload] topic_prefix: '$file-async': with mosquitto it needs a "
            "{station} level",
        ),
        ('[upload]\nbroker = "hivemq"\n', "evidock.toml:2: [upload] broker: must be one of"),
        # EMQX refuses segments_ttl 0 (emqx_ft_schema.erl: pos_integer()).
        (
            "[upload]\nsegments_ttl_s = 0\n",
            "evidock.toml:2: [upload] segments_ttl_s: must be positive",
        ),
    ],
)
def test_upload_broker_kind_prefix_and_ttl(tmp_path: Path, text: str, expected: str) -> None:
    found = lines(tmp_path, text)
    # The dock's refusal first; `evidock receive` (the same file) may refuse it as well.
    assert found and found[0].startswith(expected), found


@pytest.mark.parametrize(
    "text",
    [
        "[upload]\n",  # the defaults: EMQX, its own prefix
        '[upload]\nbroker = "emqx"\ntopic_prefix = "$file-async"\n',
        '[upload]\nbroker = "mosquitto"\n',
        '[upload]\nbroker = "mosquitto"\ntopic_prefix = "evidock/{station}/ft"\n',
    ],
)
def test_upload_prefixes_each_kind_parses(tmp_path: Path, text: str) -> None:
    assert lines(tmp_path, text) == []


def test_the_shipped_upload_defaults_are_emqx() -> None:
    upload = config.load(SHIPPED).values["upload"]
    assert upload["broker"] == "emqx" and upload["topic_prefix"] == ""
    text = SHIPPED.read_text(encoding="utf-8")
    section = text[text.index("[upload]") : text.index("[receiver]")]
    for word in ("e5.3.2", "file id", "{station}", "positive"):
        assert word in section
