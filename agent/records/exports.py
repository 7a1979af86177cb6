"""Authorised exports, disclosures and write-once images (Art. 17, Art. 18, Art. 20 (3)).

Every copy that leaves the dock goes through ``export``: the user's role must
allow ``export`` (supervisors and auditors; agent.users.roles), the recordings must be
in their scope (agent.records.access.authorise), a purpose is stated (e.g. a disclosure
request number), and the bundle's ``export`` entry names user, role, purpose,
files and, for a disclosure, the recipient (hashing.bundle). Refusals happen
before anything is written, so a refused export leaves no file and no entry.

A disclosure (Art. 18: a citizen's or organisation's request to view or copy) is
an export with a recipient: it carries a visible notice of who received it and
why (NOTICE.txt, the head of README.txt and the summary page), derived from its
export entry so the verifier can tell an edited notice. ``evidock disclose``
limits it to the requested digests.

Write-once media (Art. 17: long-term keeping, e.g. burned to disc): the bundle
folder is the disc's tree, holding the recordings with their proofs, the
verifier (verifier/verify.py) and a printable summary (summary.html) for the
paper file. ``disc_image`` makes an ISO 9660 image of it with Rock Ridge (long
POSIX names, read-only modes) and Joliet (long names for Windows) through
``xorriso -as mkisofs``; ``burn_folder`` makes a read-only copy ready for any
burning program. The image is reproducible: every date in it is the export
entry's time and ownership and modes are normalised (``-r``), so the same tree
gives the same bytes, and its SHA-256 is printed and recorded. On the dock the
image (0400) and the folder to burn (files 0400, folders 0500) are readable by
their owner alone, like the bundle (hashing.bundle.restrict_modes); on the
disc, Rock Ridge makes everything readable. Each image or
folder is a further copy of the bundle, so each is recorded as an ``access``
entry of action ``copy`` whose ``detail`` names the image and its digest (or
the folder) and the export entry it copies.

Purged recordings (``purge`` entries, the retention rules) are gone from the
store and cannot be exported; asking for one is refused with the purge entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from agent.records.access import (
    COPY,
    DISCLOSE,
    EXPORT_ACTION,
    authorise,
    check_purpose,
    record_access,
)
from agent.users.roles import ScopedActor, require
from hashing._fsutil import fsync_dir
from hashing.bundle import Request, Selection, export_bundle, restrict_modes, select
from hashing.digest import digest_file
from hashing.entries import Entry, parse_time
from hashing.errors import ConfigError, EvidockError, InputError
from hashing.note import NoteVerifier
from hashing.retention import PURGE
from hashing.station import Station
from hashing.verify import NOTICE, SUMMARY, disclosure_notice, notice_html

log = logging.getLogger(__name__)

RECIPIENT_MAX = 200
XORRISO = "xorriso"
LABEL_MAX = 32  # ISO 9660 volume identifier: 32 d-characters (ECMA-119 8.4.6)
IMAGE_MODE, BURN_FILE_MODE, BURN_DIR_MODE = 0o400, 0o400, 0o500
_LABEL_BAD = re.compile(r"[^A-Z0-9_]")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and which entries record it."""

    out: Path
    entry: int  # the export entry
    tree_size: int  # the checkpoint the bundle's proofs lead to
    files: int
    bytes: int
    notice: str | None  # a disclosure's notice, as NOTICE.txt holds it
    image: Path | None = None
    image_sha256: str | None = None
    image_bytes: int | None = None
    burn_folder: Path | None = None
    copies: tuple[int, ...] = ()  # the access entries recording the image and the folder


def check_recipient(text: str | None) -> str:
    """A disclosure's recipient: required, one printable line (a name, an
    organisation, a request's applicant). Raises InputError."""
    if text is None or not text.strip():
        raise InputError("a disclosure needs --recipient: who receives the copy")
    recipient = text.strip()
    if len(recipient) > RECIPIENT_MAX or not recipient.isprintable():
        raise InputError(f"recipient: at most {RECIPIENT_MAX} printable characters, one line")
    return recipient


