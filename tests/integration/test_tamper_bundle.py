"""Tamper matrix on export bundles: every edit an adversary can make to a bundle
is caught by the offline verifier, named by kind and place, and exits 1.

One station history is built per module (export, later checkpoints, a forked
copy of the same station, a station that rotated its key); each case copies
the pristine bundle, tampers with the copy and verifies it with the station's
public key only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import main
from hashing.bundle import Request, Selection, export_bundle
from hashing.findings import (
    BAD_SIGNATURE,
    ENTRY_ALTERED,
    ENTRY_MISSING,
    ENTRY_REORDERED,
    FILE_ADDED,
    FILE_MISSING,
    FILE_MODIFIED,
    FORK,
    MALFORMED,
    PROOF_FAILURE,
    ROLLBACK,
    UNKNOWN_SIGNATURE,
    Report,
)
from hashing.note import NoteSigner, NoteVerifier
from hashing.station import Station
from hashing.verify import verify_bundle
from tests.integration._support import (
    CASE,
    MIB,
    assert_clean,
    assert_finding,
    build_station,
    flip_b64,
    flip_byte,
    flip_in_bytes,
    flip_signature,
    ingest,
    make_sources,
    resign,
)

pytestmark = pytest.mark.slow

AUDITOR = Request("auditor-1", "auditor", "tamper matrix")


@dataclass
class World:
    """One station's history and the bundles and checkpoints cut from it."""

    bundle: Path  # pristine export of CASE at tree size 6
    key: NoteVerifier  # the station's verifier key
    key_file: Path  # the verifier key written to a file, as an auditor receives it
    origin: str
    shas: list[str]  # the four exported recordings, in ingest order (entries 1-4)
    genesis_note: str  # checkpoint at size 1
    older_note: str  # checkpoint at size 5, before the export
    later_note: str  # checkpoint at size 7, after the export
    fork_note_5: str  # same key, same origin, another history: size 5
    fork_note_6: str  # ... size 6, the bundle's own size
    fork_note_3: str  # ... size 3, a size the bundle has no proof from
    rot_bundle: Path  # export after a key rotation
    rot_old_key: NoteVerifier
    rot_new_key: NoteVerifier
    rot_old_signer: NoteSigner  # the retired key, as a thief who copied it holds it


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("bundle-world")

    # Station A, and a copy of its home taken right after genesis (same key,
    # same signer state, same station id): the seed of a forked history.
    home = base / "home"
    station = Station.init(home, "dock-01")
    genesis_note = station.checkpoint().note
    station.close()
    shutil.copytree(home, base / "fork-home")
    station = Station.open(home)
    key = station.keys.load().verifier
    sizes = (3 * MIB + 17, 2 * MIB + 4099, 300_000, 1_000)  # 4, 3, 1 and 1 chunks
    shas = [r.sha256 for r in ingest(station, make_sources(base / "src-a", sizes, seed=11))]
    older_note = station.checkpoint().note
    bundle = export_bundle(station, Selection(case=CASE), base / "bundle", AUDITOR)
    ingest(station, make_sources(base / "src-a2", (5_000,), seed=12))
    later_note = station.checkpoint().note
    key_file = base / "dock-01.pub"
    key_file.write_text(key.vkey + "\n")

    # The forked history: same key file, same origin, different recordings.
    fork = Station.open(base / "fork-home")
    fork_sources = make_sources(base / "src-fork", (2_000, 3_000, 4_000, 5_000, 6_000), seed=13)
    ingest(fork, fork_sources[:2])
    fork_note_3 = fork.checkpoint().note
    ingest(fork, fork_sources[2:4])
    fork_note_5 = fork.checkpoint().note
    ingest(fork, fork_sources[4:])
    fork_note_6 = fork.checkpoint().note
    fork.close()
    for note, size in (
        (genesis_note, 1),
        (older_note, 5),
        (later_note, 7),
        (fork_note_3, 3),
        (fork_note_5, 5),
        (fork_note_6, 6),
    ):
        assert note.split("\n")[1] == str(size)
    assert json.loads((bundle / "manifest.json").read_text())["tree_size"] == 6

    # Station B rotates its key between ingests, then exports everything.
    rot = build_station(base / "rot-home", station_id="dock-02", seed=14, sizes=(2 * MIB + 1, 10))
    old_signer = rot.station.keys.load()
    rot.station.rotate_key()
    ingest(rot.station, make_sources(base / "src-rot", (7_000,), seed=15))
    rot_bundle = export_bundle(rot.station, Selection(all=True), base / "rot-bundle", AUDITOR)
    new_key = rot.station.keys.load().verifier

    yield World(
        bundle=bundle,
        key=key,
        key_file=key_file,
        origin=station.origin,
        shas=shas,
        genesis_note=genesis_note,
        older_note=older_note,
        later_note=later_note,
        fork_note_5=fork_note_5,
        fork_note_6=fork_note_6,
        fork_note_3=fork_note_3,
        rot_bundle=rot_bundle,
        rot_old_key=old_signer.verifier,
        rot_new_key=new_key,
        rot_old_signer=old_signer,
    )
    station.close()
    rot.station.close()


