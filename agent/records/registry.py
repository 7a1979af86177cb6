"""The dock's records beside the recordings: device registry, tags, anomalies, wipes.

Every change is a ledger entry, appended in the same transaction as the index
row that makes it queryable (agent.records.index): a re-assignment or a re-tag is a
new entry, never an overwrite, so the ledger keeps the whole history.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import config
from agent._text import check_id
from agent.records import index
from agent.records import retention as ret
from agent.records.anomalies import key_of
from hashing.entries import Entry
from hashing.errors import InputError
from hashing.retention import Policy
from hashing.station import Station

if TYPE_CHECKING:
    from agent.records.holds import Hold

DEVICE_ASSIGN = "device_assign"
TAG = "tag"
ANOMALY = "anomaly"
WIPE = "wipe"
OFFLOAD_SESSION = "offload_session"

# glossary.md: 执法环节 and 保存类别
ACT_KINDS = ("inspection", "interview", "evidence_preservation", "service", "enforcement", "other")
RETENTION_CLASSES = ("routine", "evidence", "long-term")

_ready: weakref.WeakSet[Station] = weakref.WeakSet()


def _ensure(station: Station) -> None:
    if station not in _ready:
        index.ensure(station)
        _ready.add(station)


def assign_device(
    station: Station,
    serial: str,
    officer: str | None,
    *,
    model: str | None = None,
    notes: str | None = None,
) -> Entry:
    """Bind a recorder to an officer (None: unbind). Raises InputError for bad ids."""
    _ensure(station)
    check_id(serial, "serial")
    if officer is not None:
        check_id(officer, "officer")
    body = {"serial": serial, "officer": officer, "model": model, "notes": notes}
    with station.ledger.transaction() as tx:
        entry = tx.append(DEVICE_ASSIGN, body)
        index.index_device_assign(tx, entry)
    return entry


def devices(station: Station) -> list[index.DeviceRecord]:
    _ensure(station)
    return index.devices(station.ledger)


def device(station: Station, serial: str) -> index.DeviceRecord | None:
    _ensure(station)
    return index.device(station.ledger, serial)


def tag(
    station: Station,
    files: Sequence[str],
    *,
    case: str,
    kind: str,
    retention: str = "routine",
    reason: str | None = None,
    by: str | None = None,
    case_type: str | None = None,
) -> Entry:
    """Bind recordings to a case, an act kind and a retention class (design.md step 6).

    ``case_type`` names the kind of case file (e.g. "penalty"): evidence is kept
    as long as that type's period in [retention] evidence_days (Art. 16). It is
    written into the body only when given, so older tags keep their shape.
    Act kind ``evidence_preservation`` makes the recordings evidence from the
    moment they are tagged (Art. 4-5): given retention "routine" (the default),
    the entry records retention "evidence" (with a reason saying so, if none
    was given); the retention rule reads such a tag as evidence whatever it
    records. The kiosk and the command line tag through here.
    Raises InputError for bad ids, kinds, classes or digests not in the ledger.
    """
    _ensure(station)
    check_id(case, "case")
    if case_type is not None:
        check_id(case_type, "case type")
    if kind not in ACT_KINDS:
        raise InputError(f"act kind {kind!r}: choose one of {', '.join(ACT_KINDS)}")
    if retention not in RETENTION_CLASSES:
        raise InputError(f"retention {retention!r}: choose one of {', '.join(RETENTION_CLASSES)}")
    if kind == "evidence_preservation" and retention == "routine":
        retention = "evidence"
        reason = reason or "evidence preservation: evidence from the moment it is tagged (Art. 4-5)"
    if retention != "routine" and not reason:
        raise InputError(f"retention {retention} needs --reason (why it is kept longer)")
    wanted = sorted(set(files))
    if not wanted:
        raise InputError("no recordings to tag")
    known = index.known_files(station.ledger, wanted)
    missing = [f for f in wanted if f not in known]
    if missing:
        raise InputError(f"not in the ledger: {', '.join(missing)}")
    body = {
        "files": wanted,
        "case": case,
        "kind": kind,
        "retention": retention,
        "reason": reason,
        "by": by,
    }
    if case_type is not None:
        body["case_type"] = case_type
    with station.ledger.transaction() as tx:
        entry = tx.append(TAG, body)
        index.index_tag(tx, entry)
    return entry


def files_by_device(station: Station, serial: str, start: datetime, end: datetime) -> list[str]:
    """Recordings of one device whose recording time lies in [start, end)."""
    chosen = []
    for sha, recorded in index.device_recorded_times(station.ledger, serial):
        when = _parse(recorded)
        if when is not None and start <= when < end:
            chosen.append(sha)
    return chosen


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def record_anomaly(station: Station, body: Mapping[str, Any]) -> Entry:
    """Append an ``anomaly`` entry (kind, detail, device, officer, files, ...)."""
    _ensure(station)
    with station.ledger.transaction() as tx:
        entry = tx.append(ANOMALY, body)
        index.index_anomaly(tx, entry)
    return entry


def record_wipe(station: Station, body: Mapping[str, Any]) -> Entry:
    """Append a ``wipe`` entry: a recording deleted from a recorder, by policy."""
    _ensure(station)
    with station.ledger.transaction() as tx:
        entry = tx.append(WIPE, body)
        index.index_wipe(tx, entry)
    return entry


def show(
    station: Station,
    sha256: str,
    *,
    policy: Policy | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the dock knows of one recording (for `evidock show`), with its
    retention class, earliest purge date, holds and purge under ``policy``
    (default: the configuration's [retention]) at ``now`` (default: the clock).
    Raises InputError if the digest is not in the ledger, ConfigError if the
    configuration cannot be read."""
    _ensure(station)
    seq = index.file_seq(station.ledger, sha256)
    if seq is None:
        raise InputError(f"{sha256}: not in the ledger")
    entry = station.ledger.entry(seq)
    body = dict(entry.body)
    tags = [
        {"seq": t.seq, "case": t.case, "kind": t.kind, "retention": t.retention, "reason": t.reason}
        for t in index.tags_of(station.ledger, sha256)
    ]
    path = body.get("source_path")
    anomalies = [
        {"seq": a.seq, "kind": a.kind, "detail": a.detail}
        for a in index.device_anomalies(station.ledger, body.get("device"))
        if path in (named := a.files()) or sha256 in named
    ]
    wipes = [{"seq": s} for s in index.wipe_seqs(station.ledger, sha256)]
    from agent.records import holds  # noqa: PLC0415 - agent.holds imports this module

    if policy is None:
        policy = ret.policy_from_config(config.load())
    standing = ret.status(station, sha256, policy, now or datetime.now(UTC))
    upload = "not uploaded"
    if standing is not None and standing.receipt is not None:
        upload = f"receipted by the platform (entry {standing.receipt})"
    held = [h.as_dict() for h in holds.holds(station) if _covers(h, sha256, standing)]
    return {
        "sha256": sha256,
        "entry": entry.seq,
        "ingested": entry.time,
        **body,
        "tags": tags,
        "anomalies": anomalies,
        "wiped_from_device": wipes,
        "upload": upload,
        "retention": None if standing is None else standing.as_dict(),
        "holds": held,
    }


def _covers(hold: Hold, sha256: str, standing: ret.RecordingStatus | None) -> bool:
    """Whether a hold (released or not) names this recording or one of its cases."""
    cases = standing.cases if standing is not None else ()
    return sha256 in hold.files or (hold.case is not None and hold.case in cases)


def anomaly_keys(station: Station, serial: str) -> set[str]:
    """Keys of the anomalies already recorded for a recorder (agent.records.anomalies.key_of)."""
    _ensure(station)
    return {
        key_of(station.ledger.entry(seq).body) for seq in index.anomaly_seqs(station.ledger, serial)
    }


def last_docked(station: Station, serial: str) -> datetime | None:
    """When the recorder's previous offload session started, if any."""
    for entry in reversed(list(station.ledger.entries_of_type(OFFLOAD_SESSION))):
        if entry.body.get("device") == serial:
            return _parse(str(entry.body.get("started")))
    return None