def purged(station: Station) -> dict[str, int]:
    """Digest -> the ``purge`` entry that removed its stored copy."""
    return {str(e.body.get("sha256")): e.seq for e in station.ledger.entries_of_type(PURGE)}


def check_new_path(path: Path, what: str, *, folder: bool) -> None:
    """Refuse an output that exists (never overwrite a copy) or whose parent is missing."""
    if folder and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    if path.exists() or path.is_symlink():
        raise InputError(
            f"{what} {path} already exists", hint=f"choose a new {'folder' if folder else 'file'}"
        )
    if not path.parent.is_dir():
        raise InputError(
            f"{what} {path}: folder {path.parent} does not exist", hint="create it first"
        )


def export(
    station: Station,
    user: ScopedActor,
    selection: Selection,
    out: Path,
    purpose: str,
    *,
    recipient: str | None = None,
    action: str | None = None,
    image: Path | None = None,
    burn: Path | None = None,
    carry: Sequence[int] = (),
) -> ExportResult:
    """Export the selected recordings as ``user`` for ``purpose`` into the new
    folder ``out`` (see the module docstring); a recipient makes it a disclosure.
    With ``image`` also write an ISO 9660 image of the bundle; with ``burn`` a
    read-only copy ready to burn.

    Raises PermissionDeniedError (role, disabled user, scope), InputError (bad
    purpose or recipient, nothing selected, an output that exists, a purged
    recording), ConfigError (xorriso missing for an image) before anything is
    written or recorded; DigestMismatchError if a stored copy is damaged.
    """
    action = action or (DISCLOSE if recipient is not None else EXPORT_ACTION)
    require(user, "export")
    purpose = check_purpose(purpose)
    if action == DISCLOSE:
        recipient = check_recipient(recipient)
    elif recipient is not None:
        raise InputError(f"a recipient is only for a disclosure, not an {action}")
    request = Request(user.name, user.role, purpose, action, recipient)
    check_new_path(out, "export folder", folder=True)
    if image is not None:
        check_new_path(image, "image", folder=False)
        if shutil.which(XORRISO) is None:
            raise ConfigError(
                "xorriso is not installed, so no ISO image can be made: "
                "apt-get install xorriso (or use --folder-to-burn)"
            )
    if burn is not None:
        check_new_path(burn, "folder to burn", folder=True)
    for other, what in ((image, "image"), (burn, "folder to burn")):
        if other is not None and _overlap(other, out):
            raise InputError(
                f"{what} {other} and the export folder {out} must not contain each other"
            )
    chosen = select(station, selection)
    files = [str(e.body["sha256"]) for e in chosen]
    authorise(station, user, DISCLOSE if action == DISCLOSE else EXPORT_ACTION, files)
    gone = purged(station)
    refused = [f"{sha} (purge entry {gone[sha]})" for sha in files if sha in gone]
    if refused:
        raise InputError(
            "purged under the retention rules, so no copy can be exported: "
            + ", ".join(refused)
            + "; select the other recordings by --sha256"
        )

    export_bundle(station, selection, out, request, carry=carry)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entry = station.ledger.entry(int(manifest["export_entry"]))
    key = station.keys.load().verifier
    (out / SUMMARY).write_text(summary_html(out, key), encoding="utf-8")
    restrict_modes(out)
    notice_path = out / NOTICE
    result = ExportResult(
        out=out,
        entry=entry.seq,
        tree_size=int(manifest["tree_size"]),
        files=len(manifest["files"]),
        bytes=sum(int(f["size"]) for f in manifest["files"]),
        notice=notice_path.read_text(encoding="utf-8") if notice_path.exists() else None,
    )
    log.info(
        "%s of %d recording(s) by %s to %s: entry %d",
        action,
        result.files,
        user.name,
        out,
        entry.seq,
    )
    copy_action = DISCLOSE if action == DISCLOSE else COPY
    copies: list[int] = []

    def record_copy(detail: str) -> None:
        # Each copy onto other media is an access of its own (Art. 18, Art. 20 (3)).
        entry_ = record_access(
            station, user, copy_action, files, purpose, recipient=recipient, detail=detail
        )
        copies.append(entry_.seq)

    if image is not None:
        label = volume_label(station.station_id, entry.seq)
        sha, size = disc_image(out, image, label, parse_time(entry.time))
        record_copy(
            f"write-once image {image.name} of export entry {entry.seq}: "
            f"ISO 9660 (Rock Ridge, Joliet), volume {label}, sha256 {sha}, {size} bytes"
        )
        result = _with(result, image=image, image_sha256=sha, image_bytes=size)
    if burn is not None:
        burn_folder(out, burn)
        record_copy(
            f"folder to burn {os.fsdecode(burn.absolute())}: "
            f"a read-only copy of the bundle of export entry {entry.seq}"
        )
        result = _with(result, burn_folder=burn)
    return _with(result, copies=tuple(copies))


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.absolute().resolve(), b.absolute().resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _with(result: ExportResult, **changes: Any) -> ExportResult:
    return ExportResult(**{**result.__dict__, **changes})


