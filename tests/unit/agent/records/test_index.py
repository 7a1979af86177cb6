"""The ledger's side tables (agent.records.index): the one module of agent/ that
holds SQL on ledger.db (style.md 5), and rows that are derived from entries,
never a second truth.

The first tests read agent/'s source with ``ast``: any string constant (or
f-string, or implicit concatenation) that reads like SQL naming a table of
ledger.db fails them unless it is in agent/records/index.py. agent/users/accounts.py
keeps the SQL of its own database (users.db: users, sessions, failed_logins,
meta), which names none of these tables, so it is scanned like every other module.
The rest run the index's functions on a real station in a temporary folder.
"""

from __future__ import annotations

import ast
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from agent.offload.ingest import Binding, Source, ingest_file
from agent.records import index
from agent.records import registry as records
from hashing.digest import digest_file
from hashing.entries import Entry
from hashing.ledger import LedgerTx
from hashing.station import Station

ROOT = Path(__file__).resolve().parents[4]
AGENT = ROOT / "agent"
INDEX = AGENT / "records" / "index.py"

# ledger.db's tables: the side tables, and the ledger's own (entries, nodes,
# checkpoints; its ``meta`` is left out: users.db has a ``meta`` table too).
LEDGER_TABLES = (
    "files",
    "sources",
    "devices",
    "tags",
    "anomalies",
    "wipes",
    "entries",
    "nodes",
    "checkpoints",
)
_TABLE = "|".join(LEDGER_TABLES)
_VERB = r"\b(?:SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|WITH)\b"
_CLAUSE = rf"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|ON|EXISTS)\s+(?:{_TABLE})\b"
# SQL as the project writes it (keywords in capitals), or in lower case with a
# placeholder or a comparison, which prose ("select ... from files") has not.
_UPPER = (re.compile(_VERB), re.compile(_CLAUSE))
_LOWER = (
    re.compile(_VERB, re.IGNORECASE),
    re.compile(_CLAUSE, re.IGNORECASE),
    re.compile(r"\?|\s=\s|\bwhere\b", re.IGNORECASE),
)


def _looks_like_sql(text: str) -> bool:
    return all(p.search(text) for p in _UPPER) or all(p.search(text) for p in _LOWER)


def _texts(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string in the tree; an f-string's parts joined (with
    ``?`` for each formatted value), so a statement built around one is seen whole."""
    inside = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "?" for v in node.values]
            yield node.lineno, "".join(str(p) for p in parts)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in inside
        ):
            yield node.lineno, node.value


def sql_on_ledger_tables(source: str) -> list[tuple[int, str]]:
    """(line, text) of the strings in ``source`` that read like SQL on ledger.db's tables."""
    return sorted(
        {(line, text) for line, text in _texts(ast.parse(source)) if _looks_like_sql(text)}
    )


def test_the_scanner_sees_sql_in_every_shape() -> None:
    source = """
a = "SELECT seq FROM files WHERE sha256 = ?"
b = ("INSERT INTO tags (seq, sha256)"
     " VALUES (?, ?)")
c = f"SELECT count(*) FROM files f{where}"
d = f"SELECT x FROM t WHERE y IN ({marks})" " AND NOT EXISTS (SELECT 1 FROM wipes w)"
e = "select data from entries where seq = ?"
f = "NOT EXISTS (SELECT 1 FROM tags t WHERE t.sha256 = f.sha256)"
g = "UPDATE devices SET officer = ?"
"""
    assert [line for line, _ in sql_on_ledger_tables(source)] == [2, 3, 5, 6, 7, 8, 9]
    prose = '''
"""Read the recordings from files on the camera; select which to tag."""
h = "SELECT state, count(*) FROM transfers GROUP BY state"
i = "SELECT name FROM users WHERE name = ?"
j = "INSERT INTO meta (key, value) VALUES ('ledger_seq', ?)"
'''
    assert sql_on_ledger_tables(prose) == []


def test_the_index_is_where_the_sql_is() -> None:
    """The scanner is not blind: it finds the index's own statements."""
    assert len(sql_on_ledger_tables(INDEX.read_text(encoding="utf-8"))) >= 30


def test_no_module_of_agent_but_the_index_holds_sql_on_ledger_tables() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text.strip()[:70]!r}"
        for path in sorted(AGENT.rglob("*.py"))
        if path != INDEX
        for line, text in sql_on_ledger_tables(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        "SQL on ledger.db belongs in agent/records/index.py (style.md 5); "
        "call a function of it instead:\n" + "\n".join(offenders)
    )


# -- the index's functions on a real station ------------------------------------------------


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    s = Station.init(tmp_path / "home", "dock-01")
    index.ensure(s)
    yield s
    s.close()


