"""The README's demo: a station, sample footage, an export, and its verification.

It makes real MP4 clips (OpenCV's MPEG-4 Part 2 encoder: the pip wheel cannot
encode H.264), ingests them as a dock would, exports the case as a bundle,
verifies it offline with only the station's public key, checks the digests with
coreutils, and then shows the verifier catching a one-byte edit in a copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.ingest import Binding, IngestResult, ingest_paths
from drivers.demo import make_clips
from hashing.bundle import Selection, export_bundle
from hashing.errors import ConfigError, EvidockError
from hashing.findings import EXIT_OK
from hashing.station import Station
from hashing.verify import verify_bundle

CLIPS = 3
SECONDS = 4


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(home: Path, out: Path | None = None) -> int:
    """Run the demo; returns the process exit code."""
    if home.exists() and any(home.iterdir()):
        raise ConfigError(f"{home} is not empty; the demo wants a fresh station folder")
    work = Path(tempfile.mkdtemp(prefix="evidock-demo-"))
    out = out or home.parent / "demo-export"
    if out.exists():
        shutil.rmtree(out)
    try:
        return _steps(home, out, work)
    except EvidockError as e:
        print(f"evidock demo: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _steps(home: Path, out: Path, work: Path) -> int:
    _say(f"1. Creating station DOCK-DEMO in {home}")
    station = Station.init(home, "DOCK-DEMO")
    key = station.keys.load().verifier.vkey
    _say(f"   verifier key: {key}")

    _say(f"2. Recording {CLIPS} sample clips from camera DEMO0001 (officer 100001)")
    clips = make_clips(work / "DCIM")
    binding = Binding(officer="100001", device="DEMO0001", case="CASE-2026-0001")
    _say("3. Ingesting: one-pass copy + SHA-256 + chunk tree, fsync, re-read check, ledger entry")
    for item in ingest_paths(station, clips, binding):
        if not isinstance(item, IngestResult):
            raise item[1]
        _say(f"   {item.sha256}  {Path(item.source).name}  -> entry {item.seq}")
    again = [r for r in ingest_paths(station, clips, binding) if isinstance(r, IngestResult)]
    _say(f"   docking the same camera again records nothing new: {sum(r.new for r in again)} new")

    signed = station.checkpoint()
    _say(f"4. Signed checkpoint (C2SP signed note), tree size {signed.checkpoint.size}:")
    for line in signed.note.splitlines():
        _say(f"   | {line}")

    _say(f"5. Exporting case CASE-2026-0001 to {out}")
    export_bundle(station, Selection(case="CASE-2026-0001"), out)

    _say("6. Verifying the export offline with only the public key:")
    report = verify_bundle(out, [station.keys.load().verifier])
    for line in report.render().splitlines():
        _say(f"   {line}")
    if report.exit_code != EXIT_OK:
        return report.exit_code

    if shutil.which("sha256sum"):
        _say("7. Checking file digests with coreutils alone (sha256sum -c SHA256SUMS):")
        done = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"],
            cwd=out,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in done.stdout.splitlines():
            _say(f"   {line}")
        if done.returncode != 0:
            return 1

    _say("8. Tampering with a copy of the export (one byte of one clip) and verifying again:")
    tampered = work / "tampered"
    shutil.copytree(out, tampered)
    victim = sorted((tampered / "files").iterdir())[0]
    victim.chmod(0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    caught = verify_bundle(tampered, [station.keys.load().verifier])
    for f in caught.findings:
        _say(f"   caught: {f.kind} {f.place}: {f.detail}")
    if caught.exit_code == EXIT_OK:
        _say("   the tampering was NOT detected")
        return 1
    _say("")
    _say("Demo complete. Try it yourself:")
    _say(f"   evidock verify {out} --key '{key}'")
    _say(f"   EVIDOCK_HOME={home} evidock ledger verify")
    station.close()
    return EXIT_OK