# -- write-once media ---------------------------------------------------------


def volume_label(station_id: str, seq: int) -> str:
    """An ISO 9660 volume identifier: d-characters (A-Z, 0-9, _), at most 32."""
    label = _LABEL_BAD.sub("_", f"EVIDOCK_{station_id}_{seq}".upper())
    if len(label) > LABEL_MAX:
        tail = f"_{seq}"
        label = label[: LABEL_MAX - len(tail)] + tail
    return label


def _stamp(when: datetime) -> str:
    """xorriso's 16-digit time (YYYYMMDDhhmmsscc, UTC)."""
    return when.strftime("%Y%m%d%H%M%S") + "00"


def disc_image(bundle: Path, image: Path, label: str, when: datetime) -> tuple[str, int]:
    """Write an ISO 9660 image (Rock Ridge + Joliet) of the folder ``bundle`` to
    ``image``; return its SHA-256 (hex) and size.

    Every date in the image (volume, files, UUID) is ``when`` and ownership and
    modes are normalised, so the same tree always gives the same image: the
    digest printed at export can be re-derived from the folder. The image is
    written beside ``image`` and renamed into place once complete and fsynced,
    readable by its owner alone (0400).
    Raises ConfigError (no xorriso) or EvidockError (xorriso failed).
    """
    if shutil.which(XORRISO) is None:
        raise ConfigError("xorriso is not installed: apt-get install xorriso")
    stamp = _stamp(when)
    # Absolute paths only: a name such as "-J" would be taken for an option. The
    # image is written in a private folder beside its place (0700: nobody else
    # reads it while it grows) and renamed into place once complete.
    image = image.absolute()
    work = Path(tempfile.mkdtemp(prefix=f".{image.name}.", dir=image.parent))
    partial = work / "image.iso"
    command = [
        XORRISO,
        "-as",
        "mkisofs",
        "-quiet",
        "-r",  # Rock Ridge, uid/gid 0, modes readable and read-only
        "-J",
        "-joliet-long",  # the recordings' 64-hex-digit names exceed Joliet's 64
        "-iso-level",
        "3",  # files over 4 GiB (multi-extent)
        "-V",
        label,
        f"--modification-date={stamp}",
        "--set_all_file_dates",
        stamp,
        "-o",
        os.fsdecode(partial),
        os.fsdecode(bundle.absolute()),
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(when.timestamp()))}
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            raise EvidockError(
                f"{image}: xorriso failed (exit {done.returncode}): {tail}; "
                "check the free space and the folder's permissions"
            )
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        partial.chmod(IMAGE_MODE)
        os.replace(partial, image)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fsync_dir(image.parent)
    digest = digest_file(image)
    return digest.sha256_hex, digest.size


