"""Authorised exports, disclosures and the year-end archive (agent.records.exports,
agent.records.archive, hashing.bundle, hashing.verify): who may export, what the export
entry records, the disclosure notice bound to it, the printable summary, and
the archive's folders and index.

Real parts: a station on disk, users in its users.db, files ingested as the
command line does, bundles checked by the offline verifier.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records import index
from agent.records import registry as records
from agent.records.archive import UNCASED, archive, folder_name
from agent.records.exports import export, summary_html, volume_label
from agent.users.accounts import User, Users
from agent.users.roles import PermissionDeniedError
from hashing.bundle import Request, Selection, export_bundle
from hashing.entries import EXPORT, Entry
from hashing.errors import InputError
from hashing.findings import FILE_ADDED, FILE_MISSING, FILE_MODIFIED, MALFORMED, Report
from hashing.station import Station
from hashing.verify import (
    NOTICE,
    README,
    SUMMARY,
    disclosure_notice,
    notice_head,
    notice_html,
    verify_bundle,
)

WORDS = "correct horse 42"
OFFICER = "100101"
HOSTILE = '<img src=x onerror=alert(1)>"&'
SAFE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{8,64}")


@dataclass
class Dock:
    station: Station
    users: dict[str, User]
    tmp: Path
    n: int = 0

    def ingest(self, data: bytes, *, case: str | None = None, year: int = 2025) -> str:
        """Ingest one file recorded (by its time on the recorder) in ``year``."""
        self.n += 1
        folder = self.tmp / f"src{self.n}"
        folder.mkdir()
        path = folder / f"CLIP{self.n:04d}.MP4"
        path.write_bytes(data)
        when = datetime(year, 6, 1, 8, self.n % 60, tzinfo=UTC).timestamp()
        os.utime(path, (when, when))
        binding = Binding(officer=OFFICER, device="CAM-1", case=case)
        (result,) = list(ingest_paths(self.station, [path], binding))
        assert isinstance(result, IngestResult), result
        return result.sha256

    def size(self) -> int:
        return self.station.ledger.size()


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    station = Station.init(tmp_path / "home", "dock-01")
    registry = Users(station)
    try:
        made = {
            role: registry.add(
                role[:3],
                role,
                WORDS,
                officer=OFFICER if role == "officer" else None,
                by="console:test",
            )
            for role in ("officer", "supervisor", "auditor", "admin")
        }
        registry.add("gone", "supervisor", WORDS, officer=None, by="console:test")
        registry.disable("gone", by="console:test")
        disabled = registry.get("gone")
        assert disabled is not None and disabled.disabled
        made["disabled"] = disabled
        yield Dock(station, made, tmp_path)
    finally:
        registry.close()
        station.close()


def _key(dock: Dock) -> Any:
    return dock.station.keys.load().verifier


def _verify(dock: Dock, bundle: Path) -> Report:
    return verify_bundle(bundle, [_key(dock)])


def _export_entry(bundle: Path, station: Station) -> Entry:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return station.ledger.entry(int(manifest["export_entry"]))


# -- who may export, and what the entry says ------------------------------------------


@pytest.mark.parametrize("role", ["supervisor", "auditor"])
def test_an_export_records_who_why_and_verifies(dock: Dock, role: str) -> None:
    a = dock.ingest(os.urandom(3000), case="C-1")
    b = dock.ingest(os.urandom(100), case="C-1")
    out = dock.tmp / "bundle"
    result = export(dock.station, dock.users[role], Selection(case="C-1"), out, " REQ-7 ")
    entry = _export_entry(out, dock.station)
    assert entry.type == EXPORT and entry.seq == result.entry
    assert entry.body == {
        "selection": {"case": "C-1"},
        "files": [a, b],
        "out": str(out.absolute()),
        "action": "export",
        "user": dock.users[role].name,
        "role": role,
        "purpose": "REQ-7",
        "recipient": None,
    }
    assert (result.files, result.bytes, result.notice) == (2, 3100, None)
    assert not (out / NOTICE).exists()
    report = _verify(dock, out)
    assert report.exit_code == 0, report.render()
    assert report.checked["export"].startswith(f"entry {entry.seq}: export by {role[:3]} ({role})")
    assert "notice" not in report.checked
    readme = (out / "README.txt").read_text()
    assert readme.startswith("EVIDENCE EXPORT")
    assert f"Action:      export by {role[:3]} ({role})" in readme
    assert "python3 verifier/verify.py . --key" in readme
    assert (out / SUMMARY).is_file()


@pytest.mark.parametrize("who", ["officer", "admin", "disabled", "nobody"])
def test_wrong_roles_are_refused_before_anything_is_written(dock: Dock, who: str) -> None:
    sha = dock.ingest(os.urandom(500), case="C-1")
    size, out = dock.size(), dock.tmp / "bundle"
    user = None if who == "nobody" else dock.users[who]
    for selection in (Selection(case="C-1"), Selection(sha256=(sha,))):
        with pytest.raises(PermissionDeniedError):
            export(dock.station, user, selection, out, "REQ-1")  # type: ignore[arg-type]
        with pytest.raises(PermissionDeniedError):
            export(
                dock.station,
                user,  # type: ignore[arg-type]
                selection,
                out,
                "REQ-1",
                recipient="someone",
            )
    with pytest.raises(PermissionDeniedError):
        archive(dock.station, user, 2025, dock.tmp / "archive")  # type: ignore[arg-type]
    assert dock.size() == size
    assert not out.exists() and not (dock.tmp / "archive").exists()


@pytest.mark.parametrize(
    ("purpose", "recipient", "says"),
    [
        ("", None, "give a purpose"),
        ("   ", None, "give a purpose"),
        ("REQ\n1", None, "control or invisible character"),
        ("x" * 201, None, "200"),
        ("REQ-1", "", "needs --recipient"),
        ("REQ-1", "two\nlines", "printable"),
    ],
)
def test_bad_purposes_and_recipients_are_refused(
    dock: Dock, purpose: str, recipient: str | None, says: str
) -> None:
    sha = dock.ingest(os.urandom(500))
    size, out = dock.size(), dock.tmp / "bundle"
    with pytest.raises(InputError, match=says):
        export(
            dock.station,
            dock.users["supervisor"],
            Selection(sha256=(sha,)),
            out,
            purpose,
            recipient=recipient,
            action="disclose" if recipient is not None else None,
        )
    assert dock.size() == size and not out.exists()


def test_a_recipient_makes_only_a_disclosure(dock: Dock) -> None:
    sha = dock.ingest(os.urandom(500))
    with pytest.raises(InputError, match="only for a disclosure"):
        export(
            dock.station,
            dock.users["auditor"],
            Selection(sha256=(sha,)),
            dock.tmp / "b",
            "REQ-1",
            recipient="X",
            action="archive",
        )
    with pytest.raises(InputError, match="names its recipient"):
        Request("aud", "auditor", "REQ-1", "disclose")
    with pytest.raises(InputError, match="one of export, disclose, archive"):
        Request("aud", "auditor", "REQ-1", "leak")


def test_an_output_that_exists_is_refused(dock: Dock) -> None:
    sha = dock.ingest(os.urandom(500))
    out = dock.tmp / "full"
    out.mkdir()
    (out / "x").write_text("x")
    size = dock.size()
    with pytest.raises(InputError, match="already exists"):
        export(dock.station, dock.users["auditor"], Selection(sha256=(sha,)), out, "R")
    with pytest.raises(InputError, match="does not exist"):
        export(
            dock.station, dock.users["auditor"], Selection(sha256=(sha,)), dock.tmp / "a" / "b", "R"
        )
    empty = dock.tmp / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="must not contain each other"):
        export(
            dock.station,
            dock.users["auditor"],
            Selection(sha256=(sha,)),
            empty,
            "R",
            burn=empty / "disc",
        )
    assert dock.size() == size
    assert [p.name for p in out.iterdir()] == ["x"]
    assert not any(empty.iterdir())


def test_a_purged_recording_is_refused(dock: Dock) -> None:
    kept = dock.ingest(os.urandom(500), case="C-1")
    gone = dock.ingest(os.urandom(600), case="C-1")
    purge = dock.station.ledger.append("purge", {"sha256": gone, "size": 600, "by": "console:t"})
    size = dock.size()
    for selection in (Selection(case="C-1"), Selection(sha256=(gone,))):
        with pytest.raises(InputError, match=f"{gone} \\(purge entry {purge.seq}\\)"):
            export(dock.station, dock.users["auditor"], selection, dock.tmp / "b", "R")
    assert dock.size() == size and not (dock.tmp / "b").exists()
    export(dock.station, dock.users["auditor"], Selection(sha256=(kept,)), dock.tmp / "b", "R")


# -- disclosures ------------------------------------------------------------------------


def _disclose(dock: Dock, recipient: str = "Zhang San <applicant>") -> tuple[Path, list[str]]:
    shas = [dock.ingest(os.urandom(700 + i), case="C-9") for i in range(3)]
    out = dock.tmp / "disclosure"
    export(
        dock.station,
        dock.users["supervisor"],
        Selection(sha256=(shas[2], shas[0])),
        out,
        "GIR-2026-17",
        recipient=recipient,
    )
    return out, shas


def test_a_disclosure_holds_only_the_requested_files_and_a_bound_notice(dock: Dock) -> None:
    out, shas = _disclose(dock)
    entry = _export_entry(out, dock.station)
    assert entry.body["action"] == "disclose"
    assert entry.body["recipient"] == "Zhang San <applicant>"
    assert sorted(entry.body["files"]) == sorted([shas[0], shas[2]])
    in_bundle = sorted(p.name[:64] for p in (out / "files").iterdir())
    assert in_bundle == sorted([shas[0], shas[2]])
    notice = (out / NOTICE).read_text()
    date = entry.time[:10]
    assert notice.splitlines()[0] == (
        f"Disclosed to Zhang San <applicant> for GIR-2026-17 by sup (supervisor) on {date}; "
        f"ledger entry {entry.seq}"
    )
    assert notice == disclosure_notice(entry)
    readme = (out / "README.txt").read_text().splitlines()
    assert readme[1] == notice.splitlines()[0]  # the head, under a rule
    summary = (out / SUMMARY).read_text()
    assert html.escape(notice.splitlines()[0], quote=False) in summary
    assert "<applicant>" not in summary
    report = _verify(dock, out)
    assert report.exit_code == 0, report.render()
    assert report.checked["notice"] == "matches the export entry"
    assert "to 'Zhang San <applicant>'" in report.checked["export"]


def _tampered(src: Path, name: str) -> Path:
    dst = src.with_name(name)
    shutil.copytree(src, dst)
    return dst


def test_an_edited_removed_or_planted_notice_is_caught(dock: Dock) -> None:
    out, shas = _disclose(dock)
    edited = _tampered(out, "edited")
    text = (edited / NOTICE).read_text().replace("Zhang San", "Li Si")
    (edited / NOTICE).write_text(text)
    report = _verify(dock, edited)
    assert report.exit_code == 1
    assert [(f.kind, f.place) for f in report.findings] == [(FILE_MODIFIED, NOTICE)]

    removed = _tampered(out, "removed")
    (removed / NOTICE).unlink()
    report = _verify(dock, removed)
    assert [(f.kind, f.place) for f in report.findings] == [(FILE_MISSING, NOTICE)]

    plain = dock.tmp / "plain"
    export(dock.station, dock.users["auditor"], Selection(sha256=(shas[1],)), plain, "R")
    (plain / NOTICE).write_text((out / NOTICE).read_text())
    report = _verify(dock, plain)
    assert [(f.kind, f.place) for f in report.findings] == [(FILE_ADDED, NOTICE)]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, path
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("name", [README, SUMMARY])
def test_the_notice_shown_in_readme_and_summary_is_checked(dock: Dock, name: str) -> None:
    """README.txt and summary.html show the notice first: an edited copy there
    fails the bundle as an edited NOTICE.txt does."""
    out, _ = _disclose(dock, recipient="Li Ming (party)")
    assert _verify(dock, out).exit_code == 0
    edited = _tampered(out, "edited")
    _edit(edited / name, "Li Ming (party)", "Court of X")
    report = _verify(dock, edited)
    assert report.exit_code == 1
    assert [(f.kind, f.place) for f in report.findings] == [(FILE_MODIFIED, name)]
    assert "Li Ming (party)" in report.findings[0].detail
    assert NOTICE in report.findings[0].detail


def test_a_notice_added_to_a_plain_exports_readme_or_summary_is_caught(dock: Dock) -> None:
    out, shas = _disclose(dock)
    plain = dock.tmp / "plain"
    export(dock.station, dock.users["auditor"], Selection(sha256=(shas[1],)), plain, "R")
    assert _verify(dock, plain).exit_code == 0
    readme = plain / README
    readme.write_text(notice_head((out / NOTICE).read_text()) + readme.read_text())
    _edit(plain / SUMMARY, "<body>\n", "<body>\n" + notice_html((out / NOTICE).read_text()))
    report = _verify(dock, plain)
    assert [(f.kind, f.place) for f in report.findings] == [
        (FILE_MODIFIED, README),
        (FILE_MODIFIED, SUMMARY),
    ]


def test_a_disclosures_readme_removed_is_caught_its_summary_may_be_absent(dock: Dock) -> None:
    out, _ = _disclose(dock)
    (out / SUMMARY).unlink()  # as from hashing.bundle alone, or before summaries existed
    assert _verify(dock, out).exit_code == 0
    (out / README).unlink()
    report = _verify(dock, out)
    assert [(f.kind, f.place) for f in report.findings] == [(FILE_MISSING, README)]


@pytest.mark.parametrize("recipient", ["Zhang San <applicant>", HOSTILE, 'O\'Brien & "Partners"'])
def test_the_notices_markup_is_what_summaries_always_held(recipient: str) -> None:
    """Pages written before the notice's markup moved to the verifier rendered
    it with Jinja's escaping; they must compare equal, or they would fail."""
    notice = f"Disclosed to {recipient} for R by x (y) on 2026-01-01; ledger entry 9\n{recipient}\n"
    earlier = jinja2.Environment(autoescape=True).from_string(
        '<div class="notice" id="notice">{% for line in notice %}<p>{{ line }}</p>{% endfor %}</div>'
    )
    assert notice_html(notice) == earlier.render(notice=notice.splitlines())