@pytest.fixture
def bundle(world: World, tmp_path: Path) -> Path:
    """A fresh copy of the pristine bundle, to tamper with."""
    return Path(shutil.copytree(world.bundle, tmp_path / "bundle"))


def manifest(folder: Path) -> dict[str, object]:
    value = json.loads((folder / "manifest.json").read_text())
    assert isinstance(value, dict)
    return value


def file_path(world: World, n: int) -> str:
    """Bundle-relative path of the n-th exported recording (entry n + 1)."""
    return f"files/{world.shas[n]}.mp4"


def verify(folder: Path, world: World, held: str | None = None) -> Report:
    return verify_bundle(folder, [world.key], held)


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- the untampered bundle ---------------------------------------------------


def test_pristine_bundle_verifies(world: World, bundle: Path) -> None:
    report = verify(bundle, world)
    assert_clean(report)
    assert report.checked["files intact"] == "4 of 4"
    assert report.checked["entries proven"] == 6  # genesis, 4 ingests, export


def test_pristine_bundle_passes_sha256sum(bundle: Path) -> None:
    run = subprocess.run(
        ["sha256sum", "--strict", "-c", "SHA256SUMS"],
        cwd=bundle,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": OK\n") == 4


def test_sha256sum_catches_a_flipped_byte(world: World, bundle: Path) -> None:
    flip_byte(bundle / file_path(world, 2), 1234)
    run = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert f"{file_path(world, 2)}: FAILED" in run.stdout


# -- the recordings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "expected_range"),
    [
        (0, "bytes 0-1048575"),  # chunk 1
        (MIB + MIB // 2, "bytes 1048576-2097151"),  # middle of chunk 2
        (3 * MIB + 16, "bytes 3145728-3145744"),  # last byte, in the short last chunk
    ],
)
def test_flipped_byte_in_file_names_its_chunk(
    world: World, bundle: Path, offset: int, expected_range: str
) -> None:
    path = file_path(world, 0)
    flip_byte(bundle / path, offset)
    report = verify(bundle, world)
    finding = assert_finding(report, FILE_MODIFIED, path)
    assert finding.detail.startswith(f"{expected_range} differ"), finding.detail
    assert report.kinds() == {FILE_MODIFIED}


def test_truncated_file(world: World, bundle: Path) -> None:
    path = file_path(world, 0)
    with (bundle / path).open("r+b") as f:
        f.truncate(MIB + 100)
    report = verify(bundle, world)
    finding = assert_finding(report, FILE_MODIFIED, path)
    # Chunk 2 is short now and chunks 3-4 are gone: one range to the recorded end.
    assert finding.detail.startswith("bytes 1048576-3145744 differ"), finding.detail
    assert "1048676 bytes" in finding.detail


def test_deleted_file(world: World, bundle: Path) -> None:
    path = file_path(world, 1)
    (bundle / path).unlink()
    report = verify(bundle, world)
    assert_finding(report, FILE_MISSING, path, detail=world.shas[1])
    assert report.kinds() == {FILE_MISSING}


def test_deleted_file_and_its_manifest_row(world: World, bundle: Path) -> None:
    """Covering tracks in the manifest does not help: the proven export entry lists it."""
    path = file_path(world, 1)
    (bundle / path).unlink()
    m = manifest(bundle)
    files = m["files"]
    assert isinstance(files, list)
    m["files"] = [f for f in files if f["path"] != path]
    (bundle / "manifest.json").write_text(json.dumps(m))
    sums = (bundle / "SHA256SUMS").read_text().splitlines(keepends=True)
    (bundle / "SHA256SUMS").write_text("".join(s for s in sums if path not in s))
    report = verify(bundle, world)
    assert_finding(report, FILE_MISSING, "entry 2", detail=world.shas[1])


