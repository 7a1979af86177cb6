"""The access log (Art. 18, Art. 20 (3)): every view, playback, copy and export
of a recording is authorised by role, carries a purpose and is a ledger entry.

An ``access`` entry names the user (and their role at that moment), the
recordings, the action and the purpose, e.g. a disclosure request number.
Exports write their own ``export`` entry (hashing.bundle) with the same fields,
so the access log reads both: no copy leaves the dock without one of them.

Authorisation is the role table's (agent.users.roles): ``view`` and ``play`` need
``play`` and the recording in the user's scope (an officer: their own
recordings only); ``copy``, ``export`` and ``disclose`` need ``export``.
The entry is appended before the bytes are handed out, so a crash can leave a
logged access that did not happen, never an access that was not logged.

A purpose is one line of printable text (``check_purpose``): no control
characters, line or paragraph separators or bidirectional overrides, so what
an auditor reads in the log is what was typed, and a purpose cannot forge a
line of the log or reorder its text on the screen. The kiosk offers common
purposes (``PURPOSE_KINDS``, written with ``purpose_text``); the command line
takes any text.

A recording that was purged (a ``purge`` entry names its digest; agent.records.retention)
or whose stored copy is gone cannot be viewed or played: ``stored_path`` says
so before anything is logged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent._text import check_text
from agent.records import index
from agent.records.retention import purge_entries
from agent.users.roles import PermissionDeniedError, ScopedActor, officer_scope, require
from hashing.entries import EXPORT, Entry, parse_time
from hashing.errors import InputError
from hashing.station import Station

ACCESS = "access"
VIEW, PLAY, COPY, EXPORT_ACTION, DISCLOSE = "view", "play", "copy", "export", "disclose"
ACTIONS = (VIEW, PLAY, COPY, EXPORT_ACTION, DISCLOSE)
# action -> the permission of agent.users.roles it needs
PERMISSION = {
    VIEW: "play",
    PLAY: "play",
    COPY: "export",
    EXPORT_ACTION: "export",
    DISCLOSE: "export",
}
PURPOSE_MAX = 200
# The kiosk's common purposes (Art. 18): kind -> (words in the ledger, detail required?).
# The ledger says them in English whatever the screen's language; the kiosk shows them
# translated (agent.kiosk.i18n "purpose.kind.*").
PURPOSE_KINDS: dict[str, tuple[str, bool]] = {
    "case_work": ("case work", False),  # 案件办理, with the case number if there is one
    "spot_check": ("spot check", False),  # 抽检 (Art. 19), with the draw if there is one
    "disclosure": ("disclosure request", True),  # 信息公开申请: its number is required
    "inspection": ("inspection", False),  # 督察
    "other": ("other", True),  # 其他: say what
}


def check_purpose(text: str | None) -> str:
    """A purpose is required and printable: a request number, a case id, a reason.

    Returns it without surrounding blanks. Raises InputError when it is missing,
    longer than PURPOSE_MAX characters, or holds a control character, a line or
    paragraph separator or a bidirectional control."""
    return check_text(
        text,
        "purpose",
        PURPOSE_MAX,
        missing="give a purpose: why the recordings are needed "
        "(e.g. a disclosure request number or a case id)",
        hint="give the request number or case id and a few words",
    )


def purpose_text(kind: str, detail: str | None = None) -> str:
    """The purpose a kiosk user chose, as the ledger says it: ``"disclosure request:
    GK-2026-017"``, ``"spot check"``. Raises InputError for an unknown kind, a kind
    whose detail is required but missing, or a detail check_purpose refuses."""
    if kind not in PURPOSE_KINDS:
        raise InputError(f"purpose kind {kind!r}: one of {', '.join(PURPOSE_KINDS)}")
    words, needs_detail = PURPOSE_KINDS[kind]
    detail = (detail or "").strip()
    if needs_detail and not detail:
        what = "the request number" if kind == "disclosure" else "what it is"
        raise InputError(f"purpose {words}: give {what}")
    return check_purpose(f"{words}: {detail}" if detail else words)


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
    known = index.file_officers(station.ledger, wanted)
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


def purge_entry(station: Station, sha256: str) -> int | None:
    """The seq of the ``purge`` entry of ``sha256``, or None if it was never purged."""
    seqs = purge_entries(station, sha256)
    return seqs[0] if seqs else None


def stored_path(station: Station, sha256: str) -> Path:
    """The stored copy of a recording, to be viewed or played. Raises InputError if
    it was purged (naming the ``purge`` entry) or is missing from the store (which
    ``evidock ledger verify`` reports as file_missing)."""
    purged = purge_entry(station, sha256)
    if purged is not None:
        raise InputError(
            f"recording {sha256} was purged under the retention rules (ledger entry "
            f"{purged}); only its ledger entries remain: see `evidock show {sha256}`"
        )
    path = station.store.path_for(sha256)
    if not path.is_file():
        raise InputError(
            f"recording {sha256} is in the ledger but its stored copy {path} is missing; "
            "run `evidock ledger verify` and tell the station's administrator"
        )
    return path


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


_BATCH = 2048  # entries read per query by access_records


def access_records(station: Station) -> Iterator[AccessRecord]:
    """Every access and export, in ledger order (read in batches: memory stays flat)."""
    after = -1
    while True:
        rows = index.entries_after(station.ledger, (ACCESS, EXPORT), after, _BATCH)
        if not rows:
            return
        for _, data in rows:
            yield _record(Entry.parse(bytes(data)))
        after = int(rows[-1][0])


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
