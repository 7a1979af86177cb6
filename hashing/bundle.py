"""Export bundles: a folder an auditor or a court verifies offline (design.md "Formats").

    README.txt                 what this is and how to check it, for humans
    SHA256SUMS                 `sha256sum -c SHA256SUMS` checks every file with coreutils alone
    manifest.json              station, tree size, files (path, digest, size, entry), entries
    checkpoint.txt             the signed checkpoint (C2SP signed note) the proofs lead to
    entries.jsonl              the covering ledger entries, one per line, exactly as hashed
    proofs/inclusion.jsonl     one RFC 9162 inclusion proof per entry, in `evidock prove` form
    proofs/consistency.jsonl   consistency proofs from the dock's earlier checkpoints
    chunks/<sha256>.json       the 1 MiB chunk leaf hashes of each file
    files/<sha256>[.ext]       the recordings

The covering entries are each file's ``ingest`` entry, the key entries (genesis
and every rotation, so the verifier can follow the key from the one the auditor
trusts to the one that signed) and the ``export`` entry recording this copy
(Art. 20 (3): no copy leaves without a record).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hashing.digest import READ_SIZE, StreamDigester
from hashing.entries import EXPORT, INGEST, KEY_ROTATION, Entry
from hashing.errors import DigestMismatchError, InputError
from hashing.proofs_json import consistency_json, inclusion_json
from hashing.station import Station

FORMAT = "evidock-bundle/1"
MAX_CONSISTENCY_PROOFS = 512
_EXT = re.compile(r"\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class Selection:
    """Which recordings to export: one of case, digests, or all."""

    case: str | None = None
    sha256: tuple[str, ...] = ()
    all: bool = False

    def describe(self) -> dict[str, Any]:
        if self.all:
            return {"all": True}
        if self.case is not None:
            return {"case": self.case}
        return {"sha256": list(self.sha256)}


TAG = "tag"  # a recording bound to a case after ingest (agent.records)


def _case_tags(station: Station, case: str) -> list[Entry]:
    return [e for e in station.ledger.entries_of_type(TAG) if e.body.get("case") == case]


def _selected(station: Station, selection: Selection) -> list[Entry]:
    ingests = list(station.ledger.entries_of_type(INGEST))
    if selection.all:
        chosen = ingests
    elif selection.case is not None:
        # Bound at ingest (--case) or by a tag entry later; the tag entries go
        # into the bundle too, so the case binding itself is proven.
        tagged = {f for e in _case_tags(station, selection.case) for f in e.body.get("files", [])}
        chosen = [
            e
            for e in ingests
            if e.body.get("case") == selection.case or e.body.get("sha256") in tagged
        ]
    else:
        wanted = set(selection.sha256)
        chosen = [e for e in ingests if e.body.get("sha256") in wanted]
        missing = wanted - {str(e.body.get("sha256")) for e in chosen}
        if missing:
            raise InputError(f"not in the ledger: {', '.join(sorted(missing))}")
    if not chosen:
        raise InputError(f"no recordings match {selection.describe()}")
    return chosen


def _bundle_name(entry: Entry) -> str:
    sha = str(entry.body["sha256"])
    ext = _EXT.search(str(entry.body.get("name", "")))
    return f"files/{sha}{ext.group(0).lower() if ext else ''}"


def _copy_checked(src: Path, dst: Path, sha256: str, size: int) -> None:
    """Copy a stored file, refusing to export bytes that no longer match their entry."""
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    try:
        source = src.open("rb", buffering=0)
    except OSError as e:
        # A stored recording that is gone or unreadable is an integrity failure of
        # the store, not an I/O hiccup to print a traceback for.
        raise DigestMismatchError(
            f"{src}: stored copy of {sha256} cannot be read ({e.strerror}); not exported. "
            "Run `evidock ledger verify`."
        ) from e
    with source as f:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with StreamDigester() as d:
                while n := f.readinto(buf):
                    d.update(view[:n])
                    chunk = view[:n]
                    while chunk:
                        chunk = chunk[os.write(fd, chunk) :]
                got = d.finish()
            os.fsync(fd)
        finally:
            os.close(fd)
    if got.sha256_hex != sha256 or got.size != size:
        dst.unlink()
        raise DigestMismatchError(
            f"{src}: stored copy no longer matches its ledger entry ({sha256}); not exported. "
            "Run `evidock ledger verify`."
        )


def _thin(sizes: list[tuple[int, str]]) -> list[int]:
    """Sizes of earlier checkpoints to prove consistency from: all of them while
    few; otherwise the most recent half of the budget plus one per day before."""
    if len(sizes) <= MAX_CONSISTENCY_PROOFS:
        return [s for s, _ in sizes]
    recent = sizes[-MAX_CONSISTENCY_PROOFS // 2 :]
    daily: dict[str, int] = {}
    for size, signed_at in sizes[: -MAX_CONSISTENCY_PROOFS // 2]:
        daily[signed_at[:10]] = size
    older = list(daily.values())[-MAX_CONSISTENCY_PROOFS // 2 :]
    return older + [s for s, _ in recent]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")


def export_bundle(station: Station, selection: Selection, out: Path) -> Path:
    """Write a bundle for the selected recordings into the new folder ``out``.

    Raises InputError (nothing selected, ``out`` not empty) or
    DigestMismatchError (a stored file no longer matches its entry).
    """
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new folder")
    chosen = _selected(station, selection)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("files", "chunks", "proofs"):
        (out / sub).mkdir(exist_ok=True)

    files: list[dict[str, Any]] = []
    for entry in chosen:
        sha, size = str(entry.body["sha256"]), int(entry.body["size"])
        name = _bundle_name(entry)
        _copy_checked(station.store.path_for(sha), out / name, sha, size)
        rows = station.ledger.execute(
            "SELECT chunk_size, chunks FROM files WHERE sha256 = ?", (sha,)
        )
        chunk_size, blob = rows[0]
        hashes = [bytes(blob[i : i + 32]).hex() for i in range(0, len(blob), 32)]
        (out / "chunks" / f"{sha}.json").write_text(
            json.dumps({"sha256": sha, "size": size, "chunk_size": chunk_size, "hashes": hashes})
        )
        files.append({"path": name, "sha256": sha, "size": size, "seq": entry.seq})

    # The copy is itself recorded before the checkpoint is signed, so the
    # bundle proves its own export entry.
    export_entry = station.ledger.append(
        EXPORT,
        {
            "selection": selection.describe(),
            "files": [f["sha256"] for f in files],
            "out": os.fsdecode(out.absolute()),
        },
    )
    signed = station.checkpoint()
    size, root = signed.checkpoint.size, signed.checkpoint.root

    key_entries = [station.ledger.entry(0), *station.ledger.entries_of_type(KEY_ROTATION)]
    tags = _case_tags(station, selection.case) if selection.case is not None else []
    covering = {e.seq: e for e in [*key_entries, *chosen, *tags, export_entry]}
    entries = [covering[s] for s in sorted(covering)]
    with (out / "entries.jsonl").open("wb") as f:
        for e in entries:
            f.write(e.raw + b"\n")
    write_jsonl(
        out / "proofs" / "inclusion.jsonl",
        (
            inclusion_json(e.seq, size, root, station.ledger.inclusion_proof(e.seq, size))
            for e in entries
        ),
    )
    earlier = [(s, t) for s, _, t in station.ledger.checkpoints() if s < size]
    write_jsonl(
        out / "proofs" / "consistency.jsonl",
        (
            consistency_json(
                old,
                size,
                station.ledger.root(old),
                root,
                station.ledger.consistency_proof(old, size),
            )
            for old in _thin(earlier)
        ),
    )
    (out / "checkpoint.txt").write_text(signed.note, encoding="utf-8")
    manifest = {
        "format": FORMAT,
        "station": station.station_id,
        "origin": station.origin,
        "tree_size": size,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "selection": selection.describe(),
        "export_entry": export_entry.seq,
        "files": files,
        "entries": [{"seq": e.seq, "type": e.type, "leaf": e.leaf.hex()} for e in entries],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    (out / "SHA256SUMS").write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in files))
    (out / "README.txt").write_text(_readme(manifest, signed.note, station), encoding="utf-8")
    return out


def _readme(manifest: dict[str, Any], note: str, station: Station) -> str:
    key = station.keys.load().verifier.vkey
    lines = [
        "EVIDENCE EXPORT — evidock",
        "",
        f"Station:     {manifest['station']}",
        f"Exported:    {manifest['created']}",
        f"Selection:   {json.dumps(manifest['selection'], ensure_ascii=False)}",
        f"Recordings:  {len(manifest['files'])}",
        f"Ledger size: {manifest['tree_size']} entries (export recorded as entry "
        f"{manifest['export_entry']})",
        f"Signing key: {key}",
        "",
        "HOW TO CHECK THIS EXPORT",
        "",
        "1. File digests, with nothing but coreutils:",
        "       sha256sum -c SHA256SUMS",
        "",
        "2. Everything (digests, ledger entries, proofs, signature), offline, with",
        "   evidock and the station's public key obtained from the agency (not from",
        "   this folder):",
        "       evidock verify . --key 'STATION-VERIFIER-KEY'",
        "   Add --checkpoint FILE with a checkpoint you already hold from this",
        "   station to prove this export's ledger extends it (no rollback, no fork).",
        "",
        "RECORDINGS",
        "",
    ]
    lines += [
        f"  {f['path']}  {f['size']} bytes  ledger entry {f['seq']}" for f in manifest["files"]
    ]
    lines += ["", "SIGNED CHECKPOINT", "", *("    " + line for line in note.splitlines()), ""]
    lines += [
        "The ledger entries (entries.jsonl) are canonical JSON, one per line, exactly",
        "as hashed into the RFC 9162 Merkle tree; proofs/ holds an inclusion proof",
        "for each and chunks/ the SHA-256 of every 1 MiB chunk of every file, so a",
        "changed byte range can be named. See manifest.json for the index.",
        "",
    ]
    return "\n".join(lines)