def test_added_file(world: World, bundle: Path) -> None:
    (bundle / "files" / "planted.mp4").write_bytes(b"not a recording from this dock")
    report = verify(bundle, world)
    assert_finding(report, FILE_ADDED, "files/planted.mp4")
    assert report.kinds() == {FILE_ADDED}


def test_added_file_in_a_subfolder(world: World, bundle: Path) -> None:
    (bundle / "files" / "more").mkdir()
    (bundle / "files" / "more" / "x.mp4").write_bytes(b"hidden one level down")
    report = verify(bundle, world)
    assert_finding(report, FILE_ADDED, "files/more/x.mp4")


def test_swapped_files(world: World, bundle: Path) -> None:
    a, b = bundle / file_path(world, 0), bundle / file_path(world, 1)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    report = verify(bundle, world)
    assert_finding(report, FILE_MODIFIED, file_path(world, 0), detail="swapped")
    assert_finding(report, FILE_MODIFIED, file_path(world, 1), detail="swapped")
    assert report.kinds() == {FILE_MODIFIED}


@pytest.mark.parametrize("outside", ["../outside.mp4", "ABSOLUTE", "files/../../outside.mp4"])
def test_manifest_pointing_outside_the_bundle(world: World, bundle: Path, outside: str) -> None:
    """The recording moved out of the bundle, the manifest and SHA256SUMS sent after it:
    the verifier must not vouch for a file that is not in the folder it was given."""
    path = file_path(world, 2)
    elsewhere = bundle.parent / "outside.mp4"
    (bundle / path).rename(elsewhere)
    new_path = str(elsewhere) if outside == "ABSOLUTE" else outside
    for name in ("manifest.json", "SHA256SUMS"):
        text = (bundle / name).read_text()
        (bundle / name).write_text(text.replace(path, new_path))
    report = verify(bundle, world)
    assert_finding(report, FILE_MISSING, "entry 3", detail=world.shas[2])
    assert_finding(report, MALFORMED, "manifest.json", detail=new_path)


def test_files_folder_replaced_by_a_link(world: World, bundle: Path) -> None:
    shutil.move(bundle / "files", bundle.parent / "real-files")
    (bundle / "files").symlink_to(bundle.parent / "real-files")
    assert_finding(verify(bundle, world), MALFORMED, "files", detail="symbolic link")


def test_extra_line_in_sha256sums(world: World, bundle: Path) -> None:
    with (bundle / "SHA256SUMS").open("a") as f:
        f.write(f"{'0' * 64}  ../../etc/hostname\n")
    assert_finding(verify(bundle, world), MALFORMED, "SHA256SUMS", detail="etc/hostname")


def test_symlinked_file(world: World, bundle: Path) -> None:
    """A link to a good copy elsewhere is not the recording in the bundle."""
    path = bundle / file_path(world, 3)
    elsewhere = bundle.parent / "elsewhere.mp4"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    assert_finding(verify(bundle, world), FILE_MODIFIED, file_path(world, 3), detail="link")


def _plant(bundle: Path, world: World, what: str) -> str:
    """Put something the layout does not have into the bundle; return its place."""
    recording = bundle / file_path(world, 3)
    if what == "copy in a new folder":
        (bundle / "extra").mkdir()
        shutil.copyfile(recording, bundle / "extra" / "copy.MP4")
        return "extra/copy.MP4"
    if what == "second notice":
        (bundle / "NOTICE-2.txt").write_text("Disclosed to the Court of X\n")
        return "NOTICE-2.txt"
    if what == "empty folder":
        (bundle / "empty").mkdir()
        return "empty/"
    if what == "link to a recording":
        (bundle / "copy.mp4").symlink_to(recording)
        return "copy.mp4"
    if what == "named pipe":
        os.mkfifo(bundle / "pipe")
        return "pipe"
    if what == "unlisted chunk file":
        (bundle / "chunks" / f"{'0' * 64}.json").write_text("{}")
        return f"chunks/{'0' * 64}.json"
    if what == "chunk file in a subfolder":
        sha = world.shas[0]
        (bundle / "chunks" / "x").mkdir()
        shutil.copyfile(bundle / "chunks" / f"{sha}.json", bundle / "chunks" / "x" / f"{sha}.json")
        return f"chunks/x/{sha}.json"
    if what == "third proof file":
        (bundle / "proofs" / "more.jsonl").write_text("")
        return "proofs/more.jsonl"
    if what == "unlisted verifier module":
        (bundle / "verifier" / "hashing" / "extra.py").write_text("")
        return "verifier/hashing/extra.py"
    if what == "cache of no listed module":
        cache = bundle / "verifier" / "hashing" / "__pycache__"
        cache.mkdir()
        shutil.copyfile(recording, cache / "evil.cpython-311.pyc")
        return "verifier/hashing/__pycache__/evil.cpython-311.pyc"
    assert what == "manifest as a link"
    shutil.move(bundle / "manifest.json", bundle.parent / "manifest.json")
    (bundle / "manifest.json").symlink_to(bundle.parent / "manifest.json")
    return "manifest.json"


