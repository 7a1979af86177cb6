"""The access log (agent.records.access): who may view, play, copy, export and disclose what,
the purposes it accepts, the entries it writes and how the log reads them back.

Real parts: a station on disk, users in its users.db, files ingested as the
command line does. Every role is tried with every action, so a role boundary
that moves shows up here.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records import access
from agent.records.access import (
    ACCESS,
    ACTIONS,
    PURPOSE_MAX,
    access_log,
    access_records,
    authorise,
    check_purpose,
    purge_entry,
    purpose_text,
    record_access,
    stored_path,
)
from agent.users.accounts import User, Users
from agent.users.roles import PermissionDeniedError
from hashing.entries import EXPORT, parse_time
from hashing.errors import InputError
from hashing.retention import PURGE
from hashing.station import Station

WORDS = "correct horse 42"  # every user's password: passes check_secret
OWN, OTHER = "100101", "100202"

# What each role may do with a recording it can see (issue 6 §3, agent.users.roles): the
# expectation written out, so a change of the role table has to change this too.
ALLOWED = {
    "officer": {"view", "play"},
    "supervisor": {"view", "play", "copy", "export", "disclose"},
    "auditor": {"view", "play", "copy", "export", "disclose"},
    "admin": set(),
}


@dataclass
class Dock:
    station: Station
    users: dict[str, User]
    own: str  # a recording of officer OWN
    other: str  # a recording of officer OTHER


def _ingest(station: Station, folder: Path, officer: str, data: bytes) -> str:
    folder.mkdir(parents=True)
    (folder / "CLIP0001.MP4").write_bytes(data)
    (result,) = list(ingest_paths(station, [folder], Binding(officer=officer, device="CAM-1")))
    assert isinstance(result, IngestResult), result
    return result.sha256


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    station = Station.init(tmp_path / "home", "dock-01")
    own = _ingest(station, tmp_path / "a", OWN, os.urandom(4096))
    other = _ingest(station, tmp_path / "b", OTHER, os.urandom(4096))
    registry = Users(station)
    try:
        made = {
            "officer": registry.add("off", "officer", WORDS, officer=OWN, by="console:test"),
            "supervisor": registry.add("sup", "supervisor", WORDS, officer=None, by="console:test"),
            "auditor": registry.add("aud", "auditor", WORDS, officer=None, by="console:test"),
            "admin": registry.add("adm", "admin", WORDS, officer=None, by="console:test"),
        }
        yield Dock(station, made, own, other)
    finally:
        registry.close()
        station.close()


def _accesses(station: Station) -> int:
    return sum(1 for _ in station.ledger.entries_of_type(ACCESS))


# -- every role x every action -----------------------------------------------------------


def test_every_role_and_action(dock: Dock) -> None:
    for role, user in dock.users.items():
        for action in ACTIONS:
            before = _accesses(dock.station)
            if action in ALLOWED[role]:
                entry = record_access(dock.station, user, action, [dock.own], "case A-1")
                assert entry.type == ACCESS
                assert entry.body == {
                    "action": action,
                    "user": user.name,
                    "role": role,
                    "files": [dock.own],
                    "purpose": "case A-1",
                    "recipient": None,
                    "detail": None,
                }, (role, action)
                assert _accesses(dock.station) == before + 1
            else:
                with pytest.raises(PermissionDeniedError) as refused:
                    record_access(dock.station, user, action, [dock.own], "case A-1")
                assert user.name in str(refused.value), (role, action)
                assert _accesses(dock.station) == before, f"{role} {action}: refused but logged"


def test_the_expectation_matches_the_role_table() -> None:
    """ALLOWED above is derived by hand; the module's PERMISSION map must agree."""
    from agent.users.roles import can

    for role, actions in ALLOWED.items():
        derived = {a for a in ACTIONS if can(role, access.PERMISSION[a])}
        assert derived == actions, role


def test_an_officer_sees_only_their_own(dock: Dock) -> None:
    officer = dock.users["officer"]
    authorise(dock.station, officer, "play", [dock.own])
    for files in ([dock.other], [dock.own, dock.other]):
        with pytest.raises(PermissionDeniedError) as refused:
            authorise(dock.station, officer, "view", files)
        assert dock.other in str(refused.value) and OWN in str(refused.value)
    assert _accesses(dock.station) == 0
    # supervisors and auditors see every officer's recordings
    for role in ("supervisor", "auditor"):
        authorise(dock.station, dock.users[role], "play", [dock.own, dock.other])


def test_an_officer_account_without_an_officer_id_sees_nothing(dock: Dock, tmp_path: Path) -> None:
    loose = User("loose", "officer", None, disabled=False)
    with pytest.raises(PermissionDeniedError, match="officer id"):
        authorise(dock.station, loose, "view", [dock.own])


def test_disabled_and_missing_users_are_refused(dock: Dock) -> None:
    registry = Users(dock.station)
    try:
        registry.disable("sup", by="console:test")
        disabled = registry.get("sup")
    finally:
        registry.close()
    assert disabled is not None and disabled.disabled
    with pytest.raises(PermissionDeniedError, match="disabled"):
        record_access(dock.station, disabled, "play", [dock.own], "case A-1")
    with pytest.raises(PermissionDeniedError, match="log in"):
        authorise(dock.station, None, "view", [dock.own])
    assert _accesses(dock.station) == 0


