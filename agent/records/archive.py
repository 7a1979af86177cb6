"""The year-end archive (Art. 15: records are filed into the case file and archived;
Art. 16: case files are archived each year end).

``archive(station, user, year, out)`` writes, for each case with recordings
recorded in ``year``, one verifiable bundle (hashing.bundle) of that case's
recordings of that year into ``out/<folder>/``, plus ``out/index.json``,
``out/index.csv`` and ``out/index.html`` listing every case with its folder,
files, bytes, first and last recording, export entry and checkpoint size.

Decisions recorded here:

- The year of a recording is the year of its recording time as the recorder
  stated it (``files.recorded_at``, which falls back to the file's time on the
  recorder), else of its ingest entry's time. A recorder that writes local time
  with an offset is counted in its own local year.
- A recording belongs to a case if its ingest entry names it or a ``tag``
  entry binds it (as for ``evidock export --case``). Every case is exported
  once; a recording bound to two cases is in both bundles, since each case file
  must be complete on its own; nothing is exported twice into one bundle.
- Case ids may hold any printable character, including ``/`` and ``..``: the
  folder name is the id's safe characters plus the first hex digits of the
  id's SHA-256 (unique even where two ids share their safe characters, also on
  case-insensitive discs), and the real id is kept in the index and in each
  bundle's export entry.
- Recordings bound to no case go to one ``_uncased/`` bundle only with
  ``include_uncased``; otherwise the index counts them as not archived.
- A purged recording (a ``purge`` entry: its stored copy was removed under the
  retention rules) cannot be exported; its bundle carries its ingest and purge
  entries, proven, and the index lists it as "purged (entry N)". A case all of
  whose recordings of the year were purged gets no bundle, only its index row.
- Each bundle is an authorised export (agent.records.exports) with action ``archive``,
  one ``export`` entry per bundle, purpose "year-end archive YEAR".
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from agent.records import index
from agent.records._csv import csv_text
from agent.records.exports import check_new_path, export, purged
from agent.users.roles import ScopedActor, require
from hashing.bundle import ARCHIVE, DIR_MODE, TAG, Selection, restrict_modes
from hashing.entries import INGEST
from hashing.errors import EvidockError, InputError
from hashing.station import Station

log = logging.getLogger(__name__)

FORMAT = "evidock-archive/1"
UNCASED = "_uncased"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_YEAR = re.compile(r"(\d{4})-\d{2}-\d{2}T")
SLUG_MAX = 48


@dataclass(frozen=True)
class PurgedRecording:
    sha256: str
    ingest_entry: int
    purge_entry: int


@dataclass(frozen=True)
class CaseArchive:
    """One row of the index: a case's bundle (or why there is none)."""

    case: str | None  # None: the recordings bound to no case
    folder: str | None  # None: nothing left to export (all purged)
    files: int
    bytes: int
    first_recording: str | None
    last_recording: str | None
    export_entry: int | None
    checkpoint_size: int | None
    purged: tuple[PurgedRecording, ...] = ()


@dataclass(frozen=True)
class ArchiveResult:
    out: Path
    year: int
    cases: tuple[CaseArchive, ...]
    uncased_left_out: int  # recordings of the year bound to no case, not archived


@dataclass(frozen=True)
class _Recording:
    sha256: str
    size: int
    seq: int
    recorded: str
    when: datetime


def folder_name(case: str, taken: set[str]) -> str:
    """A safe, unique folder name for ``case``: its letters, digits, '.', '_' and
    '-' (never leading, so never '.', '..' or hidden) and a digest suffix.
    ``taken`` holds the lower-cased names already used; the new one is added."""
    slug = _UNSAFE.sub("_", case).strip("._-")[:SLUG_MAX].strip("._-") or "case"
    digest = hashlib.sha256(case.encode("utf-8")).hexdigest()
    width = 8
    name = f"{slug}-{digest[:width]}"
    while name.lower() in taken:
        width += 4
        name = f"{slug}-{digest[:width]}"
    taken.add(name.lower())
    return name


