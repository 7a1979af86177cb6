"""`evidock spotcheck` through main([...]) on a real station: the sample is
recomputed here with hashlib and an Ed25519 verifier from `evidock ledger
entries` and the draw's checkpoint note, redraws, undrawn requests and findings
stay on the record, roles hold."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.cli import main
from agent.records.access import record_access
from agent.users.accounts import User
from hashing.checkpoint import SignedCheckpoint
from hashing.errors import ConfigError
from hashing.station import Station
from tests.unit.agent.records.test_spotcheck import (
    OFFICER_A,
    OFFICER_B,
    SECRET,
    add_users,
    ingest_at,
)

ROOT = Path(__file__).parents[2]
START = datetime(2024, 5, 1, tzinfo=UTC)


@dataclass
class Dock:
    station: Station
    users: dict[str, User]
    secret: Path
    shas: dict[str, list[str]]

    @property
    def home(self) -> Path:
        return self.station.home

    def run(
        self, capsys: pytest.CaptureFixture[str], *argv: str, user: str | None = None
    ) -> tuple[int, str, str]:
        extra = ["--as", user, "--password-file", str(self.secret)] if user else []
        code = main([*argv, "--home", str(self.home), *extra])
        out, err = capsys.readouterr()
        return code, out, err

    def size(self) -> int:
        return self.station.ledger.size()


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    station = Station.init(tmp_path / "home", "dock-01")
    users = add_users(station)
    times = [START + timedelta(hours=3 * i) for i in range(20)]
    shas = {
        OFFICER_A: ingest_at(
            station, tmp_path / "a", officer=OFFICER_A, device="CAM-A", times=times, seed=1
        ),
        OFFICER_B: ingest_at(
            station, tmp_path / "b", officer=OFFICER_B, device="CAM-B", times=times[:10], seed=2
        ),
    }
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    yield Dock(station, users, secret, shas)
    station.close()


def ledger_entries(home: Path) -> bytes:
    return subprocess.run(
        [str(ROOT / ".venv/bin/evidock"), "ledger", "entries", "--home", str(home)],
        capture_output=True,
        check=True,
    ).stdout


# An auditor's own RFC 9162 tree hash, signature check and rule: hashlib and an
# Ed25519 verifier, nothing of evidock's.
def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def independent_sample(raw: bytes, draw_seq: int) -> tuple[int, list[str]]:
    """The population size and sample of draw ``draw_seq``, recomputed from
    `evidock ledger entries` output by the rule "evidock spotcheck v2"."""
    lines = raw.split(b"\n")[:-1]
    entries = [json.loads(line) for line in lines]
    draw = entries[draw_seq]
    assert draw["type"] == "spotcheck_draw"
    request = entries[draw["body"]["request"]]
    assert request["type"] == "spotcheck_request"
    assert request["body"]["rule"] == "evidock spotcheck v2"
    q = request["seq"]
    # The checkpoint: signed after the request and before the draw, over these entries.
    text, _, signature_lines = draw["body"]["checkpoint"].partition("\n\n")
    text += "\n"
    size, root = int(text.split("\n")[1]), base64.b64decode(text.split("\n")[2])
    assert q < size <= draw_seq
    assert _mth([hashlib.sha256(b"\x00" + line).digest() for line in lines[:size]]) == root
    # The station key in force: the genesis entry's (this dock never rotated it).
    assert not any(e["type"] == "key_rotation" for e in entries)
    name, key_id, encoded = entries[0]["body"]["key"].split("+", 2)
    public = base64.b64decode(encoded)
    assert public[0] == 1 and len(public) == 33
    assert hashlib.sha256(name.encode() + b"\n" + public).digest()[:4].hex() == key_id
    (signature,) = [
        blob[4:]
        for signer, _, b64 in (
            line.removeprefix("\u2014 ").rpartition(" ") for line in signature_lines.splitlines()
        )
        for blob in [base64.b64decode(b64)]
        if signer == name and blob[:4].hex() == key_id
    ]
    Ed25519PublicKey.from_public_bytes(public[1:]).verify(signature, text.encode())
    # The population: ingest entries before the request, less purged ones, by criteria.
    criteria = request["body"]
    start, end = _utc(criteria["from"]), _utc(criteria["to"])
    population, purged = set(), set()
    for entry in entries[:q]:
        body = entry["body"]
        if entry["type"] == "purge":
            purged.add(body["sha256"])
        if entry["type"] != "ingest":
            continue
        when = _utc(body.get("recorded_at") or body["source_mtime"])
        assert when is not None
        if criteria["officer"] is not None and body["officer"] != criteria["officer"]:
            continue
        if (start is not None and when < start) or (end is not None and when >= end):
            continue
        population.add(body["sha256"])
    population -= purged
    k = math.ceil(Decimal(criteria["percent"]) * len(population) / 100)
    ranked = sorted(
        population,
        key=lambda d: hashlib.sha256(
            b"evidock spotcheck v2\n" + signature + bytes.fromhex(d)
        ).digest(),
    )
    return len(population), ranked[:k]


def test_the_drawn_sample_is_what_anyone_recomputes(
    dock: Dock, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = dock.run(
        capsys,
        "spotcheck",
        "draw",
        "--percent",
        "12.5",
        "--officer",
        OFFICER_A,
        "--from",
        "2024-05-01T06:00:00Z",
        "--to",
        "2024-05-03",
        "--tz",
        "+08:00",
        "--json",
        user="audrey",
    )
    assert code == 0, err
    drawn = json.loads(out)
    assert drawn["rule"] == "evidock spotcheck v2"
    # --to 2024-05-03 in +08:00 includes that day: up to 2024-05-03T16:00Z.
    assert (drawn["from"], drawn["to"]) == ("2024-05-01T06:00:00Z", "2024-05-03T16:00:00Z")
    raw = ledger_entries(dock.home)
    n, sample = independent_sample(raw, drawn["draw"])
    assert n == drawn["population"] == 20 - 2  # hours 0 and 3 are before 06:00
    assert sample == drawn["sample"] and len(sample) == 3
    assert drawn["size"] == int(drawn["checkpoint"].split("\n")[1])
    # The checkpoint is one the dock signed and published.
    assert drawn["checkpoint"] in [note for _, note, _ in dock.station.ledger.checkpoints()]

    entries = tmp_path / "entries.jsonl"
    entries.write_bytes(raw)
    key = tmp_path / "station.vkey"
    key.write_text(dock.station.keys.load().verifier.vkey)
    recompute = ["spotcheck", "recompute", "--entries", str(entries), "--draw", str(drawn["draw"])]
    code, out, err = dock.run(capsys, *recompute, "--key", str(key), "--json")
    assert code == 0, err
    checked = json.loads(out)
    assert checked["sample"] == sample and checked["matches"] is True
    assert checked["key_anchored"] is True and checked["request"] == drawn["request"]
    code, out, err = dock.run(capsys, *recompute)
    assert code == 0, err
    assert f"draw {drawn['draw']}: matches the rule" in out
    assert "give --key to anchor it" in out
    # Another station's key: the draw is not taken on this dock's word.
    other = Station.init(tmp_path / "other", "dock-02")
    try:
        other_key = other.keys.load().verifier.vkey
    finally:
        other.close()
    code, _, err = dock.run(capsys, *recompute, "--key", other_key)
    assert code == 1 and "among the keys you trust" in err
    # A key text is a key: a file planted under the key's very name (it holds '/')
    # cannot swap in another key for the one the auditor typed.
    genuine = dock.station.keys.load().verifier.vkey
    planted = tmp_path / "planted"
    (planted / genuine).parent.mkdir(parents=True)
    (planted / genuine).write_text(other_key + "\n")
    monkeypatch.chdir(planted)
    code, out, err = dock.run(capsys, *recompute, "--key", genuine, "--json")
    assert code == 0, err
    assert json.loads(out)["key_anchored"] is True
    monkeypatch.chdir(tmp_path)
    # The recorded sample edited: recomputation disagrees.
    lines = raw.split(b"\n")
    outside = next(s for s in dock.shas[OFFICER_A][2:] if s not in sample)
    edited = lines[drawn["draw"]].replace(sample[0].encode(), outside.encode())
    entries.write_bytes(b"\n".join([*lines[: drawn["draw"]], edited, *lines[drawn["draw"] + 1 :]]))
    code, out, err = dock.run(capsys, *recompute, "--key", str(key))
    assert code == 1, err
    assert "records a different sample than the rule gives" in out
    # An entry changed after the fact: the entries no longer match the checkpoint.
    i = next(i for i, line in enumerate(lines) if b'"type":"ingest"' in line)
    lines[i] = lines[i].replace(OFFICER_A.encode(), OFFICER_B.encode())
    entries.write_bytes(b"\n".join(lines))
    code, _, err = dock.run(capsys, *recompute)
    assert code == 1
    assert "do not match the checkpoint" in err
    code, _, err = dock.run(
        capsys, "spotcheck", "recompute", "--entries", str(tmp_path / "nope"), "--draw", "1"
    )
    assert code == 3 and "cannot read" in err


def test_a_redraw_is_refused_without_a_reason_and_shows_everywhere(
    dock: Dock, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = dock.run(capsys, "spotcheck", "draw", "--percent", "20", "--json", user="audrey")
    assert code == 0
    first = json.loads(out)
    size = dock.size()
    code, _, err = dock.run(
        capsys, "spotcheck", "draw", "--percent", "20", "--officer", OFFICER_A, user="aubrey"
    )
    assert code == 2
    assert f"overlaps earlier request(s) {first['request']} " in err and "--redraw-reason" in err
    assert dock.size() == size
    code, out, err = dock.run(
        capsys,
        "spotcheck",
        "draw",
        "--percent",
        "20",
        "--officer",
        OFFICER_A,
        "--redraw-reason",
        "wanted officer A only",
        "--json",
        user="aubrey",
    )
    assert code == 0, err
    second = json.loads(out)
    assert second["redraw_of"] == first["request"] and second["reason"] == "wanted officer A only"
    request = json.loads(dock.station.ledger.entry(second["request"]).raw)
    assert request["type"] == "spotcheck_request"
    assert request["body"]["redraw_of"] == first["request"]

    code, out, _ = dock.run(capsys, "spotcheck", "list", user="sam")
    assert code == 0
    assert (
        f"REDRAW of draw {first['draw']} (request {first['request']}): wanted officer A only" in out
    )
    assert f"REDRAWN by draw {second['draw']} (request {second['request']})" in out
    code, out, _ = dock.run(capsys, "spotcheck", "show", str(first["draw"]), user="audrey")
    dropped = [s for s in first["sample"] if s not in second["sample"]]
    assert dropped
    for sha in dropped:
        assert f"{sha}  not reviewed (dropped by redraw {second['draw']})" in out
    today = datetime.now(UTC).date()
    report_csv = tmp_path / "spot.csv"
    code, out, _ = dock.run(
        capsys,
        "spotcheck",
        "report",
        "--from",
        str(today - timedelta(days=1)),
        "--to",
        str(today + timedelta(days=1)),
        "--tz",
        "Z",
        "--csv",
        str(report_csv),
        "--json",
        user="sam",
    )
    assert code == 0
    report = json.loads(out)
    assert report["totals"]["requests"] == 2 and report["totals"]["redraws"] == 1
    assert report["totals"]["not_drawn"] == 0
    assert report["totals"]["dropped_by_redraw"] == len(dropped)
    assert report["totals"]["sampled"] == len(first["sample"]) + len(second["sample"])
    text = report_csv.read_text()
    assert text.splitlines()[0].startswith(
        "request,draw,status,time,by,officer,from,to,percent,population,sample,reviewed"
    )
    assert "wanted officer A only" in text


def test_a_request_left_undrawn_is_listed_and_a_new_draw_is_a_redraw(
    dock: Dock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def key_gone(self: Station) -> SignedCheckpoint:
        raise ConfigError(f"{self.keys.key_path}: cannot read the station key")

    with monkeypatch.context() as m:
        m.setattr(Station, "checkpoint", key_gone)
        code, _, err = dock.run(
            capsys, "spotcheck", "draw", "--percent", "10", "--officer", OFFICER_B, user="audrey"
        )
    assert code == 2 and "cannot read the station key" in err
    (request,) = dock.station.ledger.entries_of_type("spotcheck_request")
    assert not list(dock.station.ledger.entries_of_type("spotcheck_draw"))
    code, out, _ = dock.run(capsys, "spotcheck", "list", user="sam")
    assert code == 0
    assert f"     -  {request.seq:>7}  " in out and "requested, not drawn" in out
    code, _, err = dock.run(capsys, "spotcheck", "show", str(request.seq), user="sam")
    assert code == 2 and "never drawn" in err
    code, _, err = dock.run(
        capsys, "spotcheck", "draw", "--percent", "10", "--officer", OFFICER_B, user="audrey"
    )
    assert code == 2 and f"overlaps earlier request(s) {request.seq} " in err
    code, out, err = dock.run(
        capsys,
        "spotcheck",
        "draw",
        "--percent",
        "10",
        "--officer",
        OFFICER_B,
        "--redraw-reason",
        "the first draw stopped",
        "--json",
        user="audrey",
    )
    assert code == 0, err
    assert json.loads(out)["redraw_of"] == request.seq
    code, out, _ = dock.run(capsys, "spotcheck", "list", "--json", user="sam")
    rows = {row["request"]: row for row in json.loads(out)}
    assert rows[request.seq]["status"] == "requested, not drawn"
    assert rows[request.seq]["redrawn_by"] == [json.loads(out)[1]["request"]]
    assert [row["status"] for row in rows.values()] == ["requested, not drawn", "drawn"]


def test_findings_need_playback_by_the_reviewer(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = dock.run(
        capsys,
        "spotcheck",
        "draw",
        "--percent",
        "10",
        "--officer",
        OFFICER_B,
        "--json",
        user="audrey",
    )
    draw = json.loads(out)
    clip = draw["sample"][0]
    size = dock.size()
    finding = [
        "spotcheck",
        "finding",
        str(draw["draw"]),
        clip,
        "--result",
        "conduct_issue",
        "--note",
        "officer shouts",
    ]
    code, _, err = dock.run(capsys, *finding, user="audrey")
    assert code == 2
    assert f'evidock play {clip} --purpose "spot check {draw["draw"]}" --as audrey' in err
    record_access(dock.station, dock.users["aubrey"], "play", [clip], f"spot check {draw['draw']}")
    code, _, err = dock.run(capsys, *finding, user="audrey")
    assert code == 2 and "has not played" in err
    assert dock.size() == size + 1  # only aubrey's playback
    play = record_access(
        dock.station, dock.users["audrey"], "play", [clip], f"spot check {draw['draw']}"
    )
    code, out, err = dock.run(capsys, *finding, user="audrey")
    assert code == 0, err
    entry = json.loads(dock.station.ledger.entry(dock.size() - 1).raw)
    assert entry["type"] == "spotcheck_finding"
    assert entry["body"] == {
        "draw": draw["draw"],
        "sha256": clip,
        "result": "conduct_issue",
        "note": "officer shouts",
        "by": "audrey",
        "played": play.seq,
    }
    code, out, _ = dock.run(
        capsys, *finding[:-1], "officer shouts; apologises at 03:10", user="audrey"
    )
    assert code == 0 and f"amends finding {entry['seq']}" in out
    code, out, _ = dock.run(capsys, "spotcheck", "show", str(draw["draw"]), "--json", user="audrey")
    shown = json.loads(out)
    assert shown["reviewed"] == 1 and shown["amendments"] == 1
    assert [p["user"] for p in shown["clips"][0]["plays"]] == ["aubrey", "audrey"]


@pytest.mark.parametrize("name", ["olive", "sam", "adam"])
def test_only_auditors_draw_and_record_findings(
    dock: Dock, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, _ = dock.run(capsys, "spotcheck", "draw", "--percent", "10", "--json", user="audrey")
    draw = json.loads(out)
    size = dock.size()
    code, _, err = dock.run(
        capsys, "spotcheck", "draw", "--percent", "5", "--officer", "X", user=name
    )
    assert code == 2 and "may not spotcheck" in err
    code, _, err = dock.run(
        capsys,
        "spotcheck",
        "finding",
        str(draw["draw"]),
        draw["sample"][0],
        "--result",
        "ok",
        user=name,
    )
    assert code == 2 and "may not spotcheck" in err
    assert [
        t
        for (t,) in dock.station.ledger.execute("SELECT type FROM entries WHERE seq >= ?", (size,))
    ] == []
    code, _, err = dock.run(capsys, "spotcheck", "list", user=name)
    assert (code == 0) == (name == "sam"), err


def test_a_wrong_password_is_refused(
    dock: Dock, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password 9")
    wrong.chmod(0o600)
    code = main(
        [
            "spotcheck",
            "draw",
            "--percent",
            "5",
            "--home",
            str(dock.home),
            "--as",
            "audrey",
            "--password-file",
            str(wrong),
        ]
    )
    assert code == 2
    assert not list(dock.station.ledger.entries_of_type("spotcheck_request"))
    assert not list(dock.station.ledger.entries_of_type("spotcheck_draw"))


@pytest.mark.parametrize(
    "command",
    [
        ["spotcheck", "draw"],
        ["spotcheck", "finding"],
        ["spotcheck", "list"],
        ["spotcheck", "show"],
        ["spotcheck", "report"],
        ["spotcheck", "recompute"],
    ],
    ids=" ".join,
)
def test_every_spotcheck_command_has_help(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: evidock" in out and "--home" in out
