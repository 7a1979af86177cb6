"""Export bundles: a folder an auditor or a court verifies offline (design.md "Formats").

    README.txt                 what this is and how to check it, for humans
    NOTICE.txt                 a disclosure only: to whom, why, by whom, when (Art. 18)
    SHA256SUMS                 `sha256sum -c SHA256SUMS` checks every file with coreutils alone
    manifest.json              station, tree size, files (path, digest, size, entry), entries
    checkpoint.txt             the signed checkpoint (C2SP signed note) the proofs lead to
    entries.jsonl              the covering ledger entries, one per line, exactly as hashed
    proofs/inclusion.jsonl     one RFC 9162 inclusion proof per entry, in `evidock prove` form
    proofs/consistency.jsonl   consistency proofs from the dock's earlier checkpoints
    chunks/<sha256>.json       the 1 MiB chunk leaf hashes of each file
    files/<sha256>[.ext]       the recordings
    verifier/verify.py         the offline verifier, with the ``hashing`` modules it
    verifier/hashing/*.py      needs: `python3 verifier/verify.py . --key KEY` runs
                               with Python 3.11+ and python3-cryptography alone
    summary.html               (exports through the agent) a printable page

Nothing else belongs in a bundle: the verifier reports any other file, folder,
link or special file as added (hashing.verify.LAYOUT_FILES). The pages for
humans (README.txt, summary.html) name the station key and its fingerprint but
never paste the key: an auditor takes it from the agency. The bundle is its
owner's alone (files FILE_MODE, folders DIR_MODE), whatever the umask.

The covering entries are each file's ``ingest`` entry, the key entries (genesis
and every rotation, so the verifier can follow the key from the one the auditor
trusts to the one that signed) and the ``export`` entry recording this copy
(Art. 20 (3): no copy leaves without a record). That entry names who asked,
in which role, why, and for a disclosure to whom (``Request``); the notice a
disclosure carries is derived from it (hashing.verify.disclosure_notice) and
checked against it by the verifier.

This module takes plain strings for the requester: deciding who may export
what is the agent's (agent.records.exports), not the integrity core's.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hashing.digest import READ_SIZE, StreamDigester
from hashing.entries import EXPORT, INGEST, KEY_ROTATION, Entry
from hashing.errors import DigestMismatchError, InputError
from hashing.proofs_json import consistency_json, inclusion_json
from hashing.station import Station, software_version
from hashing.verify import DISCLOSE, NOTICE, README, disclosure_notice, notice_head

log = logging.getLogger(__name__)

FORMAT = "evidock-bundle/1"
MAX_CONSISTENCY_PROOFS = 512
_EXT = re.compile(r"\.[A-Za-z0-9]{1,8}$")

EXPORT_ACTION, ARCHIVE = "export", "archive"
ACTIONS = (EXPORT_ACTION, DISCLOSE, ARCHIVE)
VERIFIER_DIR = "verifier"
# A bundle holds recordings: readable by the user who exported it only, also
# where the command line runs without the station service's UMask=0077.
FILE_MODE, DIR_MODE = 0o600, 0o700
_PACKAGE = Path(__file__).resolve().parent  # the installed ``hashing`` package

# The entry point of the verifier a bundle carries. It puts its own folder first
# on the path (also under `python3 -I`, which leaves the script's folder out) so
# the copied modules are the ones imported, whatever else is installed.
_VERIFIER_MAIN = """\
#!/usr/bin/env python3
\"\"\"Offline verifier of an evidock export bundle, carried inside the bundle.

    python3 verifier/verify.py . --key 'STATION-VERIFIER-KEY'

Needs Python 3.11 or later and the cryptography package (Debian 12:
apt-get install python3 python3-cryptography); no evidock installation. The
modules in hashing/ beside this file are a copy of evidock's own verifier;
their SHA-256 digests are listed in manifest.json under "verifier".
Exit codes: 0 verified, 1 integrity failure found, 2 usage, 3 could not verify.
\"\"\"

import sys
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit("verify.py needs Python 3.11 or later")
sys.dont_write_bytecode = True  # leave the bundle as it was found
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import cryptography  # noqa: F401
except ImportError:
    sys.stderr.write(
        "verify.py needs the Python package cryptography "
        "(Debian: apt-get install python3-cryptography)\\n"
    )
    sys.exit(3)

from hashing.verify import main  # noqa: E402