def test_readme_and_summary_say_what_counts(dock: Dock) -> None:
    out, _ = _disclose(dock)
    readme = " ".join((out / README).read_text().split())
    summary = " ".join((out / SUMMARY).read_text().split())
    assert "what counts is the verifier's report" in readme and NOTICE in readme
    assert "what counts is NOTICE.txt" in summary and "the verifier's report" in summary


def test_the_export_entry_lists_exactly_the_bundles_files(dock: Dock) -> None:
    """A recording whose entry is carried (proven) but which the export entry does
    not name cannot be slipped into the bundle with a manifest row."""
    a = dock.ingest(os.urandom(800))
    b = dock.ingest(os.urandom(900))
    seq_b = index.file_seq(dock.station.ledger, b)
    assert seq_b is not None
    out = dock.tmp / "b"
    export_bundle(
        dock.station, Selection(sha256=(a,)), out, Request("aud", "auditor", "R"), carry=[seq_b]
    )
    assert _verify(dock, out).exit_code == 0
    shutil.copyfile(dock.station.store.path_for(b), out / "files" / f"{b}.mp4")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].append({"path": f"files/{b}.mp4", "sha256": b, "size": 900, "seq": seq_b})
    (out / "manifest.json").write_text(json.dumps(manifest))
    with (out / "SHA256SUMS").open("a") as f:
        f.write(f"{b}  files/{b}.mp4\n")
    report = _verify(dock, out)
    assert report.exit_code == 1
    kinds = {(f.kind, f.place) for f in report.findings}
    assert (MALFORMED, "manifest.json") in kinds
    assert (FILE_ADDED, f"files/{b}.mp4") in kinds


