"""`evidock access log` and `evidock play` through main([...]), on a real station with
real users (issue 6 §3; Art. 18, Art. 20 (3)).

The player is a small script that copies the file it is given, so the test checks
the bytes the user saw, and where and how they were read. Every refusal is
checked for its exit code, its message, and that no ``access`` entry was
appended.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from agent.cli import main
from agent.records.access import ACCESS
from agent.users.accounts import Users
from hashing.entries import parse_time
from hashing.retention import PURGE
from hashing.station import Station

WORDS = "correct horse 42"  # every user's password (passes check_secret)
OWN, OTHER = "100101", "100202"
USERS = (  # name, role, officer id
    ("off", "officer", OWN),
    ("sup", "supervisor", None),
    ("aud", "auditor", None),
    ("adm", "admin", None),
)
# The player: copies the file it is given (the last argument) to its first argument and
# says what it got, so the test sees exactly what a user would have played.
PLAYER = """\
import json, os, shutil, sys
out, path = sys.argv[1], sys.argv[-1]
shutil.copyfile(path, out)
with open(out + ".json", "w") as f:
    json.dump({"argv": sys.argv[1:], "mode": os.stat(path).st_mode & 0o777}, f)
sys.exit(int(os.environ.get("PLAYER_EXIT", "0")))
"""


@dataclass
class Dock:
    home: Path
    tmp: Path
    own: str  # officer OWN's recording
    other: str  # officer OTHER's recording
    secret: Path  # a 0600 file holding WORDS

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--home", str(self.home)])
        out, err = capsys.readouterr()
        return code, out, err

    def as_user(self, name: str) -> list[str]:
        return ["--as", name, "--password-file", str(self.secret)]

    def accesses(self) -> list[dict[str, object]]:
        station = Station.open(self.home)
        try:
            return [
                {"seq": e.seq, "time": e.time, **e.body}
                for e in station.ledger.entries_of_type(ACCESS)
            ]
        finally:
            station.close()

    def player(self, out: Path) -> str:
        script = self.tmp / "player.py"
        script.write_text(PLAYER)
        return shlex.join([sys.executable, str(script), str(out)])


def _ingest(capsys: pytest.CaptureFixture[str], home: Path, folder: Path, officer: str) -> str:
    folder.mkdir(parents=True)
    (folder / "CLIP0001.MP4").write_bytes(os.urandom(70_000))
    code = main(["ingest", str(folder), "--officer", officer, "--home", str(home)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.split()[0]


@pytest.fixture
def dock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Dock]:
    home = tmp_path / "home"
    assert main(["init", "--station-id", "dock-01", "--home", str(home)]) == 0
    capsys.readouterr()
    own = _ingest(capsys, home, tmp_path / "a", OWN)
    other = _ingest(capsys, home, tmp_path / "b", OTHER)
    station = Station.open(home)
    registry = Users(station)
    try:
        for name, role, officer in USERS:
            registry.add(name, role, WORDS, officer=officer, by="console:test")
    finally:
        registry.close()
        station.close()
    secret = tmp_path / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(WORDS + "\n")
    capsys.readouterr()
    yield Dock(home, tmp_path, own, other, secret)


# -- play -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "role"), [("sup", "supervisor"), ("aud", "auditor")])
def test_play_logs_first_then_hands_the_stored_file_to_the_player(
    dock: Dock, capsys: pytest.CaptureFixture[str], name: str, role: str
) -> None:
    out = dock.tmp / "seen.mp4"
    code, said, err = dock.cli(
        capsys,
        "play",
        dock.other,
        "--purpose",
        "disclosure request: GK-2026-017",
        "--player",
        dock.player(out),
        *dock.as_user(name),
    )
    assert code == 0, err
    station = Station.open(dock.home)
    stored = station.store.path_for(dock.other)
    station.close()
    assert out.read_bytes() == stored.read_bytes()
    got = json.loads(Path(f"{out}.json").read_text())
    assert got["argv"][-1] == str(stored)  # the stored copy itself, not a copy of it
    assert got["mode"] == 0o400  # read-only in the store
    (entry,) = dock.accesses()
    assert {k: entry[k] for k in ("action", "user", "role", "files", "purpose", "recipient")} == {
        "action": "play",
        "user": name,
        "role": role,
        "files": [dock.other],
        "purpose": "disclosure request: GK-2026-017",
        "recipient": None,
    }
    assert entry["detail"] == "command line: " + Path(sys.executable).name
    assert f"entry {entry['seq']}" in said


def test_an_officer_plays_their_own_and_only_their_own(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    out = dock.tmp / "seen.mp4"
    player = dock.player(out)
    code, _, err = dock.cli(
        capsys, "play", dock.own, "--purpose", "case A-1", "--player", player, *dock.as_user("off")
    )
    assert code == 0, err
    assert len(dock.accesses()) == 1
    out.unlink()
    code, _, err = dock.cli(
        capsys,
        "play",
        dock.other,
        "--purpose",
        "case A-1",
        "--player",
        player,
        *dock.as_user("off"),
    )
    assert code == 2
    assert "may only play recordings of officer 100101" in err and dock.other in err
    assert not out.exists(), "the player ran for a refused play"
    assert len(dock.accesses()) == 1


def test_admins_may_not_play(dock: Dock, capsys: pytest.CaptureFixture[str]) -> None:
    out = dock.tmp / "seen.mp4"
    code, _, err = dock.cli(
        capsys,
        "play",
        dock.own,
        "--purpose",
        "curious",
        "--player",
        dock.player(out),
        *dock.as_user("adm"),
    )
    assert code == 2
    assert "'adm' (admin) may not play" in err and "officer or supervisor or auditor" in err
    assert not out.exists() and dock.accesses() == []


def test_a_wrong_password_plays_nothing_and_logs_nothing(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = dock.tmp / "wrong"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("not the password 1\n")
    out = dock.tmp / "seen.mp4"
    code, _, err = dock.cli(
        capsys,
        "play",
        dock.own,
        "--purpose",
        "case A-1",
        "--player",
        dock.player(out),
        "--as",
        "sup",
        "--password-file",
        str(wrong),
    )
    assert code == 2 and "login failed" in err
    assert not out.exists() and dock.accesses() == []


def test_a_disabled_user_plays_nothing(dock: Dock, capsys: pytest.CaptureFixture[str]) -> None:
    assert dock.cli(capsys, "user", "disable", "sup")[0] == 0
    out = dock.tmp / "seen.mp4"
    code, _, err = dock.cli(
        capsys,
        "play",
        dock.own,
        "--purpose",
        "x",
        "--player",
        dock.player(out),
        *dock.as_user("sup"),
    )
    assert code == 2 and "login failed" in err
    assert not out.exists() and dock.accesses() == []


def test_purged_and_missing_recordings_are_refused_before_logging(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    out = dock.tmp / "seen.mp4"
    player = dock.player(out)
    station = Station.open(dock.home)
    purge = station.ledger.append(PURGE, {"sha256": dock.own, "by": "console:test"})
    missing = station.store.path_for(dock.other)
    missing.parent.chmod(0o700)
    missing.unlink()
    station.close()
    code, _, err = dock.cli(
        capsys, "play", dock.own, "--purpose", "case A-1", "--player", player, *dock.as_user("sup")
    )
    assert code == 2 and f"purged under the retention rules (ledger entry {purge.seq})" in err
    code, _, err = dock.cli(
        capsys,
        "play",
        dock.other,
        "--purpose",
        "case A-1",
        "--player",
        player,
        *dock.as_user("sup"),
    )
    assert code == 2 and "stored copy" in err and "is missing" in err
    assert not out.exists() and dock.accesses() == []


def test_bad_input_is_refused_before_logging(
    dock: Dock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = dock.tmp / "seen.mp4"
    player = dock.player(out)
    user = dock.as_user("sup")
    for argv, says in (
        (["play", dock.own, "--purpose", "  ", "--player", player], "give a purpose"),
        (["play", dock.own, "--purpose", "a\nb", "--player", player], "U+000A"),
        (["play", dock.own.upper(), "--purpose", "x", "--player", player], "not a SHA-256"),
        (["play", "0" * 64, "--purpose", "x", "--player", player], "not in the ledger"),
        (["play", dock.own, "--purpose", "x", "--player", ""], "--player is empty"),
        (["play", dock.own, "--purpose", "x", "--player", "no-such-player-7"], "not found"),
        (["play", dock.own, "--purpose", "x", "--player", "'unclosed"], "--player"),
    ):
        code, _, err = dock.cli(capsys, *argv, *user)
        assert code == 2, (argv, err)
        assert says in err, (argv, err)
    # no player anywhere: neither --player, $EVIDOCK_PLAYER nor one on PATH
    empty = dock.tmp / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("EVIDOCK_PLAYER", raising=False)
    code, _, err = dock.cli(capsys, "play", dock.own, "--purpose", "x", *user)
    assert code == 2
    assert "no player found" in err and "--player CMD" in err and "EVIDOCK_PLAYER" in err
    assert not out.exists() and dock.accesses() == []


def test_the_player_from_the_environment_and_its_failure(
    dock: Dock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = dock.tmp / "seen.mp4"
    monkeypatch.setenv("EVIDOCK_PLAYER", dock.player(out))
    code, _, err = dock.cli(capsys, "play", dock.own, "--purpose", "case A-1", *dock.as_user("aud"))
    assert code == 0, err
    assert out.exists()
    # The access was logged before the player ran: a failing player still leaves it.
    monkeypatch.setenv("PLAYER_EXIT", "3")
    code, _, err = dock.cli(capsys, "play", dock.own, "--purpose", "case A-2", *dock.as_user("aud"))
    assert code == 2 and "exited with status 3" in err
    assert [e["purpose"] for e in dock.accesses()] == ["case A-1", "case A-2"]


# -- access log ----------------------------------------------------------------------------


def _play(dock: Dock, capsys: pytest.CaptureFixture[str], name: str, sha: str, why: str) -> None:
    out = dock.tmp / f"seen-{name}-{why}"
    code, _, err = dock.cli(
        capsys, "play", sha, "--purpose", why, "--player", dock.player(out), *dock.as_user(name)
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("name", "allowed"), [("aud", True), ("adm", True), ("sup", False), ("off", False)]
)
def test_who_may_read_the_access_log(
    dock: Dock, capsys: pytest.CaptureFixture[str], name: str, allowed: bool
) -> None:
    _play(dock, capsys, "sup", dock.own, "case A-1")
    code, out, err = dock.cli(capsys, "access", "log", *dock.as_user(name))
    if allowed:
        assert code == 0, err
        assert "sup (supervisor)" in out and "case A-1" in out and dock.own in out
    else:
        assert code == 2 and out == ""
        assert "may not view_access_log" in err and "auditor or admin" in err


def test_access_log_filters_and_json(dock: Dock, capsys: pytest.CaptureFixture[str]) -> None:
    _play(dock, capsys, "sup", dock.own, "case A-1")
    _play(dock, capsys, "aud", dock.other, "spot check 4")
    _play(dock, capsys, "off", dock.own, "case A-2")
    entries = dock.accesses()
    assert [e["user"] for e in entries] == ["sup", "aud", "off"]

    def log(*argv: str) -> list[dict[str, object]]:
        code, out, err = dock.cli(capsys, "access", "log", "--json", *argv, *dock.as_user("aud"))
        assert code == 0, err
        found: list[dict[str, object]] = json.loads(out)
        return found

    everything = log()
    assert [r["seq"] for r in everything] == [e["seq"] for e in entries]
    first = everything[0]
    assert {k: first[k] for k in ("action", "user", "role", "files", "purpose")} == {
        "action": "play",
        "user": "sup",
        "role": "supervisor",
        "files": [dock.own],
        "purpose": "case A-1",
    }
    assert [r["user"] for r in log("--user", "aud")] == ["aud"]
    assert [r["user"] for r in log("--file", dock.own)] == ["sup", "off"]
    assert [r["user"] for r in log("--file", dock.other, "--user", "sup")] == []
    t0, t2 = (parse_time(str(entries[i]["time"])) for i in (0, 2))
    after = (t2 + timedelta(seconds=1)).isoformat()
    assert [r["user"] for r in log("--from", t0.isoformat(), "--to", after)] == [
        "sup",
        "aud",
        "off",
    ]
    assert log("--to", t0.isoformat()) == []  # the end is exclusive
    assert log("--from", after) == []
    # the same times in another zone are the same instants
    east = t0.astimezone(timezone(timedelta(hours=8))).isoformat()
    assert [r["user"] for r in log("--from", east)] == ["sup", "aud", "off"]

    code, out, _ = dock.cli(capsys, "access", "log", "--user", "nobody", *dock.as_user("adm"))
    assert code == 0 and "no access recorded" in out
    # reading the log is not itself an access to recordings
    assert len(dock.accesses()) == 3


def test_access_log_refuses_bad_filters(dock: Dock, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, says in (
        (["--file", "abc"], "not a SHA-256"),
        (["--from", "yesterday"], "not a time"),
        (["--from", "2026-03-02T08:00:00"], "give the time zone"),
        (["--from", "2026-03-02T08:00:00Z", "--to", "2026-03-01T08:00:00Z"], "is not after"),
    ):
        code, out, err = dock.cli(capsys, "access", "log", *argv, *dock.as_user("aud"))
        assert code == 2 and says in err and out == "", (argv, err)


@pytest.mark.parametrize("command", [["access", "log"], ["play"]], ids=" ".join)
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: evidock" in out and "--as NAME" in out and "--password-file" in out