def burn_folder(bundle: Path, dest: Path) -> None:
    """Copy the bundle to ``dest`` as it will stand on the disc, no links, and
    read-only for its owner alone (files 0400, folders 0500; a burning program
    running as another user needs read access granted to it). Raises
    InputError if ``dest`` is not new or empty."""
    check_new_path(dest, "folder to burn", folder=True)
    if dest.exists():
        dest.chmod(BURN_DIR_MODE | 0o200)  # the owner's alone while it is filled
    else:
        dest.mkdir(mode=BURN_DIR_MODE | 0o200)
    shutil.copytree(bundle, dest, symlinks=True, dirs_exist_ok=True)
    dest.chmod(BURN_DIR_MODE | 0o200)  # copytree gave it the bundle's mode
    for path in sorted(dest.rglob("*"), reverse=True):
        if path.is_symlink():
            raise InputError(f"{path}: a symbolic link in the bundle; not copied to disc")
        path.chmod(BURN_DIR_MODE if path.is_dir() else BURN_FILE_MODE)
    dest.chmod(BURN_DIR_MODE)


# -- the printable summary ----------------------------------------------------

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

_SUMMARY = _ENV.from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Evidence export {{ entry.seq }} — {{ station }}</title>
<style>
  body { font: 11pt/1.4 "Noto Sans", "Noto Sans CJK SC", sans-serif; margin: 2em; color: #000; }
  h1 { font-size: 16pt; margin: 0 0 .5em; }
  h2 { font-size: 12pt; margin: 1.2em 0 .4em; border-bottom: 1px solid #000; }
  table { border-collapse: collapse; width: 100%; }
  th, td { border: 1px solid #555; padding: 2px 4px; text-align: left; vertical-align: top; }
  th { background: #eee; }
  .digest, pre, .key { font-family: "Noto Sans Mono", monospace; font-size: 8.5pt;
                       overflow-wrap: anywhere; word-break: break-all; }
  pre { white-space: pre-wrap; border: 1px solid #555; padding: 4px; }
  .notice { border: 3px double #000; padding: .6em; font-weight: bold; margin: 0 0 1em; }
  .num { text-align: right; }
  @page { size: A4; margin: 15mm; }
  @media print {
    body { margin: 0; }
    tr, .notice, pre { break-inside: avoid; }
    thead { display: table-header-group; }
  }
</style>
</head>
<body>
{% if notice %}{{ notice }}{% endif %}
<h1>Evidence export · 证据导出 — {{ station }}</h1>
<p class="counts">This page and README.txt are for reading and printing, and anyone can edit
them: what counts is NOTICE.txt (a disclosure's notice, which the verifier checks against
the signed ledger entry) and the verifier's report (see “How to check this copy”).<br>
本页与 README.txt 仅供阅读、打印，可被任意修改；以 NOTICE.txt 和校验程序的报告为准。</p>
<table>
<tr><th>Station · 采集站</th><td>{{ station }} ({{ origin }})</td></tr>
<tr><th>Action</th><td>{{ action }}</td></tr>
{% if case is not none %}<tr><th>Case · 案件编号</th><td>{{ case }}</td></tr>{% endif %}
<tr><th>By</th><td>{{ user }} ({{ role }})</td></tr>
<tr><th>Purpose</th><td>{{ purpose }}</td></tr>
{% if recipient is not none %}<tr><th>Recipient</th><td>{{ recipient }}</td></tr>{% endif %}
<tr><th>Exported</th><td>{{ entry.time }} (ledger entry {{ entry.seq }})</td></tr>
<tr><th>Recordings</th><td>{{ files|length }} files, {{ total }} bytes</td></tr>
</table>

<h2>Recordings · 音视频记录</h2>
<table>
<thead><tr><th>#</th><th>SHA-256</th><th class="num">bytes</th><th>recorded</th><th>device</th>
<th>officer</th><th>case</th><th>ingest entry</th><th>file in the bundle</th></tr></thead>
<tbody>
{% for f in files %}<tr><td>{{ loop.index }}</td><td class="digest">{{ f.sha256 }}</td>
<td class="num">{{ f.size }}</td><td>{{ f.recorded }}</td><td>{{ f.device }}</td><td>{{ f.officer }}</td>
<td>{{ f.case }}</td><td>{{ f.seq }}</td><td class="digest">{{ f.path }}</td></tr>
{% endfor %}</tbody>
</table>

<h2>Signed checkpoint · 签名检查点</h2>
<p>The proofs in this bundle lead to the checkpoint below: the ledger's state of
{{ tree_size }} entries, signed by the station. Root hash (base64):
<span class="digest">{{ root }}</span></p>
<pre>{{ note }}</pre>

<h2>Station key</h2>
<table>
<tr><th>Key name</th><td class="key">{{ key.name }}</td></tr>
<tr><th>Fingerprint (key id)</th><td class="key">{{ key.key_id_hex }}</td></tr>
</table>
<p>Compare the name and fingerprint with the key the agency publishes, and take the key
itself from the agency, never from this page or this folder.</p>

<h2>How to check this copy</h2>
<p>In the bundle's folder, with the station's key from the agency in place of
STATION-VERIFIER-KEY:</p>
<pre>sha256sum -c SHA256SUMS
evidock verify . --key 'STATION-VERIFIER-KEY'
python3 verifier/verify.py . --key 'STATION-VERIFIER-KEY'</pre>
</body>
</html>
"""
)


def _entries(bundle: Path) -> dict[int, Entry]:
    entries = {}
    for line in (bundle / "entries.jsonl").read_bytes().splitlines():
        if line:
            entry = Entry.parse(line)
            entries[entry.seq] = entry
    return entries


def summary_html(bundle: Path, key: NoteVerifier) -> str:
    """A printable HTML summary of a bundle for the paper file: case, files with
    digests and sizes, the checkpoint, the station key's name and fingerprint
    (never the key: an auditor takes it from the agency), who exported it and
    why, and a disclosure's notice (derived from the export entry, as the
    verifier expects it). No script, every value escaped (case ids and purposes
    are free text). Raises OSError or InputError for a folder that is not a
    bundle."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    entries = _entries(bundle)
    export_entry = entries[int(manifest["export_entry"])]
    body = export_entry.body
    note = (bundle / "checkpoint.txt").read_text(encoding="utf-8")
    note_lines = note.splitlines()
    notice = disclosure_notice(export_entry)
    files = []
    for f in manifest["files"]:
        ingest = entries[int(f["seq"])].body
        files.append(
            {
                "sha256": f["sha256"],
                "size": f["size"],
                "path": f["path"],
                "seq": f["seq"],
                "recorded": ingest.get("recorded_at") or ingest.get("source_mtime") or "",
                "device": ingest.get("device") or "",
                "officer": ingest.get("officer") or "",
                "case": ingest.get("case") or "",
            }
        )
    return _SUMMARY.render(
        station=manifest["station"],
        origin=manifest["origin"],
        entry=export_entry,
        action=body.get("action", EXPORT_ACTION),
        case=manifest["selection"].get("case"),
        user=body.get("user", "-"),
        role=body.get("role", "-"),
        purpose=body.get("purpose", "-"),
        recipient=body.get("recipient"),
        # The markup the verifier compares with the export entry's notice;
        # notice_html escapes every character of it.
        notice=None if notice is None else Markup(notice_html(notice)),  # noqa: S704
        files=files,
        total=sum(int(f["size"]) for f in files),
        tree_size=manifest["tree_size"],
        root=note_lines[2] if len(note_lines) > 2 else "",
        note=note,
        key=key,
    )


def export_lines(result: ExportResult) -> Iterable[str]:
    """What the command line prints about an export."""
    yield f"exported {result.files} recording(s), {result.bytes} bytes, to {result.out}"
    yield f"checkpoint: tree size {result.tree_size}; export recorded as entry {result.entry}"
    if result.notice is not None:
        yield from (f"notice: {line}" for line in result.notice.splitlines())
    if result.image is not None:
        yield (f"image: {result.image} ({result.image_bytes} bytes) sha256 {result.image_sha256}")
    if result.burn_folder is not None:
        yield f"folder to burn: {result.burn_folder}"
    if result.copies:
        yield (
            f"copies recorded as access entr{'y' if len(result.copies) == 1 else 'ies'} "
            + ", ".join(str(s) for s in result.copies)
        )