class _OldRequest(Request):
    """An export as evidock wrote it before exports named a user: {selection, files, out}."""

    def body(self) -> dict[str, Any]:
        return {}


def test_old_bundles_without_the_new_fields_still_verify(dock: Dock) -> None:
    sha = dock.ingest(os.urandom(800))
    out = dock.tmp / "old"
    export_bundle(dock.station, Selection(sha256=(sha,)), out, _OldRequest("x", "y", "z"))
    assert set(_export_entry(out, dock.station).body) == {"selection", "files", "out"}
    report = _verify(dock, out)
    assert report.exit_code == 0, report.render()
    assert "export" not in report.checked


# -- the printable summary ----------------------------------------------------------------


def test_the_summary_names_digests_key_and_escapes_everything(dock: Dock) -> None:
    shas = [dock.ingest(os.urandom(400 + i), case=HOSTILE) for i in range(2)]
    out = dock.tmp / "b"
    export(dock.station, dock.users["auditor"], Selection(case=HOSTILE), out, "<b>why</b>")
    text = summary_html(out, _key(dock))
    assert text == (out / SUMMARY).read_text()
    for sha in shas:
        assert sha in text
    key = _key(dock)
    assert key.key_id_hex in text and key.name in text
    assert str(escape(HOSTILE)) in text and "&lt;b&gt;why&lt;/b&gt;" in text
    assert "<img" not in text and "<b>" not in text and "<script" not in text.lower()
    assert "@media print" in text
    checkpoint = (out / "checkpoint.txt").read_text().splitlines()
    assert checkpoint[2] in text  # the root hash


