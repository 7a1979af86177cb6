"""Retention on the dock (Art. 15-17): each recording's class and dates, the plan
of what is due, and the run that purges local copies lawfully.

The rule itself is hashing.retention's (the auditor's verifier runs the same
code). This module adds what only the dock can: the configured policy (recorded
as a ``retention_policy`` entry whenever it changes, so every purge cites a
policy that is in the ledger), the store, and the clock.

A purge removes the dock's copy only, and only when the recording is past its
date, receipted by the platform (a receipt signed by ``[upload] platform_key``)
and under no hold, and the platform has attested a time past that date (a
receipt it dated later: a purge waits for the next upload after its date). The
dock's own clock must be synchronised (``[retention] require_synced_clock``)
and not behind the ledger's last entry. Its ``purge`` entry is
appended and committed *before* the file is unlinked: a crash in between leaves
a purge entry whose file is still stored, which the audit reports as a note and
the next run finishes; never a file that is gone without an entry (which the
audit reports as ``file_missing``). Before the entry is written the stored copy
is re-hashed: a copy that no longer matches its digest is evidence of tampering
and is left alone. This is the only code that deletes a store file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import config
from agent.records import index
from hashing._fsutil import fsync_dir
from hashing.digest import digest_file
from hashing.entries import HEX64_RE, clock_reading
from hashing.errors import ConfigError, IntegrityError, explain
from hashing.note import NoteVerifier
from hashing.retention import (
    HOLD,
    HOLD_RELEASE,
    INGEST,
    PERMANENT,
    PURGE,
    RETENTION_POLICY,
    TAG,
    TYPES,
    UPLOAD_RECEIPT,
    USER,
    Judge,
    Policy,
    Standing,
    parse_when,
    rfc3339,
)
from hashing.station import Station
from uploader import sender

log = logging.getLogger(__name__)

READ_BATCH = 4096  # entries read per query while loading
PURGE_BATCH = 256  # purge entries per transaction

# Why a recording is not purged now, first match wins (for counts and listings).
HELD, UNRECEIPTED, NEVER, NOT_DUE, NOT_STORED, AWAITING = (
    "held",
    "not receipted",
    "never purged",
    "not yet due",
    "not in the store",
    "awaiting a receipt",  # past its date; no platform receipt dated after it yet
)
SYNCED = "system/ntp"  # hashing.entries.clock_reading()'s source of a synchronised clock
RECENT_RECEIPTS = 32  # receipts of other files read for one recording's status

Keys = Sequence[NoteVerifier] | None  # None: [upload] platform_key of the configuration


def check(cfg: config.Config) -> Iterator[config.Problem]:
    """What the retention rule would make of the settings (config.Check): a default
    case type that evidence_days does not list would keep its evidence forever."""
    default_type = cfg.get("retention", "default_case_type")
    if default_type and default_type not in cfg.get("retention", "evidence_days"):
        yield cfg.problem(
            "retention",
            "default_case_type",
            f"{default_type!r} is not a case type of evidence_days; evidence of an unknown "
            "case type would be kept permanently: add it to evidence_days or leave this empty",
        )


def policy_from_config(cfg: config.Config) -> Policy:
    """The [retention] section as a Policy ("permanent" becomes None; "" no default),
    with the station's zone ([offload] utc_offset_minutes)."""
    days: Mapping[str, Any] = cfg.get("retention", "evidence_days")
    default = str(cfg.get("retention", "default_case_type")) or None
    return Policy(
        routine_days=int(cfg.get("retention", "routine_days")),
        grace_days=int(cfg.get("retention", "grace_days")),
        evidence_days={k: None if v == PERMANENT else int(v) for k, v in days.items()},
        default_case_type=default,
        utc_offset_minutes=int(cfg.get("offload", "utc_offset_minutes")),
    )


def parse_platform_keys(values: Iterable[str], where: str) -> tuple[NoteVerifier, ...]:
    """Platform receipt verifier keys: each value holds keys separated by spaces or
    commas, or names a file holding them. Raises ConfigError naming ``where``."""
    keys: list[NoteVerifier] = []
    for value in values:
        text = value
        if "+" not in value and Path(value).is_file():
            try:
                text = Path(value).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{where} {value!r}: cannot read it: {e}") from e
        keys += sender.parse_platform_keys(text, where)
    return tuple(keys)


