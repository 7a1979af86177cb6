"""The scrub (agent.records.scrub): every stored file and the ledger re-checked, one
``scrub`` entry with the result, failures logged at ERROR, nothing repaired."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import hashing.audit
from agent.records import index, retention
from agent.records.scrub import SCRUB, scrub
from hashing.retention import Policy
from hashing.station import Station
from tests.retention_support import PLATFORM_KEYS, ingest_clip, new_station, receipt


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    s = new_station(tmp_path)
    yield s
    s.close()


def flip(path: Path, offset: int) -> bytes:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))
    path.chmod(0o400)
    return bytes(data)


def test_a_clean_store_scrubs_ok(station: Station, tmp_path: Path) -> None:
    shas = [
        ingest_clip(
            station, tmp_path / "src", f"C{i}.MP4", days_old=1, size=1000 + i, docked_days_ago=0
        )
        for i in range(3)
    ]
    result = scrub(station, by="console:test")
    assert result.ok
    body = result.entry.body
    assert result.entry.type == SCRUB
    assert body["files"] == 3 and body["bytes"] == 3003 and body["intact"] == 3
    assert body["failures"] == [] and body["ledger"] == "ok" and body["ledger_findings"] == []
    assert body["by"] == "console:test" and body["started"] <= body["finished"]
    assert all(station.store.has(s) for s in shas)


def test_a_flipped_byte_is_recorded_and_logged_and_left_alone(
    station: Station, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1, size=3000, docked_days_ago=0)
    ingest_clip(station, tmp_path / "src", "B.MP4", days_old=1, docked_days_ago=0)
    path = station.store.path_for(sha)
    damaged = flip(path, 1234)
    with caplog.at_level(logging.ERROR, logger="agent.records.scrub"):
        result = scrub(station, by="console:test")
    assert not result.ok and result.ledger_ok
    (failure,) = result.entry.body["failures"]
    assert failure["sha256"] == sha and failure["finding"] == "file_modified"
    assert "bytes 0-2999 differ" in failure["detail"]
    assert result.entry.body["intact"] == 1
    assert path.read_bytes() == damaged and path.stat().st_mode & 0o777 == 0o400
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(sha in r.getMessage() and "file_modified" in r.getMessage() for r in errors)


def test_lawful_purges_are_not_failures_but_deletions_and_ledger_damage_are(
    station: Station, tmp_path: Path
) -> None:
    purged = ingest_clip(station, tmp_path / "src", "OLD.MP4", days_old=500)
    receipt(station, purged)
    retention.run(
        station,
        Policy(),
        by="console:test",
        platform_keys=PLATFORM_KEYS,
        require_synced_clock=False,
    )
    assert not station.store.has(purged)
    assert scrub(station, by="console:test", platform_keys=PLATFORM_KEYS).ok
    deleted = ingest_clip(station, tmp_path / "src", "NEW.MP4", days_old=1, docked_days_ago=0)
    station.store.path_for(deleted).unlink()
    result = scrub(station, by="console:test", platform_keys=PLATFORM_KEYS)
    assert [(f["sha256"], f["finding"]) for f in result.failures] == [(deleted, "file_missing")]
    assert result.ledger_ok
    # Someone edits an entry's bytes in the database (triggers dropped, as a tamperer would).
    conn = sqlite3.connect(station.ledger.path)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute(
        "UPDATE entries SET data = replace(data, 'NEW.MP4', 'XYZ.MP4') WHERE seq = ?",
        (index.file_seq(station.ledger, deleted),),
    )
    conn.commit()
    conn.close()
    result = scrub(station, by="console:test")
    assert not result.ledger_ok and result.entry.body["ledger"] == "failed"
    assert "entry_altered" in {f["kind"] for f in result.ledger_findings}


def test_a_purge_while_the_scrub_reads_the_store_is_not_a_loss(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weekly scrub and the daily retention run overlap: the audit has read its
    ledger snapshot when the run commits a purge entry and unlinks the file. The
    file is judged by that purge entry, read from the live ledger, not reported
    missing."""
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=500)
    receipt(station, sha)
    checking = hashing.audit._check_signer_state  # runs after the snapshot, before the store

    def retention_run_meanwhile(*args: object, **kwargs: object) -> None:
        other = Station.open(station.home)  # the retention timer, another process
        try:
            retention.run(
                other,
                Policy(),
                by="console:cron",
                platform_keys=PLATFORM_KEYS,
                require_synced_clock=False,
            )
        finally:
            other.close()
        checking(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashing.audit, "_check_signer_state", retention_run_meanwhile)
    result = scrub(station, by="console:scrub", platform_keys=PLATFORM_KEYS)
    assert not station.store.has(sha)
    assert result.ok and result.entry.body["failures"] == [], result.entry.body
    monkeypatch.undo()
    assert hashing.audit.audit(station, platform_keys=PLATFORM_KEYS).exit_code == 0
