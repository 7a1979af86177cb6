"""The `evidock` command line: one module per command group, each with a
``register(sub, add)``; this module builds the parser from them, sets up logging
and turns errors into exit codes.

Exit codes (style.md 10; hashing.findings): 0 ok or verified, 1 integrity
failure found, 2 usage or input error, 3 could not verify, 4 transient (nothing
was recorded as done; try again: a recorder pulled out, a broker gone).
Messages say what and where, then what to do (the error's ``hint``); a
traceback only with --verbose.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from agent.cli import (
    access,
    demo,
    dock,
    exports,
    holds,
    registry,
    reports,
    retention,
    spotcheck,
    station,
    upload,
    users,
)
from agent.cli._common import Handler, adder
from hashing.errors import EvidockError, IntegrityError, TransientError, UnverifiableError
from hashing.findings import (
    EXIT_INTEGRITY,
    EXIT_OK,
    EXIT_TRANSIENT,
    EXIT_UNVERIFIABLE,
    EXIT_USAGE,
)
from hashing.station import DEFAULT_HOME

log = logging.getLogger(__name__)

# The command groups, in the order `evidock --help` lists them.
GROUPS = (
    station,
    registry,
    dock,
    upload,
    demo,
    users,
    # Records management under the regulation (Art. 15-20).
    retention,
    holds,
    exports,
    access,
    spotcheck,
    reports,
)
# The project's own loggers: the command line configures these, never the root
# logger, so a library's logging (paho, uvicorn, asyncio) keeps its own settings.
LOGGERS = ("agent", "drivers", "hashing", "uploader", "receiver")


def build_parser() -> argparse.ArgumentParser:
    """`evidock` and every subcommand, with the options all of them share."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"station folder (else env EVIDOCK_HOME, else [station] home in the config file, else {DEFAULT_HOME})",
    )
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log details and show tracebacks",
    )
    parser = argparse.ArgumentParser(
        prog="evidock",
        description="Docking-station evidence ledger: ingest, prove, export and verify recordings.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = adder(common, sub)
    for group in GROUPS:
        group.register(sub, add)
    return parser


_PLAIN = logging.Formatter("%(levelname)s %(name)s: %(message)s")
# sd-daemon(3) priority prefixes: journald files each stderr line under its level.
_SD_LEVEL = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class JournalFormatter(logging.Formatter):
    """Under systemd (JOURNAL_STREAM set) each line starts with ``<priority>`` so
    `journalctl -p warning` filters; a multi-line message (a traceback) keeps its
    priority on every line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_SD_LEVEL.get(record.levelno, 2 if record.levelno > 40 else 5)}>"
        text = _PLAIN.format(record)
        return "\n".join(prefix + line for line in text.splitlines())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler main() installs; told apart so a second main() replaces it."""


def setup_logging(verbose: bool) -> None:
    """Log the project's own records to stderr (journald under systemd): warnings
    and worse, everything from INFO with --verbose."""
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if os.environ.get("JOURNAL_STREAM") else _PLAIN)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `evidock` command; returns its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    for name in ("home", "verbose"):
        if not hasattr(args, name):
            setattr(args, name, None if name == "home" else False)
    setup_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UnverifiableError as e:
        return _fail(args, e, EXIT_UNVERIFIABLE)
    except IntegrityError as e:
        return _fail(args, e, EXIT_INTEGRITY)
    except TransientError as e:
        return _fail(args, e, EXIT_TRANSIENT)
    except EvidockError as e:
        return _fail(args, e, EXIT_USAGE)
    except BrokenPipeError:
        return EXIT_OK


def _fail(args: argparse.Namespace, error: EvidockError, code: int) -> int:
    if args.verbose:
        log.exception("%s", error)
    print(f"evidock: {error}", file=sys.stderr)
    if error.hint:
        print(f"evidock: what to do: {error.hint}", file=sys.stderr)
    return code
