"""Every `evidock` command, through main([...]) as scripts use it (style.md 18)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from agent.cli import build_parser, main
from hashing.checkpoint import Checkpoint
from hashing.entries import Entry
from hashing.merkle import leaf_hash, verify_consistency, verify_inclusion
from hashing.note import NoteVerifier, open_note

COMMANDS = [
    ["init"],
    ["key", "show"],
    ["key", "rotate"],
    ["ingest"],
    ["checkpoint"],
    ["ledger", "entries"],
    ["ledger", "verify"],
    ["prove", "inclusion"],
    ["prove", "consistency"],
    ["export"],
    ["verify"],
    ["demo"],
    ["device", "assign"],
    ["device", "list"],
    ["tag"],
    ["show"],
    ["offload"],
    ["status"],
    ["agent"],
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("EVIDOCK_HOME", str(home))
    return home


@pytest.fixture
def footage(tmp_path: Path) -> Path:
    folder = tmp_path / "DCIM" / "100MEDIA"
    folder.mkdir(parents=True)
    for i, size in enumerate((10, 3 << 20, 0)):
        (folder / f"CLIP{i:04d}.MP4").write_bytes(os.urandom(size))
    return tmp_path / "DCIM"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert "usage: evidock" in out
    assert "--home" in out


def test_parser_knows_exactly_the_documented_commands() -> None:
    text = build_parser().format_help()
    for name in ("init", "key", "ingest", "checkpoint", "ledger", "prove", "export", "verify"):
        assert name in text


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    assert run(capsys, "no-such-command")[0] == 2
    assert run(capsys, "export", "--out", "x")[0] == 2  # no selection
    code, _, err = run(capsys, "key", "show")
    assert code == 2
    assert "evidock init" in err  # says what to do


def test_init_twice_refuses(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    assert run(capsys, "init", "--station-id", "ST-1")[0] == 0
    code, _, err = run(capsys, "init", "--station-id", "ST-1")
    assert code == 2
    assert "already" in err
    assert run(capsys, "init", "--station-id", "bad id", "--home", str(home.parent / "h2"))[0] == 2


def test_state_is_private(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init", "--station-id", "ST-1")
    assert (home / "keys").stat().st_mode & 0o777 == 0o700
    assert (home / "keys" / "station.key").stat().st_mode & 0o777 == 0o600
    for path in [home, *home.rglob("*")]:
        assert path.stat().st_mode & 0o007 == 0, f"{path} is world-accessible"


def test_home_option_beats_environment(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    assert run(capsys, "init", "--station-id", "ST-2", "--home", str(other))[0] == 0
    assert (other / "ledger.db").exists()
    assert not home.exists()


def test_full_cycle(
    capsys: pytest.CaptureFixture[str], home: Path, footage: Path, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "init", "--station-id", "ST-1", "--origin", "example.org/dock/ST-1")
    assert code == 0
    code, vkey, _ = run(capsys, "key", "show")
    verifier = NoteVerifier.parse(vkey.strip())
    assert verifier.name == "example.org/dock/ST-1"

    code, out, _ = run(
        capsys, "ingest", str(footage), "--case", "C-1", "--officer", "100001", "--device", "CAM1"
    )
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    for line in lines:
        sha, path = line.split("  ", 1)
        assert len(sha) == 64
        assert Path(path).exists()
        assert (home / "store" / sha[:2] / sha[2:4] / sha).stat().st_mode & 0o777 == 0o400

    # The same files from the same source again: nothing new.
    code, _, _ = run(capsys, "checkpoint")
    size_before = len(run(capsys, "ledger", "entries")[1].splitlines())
    code, again, _ = run(
        capsys, "ingest", str(footage), "--case", "C-1", "--officer", "100001", "--device", "CAM1"
    )
    assert code == 0
    assert again == out
    assert len(run(capsys, "ledger", "entries")[1].splitlines()) == size_before

    code, note, _ = run(capsys, "checkpoint")
    assert code == 0
    checkpoint = Checkpoint.parse(open_note(note, [verifier]).text)
    assert checkpoint.size == size_before

    raw = subprocess.run(
        [".venv/bin/evidock", "ledger", "entries"],
        capture_output=True,
        check=True,
        cwd=Path(__file__).parents[4],
        env={**os.environ, "EVIDOCK_HOME": str(home)},
    ).stdout
    entries = [Entry.parse(line) for line in raw.split(b"\n")[:-1]]
    assert [e.seq for e in entries] == list(range(size_before))
    assert entries[1].body["case"] == "C-1"
    assert entries[1].body["officer"] == "100001"
    code, part, _ = run(capsys, "ledger", "entries", "--start", "1", "--end", "2")
    assert part.encode() == entries[1].raw + b"\n"

    for index in range(checkpoint.size):
        code, text, _ = run(capsys, "prove", "inclusion", str(index))
        proof = json.loads(text)
        assert proof["tree_size"] == checkpoint.size
        assert base64.b64decode(proof["root"]) == checkpoint.root
        verify_inclusion(
            leaf_hash(entries[index].raw),
            index,
            checkpoint.size,
            [base64.b64decode(h) for h in proof["hashes"]],
            checkpoint.root,
        )
    code, text, _ = run(capsys, "prove", "consistency", "2")
    proof = json.loads(text)
    verify_consistency(
        2,
        checkpoint.size,
        base64.b64decode(proof["old_root"]),
        checkpoint.root,
        [base64.b64decode(h) for h in proof["hashes"]],
    )
    assert run(capsys, "prove", "inclusion", "99")[0] == 2
    assert run(capsys, "prove", "consistency", "9", "3")[0] == 2

    secret = tmp_path / "sup.secret"
    secret.write_text("correct horse 42\n")
    secret.chmod(0o600)
    assert (
        run(capsys, "user", "add", "sup-1", "--role", "supervisor", "--password-file", str(secret))[
            0
        ]
        == 0
    )
    as_sup = ("--purpose", "test", "--as", "sup-1", "--password-file", str(secret))
    out_dir = tmp_path / "bundle"
    code, text, _ = run(capsys, "export", "--case", "C-1", "--out", str(out_dir), *as_sup)
    assert code == 0
    assert "exported 3 recording(s)" in text
    key_file = tmp_path / "station.vkey"
    key_file.write_text(vkey)
    code, text, _ = run(capsys, "verify", str(out_dir), "--key", str(key_file), "--json")
    report = json.loads(text)
    assert code == 0 and report["ok"], report
    sums = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], check=False, cwd=out_dir)
    assert sums.returncode == 0

    # The export is itself on the record (Art. 20 (3)).
    code, text, _ = run(capsys, "ledger", "entries")
    assert json.loads(text.splitlines()[-1])["type"] == "export"

    assert (
        run(capsys, "export", "--case", "NO-SUCH", "--out", str(tmp_path / "b2"), *as_sup)[0] == 2
    )
    assert run(capsys, "export", "--all", "--out", str(out_dir), *as_sup)[0] == 2  # not empty

    code, text, _ = run(capsys, "ledger", "verify", "--json")
    assert code == 0, text
    assert json.loads(text)["checked"]["files intact"] == "3 of 3"

    code, text, _ = run(capsys, "key", "rotate")
    assert code == 0
    new_key = NoteVerifier.parse(text.splitlines()[-1])
    assert new_key != verifier
    assert run(capsys, "ledger", "verify")[0] == 0
    after = tmp_path / "after"
    assert run(capsys, "export", "--all", "--out", str(after), *as_sup)[0] == 0
    # The auditor's old key still verifies, through the rotation entry signed by both keys.
    assert run(capsys, "verify", str(after), "--key", vkey.strip())[0] == 0
    assert run(capsys, "verify", str(after), "--key", new_key.vkey)[0] == 0


def test_ingest_reports_bad_paths_and_goes_on(
    capsys: pytest.CaptureFixture[str], home: Path, footage: Path, tmp_path: Path
) -> None:
    run(capsys, "init", "--station-id", "ST-1")
    code, out, err = run(capsys, "ingest", str(tmp_path / "missing"), str(footage))
    assert code == 2
    assert "does not exist" in err
    assert len(out.splitlines()) == 3


def test_verify_exit_codes(capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path) -> None:
    run(capsys, "init", "--station-id", "ST-1")
    vkey = run(capsys, "key", "show")[1].strip()
    code, _, err = run(capsys, "verify", str(tmp_path), "--key", vkey)
    assert code == 3  # not a bundle: could not verify
    code, _, err = run(capsys, "verify", str(tmp_path), "--key", str(tmp_path / "nokey"))
    assert code == 3
    assert "cannot read" in err
    code, _, err = run(capsys, "verify", str(tmp_path), "--key", "name+00000000+AAAA")
    assert code == 3


def test_records_commands(capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path) -> None:
    from drivers.demo import DemoCamera, Gap

    run(capsys, "init", "--station-id", "ST-1")
    cam = DemoCamera(tmp_path / "cam", "CAM7", size=(160, 120))
    cam.record(3, 1, gap=Gap(after=1, missing=2, seconds=1200))

    code, text, _ = run(capsys, "offload", str(cam.folder), "--device", "CAM7", "--json")
    result = json.loads(text)
    assert code == 0, result
    assert result["state"] == "committed" and result["safe_to_unplug"]
    assert result["new"] == 3 and result["officer"] is None
    assert any("not registered" in a for a in result["anomalies"])
    assert any("clip numbers missing" in a for a in result["anomalies"])

    assert run(capsys, "device", "assign", "CAM7", "--officer", "200002", "--model", "X1")[0] == 0
    code, text, _ = run(capsys, "device", "list", "--json")
    assert json.loads(text)[0]["officer"] == "200002"
    assert run(capsys, "device", "assign", "CAM7")[0] == 2  # neither --officer nor --unassign

    entries = [json.loads(line) for line in run(capsys, "ledger", "entries")[1].splitlines()]
    shas = [e["body"]["sha256"] for e in entries if e["type"] == "ingest"]
    assert run(capsys, "tag", shas[0], "--case", "C-1", "--kind", "inspection")[0] == 0
    code, _, err = run(
        capsys, "tag", shas[0], "--case", "C-1", "--kind", "inspection", "--retention", "evidence"
    )
    assert code == 2 and "--reason" in err
    code, text, _ = run(
        capsys,
        "tag",
        "--device",
        "CAM7",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
        "--case",
        "C-2",
        "--kind",
        "evidence_preservation",
        "--retention",
        "evidence",
        "--reason",
        "complaint",
    )
    assert code == 0 and "tagged 3 recording(s)" in text
    assert run(capsys, "tag", "--device", "CAM7", "--case", "C-2", "--kind", "other")[0] == 2
    assert run(capsys, "tag", "0" * 64, "--case", "C-1", "--kind", "other")[0] == 2

    code, text, _ = run(capsys, "show", shas[0], "--json")
    info = json.loads(text)
    assert [t["case"] for t in info["tags"]] == ["C-1", "C-2"]  # a re-tag is a new entry
    assert info["media"]["decodes"] is True and info["media"]["width"] == 160
    assert info["device"] == "CAM7"
    code, text, _ = run(capsys, "show", shas[0])
    assert "tag         case C-2, evidence_preservation, evidence" in text
    assert run(capsys, "show", "f" * 64)[0] == 2

    # Re-docking: nothing new, the officer now bound, the same anomalies not repeated.
    code, text, _ = run(capsys, "offload", str(cam.folder), "--device", "CAM7", "--json")
    again = json.loads(text)
    assert again["new"] == 0 and again["skipped"] == 3 and again["officer"] == "200002"
    assert again["anomalies"] == []
    assert run(capsys, "ledger", "verify")[0] == 0


def test_status_without_agent(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init", "--station-id", "ST-1")
    code, _, err = run(capsys, "status")
    assert code == 2 and "evidock agent" in err


def test_agent_runs_and_stops_on_sigterm(home: Path, tmp_path: Path) -> None:
    import signal
    import time

    from drivers.demo import DemoCamera

    root = tmp_path / "dock"
    root.mkdir()
    cfg = tmp_path / "evidock.toml"
    cfg.write_text(
        f'[folder]\nroots = ["{root}"]\nquiet_s = 0\n[usb]\nenabled = false\n[offload]\nfree_margin_mb = 0\n'
    )
    env = {**os.environ, "EVIDOCK_HOME": str(home), "EVIDOCK_CONFIG": str(cfg)}
    evidock = str(Path(__file__).parents[4] / ".venv" / "bin" / "evidock")
    subprocess.run(
        [evidock, "init", "--station-id", "ST-1"], env=env, check=True, capture_output=True
    )
    agent = subprocess.Popen([evidock, "agent"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        cam = DemoCamera(tmp_path / "cam", "CAM9", size=(160, 120))
        cam.record(2, 1)
        cam.plug_into(root)
        deadline = time.monotonic() + 30
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            done = subprocess.run(
                [evidock, "status", "--json"], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode == 0:
                status = json.loads(done.stdout)
                sessions = status.get("sessions")
                if isinstance(sessions, list) and sessions and sessions[0].get("safe_to_unplug"):
                    break
            time.sleep(0.2)
        assert status.get("running") is True, status
        text = subprocess.run(
            [evidock, "status"], env=env, capture_output=True, text=True, check=False
        ).stdout
        assert "可以拔出" in text and "CAM9" in text
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    verify = subprocess.run(
        [evidock, "ledger", "verify"], env=env, capture_output=True, check=False
    )
    assert verify.returncode == 0


def test_logs_carry_journald_priorities_under_systemd() -> None:
    import logging

    from agent.cli import JournalFormatter

    record = logging.LogRecord("evidock", logging.ERROR, __file__, 1, "a\nb %s", ("c",), None)
    assert JournalFormatter().format(record) == "<3>ERROR evidock: a\n<3>b c"
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    assert JournalFormatter().format(record).startswith("<4>WARNING")


def test_an_error_says_what_to_do_on_a_line_of_its_own(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert run(capsys, "init", "--station-id", "dock-01")[0] == 0
    code, _, err = run(capsys, "user", "passwd", "nobody")
    assert code == 2
    assert err.splitlines() == [
        "evidock: no user 'nobody'",
        "evidock: what to do: see `evidock user list`",
    ]


def test_a_transient_failure_exits_4(
    capsys: pytest.CaptureFixture[str],
    home: Path,
    footage: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that is not there: nothing is lost (the outbox keeps the queue) and
    the caller is told to try again, not that it used the command wrongly."""
    assert run(capsys, "init", "--station-id", "dock-01")[0] == 0
    assert run(capsys, "ingest", str(footage))[0] == 0
    cfg = tmp_path / "evidock.toml"
    cfg.write_text('[mqtt]\nhost = "127.0.0.1"\nport = 1\ntls = false\n')  # nothing listens
    monkeypatch.setenv("EVIDOCK_CONFIG", str(cfg))
    code, out, _ = run(capsys, "upload", "drain", "--timeout", "1")
    assert code == 4, out
    assert "not all recordings receipted" in out
    code, out, _ = run(capsys, "upload", "status", "--json")
    assert code == 0 and json.loads(out)["queue"]["unreceipted"] == 3, out


def test_logging_is_set_on_the_projects_loggers_only(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    import logging

    root = logging.getLogger()
    before = list(root.handlers), root.level
    for _ in range(2):  # a second run replaces its handler, never adds one
        run(capsys, "--verbose", "init", "--station-id", "dock-01")
    assert (list(root.handlers), root.level) == before
    agent_log = logging.getLogger("agent")
    assert agent_log.level == logging.INFO
    assert sum(type(h).__name__ == "_StderrHandler" for h in agent_log.handlers) == 1