def platform_keys_from_config(cfg: config.Config) -> tuple[NoteVerifier, ...]:
    """``[upload] platform_key``: the keys the platform signs receipts with (read as
    the uploader reads them)."""
    return sender.parse_platform_keys(
        str(cfg.get("upload", "platform_key")), "[upload] platform_key"
    )


def _keys(platform_keys: Keys) -> tuple[NoteVerifier, ...]:
    if platform_keys is not None:
        return tuple(platform_keys)
    return platform_keys_from_config(config.load())


# -- reading the ledger ------------------------------------------------------------


def _judge(station: Station, platform_keys: Keys) -> Judge:
    return Judge(_keys(platform_keys), station.station_id)


def _feed(judge: Judge, db: index.Reader, size: int) -> Judge:
    """Let ``judge`` read every relevant entry from its position on, in order
    (``db``: the ledger, or the write transaction the judgement guards).

    ``size`` is the ledger size measured before reading: everything below it is
    then considered (entries appended meanwhile are read too, or on the next feed).
    The audit checks the entries' form; here they are the dock's own.
    """
    while rows := index.entries_from(db, judge.size, TYPES, READ_BATCH):
        for seq, kind, data in rows:
            value = json.loads(bytes(data))
            judge.observe(int(seq), str(kind), str(value["time"]), value["body"])
    judge.size = max(judge.size, size)
    return judge


def load(station: Station, platform_keys: Keys = None) -> Judge:
    """Every recording's standing from one ordered read of the relevant entries.
    ``platform_keys``: the receipt keys (None: the configured ones)."""
    return _feed(_judge(station, platform_keys), station.ledger, station.ledger.size())


def load_one(station: Station, sha256: str, platform_keys: Keys = None) -> Judge:
    """The standing of one recording without reading every recording's entries:
    policies, holds, releases, users and tags (case types and case bindings);
    the ingest, receipts and purges that name this digest; the receipts its
    purges name as their attestation; and the newest receipts (the platform's
    time now)."""
    size = station.ledger.size()
    rows = index.entries_about(
        station.ledger,
        sha256,
        (RETENTION_POLICY, HOLD, HOLD_RELEASE, TAG, USER),
        (INGEST, UPLOAD_RECEIPT, PURGE),
    )
    wanted = {
        json.loads(bytes(data))["body"].get("attested_by")
        for _, kind, data in rows
        if kind == PURGE
    }
    extra = index.latest_entries(station.ledger, UPLOAD_RECEIPT, RECENT_RECEIPTS)
    for seq in sorted(s for s in wanted if isinstance(s, int) and not isinstance(s, bool)):
        attestation = index.entry_of_type(station.ledger, seq, UPLOAD_RECEIPT)
        if attestation is not None:
            extra.append(attestation)
    merged = {int(seq): (int(seq), kind, data) for seq, kind, data in [*rows, *extra]}
    judge = _judge(station, platform_keys)
    for seq, kind, data in (merged[s] for s in sorted(merged)):
        value = json.loads(bytes(data))
        judge.observe(seq, str(kind), str(value["time"]), value["body"])
    judge.size = max(judge.size, size)
    return judge


# -- one recording's status ------------------------------------------------------------


