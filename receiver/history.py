"""Holding a station to its history: what both receipt paths do when a station contradicts it.

A refusal is a statement, not state: it is written once per (station, kind,
checkpoint note) to the append-only ``refusals`` table and logged at ERROR,
whichever path saw it: ``evidock receive`` judging an init's checkpoint and
consistency proof (``receiver.service``), or the EMQX receipt service judging
a ledger mirror message (``receiver.mirror``, ``receiver.exports``).
"""

from __future__ import annotations

import hashlib
import logging

from receiver._db import ReceiverDB
from receiver._keys import utc_now

log = logging.getLogger(__name__)


def record_refusal(db: ReceiverDB, station: str, kind: str, detail: str, note: str) -> bool:
    """Record and log a refused checkpoint (a fork, a rollback, ...); True if it is new.

    ``note`` is the checkpoint note as the station sent it, kept byte for byte
    as the evidence of what was refused. Commits before it returns.
    """
    digest = hashlib.sha256(note.encode()).hexdigest()
    with db.tx():
        new = db.refuse(station, kind, detail, note, digest, utc_now())
    log.error(
        "station %s: REFUSED checkpoint (%s%s): %s",
        station,
        kind,
        "" if new else ", again",
        detail,
    )
    return new
