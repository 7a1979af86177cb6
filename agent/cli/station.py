"""`evidock` commands on the station itself: create it, its key, ingest, checkpoints,
the ledger, proofs, and the offline verifier of export bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent import config
from agent.cli._common import Add, Subparsers, open_station, station_home
from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.records import retention
from hashing.audit import audit
from hashing.errors import InputError, IntegrityError, UnverifiableError
from hashing.findings import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE
from hashing.proofs_json import consistency_json, inclusion_json
from hashing.station import Station
from hashing.verify import read_held_checkpoint, read_keys, verify_bundle


def _latest_size(station: Station) -> int:
    latest = station.ledger.latest_checkpoint()
    if latest is None:
        raise InputError("no checkpoint yet", hint="run `evidock checkpoint`")
    return latest.checkpoint.size


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UnverifiableError(f"{path}: cannot read: {e}") from e


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _emit(value: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=1, ensure_ascii=False))
    else:
        sys.stdout.write(str(value))


def cmd_init(args: argparse.Namespace) -> int:
    station = Station.init(station_home(args), args.station_id, args.origin)
    print(f"station {station.station_id} created in {station.home}")
    print(f"origin: {station.origin}")
    print(f"verifier key: {station.keys.load().verifier.vkey}")
    station.close()
    return EXIT_OK


def cmd_key_show(args: argparse.Namespace) -> int:
    station = open_station(args)
    print(station.keys.load().verifier.vkey)
    return EXIT_OK


def cmd_key_rotate(args: argparse.Namespace) -> int:
    station = open_station(args)
    entry = station.rotate_key()
    print(f"key rotated at entry {entry.seq}; new verifier key:")
    print(station.keys.load().verifier.vkey)
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    station = open_station(args)
    binding = Binding(officer=args.officer, device=args.device, case=args.case)
    failed = 0
    out = sys.stdout
    for item in ingest_paths(station, [Path(p) for p in args.paths], binding):
        if isinstance(item, IngestResult):
            out.write(f"{item.sha256}  {_printable(item.source)}\n")
            out.flush()
        else:
            _, error = item
            failed += 1
            print(f"evidock: not ingested: {error}", file=sys.stderr)
            if isinstance(error, IntegrityError):
                return EXIT_INTEGRITY
    station.checkpoint()
    return EXIT_USAGE if failed else EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    station = open_station(args)
    sys.stdout.write(station.checkpoint().note)
    return EXIT_OK


def cmd_ledger_entries(args: argparse.Namespace) -> int:
    station = open_station(args)
    out = sys.stdout.buffer
    for _, raw in station.ledger.raw_entries(args.start, args.end):
        out.write(raw + b"\n")
    out.flush()
    return EXIT_OK


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    if args.platform_key:
        keys = retention.parse_platform_keys(args.platform_key, "--platform-key")
    else:
        keys = retention.platform_keys_from_config(config.load())
    station = open_station(args)
    held = _read_text(args.checkpoint) if args.checkpoint else None
    report = audit(station, held_note=held, files=not args.no_files, platform_keys=keys)
    _emit(report.as_dict() if args.json else report.render(), args.json)
    return report.exit_code


def cmd_prove_inclusion(args: argparse.Namespace) -> int:
    station = open_station(args)
    size = args.size if args.size is not None else _latest_size(station)
    if not 0 <= args.index < size:
        raise InputError(f"entry {args.index} is not in a tree of size {size}")
    proof = station.ledger.inclusion_proof(args.index, size)
    print(json.dumps(inclusion_json(args.index, size, station.ledger.root(size), proof)))
    return EXIT_OK


def cmd_prove_consistency(args: argparse.Namespace) -> int:
    station = open_station(args)
    new = args.new if args.new is not None else _latest_size(station)
    if not 0 <= args.old <= new:
        raise InputError(f"no consistency proof from size {args.old} to {new}")
    ledger = station.ledger
    proof = ledger.consistency_proof(args.old, new)
    print(
        json.dumps(consistency_json(args.old, new, ledger.root(args.old), ledger.root(new), proof))
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    try:
        # The loader the bundled verifier uses: a key text is a key, never a file.
        keys = read_keys(args.key, bundle=bundle)
        held = read_held_checkpoint(args.checkpoint, bundle=bundle) if args.checkpoint else None
    except InputError as e:
        raise UnverifiableError(str(e), hint=e.hint) from e
    report = verify_bundle(bundle, keys, held)
    _emit(report.as_dict() if args.json else report.render(), args.json)
    return report.exit_code


def register(sub: Subparsers, add: Add) -> None:
    """Add this part's subcommands to ``sub``."""
    p = add("init", cmd_init, "create a station: key, ledger, store")
    p.add_argument("--station-id", required=True, metavar="ID")
    p.add_argument(
        "--origin", metavar="ORIGIN", help="checkpoint origin (default evidock/<station-id>)"
    )

    key = sub.add_parser("key", help="the station's signing key").add_subparsers(
        dest="key_command", required=True, metavar="ACTION"
    )
    add("show", cmd_key_show, "print the station's verifier key (signed-note format)", key)
    add("rotate", cmd_key_rotate, "replace the signing key (entry signed by old and new key)", key)

    p = add("ingest", cmd_ingest, "import files or folder trees as a dock would")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--case", metavar="ID")
    p.add_argument("--officer", metavar="ID")
    p.add_argument("--device", metavar="SERIAL")

    add("checkpoint", cmd_checkpoint, "sign a checkpoint if the log grew; print the latest")

    ledger = sub.add_parser("ledger", help="read or audit the ledger").add_subparsers(
        dest="ledger_command", required=True, metavar="ACTION"
    )
    p = add("entries", cmd_ledger_entries, "print entries exactly as hashed, one per line", ledger)
    p.add_argument("--start", type=int, default=0, metavar="N")
    p.add_argument("--end", type=int, default=None, metavar="M", help="exclusive")
    p = add(
        "verify",
        cmd_ledger_verify,
        "full local audit: chain, tree, checkpoints, signatures, files",
        ledger,
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a checkpoint kept from earlier: detects rollback and fork",
    )
    p.add_argument("--no-files", action="store_true", help="skip re-reading stored files")
    p.add_argument(
        "--platform-key",
        action="append",
        metavar="KEY",
        help="the platform's receipt verifier key (or a file holding it), which purges are "
        "judged with; repeatable; default: [upload] platform_key; without one, purges are "
        "reported as purge_unverified",
    )

    prove = sub.add_parser("prove", help="print RFC 9162 proofs").add_subparsers(
        dest="prove_command", required=True, metavar="KIND"
    )
    p = add("inclusion", cmd_prove_inclusion, "inclusion proof of entry INDEX", prove)
    p.add_argument("index", type=int, metavar="INDEX")
    p.add_argument("--size", type=int, metavar="N", help="tree size (default: latest checkpoint)")
    p = add(
        "consistency", cmd_prove_consistency, "consistency proof from tree size OLD to NEW", prove
    )
    p.add_argument("old", type=int, metavar="OLD")
    p.add_argument("new", type=int, nargs="?", metavar="NEW", help="default: latest checkpoint")

    p = add("verify", cmd_verify, "verify an export bundle offline with a trusted key")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument(
        "--key",
        required=True,
        action="append",
        metavar="KEY",
        help="verifier key, or a file holding one (repeatable)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a checkpoint you already hold: detects rollback and fork",
    )
    p.add_argument("--json", action="store_true")
