"""Command-line glue shared by the `evidock` subcommands (agent.cli).

Each module of this package adds the subcommands of one part of the regulation
(retention, holds, access, spot checks, reports, exports) with ``register``;
the logic lives in the agent module of the same name, so the kiosk and the
command line do the same thing.

Commands that act on evidence for a person (hold, export, play, spot checks,
the access log, reports) run as a kiosk user: ``--as NAME`` with the PIN or
password from ``--password-file`` (mode 0600) or asked at the terminal. The
role table (agent.users.roles) decides, exactly as on the kiosk page, and the ledger
entry names that user, not the Unix account (Art. 18: who, when, what, why).
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeAlias

from agent import config
from agent.records import index
from agent.users.accounts import LoginError, User, Users
from agent.users.console import console_actor
from agent.users.roles import require
from hashing.errors import InputError
from hashing.station import Station

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Add(Protocol):
    """agent.cli's ``add``: a subcommand with the common options and a handler."""

    def __call__(
        self, name: str, handler: Handler, help_text: str, parent: Subparsers = ...
    ) -> argparse.ArgumentParser: ...


def adder(common: argparse.ArgumentParser, top: Subparsers) -> Add:
    """The ``add`` each part's ``register`` is given: a subcommand of ``parent``
    (default: the top level) with the common options, running ``handler``."""

    def add(
        name: str, handler: Handler, help_text: str, parent: Subparsers = top
    ) -> argparse.ArgumentParser:
        # No abbreviations: `--password SECRET` must not pass for `--password-file`.
        p = parent.add_parser(
            name, parents=[common], help=help_text, description=help_text, allow_abbrev=False
        )
        p.set_defaults(handler=handler)
        return p

    return add


def command_group(
    sub: Subparsers, name: str, help_text: str, metavar: str = "ACTION"
) -> Subparsers:
    """A command that only groups others: `evidock NAME ACTION …`."""
    return sub.add_parser(name, help=help_text).add_subparsers(
        dest=f"{name}_command", required=True, metavar=metavar
    )


def station_home(args: argparse.Namespace) -> Path:
    """--home, else $EVIDOCK_HOME, else the config file's [station] home."""
    if getattr(args, "home", None):
        return Path(args.home)
    if os.environ.get("EVIDOCK_HOME"):
        return Path(os.environ["EVIDOCK_HOME"])
    return config.load().home


def open_station(args: argparse.Namespace) -> Station:
    """The station of --home (station_home)."""
    return Station.open(station_home(args))


def open_indexed_station(args: argparse.Namespace) -> Station:
    """The station of --home, its records index (agent.records.index) made current."""
    station = open_station(args)
    index.ensure(station)
    return station


def add_user_options(p: argparse.ArgumentParser) -> None:
    """--as and --password-file, for commands that act as a kiosk user. (``--as``,
    not ``--user``: `evidock access log --user U` filters by user.)"""
    p.add_argument(
        "--as",
        dest="acting_as",
        required=True,
        metavar="NAME",
        help="the kiosk user acting (their role decides; the ledger entry names them)",
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="read that user's PIN or password from this file (mode 0600) instead of asking",
    )


def acting_user(args: argparse.Namespace, station: Station, action: str) -> User:
    """Log ``args.acting_as`` in (the same checks, slow-down and lockout as the kiosk)
    and require ``action`` of their role. Raises LoginError or
    PermissionDeniedError (both InputError: exit code 2)."""
    name: str = args.acting_as
    if args.password_file:
        secret = config.read_secret(Path(args.password_file), "--password-file")
    else:
        secret = getpass.getpass(f"PIN or password of {name}: ")
    users = Users(station)
    try:
        session = users.login(name, secret, source=console_actor())
        users.logout(session.token)
        user = users.get(name)
    finally:
        users.close()
    if user is None:  # disabled or removed between the two reads
        raise LoginError("login failed")
    require(user, action)
    return user


def period_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    """--from, --to and --tz: a period in days of a zone (reports, spot checks)."""
    p.add_argument(
        "--from",
        dest="start",
        required=required,
        metavar="TIME",
        help="a date (its local day's start) or an RFC 3339 time, e.g. 2024-05-01T08:00:00+08:00",
    )
    p.add_argument(
        "--to",
        dest="end",
        required=required,
        metavar="TIME",
        help="exclusive end time, or a date (that whole day included)",
    )
    p.add_argument(
        "--tz",
        metavar="OFFSET",
        help="zone of dates and of times without one, e.g. +08:00 (default: [offload] utc_offset_minutes)",
    )


def zoned_time(text: str, option: str) -> datetime:
    """An RFC 3339 time with its zone, as an option gives it. Raises InputError
    naming the option when it is not a time or lacks the zone (a time without
    one would silently mean the machine's)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InputError(
            f"{option} {text!r}: not a time", hint="use e.g. 2026-03-02T08:00:00+08:00"
        ) from e
    if when.tzinfo is None:
        raise InputError(f"{option} {text!r}: give the time zone, e.g. +08:00 or Z")
    return when