@pytest.mark.parametrize(
    "what",
    [
        "copy in a new folder",
        "second notice",
        "empty folder",
        "link to a recording",
        "named pipe",
        "unlisted chunk file",
        "chunk file in a subfolder",
        "third proof file",
        "unlisted verifier module",
        "cache of no listed module",
        "manifest as a link",
    ],
)
def test_anything_outside_the_layout_is_reported(world: World, bundle: Path, what: str) -> None:
    place = _plant(bundle, world, what)
    report = verify(bundle, world)
    assert_finding(report, FILE_ADDED, place)
    assert report.kinds() == {FILE_ADDED}, report.render()


def test_a_bundle_from_before_the_carried_verifier_verifies(world: World, bundle: Path) -> None:
    shutil.rmtree(bundle / "verifier")
    m = manifest(bundle)
    del m["verifier"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert_clean(verify(bundle, world))


def test_verifier_files_the_manifest_does_not_list_are_reported(world: World, bundle: Path) -> None:
    m = manifest(bundle)
    del m["verifier"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    report = verify(bundle, world)
    assert_finding(report, FILE_ADDED, "verifier/verify.py")
    assert_finding(report, FILE_ADDED, "verifier/hashing/verify.py")


def test_python_caches_of_the_listed_modules_are_tolerated(world: World, bundle: Path) -> None:
    """Older carried verifiers let Python write __pycache__ into a writable bundle."""
    cache = bundle / "verifier" / "hashing" / "__pycache__"
    cache.mkdir()
    (cache / "verify.cpython-311.pyc").write_bytes(b"cache")
    (cache / "note.cpython-312.opt-1.pyc").write_bytes(b"cache")
    assert_clean(verify(bundle, world))


def test_the_carried_verifier_leaves_the_bundle_as_it_found_it(bundle: Path, world: World) -> None:
    before = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = subprocess.run(
        [sys.executable, "verifier/verify.py", ".", "--key", world.key.vkey],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*")) == before


# -- the ledger entries ------------------------------------------------------


def test_flipped_byte_in_entry_value(world: World, bundle: Path) -> None:
    """officer-7 becomes officer-6: still canonical JSON, but not the signed bytes."""
    lines = read_lines(bundle / "entries.jsonl")
    at = lines[2].index(b'"officer":"officer-7"') + len(b'"officer":"officer-')
    lines[2] = flip_in_bytes(lines[2], at)
    assert b'"officer":"officer-6"' in lines[2]
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_ALTERED, "entry 2", detail="differ from the signed tree")
    # The recording of an unproven entry is not vouched for either.
    assert_finding(report, FILE_ADDED, file_path(world, 1))


def test_flipped_byte_in_entry_syntax(world: World, bundle: Path) -> None:
    lines = read_lines(bundle / "entries.jsonl")
    lines[3] = flip_in_bytes(lines[3], lines[3].index(b'"seq"'))  # '"' becomes '#'
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_ALTERED, "entries.jsonl line 4", detail="not a well-formed")
    assert_finding(report, ENTRY_MISSING, "entry 3")


def test_altered_entry_with_manifest_leaf_recomputed(world: World, bundle: Path) -> None:
    """A tamperer who also fixes the (unsigned) manifest still fails the proof."""
    lines = read_lines(bundle / "entries.jsonl")
    altered = lines[1].replace(b'"size":3145745', b'"size":3145744')
    assert altered != lines[1]
    lines[1] = altered
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    m = manifest(bundle)
    entries = m["entries"]
    assert isinstance(entries, list)
    del entries[1]["leaf"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    report = verify(bundle, world)
    assert report.exit_code == 1
    assert {ENTRY_ALTERED, PROOF_FAILURE} & report.kinds(), report.render()
    assert any(f.place == "entry 1" for f in report.failures), report.render()


def test_deleted_entry_line(world: World, bundle: Path) -> None:
    lines = read_lines(bundle / "entries.jsonl")
    del lines[3]  # entry 3
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_MISSING, "entry 3", detail="not in entries.jsonl")


def test_deleted_entry_line_and_manifest_row(world: World, bundle: Path) -> None:
    """With the manifest edited to match, the proven export entry still names the file."""
    lines = read_lines(bundle / "entries.jsonl")
    del lines[3]
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    m = manifest(bundle)
    entries = m["entries"]
    assert isinstance(entries, list)
    m["entries"] = [e for e in entries if e["seq"] != 3]
    (bundle / "manifest.json").write_text(json.dumps(m))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_MISSING, file_path(world, 2), detail="no proven ingest entry")


