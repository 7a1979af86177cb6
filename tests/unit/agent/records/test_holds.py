"""Long-term holds (agent.records.holds, Art. 17): who may set and release them, what
they cover (by file, by case, including cases bound later), and their entries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.records import holds
from agent.records import registry as records
from agent.users.accounts import User, Users
from agent.users.roles import ADMIN, AUDITOR, OFFICER, SUPERVISOR, PermissionDeniedError
from hashing.errors import InputError, explain
from hashing.retention import HOLD, HOLD_RELEASE, PURGE
from hashing.station import Station
from tests.retention_support import add_user, ingest_clip, new_station


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    s = new_station(tmp_path)
    yield s
    s.close()


@pytest.fixture
def people(station: Station) -> dict[str, User]:
    return {
        OFFICER: add_user(station, "ofc", OFFICER, officer="o-1"),
        SUPERVISOR: add_user(station, "sup", SUPERVISOR),
        AUDITOR: add_user(station, "aud", AUDITOR),
        ADMIN: add_user(station, "adm", ADMIN),
    }


def test_a_supervisor_holds_recordings_and_an_admin_releases(
    station: Station, people: dict[str, User], tmp_path: Path
) -> None:
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1)
    entry = holds.add_hold(
        station, people[SUPERVISOR], files=[sha, sha], reason="dispute", note=" complaint 42 "
    )
    assert entry.type == HOLD and entry.body == {
        "files": [sha],
        "case": None,
        "reason": "dispute",
        "note": "complaint 42",
        "by": "sup",
    }
    assert holds.is_held(station, sha)
    release = holds.release_hold(station, people[ADMIN], entry.seq, "complaint withdrawn")
    assert release.type == HOLD_RELEASE
    assert release.body == {"hold": entry.seq, "note": "complaint withdrawn", "by": "adm"}
    assert not holds.is_held(station, sha)
    (h,) = holds.holds(station)
    assert (h.seq, h.released, h.released_by, h.active) == (entry.seq, release.seq, "adm", False)


@pytest.mark.parametrize("role", [OFFICER, AUDITOR, ADMIN])
def test_only_supervisors_set_holds(
    station: Station, people: dict[str, User], tmp_path: Path, role: str
) -> None:
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1)
    size = station.ledger.size()
    with pytest.raises(PermissionDeniedError, match="may not hold"):
        holds.add_hold(station, people[role], files=[sha], reason="other", note="n")
    with pytest.raises(PermissionDeniedError):
        holds.add_hold(station, people[role], case="C-1", reason="other", note="n")
    assert station.ledger.size() == size


@pytest.mark.parametrize("role", [OFFICER, AUDITOR, SUPERVISOR])
def test_only_admins_release_holds_not_even_the_supervisor_who_set_it(
    station: Station, people: dict[str, User], role: str
) -> None:
    entry = holds.add_hold(station, people[SUPERVISOR], case="C-1", reason="incident", note="n")
    size = station.ledger.size()
    with pytest.raises(PermissionDeniedError, match="may not release_hold"):
        holds.release_hold(station, people[role], entry.seq, "n")
    assert station.ledger.size() == size and holds.holds(station)[0].active


def test_disabled_users_may_do_neither(station: Station, people: dict[str, User]) -> None:
    entry = holds.add_hold(station, people[SUPERVISOR], case="C-1", reason="other", note="n")
    users = Users(station)
    try:
        users.disable("sup", by="console:test")
        users.disable("adm", by="console:test")
        sup, adm = users.get("sup"), users.get("adm")
    finally:
        users.close()
    assert sup is not None and sup.disabled and adm is not None and adm.disabled
    with pytest.raises(PermissionDeniedError, match="disabled"):
        holds.add_hold(station, sup, case="C-2", reason="other", note="n")
    with pytest.raises(PermissionDeniedError, match="disabled"):
        holds.release_hold(station, adm, entry.seq, "n")
    assert holds.holds(station)[0].active


def test_a_case_hold_covers_recordings_bound_now_and_later(
    station: Station, people: dict[str, User], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    at_ingest = ingest_clip(station, src, "A.MP4", days_old=1, case="K-7")
    later = ingest_clip(station, src, "B.MP4", days_old=1)
    other = ingest_clip(station, src, "C.MP4", days_old=1)
    holds.add_hold(station, people[SUPERVISOR], case="K-7", reason="obstruction", note="n")
    assert holds.is_held(station, at_ingest)
    assert not holds.is_held(station, later)
    records.tag(station, [later], case="K-7", kind="other")
    assert holds.is_held(station, later) and not holds.is_held(station, other)
    assert [h.case for h in holds.holds_on(station, later)] == ["K-7"]


def test_bad_holds_and_releases_are_refused_with_what_to_do(
    station: Station, people: dict[str, User], tmp_path: Path
) -> None:
    sup, adm = people[SUPERVISOR], people[ADMIN]
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1)
    cases = [
        ({"files": [sha], "reason": "boredom", "note": "n"}, "choose one of dispute"),
        ({"files": [sha], "reason": "other", "note": "  "}, "give a --note"),
        ({"files": [sha], "reason": "other", "note": "a\nb"}, "one line"),
        ({"files": [sha], "case": "C", "reason": "other", "note": "n"}, "not both"),
        ({"reason": "other", "note": "n"}, "name what to hold"),
        ({"files": ["ab" * 32], "reason": "other", "note": "n"}, "not in the ledger"),
        ({"case": " C ", "reason": "other", "note": "n"}, "case"),
    ]
    size = station.ledger.size()
    for kwargs, words in cases:
        with pytest.raises(InputError) as caught:
            holds.add_hold(station, sup, **kwargs)  # type: ignore[arg-type]
        assert re.search(words, explain(caught.value)), explain(caught.value)
    assert station.ledger.size() == size
    with pytest.raises(InputError, match="not a hold"):
        holds.release_hold(station, adm, 1, "n")  # the ingest entry
    with pytest.raises(InputError, match="not a hold"):
        holds.release_hold(station, adm, 10_000, "n")
    entry = holds.add_hold(station, sup, files=[sha], reason="other", note="n")
    holds.release_hold(station, adm, entry.seq, "done")
    with pytest.raises(InputError, match="already released"):
        holds.release_hold(station, adm, entry.seq, "again")


def test_a_purged_recording_cannot_be_held(
    station: Station, people: dict[str, User], tmp_path: Path
) -> None:
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1)
    station.ledger.append("purge", {"sha256": sha})  # whatever its lawfulness: it is gone
    with pytest.raises(InputError, match="already purged"):
        holds.add_hold(station, people[SUPERVISOR], files=[sha], reason="other", note="n")


def test_a_hold_and_a_purge_cannot_cross(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold's not-purged check runs inside the transaction that appends it: a
    purge committed just before that transaction is seen."""
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1)
    boss = add_user(station, "boss", SUPERVISOR)
    original = station.ledger.transaction

    @contextmanager
    def purge_slips_in() -> Iterator[Any]:
        other = Station.open(station.home)  # the retention timer, another process
        try:
            other.ledger.append(PURGE, {"sha256": sha})
        finally:
            other.close()
        with original() as tx:
            yield tx

    monkeypatch.setattr(station.ledger, "transaction", purge_slips_in)
    with pytest.raises(InputError, match="already purged"):
        holds.add_hold(station, boss, files=[sha], reason="dispute", note="n")
    monkeypatch.undo()
    assert not list(station.ledger.entries_of_type("hold"))


def test_a_release_by_anyone_but_an_admin_leaves_the_hold_in_force(
    station: Station, people: dict[str, User], tmp_path: Path
) -> None:
    """A hold_release written behind the roles' back (by the supervisor who set the
    hold) does not count: the hold stays in force, listed with the refused release,
    and an admin can still release it."""
    sha = ingest_clip(station, tmp_path / "src", "A.MP4", days_old=1)
    entry = holds.add_hold(station, people[SUPERVISOR], files=[sha], reason="dispute", note="n")
    forged = station.ledger.append(HOLD_RELEASE, {"hold": entry.seq, "note": "x", "by": "sup"})
    assert holds.is_held(station, sha)
    (h,) = holds.holds(station)
    assert h.active and h.refused_releases == (forged.seq,)
    assert h.as_dict()["refused_releases"] == [forged.seq]
    release = holds.release_hold(station, people[ADMIN], entry.seq, "withdrawn")
    (h,) = holds.holds(station)
    assert h.released == release.seq and h.released_by == "adm" and not holds.is_held(station, sha)
