"""`evidock` subcommands for exports, disclosures, write-once images and the year-end archive (Art. 15, 17, 18).

    evidock export (--case ID | --sha256 HEX... | --all) --out DIR --purpose TEXT
                   [--recipient NAME] [--iso FILE | --folder-to-burn DIR] --as U
    evidock disclose --sha256 HEX... --recipient NAME --purpose TEXT --out DIR
                   [--iso FILE | --folder-to-burn DIR] --as U
    evidock archive --year Y --out DIR [--include-uncased] [--json] --as U

Each runs as a kiosk user (``--as``, agent.cli._common.acting_user) whose role must
allow ``export`` (supervisor, auditor). ``export --recipient`` is a disclosure
of the whole selection; ``disclose`` is a disclosure of exactly the requested
recordings. Input is checked before the user's PIN or password is: a typo
costs no login attempt.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from agent.cli._common import Add, Subparsers, acting_user, add_user_options, open_station
from agent.records.access import check_purpose
from agent.records.archive import archive
from agent.records.exports import check_recipient, export, export_lines
from hashing.bundle import Selection
from hashing.entries import HEX64_RE
from hashing.errors import InputError
from hashing.findings import EXIT_OK


def _digests(values: list[str] | None) -> tuple[str, ...]:
    digests = tuple(v.lower() for v in values or ())
    bad = [v for v in digests if not HEX64_RE.fullmatch(v)]
    if bad:
        raise InputError(f"--sha256 {bad[0]!r}: give the recording's 64-hex-digit SHA-256")
    return digests


def _media(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    return (
        Path(args.iso) if args.iso else None,
        Path(args.folder_to_burn) if args.folder_to_burn else None,
    )


def _export(args: argparse.Namespace, selection: Selection, recipient: str | None) -> int:
    purpose = check_purpose(args.purpose)  # checked before the login: a typo costs no try
    image, burn = _media(args)
    station = open_station(args)
    try:
        user = acting_user(args, station, "export")
        result = export(
            station,
            user,
            selection,
            Path(args.out),
            purpose,
            recipient=recipient,
            image=image,
            burn=burn,
        )
    finally:
        station.close()
    for line in export_lines(result):
        print(line)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    selection = Selection(case=args.case, sha256=_digests(args.sha256), all=args.all)
    recipient = None if args.recipient is None else check_recipient(args.recipient)
    return _export(args, selection, recipient)


def cmd_disclose(args: argparse.Namespace) -> int:
    """A disclosure (Art. 18): only the requested recordings, to a named recipient."""
    return _export(args, Selection(sha256=_digests(args.sha256)), check_recipient(args.recipient))


def cmd_archive(args: argparse.Namespace) -> int:
    station = open_station(args)
    try:
        user = acting_user(args, station, "export")
        result = archive(
            station, user, args.year, Path(args.out), include_uncased=args.include_uncased
        )
    finally:
        station.close()
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(result.out),
                    "year": result.year,
                    "uncased_not_archived": result.uncased_left_out,
                    "cases": [asdict(c) for c in result.cases],
                },
                ensure_ascii=False,
            )
        )
        return EXIT_OK
    for c in result.cases:
        name = "(no case)" if c.case is None else c.case
        where = (
            f"{c.folder}/: {c.files} recording(s), {c.bytes} bytes, export entry {c.export_entry}"
            if c.folder
            else "no bundle"
        )
        purged = f"; {len(c.purged)} purged" if c.purged else ""
        print(f"{name!r}: {where}{purged}")
    if result.uncased_left_out:
        print(
            f"{result.uncased_left_out} recording(s) of {result.year} bound to no case were "
            "not archived (--include-uncased archives them)"
        )
    print(f"index: {result.out / 'index.html'} ({len(result.cases)} case(s))")
    return EXIT_OK


def _media_options(p: argparse.ArgumentParser) -> None:
    media = p.add_mutually_exclusive_group()
    media.add_argument(
        "--iso",
        metavar="FILE",
        help="also write an ISO 9660 image of the bundle (Rock Ridge, Joliet) for write-once "
        "media; its SHA-256 is printed and recorded",
    )
    media.add_argument(
        "--folder-to-burn",
        metavar="DIR",
        help="also write a read-only copy of the bundle, ready for a burning program",
    )


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    p = add(
        "export",
        cmd_export,
        "write a self-contained, verifiable bundle, as a user, for a stated purpose",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--case", metavar="ID")
    which.add_argument("--sha256", nargs="+", metavar="HEX")
    which.add_argument("--all", action="store_true")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the bundle")
    p.add_argument(
        "--purpose",
        required=True,
        metavar="TEXT",
        help="why: a case id, a court order, a disclosure request number",
    )
    p.add_argument(
        "--recipient",
        metavar="NAME",
        help="makes this a disclosure to NAME: the bundle carries a visible notice",
    )
    _media_options(p)
    add_user_options(p)

    p = add(
        "disclose",
        cmd_disclose,
        "export only the requested recordings to a recipient, with a visible notice (Art. 18)",
    )
    p.add_argument("--sha256", nargs="+", required=True, metavar="HEX")
    p.add_argument("--recipient", required=True, metavar="NAME", help="who receives the copy")
    p.add_argument(
        "--purpose", required=True, metavar="TEXT", help="e.g. the disclosure request number"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the bundle")
    _media_options(p)
    add_user_options(p)

    p = add(
        "archive",
        cmd_archive,
        "year-end archive: one verifiable bundle per case of the year, with an index (Art. 15-16)",
    )
    p.add_argument("--year", required=True, type=int, metavar="Y")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the archive")
    p.add_argument(
        "--include-uncased",
        action="store_true",
        help="also archive the year's recordings bound to no case, in _uncased/",
    )
    p.add_argument("--json", action="store_true")
    add_user_options(p)
