"""A station's state folder (design.md "State on disk") and the operations
that need more than one of its parts: creating it, signing checkpoints,
rotating the key.

    EVIDOCK_HOME/ledger.db   entries, tree, checkpoints, file index (SQLite, WAL)
    EVIDOCK_HOME/store/      content-addressed recordings, 0400
    EVIDOCK_HOME/staging/    copies in progress
    EVIDOCK_HOME/keys/       station.key (0600), signer-state.json
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hashing._fsutil import make_private_dir, write_atomic
from hashing.checkpoint import SignedCheckpoint, default_origin
from hashing.entries import GENESIS, KEY_ROTATION, Entry, check_station_id
from hashing.errors import ConfigError, EvidockError
from hashing.keys import KeyHistory, KeyStore, rotation_body
from hashing.ledger import Ledger
from hashing.note import NoteSigner, check_key_name
from hashing.store import Store

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("/var/lib/evidock")


def software_version() -> str:
    """``evidock <version>``, for the genesis entry: an auditor learns what started the ledger."""
    try:
        return f"evidock {version('evidock')}"
    except PackageNotFoundError:
        return "evidock (source tree)"


@dataclass(eq=False)  # identity, not value: one open station is one object
class Station:
    """An open station: its state folder and the ledger, key store and store in it.

    Made by ``init`` (a new station) or ``open`` (an existing one); ``close`` it
    when done.
    """

    home: Path
    ledger: Ledger
    keys: KeyStore
    store: Store

    @property
    def station_id(self) -> str:
        """The station id the ledger was created with."""
        return self.ledger.station

    @property
    def origin(self) -> str:
        """The checkpoint origin, which is also the station key's name."""
        return self.ledger.origin

    @staticmethod
    def _parts(home: Path) -> tuple[Path, KeyStore, Store]:
        return home / "ledger.db", KeyStore(home / "keys"), Store(home / "store", home / "staging")

    @classmethod
    def init(cls, home: Path, station_id: str, origin: str | None = None) -> Station:
        """Create a station: folders, key, ledger with its genesis entry, first checkpoint."""
        check_station_id(station_id)
        origin = origin or default_origin(station_id)
        check_key_name(origin)
        db_path, keys, store = cls._parts(home)
        if db_path.exists():
            raise ConfigError(f"{home} already holds a station; refusing to create another")
        os.umask(0o077)
        make_private_dir(home)
        store.ensure()
        signer = keys.create(origin)
        ledger = Ledger.create(db_path, station=station_id, origin=origin)
        ledger.append(
            GENESIS, {"origin": origin, "key": signer.verifier.vkey, "software": software_version()}
        )
        station = cls(home, ledger, keys, store)
        station.checkpoint()
        return station

    @classmethod
    def open(cls, home: Path) -> Station:
        """Open an existing station and finish what a crash left undone.

        Migrates the ledger, completes or discards an interrupted key rotation, and
        removes partial copies left by processes that are gone. Raises ConfigError
        if ``home`` holds no station, and what the ledger and key store raise.
        """
        db_path, keys, store = cls._parts(home)
        if not db_path.exists():
            raise ConfigError(
                f"{home}: no station here; create one with `evidock init --station-id ID`"
            )
        os.umask(0o077)
        ledger = Ledger(db_path)
        ledger.migrate()
        station = cls(home, ledger, keys, store)
        station._finish_rotation(interrupted=True)
        for part in store.clean_stale_staging():
            log.warning("removed a partial copy left by a stopped process: %s", part.name)
        return station

    def _finish_rotation(self, *, interrupted: bool = False) -> None:
        """Swap in the staged key once its rotation entry is in the ledger.

        On open, this completes a rotation interrupted between its entry and
        the key swap, or discards a staged key whose entry never committed.
        """
        staged = self.keys.folder / "station.key.next"
        if not staged.exists():
            return
        pending = NoteSigner.parse(staged.read_text())
        if self.key_history().epochs[-1].key == pending.verifier:
            try:
                current = self.keys.load().verifier
            except EvidockError:
                current = None  # unreadable: the staged key is the one in force anyway
            if current != pending.verifier:
                self.keys.replace(pending)
            if interrupted:
                log.warning("completed an interrupted key rotation")
        else:
            log.warning("discarding a key rotation that never committed")
        staged.unlink()

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()

    def key_history(self) -> KeyHistory:
        """Which key signed which tree sizes, from the genesis and key_rotation entries.

        Raises InputError if that history is malformed, SignatureError if a rotation
        is not signed by both its keys.
        """
        genesis = [self.ledger.entry(0)] if self.ledger.size() else []
        return KeyHistory.from_entries([*genesis, *self.ledger.entries_of_type(KEY_ROTATION)])

    def checkpoint(self) -> SignedCheckpoint:
        """Sign the tree head if the log grew; return the latest signed checkpoint."""
        return self.ledger.sign_checkpoint(self.keys.checkpoint_signer(self.origin))

    def rotate_key(self) -> Entry:
        """Replace the station key: rotation entry signed by both keys, then a checkpoint
        signed by the new key. The old private key is destroyed."""
        old = self.keys.load()
        new = NoteSigner.generate(self.origin)
        staged = self.keys.folder / "station.key.next"
        # The new key is on disk before the entry commits, so a crash between
        # the two cannot leave a rotation whose key is lost (see _finish_rotation).
        write_atomic(staged, new.private_text().encode())
        with self.ledger.transaction() as tx:
            entry = tx.append(KEY_ROTATION, rotation_body(self.station_id, tx.size, old, new))
        self._finish_rotation()
        self.checkpoint()
        log.info("key rotated at entry %d", entry.seq)
        return entry
