"""One offload session: everything on one recorder into the ledger (design.md steps 1-6, 9).

A session attaches the recorder through its driver, reads who it is, lists its
recordings, refuses to start if the dock cannot hold them, then for each one
not yet in the ledger: copy + digest into staging, fsync, re-read from disk,
probe the media, commit the ``ingest`` entry. It then writes the device's story
(anomalies), applies the wipe policy, records an ``offload_session`` entry and
signs a checkpoint.

Resuming is by construction: a recording is known by (device, path, size,
modification time), so after an unplug, a replug in another slot, a restart
or a power cut, the next session skips what is committed and copies the rest.
A session never raises for one bad file: it notes it and goes on (style.md 9);
it stops early only when the recorder goes away or it is asked to stop.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.offload.ingest import Binding, Source, already_ingested, commit, copy_to_staging
from agent.offload.probe import MediaFacts, ProbeWorkers, probe
from agent.offload.story import RecordingFact, StoryPolicy, analyse, recorded_start
from agent.records import registry as records
from drivers.base import DeviceInfo, Driver, RecorderIdentity, Recording, Refused
from hashing._fsutil import make_private_dir
from hashing.entries import Entry
from hashing.errors import DeviceError, EvidockError, IntegrityError, explain
from hashing.findings import EXIT_INTEGRITY, EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE
from hashing.station import Station
from uploader.outbox import UPLOAD_RECEIPT

log = logging.getLogger(__name__)

WIPE_POLICIES = ("never", "after_verified", "after_receipt")


@dataclass(frozen=True)
class OffloadPolicy:
    """Settings of a session ([offload] in the config file)."""

    wipe: str = "after_receipt"
    gap_minutes: int = 10
    shift_break_hours: int = 4
    clock_tolerance_s: int = 60
    free_margin_bytes: int = 1 << 30
    utc_offset_minutes: int = 480  # camera file names are local time; China Standard Time

    def __post_init__(self) -> None:
        if self.wipe not in WIPE_POLICIES:
            raise EvidockError(
                f"wipe policy {self.wipe!r}: choose one of {', '.join(WIPE_POLICIES)}"
            )

    @property
    def story(self) -> StoryPolicy:
        return StoryPolicy(
            gap_minutes=self.gap_minutes,
            shift_break_hours=self.shift_break_hours,
            clock_tolerance_s=self.clock_tolerance_s,
            utc_offset=timezone(timedelta(minutes=self.utc_offset_minutes)),
        )


@dataclass
class SessionStatus:
    """What the kiosk and `evidock status` show for one docked recorder."""

    slot: str
    driver: str
    # attaching, listing, copying, finishing (story, wipe, release), committed,
    # interrupted, failed, refused; only "committed" is safe to unplug
    state: str = "attaching"
    serial: str | None = None
    officer: str | None = None
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    current: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    anomalies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wiped: int = 0

    @property
    def safe_to_unplug(self) -> bool:
        """可以拔出: every recording on the recorder is committed (or it is gone)."""
        return self.state == "committed"

    def as_dict(self) -> dict[str, Any]:
        elapsed = max((self.finished or time.time()) - self.started, 1e-6)
        speed = self.bytes_copied / elapsed
        left = self.bytes_total - self.bytes_done
        return {
            "slot": self.slot,
            "driver": self.driver,
            "state": self.state,
            "serial": self.serial,
            "officer": self.officer,
            "files_total": self.files_total,
            "files_done": self.files_done,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "speed_bps": int(speed),
            "eta_s": int(left / speed) if speed > 0 and left > 0 else 0,
            "current": self.current,
            "anomalies": list(self.anomalies),
            "errors": list(self.errors),
            "wiped": self.wiped,
            "safe_to_unplug": self.safe_to_unplug,
            "started": self.started,
            "finished": self.finished,
        }

    bytes_copied: int = 0  # this session's copies only, for the speed


@dataclass
class SessionSummary:
    status: SessionStatus
    new: list[str] = field(default_factory=list)
    skipped: int = 0
    refused: int = 0
    failed: int = 0
    integrity_failures: int = 0
    anomaly_entries: list[Entry] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """`evidock offload`'s exit code (style.md 10): 1 on an integrity failure;
        4 when the recorder was pulled out or stopped (what was copied is kept:
        plug it in again); 2 when the dock refused or failed it."""
        if self.integrity_failures:
            return EXIT_INTEGRITY
        if self.status.state == "committed":
            return EXIT_OK
        return EXIT_TRANSIENT if self.status.state == "interrupted" else EXIT_USAGE


class OffloadSession:
    def __init__(
        self,
        station: Station,
        driver: Driver,
        device: DeviceInfo,
        policy: OffloadPolicy,
        *,
        on_change: Callable[[SessionStatus], None] | None = None,
        stop: threading.Event | None = None,
        identity: RecorderIdentity | None = None,
    ) -> None:
        self.station = station
        self.driver = driver
        self.device = device
        self.policy = policy
        self.on_change = on_change or (lambda _s: None)
        self.stop = stop or threading.Event()
        self.known_identity = identity
        self.status = SessionStatus(slot=device.sys_path, driver=driver.key)
        self.summary = SessionSummary(self.status)
        self.thumbs = station.home / "thumbs"

    def _changed(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self.on_change(self.status)

    def run(self) -> SessionSummary:
        """Run the session to its end. Never raises for recorder or file trouble.

        "Safe to unplug" (state ``committed``) is set only at the very end: after
        every recording is committed, after the wipe, and after the driver has
        released (unmounted) the recorder.
        """
        try:
            with self.driver.attach(self.device) as root:
                self._offload(root)
            if self.status.state == "finishing":
                self._changed(state="committed", current=None)
        except CapacityError as e:
            log.warning("%s: %s", self.device.sys_path, e)
            self.status.errors.append(explain(e))
            self._changed(state="refused", current=None)
        except DeviceError as e:
            log.warning("%s: %s", self.device.sys_path, e)
            self.status.errors.append(explain(e))
            self._changed(state="interrupted", current=None)
        except IntegrityError as e:
            log.error("%s: integrity failure: %s", self.device.sys_path, e)
            self.status.errors.append(explain(e))
            self.summary.integrity_failures += 1
            self._changed(state="failed", current=None)
        except EvidockError as e:
            log.error("%s: %s", self.device.sys_path, e)
            self.status.errors.append(explain(e))
            self._changed(state="failed", current=None)
        finally:
            self.status.finished = time.time()
            self.on_change(self.status)
        return self.summary

    def _offload(self, root: Path) -> None:
        identity = self.known_identity or self.driver.identify(self.device, root)
        registered = records.device(self.station, identity.serial)
        officer = registered.officer if registered and registered.officer else identity.officer
        self._changed(serial=identity.serial, officer=officer, state="listing")
        binding = Binding(officer=officer, device=identity.serial)
        recordings: list[Recording] = []
        refused: list[Refused] = []
        facts: dict[bytes, RecordingFact] = {}
        listed = False
        try:
            listing = list(self.driver.recordings(root))
            recordings = [r for r in listing if isinstance(r, Recording)]
            refused = [r for r in listing if isinstance(r, Refused)]
            listed = True
            # One ledger lookup per recording: what is committed already is skipped.
            known = {r.relpath: self._known(identity, r) for r in recordings}
            pending = [r for r in recordings if known[r.relpath] is None]
            self.summary.skipped = len(recordings) - len(pending)
            self.summary.refused = len(refused)
            self._changed(
                files_total=len(recordings),
                files_done=len(recordings) - len(pending),
                bytes_total=sum(r.size for r in recordings),
                bytes_done=sum(r.size for r in recordings) - sum(r.size for r in pending),
            )
            self._check_space(pending)
            self._changed(state="copying")
            committed: dict[bytes, str] = {}
            for rec in recordings:
                if self.stop.is_set():
                    self._changed(state="interrupted", current=None)
                    break
                done = known[rec.relpath] or self._copy_one(root, rec, identity, binding)
                if done is not None:
                    committed[rec.relpath] = done[0]
                    facts[rec.relpath] = done[1]
            complete = len(committed) == len(recordings) and not self.stop.is_set()
            if complete:
                self._changed(state="finishing", current=None)
                self._wipe(root, identity, recordings, committed)
            elif self.status.state == "copying":
                self._changed(state="interrupted", current=None)
        finally:
            # Whatever happened, the docking is on record: the story of what was
            # seen (every listed recording, copied or not, so one that failed to
            # copy is not taken for one missing), a session entry, a checkpoint.
            if listed:
                every = [facts.get(r.relpath) or self._fact(r, None) for r in recordings]
                self._story(identity, officer, every, refused, registered is None)
            self._close_session(identity, officer)

    def _known(
        self, identity: RecorderIdentity, rec: Recording
    ) -> tuple[str, RecordingFact] | None:
        found = already_ingested(self.station, self._source(identity, rec))
        if found is None or found.seq is None:
            return None
        body = self.station.ledger.entry(found.seq).body
        return found.sha256, self._fact(rec, body.get("media"))

    @staticmethod
    def _source(identity: RecorderIdentity, rec: Recording) -> Source:
        return Source(identity.serial, rec.relpath, rec.size, rec.mtime_ns)

    @staticmethod
    def _fact(rec: Recording, media: Any) -> RecordingFact:
        m = media if isinstance(media, dict) else {}

        def typed(key: str, kind: type) -> Any:
            value = m.get(key)
            return (
                value
                if isinstance(value, kind) and not (kind is int and isinstance(value, bool))
                else None
            )

        return RecordingFact(
            name=rec.name,
            relpath=rec.display,
            mtime=datetime.fromtimestamp(rec.mtime_ns / 1e9, UTC),
            duration_ms=typed("duration_ms", int),
            size=rec.size,
            decodes=typed("decodes", bool),
            problem=typed("problem", str),
            kind=typed("kind", str),
        )

    def _check_space(self, pending: list[Recording]) -> None:
        need = sum(r.size for r in pending) + self.policy.free_margin_bytes
        st = os.statvfs(self.station.home)
        free = st.f_bavail * st.f_frsize
        if pending and need > free:
            self._changed(state="refused")
            raise CapacityError(
                f"not enough space: this recorder needs {need >> 20} MiB with the margin, "
                f"the dock has {free >> 20} MiB free. Nothing was copied and nothing deleted; "
                "free space on the dock (after upload and retention) and dock the recorder again"
            )

    def _copy_one(
        self, root: Path, rec: Recording, identity: RecorderIdentity, binding: Binding
    ) -> tuple[str, RecordingFact] | None:
        self._changed(current=rec.display)
        source = self._source(identity, rec)
        try:
            fd = self.driver.open(root, rec)
            try:
                staged, copy = copy_to_staging(self.station, fd, source, self.stop)
            finally:
                _close_source(fd, rec)
            make_private_dir(self.thumbs)
            thumb = self.thumbs / f".{os.getpid()}.{secrets.token_hex(8)}.jpg"
            media = _probe(staged, rec.name, thumb)
            fact = self._fact(rec, media.as_body())
            extra: dict[str, Any] = {
                "media": media.as_body(),
                "recorder": _identity_body(identity),
                "recorded_at": _utc_text(recorded_start(fact, self.policy.story)),
            }
            result = commit(self.station, staged, copy, source, binding, extra)
            self._keep_thumbnail(thumb, result.sha256)
        except IntegrityError as e:
            self.summary.integrity_failures += 1
            self.status.errors.append(explain(e))
            log.error("%s", e)
            return None
        except DeviceError as e:
            self.summary.failed += 1
            self.status.errors.append(explain(e))
            log.warning("%s", e)
            if self.stop.is_set() or not _reachable(root):
                raise
            return None
        if result.new:
            self.summary.new.append(result.sha256)
        else:
            self.summary.skipped += 1
        self.status.bytes_copied += rec.size
        self._changed(
            files_done=self.status.files_done + 1, bytes_done=self.status.bytes_done + rec.size
        )
        return result.sha256, self._fact(rec, media.as_body())

    def _keep_thumbnail(self, made: Path, sha256: str) -> None:
        """The thumbnail was made from the staged copy, which is the stored file
        (renamed, not copied): what the kiosk shows is what is kept."""
        target = self.thumbs / f"{sha256}.jpg"
        if made.exists() and not target.exists():
            made.replace(target)
        made.unlink(missing_ok=True)

    def _story(
        self,
        identity: RecorderIdentity,
        officer: str | None,
        facts: list[RecordingFact],
        refused: list[Refused],
        unassigned: bool,
    ) -> None:
        anomalies = analyse(
            facts,
            self.policy.story,
            now=datetime.now(UTC),
            serial=identity.serial,
            officer=officer,
            clock_offset_ms=identity.clock_offset_ms,
            unassigned=unassigned,
            refused=[(r.display, r.reason) for r in refused],
            last_docked=records.last_docked(self.station, identity.serial),
        )
        # The story is re-read at every docking; a finding already on record is not repeated.
        seen = records.anomaly_keys(self.station, identity.serial)
        for anomaly in anomalies:
            if anomaly.key in seen:
                continue
            body = anomaly.as_body()
            body.setdefault("device", identity.serial)
            body.setdefault("officer", officer)
            self.summary.anomaly_entries.append(records.record_anomaly(self.station, body))
            self.status.anomalies.append(str(body.get("detail", body.get("kind"))))
        self.on_change(self.status)

    def _wipe(
        self,
        root: Path,
        identity: RecorderIdentity,
        recordings: list[Recording],
        committed: dict[bytes, str],
    ) -> None:
        allowed = self._wipeable(committed)
        qualifying = [r for r in recordings if committed[r.relpath] in allowed]
        if not qualifying:
            return
        with self.driver.writable(self.device, root) as writable_root:
            for rec in qualifying:
                sha = committed[rec.relpath]
                if not self.station.store.has(sha):
                    log.error("not wiping %s: %s is not in the store", rec.display, sha)
                    continue
                try:
                    self.driver.wipe(writable_root, rec)
                except DeviceError as e:
                    self.status.errors.append(explain(e))
                    continue
                records.record_wipe(
                    self.station,
                    {
                        "sha256": sha,
                        "device": identity.serial,
                        "policy": self.policy.wipe,
                        **_path_body(rec),
                    },
                )
                self.status.wiped += 1
        self.on_change(self.status)

    def _wipeable(self, committed: dict[bytes, str]) -> set[str]:
        """Digests the wipe policy lets go from the recorder (one ledger scan)."""
        if self.policy.wipe == "after_verified":
            return set(committed.values())
        if self.policy.wipe == "after_receipt":
            receipted = {
                str(e.body.get("sha256"))
                for e in self.station.ledger.entries_of_type(UPLOAD_RECEIPT)
            }
            return receipted & set(committed.values())
        return set()

    def _close_session(self, identity: RecorderIdentity, officer: str | None) -> None:
        body = {
            "device": identity.serial,
            "officer": officer,
            "driver": self.driver.key,
            "state": _OUTCOME.get(self.status.state, self.status.state),
            "files": self.status.files_total,
            "new": len(self.summary.new),
            "bytes": self.status.bytes_total,
            "refused": self.summary.refused,
            "failed": self.summary.failed,
            "anomalies": len(self.summary.anomaly_entries),
            "wiped": self.status.wiped,
            "started": datetime.fromtimestamp(self.status.started, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }
        self.station.ledger.append(records.OFFLOAD_SESSION, body)
        self.station.checkpoint()


# What a session's entry records, from the state it was in when it closed:
# "finishing" means every recording is committed (the release follows); a
# session closed while still listing or copying was cut short (unplugged).
_OUTCOME = {"finishing": "committed", "listing": "interrupted", "copying": "interrupted"}


class CapacityError(EvidockError):
    """The dock cannot hold what the recorder carries; nothing was copied or deleted."""


def _reachable(root: Path) -> bool:
    """Whether the recorder's folder still answers (a dead FUSE mount raises ENOTCONN)."""
    try:
        root.stat()
    except OSError:
        return False
    return True