@dataclass(frozen=True)
class RecordingStatus:
    """A recording under the configured policy at one moment (``evidock show``,
    the plan and the report)."""

    sha256: str
    size: int
    klass: str
    cases: tuple[str, ...]
    recorded_at: datetime  # the recording date its ingest states (the camera's clock)
    counted_from: datetime  # the later of that and its docking: the periods count from here
    keep_until: datetime | None  # None: never purged (long-term, permanent case type)
    purge_after: datetime | None  # keep_until + grace: the earliest purge
    why: str  # what sets keep_until
    holds: tuple[int, ...]
    receipt: int | None
    purged: int | None  # the purge entry, if any
    purge_lawful: bool | None  # its verdict (None: not purged)
    stored: bool
    state: str  # "due", "purged", "purge unfinished", or the first of the blockers' kinds
    blockers: tuple[str, ...]  # every reason it may not be purged now

    @property
    def due(self) -> bool:
        return self.state == "due"

    def as_dict(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return None if value is None else rfc3339(value)

        return {
            "sha256": self.sha256,
            "size": self.size,
            "class": self.klass,
            "cases": list(self.cases),
            "recorded_at": rfc3339(self.recorded_at),
            "counted_from": rfc3339(self.counted_from),
            "keep_until": when(self.keep_until),
            "purge_after": when(self.purge_after),
            "why": self.why,
            "holds": list(self.holds),
            "receipt": self.receipt,
            "purged": self.purged,
            "purge_lawful": self.purge_lawful,
            "stored": self.stored,
            "state": self.state,
            "blockers": list(self.blockers),
        }


def _has(station: Station, sha256: str) -> bool:
    """station.store.has without building Paths: called once per recording by the plan."""
    if not HEX64_RE.fullmatch(sha256):
        return False
    where = f"{station.store.root}/{sha256[:2]}/{sha256[2:4]}/{sha256}"
    return os.path.isfile(where)  # noqa: PTH113 - 100k Path objects cost seconds


def _status(
    station: Station, judge: Judge, standing: Standing, policy: Policy, now: datetime
) -> RecordingStatus:
    dates = standing.dates(policy)
    stored = _has(station, standing.sha256)
    verdict = None
    if standing.purged is not None:
        verdict = judge.verdicts.get(standing.purged)
    blockers = [] if standing.purged is not None else standing.blockers(policy, now, dates)
    if standing.purged is None and not stored:
        blockers.append("not in the store: gone without a purge entry; run `evidock ledger verify`")
    if standing.purged is not None:
        lawful = verdict is not None and verdict.lawful
        state = "purge unfinished" if stored and lawful else "purged"
    elif standing.holds:
        state = HELD
    elif standing.receipt is None:
        state = UNRECEIPTED
    elif dates.purge_after is None:
        state = NEVER
    elif not stored:
        state = NOT_STORED
    elif policy.problems() or now < dates.purge_after:
        state = NOT_DUE
    elif blockers:
        state = AWAITING
    else:
        state = "due"
    return RecordingStatus(
        sha256=standing.sha256,
        size=standing.size,
        klass=standing.klass,
        cases=standing.cases,
        recorded_at=standing.recorded,
        counted_from=standing.start,
        keep_until=dates.keep_until,
        purge_after=dates.purge_after,
        why=dates.why,
        holds=standing.holds,
        receipt=standing.receipt,
        purged=standing.purged,
        purge_lawful=None if verdict is None else verdict.lawful,
        stored=stored,
        state=state,
        blockers=tuple(blockers),
    )


def status(
    station: Station, sha256: str, policy: Policy, now: datetime, platform_keys: Keys = None
) -> RecordingStatus | None:
    """One recording's class, dates, holds, receipt and purge; None if not ingested.
    ``platform_keys``: the receipt keys (None: the configured ones)."""
    judge = load_one(station, sha256, platform_keys)
    standing = judge.standing(sha256)
    return None if standing is None else _status(station, judge, standing, policy, now)


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a retention run at ``now`` would do, and why the rest stays."""

    now: datetime
    policy: Policy
    policy_seq: int | None  # the recorded policy equal to ``policy``, if any
    due: tuple[RecordingStatus, ...]
    unfinished: tuple[RecordingStatus, ...]  # purge entry written, file still stored
    blocked: tuple[RecordingStatus, ...]
    purged: int  # recordings already purged

    def counts(self) -> dict[str, int]:
        """Blocked recordings by their first reason."""
        found: dict[str, int] = {}
        for item in self.blocked:
            found[item.state] = found.get(item.state, 0) + 1
        return dict(sorted(found.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": rfc3339(self.now),
            "policy": self.policy.body(),
            "policy_entry": self.policy_seq,
            "due": [s.as_dict() for s in self.due],
            "unfinished": [s.as_dict() for s in self.unfinished],
            "blocked": self.counts(),
            "purged": self.purged,
        }


def _recorded_policy(judge: Judge, policy: Policy) -> int | None:
    latest = judge.latest_policy
    return latest[0] if latest is not None and latest[1] == policy else None


def _plan(station: Station, judge: Judge, policy: Policy, now: datetime) -> Plan:
    due, unfinished, blocked = [], [], []
    purged = 0
    for sha in judge.digests():
        standing = judge.standing(sha)
        if standing is None:
            continue
        item = _status(station, judge, standing, policy, now)
        if item.state == "due":
            due.append(item)
        elif item.state == "purge unfinished":
            unfinished.append(item)
        elif item.state == "purged":
            purged += 1
        else:
            blocked.append(item)
    due.sort(key=lambda s: (s.purge_after or now, s.sha256))
    return Plan(
        now,
        policy,
        _recorded_policy(judge, policy),
        tuple(due),
        tuple(unfinished),
        tuple(blocked),
        purged,
    )


def plan(station: Station, policy: Policy, now: datetime, platform_keys: Keys = None) -> Plan:
    """What is due at ``now`` under ``policy``, and what is blocked and why.
    ``platform_keys``: the receipt keys (None: the configured ones)."""
    return _plan(station, load(station, platform_keys), policy, now)


# -- the run -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    dry_run: bool
    policy_entry: int | None  # the retention_policy entry the purges cite
    purged: tuple[tuple[str, int], ...] = ()  # (digest, purge entry)
    finished: tuple[str, ...] = ()  # unfinished purges whose files were removed now
    mismatched: tuple[tuple[str, str], ...] = ()  # (digest, detail): left alone
    errors: tuple[tuple[str, str], ...] = ()  # (digest, detail)
    skipped: tuple[tuple[str, str], ...] = ()  # no longer due when re-judged
    kept: tuple[tuple[str, str], ...] = ()  # unfinished purges a hold set since keeps
    refused: str | None = None  # why the rule refused a batch (nothing after it was done)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy_entry": self.policy_entry,
            "purged": [{"sha256": s, "entry": e} for s, e in self.purged],
            "finished": list(self.finished),
            "mismatched": [{"sha256": s, "detail": d} for s, d in self.mismatched],
            "errors": [{"sha256": s, "detail": d} for s, d in self.errors],
            "skipped": [{"sha256": s, "detail": d} for s, d in self.skipped],
            "kept": [{"sha256": s, "detail": d} for s, d in self.kept],
            "refused": self.refused,
            "plan": self.plan.as_dict(),
        }


class UnlawfulPurgeError(IntegrityError):
    """The rule refused a purge entry the run was about to commit (rolled back)."""


def ensure_policy(station: Station, judge: Judge, policy: Policy, by: str) -> int:
    """The seq of a ``retention_policy`` entry equal to ``policy``: the latest one,
    or a new one appended now (so every purge cites a policy in the ledger)."""
    with station.ledger.transaction() as tx:
        _feed(judge, tx, tx.size)
        seq = _recorded_policy(judge, policy)
        if seq is not None:
            return seq
        entry = tx.append(RETENTION_POLICY, {**policy.body(), "by": by})
        judge.observe(entry.seq, entry.type, entry.time, entry.body)
    log.warning("retention policy recorded (entry %d): %s", entry.seq, policy.body())
    return entry.seq


def check_clock(station: Station, *, require_synced: bool) -> datetime:
    """The clock's time, if a purge may be dated by it. Raises ConfigError when it is
    not synchronised (unless ``require_synced`` is false) or reads earlier than the
    ledger's last entry (it went back, or was ahead when that entry was written)."""
    text, source = clock_reading()
    now = parse_when(text)
    assert now is not None  # noqa: S101 - clock_reading() gives RFC 3339
    if require_synced and source != SYNCED:
        raise ConfigError(
            f"the clock is not synchronised (clock source {source}): purges are dated by it, "
            "so nothing is purged; synchronise it (e.g. `timedatectl set-ntp true`) and run "
            "`evidock retention run` again, or set [retention] require_synced_clock = false "
            "where the platform's receipts are the only time source"
        )
    size = station.ledger.size()
    if size:
        last = station.ledger.entry(size - 1)
        when = parse_when(last.time)
        if when is not None and now < when:
            raise ConfigError(
                f"the clock reads {rfc3339(now)}, earlier than the ledger's last entry "
                f"{last.seq} ({last.time}): the clock went back, or was ahead when that entry "
                "was written; nothing is purged",
                hint="set the clock right and run "
                "`evidock retention run` once it is past that time",
            )
    return now


def _remove(path: Path) -> None:
    """Unlink a stored file (0400 in a 0700 folder: the folder's write bit decides)."""
    path.unlink(missing_ok=True)


def _remove_thumbnail(station: Station, sha256: str) -> None:
    """The kiosk's still of a purged recording (agent.offload.session keeps thumbs/<sha256>.jpg)."""
    thumb = station.home / "thumbs" / f"{sha256}.jpg"
    try:
        thumb.unlink()
    except FileNotFoundError:
        return
    except OSError as e:
        log.error("purge of %s: could not remove its thumbnail %s: %s", sha256, thumb, e)


def _unlink_all(station: Station, purges: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
    """Remove the stored files of ``purges`` ((digest, purge entry)) and make the
    removals durable; (digest, error) for any that could not be removed (their
    purge entries stand; the next run retries)."""
    errors = []
    folders: set[Path] = set()
    for sha, seq in purges:
        path = station.store.path_for(sha)
        try:
            _remove(path)
            folders.add(path.parent)
            # Its still goes too: for a photo the thumbnail is the picture (Art. 16).
            _remove_thumbnail(station, sha)
        except OSError as e:
            log.error("purge of %s: could not remove %s: %s; the next run retries", sha, path, e)
            errors.append(
                (
                    sha,
                    f"could not remove {path}: {e.strerror or e}; purge entry {seq} written; "
                    "file still stored, retried next run",
                )
            )
    for folder in sorted(folders):
        try:
            fsync_dir(folder)
        except OSError as e:
            log.error("purge: could not fsync %s: %s", folder, e)
    return errors


def _purge_body(standing: Standing, policy: Policy, policy_seq: int, by: str) -> dict[str, Any]:
    dates = standing.dates(policy)
    assert dates.keep_until is not None and dates.purge_after is not None  # noqa: S101 - due
    assert standing.attested is not None  # noqa: S101 - due: attested past purge_after
    return {
        "sha256": standing.sha256,
        "size": standing.size,
        "class": standing.klass,
        "cases": list(standing.cases),
        "recorded_at": rfc3339(standing.recorded),
        "counted_from": rfc3339(standing.start),
        "keep_until": rfc3339(dates.keep_until),
        "purge_after": rfc3339(dates.purge_after),
        "receipt": standing.receipt,
        "attested_by": standing.attested.receipt,
        "policy": policy_seq,
        "by": by,
    }


def run(
    station: Station,
    policy: Policy,
    *,
    by: str,
    platform_keys: Keys = None,
    require_synced_clock: bool = True,
    dry_run: bool = False,
    now: datetime | None = None,
) -> RunResult:
    """Purge every local copy that is due; finish purges a crash interrupted.

    ``now`` is the moment the plan is made for (default: the clock);
    ``platform_keys`` the receipt keys (None: the configured ones). Each purge
    is judged again inside its write transaction, at the clock's time, against
    the whole ledger up to it (a hold or tag added meanwhile counts), and the
    appended entry must pass the auditor's rule or the transaction is rolled
    back (the result's ``refused``; batches committed before stand). A dry run
    writes nothing at all. Raises ConfigError, before writing anything, without
    a platform key or when the clock cannot date a purge (check_clock).
    """
    keys = _keys(platform_keys)
    if not dry_run:
        if not keys:
            raise ConfigError(
                "no [upload] platform_key is configured: the platform's receipts cannot be "
                "verified, so nothing is purged",
                hint="set it to the key `evidock receive --show-key` prints on the platform",
            )
        clock = check_clock(station, require_synced=require_synced_clock)
        now = now or clock
    judge = load(station, keys)
    the_plan = _plan(station, judge, policy, now or datetime.now(UTC))
    if dry_run:
        return RunResult(the_plan, True, the_plan.policy_seq)
    policy_seq = ensure_policy(station, judge, policy, by)  # reads the ledger up to now
    finishing: list[tuple[str, int]] = []
    kept: list[tuple[str, str]] = []
    for item in the_plan.unfinished:
        assert item.purged is not None  # noqa: S101 - unfinished: its purge entry exists
        standing = judge.standing(item.sha256)
        holds = standing.holds if standing is not None else ()
        if holds:
            detail = (
                f"purge entry {item.purged} written, but hold {', '.join(map(str, holds))} "
                "set since covers it: the file is kept; the next run after the hold's release "
                "finishes the purge"
            )
            log.warning("not finishing the purge of %s: %s", item.sha256, detail)
            kept.append((item.sha256, detail))
        else:
            finishing.append((item.sha256, item.purged))
    errors = _unlink_all(station, finishing)
    failed = {sha for sha, _ in errors}
    finished = [sha for sha, _ in finishing if sha not in failed]
    for sha in finished:
        log.warning("finished the interrupted purge of %s", sha)

    purged: list[tuple[str, int]] = []
    mismatched: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    refused = None
    due = list(the_plan.due)
    for start in range(0, len(due), PURGE_BATCH):
        batch = []
        for item in due[start : start + PURGE_BATCH]:
            problem = _recheck_copy(station, item)
            if problem is None:
                batch.append(item.sha256)
            else:
                log.error("not purged: %s", problem)
                mismatched.append((item.sha256, problem))
        try:
            done = _purge_batch(station, judge, policy, policy_seq, batch, by, skipped)
        except UnlawfulPurgeError as e:
            refused = explain(e)
            log.error("%s", refused)
            break
        purged += done
        errors += _unlink_all(station, done)
    if purged:
        log.warning(
            "purged %d local copies (purge entries %d-%d)", len(purged), purged[0][1], purged[-1][1]
        )
    return RunResult(
        the_plan,
        False,
        policy_seq,
        tuple(purged),
        tuple(finished),
        tuple(mismatched),
        tuple(errors),
        tuple(skipped),
        tuple(kept),
        refused,
    )


def _recheck_copy(station: Station, item: RecordingStatus) -> str | None:
    """Re-hash the stored copy before it is purged: a copy that no longer matches
    its digest is kept for investigation. Returns what is wrong, or None."""
    path = station.store.path_for(item.sha256)
    try:
        got = digest_file(path, drop_cache=True)
    except OSError as e:
        return f"{path}: cannot read: {e.strerror or e}; run `evidock ledger verify`"
    if got.sha256_hex != item.sha256 or got.size != item.size:
        return (
            f"{path}: SHA-256 now {got.sha256_hex}, {got.size} bytes; the ledger records "
            f"{item.sha256}, {item.size} bytes: kept for investigation; run `evidock ledger verify`"
        )
    return None


def _purge_batch(
    station: Station,
    judge: Judge,
    policy: Policy,
    policy_seq: int,
    shas: Sequence[str],
    by: str,
    skipped: list[tuple[str, str]],
) -> list[tuple[str, int]]:
    """Append the purge entries of ``shas`` in one transaction (re-judged there)."""
    if not shas:
        return []
    done: list[tuple[str, int]] = []
    with station.ledger.transaction() as tx:
        _feed(judge, tx, tx.size)
        clock = datetime.now(UTC)
        for sha in shas:
            standing = judge.standing(sha)
            if standing is None:
                continue
            blockers = standing.blockers(policy, clock)
            if blockers:
                skipped.append((sha, "; ".join(blockers)))
                log.info("not purged after all: %s: %s", sha, "; ".join(blockers))
                continue
            entry = tx.append(PURGE, _purge_body(standing, policy, policy_seq, by))
            verdict = judge.observe(entry.seq, entry.type, entry.time, entry.body)
            if verdict is None or not verdict.lawful:
                reasons = "; ".join(verdict.reasons) if verdict else "not judged"
                raise UnlawfulPurgeError(
                    f"purge of {sha} refused by the retention rule ({reasons}); nothing was "
                    "written for its batch (batches before it stand)",
                    hint="check the clock and run `evidock retention run` again",
                )
            done.append((sha, entry.seq))
    for sha, seq in done:
        log.info("purged %s (entry %d)", sha, seq)
    return done


# -- the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """What expires when: dated recordings by earliest purge date, and the rest."""

    now: datetime
    until: datetime | None
    dated: tuple[RecordingStatus, ...]  # purge_after <= until (all dated when until is None)
    later: int  # dated, but after ``until``
    never: dict[str, int]  # never purged, by why (long-term, permanent case type)
    held: int  # under a hold (whatever their date)
    purged: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": rfc3339(self.now),
            "until": None if self.until is None else rfc3339(self.until),
            "recordings": [s.as_dict() for s in self.dated],
            "later": self.later,
            "never": self.never,
            "held": self.held,
            "purged": self.purged,
        }


def report(
    station: Station,
    policy: Policy,
    now: datetime,
    until: datetime | None = None,
    platform_keys: Keys = None,
) -> Forecast:
    """Every recording not yet purged whose earliest purge date is at or before
    ``until`` (all of them when None), soonest first; counts of the rest.
    ``platform_keys``: the receipt keys (None: the configured ones)."""
    judge = load(station, platform_keys)
    dated: list[RecordingStatus] = []
    later = held = purged = 0
    never: dict[str, int] = {}
    for sha in judge.digests():
        standing = judge.standing(sha)
        if standing is None:
            continue
        if standing.purged is not None:
            purged += 1
            continue
        item = _status(station, judge, standing, policy, now)
        if item.holds:
            held += 1
        if item.purge_after is None:
            never[item.why] = never.get(item.why, 0) + 1
        elif until is None or item.purge_after <= until:
            dated.append(item)
        else:
            later += 1
    dated.sort(key=lambda s: (s.purge_after or now, s.sha256))
    return Forecast(now, until, tuple(dated), later, dict(sorted(never.items())), held, purged)


def purge_entries(station: Station, sha256: str) -> list[int]:
    """Seqs of the purge entries naming ``sha256`` (for show, play and exports)."""
    return index.purges_of(station.ledger, sha256)