def _when(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _recordings(station: Station, year: int) -> tuple[dict[str, _Recording], dict[str, Any]]:
    """The recordings recorded in ``year`` and the ingest bodies of all, by digest."""
    recorded_at = index.recorded_times(station.ledger)
    chosen: dict[str, _Recording] = {}
    bodies: dict[str, Any] = {}
    for entry in station.ledger.entries_of_type(INGEST):
        sha = str(entry.body["sha256"])
        bodies[sha] = entry.body
        text = recorded_at.get(sha) or ""
        match = _YEAR.match(text)
        when = _when(text) if match else None
        if match is None or when is None:
            text, when = entry.time, _when(entry.time) or datetime.now(UTC)
            match = _YEAR.match(text)
        if match is not None and int(match.group(1)) == year:
            chosen[sha] = _Recording(sha, int(entry.body["size"]), entry.seq, text, when)
    return chosen, bodies


def _cases(station: Station, bodies: dict[str, Any]) -> dict[str, set[str]]:
    """Case id -> the digests bound to it (at ingest or by a tag entry)."""
    cases: dict[str, set[str]] = defaultdict(set)
    for sha, body in bodies.items():
        if body.get("case") is not None:
            cases[str(body["case"])].add(sha)
    for entry in station.ledger.entries_of_type(TAG):
        case = entry.body.get("case")
        if case is not None:
            cases[str(case)].update(str(f) for f in entry.body.get("files", []))
    return cases


def archive(
    station: Station,
    user: ScopedActor,
    year: int,
    out: Path,
    *,
    include_uncased: bool = False,
) -> ArchiveResult:
    """Write the year-end archive of ``year`` into the new folder ``out`` (see the
    module docstring). Raises PermissionDeniedError (role), InputError (a bad
    year, ``out`` not new, nothing recorded that year) before anything is
    written; an export's own errors after some bundles are written (the index
    then says the archive is incomplete, and names what was written).
    """
    require(user, "export")
    if not 1970 <= year <= 9999:
        raise InputError(f"year {year}: give a four-digit year, e.g. {datetime.now(UTC).year - 1}")
    check_new_path(out, "archive folder", folder=True)
    recordings, bodies = _recordings(station, year)
    if not recordings:
        raise InputError(f"no recordings were recorded in {year}; nothing to archive")
    gone = purged(station)
    cases = _cases(station, bodies)
    groups: list[tuple[str | None, list[_Recording]]] = []
    for case_id in sorted(cases):
        of_year = [recordings[s] for s in sorted(cases[case_id]) if s in recordings]
        if of_year:
            groups.append((case_id, of_year))
    bound = set().union(*cases.values()) if cases else set()
    uncased = [r for s, r in sorted(recordings.items()) if s not in bound]
    if include_uncased and uncased:
        groups.append((None, uncased))
    left_out = 0 if include_uncased else len(uncased)

    out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    restrict_modes(out, files=False)
    purpose = f"year-end archive {year}"
    taken = {"index.json", "index.csv", "index.html", UNCASED}
    rows: list[CaseArchive] = []
    try:
        for case, mine in groups:
            mine.sort(key=lambda r: (r.when, r.seq))
            kept = [r for r in mine if r.sha256 not in gone]
            lost = tuple(
                PurgedRecording(r.sha256, r.seq, gone[r.sha256]) for r in mine if r.sha256 in gone
            )
            folder: str | None = None
            entry: int | None = None
            size: int | None = None
            if kept:
                folder = UNCASED if case is None else folder_name(case, taken)
                selection = Selection(case=case, sha256=tuple(r.sha256 for r in kept))
                carry = [n for p in lost for n in (p.ingest_entry, p.purge_entry)]
                result = export(
                    station, user, selection, out / folder, purpose, action=ARCHIVE, carry=carry
                )
                entry, size = result.entry, result.tree_size
            rows.append(
                CaseArchive(
                    case=case,
                    folder=folder,
                    files=len(kept),
                    bytes=sum(r.size for r in kept),
                    first_recording=mine[0].recorded,
                    last_recording=mine[-1].recorded,
                    export_entry=entry,
                    checkpoint_size=size,
                    purged=lost,
                )
            )
    except EvidockError:
        _write_index(station, user, year, out, rows, left_out, complete=False)
        log.error(
            "year-end archive %d into %s stopped after %d of %d cases; the index says which",
            year,
            out,
            len(rows),
            len(groups),
        )
        raise
    _write_index(station, user, year, out, rows, left_out, complete=True)
    return ArchiveResult(out, year, tuple(rows), left_out)


def _status(row: CaseArchive) -> str:
    parts = []
    if row.folder is not None:
        parts.append(f"exported (entry {row.export_entry})")
    parts += [f"{p.sha256} purged (entry {p.purge_entry})" for p in row.purged]
    return "; ".join(parts)


def _write_index(
    station: Station,
    user: ScopedActor,
    year: int,
    out: Path,
    rows: list[CaseArchive],
    left_out: int,
    *,
    complete: bool,
) -> None:
    latest = station.ledger.latest_checkpoint()
    key = station.keys.load().verifier
    index: dict[str, Any] = {
        "format": FORMAT,
        "station": station.station_id,
        "origin": station.origin,
        # Name and fingerprint only: an auditor takes the key itself from the agency.
        "key_name": key.name,
        "key_id": key.key_id_hex,
        "year": year,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "by": user.name,
        "role": user.role,
        "complete": complete,
        "checkpoint_size": latest.checkpoint.size if latest else None,
        "uncased_not_archived": left_out,
        "cases": [{**asdict(r), "status": _status(r)} for r in rows],
    }
    (out / "index.json").write_text(
        json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    header = (
        "case",
        "folder",
        "files",
        "bytes",
        "first_recording",
        "last_recording",
        "export_entry",
        "checkpoint_size",
        "status",
    )
    table = [
        (
            r.case if r.case is not None else "(no case)",
            r.folder,
            r.files,
            r.bytes,
            r.first_recording,
            r.last_recording,
            r.export_entry,
            r.checkpoint_size,
            _status(r),
        )
        for r in rows
    ]
    (out / "index.csv").write_text(csv_text(header, table), encoding="utf-8")
    (out / "index.html").write_text(_INDEX.render(index=index), encoding="utf-8")
    for name in ("index.json", "index.csv", "index.html"):
        restrict_modes(out / name, files=False)


_INDEX = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Year-end archive {{ index.year }} — {{ index.station }}</title>
<style>
  body { font: 11pt/1.4 "Noto Sans", "Noto Sans CJK SC", sans-serif; margin: 2em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { border: 1px solid #555; padding: 2px 4px; text-align: left; vertical-align: top; }
  th { background: #eee; }
  .num { text-align: right; }
  .digest { font-family: monospace; font-size: 8.5pt; word-break: break-all; }
  .warn { border: 3px double #000; padding: .5em; font-weight: bold; }
  @page { size: A4 landscape; margin: 12mm; }
  @media print { body { margin: 0; } tr { break-inside: avoid; } }
</style>
</head>
<body>
<h1>Year-end archive {{ index.year }} · 年度归档 — {{ index.station }}</h1>
{% if not index.complete %}<p class="warn">INCOMPLETE: the archive run stopped; only the cases below were written.</p>{% endif %}
<p>Written {{ index.created }} by {{ index.by }} ({{ index.role }}). Station key
<span class="digest">{{ index.key_name }}</span>, fingerprint (key id)
<span class="digest">{{ index.key_id }}</span>: compare them with the key the agency
publishes, and take the key itself from the agency, never from this archive.
Each folder is a bundle: <code>evidock verify FOLDER --key 'STATION-VERIFIER-KEY'</code>, or
<code>python3 FOLDER/verifier/verify.py FOLDER --key 'STATION-VERIFIER-KEY'</code>, or
<code>sha256sum -c SHA256SUMS</code> inside it, with the station's key from the agency in
place of STATION-VERIFIER-KEY.</p>
{% if index.uncased_not_archived %}<p>{{ index.uncased_not_archived }} recording(s) of {{ index.year }} bound to no case were not archived.</p>{% endif %}
<table>
<thead><tr><th>case · 案件编号</th><th>folder</th><th class="num">files</th><th class="num">bytes</th>
<th>first recording</th><th>last recording</th><th>export entry</th><th>checkpoint size</th><th>status</th></tr></thead>
<tbody>
{% for c in index.cases %}<tr>
<td>{% if c.case is none %}(no case){% else %}{{ c.case }}{% endif %}</td>
<td>{% if c.folder %}<a href="{{ c.folder }}/summary.html">{{ c.folder }}</a>{% else %}—{% endif %}</td>
<td class="num">{{ c.files }}</td><td class="num">{{ c.bytes }}</td>
<td>{{ c.first_recording }}</td><td>{{ c.last_recording }}</td>
<td>{{ c.export_entry if c.export_entry is not none else "—" }}</td>
<td>{{ c.checkpoint_size if c.checkpoint_size is not none else "—" }}</td>
<td>{% if c.folder %}exported{% endif %}{% for p in c.purged %}<br><span class="digest">{{ p.sha256 }}</span> purged (entry {{ p.purge_entry }}; ingest entry {{ p.ingest_entry }}){% endfor %}</td>
</tr>
{% endfor %}</tbody>
</table>
</body>
</html>
"""
)