def test_unknown_digests_actions_and_empty_selections(dock: Dock) -> None:
    sup = dock.users["supervisor"]
    unknown = "0" * 64
    with pytest.raises(InputError, match="not in the ledger") as missing:
        record_access(dock.station, sup, "view", [dock.own, unknown], "case A-1")
    assert unknown in str(missing.value) and dock.own not in str(missing.value)
    with pytest.raises(InputError, match="one of view, play"):
        record_access(dock.station, sup, "delete", [dock.own], "case A-1")
    with pytest.raises(InputError, match="no recordings"):
        record_access(dock.station, sup, "view", [], "case A-1")
    assert _accesses(dock.station) == 0


def test_files_are_sorted_and_once(dock: Dock) -> None:
    sup = dock.users["supervisor"]
    entry = record_access(
        dock.station,
        sup,
        "disclose",
        [dock.other, dock.own, dock.other],
        "  disclosure request: GK-2026-017 ",
        recipient="Zhang San",
        detail="USB stick 3",
    )
    assert entry.body["files"] == sorted({dock.own, dock.other})
    assert entry.body["purpose"] == "disclosure request: GK-2026-017"
    assert (entry.body["recipient"], entry.body["detail"]) == ("Zhang San", "USB stick 3")


# -- purposes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "give a purpose"),
        ("", "give a purpose"),
        ("   \t ", "give a purpose"),
        ("case\nA-1", "U+000A"),
        ("case\rA-1", "U+000D"),
        ("case\x00", "U+0000"),
        ("case\x1b[31m", "U+001B"),
        ("del\x7f", "U+007F"),
        ("c1 \x85 control", "U+0085"),
        ("line\u2028separator", "U+2028"),
        ("para\u2029separator", "U+2029"),
        ("abc\u202egnp.exe", "U+202E"),
        ("isolate \u2066x\u2069", "U+2066"),
        ("arabic mark \u061c", "U+061C"),
        ("zero\u200bwidth", "U+200B"),
        ("soft\u00adhyphen", "U+00AD"),
        ("\ufeffbom", "U+FEFF"),
        ("x" * (PURPOSE_MAX + 1), f"at most {PURPOSE_MAX}"),
    ],
)
def test_bad_purposes_are_refused(text: str | None, says: str) -> None:
    with pytest.raises(InputError, match=says.replace("+", r"\+")):
        check_purpose(text)


def test_a_bad_purpose_logs_nothing(dock: Dock) -> None:
    for text in ("", "a\nb", "x" * (PURPOSE_MAX + 1), "\u202eabc"):
        with pytest.raises(InputError):
            record_access(dock.station, dock.users["auditor"], "play", [dock.own], text)
    assert _accesses(dock.station) == 0


def test_good_purposes() -> None:
    assert check_purpose("  信息公开申请：GK-2026-017 ") == "信息公开申请：GK-2026-017"
    assert check_purpose("x" * PURPOSE_MAX) == "x" * PURPOSE_MAX
    assert check_purpose("<script>alert(1)</script>") == "<script>alert(1)</script>"  # text


@given(st.text(st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=300))
def test_a_purpose_is_printable_one_line_or_refused(text: str) -> None:
    hidden = {"Cf", "Co", "Cn"}  # format (bidi, zero-width), private use, unassigned
    stripped = text.strip()
    if (
        stripped
        and len(stripped) <= PURPOSE_MAX
        and not any(unicodedata.category(c) in hidden for c in stripped)
    ):
        assert check_purpose(text) == stripped
    else:
        with pytest.raises(InputError):
            check_purpose(text)


@given(st.text(max_size=50), st.characters(categories=["Cc"]), st.text(max_size=50))
def test_a_control_character_anywhere_inside_is_refused(before: str, c: str, after: str) -> None:
    text = f"x{before}{c}{after}x"
    with pytest.raises(InputError):
        check_purpose(text)


def test_the_kiosk_purposes() -> None:
    assert purpose_text("case_work", " A2026-0042 ") == "case work: A2026-0042"
    assert purpose_text("case_work") == "case work"
    assert purpose_text("spot_check", "") == "spot check"
    assert purpose_text("inspection", None) == "inspection"
    assert purpose_text("disclosure", "GK-2026-017") == "disclosure request: GK-2026-017"
    assert purpose_text("other", "court order 7") == "other: court order 7"
    with pytest.raises(InputError, match="request number"):
        purpose_text("disclosure", "  ")
    with pytest.raises(InputError, match="what it is"):
        purpose_text("other")
    with pytest.raises(InputError, match="one of case_work"):
        purpose_text("curiosity", "x")
    with pytest.raises(InputError, match="U\\+000A"):
        purpose_text("other", "a\nb")
    with pytest.raises(InputError, match="at most"):
        purpose_text("other", "y" * PURPOSE_MAX)


# -- the log read back --------------------------------------------------------------------