def test_deleted_genesis_entry(world: World, bundle: Path) -> None:
    lines = read_lines(bundle / "entries.jsonl")
    del lines[0]
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_MISSING, "entry 0")


def test_recording_removed_without_trace_in_manifest(world: World, bundle: Path) -> None:
    """The thorough tamperer: a recording, its entry, the export entry, and every
    manifest and SHA256SUMS row that mentions them, all gone. The bundle no longer
    proves its own export entry, and that alone must fail it."""
    victim = 1
    sha, path = world.shas[victim], file_path(world, victim)
    (bundle / path).unlink()
    (bundle / "chunks" / f"{sha}.json").unlink()
    lines = read_lines(bundle / "entries.jsonl")
    lines = [line for line in lines if sha.encode() not in line and b'"type":"export"' not in line]
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    m = manifest(bundle)
    for key in ("files", "entries"):
        rows = m[key]
        assert isinstance(rows, list)
        m[key] = [r for r in rows if r.get("sha256") != sha and r["seq"] not in (victim + 1, 5)]
    del m["export_entry"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    sums = (bundle / "SHA256SUMS").read_text().splitlines(keepends=True)
    (bundle / "SHA256SUMS").write_text("".join(s for s in sums if sha not in s))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_MISSING, "export entry")


def test_reordered_entry_lines(world: World, bundle: Path) -> None:
    lines = read_lines(bundle / "entries.jsonl")
    lines[2], lines[3] = lines[3], lines[2]  # entries 2 and 3
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(bundle, world)
    assert_finding(report, ENTRY_REORDERED, "entry 2", detail="after entry 3")
    assert report.kinds() == {ENTRY_REORDERED}


def test_duplicated_entry_line(world: World, bundle: Path) -> None:
    lines = read_lines(bundle / "entries.jsonl")
    lines.insert(3, lines[2])
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    assert_finding(verify(bundle, world), ENTRY_REORDERED, "entry 2", detail="twice")


# -- the checkpoint ------------------------------------------------------------


@pytest.mark.parametrize("line", [0, 1, 2], ids=["origin", "tree-size", "root-hash"])
def test_flipped_byte_in_checkpoint_body(world: World, bundle: Path, line: int) -> None:
    note = (bundle / "checkpoint.txt").read_text()
    lines = note.split("\n")
    if line == 2:  # one bit of the root hash, still well-formed base64
        lines[2] = flip_b64(lines[2], 10)
    else:  # the low bit of the last character: 'dock-01' -> 'dock-00', '6' -> '7'
        lines[line] = lines[line][:-1] + chr(ord(lines[line][-1]) ^ 0x01)
    (bundle / "checkpoint.txt").write_text("\n".join(lines))
    assert_finding(verify(bundle, world), BAD_SIGNATURE, "checkpoint.txt")


def test_checkpoint_flipped_into_invalid_utf8(world: World, bundle: Path) -> None:
    """The last byte of the em dash (E2 80 94) loses its high bit: no longer UTF-8.
    A corrupt checkpoint is an integrity failure, not a bundle that cannot be read."""
    raw = (bundle / "checkpoint.txt").read_bytes()
    (bundle / "checkpoint.txt").write_bytes(
        flip_in_bytes(raw, raw.index(b"\xe2\x80\x94") + 2, 0x80)
    )
    report = verify(bundle, world)
    assert_finding(report, BAD_SIGNATURE, "checkpoint.txt", detail="UTF-8")


