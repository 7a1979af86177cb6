"""The station's signing key on disk, and which key was valid when.

The private key lives in ``keys/station.key`` (0600, folder 0700) in Go's note
signer-key encoding. A rotation is a ``key_rotation`` ledger entry naming the
old and the new verifier key and signed by both over a statement bound to the
station and the entry's position (entries.rotation_statement): the old key
vouches for its successor and the new key proves possession. From the entry
on, checkpoints are signed by the new key; the old private key is destroyed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hashing._fsutil import FILE_MODE, fsync_dir, make_private_dir, write_atomic
from hashing.checkpoint import CheckpointSigner
from hashing.entries import GENESIS, KEY_ROTATION, Entry, rotation_statement
from hashing.errors import ConfigError, InputError, SignatureError
from hashing.note import NoteSigner, NoteVerifier

log = logging.getLogger(__name__)

KEY_FILE = "station.key"
STATE_FILE = "signer-state.json"


class KeyStore:
    """The ``keys/`` folder of a station."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def key_path(self) -> Path:
        """``station.key``: the private key in Go's note signer-key encoding."""
        return self.folder / KEY_FILE

    def create(self, name: str) -> NoteSigner:
        """Generate the station key, named ``name``, and write it 0600 in a 0700 folder.

        Raises ConfigError if a key is already there: a new key without a
        ``key_rotation`` entry would break the key history verifiers follow (rotate
        instead). Raises InputError if ``name`` is not a valid key name.
        """
        make_private_dir(self.folder)
        if self.key_path.exists():
            raise ConfigError(f"{self.key_path} exists; refusing to replace a station key")
        signer = NoteSigner.generate(name)
        write_atomic(self.key_path, signer.private_text().encode(), FILE_MODE)
        return signer

    def load(self) -> NoteSigner:
        """Read the station's private key.

        Raises ConfigError if it cannot be read or if group or others may read it (a
        key others can read may have been copied), InputError if the file does not
        hold a signer key.
        """
        try:
            mode = self.key_path.stat().st_mode & 0o777
            text = self.key_path.read_text()
        except OSError as e:
            raise ConfigError(f"{self.key_path}: cannot read the station key: {e}") from e
        if mode & 0o077:
            raise ConfigError(
                f"{self.key_path} is readable by others (mode {mode:o}); run chmod 600 on it"
            )
        return NoteSigner.parse(text)

    def checkpoint_signer(self, origin: str) -> CheckpointSigner:
        """A CheckpointSigner with the station key and its record of what it last signed.

        The record (``signer-state.json``) sits beside the key so that replacing the
        ledger with an older copy cannot make the key sign a rollback. Raises what
        ``load`` raises.
        """
        return CheckpointSigner(self.load(), origin, self.folder / STATE_FILE)

    def replace(self, new: NoteSigner) -> None:
        """Install the new key and destroy the old one (after its rotation entry committed).

        The new key replaces the file atomically; only then are the old key's
        bytes overwritten, through a descriptor opened before the swap. A crash
        at any point leaves ``station.key`` holding either the old or the new
        key, never a torn or blank one.
        """
        try:
            old = os.open(self.key_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            old = -1
        try:
            write_atomic(self.key_path, new.private_text().encode(), FILE_MODE)
            if old >= 0:
                size = os.fstat(old).st_size
                os.pwrite(old, b"\0" * size, 0)
                os.fsync(old)
        finally:
            if old >= 0:
                os.close(old)
        fsync_dir(self.folder)
        log.info("station key replaced by %s", new.verifier.vkey)


def rotation_body(station: str, seq: int, old: NoteSigner, new: NoteSigner) -> dict[str, str]:
    """The body of a ``key_rotation`` entry at ``seq``, from ``old`` to ``new``.

    Both keys sign entries.rotation_statement: the old key vouches for its
    successor, the new key proves possession.
    """
    statement = rotation_statement(station, seq, old.verifier.vkey, new.verifier.vkey)
    return {
        "old_key": old.verifier.vkey,
        "new_key": new.verifier.vkey,
        "old_sig": base64.b64encode(old.sign(statement)).decode(),
        "new_sig": base64.b64encode(new.sign(statement)).decode(),
    }


@dataclass(frozen=True)
class KeyEpoch:
    """``key`` signs checkpoints of every size from ``from_size`` until the next epoch."""

    key: NoteVerifier
    from_size: int
    seq: int  # the genesis or key_rotation entry that introduced it


class KeyHistory:
    """Which verifier key was valid for which tree sizes, from the key entries."""

    def __init__(self, epochs: list[KeyEpoch]) -> None:
        if not epochs:
            raise InputError("no key history: the genesis entry is missing")
        self.epochs = epochs

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> KeyHistory:
        """Build from the genesis and key_rotation entries, in seq order.

        Raises InputError if the history is malformed, SignatureError if a
        rotation is not signed by both its keys.
        """
        epochs: list[KeyEpoch] = []
        for entry in entries:
            if entry.type == GENESIS:
                if entry.seq != 0 or epochs:
                    raise InputError(f"entry {entry.seq}: genesis must be entry 0 and unique")
                epochs.append(KeyEpoch(_verifier(entry, "key"), 0, 0))
            elif entry.type == KEY_ROTATION:
                if not epochs:
                    raise InputError(f"entry {entry.seq}: key rotation before genesis")
                old, new = _verifier(entry, "old_key"), _verifier(entry, "new_key")
                if old != epochs[-1].key:
                    raise SignatureError(
                        f"entry {entry.seq}: rotation from {old.vkey}, but the key in force "
                        f"is {epochs[-1].key.vkey}"
                    )
                statement = rotation_statement(entry.station, entry.seq, old.vkey, new.vkey)
                for who, verifier in (("old", old), ("new", new)):
                    if not verifier.verify(statement, _b64(entry, f"{who}_sig")):
                        raise SignatureError(
                            f"entry {entry.seq}: key rotation not signed by the {who} key"
                        )
                epochs.append(KeyEpoch(new, entry.seq + 1, entry.seq))
        return cls(epochs)

    def key_for_size(self, size: int) -> NoteVerifier:
        """The key signing checkpoints of size ``size``: the last epoch starting at or below it."""
        key = self.epochs[0].key
        for epoch in self.epochs:
            if epoch.from_size <= size:
                key = epoch.key
        return key

    def keys(self) -> list[NoteVerifier]:
        """Every key the station has had, oldest first: what any of its checkpoints opens with."""
        return [e.key for e in self.epochs]

    def epoch_of(self, key: NoteVerifier) -> KeyEpoch | None:
        """The epoch in which ``key`` was in force, or None if the station never had it."""
        return next((e for e in self.epochs if e.key == key), None)


def _verifier(entry: Entry, field: str) -> NoteVerifier:
    value = entry.body.get(field)
    if not isinstance(value, str):
        raise InputError(f"entry {entry.seq}: {field} is missing")
    return NoteVerifier.parse(value)


def _b64(entry: Entry, field: str) -> bytes:
    value = entry.body.get(field)
    if not isinstance(value, str):
        raise InputError(f"entry {entry.seq}: {field} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"entry {entry.seq}: {field} is not base64") from e
