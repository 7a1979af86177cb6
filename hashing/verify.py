"""The offline verifier of export bundles. It trusts only the keys the auditor passes.

Order of reasoning: the checkpoint must be signed by a key the auditor trusts,
directly or through rotation entries signed by a trusted key, and by the key
that was in force at the checkpoint's tree size; every entry must be proven
into that checkpoint's tree; every file must match the digest its proven entry
records; and a checkpoint the auditor already holds must be a prefix of this
one (no rollback, no fork). Each failure is reported with its place; checking
goes on after a failure so one report names everything that is wrong.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from hashing.checkpoint import Checkpoint
from hashing.digest import CHUNK_SIZE, chunk_ranges_differing, digest_file
from hashing.entries import EXPORT, GENESIS, INGEST, KEY_ROTATION, Entry
from hashing.errors import EvidockError, InputError, ProofError, SignatureError, UnknownSignerError
from hashing.findings import (
    BAD_SIGNATURE,
    CHAIN_BROKEN,
    ENTRY_ALTERED,
    ENTRY_MISSING,
    ENTRY_REORDERED,
    EXIT_UNVERIFIABLE,
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
from hashing.keys import KeyHistory
from hashing.merkle import root_of, verify_consistency, verify_inclusion
from hashing.note import NoteVerifier, open_note, parse_note

NOTICE = "NOTICE.txt"  # the visible notice of a disclosure (Art. 18)
README = "README.txt"
SUMMARY = "summary.html"  # the printable page an export through the agent adds
DISCLOSE = "disclose"  # the export entry's action for a disclosure
NOTICE_RULE = "=" * 78

# A bundle's layout (hashing.bundle): every other file, folder or link in it is
# reported, so nothing rides along unchecked (a second copy of a recording, a
# second notice). NOTICE.txt, files/, chunks/ and verifier/ are checked apart.
LAYOUT_FILES = frozenset(
    {
        README,
        "SHA256SUMS",
        "manifest.json",
        "checkpoint.txt",
        "entries.jsonl",
        SUMMARY,
        "proofs/inclusion.jsonl",
        "proofs/consistency.jsonl",
    }
)
FILES_DIR, CHUNKS_DIR, VERIFIER_DIR = "files", "chunks", "verifier"
LAYOUT_DIRS = frozenset({FILES_DIR, CHUNKS_DIR, "proofs"})
# What Python leaves beside a module it imported, were the bundle writable when
# its verifier ran (the verifiers older bundles carry do not turn that off).
_PYCACHE = re.compile(r"(?P<module>[A-Za-z0-9_]+)\.[a-z]+-[0-9]+(?:\.opt-[12])?\.pyc")
_HTML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


def disclosure_notice(entry: Entry) -> str | None:
    """The notice a disclosure bundle carries, derived from its export entry alone
    (so the verifier can tell it was not edited); None unless the entry is a
    disclosure. English, then Chinese; one line each."""
    body = entry.body
    if body.get("action") != DISCLOSE:
        return None
    recipient, purpose = body.get("recipient"), body.get("purpose")
    user, role, date = body.get("user"), body.get("role"), entry.time[:10]
    return (
        f"Disclosed to {recipient} for {purpose} by {user} ({role}) on {date}; "
        f"ledger entry {entry.seq}\n"
        f"依申请提供给 {recipient}，用途：{purpose}；经办：{user}（{role}），{date}；"
        f"存证日志第 {entry.seq} 条\n"
    )


def notice_head(notice: str) -> str:
    """How README.txt of a disclosure begins: the notice between two rules."""
    return f"{NOTICE_RULE}\n{notice}{NOTICE_RULE}\n\n"


def notice_html(notice: str) -> str:
    """The notice as summary.html carries it: one paragraph a line, every
    character HTML-escaped (as markupsafe does, so older pages compare equal)."""
    lines = "".join(f"<p>{line.translate(_HTML_ESCAPES)}</p>" for line in notice.splitlines())
    return f'<div class="notice" id="notice">{lines}</div>'


def trusted_keys(history: KeyHistory | None, anchors: Sequence[NoteVerifier]) -> list[NoteVerifier]:
    """The anchors plus every key a trusted key handed over to by rotation."""
    trusted = list(anchors)
    if history is None:
        return trusted
    handed_over = False
    for epoch in history.epochs:
        if handed_over and epoch.key not in trusted:
            trusted.append(epoch.key)
        handed_over = handed_over or epoch.key in trusted
    return trusted


def check_signed_checkpoint(
    report: Report,
    place: str,
    note: str,
    anchors: Sequence[NoteVerifier],
    history: KeyHistory | None,
) -> Checkpoint | None:
    """Verify a checkpoint note; add findings; return its body only if it verified."""
    keys = trusted_keys(history, anchors)
    try:
        text, _ = parse_note(note)
        checkpoint = Checkpoint.parse(text)
    except InputError as e:
        report.add(BAD_SIGNATURE, place, f"checkpoint is malformed: {e}")
        return None
    try:
        opened = open_note(note, keys)
    except UnknownSignerError as e:
        report.add(UNKNOWN_SIGNATURE, place, str(e))
        return None
    except SignatureError as e:
        report.add(BAD_SIGNATURE, place, str(e))
        return None
    if history is not None:
        expected = history.key_for_size(checkpoint.size)
        if expected not in opened.verified:
            signer = opened.verified[0]
            epoch = history.epoch_of(signer)
            when = (
                f"in force from tree size {epoch.from_size}" if epoch else "not in the key history"
            )
            report.add(
                BAD_SIGNATURE,
                place,
                f"signed by {signer.vkey} ({when}), but the key in force at tree size "
                f"{checkpoint.size} is {expected.vkey}",
            )
            return None
    return checkpoint


def open_held_checkpoint(
    report: Report,
    held_note: str,
    anchors: Sequence[NoteVerifier],
    history: KeyHistory | None,
    origin: str,
    keys_named: str,
) -> Checkpoint | None:
    """The checkpoint an auditor holds, verified and of this log; else why not (report.cannot)."""
    probe = Report("held checkpoint")
    held = check_signed_checkpoint(probe, "held checkpoint", held_note, anchors, history)
    if held is None:
        report.cannot(
            f"the checkpoint you hold does not verify with {keys_named}: "
            + "; ".join(f.detail for f in probe.findings)
        )
        return None
    if held.origin != origin:
        report.cannot(f"the checkpoint you hold is for {held.origin}, not {origin}")
        return None
    return held


def check_held_checkpoint(
    report: Report,
    held_note: str,
    anchors: Sequence[NoteVerifier],
    history: KeyHistory | None,
    current: Checkpoint,
    consistency: Iterable[dict[str, Any]],
) -> None:
    """Compare a checkpoint the auditor holds with the current one: rollback or fork."""
    held = open_held_checkpoint(
        report, held_note, anchors, history, current.origin, "the key you gave"
    )
    if held is None:
        return
    if held.size > current.size:
        report.add(
            ROLLBACK,
            "checkpoint",
            f"tree size {current.size} is older than the checkpoint you hold (size {held.size}): "
            "entries after it were removed or the ledger was rolled back",
        )
        return
    if held.size == current.size:
        if held.root != current.root:
            report.add(FORK, "checkpoint", f"two different trees of size {held.size}")
        return
    for proof in consistency:
        if proof.get("old_size") != held.size:
            continue
        try:
            hashes = [_b64(h) for h in proof["hashes"]]
            if proof.get("new_size") != current.size:
                raise ProofError(f"proof is to size {proof.get('new_size')}, not {current.size}")
            verify_consistency(held.size, current.size, held.root, current.root, hashes)
        except (ProofError, InputError, KeyError, TypeError) as e:
            report.add(
                FORK,
                "checkpoint",
                f"tree of size {current.size} does not extend the one you hold (size "
                f"{held.size}): {e}",
            )
        return
    report.cannot(
        f"no consistency proof from tree size {held.size} in this bundle; ask the dock for "
        f"`evidock prove consistency {held.size} {current.size}`"
    )


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise InputError("hash is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError("hash is not base64") from e


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if not isinstance(row, dict):
            raise InputError(f"{path.name} line {i} is not an object")
        rows.append(row)
    return rows


def verify_bundle(
    folder: Path, anchors: Sequence[NoteVerifier], held_note: str | None = None
) -> Report:
    """Verify an export bundle offline. Never raises for bad content: it reports."""
    report = Report(str(folder))
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        note_bytes = (folder / "checkpoint.txt").read_bytes()
        raw_entries = (folder / "entries.jsonl").read_bytes()
    except (OSError, ValueError) as e:
        report.cannot(f"not a readable evidock bundle: {e}")
        return report
    if not isinstance(manifest, dict) or manifest.get("format") != "evidock-bundle/1":
        report.cannot("manifest.json is not an evidock-bundle/1 manifest")
        return report
    try:
        proofs = _read_jsonl(folder / "proofs" / "inclusion.jsonl")
    except (OSError, ValueError) as e:
        report.add(MALFORMED, "proofs/inclusion.jsonl", f"unreadable: {e}")
        proofs = []
    try:
        consistency = _read_jsonl(folder / "proofs" / "consistency.jsonl")
    except (OSError, ValueError):
        consistency = []

    # The checkpoint body, unverified for now: the key history it needs is in
    # the entries, which are only trusted once proven into this very tree.
    try:
        # A byte flipped into invalid UTF-8 is a corrupt checkpoint, not an unreadable bundle.
        try:
            note = note_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 ({e})") from e
        claimed = Checkpoint.parse(parse_note(note)[0])
    except InputError as e:
        report.add(BAD_SIGNATURE, "checkpoint.txt", f"checkpoint is malformed: {e}")
        return report

    entries = _check_entries(report, raw_entries, proofs, claimed, manifest)
    history: KeyHistory | None = None
    key_entries = [e for s, e in sorted(entries.items()) if e.type in (GENESIS, KEY_ROTATION)]
    if 0 not in entries:
        report.add(
            ENTRY_MISSING, "entries.jsonl", "the genesis entry (0) is missing: key history unknown"
        )
    else:
        try:
            history = KeyHistory.from_entries(key_entries)
        except SignatureError as e:
            report.add(BAD_SIGNATURE, "key history", str(e))
        except InputError as e:
            report.add(MALFORMED, "key history", str(e))
    checkpoint = check_signed_checkpoint(report, "checkpoint.txt", note, anchors, history)
    if checkpoint is not None:
        report.checked["checkpoint"] = (
            f"{checkpoint.origin} size {checkpoint.size}, signature verified"
        )
        if manifest.get("origin") != checkpoint.origin:
            report.add(MALFORMED, "manifest.json", "origin differs from the checkpoint's")
        if held_note is not None:
            check_held_checkpoint(report, held_note, anchors, history, checkpoint, consistency)
    elif held_note is not None:
        report.cannot(
            "the held checkpoint was not compared: this bundle's checkpoint did not verify"
        )
    report.checked["entries proven"] = len(entries)
    _check_files(report, folder, manifest, entries)
    return report


def _check_entries(
    report: Report,
    raw: bytes,
    proofs: list[dict[str, Any]],
    checkpoint: Checkpoint,
    manifest: dict[str, Any],
) -> dict[int, Entry]:
    """Parse, order-check and prove every entry; return those proven, by seq."""
    by_index: dict[int, dict[str, Any]] = {}
    for p in proofs:
        if isinstance(p.get("index"), int):
            by_index[p["index"]] = p
    leaves = {
        m.get("seq"): m.get("leaf") for m in manifest.get("entries", []) if isinstance(m, dict)
    }
    proven: dict[int, Entry] = {}
    seen: list[int] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, 1):
        place = f"entries.jsonl line {number}"
        try:
            entry = Entry.parse(line)
        except InputError as e:
            report.add(ENTRY_ALTERED, place, f"not a well-formed entry: {e}")
            continue
        place = f"entry {entry.seq}"
        if seen and entry.seq <= seen[-1]:
            report.add(
                ENTRY_REORDERED,
                place,
                f"appears after entry {seen[-1]}" if entry.seq < seen[-1] else "appears twice",
            )
        seen.append(entry.seq)
        proof = by_index.get(entry.seq)
        if proof is None:
            report.add(PROOF_FAILURE, place, "no inclusion proof for this entry")
            continue
        try:
            if proof.get("tree_size") != checkpoint.size:
                raise ProofError(f"proof is for tree size {proof.get('tree_size')}")
            hashes = [_b64(h) for h in proof.get("hashes", [])]
            verify_inclusion(entry.leaf, entry.seq, checkpoint.size, hashes, checkpoint.root)
        except (ProofError, InputError) as e:
            if leaves.get(entry.seq) not in (None, entry.leaf.hex()):
                report.add(ENTRY_ALTERED, place, f"bytes differ from the signed tree ({e})")
            else:
                report.add(PROOF_FAILURE, place, str(e))
            continue
        proven[entry.seq] = entry
    for seq in sorted(leaves, key=lambda s: s if isinstance(s, int) else -1):
        if isinstance(seq, int) and seq not in seen:
            report.add(
                ENTRY_MISSING, f"entry {seq}", "listed in manifest.json but not in entries.jsonl"
            )
    for seq, entry in proven.items():
        before = proven.get(seq - 1)
        if before is not None and entry.prev != before.digest:
            report.add(CHAIN_BROKEN, f"entry {seq}", f"prev does not match entry {seq - 1}")
    return proven


def _check_files(
    report: Report, folder: Path, manifest: dict[str, Any], entries: dict[int, Entry]
) -> None:
    ingests = {str(e.body.get("sha256")): e for e in entries.values() if e.type == INGEST}
    listed: dict[str, dict[str, Any]] = {}
    for f in manifest.get("files", []):
        if isinstance(f, dict) and isinstance(f.get("path"), str):
            if _in_files_folder(f["path"]):
                listed[f["path"]] = f
            else:
                # A manifest could otherwise send the verifier to a good copy outside
                # the bundle (or to any file on the auditor's machine) while the
                # recording itself is gone from it.
                report.add(
                    MALFORMED,
                    "manifest.json",
                    f"file path {f['path']!r} is not a file directly under files/",
                )
    if (folder / "files").is_symlink():
        report.add(
            MALFORMED, "files", "is a symbolic link: the recordings are not inside the bundle"
        )
    by_sha = {str(f.get("sha256")): path for path, f in listed.items()}
    export = _export_entry(report, manifest, entries)
    exported_files = _exported_files(report, export)
    if export is not None:
        _check_request(report, folder, export)
    if exported_files is not None:
        # The export entry lists exactly the bundle's recordings: a manifest row it
        # does not name is a recording that did not leave the dock with this copy.
        for sha, listed_path in sorted(by_sha.items()):
            if sha not in exported_files:
                report.add(
                    MALFORMED,
                    "manifest.json",
                    f"lists {listed_path}, which export entry {export.seq if export else '?'} "
                    "does not name",
                )
    intact = 0
    actual_sha: dict[str, str] = {}
    for sha, entry in sorted(ingests.items(), key=lambda kv: kv[1].seq):
        if exported_files is not None and sha not in exported_files:
            continue  # an entry carried for context, not a file of this export
        path = by_sha.get(sha)
        if path is None or not (folder / path).is_file():
            report.add(
                FILE_MISSING, path or f"entry {entry.seq}", f"recording {sha} is not in the bundle"
            )
            continue
        result = _check_file(report, folder, path, entry)
        actual_sha[path] = result
        intact += result == sha
    # A file whose bytes are another entry's: say so, it is the likeliest story.
    for path, got in actual_sha.items():
        if got != listed[path].get("sha256") and got in ingests:
            report.add(
                FILE_MODIFIED,
                path,
                f"holds the bytes of entry {ingests[got].seq} ({got}): files were swapped",
            )
    if exported_files is not None:
        for sha in sorted(exported_files - set(ingests)):
            report.add(
                ENTRY_MISSING, by_sha.get(sha, sha), "exported file has no proven ingest entry"
            )
    # Only recordings the export entry names belong here: a file of an entry
    # carried for context is no part of this export.
    covered = {
        by_sha[s]
        for s in ingests
        if s in by_sha and (exported_files is None or s in exported_files)
    }
    _check_layout(report, folder, manifest, listed, covered, export)
    _check_sums(report, folder, listed)
    report.checked["files intact"] = f"{intact} of {len(listed)}"


def _export_entry(
    report: Report, manifest: dict[str, Any], entries: dict[int, Entry]
) -> Entry | None:
    """The bundle's proven export entry, or None (with a finding) if it has none.

    Every bundle carries the export entry that recorded it (Art. 20 (3)), and
    only that signed list says which recordings left the dock together. Without
    it a recording could be taken out of a bundle with its entry and every
    manifest row, and what is left would still verify: so its absence fails.
    """
    named = manifest.get("export_entry")
    export = entries.get(named) if isinstance(named, int) else None
    if export is None or export.type != EXPORT:
        proven = [e for e in entries.values() if e.type == EXPORT]
        export = max(proven, key=lambda e: e.seq) if proven else None
    if export is None:
        report.add(
            ENTRY_MISSING,
            "export entry",
            f"the bundle does not prove the export entry that records it (manifest names "
            f"{named!r}): recordings may have been taken out of it",
        )
        return None
    if named != export.seq:
        report.add(
            MALFORMED,
            "manifest.json",
            f"export_entry is {named!r}, the export entry is {export.seq}",
        )
    return export


def _exported_files(report: Report, export: Entry | None) -> set[str] | None:
    """The digests the export entry records, or None if there is no usable list."""
    if export is None:
        return None
    files = export.body.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        report.add(MALFORMED, f"entry {export.seq}", "export entry has no list of files")
        return None
    return set(files)


def _check_request(report: Report, folder: Path, export: Entry) -> None:
    """Who exported, why and to whom, as the export entry says; and the visible
    notice of a disclosure (Art. 18), which must be exactly the one the entry
    implies. Bundles from before these fields existed carry neither."""
    body = export.body
    if body.get("user") is not None:
        said = (
            f"entry {export.seq}: {body.get('action', 'export')} by {body.get('user')} "
            f"({body.get('role')}) on {export.time[:10]}, purpose {body.get('purpose')!r}"
        )
        if body.get("recipient") is not None:
            said += f", to {body.get('recipient')!r}"
        report.checked["export"] = said
    expected = disclosure_notice(export)
    path = folder / NOTICE
    if path.is_symlink():
        report.add(FILE_MODIFIED, NOTICE, "is a symbolic link, not the notice")
        return
    try:
        found: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        found = None
    except (OSError, UnicodeDecodeError) as e:
        found = f"unreadable: {e}"
    if expected is None:
        if found is not None:
            report.add(
                FILE_ADDED,
                NOTICE,
                f"a disclosure notice, but export entry {export.seq} records no disclosure",
            )
    elif found is None:
        report.add(
            FILE_MISSING,
            NOTICE,
            f"export entry {export.seq} records a disclosure; its notice was removed",
        )
    elif found != expected:
        report.add(
            FILE_MODIFIED,
            NOTICE,
            f"differs from the notice export entry {export.seq} records: "
            f"{expected.splitlines()[0]!r}",
        )
    else:
        report.checked["notice"] = "matches the export entry"
    _check_notice_copies(report, folder, export, expected)


def _check_notice_copies(report: Report, folder: Path, export: Entry, expected: str | None) -> None:
    """README.txt (at its head) and summary.html (if the bundle has one) show a
    disclosure's notice to whoever opens them first: each must show exactly the
    notice the export entry implies, and a bundle of no disclosure none."""
    # README.txt is in every bundle, the notice at its head; summary.html only in
    # those written through the agent (and in none before it existed).
    copies = ((README, notice_head, True), (SUMMARY, notice_html, False))
    for name, render, required in copies:
        path = folder / name
        if path.is_symlink():
            continue  # reported by the layout check; a link is not followed
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if expected is not None and required:
                report.add(
                    FILE_MISSING,
                    name,
                    f"export entry {export.seq} records a disclosure; {name}, which shows "
                    "its notice first, was removed",
                )
            continue
        except (OSError, UnicodeDecodeError) as e:
            report.add(FILE_MODIFIED, name, f"unreadable ({e}): its notice cannot be checked")
            continue
        if expected is None:
            planted = text.startswith(NOTICE_RULE) if required else 'id="notice"' in text
            if planted:
                report.add(
                    FILE_MODIFIED,
                    name,
                    f"shows a disclosure notice, but export entry {export.seq} records no "
                    "disclosure",
                )
            continue
        shown = render(expected)
        if not (text.startswith(shown) if required else shown in text):
            report.add(
                FILE_MODIFIED,
                name,
                f"does not show {'at its head ' if required else ''}the notice export entry "
                f"{export.seq} records ({expected.splitlines()[0]!r}); what counts is "
                f"{NOTICE} and this report",
            )


def _verifier_files(report: Report, manifest: dict[str, Any]) -> set[str]:
    """The paths under verifier/ that manifest.json lists (none in older bundles)."""
    part = manifest.get("verifier")
    if part is None:
        return set()
    rows = part.get("files") if isinstance(part, dict) else None
    if not isinstance(rows, list):
        report.add(MALFORMED, "manifest.json", "verifier has no list of files")
        return set()
    paths = set()
    for row in rows:
        path = row.get("path") if isinstance(row, dict) else None
        parts = PurePosixPath(path).parts if isinstance(path, str) else ()
        if len(parts) < 2 or parts[0] != VERIFIER_DIR or {".", "..", "/"} & set(parts):
            report.add(
                MALFORMED,
                "manifest.json",
                f"verifier file path {path!r} is not a file under {VERIFIER_DIR}/",
            )
            continue
        paths.add("/".join(parts))
    return paths


def _check_layout(
    report: Report,
    folder: Path,
    manifest: dict[str, Any],
    listed: dict[str, dict[str, Any]],
    covered: set[str],
    export: Entry | None,
) -> None:
    """Report as added everything in the bundle its layout does not hold: files,
    folders, symbolic links and special files alike. Paths checked elsewhere
    (the recordings an entry covers, the notice once the export entry is
    known, a linked files/) are left to those checks."""
    allowed_files = set(LAYOUT_FILES)
    allowed_files |= {f"{CHUNKS_DIR}/{f.get('sha256')}.json" for f in listed.values()}
    allowed_dirs = set(LAYOUT_DIRS)
    modules: dict[str, set[str]] = {}  # verifier folder -> the modules listed in it
    for path in _verifier_files(report, manifest):
        allowed_files.add(path)
        parent = PurePosixPath(path).parent
        allowed_dirs |= {str(p) for p in (parent, *parent.parents) if str(p) != "."}
        if path.endswith(".py"):
            modules.setdefault(str(parent), set()).add(PurePosixPath(path).stem)
    for where, names in modules.items():
        cache = f"{where}/__pycache__"
        allowed_dirs.add(cache)
        for child in (folder / cache).iterdir() if (folder / cache).is_dir() else ():
            match = _PYCACHE.fullmatch(child.name)
            if match is not None and match.group("module") in names:
                allowed_files.add(f"{cache}/{child.name}")
    skip = set(covered)
    if export is None:
        allowed_files.add(NOTICE)  # which bundle it is, is unknown: no finding on it
    else:
        skip.add(NOTICE)  # _check_request says whether it belongs
    if (folder / FILES_DIR).is_symlink():
        skip.add(FILES_DIR)  # reported as malformed

    def visit(rel: str, in_layout: bool) -> None:
        try:
            names = sorted(child.name for child in (folder / rel).iterdir())
        except OSError as e:
            report.add(FILE_ADDED, rel, f"a folder that cannot be read ({e.strerror}): not checked")
            return
        for name in names:
            path = f"{rel}/{name}" if rel else name
            if path in skip:
                continue
            try:
                mode = os.lstat(folder / path).st_mode
            except OSError:
                continue  # gone since it was listed
            known = in_layout and path in (allowed_dirs if stat.S_ISDIR(mode) else allowed_files)
            if stat.S_ISDIR(mode):
                if not known and not any((folder / path).iterdir()):
                    report.add(
                        FILE_ADDED, path + "/", "an empty folder the bundle's layout has not"
                    )
                visit(path, known)
            elif not known or not stat.S_ISREG(mode):
                report.add(FILE_ADDED, path, _why_added(folder, path, mode))

    visit("", True)


def _why_added(folder: Path, path: str, mode: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            target = repr(str((folder / path).readlink()))
        except OSError as e:
            target = f"unreadable: {e.strerror}"
        return f"a symbolic link (to {target}): a bundle holds its files themselves"
    if not stat.S_ISREG(mode):
        return "a special file (device, pipe or socket), which no bundle holds"
    if PurePosixPath(path).parts[0] == FILES_DIR:
        return "no proven ledger entry covers this file"
    return "not part of an evidock bundle's layout: nothing in the bundle vouches for it"


def _in_files_folder(path: str) -> bool:
    """Whether a manifest path names a file directly under ``files/`` (the layout)."""
    parts = PurePosixPath(path).parts
    return len(parts) == 2 and parts[0] == "files" and parts[1] not in (".", "..")


def _check_file(report: Report, folder: Path, path: str, entry: Entry) -> str:
    """Compare one file with its entry; return the file's actual SHA-256 hex."""
    target = folder / path
    if target.is_symlink():
        report.add(FILE_MODIFIED, path, "is a symbolic link, not the recording")
        return ""
    got = digest_file(target)
    sha, size = str(entry.body["sha256"]), entry.body.get("size")
    if got.sha256_hex == sha and got.size == size:
        return sha
    detail = f"SHA-256 {got.sha256_hex} and {got.size} bytes, recorded {sha} and {size} bytes"
    try:
        chunks = json.loads((folder / "chunks" / f"{sha}.json").read_text())
        expected = [bytes.fromhex(h) for h in chunks["hashes"]]
        chunk_size = int(chunks.get("chunk_size", CHUNK_SIZE))
        if root_of(expected).hex() != entry.body.get("chunk_root") or chunk_size != entry.body.get(
            "chunk_size"
        ):
            raise InputError("chunk hashes do not match the entry's chunk_root")
        if chunk_size != got.chunk_size:
            got = digest_file(target, chunk_size=chunk_size)
        ranges = chunk_ranges_differing(
            expected, list(got.chunk_hashes), int(size or 0), got.size, chunk_size
        )
        where = ", ".join(f"bytes {a}-{b - 1}" for a, b in ranges)
        detail = f"{where} differ ({detail})"
    except (OSError, ValueError, KeyError, TypeError, EvidockError) as e:
        detail = f"{detail}; changed ranges unknown: {e}"
    report.add(FILE_MODIFIED, path, detail)
    return got.sha256_hex