def test_flipped_byte_in_checkpoint_signature(world: World, bundle: Path) -> None:
    note = (bundle / "checkpoint.txt").read_text()
    (bundle / "checkpoint.txt").write_text(flip_signature(note))
    report = verify(bundle, world)
    assert_finding(report, BAD_SIGNATURE, "checkpoint.txt", detail="bad signature")
    assert report.kinds() == {BAD_SIGNATURE}


def test_flipped_byte_in_checkpoint_key_id(world: World, bundle: Path) -> None:
    """A signature that no longer names a known key is no signature by it."""
    note = (bundle / "checkpoint.txt").read_text()
    (bundle / "checkpoint.txt").write_text(flip_signature(note, in_key_id=True))
    assert_finding(verify(bundle, world), UNKNOWN_SIGNATURE, "checkpoint.txt")


def test_checkpoint_resigned_with_another_key(world: World, bundle: Path) -> None:
    note = (bundle / "checkpoint.txt").read_text()
    impostor = NoteSigner.generate(world.origin)  # same name, other key
    (bundle / "checkpoint.txt").write_text(resign(note, impostor))
    report = verify(bundle, world)
    assert_finding(report, UNKNOWN_SIGNATURE, "checkpoint.txt", detail=impostor.verifier.key_id_hex)
    assert report.kinds() == {UNKNOWN_SIGNATURE}


def test_checkpoint_signature_removed(world: World, bundle: Path) -> None:
    note = (bundle / "checkpoint.txt").read_text()
    (bundle / "checkpoint.txt").write_text(note.partition("\n\n")[0] + "\n")
    assert_finding(verify(bundle, world), BAD_SIGNATURE, "checkpoint.txt", detail="malformed")


def test_verified_with_a_key_of_another_station(world: World, bundle: Path) -> None:
    report = verify_bundle(bundle, [world.rot_new_key])
    assert_finding(report, UNKNOWN_SIGNATURE, "checkpoint.txt")


# -- the proofs ----------------------------------------------------------------


def test_altered_inclusion_proof_hash(world: World, bundle: Path) -> None:
    path = bundle / "proofs" / "inclusion.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    row = next(r for r in rows if r["index"] == 2)
    row["hashes"][1] = flip_b64(row["hashes"][1], 7)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = verify(bundle, world)
    assert_finding(report, PROOF_FAILURE, "entry 2", detail="does not lead to the tree head")


def test_deleted_inclusion_proof(world: World, bundle: Path) -> None:
    path = bundle / "proofs" / "inclusion.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["index"] != 4))
    assert_finding(verify(bundle, world), PROOF_FAILURE, "entry 4", detail="no inclusion proof")


def test_unreadable_inclusion_proofs(world: World, bundle: Path) -> None:
    (bundle / "proofs" / "inclusion.jsonl").write_text("{not json\n")
    report = verify(bundle, world)
    assert_finding(report, MALFORMED, "proofs/inclusion.jsonl")
    assert_finding(report, PROOF_FAILURE, "entry 0")


# -- checkpoints the auditor already holds ---------------------------------------


def test_rollback_against_a_later_checkpoint(world: World, bundle: Path) -> None:
    report = verify(bundle, world, held=world.later_note)
    assert_finding(report, ROLLBACK, "checkpoint", detail="size 7")


@pytest.mark.parametrize("which", ["fork_note_5", "fork_note_6"])
def test_fork_against_another_history(world: World, bundle: Path, which: str) -> None:
    """Same key, same origin, different recordings: the dock's state was cloned."""
    report = verify(bundle, world, held=getattr(world, which))
    assert_finding(report, FORK, "checkpoint")
    assert report.kinds() == {FORK}


def test_fork_without_a_proof_from_its_size_cannot_be_settled(world: World, bundle: Path) -> None:
    report = verify(bundle, world, held=world.fork_note_3)
    assert report.exit_code == 3, report.render()
    assert any("no consistency proof from tree size 3" in r for r in report.unverifiable)


@pytest.mark.parametrize("which", ["genesis_note", "older_note"])
def test_older_consistent_checkpoint_verifies(world: World, bundle: Path, which: str) -> None:
    assert_clean(verify(bundle, world, held=getattr(world, which)))