sys.exit(main())
"""


@dataclass(frozen=True)
class Selection:
    """Which recordings to export: a case, digests, a case's recordings among
    digests (both given: the year-end archive), or all."""

    case: str | None = None
    sha256: tuple[str, ...] = ()
    all: bool = False

    def describe(self) -> dict[str, Any]:
        """The selection as the export entry and manifest record it, and as messages name it."""
        if self.all:
            return {"all": True}
        if self.case is not None and self.sha256:
            return {"case": self.case, "sha256": list(self.sha256)}
        if self.case is not None:
            return {"case": self.case}
        return {"sha256": list(self.sha256)}


@dataclass(frozen=True)
class Request:
    """Who exports, in which role, why, and (a disclosure only) to whom: the
    fields the export entry records beside its files (Art. 18, Art. 20 (3)).

    Raises InputError for an unknown action, an empty field, or a recipient on
    anything but a disclosure (or none on a disclosure).
    """

    user: str
    role: str
    purpose: str
    action: str = EXPORT_ACTION
    recipient: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InputError(f"export action {self.action!r}: one of {', '.join(ACTIONS)}")
        for name in ("user", "role", "purpose"):
            if not str(getattr(self, name)).strip():
                raise InputError(f"an export needs a {name}")
        if (self.action == DISCLOSE) != (self.recipient is not None):
            raise InputError(
                "a disclosure names its recipient, and only a disclosure does "
                f"(action {self.action!r}, recipient {self.recipient!r})"
            )

    def body(self) -> dict[str, Any]:
        """The requester's fields of the ``export`` entry body (Art. 18, Art. 20 (3)).

        ``recipient`` is null except on a disclosure, as ``__post_init__`` enforced.
        """
        return {
            "action": self.action,
            "user": self.user,
            "role": self.role,
            "purpose": self.purpose,
            "recipient": self.recipient,
        }


TAG = "tag"  # a recording bound to a case after ingest (agent.records.registry)


def _case_tags(station: Station, case: str) -> list[Entry]:
    return [e for e in station.ledger.entries_of_type(TAG) if e.body.get("case") == case]


def select(station: Station, selection: Selection) -> list[Entry]:
    """The ingest entries of the selected recordings, in ledger order.

    Raises InputError when nothing matches, or when a named digest is not in
    the ledger (or, with a case, not bound to that case).
    """
    ingests = list(station.ledger.entries_of_type(INGEST))
    if selection.all:
        chosen = ingests
    else:
        if selection.case is not None:
            # Bound at ingest (--case) or by a tag entry later; the tag entries go
            # into the bundle too, so the case binding itself is proven.
            tagged = {
                f for e in _case_tags(station, selection.case) for f in e.body.get("files", [])
            }
            ingests = [
                e
                for e in ingests
                if e.body.get("case") == selection.case or e.body.get("sha256") in tagged
            ]
        if selection.sha256:
            wanted = set(selection.sha256)
            chosen = [e for e in ingests if e.body.get("sha256") in wanted]
            missing = wanted - {str(e.body.get("sha256")) for e in chosen}
            if missing:
                where = "the ledger" if selection.case is None else f"case {selection.case!r}"
                raise InputError(f"not in {where}: {', '.join(sorted(missing))}")
        else:
            chosen = ingests
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
    """Write one compact, key-sorted JSON object per line (the bundle's ``proofs/*.jsonl``).

    ``rows`` may be a generator, so proofs are written as they are computed, not
    held in memory. Raises OSError from the file system.
    """
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")


def verifier_modules() -> list[str]:
    """The ``hashing`` modules the offline verifier imports, transitively (read
    from their import statements, so a new import is carried without a list to
    keep up to date). Raises InputError if one is missing from the package."""
    wanted, seen = ["__init__", "verify"], set[str]()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _PACKAGE / f"{name}.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (OSError, SyntaxError) as e:
            raise InputError(f"{path}: cannot read the verifier's module ({e})") from e
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "hashing":
                    wanted += [a.name for a in node.names]
                elif node.module.startswith("hashing."):
                    wanted.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                wanted += [
                    a.name.split(".")[1] for a in node.names if a.name.startswith("hashing.")
                ]
    return sorted(seen)


def _copy_verifier(out: Path) -> dict[str, Any]:
    """Write ``verifier/`` (the entry point and the modules); return its manifest part."""
    folder = out / VERIFIER_DIR
    (folder / "hashing").mkdir(parents=True)
    written: list[tuple[str, bytes]] = [("verify.py", _VERIFIER_MAIN.encode())]
    for name in verifier_modules():
        data = (_PACKAGE / f"{name}.py").read_bytes()
        written.append((f"hashing/{name}.py", data))
    files = []
    for rel, data in written:
        (folder / rel).write_bytes(data)
        files.append({"path": f"{VERIFIER_DIR}/{rel}", "sha256": hashlib.sha256(data).hexdigest()})
    return {
        "software": software_version(),
        "run": f"python3 {VERIFIER_DIR}/verify.py . --key 'STATION-VERIFIER-KEY'",
        "files": files,
    }


def restrict_modes(folder: Path, *, files: bool = True) -> None:
    """Make ``folder`` (and, with ``files``, everything in it) its owner's alone:
    files FILE_MODE, folders DIR_MODE; links are not followed. ``folder`` may
    be a single file (with ``files=False``). On a filesystem
    without POSIX modes (FAT, exFAT: its mount options decide) this is logged,
    not an error."""
    paths = [folder, *(folder.rglob("*") if files else ())]
    for path in paths:
        if path.is_symlink():
            continue
        try:
            path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            log.warning(
                "%s: its mode cannot be set (%s), so who may read the bundle is what the "
                "filesystem's mount options say; export to a Linux filesystem to restrict it",
                path,
                e.strerror,
            )
            return


def _clear(out: Path, created: bool) -> None:
    """Remove what a failed export wrote, so no unrecorded copy stays behind."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def export_bundle(
    station: Station,
    selection: Selection,
    out: Path,
    request: Request,
    *,
    carry: Sequence[int] = (),
) -> Path:
    """Write a bundle for the selected recordings into the new folder ``out``;
    the ``export`` entry records ``request`` (who, role, purpose, recipient).

    ``carry`` names further entries to prove in the bundle without their files
    (the year-end archive carries the ingest and purge entries of recordings
    purged under the retention rules, so their fate is proven too).

    Raises InputError (nothing selected, ``out`` not empty, an unknown carried
    entry) or DigestMismatchError (a stored file no longer matches its entry).
    If either happens before the export entry is appended, what was written to
    ``out`` is removed again.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder; choose a new folder")
    chosen = select(station, selection)
    carried = [station.ledger.entry(seq) for seq in sorted(set(carry))]
    created = not out.exists()
    out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        restrict_modes(out, files=False)  # nobody else may look in while it is written
        files = _copy_files(station, chosen, out)
        verifier = _copy_verifier(out)
    except BaseException:
        _clear(out, created)
        raise
    return _finish(station, selection, out, request, chosen, carried, files, verifier)


def _copy_files(station: Station, chosen: list[Entry], out: Path) -> list[dict[str, Any]]:
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
    return files


def _finish(
    station: Station,
    selection: Selection,
    out: Path,
    request: Request,
    chosen: list[Entry],
    carried: list[Entry],
    files: list[dict[str, Any]],
    verifier: dict[str, Any],
) -> Path:
    # The copy is itself recorded before the checkpoint is signed, so the
    # bundle proves its own export entry.
    export_entry = station.ledger.append(
        EXPORT,
        {
            "selection": selection.describe(),
            "files": [f["sha256"] for f in files],
            "out": os.fsdecode(out.absolute()),
            **request.body(),
        },
    )
    signed = station.checkpoint()
    size, root = signed.checkpoint.size, signed.checkpoint.root

    key_entries = [station.ledger.entry(0), *station.ledger.entries_of_type(KEY_ROTATION)]
    tags = _case_tags(station, selection.case) if selection.case is not None else []
    covering = {e.seq: e for e in [*key_entries, *chosen, *tags, *carried, export_entry]}
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
        "verifier": verifier,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    (out / "SHA256SUMS").write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in files))
    notice = disclosure_notice(export_entry)
    if notice is not None:
        (out / NOTICE).write_text(notice, encoding="utf-8")
    (out / README).write_text(
        _readme(manifest, signed.note, station, export_entry, notice), encoding="utf-8"
    )
    restrict_modes(out)
    return out


def _readme(
    manifest: dict[str, Any], note: str, station: Station, export: Entry, notice: str | None
) -> str:
    key = station.keys.load().verifier
    body = export.body
    # Art. 18: whoever holds this copy of a disclosure sees first to whom it was
    # given and why (the verifier checks this head against the export entry).
    lines = [] if notice is None else notice_head(notice).split("\n")[:-1]
    lines += [
        "EVIDENCE EXPORT — evidock",
        "",
        f"Station:     {manifest['station']}",
        f"Exported:    {manifest['created']}",
        f"Action:      {body.get('action', EXPORT_ACTION)} by {body.get('user', '-')} "
        f"({body.get('role', '-')})",
        f"Purpose:     {body.get('purpose', '-')}",
    ]
    if body.get("recipient") is not None:
        lines.append(f"Recipient:   {body['recipient']}")
    lines += [
        f"Selection:   {json.dumps(manifest['selection'], ensure_ascii=False)}",
        f"Recordings:  {len(manifest['files'])}",
        f"Ledger size: {manifest['tree_size']} entries (export recorded as entry "
        f"{manifest['export_entry']})",
        f"Signing key: {key.name}, fingerprint (key id) {key.key_id_hex}",
        "             Compare it with the key the agency publishes, and take the key",
        "             itself from the agency, never from this folder.",
        "",
        "HOW TO CHECK THIS EXPORT",
        "",
        "This file and summary.html are for reading and printing, and anyone can",
        "edit them: what counts is the verifier's report (step 2) and, for a",
        "disclosure, NOTICE.txt, which the verifier checks against the signed",
        "ledger entry.",
        "",
        "1. File digests, with nothing but coreutils:",
        "       sha256sum -c SHA256SUMS",
        "",
        "2. Everything (digests, ledger entries, proofs, signature), offline, with",
        "   the station's public key obtained from the agency (not from this folder),",
        "   and either evidock:",
        "       evidock verify . --key 'STATION-VERIFIER-KEY'",
        "   or the verifier this bundle carries, with Python 3.11+ and the",
        "   cryptography package alone (Debian: apt-get install python3-cryptography):",
        "       python3 verifier/verify.py . --key 'STATION-VERIFIER-KEY'",
        "   Add --checkpoint FILE with a checkpoint you already hold from this",
        "   station to prove this export's ledger extends it (no rollback, no fork).",
        "   The carried verifier is a convenience: manifest.json lists its files'",
        "   digests, to compare with the agency's published evidock release.",
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
