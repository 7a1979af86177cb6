"""The README's demo runs end to end and says what it did."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--home", str(tmp_path / "station"), "--out", str(tmp_path / "export")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RESULT: VERIFIED" in out
    assert "可以拔出 safe to unplug" in out
    assert "anomaly: clip numbers missing" in out and "anomaly: no recording for 20 min" in out
    assert "tags the 5 clips to case CASE-2026-0001" in out
    assert out.count(": OK") == 5  # sha256sum -c
    assert "caught: file_modified" in out
    assert len(list((tmp_path / "export" / "files").iterdir())) == 5
    assert main(["ledger", "verify", "--home", str(tmp_path / "station")]) == 0
    # A second run into the same folder refuses rather than mixing two stations.
    assert main(["demo", "--home", str(tmp_path / "station")]) == 2
