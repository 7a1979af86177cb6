"""The platform's receipt key and clock, shared by both receipt paths.

``evidock receive`` on mosquitto (``receiver.service``) and the EMQX receipt
service (``receiver.exports``) sign receipts with the same key, kept in the
same place, read the same way: one function, so the two can never disagree on
where the key lives or how strictly its file mode is checked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from hashing._fsutil import FILE_MODE, make_private_dir, write_atomic
from hashing.errors import ConfigError, InputError
from hashing.note import NoteSigner

log = logging.getLogger(__name__)

KEY_FILE = "receipt.key"


def utc_now() -> str:
    """Now, RFC 3339 UTC to the second: a receipt's ``stored_at`` and every record's time."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_signer(folder: Path, name: str) -> NoteSigner:
    """The platform's receipt key: created once (0600 in a 0700 folder), then only read.

    Raises ConfigError when the key file cannot be read, is readable by
    others, or does not hold a signed-note private key.
    """
    make_private_dir(folder)
    path = folder / KEY_FILE
    if not path.exists():
        signer = NoteSigner.generate(name)
        write_atomic(path, signer.private_text().encode(), FILE_MODE)
        log.warning("created the platform receipt key %s in %s", signer.verifier.vkey, path)
        return signer
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the receipt key: {e}") from e
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
    try:
        return NoteSigner.parse(text)
    except InputError as e:
        raise ConfigError(f"{path}: {e}") from e
