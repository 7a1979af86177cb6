"""State tables of the dock (agent/), beside the ledger's own in ledger.db.

Each row here is written in the same transaction as the ledger entry that
records it (hashing.ledger.LedgerTx), so the tables are an index of the ledger,
never a second truth: everything in them can be rebuilt from the entries.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from hashing.station import Station

migrations = Migrations("evidock.agent")


@migrations()
def m001_records(db: Database) -> None:
    for sql in (
        # device registry: serial -> officer (entry type device_assign)
        "CREATE TABLE devices (serial TEXT PRIMARY KEY, officer TEXT, model TEXT,"
        " notes TEXT, seq INTEGER NOT NULL)",
        # tags: a re-tag is a new row and a new entry, never an update
        "CREATE TABLE tags (seq INTEGER NOT NULL, sha256 TEXT NOT NULL, case_id TEXT NOT NULL,"
        " kind TEXT NOT NULL, retention TEXT NOT NULL, reason TEXT, PRIMARY KEY (seq, sha256))",
        "CREATE INDEX tags_sha256 ON tags (sha256, seq)",
        "CREATE TABLE anomalies (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, device TEXT,"
        " officer TEXT, detail TEXT NOT NULL, files TEXT NOT NULL)",
        "CREATE INDEX anomalies_device ON anomalies (device, seq)",
        "CREATE TABLE wipes (seq INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, device TEXT,"
        " source_path TEXT NOT NULL)",
    ):
        db.execute(sql)


def ensure(station: Station) -> None:
    """Apply the agent's migrations to the station's database."""
    station.ledger.apply_migrations(migrations)