def test_no_page_of_an_export_or_archive_holds_the_station_key(dock: Dock) -> None:
    """An auditor pastes what a page tells them: a forger's page would tell them the
    forger's key. The pages name the key and its fingerprint, and use a placeholder."""
    key = _key(dock)
    dock.ingest(os.urandom(500), case="C-1")
    out, _ = _disclose(dock)
    archived = dock.tmp / "archive"
    archive(dock.station, dock.users["auditor"], 2025, archived)
    index = json.loads((archived / "index.json").read_text())
    assert (index["key_name"], index["key_id"]) == (key.name, key.key_id_hex)
    pages = [out / README, out / SUMMARY, archived / "index.html", archived / "index.json"]
    for page in pages:
        text = page.read_text()
        b64 = key.vkey.split("+", 2)[2]  # base64 may itself hold "+"
        assert key.vkey not in text and b64 not in text, page
        if page.suffix != ".json":
            assert key.key_id_hex in text and key.name in text, page
            assert "--key 'STATION-VERIFIER-KEY'" in text, page
            assert "agency publishes" in " ".join(text.split()), page


def _modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)) or ".": stat.S_IMODE(p.lstat().st_mode)
        for p in [folder, *folder.rglob("*")]
    }


@pytest.fixture
def open_umask(dock: Dock) -> Iterator[None]:
    """A process whose umask lets others read (Station.open sets 0077; a caller
    may change it later): the modes must not depend on it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_bundles_and_archives_are_their_owners_alone(dock: Dock) -> None:
    dock.ingest(os.urandom(500), case="C-1")
    out = dock.tmp / "bundle"
    export(dock.station, dock.users["auditor"], Selection(case="C-1"), out, "R")
    given = dock.tmp / "given"
    given.mkdir(mode=0o755)  # an empty folder the user made
    export_bundle(dock.station, Selection(case="C-1"), given, Request("aud", "auditor", "R"))
    archived = dock.tmp / "archive"
    archive(dock.station, dock.users["auditor"], 2025, archived)
    for folder in (out, given, archived):
        modes = _modes(folder)
        assert any(name.startswith(("files/", "C-1-")) for name in modes), modes
        for name, mode in modes.items():
            assert mode == (0o700 if (folder / name).is_dir() else 0o600), (folder, name, oct(mode))
    assert _verify(dock, out).exit_code == 0


# -- the year-end archive -----------------------------------------------------------------


def _bundle_files(bundle: Path) -> list[str]:
    return sorted(p.name[:64] for p in (bundle / "files").iterdir())


def test_the_year_end_archive(dock: Dock) -> None:
    evil, slash, formula = "../../x", "A/B", '=HYPERLINK("http://x")'
    e1 = dock.ingest(os.urandom(1000), case=evil)
    e2 = dock.ingest(os.urandom(1001), case=evil)
    s1 = dock.ingest(os.urandom(1002), case=slash)
    dock.ingest(os.urandom(1003), case=slash, year=2024)  # another year's
    f1 = dock.ingest(os.urandom(1004))
    records.tag(dock.station, [f1], case=formula, kind="inspection", by="console:test")
    loose = dock.ingest(os.urandom(1005))
    dock.ingest(os.urandom(1006), case="OLD", year=2024)
    size = dock.size()

    out = dock.tmp / "archive"
    result = archive(dock.station, dock.users["auditor"], 2025, out)
    by_case = {c.case: c for c in result.cases}
    assert set(by_case) == {evil, slash, formula}
    assert result.uncased_left_out == 1
    folders = [c.folder for c in result.cases]
    assert len({str(f).lower() for f in folders}) == 3
    for c in result.cases:
        assert c.folder is not None and SAFE_FOLDER.fullmatch(c.folder), c.folder
        assert (out / c.folder).resolve().parent == out.resolve()
    assert not (dock.tmp / "x").exists()
    expected = {evil: [e1, e2], slash: [s1], formula: [f1]}
    sizes = {e1: 1000, e2: 1001, s1: 1002, f1: 1004}
    for case, shas in expected.items():
        row = by_case[case]
        bundle = out / str(row.folder)
        assert _bundle_files(bundle) == sorted(shas)
        assert (row.files, row.bytes) == (len(shas), sum(sizes[s] for s in shas))
        report = _verify(dock, bundle)
        assert report.exit_code == 0, report.render()
        entry = _export_entry(bundle, dock.station)
        assert entry.seq == row.export_entry
        assert entry.body["action"] == "archive"
        assert entry.body["purpose"] == "year-end archive 2025"
        assert entry.body["selection"] == {"case": case, "sha256": sorted(shas, key=shas.index)}
        assert row.first_recording is not None and row.first_recording.startswith("2025-06-01T")
    # one export entry per bundle, nothing else exported
    exports = [e for e in dock.station.ledger.entries_of_type(EXPORT) if e.seq >= size]
    assert sorted(e.seq for e in exports) == sorted(c.export_entry for c in result.cases)  # type: ignore[type-var]

    index = json.loads((out / "index.json").read_text())
    assert index["year"] == 2025 and index["complete"] is True
    assert [c["case"] for c in index["cases"]] == [c.case for c in result.cases]
    assert index["uncased_not_archived"] == 1
    rows = list(csv.reader((out / "index.csv").read_text().splitlines()))
    assert rows[0][:3] == ["case", "folder", "files"]
    assert {r[0] for r in rows[1:]} == {evil, slash, "'" + formula}
    page = (out / "index.html").read_text()
    assert str(escape(formula)) in page and "../../x" in page
    assert "<script" not in page.lower()

    again = dock.tmp / "with-uncased"
    result = archive(dock.station, dock.users["supervisor"], 2025, again, include_uncased=True)
    uncased = [c for c in result.cases if c.case is None]
    assert len(uncased) == 1 and uncased[0].folder == UNCASED
    assert _bundle_files(again / UNCASED) == [loose]
    assert _verify(dock, again / UNCASED).exit_code == 0


def test_purged_recordings_are_listed_and_their_entries_proven(dock: Dock) -> None:
    kept = dock.ingest(os.urandom(1000), case="C-1")
    gone = dock.ingest(os.urandom(1001), case="C-1")
    lost = dock.ingest(os.urandom(1002), case="C-2")
    purges = {}
    for sha in (gone, lost):
        purges[sha] = dock.station.ledger.append(
            "purge", {"sha256": sha, "size": 1001, "class": "routine", "by": "console:test"}
        ).seq
        path = dock.station.store.path_for(sha)
        path.unlink()
    out = dock.tmp / "archive"
    result = archive(dock.station, dock.users["auditor"], 2025, out)
    c1, c2 = result.cases
    assert (c1.case, c1.files, [p.sha256 for p in c1.purged]) == ("C-1", 1, [gone])
    assert c1.purged[0].purge_entry == purges[gone]
    bundle = out / str(c1.folder)
    assert _bundle_files(bundle) == [kept]
    report = _verify(dock, bundle)
    assert report.exit_code == 0, report.render()
    carried = [json.loads(line) for line in (bundle / "entries.jsonl").read_text().splitlines()]
    seqs = {e["seq"] for e in carried}
    assert {c1.purged[0].ingest_entry, purges[gone]} <= seqs
    assert (c2.case, c2.folder, c2.export_entry, c2.files) == ("C-2", None, None, 0)
    assert c2.purged[0].sha256 == lost
    index = json.loads((out / "index.json").read_text())
    assert f"{gone} purged (entry {purges[gone]})" in index["cases"][0]["status"]


def test_archive_refusals(dock: Dock) -> None:
    dock.ingest(os.urandom(100), case="C-1")
    with pytest.raises(InputError, match="no recordings were recorded in 1999"):
        archive(dock.station, dock.users["auditor"], 1999, dock.tmp / "a")
    with pytest.raises(InputError, match="four-digit year"):
        archive(dock.station, dock.users["auditor"], 25, dock.tmp / "a")
    full = dock.tmp / "full"
    full.mkdir()
    (full / "x").touch()
    with pytest.raises(InputError, match="already exists"):
        archive(dock.station, dock.users["auditor"], 2025, full)
    assert not (dock.tmp / "a").exists()


@given(st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=30, unique=True))
def test_folder_names_are_safe_and_unique(cases: list[str]) -> None:
    taken: set[str] = set()
    names = [folder_name(c, taken) for c in cases]
    assert len({n.lower() for n in names}) == len(names)
    for n in names:
        assert SAFE_FOLDER.fullmatch(n), n
        assert len(n) <= 48 + 1 + 64


def test_folder_names_of_lookalike_ids_differ() -> None:
    taken: set[str] = set()
    names = [folder_name(c, taken) for c in ("a/b", "a\\b", "a b", "A_B", "../a_b")]
    assert len({n.lower() for n in names}) == 5
    assert all(n.lower().startswith("a_b-") for n in names)


@given(st.text(min_size=1, max_size=100), st.integers(min_value=0, max_value=10**12))
def test_volume_labels_are_iso9660_d_characters(station: str, seq: int) -> None:
    label = volume_label(station, seq)
    assert re.fullmatch(r"[A-Z0-9_]{1,32}", label)
    assert label.endswith(str(seq)[-20:]) or len(str(seq)) > 20
