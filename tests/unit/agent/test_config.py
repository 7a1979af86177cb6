from __future__ import annotations

from pathlib import Path

import pytest

from agent import config
from agent.cli import main
from hashing.errors import ConfigError

SHIPPED = Path(__file__).parents[3] / "config" / "evidock.toml"


def test_shipped_file_is_valid_and_equals_defaults() -> None:
    shipped = config.load(SHIPPED)
    assert shipped.home == Path("/var/lib/evidock")
    assert shipped.checkpoint_interval_s == 300
    # Every setting is documented in the shipped file, with its default.
    defaults = {s: {k: d for k, (_, d) in keys.items()} for s, keys in config.SCHEMA.items()}
    assert shipped.values == defaults
    text = SHIPPED.read_text()
    for section, keys in config.SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} = " in text, key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[station]\nhoem = '/x'\n", "unknown key 'hoem'"),
        ("[stations]\n", "unknown section"),
        ("[checkpoint]\ninterval_s = 'soon'\n", "must be a int"),
        ("[checkpoint]\ninterval_s = 0\n", "positive"),
        ("[station\n", "evidock.toml"),
    ],
)
def test_bad_files_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "evidock.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(path)


def test_cli_takes_home_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evidock.toml"
    path.write_text(f"[station]\nhome = '{tmp_path / 'from-config'}'\n")
    monkeypatch.delenv("EVIDOCK_HOME", raising=False)
    monkeypatch.setenv("EVIDOCK_CONFIG", str(path))
    assert main(["init", "--station-id", "ST-9"]) == 0
    assert (tmp_path / "from-config" / "ledger.db").exists()
    path.write_text("[station]\nhome = 3\n")
    assert main(["key", "show"]) == 2
    assert "must be a str" in capsys.readouterr().err
