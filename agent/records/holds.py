"""Long-term holds (Art. 17): recordings kept whatever their retention date.

A supervisor puts recordings, or a whole case, under a hold for one of the four
reasons of Art. 17 (dispute or complaint; obstruction, refusal, insult or
assault; a mass or sudden incident; other) with a note; an admin releases it,
with a note. Both are ledger entries (``hold``, ``hold_release``) naming the
user, so whoever sets a hold cannot also lift it (agent.users.roles) and the ledger
shows who did. A hold on a case covers every recording bound to that case, now
or later (ingest case or tag). While any hold covers a recording it is never
purged: the retention rule (hashing.retention) refuses, and the auditor's
verifier reports a purge under a hold as ``unlawful_purge``. A ``hold_release``
counts only when its user is an admin at that point of the ledger (by the
``user`` entries, as the rule reads them); any other leaves the hold in force
and is listed as refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent._text import check_id, check_text
from agent.records import index
from agent.users.roles import Actor, require
from hashing.entries import Entry
from hashing.errors import InputError
from hashing.ledger import LedgerTx
from hashing.retention import HOLD, HOLD_REASONS, HOLD_RELEASE, USER, Roster
from hashing.station import Station

NOTE_MAX = 500


def check_note(text: str | None) -> str:
    """A note is required (why, in a sentence or a reference) and printable."""
    return check_text(
        text,
        "note",
        NOTE_MAX,
        missing="give a --note: why (e.g. the complaint's reference or what happened)",
    )


@dataclass(frozen=True)
class Hold:
    """A hold and, once released, its release."""

    seq: int
    time: str
    files: tuple[str, ...]
    case: str | None
    reason: str
    note: str
    by: str
    released: int | None = None  # the hold_release entry
    released_at: str | None = None
    released_by: str | None = None
    release_note: str | None = None
    refused_releases: tuple[int, ...] = ()  # hold_release entries by someone not an admin

    @property
    def active(self) -> bool:
        return self.released is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "files": list(self.files),
            "case": self.case,
            "reason": self.reason,
            "note": self.note,
            "by": self.by,
            "released": self.released,
            "released_at": self.released_at,
            "released_by": self.released_by,
            "release_note": self.release_note,
            "refused_releases": list(self.refused_releases),
        }


def _entries(station: Station, kind: str) -> list[Entry]:
    return list(station.ledger.entries_of_type(kind))


def _releases(entries: Iterable[Entry]) -> tuple[dict[int, Entry], dict[int, list[int]]]:
    """From ``user`` and ``hold_release`` entries in ledger order: the release that
    counts for each hold (by an admin at that point), and those that do not."""
    roster = Roster()
    accepted: dict[int, Entry] = {}
    refused: dict[int, list[int]] = {}
    for entry in entries:
        if entry.type == USER:
            roster.observe(entry.body)
            continue
        seq = entry.body.get("hold")
        if not isinstance(seq, int) or seq in accepted:
            continue
        if roster.is_admin(entry.body.get("by")):
            accepted[seq] = entry
        else:
            refused.setdefault(seq, []).append(entry.seq)
    return accepted, refused


# The ``user`` and ``hold_release`` entries in ledger order: what _releases reads.
_RELEASES = (USER, HOLD_RELEASE)


def holds(station: Station) -> list[Hold]:
    """Every hold in ledger order, with the release that counts, if any."""
    releases, refused = _releases(index.entries_of_types(station.ledger, _RELEASES))
    found = []
    for entry in _entries(station, HOLD):
        body = entry.body
        release = releases.get(entry.seq)
        found.append(
            Hold(
                seq=entry.seq,
                time=entry.time,
                files=tuple(str(f) for f in body.get("files") or ()),
                case=None if body.get("case") is None else str(body["case"]),
                reason=str(body.get("reason")),
                note=str(body.get("note") or ""),
                by=str(body.get("by")),
                released=None if release is None else release.seq,
                released_at=None if release is None else release.time,
                released_by=None if release is None else str(release.body.get("by")),
                release_note=None if release is None else str(release.body.get("note") or ""),
                refused_releases=tuple(refused.get(entry.seq, ())),
            )
        )
    return found


def _cases_of(station: Station, sha256: str) -> set[str]:
    """The cases a recording is bound to: its ingest entry's case and its tags'."""
    index.ensure(station)
    cases = index.tagged_cases(station.ledger, sha256)
    seq = index.file_seq(station.ledger, sha256)
    if seq is not None:
        case = station.ledger.entry(seq).body.get("case")
        if isinstance(case, str) and case:
            cases.add(case)
    return cases


def holds_on(station: Station, sha256: str) -> list[Hold]:
    """The unreleased holds covering a recording, by digest or by one of its cases."""
    cases = _cases_of(station, sha256)
    return [h for h in holds(station) if h.active and (sha256 in h.files or h.case in cases)]


def is_held(station: Station, sha256: str) -> bool:
    return bool(holds_on(station, sha256))


def _known_and_not_purged(tx: LedgerTx, files: Sequence[str]) -> list[str]:
    """The digests, sorted, once each; checked inside the hold's write transaction,
    so a purge cannot slip in between the check and the hold."""
    wanted = sorted(set(files))
    known = index.known_files(tx, wanted)
    missing = [f for f in wanted if f not in known]
    if missing:
        raise InputError(f"not in the ledger: {', '.join(missing)}", hint="check the digests")
    purged = index.purges_naming(tx, wanted)
    if purged:
        gone = ", ".join(f"{sha} (entry {seq})" for seq, sha in purged)
        raise InputError(f"already purged from this dock, nothing left to hold: {gone}")
    return wanted


def add_hold(
    station: Station,
    user: Actor,
    *,
    files: Sequence[str] = (),
    case: str | None = None,
    reason: str,
    note: str,
) -> Entry:
    """Put recordings, or every recording of a case (now or later), under a hold.

    Raises PermissionDeniedError unless ``user`` may ``hold`` (supervisors), and
    InputError for an unknown reason, a missing note, both or neither of
    ``files`` and ``case``, or a digest not in the ledger or already purged.
    A case need not have recordings yet: the hold covers those bound to it later.
    """
    require(user, "hold")
    if reason not in HOLD_REASONS:
        raise InputError(f"hold reason {reason!r}: choose one of {', '.join(HOLD_REASONS)}")
    text = check_note(note)
    if files and case is not None:
        raise InputError("hold either recordings (SHA256 ...) or a case (--case ID), not both")
    if not files and case is None:
        raise InputError("name what to hold: recordings (SHA256 ...) or a case (--case ID)")
    if case is not None:
        check_id(case, "case")
    with station.ledger.transaction() as tx:
        wanted = [] if case is not None else _known_and_not_purged(tx, files)
        body = {"files": wanted, "case": case, "reason": reason, "note": text, "by": user.name}
        return tx.append(HOLD, body)


def release_hold(station: Station, user: Actor, hold_seq: int, note: str) -> Entry:
    """Release a hold (Art. 17: by someone other than who may set one: an admin).

    Raises PermissionDeniedError unless ``user`` may ``release_hold``, and
    InputError if ``hold_seq`` is not a hold or is already released (by a release
    that counts: one by an admin). Checked and appended in one write
    transaction, so two releases cannot both pass.
    """
    require(user, "release_hold")
    text = check_note(note)
    with station.ledger.transaction() as tx:
        row = index.entry_row(tx, hold_seq)
        if row is None or row[0] != HOLD:
            raise InputError(
                f"entry {hold_seq} is not a hold", hint="see `evidock hold list` for the holds"
            )
        released = _releases(index.entries_of_types(tx, _RELEASES))[0].get(hold_seq)
        if released is not None:
            raise InputError(
                f"hold {hold_seq} was already released (entry {released.seq}); nothing to do"
            )
        return tx.append(HOLD_RELEASE, {"hold": hold_seq, "note": text, "by": user.name})