def test_held_checkpoint_of_the_same_size_verifies(world: World, bundle: Path) -> None:
    assert_clean(verify(bundle, world, held=(bundle / "checkpoint.txt").read_text()))


def test_altered_consistency_proof_is_not_accepted(world: World, bundle: Path) -> None:
    path = bundle / "proofs" / "consistency.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["hashes"] = [flip_b64(h) for h in row["hashes"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = verify(bundle, world, held=world.older_note)
    assert report.exit_code != 0, report.render()


def test_held_checkpoint_signed_by_an_impostor_is_not_trusted(world: World, bundle: Path) -> None:
    forged = resign(world.later_note, NoteSigner.generate(world.origin))
    report = verify(bundle, world, held=forged)
    assert report.exit_code == 3, report.render()


# -- key rotation ---------------------------------------------------------------


def test_rotated_bundle_verifies_with_the_original_key(world: World) -> None:
    report = verify_bundle(world.rot_bundle, [world.rot_old_key])
    assert_clean(report)
    assert report.checked["files intact"] == "3 of 3"


def test_rotated_bundle_verifies_with_the_new_key(world: World) -> None:
    assert_clean(verify_bundle(world.rot_bundle, [world.rot_new_key]))


def test_retired_key_cannot_sign_after_its_rotation(world: World, tmp_path: Path) -> None:
    """Someone who kept a copy of the old private key signs the current tree head."""
    folder = Path(shutil.copytree(world.rot_bundle, tmp_path / "b"))
    note = (folder / "checkpoint.txt").read_text()
    (folder / "checkpoint.txt").write_text(resign(note, world.rot_old_signer))
    for anchors in ([world.rot_old_key], [world.rot_old_key, world.rot_new_key]):
        report = verify_bundle(folder, anchors)
        assert_finding(report, BAD_SIGNATURE, "checkpoint.txt", detail="key in force")


def test_rotation_entry_removed(world: World, tmp_path: Path) -> None:
    """Without its rotation entry the new key has no authority from the old one."""
    folder = Path(shutil.copytree(world.rot_bundle, tmp_path / "b"))
    lines = read_lines(folder / "entries.jsonl")
    (folder / "entries.jsonl").write_bytes(
        b"".join(line for line in lines if b'"type":"key_rotation"' not in line)
    )
    report = verify_bundle(folder, [world.rot_old_key])
    assert_finding(report, UNKNOWN_SIGNATURE, "checkpoint.txt")
    assert_finding(report, ENTRY_MISSING, "entry 3")
    report = verify_bundle(folder, [world.rot_new_key])
    assert_finding(report, BAD_SIGNATURE, "checkpoint.txt", detail="key in force")


# -- the command line -------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["verify", *args, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_cli_verified(world: World, bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_cli(capsys, str(bundle), "--key", world.key.vkey)
    assert code == 0
    assert result["ok"] is True
    code, result = run_cli(capsys, str(bundle), "--key", str(world.key_file))
    assert code == 0


