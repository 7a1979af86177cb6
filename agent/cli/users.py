"""`evidock user` and `evidock config`: the kiosk's users and the configuration file."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from agent import config
from agent.cli._common import Add, Subparsers, open_station
from agent.dock import wiring
from agent.users.accounts import Users, check_account
from agent.users.console import console_actor
from agent.users.roles import ROLES
from hashing.errors import InputError
from hashing.findings import EXIT_OK, EXIT_USAGE


def _new_secret(args: argparse.Namespace) -> str:
    """From --password-file (0600), else asked twice at the terminal; never from argv."""
    if args.password_file:
        return config.read_secret(Path(args.password_file), "--password-file")
    first = getpass.getpass("PIN or password: ")
    if getpass.getpass("the same again: ") != first:
        raise InputError("the two entries differ; nothing was changed")
    return first


def _user_store(args: argparse.Namespace) -> Users:
    return Users(open_station(args))


def cmd_user_add(args: argparse.Namespace) -> int:
    check_account(args.name, args.role, args.officer)  # before asking for a secret
    store = _user_store(args)
    try:
        if store.get(args.name) is not None:
            raise InputError(f"user {args.name!r} exists; user names are never reused")
        user = store.add(
            args.name, args.role, _new_secret(args), officer=args.officer, by=console_actor()
        )
    finally:
        store.close()
    bound = f", officer id {user.officer}" if user.officer else ""
    print(f"user {user.name} added as {user.role}{bound}")
    return EXIT_OK


def cmd_user_passwd(args: argparse.Namespace) -> int:
    store = _user_store(args)
    try:
        if store.get(args.name) is None:
            raise InputError(f"no user {args.name!r}", hint="see `evidock user list`")
        store.passwd(args.name, _new_secret(args), by=console_actor())
    finally:
        store.close()
    print(f"new PIN or password set for {args.name}; their open sessions have ended")
    return EXIT_OK


def cmd_user_disable(args: argparse.Namespace) -> int:
    store = _user_store(args)
    try:
        user = store.get(args.name)
        if user is None:
            raise InputError(f"no user {args.name!r}", hint="see `evidock user list`")
        if user.disabled:
            print(f"user {args.name} is already disabled")
            return EXIT_OK
        store.disable(args.name, by=console_actor())
    finally:
        store.close()
    print(f"user {args.name} disabled; their open sessions have ended")
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    store = _user_store(args)
    try:
        rows = store.list()
    finally:
        store.close()
    if args.json:
        print(json.dumps([u.__dict__ for u in rows], ensure_ascii=False, indent=1))
        return EXIT_OK
    print(f"{'NAME':<20} {'ROLE':<11} {'OFFICER':<12} STATE")
    for u in rows:
        state = "disabled" if u.disabled else "active"
        print(f"{u.name:<20} {u.role:<11} {u.officer or '-':<12} {state}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else config.default_path()
    if path is None:
        print(
            f"no configuration file ({config.SYSTEM_CONFIG} does not exist and "
            "EVIDOCK_CONFIG is not set): the built-in defaults apply"
        )
        return EXIT_OK
    problems = wiring.check_file(path)
    for problem in problems:
        print(problem)
    if problems:
        print(f"evidock: {path}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok")
    return EXIT_OK


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    file_help = "read the PIN or password from this file (mode 0600) instead of asking"
    user = sub.add_parser("user", help="the kiosk's users and their roles").add_subparsers(
        dest="user_command", required=True, metavar="ACTION"
    )
    p = add("add", cmd_user_add, "add a user; asks for their PIN or password", user)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument(
        "--officer",
        metavar="ID",
        help="the officer id the device registry binds recorders to (required for officers)",
    )
    p.add_argument("--password-file", metavar="FILE", help=file_help)
    p = add("passwd", cmd_user_passwd, "set a user's PIN or password; ends their sessions", user)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--password-file", metavar="FILE", help=file_help)
    p = add("disable", cmd_user_disable, "disable a user for good; ends their sessions", user)
    p.add_argument("name", metavar="NAME")
    p = add("list", cmd_user_list, "list users, their roles and officer ids", user)
    p.add_argument("--json", action="store_true")

    cfg = sub.add_parser("config", help="the configuration file").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    p = add(
        "check",
        cmd_config_check,
        "report every unknown section or key and every bad value, with its line",
        cfg,
    )
    p.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help=f"the file to check (default: $EVIDOCK_CONFIG, else {config.SYSTEM_CONFIG})",
    )
