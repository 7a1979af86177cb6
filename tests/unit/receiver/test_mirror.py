"""The ledger mirror's pure core (receiver.mirror): bytes and values in, decisions out.

A real station (``Station.init``: its key, its ledger, its signed checkpoints)
shows that a mirror of a real ledger is accepted however it is cut into
messages; a hand-built log (entries made with ``build_entry``, checkpoints
signed with a fresh key) makes the hostile cases: a rewritten entry, a
truncated-then-regrown ledger, a wrong root, another station's entries, a
gap, a rollback.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashing.checkpoint import Checkpoint
from hashing.entries import INGEST, Entry, build_entry
from hashing.errors import InputError
from hashing.merkle import leaf_hash, root_of
from hashing.note import NoteSigner, sign_note
from hashing.station import Station
from receiver.mirror import (
    Extend,
    Ignore,
    MemoryMirror,
    MirrorMessage,
    Refuse,
    Stale,
    judge,
)
from uploader.protocol import MIRROR_MAX_ENTRIES as MAX_ENTRIES

STATION = "dock-01"
TIME = "2026-01-01T00:00:00.000000Z"


@dataclass
class Log:
    """A station's log built by hand: entries, and checkpoints signed with its key."""

    station: str = STATION
    signer: NoteSigner = field(default_factory=lambda: NoteSigner.generate(f"evidock/{STATION}"))
    entries: list[bytes] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"evidock/{STATION}"

    def add(self, n: int = 1, *, station: str | None = None, tag: str = "") -> None:
        for _ in range(n):
            seq = len(self.entries)
            prev = hashlib.sha256(self.entries[-1]).hexdigest() if self.entries else None
            sha = hashlib.sha256(f"{tag}{seq}".encode()).hexdigest()
            e = build_entry(
                seq=seq,
                kind=INGEST,
                station=station or self.station,
                prev=prev,
                body={"sha256": sha, "size": seq},
                time=TIME,
                clock="system/ntp",
            )
            self.entries.append(e.raw)

    def root(self, size: int | None = None) -> bytes:
        size = len(self.entries) if size is None else size
        return root_of([leaf_hash(e) for e in self.entries[:size]])

    def note(self, size: int | None = None, root: bytes | None = None) -> str:
        size = len(self.entries) if size is None else size
        cp = Checkpoint(self.origin, size, self.root(size) if root is None else root)
        return sign_note(cp.body(), [self.signer])

    def message(self, start: int, end: int | None = None) -> MirrorMessage:
        end = len(self.entries) if end is None else end
        return MirrorMessage(start, tuple(self.entries[start:end]), self.note(end))

    def fork(self, keep: int) -> Log:
        """The same station and key with only the first ``keep`` entries (then regrown)."""
        return Log(self.station, self.signer, list(self.entries[:keep]))


def apply(view: MemoryMirror, log: Log, msg: MirrorMessage) -> MemoryMirror:
    d = judge(log.station, [log.signer.verifier], view, msg)
    assert isinstance(d, Extend), d
    return view.applied(d)


def mirrored(log: Log, size: int) -> MemoryMirror:
    view = MemoryMirror()
    return apply(view, log, log.message(0, size))


# -- a real ledger --------------------------------------------------------------------


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    s = Station.init(tmp_path / "dock", STATION)
    yield s
    s.close()


def test_a_mirror_of_a_real_ledger_is_accepted_in_any_cut(station: Station) -> None:
    key = station.keys.load().verifier
    view = MemoryMirror()
    for grow in (0, 1, 5, 1, 9):  # the genesis entry alone, then cuts across subtree edges
        for i in range(grow):
            sha = hashlib.sha256(f"{view.size}/{i}".encode()).hexdigest()
            station.ledger.append(INGEST, {"sha256": sha, "size": i})
        note = station.checkpoint().note
        raw = [r for _, r in station.ledger.raw_entries()]
        msg = MirrorMessage(view.size, tuple(raw[view.size :]), note)
        d = judge(STATION, [key], view, msg)
        assert isinstance(d, Extend), d
        assert [e.seq for e in d.entries] == list(range(view.size, len(raw)))
        view = view.applied(d)
        assert view.size == len(raw)
    assert list(view.entries) == [r for _, r in station.ledger.raw_entries()]
    # The same message again is stale, not an error, and not a second copy.
    d = judge(STATION, [key], view, MirrorMessage(0, view.entries, station.checkpoint().note))
    assert isinstance(d, Stale)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 9), min_size=1, max_size=8), st.data())
