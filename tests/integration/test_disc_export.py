"""Exports to write-once media, disclosures and the year-end archive, through the
command line (`evidock export|disclose|archive`, agent.cli.exports).

Real parts: a station on disk; users logging in with their passwords from 0600
files; xorriso making the ISO 9660 image; the image mounted read-only (the
kernel's iso9660 through a loop device where it has one, else Debian's fuseiso);
coreutils `sha256sum -c`; and the verifier the bundle carries, run by Debian's
/usr/bin/python3 with its python3-cryptography, outside the virtual environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records.access import ACCESS
from agent.records.exports import disc_image, volume_label
from agent.users.accounts import Users
from hashing.entries import EXPORT, parse_time
from hashing.station import Station
from hashing.verify import NOTICE, SUMMARY
from tests.integration._support import MIB, flip_byte

WORDS = "correct horse 42"
CASE = "case-2025-0042"
DEBIAN_PYTHON = Path("/usr/bin/python3")
SAFE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{8,64}")


@dataclass
class Dock:
    home: Path
    tmp: Path
    key_file: Path
    key: str
    shas: list[str]  # the CASE recordings, in ingest order
    secrets: dict[str, Path]  # user -> their 0600 password file

    def size(self) -> int:
        station = Station.open(self.home)
        try:
            return station.ledger.size()
        finally:
            station.close()

    def entry_body(self, seq: int) -> Mapping[str, Any]:
        station = Station.open(self.home)
        try:
            return station.ledger.entry(seq).body
        finally:
            station.close()

    def as_user(self, name: str) -> list[str]:
        return ["--home", str(self.home), "--as", name, "--password-file", str(self.secrets[name])]


def _ingest(station: Station, path: Path, data: bytes, case: str | None, year: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    when = datetime(year, 3, 1, 9, 0, tzinfo=UTC).timestamp()
    os.utime(path, (when, when))
    (result,) = list(ingest_paths(station, [path], Binding("100101", "CAM-1", case)))
    assert isinstance(result, IngestResult), result
    return result.sha256


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    home = tmp_path / "home"
    station = Station.init(home, "dock-01")
    rng = random.Random(7)
    shas = [
        _ingest(station, tmp_path / "src" / f"CLIP{i:04d}.MP4", rng.randbytes(size), CASE, 2025)
        for i, size in enumerate((2 * MIB + 5, 70_000, 1_000))
    ]
    users = Users(station)
    secrets: dict[str, Path] = {}
    try:
        for name, role in (
            ("sup", "supervisor"),
            ("aud", "auditor"),
            ("off", "officer"),
            ("adm", "admin"),
            ("gone", "supervisor"),
        ):
            users.add(
                name,
                role,
                WORDS,
                officer="100101" if role == "officer" else None,
                by="console:test",
            )
            secrets[name] = tmp_path / f"{name}.secret"
            secrets[name].write_text(WORDS + "\n")
            secrets[name].chmod(0o600)
        users.disable("gone", by="console:test")
    finally:
        users.close()
    key = station.keys.load().verifier.vkey
    station.close()
    key_file = tmp_path / "dock-01.pub"
    key_file.write_text(key + "\n")
    yield Dock(home, tmp_path, key_file, key, shas, secrets)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _debian_python() -> Path:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 (./run test installs Debian's python3)")
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import cryptography"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("Debian's python3-cryptography is not installed (./run test installs it)")
    return DEBIAN_PYTHON


def _bundled_verifier(bundle: Path, key: str) -> subprocess.CompletedProcess[str]:
    """The README's command, in the bundle, by Debian's Python, nothing of the venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    return subprocess.run(
        [str(_debian_python()), "verifier/verify.py", ".", "--key", key],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    """Mount ``image`` read-only: `mount -o loop,ro -t iso9660` (root, a kernel with
    iso9660, as on CI), else FUSE's fuseiso; skip only if neither can."""
    where.mkdir()
    kernel = subprocess.run(
        ["mount", "-o", "loop,ro", "-t", "iso9660", str(image), str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if kernel.returncode == 0:
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=True)
        return
    if shutil.which("fuseiso") is None or not Path("/dev/fuse").exists():
        pytest.skip(f"cannot mount an ISO image here: {kernel.stderr.strip()}; no fuseiso either")
    subprocess.run(["fuseiso", str(image), str(where), "-o", "ro"], check=True)
    try:
        yield where
    finally:
        subprocess.run(["fusermount", "-u", str(where)], check=True)


def _copy_writable(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def test_an_iso_image_mounts_read_only_and_verifies_three_ways(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, image = dock.tmp / "bundle", dock.tmp / "case.iso"
    size = dock.size()
    code, out, err = _run(
        capsys,
        "export",
        "--case",
        CASE,
        "--out",
        str(bundle),
        "--purpose",
        "court order 2025-17",
        "--iso",
        str(image),
        *dock.as_user("sup"),
    )
    assert code == 0, err
    printed = re.search(r"^image: .* sha256 ([0-9a-f]{64})$", out, re.M)
    assert printed is not None, out
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert printed.group(1) == digest
    assert image.stat().st_mode & 0o777 == 0o400
    assert [p.name for p in dock.tmp.iterdir() if p.name.startswith(".")] == []
    # Two entries: the export (the bundle) and the copy (the image, with its digest).
    assert dock.size() == size + 2
    export_body, copy_body = dock.entry_body(size), dock.entry_body(size + 1)
    assert export_body["action"] == "export" and export_body["user"] == "sup"
    assert copy_body["action"] == "copy" and copy_body["purpose"] == "court order 2025-17"
    assert f"sha256 {digest}" in str(copy_body["detail"])
    assert f"export entry {size}" in str(copy_body["detail"])
    assert sorted(copy_body["files"]) == sorted(dock.shas)

    # Reproducible: the same folder gives the same image, so the digest can be re-derived.
    station = Station.open(dock.home)
    try:
        when = parse_time(station.ledger.entry(size).time)
    finally:
        station.close()
    again, _ = disc_image(bundle, dock.tmp / "again.iso", volume_label("dock-01", size), when)
    assert again == digest

    with mounted(image, dock.tmp / "mnt") as disc:
        assert sorted(p.name for p in disc.iterdir()) == sorted(p.name for p in bundle.iterdir())
        assert (disc / SUMMARY).is_file() and (disc / "verifier" / "verify.py").is_file()
        assert (disc / "SHA256SUMS").stat().st_mode & 0o222 == 0
        with pytest.raises(OSError):  # mounted read-only: not even root writes
            (disc / "SHA256SUMS").open("r+b")
        sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=disc, check=False)
        assert sums.returncode == 0
        code, out, _ = _run(capsys, "verify", str(disc), "--key", str(dock.key_file))
        assert code == 0, out
        carried = _bundled_verifier(disc, dock.key)
        assert carried.returncode == 0, carried.stdout + carried.stderr
        assert "RESULT: VERIFIED" in carried.stdout
        assert "files intact: 3 of 3" in carried.stdout
        tampered = _copy_writable(disc, dock.tmp / "tampered")

    victim = next((tampered / "files").glob(f"{dock.shas[0]}*"))
    flip_byte(victim, MIB + 7)
    code, out, _ = _run(capsys, "verify", str(tampered), "--key", str(dock.key_file))
    assert code == 1
    assert f"bytes {MIB}-{2 * MIB - 1} differ" in out
    carried = _bundled_verifier(tampered, dock.key)
    assert carried.returncode == 1, carried.stdout + carried.stderr
    assert "file_modified" in carried.stdout and "INTEGRITY FAILURE" in carried.stdout
    sums = subprocess.run(
        ["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tampered, capture_output=True, check=False
    )
    assert sums.returncode == 1


def test_the_bundled_verifier_needs_no_evidock(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run isolated (-I: no user site, no script folder, no environment), from
    another folder, with the station key given as a file: still verified."""
    bundle = dock.tmp / "b"
    assert (
        _run(
            capsys,
            "export",
            "--all",
            "--out",
            str(bundle),
            "--purpose",
            "audit",
            *dock.as_user("aud"),
        )[0]
        == 0
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["verifier"]["files"]}
    on_disk = {str(p.relative_to(bundle)) for p in (bundle / "verifier").rglob("*.py")}
    assert listed == on_disk
    for f in manifest["verifier"]["files"]:
        assert hashlib.sha256((bundle / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    done = subprocess.run(
        [
            str(_debian_python()),
            "-I",
            str(bundle / "verifier" / "verify.py"),
            str(bundle),
            "--key",
            str(dock.key_file),
            "--json",
        ],
        cwd=dock.tmp,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["checked"]["files intact"] == "3 of 3"
    wrong = subprocess.run(
        [str(_debian_python()), "-I", "verifier/verify.py", ".", "--key", "not-a-key"],
        cwd=bundle,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 3 and "verify.py:" in wrong.stderr


def test_a_disclosure_to_a_folder_ready_to_burn(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, burn = dock.tmp / "disclosure", dock.tmp / "to-burn"
    size = dock.size()
    code, out, err = _run(
        capsys,
        "disclose",
        "--sha256",
        dock.shas[1],
        "--recipient",
        "Zhang San",
        "--purpose",
        "GIR-2025-0099",
        "--out",
        str(bundle),
        "--folder-to-burn",
        str(burn),
        *dock.as_user("aud"),
    )
    assert code == 0, err
    body = dock.entry_body(size)
    assert body["action"] == "disclose" and body["recipient"] == "Zhang San"
    assert body["files"] == [dock.shas[1]] and body["selection"] == {"sha256": [dock.shas[1]]}
    notice = (bundle / NOTICE).read_text()
    assert notice.startswith("Disclosed to Zhang San for GIR-2025-0099 by aud (auditor) on ")
    assert notice.splitlines()[0].endswith(f"; ledger entry {size}")
    assert f"notice: {notice.splitlines()[0]}" in out
    assert [p.name[:64] for p in (burn / "files").iterdir()] == [dock.shas[1]]
    for path in [burn, *burn.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o500 if path.is_dir() else 0o400), path
    assert (burn / NOTICE).read_text() == notice
    copy = dock.entry_body(size + 1)
    assert copy["action"] == "disclose" and copy["recipient"] == "Zhang San"
    assert "folder to burn" in str(copy["detail"])
    code, text, _ = _run(capsys, "verify", str(burn), "--key", dock.key, "--json")
    report = json.loads(text)
    assert code == 0, report
    assert report["checked"]["notice"] == "matches the export entry"


def _entries_and_outputs(dock: Dock) -> tuple[int, list[str]]:
    return dock.size(), sorted(p.name for p in dock.tmp.iterdir())


@pytest.mark.parametrize("who", ["off", "adm", "gone", "wrong-password"])
def test_every_role_boundary_of_export(
    dock: Dock, who: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """officer and admin may not export; a disabled user and a wrong password
    cannot log in: exit 2, no entry, nothing written, for every export command."""
    if who == "wrong-password":
        bad = dock.tmp / "bad.secret"
        bad.write_text("wrong horse 43\n")
        bad.chmod(0o600)
        user = ["--home", str(dock.home), "--as", "sup", "--password-file", str(bad)]
    else:
        user = dock.as_user(who)
    before = _entries_and_outputs(dock)
    commands = [
        ["export", "--case", CASE, "--purpose", "R", "--out", str(dock.tmp / "o1")],
        [
            "export",
            "--all",
            "--purpose",
            "R",
            "--out",
            str(dock.tmp / "o2"),
            "--iso",
            str(dock.tmp / "o2.iso"),
        ],
        [
            "export",
            "--sha256",
            dock.shas[0],
            "--purpose",
            "R",
            "--recipient",
            "X",
            "--out",
            str(dock.tmp / "o3"),
        ],
        [
            "disclose",
            "--sha256",
            dock.shas[0],
            "--recipient",
            "X",
            "--purpose",
            "R",
            "--out",
            str(dock.tmp / "o4"),
        ],
        [
            "disclose",
            "--sha256",
            dock.shas[0],
            "--recipient",
            "X",
            "--purpose",
            "R",
            "--out",
            str(dock.tmp / "o5"),
            "--folder-to-burn",
            str(dock.tmp / "o5b"),
        ],
        ["archive", "--year", "2025", "--out", str(dock.tmp / "o6")],
    ]
    for argv in commands:
        code, _, err = _run(capsys, *argv, *user)
        assert code == 2, (argv, err)
        if who in ("off", "adm"):
            assert "may not export" in err
        else:
            assert "login failed" in err
    assert _entries_and_outputs(dock) == before
    station = Station.open(dock.home)
    try:
        assert not list(station.ledger.entries_of_type(EXPORT))
        assert not list(station.ledger.entries_of_type(ACCESS))
    finally:
        station.close()


def test_input_errors_cost_no_login(
    dock: Dock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _entries_and_outputs(dock)
    cases = [
        (["export", "--case", CASE, "--purpose", " ", "--out", str(dock.tmp / "o")], "purpose"),
        (
            [
                "disclose",
                "--sha256",
                "xyz",
                "--recipient",
                "X",
                "--purpose",
                "R",
                "--out",
                str(dock.tmp / "o"),
            ],
            "64-hex-digit",
        ),
        (
            [
                "disclose",
                "--sha256",
                dock.shas[0],
                "--recipient",
                " ",
                "--purpose",
                "R",
                "--out",
                str(dock.tmp / "o"),
            ],
            "recipient",
        ),
        (
            ["export", "--case", "NO-SUCH", "--purpose", "R", "--out", str(dock.tmp / "o")],
            "no recordings match",
        ),
        (["archive", "--year", "1999", "--out", str(dock.tmp / "o")], "nothing to archive"),
    ]
    for argv, says in cases:
        code, _, err = _run(capsys, *argv, *dock.as_user("sup"))
        assert code == 2 and says in err, (argv, err)
    monkeypatch.setenv("PATH", str(dock.tmp / "no-tools"))
    code, _, err = _run(
        capsys,
        "export",
        "--all",
        "--purpose",
        "R",
        "--out",
        str(dock.tmp / "o"),
        "--iso",
        str(dock.tmp / "o.iso"),
        *dock.as_user("sup"),
    )
    assert code == 2 and "apt-get install xorriso" in err
    assert _entries_and_outputs(dock) == before


def test_the_year_end_archive_through_the_command_line(
    dock: Dock, capsys: pytest.CaptureFixture[str]
) -> None:
    station = Station.open(dock.home)
    try:
        rng = random.Random(8)
        evil = _ingest(station, dock.tmp / "s2" / "A.MP4", rng.randbytes(5_000), "../../x", 2025)
        other = _ingest(
            station, dock.tmp / "s3" / "B.MP4", rng.randbytes(6_000), "<b>C-3</b>", 2025
        )
        _ingest(station, dock.tmp / "s4" / "C.MP4", rng.randbytes(7_000), "../../x", 2024)
    finally:
        station.close()
    out = dock.tmp / "archive-2025"
    code, text, err = _run(
        capsys, "archive", "--year", "2025", "--out", str(out), "--json", *dock.as_user("aud")
    )
    assert code == 0, err
    result = json.loads(text)
    cases = {c["case"]: c for c in result["cases"]}
    assert set(cases) == {CASE, "../../x", "<b>C-3</b>"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(c["folder"] for c in cases.values()), "index.csv", "index.html", "index.json"]
    )
    assert not (dock.tmp / "x").exists()
    index = json.loads((out / "index.json").read_text())
    assert {c["case"] for c in index["cases"]} == set(cases)
    for case, row in cases.items():
        assert SAFE_FOLDER.fullmatch(row["folder"]), row["folder"]
        code, report, _ = _run(
            capsys, "verify", str(out / row["folder"]), "--key", dock.key, "--json"
        )
        assert code == 0, report
        assert dock.entry_body(row["export_entry"])["selection"]["case"] == case
    got = {
        c: sorted(p.name[:64] for p in (out / cases[c]["folder"] / "files").iterdir())
        for c in cases
    }
    assert got == {CASE: sorted(dock.shas), "../../x": [evil], "<b>C-3</b>": [other]}
    page = (out / "index.html").read_text()
    assert "&lt;b&gt;C-3&lt;/b&gt;" in page and "<b>C-3" not in page
    code, _, err = _run(
        capsys, "archive", "--year", "2025", "--out", str(out), *dock.as_user("aud")
    )
    assert code == 2 and "already exists" in err


def _image_files(image: Path) -> set[str]:
    listed = subprocess.run(
        ["xorriso", "-indev", str(image), "-find", "/", "-type", "f"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.strip("'") for line in listed.stdout.splitlines()}


@pytest.mark.parametrize("name", ["-J", "-o", "--help", "-graft-points"])
def test_folders_named_like_options_are_imaged(
    dock: Dock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """`--out=-J`: xorriso must get the folder as a path, not as an option."""
    monkeypatch.chdir(dock.tmp)
    code, _, err = _run(
        capsys,
        "export",
        "--case",
        CASE,
        f"--out={name}",
        "--purpose",
        "R",
        f"--iso={name}.iso",
        *dock.as_user("sup"),
    )
    assert code == 0, err
    bundle = dock.tmp / name
    expected = {"/" + str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert "/manifest.json" in expected
    assert _image_files(dock.tmp / f"{name}.iso") == expected
    export_entry = dock.size() - 2  # the export, then the copy onto the image
    station = Station.open(dock.home)
    try:
        when = parse_time(station.ledger.entry(export_entry).time)
    finally:
        station.close()
    disc_image(Path(name), Path(f"{name}-again.iso"), "AGAIN", when)
    assert _image_files(dock.tmp / f"{name}-again.iso") == expected


@pytest.mark.parametrize("command", [["export"], ["disclose"], ["archive"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *command, "--help")
    assert code == 0
    assert "--as NAME" in out and "--password-file" in out and "--out" in out