def _check_sums(report: Report, folder: Path, listed: dict[str, dict[str, Any]]) -> None:
    try:
        text = (folder / "SHA256SUMS").read_text(encoding="utf-8")
    except OSError:
        report.add(MALFORMED, "SHA256SUMS", "missing: coreutils users cannot check the files")
        return
    sums = {}
    for line in text.splitlines():
        sha, _, path = line.partition("  ")
        sums[path] = sha
    for path, f in listed.items():
        if sums.get(path) != f.get("sha256"):
            report.add(
                MALFORMED, "SHA256SUMS", f"line for {path} is missing or differs from the manifest"
            )
    # `sha256sum -c` checks every line: one naming a file the manifest does not
    # list would have coreutils users check something that is no recording here.
    for path in sorted(set(sums) - set(listed)):
        report.add(MALFORMED, "SHA256SUMS", f"line for {path!r} names no recording of the manifest")


# -- the command line of the verifier that travels inside each bundle ------------


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder``, as named or once links are followed."""
    named = Path(os.path.normpath(path.absolute()))
    if named.is_relative_to(os.path.normpath(folder.absolute())):
        return True
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a loop of links: it cannot be read either
        return False


def _read_outside(value: str, bundle: Path | None, what: str) -> str:
    """The text of the file ``value`` names, which must not lie in ``bundle``.
    Raises InputError."""
    path = Path(value)
    present = path.exists() or path.is_symlink()  # a missing one: "cannot read" below
    if bundle is not None and present and _inside(path, bundle):
        raise InputError(
            f"{what} {value} lies inside the bundle being verified ({bundle}), which cannot "
            f"vouch for itself: keep the {what} outside the bundle and give its path"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {value}: cannot read: {e}") from e


def read_key(value: str, *, bundle: Path | None = None) -> list[NoteVerifier]:
    """The verifier keys a ``--key`` value gives. A value that is a verifier key
    (name+keyid+key) is that key, whatever files exist: a key's name holds '/'
    (``evidock/dock-01+…``), so a file of that very name, planted in a bundle
    an auditor verifies from inside, would otherwise stand in for the key.
    Anything else names a file holding keys, one a line; with ``bundle``, a
    file inside that folder is refused. Raises InputError."""
    try:
        return [NoteVerifier.parse(value)]
    except InputError as not_a_key:
        if "+" in value and not (Path(value).exists() or Path(value).is_symlink()):
            raise InputError(
                f"--key {value!r} is not a verifier key ({not_a_key}) nor a file: give the "
                "station's key as the agency publishes it (name+keyid+key), or a file holding it"
            ) from not_a_key
    text = _read_outside(value, bundle, "key file")
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                keys.append(NoteVerifier.parse(line))
            except InputError as e:
                raise InputError(f"key file {value} line {number}: {e}") from e
    if not keys:
        raise InputError(f"key file {value} holds no verifier key: one key a line")
    return keys


def read_keys(values: Sequence[str], *, bundle: Path | None = None) -> list[NoteVerifier]:
    """The verifier keys of all ``--key`` values (read_key), at least one.
    Raises InputError."""
    keys = [key for value in values for key in read_key(value, bundle=bundle)]
    if not keys:
        raise InputError("no verifier key given: pass --key with the station's key")
    return keys


def read_held_checkpoint(value: str, *, bundle: Path | None = None) -> str:
    """The checkpoint an auditor holds (``--checkpoint FILE``), which must not lie
    in the bundle it is compared with. Raises InputError."""
    return _read_outside(value, bundle, "checkpoint")


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 verifier/verify.py BUNDLE --key KEY``: the offline verifier as a
    bundle carries it, for an auditor without evidock (exit codes as `evidock
    verify`: 0 verified, 1 integrity failure, 2 usage, 3 could not verify)."""
    parser = argparse.ArgumentParser(
        prog="verify.py",
        description="Verify an evidock export bundle offline, trusting only the keys given.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="the bundle folder (e.g. .)")
    parser.add_argument(
        "--key",
        required=True,
        action="append",
        metavar="KEY",
        help="the station's verifier key, or a file outside the bundle holding it "
        "(repeatable); obtain it from the agency, not from the bundle",
    )
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="a checkpoint you already hold: detects rollback"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle)
    try:
        keys = read_keys(args.key, bundle=bundle)
        held = read_held_checkpoint(args.checkpoint, bundle=bundle) if args.checkpoint else None
    except InputError as e:
        print(f"verify.py: {e}", file=sys.stderr)
        return EXIT_UNVERIFIABLE
    report = verify_bundle(bundle, keys, held)
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=1, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(report.render())
    return report.exit_code