def test_any_cut_and_any_overlap_extends_to_the_same_mirror(
    steps: list[int], data: st.DataObject
) -> None:
    log = Log()
    view = MemoryMirror()
    for n in steps:
        log.add(n)
        start = data.draw(st.integers(0, view.size), label="from")  # resending some is fine
        d = judge(STATION, [log.signer.verifier], view, log.message(start))
        assert isinstance(d, Extend), d
        # The subtrees it closes are exactly those of the full tree.
        for level, index, h in d.nodes:
            width = 1 << level
            assert h == root_of(
                [leaf_hash(e) for e in log.entries[index * width : (index + 1) * width]]
            )
        view = view.applied(d)
    assert list(view.entries) == log.entries


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(0, 19), st.binary(min_size=1, max_size=8))
def test_a_rewritten_entry_below_the_mirror_is_a_fork(size: int, at: int, junk: bytes) -> None:
    at %= size
    log = Log()
    log.add(size)
    view = mirrored(log, size)
    entries = list(log.entries)
    entries[at] = entries[at] + junk
    d = judge(STATION, [log.signer.verifier], view, MirrorMessage(0, tuple(entries), log.note()))
    assert isinstance(d, Refuse) and d.kind == "fork", d
    assert f"entry {at}" in d.detail


def test_a_truncated_then_regrown_ledger_is_refused() -> None:
    log = Log()
    log.add(6)
    view = mirrored(log, 6)
    other = log.fork(3)
    other.add(4, tag="regrown")  # size 7: entries 3..6 are new history
    key = [log.signer.verifier]
    # Sent from the held size: entry 6 does not chain to the mirrored entry 5.
    d = judge(STATION, key, view, other.message(6))
    assert isinstance(d, Refuse) and d.kind == "chain", d
    # Sent from where it diverged: entries 3..5 are not the mirrored ones.
    d = judge(STATION, key, view, other.message(3))
    assert isinstance(d, Refuse) and d.kind == "fork", d
    # Its checkpoint of the mirrored size: the root differs.
    d = judge(STATION, key, view, MirrorMessage(6, (), other.note(6)))
    assert isinstance(d, Refuse) and d.kind == "fork", d
    # A smaller checkpoint of the new history: a rollback.
    d = judge(STATION, key, view, MirrorMessage(4, (), other.note(4)))
    assert isinstance(d, Refuse) and d.kind == "rollback", d


def test_a_consistent_older_checkpoint_is_stale() -> None:
    log = Log()
    log.add(9)
    view = mirrored(log, 9)
    for size in (0, 1, 5, 8, 9):
        d = judge(STATION, [log.signer.verifier], view, MirrorMessage(size, (), log.note(size)))
        assert isinstance(d, Stale), (size, d)


def test_a_checkpoint_with_a_wrong_root_is_refused() -> None:
    log = Log()
    log.add(4)
    view = mirrored(log, 2)
    wrong = hashlib.sha256(b"not the root").digest()
    msg = MirrorMessage(2, tuple(log.entries[2:4]), log.note(4, root=wrong))
    d = judge(STATION, [log.signer.verifier], view, msg)
    assert isinstance(d, Refuse) and d.kind == "fork", d
    d = judge(
        STATION,
        [log.signer.verifier],
        MemoryMirror(),
        MirrorMessage(0, tuple(log.entries), log.note(4, wrong)),
    )
    assert isinstance(d, Refuse) and d.kind == "fork", d