def test_cli_integrity_failure(
    world: World, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flip_byte(bundle / file_path(world, 0), MIB + MIB // 2)
    code, result = run_cli(capsys, str(bundle), "--key", str(world.key_file))
    assert code == 1
    findings = result["findings"]
    assert isinstance(findings, list)
    assert [f["kind"] for f in findings] == [FILE_MODIFIED]
    assert findings[0]["place"] == file_path(world, 0)
    assert "bytes 1048576-2097151" in findings[0]["detail"]


def test_cli_rollback(
    world: World, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = tmp_path / "held.txt"
    held.write_text(world.later_note)
    code, result = run_cli(capsys, str(bundle), "--key", world.key.vkey, "--checkpoint", str(held))
    assert code == 1
    assert result["exit_code"] == 1


def test_cli_unreadable_key_file(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_cli(capsys, str(bundle), "--key", str(tmp_path / "no-such.pub"))
    assert code == 3
    (tmp_path / "a-folder").mkdir()
    code, _ = run_cli(capsys, str(bundle), "--key", str(tmp_path / "a-folder"))
    assert code == 3
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("evidock/dock-01+00000000+AAAA\n")
    code, _ = run_cli(capsys, str(bundle), "--key", str(garbage))
    assert code == 3
    assert main(["verify", str(bundle), "--key", "evidock/dock-01+00000000+AAAA"]) == 3
    assert "is not a verifier key" in capsys.readouterr().err


def test_cli_not_a_bundle(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, result = run_cli(capsys, str(tmp_path / "empty"), "--key", world.key.vkey)
    assert code == 3
    assert result["exit_code"] == 3
    code, _ = run_cli(capsys, str(tmp_path / "nowhere"), "--key", world.key.vkey)
    assert code == 3


# -- keys the auditor names -------------------------------------------------------


@pytest.fixture
def forged(world: World, tmp_path: Path) -> tuple[Path, NoteVerifier]:
    """A bundle of a forger's own dock named like the real one, with a file inside
    it named exactly like the real station key and holding the forger's key."""
    home = tmp_path / "forger-home"
    forger = Station.init(home, "dock-01")
    try:
        ingest(forger, make_sources(tmp_path / "src-forged", (4_000, 5_000), seed=21))
        folder = export_bundle(forger, Selection(all=True), tmp_path / "forged", AUDITOR)
        forger_key = forger.keys.load().verifier
    finally:
        forger.close()
    assert forger_key.name == world.key.name and forger_key != world.key
    planted = folder / world.key.vkey  # "evidock/dock-01+…": the name holds '/'
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(forger_key.vkey + "\n")
    return folder, forger_key


def _carried_verifier(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python3 verifier/verify.py . …` run inside the bundle, as README.txt says."""
    return subprocess.run(
        [sys.executable, "-I", "verifier/verify.py", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_key_text_is_never_taken_for_a_file_of_that_name(
    world: World,
    forged: tuple[Path, NoteVerifier],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The auditor names the genuine key, from inside the forged bundle: both
    verifiers check the signature with that key, not with the planted file's."""
    folder, forger_key = forged
    # With the forger's key the forgery verifies (but for the planted file itself).
    assert verify_bundle(folder, [forger_key]).kinds() <= {FILE_ADDED}
    monkeypatch.chdir(folder)
    code, result = run_cli(capsys, ".", "--key", world.key.vkey)
    assert code == 1, result
    findings = result["findings"]
    assert isinstance(findings, list)
    assert {"kind": UNKNOWN_SIGNATURE, "place": "checkpoint.txt"}.items() <= findings[0].items()
    run = _carried_verifier(folder, ".", "--key", world.key.vkey, "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    carried = json.loads(run.stdout)
    assert carried["ok"] is False
    assert any(
        f["kind"] == UNKNOWN_SIGNATURE and f["place"] == "checkpoint.txt"
        for f in carried["findings"]
    ), carried


@pytest.mark.parametrize("how", ["relative", "through a link to the bundle", "bundle via a link"])
def test_a_key_file_inside_the_bundle_is_refused(
    world: World,
    forged: tuple[Path, NoteVerifier],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    folder, forger_key = forged
    (folder / "station.pub").write_text(forger_key.vkey + "\n")
    link = folder.parent / "link"
    link.symlink_to(folder)
    target, key = {
        "relative": (".", "station.pub"),
        "through a link to the bundle": (str(folder), str(link / "station.pub")),
        "bundle via a link": (str(link), str(folder / "station.pub")),
    }[how]
    monkeypatch.chdir(folder)
    code, result = run_cli(capsys, target, "--key", key)
    assert (code, result) == (3, {})
    run = _carried_verifier(folder, target, "--key", key)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "inside the bundle being verified" in run.stderr
    assert run.stdout == ""


def test_a_held_checkpoint_inside_the_bundle_is_refused(
    world: World, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint "held" from the bundle itself proves nothing about rollback."""
    (bundle / "held.txt").write_text(world.later_note)
    code, result = run_cli(
        capsys, str(bundle), "--key", world.key.vkey, "--checkpoint", str(bundle / "held.txt")
    )
    assert (code, result) == (3, {})
    run = _carried_verifier(
        bundle, ".", "--key", world.key.vkey, "--checkpoint", str(bundle / "held.txt")
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "checkpoint" in run.stderr and "inside the bundle being verified" in run.stderr


def test_cli_says_why_a_key_file_in_the_bundle_is_refused(
    forged: tuple[Path, NoteVerifier],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, forger_key = forged
    (folder / "station.pub").write_text(forger_key.vkey + "\n")
    monkeypatch.chdir(folder)
    assert main(["verify", ".", "--key", "station.pub"]) == 3
    err = capsys.readouterr().err
    assert "key file station.pub lies inside the bundle being verified" in err
    assert "keep the key file outside the bundle" in err
