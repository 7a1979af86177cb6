"""Retention, holds and the scrub through the command line (agent.cli.main), on a
real station: what a purge refuses, what the auditor's verifier says about
lawful purges, deletions and forged purge entries, crash recovery, and every
role boundary of `evidock hold`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import hashing.entries
from agent.cli import main
from agent.records import retention
from agent.users.accounts import Users
from agent.users.roles import ADMIN, AUDITOR, OFFICER, SUPERVISOR
from hashing.retention import HOLD, HOLD_RELEASE, PURGE, RETENTION_POLICY, Policy, rfc3339
from hashing.station import Station
from tests.retention_support import PLATFORM, add_user, ingest_clip, receipt, secret_file

REPO = Path(__file__).resolve().parents[2]
RETENTION = """\
[retention]
routine_days = 365
grace_days = 30
evidence_days = { penalty = 3650, criminal = "permanent" }
default_case_type = "penalty"
"""
# The platform's receipt key, as a dock pins it; the test machine's clock may not
# be synchronised (hashing.entries._clock_status), so purges do not require it.
CONFIG = (
    f'[upload]\nplatform_key = "{PLATFORM.verifier.vkey}"\n'
    + RETENTION
    + "require_synced_clock = false\n"
)
POLICY = Policy(365, 30, {"penalty": 3650, "criminal": None}, "penalty", 480)
OLD = 500


@dataclass
class Dock:
    home: Path
    src: Path
    secret: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--home", str(self.home)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def as_user(self, name: str) -> list[str]:
        return ["--as", name, "--password-file", str(self.secret)]

    def ingest(self, name: str, *, days_old: float, case: str | None = None) -> str:
        """A recording made and docked ``days_old`` days ago (tests.retention_support)."""
        station = self.station()
        try:
            return ingest_clip(station, self.src, name, days_old=days_old, case=case)
        finally:
            station.close()

    def station(self) -> Station:
        return Station.open(self.home)

    def receipt(self, sha: str) -> None:
        station = self.station()
        try:
            receipt(station, sha)
        finally:
            station.close()

    def entries(self, kind: str) -> list[Any]:
        station = self.station()
        try:
            return list(station.ledger.entries_of_type(kind))
        finally:
            station.close()

    def size(self) -> int:
        station = self.station()
        try:
            return station.ledger.size()
        finally:
            station.close()

    def stored(self, sha: str) -> bool:
        return (self.home / "store" / sha[:2] / sha[2:4] / sha).is_file()

    def store_path(self, sha: str) -> Path:
        return self.home / "store" / sha[:2] / sha[2:4] / sha


@pytest.fixture
def dock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Dock]:
    cfg = tmp_path / "evidock.toml"
    cfg.write_text(CONFIG, encoding="utf-8")
    monkeypatch.setenv("EVIDOCK_CONFIG", str(cfg))
    monkeypatch.delenv("EVIDOCK_HOME", raising=False)
    d = Dock(tmp_path / "home", tmp_path / "src", secret_file(tmp_path), capsys)
    assert d.run("init", "--station-id", "dock-01")[0] == 0
    station = d.station()
    try:
        add_user(station, "ofc", OFFICER, officer="o-1")
        add_user(station, "sup", SUPERVISOR)
        add_user(station, "aud", AUDITOR)
        add_user(station, "adm", ADMIN)
    finally:
        station.close()
    yield d


def test_help_of_every_new_command(dock: Dock) -> None:
    for command in (
        ["retention", "run"],
        ["retention", "report"],
        ["scrub"],
        ["hold", "add"],
        ["hold", "release"],
        ["hold", "list"],
    ):
        code, out, _ = dock.run(*command, "--help")
        assert code == 0 and "usage: evidock" in out and "--home" in out, command


def test_purge_refuses_everything_but_the_lawful_one_and_the_verifier_agrees(dock: Dock) -> None:
    lawful = dock.ingest("LAWFUL.MP4", days_old=OLD)
    unreceipted = dock.ingest("NORECEIPT.MP4", days_old=OLD)
    young = dock.ingest("YOUNG.MP4", days_old=30)
    by_file = dock.ingest("HELDFILE.MP4", days_old=OLD)
    by_case = dock.ingest("HELDCASE.MP4", days_old=OLD)
    tagged_later = dock.ingest("LATER.MP4", days_old=OLD)
    longterm = dock.ingest("LONG.MP4", days_old=OLD)
    permanent = dock.ingest("CRIMINAL.MP4", days_old=OLD)
    for sha in (lawful, young, by_file, by_case, tagged_later, longterm, permanent):
        dock.receipt(sha)
    assert dock.run("tag", by_case, "--case", "K-1", "--kind", "other")[0] == 0
    assert (
        dock.run(
            "hold",
            "add",
            by_file,
            "--reason",
            "dispute",
            "--note",
            "complaint 1",
            *dock.as_user("sup"),
        )[0]
        == 0
    )
    assert (
        dock.run(
            "hold",
            "add",
            "--case",
            "K-1",
            "--reason",
            "incident",
            "--note",
            "n",
            *dock.as_user("sup"),
        )[0]
        == 0
    )
    assert (
        dock.run(
            "hold",
            "add",
            "--case",
            "K-2",
            "--reason",
            "obstruction",
            "--note",
            "n",
            *dock.as_user("sup"),
        )[0]
        == 0
    )
    # bound to the held case only after the hold was set
    assert dock.run("tag", tagged_later, "--case", "K-2", "--kind", "other")[0] == 0
    assert (
        dock.run(
            "tag",
            longterm,
            "--case",
            "L-1",
            "--kind",
            "other",
            "--retention",
            "long-term",
            "--reason",
            "Art. 17",
        )[0]
        == 0
    )
    assert (
        dock.run(
            "tag",
            permanent,
            "--case",
            "X-1",
            "--kind",
            "interview",
            "--retention",
            "evidence",
            "--reason",
            "r",
            "--case-type",
            "criminal",
        )[0]
        == 0
    )

    code, out, err = dock.run("retention", "run", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [p["sha256"] for p in result["purged"]] == [lawful]
    assert result["plan"]["blocked"] == {
        "held": 3,
        "never purged": 2,
        "not receipted": 1,
        "not yet due": 1,
    }
    assert not dock.stored(lawful)
    for sha in (unreceipted, young, by_file, by_case, tagged_later, longterm, permanent):
        assert dock.stored(sha)
    (purge,) = dock.entries(PURGE)
    assert purge.body["sha256"] == lawful and purge.body["class"] == "routine"
    (policy,) = dock.entries(RETENTION_POLICY)
    assert purge.body["policy"] == policy.seq and Policy.from_body(policy.body) == POLICY

    code, out, _ = dock.run("ledger", "verify")
    assert code == 0, out
    assert "files purged lawfully: 1" in out
    code, out, _ = dock.run("show", lawful)
    assert code == 0 and "purged      entry" in out and "(lawful)" in out
    code, out, _ = dock.run("show", tagged_later)
    assert "hold        entry" in out and "case K-2, obstruction, by sup; in force" in out
    code, out, _ = dock.run("show", permanent, "--json")
    assert json.loads(out)["retention"]["why"] == "evidence of a case of type criminal: permanent"


def test_a_deletion_outside_retention_is_file_missing(dock: Dock) -> None:
    sha = dock.ingest("A.MP4", days_old=1)
    dock.store_path(sha).unlink()
    code, out, _ = dock.run("ledger", "verify", "--json")
    report = json.loads(out)
    assert code == 1
    failed = [f["kind"] for f in report["findings"] if f["kind"] != "clock_regression"]
    assert failed == ["file_missing"]


def _forge(dock: Dock, sha: str) -> None:
    """A purge entry shaped exactly like a real one, appended behind the rule's
    back, and the file removed: what someone deleting evidence would write."""
    station = dock.station()
    try:
        judge = retention.load(station)
        status = retention.status(station, sha, POLICY, datetime.now(UTC))
        assert status is not None
        latest = judge.latest_policy
        policy_seq = (
            latest[0]
            if latest
            else station.ledger.append(RETENTION_POLICY, {**POLICY.body(), "by": "console:x"}).seq
        )
        station.ledger.append(
            PURGE,
            {
                "sha256": sha,
                "size": status.size,
                "class": status.klass,
                "cases": list(status.cases),
                "recorded_at": rfc3339(status.recorded_at),
                "counted_from": rfc3339(status.counted_from),
                "keep_until": rfc3339(status.keep_until) if status.keep_until else None,
                "purge_after": rfc3339(status.purge_after) if status.purge_after else None,
                "receipt": status.receipt,
                "policy": policy_seq,
                "by": "console:x",
            },
        )
        station.store.path_for(sha).unlink()
    finally:
        station.close()


def test_forged_purge_entries_are_unlawful_purges(dock: Dock) -> None:
    early = dock.ingest("EARLY.MP4", days_old=100)
    unreceipted = dock.ingest("NORECEIPT.MP4", days_old=OLD)
    unsigned = dock.ingest("UNSIGNED.MP4", days_old=OLD)
    held = dock.ingest("HELD.MP4", days_old=OLD)
    dock.receipt(early)
    dock.receipt(held)
    assert (
        dock.run("hold", "add", held, "--reason", "other", "--note", "n", *dock.as_user("sup"))[0]
        == 0
    )
    station = dock.station()
    try:
        (hold,) = station.ledger.entries_of_type(HOLD)
        # Behind the rule's back: a release by the supervisor who set the hold (not
        # an admin), and a receipt the platform never signed.
        station.ledger.append(HOLD_RELEASE, {"hold": hold.seq, "note": "x", "by": "sup"})
        station.ledger.append("upload_receipt", {"sha256": unsigned, "size": 2000, "seq": 0})
    finally:
        station.close()
    for sha in (early, unreceipted, unsigned, held):
        _forge(dock, sha)
    code, out, _ = dock.run("ledger", "verify", "--json")
    assert code == 1
    findings = [f for f in json.loads(out)["findings"] if f["kind"] != "clock_regression"]
    assert {f["kind"] for f in findings} == {"unlawful_purge"}
    why = {f["place"].split("/")[-1].split(" ")[0]: f["detail"] for f in findings}
    assert "not due before" in why[early]
    assert "no upload receipt" in why[unreceipted]
    assert "no upload receipt" in why[unsigned]
    assert "under hold" in why[held] and "'sup', not an admin" in why[held]
    code, out, _ = dock.run("ledger", "verify")
    assert "unlawful_purge" in out and "INTEGRITY FAILURE" in out


def test_without_a_platform_key_purges_are_unverified_and_none_is_made(
    dock: Dock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = dock.ingest("A.MP4", days_old=OLD)
    dock.receipt(sha)
    assert dock.run("retention", "run")[0] == 0 and not dock.stored(sha)
    key = PLATFORM.verifier.vkey
    # An auditor off the dock: no configuration, the platform key on the command line.
    bare = tmp_path / "bare.toml"
    bare.write_text("", encoding="utf-8")
    monkeypatch.setenv("EVIDOCK_CONFIG", str(bare))
    code, out, _ = dock.run("ledger", "verify", "--platform-key", key)
    assert code == 0 and "files purged lawfully: 1" in out, out
    code, out, _ = dock.run("ledger", "verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["checked"]["files purged, receipts not verified"] == 1
    (unverified,) = [f for f in report["findings"] if f["kind"] == "purge_unverified"]
    assert "--platform-key" in unverified["detail"]
    code, _, err = dock.run("ledger", "verify", "--platform-key", "not-a-key")
    assert code == 2 and "--platform-key" in err
    # A dock without a platform key purges nothing.
    other = dock.ingest("B.MP4", days_old=OLD)
    dock.receipt(other)
    size = dock.size()
    code, _, err = dock.run("retention", "run")
    assert code == 2 and "no [upload] platform_key" in err
    assert dock.stored(other) and dock.size() == size


def test_an_unsynchronised_clock_purges_nothing(
    dock: Dock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = dock.ingest("A.MP4", days_old=OLD)
    dock.receipt(sha)
    strict = tmp_path / "strict.toml"
    strict.write_text(
        f'[upload]\nplatform_key = "{PLATFORM.verifier.vkey}"\n' + RETENTION, encoding="utf-8"
    )
    monkeypatch.setenv("EVIDOCK_CONFIG", str(strict))  # require_synced_clock = true (default)
    monkeypatch.setattr(hashing.entries, "_clock_status", lambda: "unsynced")
    size = dock.size()
    code, _, err = dock.run("retention", "run")
    assert code == 2 and "not synchronised" in err and "require_synced_clock" in err
    assert dock.stored(sha) and dock.size() == size


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from agent.records import retention
    from agent.cli import main

    def power_cut(path):
        os.kill(os.getpid(), signal.SIGKILL)  # after the purge entry committed

    retention._remove = power_cut
    sys.exit(main(["retention", "run", "--home", sys.argv[1]]))
    """
)