def test_another_stations_entries_are_refused() -> None:
    log = Log()
    log.add(2)
    log.add(1, station="dock-02")
    d = judge(STATION, [log.signer.verifier], MemoryMirror(), log.message(0))
    assert isinstance(d, Refuse) and d.kind == "entry" and "dock-02" in d.detail, d


def test_entries_out_of_place_or_unparseable_are_refused() -> None:
    log = Log()
    log.add(3)
    view = mirrored(log, 1)
    # Entry 1 sent where entry 2 belongs: seq is not its index.
    msg = MirrorMessage(1, (log.entries[1], log.entries[1]), log.note(3))
    d = judge(STATION, [log.signer.verifier], view, msg)
    assert isinstance(d, Refuse) and d.kind == "entry", d
    msg = MirrorMessage(1, (log.entries[1], b"{not json"), log.note(3))
    d = judge(STATION, [log.signer.verifier], view, msg)
    assert isinstance(d, Refuse) and d.kind == "entry", d


def test_a_gap_is_ignored_and_a_wrong_count_too() -> None:
    log = Log()
    log.add(5)
    view = mirrored(log, 2)
    d = judge(STATION, [log.signer.verifier], view, log.message(3))
    assert isinstance(d, Ignore) and "past the mirrored size" in d.reason
    short = MirrorMessage(2, tuple(log.entries[2:4]), log.note(5))
    assert isinstance(judge(STATION, [log.signer.verifier], view, short), Ignore)


def test_a_checkpoint_by_an_unpinned_key_or_another_log_is_refused() -> None:
    log = Log()
    log.add(3)
    stranger = NoteSigner.generate(f"evidock/{STATION}")
    d = judge(STATION, [stranger.verifier], MemoryMirror(), log.message(0))
    assert isinstance(d, Refuse) and d.kind == "signature", d
    view = mirrored(log, 2)
    other = Log(signer=NoteSigner.generate("evidock/elsewhere"), entries=list(log.entries))
    cp = Checkpoint("evidock/elsewhere", 3, other.root(3))
    msg = MirrorMessage(2, (log.entries[2],), sign_note(cp.body(), [other.signer]))
    d = judge(STATION, [log.signer.verifier, other.signer.verifier], view, msg)
    assert isinstance(d, Refuse) and d.kind == "origin", d


# -- the message codec -------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 1 << 40),
    st.lists(st.binary(max_size=64), min_size=1, max_size=10),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=50),
)
def test_messages_round_trip(start: int, entries: list[bytes], note: str) -> None:
    msg = MirrorMessage(start, tuple(entries), note)
    assert MirrorMessage.from_json(msg.to_json()) == msg


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"from": 0, "entries": []},
        {"from": -1, "entries": [], "checkpoint": "x"},
        {"from": True, "entries": [], "checkpoint": "x"},
        {"from": 0, "entries": ["***"], "checkpoint": "x"},
        {"from": 0, "entries": [1], "checkpoint": "x"},
        {"from": 0, "entries": [], "checkpoint": ""},
        {"from": 0, "entries": ["AA=="] * (MAX_ENTRIES + 1), "checkpoint": "x"},
        {"from": 0, "entries": [], "checkpoint": "x", "extra": 1},
    ],
)
def test_malformed_messages_are_input_errors(value: object) -> None:
    with pytest.raises(InputError):
        MirrorMessage.from_json(json.dumps(value).encode())
    with pytest.raises(InputError):
        MirrorMessage.from_json(b"\xff")


def test_the_wire_form_is_the_contracts() -> None:
    log = Log()
    log.add(1)
    wire = json.loads(log.message(0).to_json())
    assert set(wire) == {"from", "entries", "checkpoint"}
    assert base64.b64decode(wire["entries"][0]) == log.entries[0]
    assert Entry.parse(log.entries[0]).seq == 0