def _identity_body(identity: RecorderIdentity) -> dict[str, Any]:
    return {
        "driver": identity.driver,
        "serial": identity.serial,
        "vendor": identity.vendor,
        "model": identity.model,
        "officer": identity.officer,
        "officer_name": identity.officer_name,
        "unit_no": identity.unit_no,
        "unit_name": identity.unit_name,
        "clock_offset_ms": identity.clock_offset_ms,
    }


def _path_body(rec: Recording) -> dict[str, str]:
    try:
        return {"source_path": rec.relpath.decode("utf-8")}
    except UnicodeDecodeError:
        return {"source_path": rec.display, "source_path_hex": rec.relpath.hex()}


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


ISOLATE_ABOVE = 8 << 20  # video-sized files are probed in a child process


_workers: ProbeWorkers | None = None
_workers_lock = threading.Lock()


def _probe(path: Path, name: str | None, thumb: Path | None = None) -> MediaFacts:
    """Probe media; decoders parse hostile input, so big files are probed in a
    long-lived child process whose crash or hang costs one flag, not the daemon."""
    global _workers  # noqa: PLW0603 - one pool of probe processes per daemon
    if path.stat().st_size <= ISOLATE_ABOVE:
        return probe(path, thumb, name=name)
    with _workers_lock:
        if _workers is None:
            _workers = ProbeWorkers()
            atexit.register(_workers.close)
    return _workers.probe(path, thumb, name=name)


def _close_source(fd: int, rec: Recording) -> None:
    """A FUSE file system whose device is gone fails even close() (ENOTCONN)."""
    try:
        os.close(fd)
    except OSError as e:
        raise DeviceError(f"{rec.display}: recorder went away: {e.strerror}") from e
