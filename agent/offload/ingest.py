"""Ingest recordings into a station: copy, prove, commit (design.md steps 2 and 4).

For each file: copy into staging while digesting, fsync and re-read
(agent.offload.copier); rename into the content-addressed store; then one ledger
transaction appends the ``ingest`` entry together with the store's index rows.
If the process dies between the rename and the commit, the stored file has no
entry yet; ingesting the same source again finds it stored and only commits the
entry, so every crash point converges without loss or duplicates.

A source already ingested (same device, path, size and modification time) is
not read again; a file whose bytes are already in the ledger is recorded once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.offload.copier import CopyResult, copy_and_verify, open_source
from agent.records import index
from hashing import canonical
from hashing.entries import INGEST
from hashing.errors import DeviceError, EvidockError
from hashing.station import Station

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """Who and what a recording is bound to when it is ingested."""

    officer: str | None = None
    device: str | None = None
    case: str | None = None


@dataclass(frozen=True)
class IngestResult:
    sha256: str
    source: str  # the path as the operator gave it (for printing)
    seq: int | None  # the ingest entry; None only when nothing was committed
    new: bool  # False: already in the ledger, nothing recorded


def _rfc3339_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def raw_path_fields(raw: bytes) -> dict[str, str]:
    """A source path as text, plus its exact bytes in hex when they are not UTF-8.

    Camera file systems hand over GBK and worse; the ledger keeps the exact
    bytes so nothing about a recording's origin is lost in translation.
    """
    name = raw.rsplit(b"/", 1)[-1]
    try:
        return {"name": name.decode("utf-8"), "source_path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "name": name.decode("utf-8", "replace"),
            "source_path": raw.decode("utf-8", "replace"),
            "source_path_hex": raw.hex(),
        }


@dataclass(frozen=True)
class Source:
    """Where a recording is being copied from: enough to recognise it next time."""

    device: str | None  # recorder serial; None for a plain path given to `evidock ingest`
    raw_path: bytes  # path on the recorder (relative) or the absolute path on the dock
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """Same device, path, size and time: the same recording, not read again."""
        ident = [self.device or "", self.raw_path.hex(), str(self.size), str(self.mtime_ns)]
        return hashlib.sha256(canonical.dumps(ident)).hexdigest()

    @property
    def display(self) -> str:
        return self.raw_path.decode("utf-8", "backslashreplace")


def already_ingested(station: Station, source: Source) -> IngestResult | None:
    known = index.source_ingest(station.ledger, source.key)
    if known is None:
        return None
    return IngestResult(known[0], source.display, known[1], new=False)


def copy_to_staging(
    station: Station, fd: int, source: Source, stop: threading.Event | None = None
) -> tuple[Path, CopyResult]:
    """Copy, digest, fsync and re-read into a new staging file (agent.offload.copier).
    Setting ``stop`` aborts the copy within one buffer (StoppedError)."""
    staged = station.store.new_staging_path()
    return staged, copy_and_verify(fd, staged, source_name=source.display, stop=stop)


def commit(
    station: Station,
    staged: Path,
    copy: CopyResult,
    source: Source,
    binding: Binding,
    extra: Mapping[str, Any] | None = None,
) -> IngestResult:
    """Move a verified staging file into the store and append its ingest entry.

    The rename comes first and is idempotent; the entry and the index rows then
    commit in one transaction (see the module docstring for the crash story).
    ``extra`` adds fields to the entry body (media facts, recorder identity).
    """
    digest = copy.digest
    sha = digest.sha256_hex
    station.store.adopt(staged, sha, digest.size)
    with station.ledger.transaction() as tx:
        seq = index.file_seq(tx, sha)
        if seq is not None:
            index.index_source_again(tx, source.key, sha, seq)
            return IngestResult(sha, source.display, seq, new=False)
        body: dict[str, Any] = {
            "sha256": sha,
            "size": digest.size,
            "chunk_size": digest.chunk_size,
            "chunk_root": digest.chunk_root.hex(),
            **raw_path_fields(source.raw_path),
            "source_mtime": _rfc3339_ns(copy.source_mtime_ns),
            "device": binding.device,
            "officer": binding.officer,
            "case": binding.case,
            **(extra or {}),
        }
        entry = tx.append(INGEST, body)
        index.index_ingest(tx, entry, digest, source.key)
    log.info("ingested %s as %s (entry %d)", source.display, sha, entry.seq)
    return IngestResult(sha, source.display, entry.seq, new=True)


def ingest_file(station: Station, path: Path, binding: Binding) -> IngestResult:
    """Ingest one regular file. Raises DeviceError (source unusable) or IntegrityError."""
    fd = open_source(path)
    try:
        st = os.fstat(fd)
        source = Source(binding.device, os.fsencode(path.absolute()), st.st_size, st.st_mtime_ns)
        known = already_ingested(station, source)
        if known is not None:
            return IngestResult(known.sha256, str(path), known.seq, new=False)
        staged, copy = copy_to_staging(station, fd, source)
    finally:
        os.close(fd)
    result = commit(station, staged, copy, source, binding)
    return IngestResult(result.sha256, str(path), result.seq, result.new)


def walk(paths: list[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files under the given paths in a stable order, with a reason for any refused.

    Symlinks are never followed (a camera's link could point anywhere on the
    dock); FIFOs and device nodes are refused by open_source.
    """
    for top in paths:
        if top.is_symlink():
            yield top, "is a symbolic link; not followed"
        elif top.is_dir():
            for folder, dirs, files in os.walk(top, followlinks=False):
                dirs.sort()
                base = Path(folder)
                for d in dirs:
                    if (base / d).is_symlink():
                        yield base / d, "is a symbolic link; not followed"
                for name in sorted(files):
                    p = base / name
                    yield p, ("is a symbolic link; not followed" if p.is_symlink() else None)
        elif top.exists():
            yield top, None
        else:
            yield top, "does not exist"


def ingest_paths(
    station: Station, paths: list[Path], binding: Binding
) -> Iterator[IngestResult | tuple[Path, EvidockError]]:
    """Ingest every file under ``paths``; yields results and per-file errors in order."""
    for path, refused in walk(paths):
        if refused is not None:
            yield path, DeviceError(f"{path}: {refused}")
            continue
        try:
            yield ingest_file(station, path, binding)
        except EvidockError as e:
            log.warning("%s", e)
            yield path, e