def test_access_log_filters(dock: Dock) -> None:
    sup, aud, off = dock.users["supervisor"], dock.users["auditor"], dock.users["officer"]
    first = record_access(dock.station, sup, "view", [dock.own, dock.other], "case A-1")
    second = record_access(dock.station, aud, "play", [dock.other], "spot check 7")
    third = record_access(dock.station, off, "play", [dock.own], "case A-1")

    everything = access_log(dock.station)
    assert [r.seq for r in everything] == [first.seq, second.seq, third.seq]
    rec = everything[1]
    assert (rec.action, rec.user, rec.role, rec.files, rec.purpose) == (
        "play",
        "aud",
        "auditor",
        (dock.other,),
        "spot check 7",
    )
    assert [r.seq for r in access_log(dock.station, user="sup")] == [first.seq]
    assert [r.seq for r in access_log(dock.station, user="nobody")] == []
    assert [r.seq for r in access_log(dock.station, sha256=dock.own)] == [first.seq, third.seq]
    assert [r.seq for r in access_log(dock.station, sha256=dock.other, user="aud")] == [second.seq]

    # [start, end): the entry times themselves bound the window
    t1, t3 = parse_time(first.time), parse_time(third.time)
    assert [r.seq for r in access_log(dock.station, start=t1, end=t3 + timedelta(seconds=1))] == [
        first.seq,
        second.seq,
        third.seq,
    ]
    assert access_log(dock.station, end=t1) == []
    assert access_log(dock.station, start=t3 + timedelta(seconds=1)) == []
    assert [r.seq for r in access_log(dock.station, start=t3)][-1] == third.seq


def test_old_export_entries_without_a_user_are_read(dock: Dock) -> None:
    """Exports written before the access log existed carry {selection, files, out}: the
    log shows them as console exports, with no purpose."""
    old = dock.station.ledger.append(
        EXPORT, {"selection": {"case": "A-1"}, "files": [dock.own], "out": "/media/usb/x"}
    )
    new = dock.station.ledger.append(
        EXPORT,
        {
            "selection": {"sha256": [dock.other]},
            "files": [dock.other],
            "out": "/tmp/d",
            "action": "disclose",
            "user": "aud",
            "role": "auditor",
            "purpose": "disclosure request: GK-1",
            "recipient": "Li Si",
        },
    )
    records = {r.seq: r for r in access_records(dock.station)}
    assert (records[old.seq].action, records[old.seq].user, records[old.seq].role) == (
        "export",
        "console",
        "-",
    )
    assert (records[old.seq].purpose, records[old.seq].out) == ("-", "/media/usb/x")
    assert records[old.seq].files == (dock.own,)
    fresh = records[new.seq]
    assert (fresh.action, fresh.user, fresh.role, fresh.recipient) == (
        "disclose",
        "aud",
        "auditor",
        "Li Si",
    )
    assert [r.seq for r in access_log(dock.station, user="console")] == [old.seq]
    assert [r.seq for r in access_log(dock.station, sha256=dock.other)] == [new.seq]


def test_the_log_reads_many_entries_in_order(dock: Dock) -> None:
    """More than one read batch, interleaved with other entry types."""
    aud = dock.users["auditor"]
    seqs = []
    for i in range(2100):
        if i % 500 == 0:
            dock.station.ledger.append("anomaly", {"kind": "time_gap", "i": i})
        seqs.append(
            dock.station.ledger.append(
                ACCESS,
                {
                    "action": "view",
                    "user": "aud",
                    "role": "auditor",
                    "files": [dock.own],
                    "purpose": f"p{i}",
                    "recipient": None,
                    "detail": None,
                },
            ).seq
        )
    record_access(dock.station, aud, "play", [dock.own], "last")
    found = list(access_records(dock.station))
    assert [r.seq for r in found[:-1]] == seqs
    assert found[-1].purpose == "last"


# -- purged and missing recordings ----------------------------------------------------------


def test_purged_and_missing_recordings_cannot_be_had(dock: Dock, tmp_path: Path) -> None:
    assert stored_path(dock.station, dock.own) == dock.station.store.path_for(dock.own)
    assert purge_entry(dock.station, dock.own) is None
    # a purge entry of another digest that merely mentions this one does not count
    dock.station.ledger.append(
        PURGE, {"sha256": dock.other, "by": "console:test", "note": dock.own}
    )
    assert purge_entry(dock.station, dock.own) is None
    purge = dock.station.ledger.append(
        PURGE, {"sha256": dock.own, "size": 4096, "by": "console:test"}
    )
    assert purge_entry(dock.station, dock.own) == purge.seq
    with pytest.raises(InputError, match=f"purged .*entry {purge.seq}"):
        stored_path(dock.station, dock.own)  # even while the copy is still there

    assert purge_entry(dock.station, dock.other) is not None  # the entry above
    fresh = _ingest(dock.station, tmp_path / "c", OTHER, os.urandom(100))
    path = dock.station.store.path_for(fresh)
    path.parent.chmod(0o700)
    path.unlink()
    with pytest.raises(InputError, match="missing; run `evidock ledger verify`"):
        stored_path(dock.station, fresh)
