"""The content-addressed store: ``store/ab/cd/<sha256>`` (design.md step 4).

Files enter only by ``adopt``: a fully written, fsynced and re-read staging
file is renamed into place and the folders fsynced; or by ``link``, the same
for a file that keeps its other name until its owner drops it (the platform
receiver's spool). Stored files are 0400; the
store has no delete operation (retention purges, a later part, are ledger
entries first). Adopting a digest that is already stored keeps the stored copy
and discards the new one, so re-docking never duplicates a recording.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from hashing._fsutil import fsync_dir, make_private_dir, pid_alive
from hashing.errors import DigestMismatchError, InputError

STORED_MODE = 0o400
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Store:
    """The content-addressed store ``root`` and its ``staging`` folder for copies in progress."""

    def __init__(self, root: Path, staging: Path) -> None:
        self.root = root
        self.staging = staging

    def ensure(self) -> None:
        """Create the store and staging folders (0700) if they are missing."""
        make_private_dir(self.root)
        make_private_dir(self.staging)

    def path_for(self, sha256_hex: str) -> Path:
        """Where the file with this digest is stored: ``ab/cd/<sha256>``.

        Raises InputError unless ``sha256_hex`` is 64 lowercase hex digits, so no
        name from outside can reach a path outside the store.
        """
        if not _HEX64.fullmatch(sha256_hex):
            raise InputError(f"{sha256_hex!r} is not a SHA-256 hex digest")
        return self.root / sha256_hex[:2] / sha256_hex[2:4] / sha256_hex

    def has(self, sha256_hex: str) -> bool:
        """Whether a file is stored under this digest, by name (the audit checks the bytes)."""
        return self.path_for(sha256_hex).is_file()

    def new_staging_path(self) -> Path:
        """A fresh staging name carrying the writer's pid, so stale copies can be told apart."""
        return self.staging / f"{os.getpid()}.{secrets.token_hex(12)}.part"

    def clean_stale_staging(self) -> list[Path]:
        """Remove partial copies left by processes that no longer run (a crash, a power cut).

        A partial copy was never recorded as done, so removing it loses nothing:
        its recording is still on the recorder and is copied again. Returns what
        was removed, for the log.
        """
        removed = []
        for part in self.staging.glob("*.part"):
            pid_text = part.name.split(".", 1)[0]
            if pid_text.isdigit() and pid_alive(int(pid_text)):
                continue
            part.unlink(missing_ok=True)
            removed.append(part)
        return removed

    def _place(self, sha256_hex: str, size: int) -> tuple[Path, bool]:
        """The stored path for a digest and whether a file is already there; its
        folders are made (and made durable) if it is not. Raises DigestMismatchError
        if the file there has another size (the store was tampered with)."""
        target = self.path_for(sha256_hex)
        if target.exists():
            if target.stat().st_size != size:
                raise DigestMismatchError(
                    f"{target} has {target.stat().st_size} bytes but its name says {size}: "
                    "the store was altered; run `evidock ledger verify`"
                )
            return target, True
        for folder in (target.parent.parent, target.parent):
            if not folder.is_dir():
                make_private_dir(folder)
                fsync_dir(folder.parent)
        return target, False

    def adopt(self, staged: Path, sha256_hex: str, size: int) -> Path:
        """Move a verified staging file into the store; returns the stored path.

        Raises DigestMismatchError if a file already stored under this digest
        has another size (the store was tampered with; nothing is replaced).
        """
        target, present = self._place(sha256_hex, size)
        if present:
            staged.unlink()
            return target
        os.chmod(staged, STORED_MODE)
        os.rename(staged, target)
        fsync_dir(target.parent)
        fsync_dir(self.staging)
        return target

    def link(self, source: Path, sha256_hex: str, size: int) -> Path:
        """Hard-link a verified file into the store; returns the stored path.

        ``adopt`` without giving up ``source``: until its owner has recorded the
        file as stored, a crash leaves ``source`` where it was, so the work that
        produced it need not be done again; the owner removes ``source`` after.
        ``source`` (the same inode) becomes 0400 too. Raises DigestMismatchError
        as ``adopt`` does, and OSError from a filesystem without hard links.
        """
        target, present = self._place(sha256_hex, size)
        if present:
            return target
        os.chmod(source, STORED_MODE)
        os.link(source, target)
        fsync_dir(target.parent)
        return target

    def stored(self) -> list[str]:
        """Every digest present in the store (for audits: files no entry covers)."""
        return sorted(p.name for p in self.root.glob("??/??/*") if _HEX64.fullmatch(p.name))
