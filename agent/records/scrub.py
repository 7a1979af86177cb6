"""The scrub: a scheduled re-check of every stored file against its digest and
of the whole ledger (Art. 20 (2), (5): an alteration, a loss or failing storage
is found, not waited for).

It is the full local audit (hashing.audit, as `evidock ledger verify`): chain,
tree, checkpoints, signatures, and every stored file re-read from the device.
The outcome is one ``scrub`` ledger entry, so the record of what was checked
and found is itself tamper-evident; every failure is logged at ERROR (journald
priority 3) naming the file and the finding, and the command exits 1, which
fails the systemd unit. A scrub never repairs, moves or deletes anything:
a damaged copy is evidence, and the platform holds the receipted original.
Recordings purged lawfully are not failures, nor are those a retention run
purges while the scrub reads the store (the audit judges the purge entries
written since its snapshot). Purges are judged with the platform's receipt
keys (``[upload] platform_key``, passed by `evidock scrub`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.records import index
from hashing.audit import audit
from hashing.entries import Entry
from hashing.findings import (
    FILE_ADDED,
    FILE_MISSING,
    FILE_MODIFIED,
    UNLAWFUL_PURGE,
    WARNINGS,
    Finding,
)
from hashing.note import NoteVerifier
from hashing.retention import rfc3339
from hashing.station import Station

log = logging.getLogger(__name__)

SCRUB = "scrub"
FILE_KINDS = frozenset({FILE_MISSING, FILE_MODIFIED, FILE_ADDED, UNLAWFUL_PURGE})


@dataclass(frozen=True)
class ScrubResult:
    entry: Entry
    failures: tuple[dict[str, str], ...]  # {sha256, finding, detail}
    ledger_findings: tuple[dict[str, str], ...]  # {kind, place, detail}
    ledger_ok: bool

    @property
    def ok(self) -> bool:
        return not self.failures and self.ledger_ok

    def as_dict(self) -> dict[str, Any]:
        return {"entry": self.entry.seq, "ok": self.ok, **self.entry.body}


def _digest_of(finding: Finding) -> str:
    """The digest a file finding is about: its store path's name (the place may
    carry a note after the path)."""
    name = Path(finding.place.split(" ", 1)[0]).name
    return name if len(name) == 64 else finding.place


def _stored(station: Station) -> tuple[int, int]:
    """(files, bytes) of the recordings in the store that entries cover."""
    files = size = 0
    for sha, length in index.file_sizes(station.ledger):
        if station.store.has(sha):
            files += 1
            size += length
    return files, size


def scrub(station: Station, *, by: str, platform_keys: Sequence[NoteVerifier] = ()) -> ScrubResult:
    """Re-check the store and the ledger; append the ``scrub`` entry; log failures.
    ``platform_keys``: the platform's receipt keys, which purges are judged with.

    Never raises for what it finds (that is the result); OSError only if the
    ledger itself cannot be written.
    """
    started = datetime.now(UTC)
    report = audit(station, platform_keys=platform_keys)
    files, size = _stored(station)
    finished = datetime.now(UTC)
    failures = [
        {"sha256": _digest_of(f), "finding": f.kind, "detail": f.detail}
        for f in report.findings
        if f.kind in FILE_KINDS
    ]
    ledger_findings = [f.as_dict() for f in report.findings if f.kind not in FILE_KINDS]
    ledger_findings += [
        {"kind": "unverifiable", "place": "ledger", "detail": r} for r in report.unverifiable
    ]
    ledger_failed = any(
        not f.is_warning for f in report.findings if f.kind not in FILE_KINDS
    ) or bool(report.unverifiable)
    modified = sum(1 for f in failures if f["finding"] == FILE_MODIFIED)
    body = {
        "started": rfc3339(started),
        "finished": rfc3339(finished),
        "files": files,
        "bytes": size,
        "intact": files - modified,
        "failures": failures,
        "ledger": "failed" if ledger_failed else "ok",
        "ledger_findings": ledger_findings,
        "by": by,
    }
    entry = station.ledger.append(SCRUB, body)
    for failure in failures:
        log.error(
            "scrub (entry %d): %s %s: %s",
            entry.seq,
            failure["finding"],
            failure["sha256"],
            failure["detail"],
        )
    for finding in ledger_findings:
        log.log(
            logging.WARNING if finding["kind"] in WARNINGS else logging.ERROR,
            "scrub (entry %d): ledger %s at %s: %s",
            entry.seq,
            finding["kind"],
            finding["place"],
            finding["detail"],
        )
    if not failures and not ledger_failed:
        log.info("scrub (entry %d): %d files, %d bytes intact; ledger ok", entry.seq, files, size)
    return ScrubResult(entry, tuple(failures), tuple(ledger_findings), not ledger_failed)
