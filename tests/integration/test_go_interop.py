"""Go's golang.org/x/mod/sumdb/note and sumdb/tlog accept what evidock writes,
and evidock accepts what Go writes (design.md, "Formats that others can verify").

The Go side is tests/interop/go/evidock_interop/main.go, built offline from
Debian's golang-golang-x-mod-dev into a temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hashing.checkpoint import Checkpoint, CheckpointSigner
from hashing.errors import SignatureError, UnknownSignerError
from hashing.ledger import Ledger
from hashing.note import NoteSigner, NoteVerifier, open_note, sign_note

pytestmark = pytest.mark.go

GO_SOURCE = Path(__file__).resolve().parents[1] / "interop" / "go" / "evidock_interop"
GOPATH = "/usr/share/gocode"
ORIGIN = "evidock/st-1"
CHECKPOINT_SIZES = (1, 2, 7, 64, 100)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def interop_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian: golang-go golang-golang-x-mod-dev)")
    out_dir = tmp_path_factory.mktemp("go-interop")
    binary = out_dir / "evidock_interop"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOCACHE": str(out_dir / "cache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"building {GO_SOURCE} failed (is golang-golang-x-mod-dev installed under {GOPATH}?):\n"
        f"{result.stderr}"
    )
    return binary


@dataclass(frozen=True)
class LedgerCase:
    ledger: Ledger
    key: NoteSigner
    request: dict[str, Any]


@pytest.fixture(scope="module")
def ledger_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerCase]:
    """A 100-entry ledger with checkpoints signed as it grew past 1, 2, 7, 64 and 100."""
    folder = tmp_path_factory.mktemp("ledger")
    ledger = Ledger.create(folder / "ledger.db", station="st-1", origin=ORIGIN)
    key = NoteSigner.generate(ORIGIN)
    signer = CheckpointSigner(key, ORIGIN, folder / "checkpoint-state.json")
    for i in range(100):
        body: dict[str, Any] = {"n": i, "sha256": f"{i:064x}", "name": f"录像/{i:04d}.MP4"}
        ledger.append("ingest" if i else "genesis", body)
        if i + 1 in CHECKPOINT_SIZES:
            ledger.sign_checkpoint(signer)
    leaves = [raw for _, raw in ledger.raw_entries()]

    cases = [
        (index, size)
        for size in CHECKPOINT_SIZES
        for index in (
            range(size)
            if size <= 7
            else sorted({0, 1, 2, size // 3, size // 2, size - 2, size - 1})
        )
    ]
    inclusion = [
        {"index": i, "size": n, "proof": [_b64(h) for h in ledger.inclusion_proof(i, n)]}
        for i, n in cases
    ]
    pairs = {(m, n) for m in CHECKPOINT_SIZES for n in CHECKPOINT_SIZES if m <= n}
    pairs |= {(3, 7), (5, 64), (63, 64), (64, 65), (13, 99), (1, 100), (99, 100), (33, 97)}
    consistency = [
        {"old": m, "new": n, "proof": [_b64(h) for h in ledger.consistency_proof(m, n)]}
        for m, n in sorted(pairs)
    ]
    request = {
        "vkey": key.verifier.vkey,
        "origin": ORIGIN,
        "checkpoints": [note for _, note, _ in ledger.checkpoints()],
        "leaves": [_b64(leaf) for leaf in leaves],
        "inclusion": inclusion,
        "consistency": consistency,
    }
    yield LedgerCase(ledger, key, request)
    ledger.close()


def _run(binary: Path, request: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return subprocess.run(
        [str(binary), str(path)], capture_output=True, text=True, timeout=120, check=False
    )


def test_go_accepts_evidock_and_proves_the_same(
    interop_binary: Path, ledger_fixture: LedgerCase, tmp_path: Path
) -> None:
    ledger, request = ledger_fixture.ledger, ledger_fixture.request
    result = _run(interop_binary, request, tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)

    # Everything handed over was checked by Go.
    assert out["checkpoints_verified"] == len(CHECKPOINT_SIZES) == len(request["checkpoints"])
    assert out["inclusion_checked"] == len(request["inclusion"]) > 20
    assert out["consistency_checked"] == len(request["consistency"]) > 20

    # tlog's tree heads, computed from the entry bytes alone, are evidock's.
    assert {r["size"] for r in out["roots"]} >= set(CHECKPOINT_SIZES)
    for r in out["roots"]:
        assert base64.b64decode(r["root"]) == ledger.root(r["size"]), r["size"]

    # tlog's own proofs are byte-identical to evidock's.
    assert [(c["index"], c["size"]) for c in out["inclusion"]] == [
        (c["index"], c["size"]) for c in request["inclusion"]
    ]
    for c in out["inclusion"]:
        mine = ledger.inclusion_proof(c["index"], c["size"])
        assert [base64.b64decode(h) for h in c["proof"]] == mine, (c["index"], c["size"])
    assert [(c["old"], c["new"]) for c in out["consistency"]] == [
        (c["old"], c["new"]) for c in request["consistency"]
    ]
    for c in out["consistency"]:
        mine = ledger.consistency_proof(c["old"], c["new"])
        assert [base64.b64decode(h) for h in c["proof"]] == mine, (c["old"], c["new"])

    # evidock verifies the note Go signed with keys Go generated.
    keys = out["go_keys"]
    assert len(keys) == 2
    assert "+" in keys[0]["vkey"].split("+", 2)[2]  # Go made sure one key's base64 has a '+'
    verifiers = [NoteVerifier.parse(k["vkey"]) for k in keys]
    assert [v.vkey for v in verifiers] == [k["vkey"] for k in keys]
    opened = open_note(out["go_note"], verifiers)
    assert opened.text == out["go_text"]
    assert opened.verified == tuple(verifiers)
    for v in verifiers:
        assert open_note(out["go_note"].encode(), [v]).verified == (v,)
    cp = Checkpoint.parse(opened.text)
    assert (cp.origin, cp.size, cp.root) == ("go.example/interop", 100, ledger.root(100))
    # Go's signer keys read back, and sign the very same bytes (Ed25519 is deterministic).
    signers = [NoteSigner.parse(k["skey"]) for k in keys]
    assert [s.verifier for s in signers] == verifiers
    assert [s.private_text() for s in signers] == [k["skey"] for k in keys]
    assert sign_note(out["go_text"], signers) == out["go_note"]
    # And the Go note is not accepted for a key that did not sign it, or altered.
    with pytest.raises(UnknownSignerError):
        open_note(out["go_note"], [ledger_fixture.key.verifier])
    altered = out["go_note"].replace("\n100\n", "\n101\n", 1)
    with pytest.raises(SignatureError):
        open_note(altered, verifiers)


def test_go_rejects_a_corrupted_inclusion_proof(
    interop_binary: Path, ledger_fixture: LedgerCase, tmp_path: Path
) -> None:
    request = json.loads(json.dumps(ledger_fixture.request))
    target = next(c for c in request["inclusion"] if c["size"] == 64 and c["index"] == 21)
    raw = bytearray(base64.b64decode(target["proof"][2]))
    raw[0] ^= 0x80
    target["proof"][2] = _b64(bytes(raw))
    result = _run(interop_binary, request, tmp_path)
    assert result.returncode != 0
    assert "inclusion proof for leaf 21 in size 64 rejected" in result.stderr


def test_go_rejects_a_corrupted_consistency_proof(
    interop_binary: Path, ledger_fixture: LedgerCase, tmp_path: Path
) -> None:
    request = json.loads(json.dumps(ledger_fixture.request))
    target = next(c for c in request["consistency"] if (c["old"], c["new"]) == (7, 64))
    target["proof"] = target["proof"][:-1]
    result = _run(interop_binary, request, tmp_path)
    assert result.returncode != 0
    assert "consistency proof 7 -> 64 rejected" in result.stderr


def test_go_rejects_a_tampered_checkpoint(
    interop_binary: Path, ledger_fixture: LedgerCase, tmp_path: Path
) -> None:
    request = json.loads(json.dumps(ledger_fixture.request))
    note = request["checkpoints"][2]
    assert note.startswith(f"{ORIGIN}\n7\n")
    request["checkpoints"][2] = note.replace(f"{ORIGIN}\n7\n", f"{ORIGIN}\n8\n", 1)
    result = _run(interop_binary, request, tmp_path)
    assert result.returncode != 0
    assert "open checkpoint 2" in result.stderr
    # A checkpoint by another key is not evidock's.
    other = NoteSigner.generate(ORIGIN)
    request = json.loads(json.dumps(ledger_fixture.request))
    request["checkpoints"][0] = sign_note(
        Checkpoint.parse(request["checkpoints"][0].split("\n\n")[0] + "\n").body(), [other]
    )
    result = _run(interop_binary, request, tmp_path)
    assert result.returncode != 0
    assert "open checkpoint 0" in result.stderr