def test_a_crash_between_the_purge_entry_and_the_unlink_is_finished_next_run(dock: Dock) -> None:
    sha = dock.ingest("A.MP4", days_old=OLD)
    dock.receipt(sha)
    done = subprocess.run(
        [sys.executable, "-c", CRASHER, str(dock.home)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [e.body["sha256"] for e in dock.entries(PURGE)] == [sha] and dock.stored(sha)
    code, out, _ = dock.run("ledger", "verify")
    assert code == 0 and "purges not yet finished: 1" in out
    size = dock.size()
    code, out, _ = dock.run("retention", "run")
    assert code == 0 and f"finished the interrupted purge of {sha}" in out
    assert not dock.stored(sha) and dock.size() == size
    code, out, _ = dock.run("ledger", "verify")
    assert code == 0 and "files purged lawfully: 1" in out


def test_dry_run_changes_nothing(dock: Dock) -> None:
    sha = dock.ingest("A.MP4", days_old=OLD)
    dock.receipt(sha)
    size = dock.size()
    files = sorted(p.name for p in (dock.home / "store").rglob("*") if p.is_file())
    code, out, _ = dock.run("retention", "run", "--dry-run")
    assert code == 0 and f"would purge {sha}" in out and "nothing written" in out
    assert dock.size() == size
    assert sorted(p.name for p in (dock.home / "store").rglob("*") if p.is_file()) == files


def test_retention_report(dock: Dock) -> None:
    old = dock.ingest("A.MP4", days_old=OLD)
    young = dock.ingest("B.MP4", days_old=10)
    code, out, _ = dock.run("retention", "report", "--json")
    assert code == 0
    report = json.loads(out)
    assert [r["sha256"] for r in report["recordings"]] == [old, young]
    assert report["recordings"][0]["state"] == "not receipted"
    # A date is the whole local day ([offload] utc_offset_minutes, +08:00 by default).
    code, out, _ = dock.run("retention", "report", "--until", "2000-01-01")
    assert code == 0 and "2 more after 2000-01-01T15:59:59.999999Z" in out
    code, out, _ = dock.run("retention", "report", "--until", "2000-01-01T08:00:00")
    assert code == 0 and "2 more after 2000-01-01T00:00:00Z" in out
    code, _, err = dock.run("retention", "report", "--until", "soon")
    assert code == 2 and "not a date" in err


def test_scrub_records_a_flipped_byte_and_repairs_nothing(
    dock: Dock, caplog: pytest.LogCaptureFixture
) -> None:
    sha = dock.ingest("A.MP4", days_old=1)
    dock.ingest("B.MP4", days_old=1)
    code, out, _ = dock.run("scrub")
    assert code == 0 and "RESULT: OK" in out
    path = dock.store_path(sha)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[7] ^= 0xFF
    path.write_bytes(bytes(data))
    path.chmod(0o400)
    with caplog.at_level(logging.ERROR, logger="agent.records.scrub"):
        code, out, _ = dock.run("scrub", "--json")
    assert code == 1
    result = json.loads(out)
    assert [(f["sha256"], f["finding"]) for f in result["failures"]] == [(sha, "file_modified")]
    assert any(  # logged at ERROR (journald priority 3 under systemd)
        r.levelno == logging.ERROR and f"file_modified {sha}" in r.getMessage()
        for r in caplog.records
    )
    assert path.read_bytes() == bytes(data)
    scrubs = dock.entries("scrub")
    assert len(scrubs) == 2 and scrubs[-1].body["failures"] == result["failures"]


def test_every_role_boundary_of_holds(dock: Dock) -> None:
    sha = dock.ingest("A.MP4", days_old=1)
    size = dock.size()
    for who in ("ofc", "aud", "adm"):
        code, _, err = dock.run(
            "hold", "add", sha, "--reason", "dispute", "--note", "n", *dock.as_user(who)
        )
        assert code == 2 and "may not hold" in err, who
        code, _, err = dock.run(
            "hold", "add", "--case", "C-1", "--reason", "dispute", "--note", "n", *dock.as_user(who)
        )
        assert code == 2 and "may not hold" in err, who
    assert dock.size() == size
    code, out, _ = dock.run(
        "hold", "add", sha, "--reason", "dispute", "--note", "n", *dock.as_user("sup")
    )
    assert code == 0
    (hold,) = dock.entries(HOLD)
    assert hold.body["by"] == "sup" and hold.body["files"] == [sha]
    size = dock.size()
    for who in ("sup", "ofc", "aud"):  # not even the supervisor who set it
        code, _, err = dock.run("hold", "release", str(hold.seq), "--note", "n", *dock.as_user(who))
        assert code == 2 and "may not release_hold" in err, who
    assert dock.size() == size and not dock.entries(HOLD_RELEASE)
    code, out, _ = dock.run(
        "hold", "release", str(hold.seq), "--note", "withdrawn", *dock.as_user("adm")
    )
    assert code == 0 and f"hold {hold.seq} released by adm" in out
    (release,) = dock.entries(HOLD_RELEASE)
    assert release.body == {"hold": hold.seq, "note": "withdrawn", "by": "adm"}
    code, _, err = dock.run(
        "hold", "release", str(hold.seq), "--note", "again", *dock.as_user("adm")
    )
    assert code == 2 and "already released" in err
    code, out, _ = dock.run("hold", "list", "--all", "--json")
    (listed,) = json.loads(out)
    assert listed["released"] == release.seq and listed["released_by"] == "adm"
    code, out, _ = dock.run("hold", "list")
    assert "no holds in force" in out


def test_disabled_users_and_wrong_secrets_are_refused(dock: Dock, tmp_path: Path) -> None:
    sha = dock.ingest("A.MP4", days_old=1)
    code, _, _ = dock.run(
        "hold", "add", "--case", "C-1", "--reason", "other", "--note", "n", *dock.as_user("sup")
    )
    assert code == 0
    (hold,) = dock.entries(HOLD)
    station = dock.station()
    users = Users(station)
    try:
        users.disable("sup", by="console:test")
        users.disable("adm", by="console:test")
    finally:
        users.close()
        station.close()
    size = dock.size()
    code, _, err = dock.run(
        "hold", "add", sha, "--reason", "other", "--note", "n", *dock.as_user("sup")
    )
    assert code == 2, err
    code, _, err = dock.run("hold", "release", str(hold.seq), "--note", "n", *dock.as_user("adm"))
    assert code == 2, err
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password 9\n", encoding="utf-8")
    wrong.chmod(0o600)
    code, _, err = dock.run(
        "hold",
        "add",
        sha,
        "--reason",
        "other",
        "--note",
        "n",
        "--as",
        "aud",
        "--password-file",
        str(wrong),
    )
    assert code == 2 and "login failed" in err
    assert dock.size() == size


def test_config_check_knows_the_retention_section(dock: Dock, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[retention]\nroutine_days = 300\nevidence_days = { penalty = 0, criminal = "forever" }\n',
        encoding="utf-8",
    )
    code, out, _ = dock.run("config", "check", str(bad))
    assert code == 2
    assert "[retention] routine_days: must be at least 365" in out
    assert "evidence_days: case type 'penalty': 0 is neither" in out
    huge = tmp_path / "huge.toml"
    huge.write_text(
        "[retention]\nroutine_days = 40000\nevidence_days = { penalty = 3000000 }\n",
        encoding="utf-8",
    )
    code, out, _ = dock.run("config", "check", str(huge))
    assert code == 2
    assert "[retention] routine_days: must be at most 36525 (100 years)" in out
    assert "'penalty': 3000000 days is over 100 years" in out and '"permanent"' in out
    other = tmp_path / "other.toml"
    other.write_text('[retention]\ndefault_case_type = "tax"\n', encoding="utf-8")
    code, out, _ = dock.run("config", "check", str(other))
    assert code == 2 and "'tax' is not a case type of evidence_days" in out
