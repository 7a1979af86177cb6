"""`evidock` subcommands for the access log and playback from the command line (Art. 18, Art. 20 (3)).

``evidock access log``: who viewed, played, copied, exported or disclosed which
recordings, when and why (``access`` and ``export`` entries), for the roles
that may read it (``view_access_log``: auditors and admins).

``evidock play SHA256 --purpose TEXT``: the command-line twin of the kiosk's
player. The user's role and officer scope decide (agent.records.access.authorise),
the ``play`` entry is appended, and only then is the player started on the
stored copy (mode 0400 in the store; the player gets its path, never a copy).
Everything that can be checked without logging — the purpose, the player, the
user, the recording still being stored — is checked first, so a refused play
leaves no entry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from agent.cli._common import (
    Add,
    Subparsers,
    acting_user,
    add_user_options,
    command_group,
    open_station,
    zoned_time,
)
from agent.dock.uplink import check_sha256
from agent.records.access import (
    PLAY,
    AccessRecord,
    access_log,
    authorise,
    check_purpose,
    record_access,
    stored_path,
)
from hashing.errors import InputError
from hashing.findings import EXIT_OK

log = logging.getLogger(__name__)

PLAYER_ENV = "EVIDOCK_PLAYER"
# Tried in this order when neither --player nor $EVIDOCK_PLAYER says which.
DEFAULT_PLAYERS = (("ffplay", "-autoexit"), ("mpv",), ("vlc",), ("xdg-open",))


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    access = command_group(
        sub, "access", "the access log: who viewed, played or exported what, and why"
    )
    p = add(
        "log",
        cmd_access_log,
        "list views, playbacks, copies, exports and disclosures (auditors and admins)",
        access,
    )
    p.add_argument("--user", metavar="U", help="only what user U did")
    p.add_argument(
        "--file", type=check_sha256, metavar="SHA256", help="only accesses to this recording"
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="from this time on, e.g. 2026-03-02T00:00:00+08:00",
    )
    p.add_argument("--to", dest="end", metavar="TIME", help="before this time (exclusive)")
    p.add_argument("--json", action="store_true")
    add_user_options(p)

    p = add(
        "play",
        cmd_play,
        "play a stored recording for a stated purpose; the playback is a ledger entry first",
    )
    p.add_argument("sha256", type=check_sha256, metavar="SHA256")
    p.add_argument(
        "--purpose",
        required=True,
        metavar="TEXT",
        help="why: a case id, a disclosure request number, a spot-check draw",
    )
    p.add_argument(
        "--player",
        metavar="CMD",
        help=f"the player command line; the file's path is appended (default ${PLAYER_ENV}, "
        "else the first of ffplay -autoexit, mpv, vlc, xdg-open on PATH)",
    )
    add_user_options(p)


def _when(text: str | None, option: str) -> datetime | None:
    return None if text is None else zoned_time(text, option)


def cmd_access_log(args: argparse.Namespace) -> int:
    station = open_station(args)
    start, end = _when(args.start, "--from"), _when(args.end, "--to")
    if start is not None and end is not None and end <= start:
        raise InputError(f"--to {args.end} is not after --from {args.start}")
    acting_user(args, station, "view_access_log")
    records = access_log(station, user=args.user, sha256=args.file, start=start, end=end)
    if args.json:
        print(json.dumps([_as_json(r) for r in records], ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(render(records))
    return EXIT_OK


def _as_json(record: AccessRecord) -> dict[str, object]:
    value = asdict(record)
    value["files"] = list(record.files)
    return value


def render(records: list[AccessRecord]) -> str:
    """The log as text: one line per access, then its recordings indented."""
    if not records:
        return "no access recorded (matching the filters)\n"
    lines = [f"{'SEQ':>6}  {'TIME':<20}  {'ACTION':<8}  {'USER (ROLE)':<24}  PURPOSE"]
    for r in records:
        who = f"{r.user} ({r.role})"
        purpose = r.purpose + (f"  [to {r.recipient}]" if r.recipient else "")
        lines.append(f"{r.seq:>6}  {r.time:<20}  {r.action:<8}  {who:<24}  {purpose}")
        lines.extend(f"{'':>8}{sha}" for sha in r.files)
    return "\n".join(lines) + "\n"


def player_command(option: str | None) -> list[str]:
    """The player's argv (without the file): --player, else $EVIDOCK_PLAYER, else
    the first default player on PATH. Raises InputError if there is none."""
    for text, where in ((option, "--player"), (os.environ.get(PLAYER_ENV), f"${PLAYER_ENV}")):
        if text is None:
            continue
        try:
            argv = shlex.split(text)
        except ValueError as e:
            raise InputError(f"{where} {text!r}: {e}") from e
        if not argv:
            raise InputError(f"{where} is empty: give a player command, e.g. 'mpv'")
        if shutil.which(argv[0]) is None:
            raise InputError(f"{where}: player {argv[0]!r} not found (not on PATH, not a file)")
        return argv
    for candidate in DEFAULT_PLAYERS:
        if shutil.which(candidate[0]) is not None:
            return list(candidate)
    names = ", ".join(c[0] for c in DEFAULT_PLAYERS)
    raise InputError(
        f"no player found (none of {names} is on PATH)",
        hint=f"give --player CMD or set ${PLAYER_ENV}",
    )


def cmd_play(args: argparse.Namespace) -> int:
    sha: str = args.sha256
    purpose = check_purpose(args.purpose)
    player = player_command(args.player)
    station = open_station(args)
    user = acting_user(args, station, "play")
    authorise(station, user, PLAY, [sha])  # role, officer scope, digest in the ledger
    path = stored_path(station, sha)  # purged or missing: refused before logging
    entry = record_access(
        station, user, PLAY, [sha], purpose, detail=f"command line: {Path(player[0]).name}"
    )
    print(f"playback by {user.name} recorded as ledger entry {entry.seq}; starting {player[0]}")
    sys.stdout.flush()
    log.info("user %s plays %s with %s (entry %d)", user.name, sha, player[0], entry.seq)
    code = subprocess.run([*player, str(path)], check=False).returncode
    if code != 0:
        raise InputError(f"player {player[0]} exited with status {code} for {path}")
    return EXIT_OK