def _clip(folder: Path, name: str, data: bytes, mtime: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


DAY1 = 1_772_409_600  # 2026-03-02T00:00:00Z
DAY2 = DAY1 + 86400


@pytest.fixture
def docked(station: Station, tmp_path: Path) -> dict[str, str]:
    """Three recordings (two of ZFY1 on day 1 and 2, one of ZFY2), a device, a tag,
    an anomaly and a wipe, all through the agent's own functions."""
    src = tmp_path / "src"
    one = Binding(officer="o-1", device="ZFY1")
    shas = {
        "a": ingest_file(station, _clip(src, "A.MP4", b"a" * 3000, DAY1 + 60), one).sha256,
        "b": ingest_file(station, _clip(src, "B.MP4", b"b" * 5000, DAY2 + 60), one).sha256,
        "c": ingest_file(
            station, _clip(src, "C.MP4", b"c" * 7000, DAY1 + 120), Binding("o-2", "ZFY2")
        ).sha256,
    }
    records.assign_device(station, "ZFY1", "o-1", model="DSJ-1")
    records.tag(station, [shas["a"]], case="A-1", kind="inspection")
    records.record_anomaly(
        station,
        {"kind": "time_gap", "detail": "a gap", "device": "ZFY1", "files": [shas["b"]]},
    )
    records.record_wipe(
        station, {"sha256": shas["a"], "device": "ZFY1", "source_path": str(src / "A.MP4")}
    )
    return shas


def test_files_and_sources(station: Station, docked: dict[str, str], tmp_path: Path) -> None:
    a, b, c = docked["a"], docked["b"], docked["c"]
    db = station.ledger
    seq_a = index.file_seq(db, a)
    assert seq_a is not None and station.ledger.entry(seq_a).body["sha256"] == a
    assert index.file_seq(db, "0" * 64) is None
    assert index.known_files(db, [a, "0" * 64, c]) == {a, c}
    assert index.file_officers(db, [a, c, "0" * 64]) == {a: "o-1", c: "o-2"}
    assert index.file_owner(db, b) == (True, "o-1")
    assert index.file_owner(db, "0" * 64) == (False, None)
    assert sorted(index.file_sizes(db)) == sorted([(a, 3000), (b, 5000), (c, 7000)])
    assert index.recorded_times(db) == {
        a: "2026-03-02T00:01:00.000000Z",
        b: "2026-03-03T00:01:00.000000Z",
        c: "2026-03-02T00:02:00.000000Z",
    }
    assert [s for s, _ in index.device_recorded_times(db, "ZFY1")] == [a, b]
    assert index.device_digests(db, "ZFY1") == [a, b]
    assert index.unwiped_digests(db, "ZFY1") == [b]
    officers, devices = index.recording_origins(db)
    assert (sorted(officers), sorted(devices)) == (["o-1", "o-2"], ["ZFY1", "ZFY2"])
    path = tmp_path / "src" / "A.MP4"
    key = Source("ZFY1", os.fsencode(path.absolute()), 3000, path.stat().st_mtime_ns).key
    source_a = index.source_ingest(db, key)
    assert source_a == (a, seq_a)
    assert index.source_ingest(db, "no such source") is None
    entry = index.file_entry(db, b)
    assert entry is not None and (entry.sha256, entry.size, entry.device) == (b, 5000, "ZFY1")
    assert Entry.parse(entry.data).body["name"] == "B.MP4"
    assert index.file_entry(db, "0" * 64) is None


def test_file_queries_page_the_list(station: Station, docked: dict[str, str]) -> None:
    a, b, c = docked["a"], docked["b"], docked["c"]
    db = station.ledger
    everything = index.FileQuery()
    assert everything.where() == ("", [])
    assert index.count_files(db, everything) == 3
    assert [f.sha256 for f in index.files_page(db, everything, 2, 0)] == [b, c]
    assert [f.sha256 for f in index.files_page(db, everything, 2, 2)] == [a]
    day1 = index.FileQuery(recorded=("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"))
    assert [f.sha256 for f in index.files_page(db, day1, 30, 0)] == [c, a]
    mine = index.FileQuery(officers=("o-1",), device="ZFY1", untagged=True)
    assert (index.count_files(db, mine), [f.sha256 for f in index.files_page(db, mine, 30, 0)]) == (
        1,
        [b],
    )
    # A role held to its own officer and a form asking for another: both must hold.
    assert index.count_files(db, index.FileQuery(officers=("o-1", "o-2"))) == 0


def test_devices_tags_anomalies_wipes(station: Station, docked: dict[str, str]) -> None:
    a, b = docked["a"], docked["b"]
    db = station.ledger
    (dev,) = index.devices(db)
    assert (dev.serial, dev.officer, dev.model) == ("ZFY1", "o-1", "DSJ-1")
    assert index.device(db, "ZFY1") == dev and index.device(db, "ZFY9") is None
    records.assign_device(station, "ZFY1", "o-3")  # a new entry; the row follows it
    again = index.device(db, "ZFY1")
    assert again is not None and (again.officer, again.model) == ("o-3", None)
    assert again.seq > dev.seq
    (tag,) = index.tags_of(db, a)
    assert (tag.case, tag.kind, tag.retention) == ("A-1", "inspection", "routine")
    assert index.tags_of_files(db, [a, b]) == {a: [tag]}
    assert index.tags_of_files(db, []) == {}
    assert index.tagged_cases(db, a) == {"A-1"} and index.tagged_cases(db, b) == set()
    (anomaly,) = index.device_anomalies(db, "ZFY1")
    assert (anomaly.kind, anomaly.detail, anomaly.files()) == ("time_gap", "a gap", [b])
    assert index.anomaly_seqs(db, "ZFY1") == [anomaly.seq]
    assert index.anomaly_kind(db, "ZFY1", "a gap") == "time_gap"
    assert index.anomaly_kind(db, "ZFY1", "other words") is None
    assert index.device_anomalies(db, None) == []
    (wipe,) = index.wipe_seqs(db, a)
    assert station.ledger.entry(wipe).type == records.WIPE
    assert index.wipe_seqs(db, b) == []


def test_every_reader_gives_the_same_answer(station: Station, docked: dict[str, str]) -> None:
    """The station's ledger, a write transaction and a read-only connection of one's own."""
    a = docked["a"]
    uri = f"file:{quote(str(station.ledger.path))}?mode=ro"
    own = sqlite3.connect(uri, uri=True)
    try:
        with station.ledger.transaction() as tx:
            in_tx = (index.tags_of(tx, a), index.file_seq(tx, a), index.entry_row(tx, 0))
        assert (index.tags_of(own, a), index.file_seq(own, a), index.entry_row(own, 0)) == in_tx
        assert (
            index.tags_of(station.ledger, a),
            index.file_seq(station.ledger, a),
            index.entry_row(station.ledger, 0),
        ) == in_tx
    finally:
        own.close()


def test_reads_of_the_entries(station: Station, docked: dict[str, str]) -> None:
    a, b = docked["a"], docked["b"]
    db = station.ledger
    purge = station.ledger.append("purge", {"sha256": a})
    scrub = station.ledger.append("scrub", {"failures": [], "ledger": "ok"})
    assert index.purges_of(db, a) == [purge.seq] and index.purges_of(db, b) == []
    assert index.purges_naming(db, [a, b]) == [(purge.seq, a)]
    assert index.purges_after(db, purge.seq - 1) == [(purge.seq, purge.raw)]
    assert index.purges_after(db, purge.seq) == []
    assert index.latest_scrub(db) == (scrub.seq, scrub.raw)
    assert index.entry_row(db, purge.seq) == ("purge", purge.raw)
    assert index.entry_row(db, 10_000) is None
    ingests = [e.seq for e in station.ledger.entries_of_type("ingest")]
    assert [e.seq for e in index.entries_of_types(db, ("ingest", "purge"))] == [
        *ingests,
        purge.seq,
    ]
    assert [s for s, _ in index.entries_after(db, ("ingest",), ingests[0], 1)] == [ingests[1]]
    assert [r[0] for r in index.entries_from(db, ingests[1], ("ingest", "scrub"), 10)] == [
        *ingests[1:],
        scrub.seq,
    ]
    assert [r[0] for r in index.entries_about(db, a, ("scrub",), ("ingest", "purge"))] == [
        ingests[0],
        purge.seq,
        scrub.seq,
    ]
    assert [r[0] for r in index.latest_entries(db, "ingest", 2)] == ingests[:0:-1]
    assert index.entry_of_type(db, purge.seq, "purge") == (purge.seq, "purge", purge.raw)
    assert index.entry_of_type(db, purge.seq, "ingest") is None


_DERIVED = ("files", "devices", "tags", "anomalies", "wipes")


def _table(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return sorted(conn.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608 - fixed names


def _rebuild(tx: LedgerTx, station: Station, entry: Entry) -> None:
    if entry.type == "ingest":
        digest = digest_file(station.store.path_for(str(entry.body["sha256"])))
        index.index_file(tx, entry, b"".join(digest.chunk_hashes))
    elif entry.type == records.DEVICE_ASSIGN:
        index.index_device_assign(tx, entry)
    elif entry.type == records.TAG:
        index.index_tag(tx, entry)
    elif entry.type == records.ANOMALY:
        index.index_anomaly(tx, entry)
    elif entry.type == records.WIPE:
        index.index_wipe(tx, entry)


def test_the_side_tables_are_rebuilt_from_the_entries(
    station: Station, docked: dict[str, str]
) -> None:
    """Never a second truth: emptied, every table comes back the same from the entries
    alone (``files.chunks`` from the stored files, which ``chunk_root`` vouches for).
    ``sources`` is a cache of sources already seen; it is dropped, not rebuilt."""
    records.assign_device(station, "ZFY1", "o-3")
    entries = [Entry.parse(raw) for _, raw in station.ledger.raw_entries()]
    with station.ledger.transaction() as tx:
        before = {t: _table(tx.conn, t) for t in _DERIVED}
        for table in ("sources", *_DERIVED):
            tx.conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        for entry in entries:
            _rebuild(tx, station, entry)
        after = {t: _table(tx.conn, t) for t in _DERIVED}
    assert all(before[t] for t in _DERIVED)
    assert after == before
