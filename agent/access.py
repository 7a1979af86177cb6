"""The access log (Art. 18, Art. 20 (3)): every view, playback, copy and export
of a recording is authorised by role, carries a purpose and is a ledger entry.

An ``access`` entry names the user (and their role at that moment), the
recordings, the action and the purpose, e.g. a disclosure request number.
Exports write their own ``export`` entry (hashing.bundle) with the same fields,
so the access log reads both: no copy leaves the dock without one of them.

Authorisation is the role table's (agent.roles): ``view`` and ``play`` need
``play`` and the recording in the user's scope (an officer: their own
recordings only); ``copy``, ``export`` and ``disclose`` need ``export``.
The entry is appended before the bytes are handed out, so a crash can leave a
logged access that did not happen, never an access that was not logged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.roles import PermissionDeniedError, ScopedActor, officer_scope, require
from hashing.entries import EXPORT, Entry, parse_time
from hashing.errors import InputError
from hashing.station import Station

ACCESS = "access"
VIEW, PLAY, COPY, EXPORT_ACTION, DISCLOSE = "view", "play", "copy", "export", "disclose"
ACTIONS = (VIEW, PLAY, COPY, EXPORT_ACTION, DISCLOSE)
# action -> the permission of agent.roles it needs
PERMISSION = {
    VIEW: "play",
    PLAY: "play",
    COPY: "export",
    EXPORT_ACTION: "export",
    DISCLOSE: "export",
}
PURPOSE_MAX = 200


def check_purpose(text: str | None) -> str:
    """A purpose is required and printable: a request number, a case id, a reason."""
    if text is None or not text.strip():
        raise InputError("give a purpose: why (e.g. a disclosure request number or a case id)")
    purpose = text.strip()
    if len(purpose) > PURPOSE_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in purpose):
        raise InputError(f"purpose: at most {PURPOSE_MAX} printable characters, one line")
    return purpose


def authorise(
    station: Station, user: ScopedActor | None, action: str, files: Sequence[str]
) -> None:
    """Raise PermissionDeniedError unless ``user`` may ``action`` every one of
    ``files``; InputError for an unknown action or a digest not in the ledger."""
    if action not in PERMISSION:
        raise InputError(f"access action {action!r}: one of {', '.join(ACTIONS)}")
    require(user, PERMISSION[action])
    scope = officer_scope(user)
    wanted = sorted(set(files))
    if not wanted:
        raise InputError("no recordings named")
    marks = ",".join("?" * len(wanted))
    rows = station.ledger.execute(
        f"SELECT sha256, officer FROM files WHERE sha256 IN ({marks})",  # noqa: S608 - placeholders only
        tuple(wanted),
    )
    known = {str(sha): officer for sha, officer in rows}
    missing = [f for f in wanted if f not in known]
    if missing:
        raise InputError(f"not in the ledger: {', '.join(missing)}")
    if scope is not None:
        foreign = [f for f in wanted if known[f] != scope]
        if foreign:
            raise PermissionDeniedError(
                f"user {user.name if user else '?'!r} may only {action} recordings of officer "
                f"{scope}; not theirs: {', '.join(foreign)}"
            )


def record_access(
    station: Station,
    user: ScopedActor,
    action: str,
    files: Sequence[str],
    purpose: str,
    *,
    recipient: str | None = None,
    detail: str | None = None,
) -> Entry:
    """Authorise, then append the ``access`` entry. Returns it; the caller hands
    out the bytes only after this returned."""
    authorise(station, user, action, files)
    body = {
        "action": action,
        "user": user.name,
        "role": user.role,
        "files": sorted(set(files)),
        "purpose": check_purpose(purpose),
        "recipient": recipient,
        "detail": detail,
    }
    return station.ledger.append(ACCESS, body)


@dataclass(frozen=True)
class AccessRecord:
    """One line of the access log, from an ``access`` or an ``export`` entry."""

    seq: int
    time: str
    action: str
    user: str
    role: str
    files: tuple[str, ...]
    purpose: str
    recipient: str | None
    out: str | None


def _record(entry: Entry) -> AccessRecord:
    body = entry.body
    if entry.type == EXPORT:
        # Exports before the access log existed carry no user: they were console ones.
        action = str(body.get("action") or EXPORT_ACTION)
    else:
        action = str(body.get("action", "?"))
    return AccessRecord(
        seq=entry.seq,
        time=entry.time,
        action=action,
        user=str(body.get("user") or body.get("by") or "console"),
        role=str(body.get("role") or "-"),
        files=tuple(str(f) for f in body.get("files", [])),
        purpose=str(body.get("purpose") or "-"),
        recipient=None if body.get("recipient") is None else str(body["recipient"]),
        out=None if body.get("out") is None else str(body["out"]),
    )


def access_records(station: Station) -> Iterator[AccessRecord]:
    """Every access and export, in ledger order."""
    seqs = sorted(
        int(seq)
        for (seq,) in station.ledger.execute(
            "SELECT seq FROM entries WHERE type IN (?, ?)", (ACCESS, EXPORT)
        )
    )
    for seq in seqs:
        yield _record(station.ledger.entry(seq))


def access_log(
    station: Station,
    *,
    user: str | None = None,
    sha256: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[AccessRecord]:
    """The access log, filtered by user, recording and time [start, end)."""
    chosen = []
    for record in access_records(station):
        if user is not None and record.user != user:
            continue
        if sha256 is not None and sha256 not in record.files:
            continue
        if start is not None or end is not None:
            when = parse_time(record.time)
            if (start is not None and when < start) or (end is not None and when >= end):
                continue
        chosen.append(record)
    return chosen
