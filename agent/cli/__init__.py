"""The `evidock` command line (issue contract: commands, options and exit codes).

Exit codes (style.md 8): 0 ok/verified, 1 integrity failure found, 2 usage or
input error, 3 could not verify. Messages say what, where and what to do; a
traceback only with --verbose.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import config
from agent.cli import access as access_commands
from agent.cli import exports as export_commands
from agent.cli import holds as hold_commands
from agent.cli import reports as report_commands
from agent.cli import retention as retention_commands
from agent.cli import spotcheck as spotcheck_commands
from agent.cli._common import console_actor, open_station, station_home, zoned_time
from agent.demo.tour import run_demo
from agent.dock import uplink, wiring
from agent.dock.daemon import STATUS_FILE
from agent.offload.ingest import Binding, IngestResult, ingest_paths
from agent.offload.session import OffloadSession
from agent.records import index as schema
from agent.records import registry as records
from agent.users.accounts import Users, check_account
from agent.users.roles import ROLES
from drivers.mounted import MountedDriver, mounted_device
from hashing._fsutil import pid_alive
from hashing.audit import audit
from hashing.errors import ConfigError, EvidockError, InputError, IntegrityError
from hashing.findings import EXIT_INTEGRITY, EXIT_OK, EXIT_UNVERIFIABLE, EXIT_USAGE
from hashing.proofs_json import consistency_json, inclusion_json
from hashing.station import DEFAULT_HOME, Station
from hashing.verify import read_held_checkpoint, read_keys, verify_bundle

log = logging.getLogger("evidock")

Handler = Callable[[argparse.Namespace], int]


def _home(args: argparse.Namespace) -> Path:
    return station_home(args)


def _open(args: argparse.Namespace) -> Station:
    return open_station(args)


def cmd_init(args: argparse.Namespace) -> int:
    station = Station.init(_home(args), args.station_id, args.origin)
    print(f"station {station.station_id} created in {station.home}")
    print(f"origin: {station.origin}")
    print(f"verifier key: {station.keys.load().verifier.vkey}")
    station.close()
    return EXIT_OK


def cmd_key_show(args: argparse.Namespace) -> int:
    station = _open(args)
    print(station.keys.load().verifier.vkey)
    return EXIT_OK


def cmd_key_rotate(args: argparse.Namespace) -> int:
    station = _open(args)
    entry = station.rotate_key()
    print(f"key rotated at entry {entry.seq}; new verifier key:")
    print(station.keys.load().verifier.vkey)
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    station = _open(args)
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


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cmd_checkpoint(args: argparse.Namespace) -> int:
    station = _open(args)
    sys.stdout.write(station.checkpoint().note)
    return EXIT_OK


def cmd_ledger_entries(args: argparse.Namespace) -> int:
    station = _open(args)
    out = sys.stdout.buffer
    for _, raw in station.ledger.raw_entries(args.start, args.end):
        out.write(raw + b"\n")
    out.flush()
    return EXIT_OK


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from agent.records import retention  # noqa: PLC0415 - the receipt keys, for this command only

    if args.platform_key:
        keys = retention.parse_platform_keys(args.platform_key, "--platform-key")
    else:
        keys = retention.platform_keys_from_config(config.load())
    station = _open(args)
    held = _read_text(args.checkpoint) if args.checkpoint else None
    report = audit(station, held_note=held, files=not args.no_files, platform_keys=keys)
    _emit(report.as_dict() if args.json else report.render(), args.json)
    return report.exit_code


def _latest_size(station: Station) -> int:
    latest = station.ledger.latest_checkpoint()
    if latest is None:
        raise InputError("no checkpoint yet; run `evidock checkpoint`")
    return latest.checkpoint.size


def cmd_prove_inclusion(args: argparse.Namespace) -> int:
    station = _open(args)
    size = args.size if args.size is not None else _latest_size(station)
    if not 0 <= args.index < size:
        raise InputError(f"entry {args.index} is not in a tree of size {size}")
    proof = station.ledger.inclusion_proof(args.index, size)
    print(json.dumps(inclusion_json(args.index, size, station.ledger.root(size), proof)))
    return EXIT_OK


def cmd_prove_consistency(args: argparse.Namespace) -> int:
    station = _open(args)
    new = args.new if args.new is not None else _latest_size(station)
    if not 0 <= args.old <= new:
        raise InputError(f"no consistency proof from size {args.old} to {new}")
    ledger = station.ledger
    proof = ledger.consistency_proof(args.old, new)
    print(
        json.dumps(consistency_json(args.old, new, ledger.root(args.old), ledger.root(new), proof))
    )
    return EXIT_OK


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UnverifiableError(f"{path}: cannot read: {e}") from e


class UnverifiableError(EvidockError):
    """Verification cannot start: a key or checkpoint the auditor named is unusable."""


def cmd_verify(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    try:
        # The loader the bundled verifier uses: a key text is a key, never a file.
        keys = read_keys(args.key, bundle=bundle)
        held = read_held_checkpoint(args.checkpoint, bundle=bundle) if args.checkpoint else None
    except InputError as e:
        raise UnverifiableError(str(e)) from e
    report = verify_bundle(bundle, keys, held)
    _emit(report.as_dict() if args.json else report.render(), args.json)
    return report.exit_code


def _station_with_records(args: argparse.Namespace) -> Station:
    station = _open(args)
    schema.ensure(station)
    return station


def cmd_device_assign(args: argparse.Namespace) -> int:
    station = _station_with_records(args)
    officer = None if args.unassign else args.officer
    if officer is None and not args.unassign:
        raise InputError("give --officer ID, or --unassign")
    entry = records.assign_device(station, args.serial, officer, model=args.model, notes=args.notes)
    who = officer or "nobody"
    print(f"device {args.serial} assigned to {who} (entry {entry.seq})")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace) -> int:
    station = _station_with_records(args)
    rows = records.devices(station)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], ensure_ascii=False, indent=1))
        return EXIT_OK
    print(f"{'SERIAL':<20} {'OFFICER':<12} {'MODEL':<16} NOTES")
    for r in rows:
        print(f"{r.serial:<20} {r.officer or '-':<12} {r.model or '-':<16} {r.notes or ''}")
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    station = _station_with_records(args)
    files = list(args.sha256 or [])
    if args.device:
        if not (args.start and args.end):
            raise InputError("--device needs --from and --to")
        files += records.files_by_device(
            station, args.device, zoned_time(args.start, "--from"), zoned_time(args.end, "--to")
        )
        if not files:
            raise InputError(f"no recordings of {args.device} between {args.start} and {args.end}")
    entry = records.tag(
        station,
        files,
        case=args.case,
        kind=args.kind,
        retention=args.retention,
        reason=args.reason,
        case_type=args.case_type,
    )
    print(f"tagged {len(entry.body['files'])} recording(s) to case {args.case} (entry {entry.seq})")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    station = _station_with_records(args)
    info = records.show(station, args.sha256)
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=1))
        return EXIT_OK
    media = info.get("media") or {}
    lines = [
        f"recording   {info['sha256']}",
        f"size        {info['size']} bytes, chunk root {info['chunk_root']}",
        f"entry       {info['entry']} (ingested {info['ingested']})",
        f"device      {info.get('device') or '-'}    officer {info.get('officer') or '-'}",
        f"source      {info.get('source_path')}  (modified {info.get('source_mtime')})",
    ]
    if media:
        lines.append(
            "media       "
            + ", ".join(
                f"{k} {media.get(k)}"
                for k in (
                    "kind",
                    "duration_ms",
                    "fps",
                    "frames",
                    "width",
                    "height",
                    "codec",
                    "decodes",
                )
                if k in media
            )
        )
    for t in info["tags"]:
        lines.append(
            f"tag         case {t['case']}, {t['kind']}, {t['retention']} (entry {t['seq']})"
        )
    for a in info["anomalies"]:
        lines.append(f"anomaly     {a['kind']}: {a['detail']} (entry {a['seq']})")
    for w in info["wiped_from_device"]:
        lines.append(f"wiped       from the recorder (entry {w['seq']})")
    lines.append(f"upload      {info['upload']}")
    ret = info.get("retention")
    if ret is not None:
        cases = ", ".join(ret["cases"]) or "no case"
        lines.append(f"retention   {ret['class']} ({cases}); {ret['why']}")
        lines.append(
            f"keep until  {ret['keep_until'] or 'never purged'}"
            f"    earliest purge {ret['purge_after'] or 'never'}"
        )
        if ret["purged"] is not None:
            lawful = "lawful" if ret["purge_lawful"] else "NOT LAWFUL"
            left = "; the file is still stored" if ret["stored"] else ""
            lines.append(f"purged      entry {ret['purged']} ({lawful}){left}")
        else:
            lines.append(f"purge       {ret['state']}: {'; '.join(ret['blockers']) or 'due'}")
    for h in info.get("holds", []):
        what = f"case {h['case']}" if h["case"] is not None else "this recording"
        state = f"released (entry {h['released']})" if h["released"] is not None else "in force"
        lines.append(f"hold        entry {h['seq']}: {what}, {h['reason']}, by {h['by']}; {state}")
    print("\n".join(lines))
    return EXIT_OK


def cmd_offload(args: argparse.Namespace) -> int:
    station = _station_with_records(args)
    cfg = config.load()
    mountpoint = Path(args.mountpoint)
    session = OffloadSession(
        station,
        MountedDriver(),
        mounted_device(mountpoint, args.device),
        wiring.offload_policy(cfg),
    )
    summary = session.run()
    status = summary.status
    result = {
        "state": status.state,
        "serial": status.serial,
        "officer": status.officer,
        "files": status.files_total,
        "new": len(summary.new),
        "skipped": summary.skipped,
        "refused": summary.refused,
        "failed": summary.failed,
        "bytes": status.bytes_total,
        "anomalies": status.anomalies,
        "errors": status.errors,
        "wiped": status.wiped,
        "safe_to_unplug": status.safe_to_unplug,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        print(
            f"{status.serial}: {status.state}; {status.files_total} files ({len(summary.new)} new, "
            f"{summary.skipped} already in the ledger, {summary.refused} refused, {summary.failed} failed), "
            f"{status.bytes_total} bytes, {len(status.anomalies)} anomalies"
        )
        for line in status.anomalies:
            print(f"  anomaly: {line}")
        for line in status.errors:
            print(f"  error: {line}")
        print(
            "safe to unplug (可以拔出)" if status.safe_to_unplug else "do not unplug yet (请勿拔出)"
        )
    return summary.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    home = _home(args)
    path = home / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no status; is `evidock agent` running for {home}?") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable status: {e}") from e
    age = time.time() - float(status.get("updated", 0))
    alive = pid_alive(int(status.get("pid", 0))) and age < 30
    if args.json:
        print(json.dumps(status | {"running": alive}, ensure_ascii=False, indent=1))
        return EXIT_OK if alive else EXIT_USAGE
    print(
        f"station {status.get('station')}: agent {'running' if alive else 'NOT running'} (status {age:.0f} s old)"
    )
    for s in status.get("sessions", []):
        pct = 100 * s["bytes_done"] // s["bytes_total"] if s["bytes_total"] else 100
        unplug = "可以拔出 safe to unplug" if s["safe_to_unplug"] else "请勿拔出 do not unplug"
        print(
            f"  {s.get('serial') or s['slot']}  officer {s.get('officer') or 'unassigned'}  {s['state']}  "
            f"{s['files_done']}/{s['files_total']} files  {pct}%  {s['speed_bps'] >> 20} MiB/s  {unplug}"
        )
        for a in s.get("anomalies", []):
            print(f"      anomaly: {a}")
        for err in s.get("errors", []):
            print(f"      error: {err}")
    if not status.get("sessions"):
        print("  no recorder docked")
    upload = status.get("upload")
    if isinstance(upload, dict):
        print(uplink.describe_upload(upload))
    return EXIT_OK if alive else EXIT_USAGE


def cmd_agent(args: argparse.Namespace) -> int:
    station = _station_with_records(args)
    cfg = config.load()
    daemon = wiring.build_daemon(station, cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kiosk = wiring.start_kiosk(station, cfg, daemon)  # before READY=1; None: no screen
    daemon.start()
    log.warning("evidock agent running for station %s in %s", station.station_id, station.home)
    try:
        daemon.serve(stop)
    finally:
        if kiosk is not None:
            kiosk.stop()
    return EXIT_OK


def _with_station(handler: uplink.StationHandler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        station = _open(args)
        try:
            return handler(station, config.load(), args)
        finally:
            station.close()

    return run


def cmd_receive(args: argparse.Namespace) -> int:
    return uplink.cmd_receive(config.load(Path(args.config) if args.config else None), args)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(_home(args), Path(args.out) if args.out else None, serve=args.serve)


# -- users and the configuration file (issue 5) ------------------------------------


def _console_actor() -> str:
    return console_actor()


def _new_secret(args: argparse.Namespace) -> str:
    """From --password-file (0600), else asked twice at the terminal; never from argv."""
    if args.password_file:
        return config.read_secret(Path(args.password_file), "--password-file")
    first = getpass.getpass("PIN or password: ")
    if getpass.getpass("the same again: ") != first:
        raise InputError("the two entries differ; nothing was changed")
    return first


def _user_store(args: argparse.Namespace) -> Users:
    return Users(_open(args))


def cmd_user_add(args: argparse.Namespace) -> int:
    check_account(args.name, args.role, args.officer)  # before asking for a secret
    store = _user_store(args)
    try:
        if store.get(args.name) is not None:
            raise InputError(f"user {args.name!r} exists; user names are never reused")
        user = store.add(
            args.name, args.role, _new_secret(args), officer=args.officer, by=_console_actor()
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
            raise InputError(f"no user {args.name!r}; see `evidock user list`")
        store.passwd(args.name, _new_secret(args), by=_console_actor())
    finally:
        store.close()
    print(f"new PIN or password set for {args.name}; their open sessions have ended")
    return EXIT_OK


def cmd_user_disable(args: argparse.Namespace) -> int:
    store = _user_store(args)
    try:
        user = store.get(args.name)
        if user is None:
            raise InputError(f"no user {args.name!r}; see `evidock user list`")
        if user.disabled:
            print(f"user {args.name} is already disabled")
            return EXIT_OK
        store.disable(args.name, by=_console_actor())
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
    problems = config.check(path)
    for problem in problems:
        print(problem)
    if problems:
        print(f"evidock: {path}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok")
    return EXIT_OK


def _user_and_config_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    def add(
        name: str,
        handler: Handler,
        help_text: str,
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        # No abbreviations: `--password SECRET` must not pass for `--password-file`.
        p = parent.add_parser(
            name, parents=[common], help=help_text, description=help_text, allow_abbrev=False
        )
        p.set_defaults(handler=handler)
        return p

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


def _emit(value: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=1, ensure_ascii=False))
    else:
        sys.stdout.write(str(value))


def build_parser() -> argparse.ArgumentParser:
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

    def add(
        name: str,
        handler: Handler,
        help_text: str,
        parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

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

    device = sub.add_parser("device", help="the registry of recorders").add_subparsers(
        dest="device_command", required=True, metavar="ACTION"
    )
    p = add("assign", cmd_device_assign, "bind a recorder (serial) to an officer", device)
    p.add_argument("serial", metavar="SERIAL")
    p.add_argument("--officer", metavar="ID")
    p.add_argument("--unassign", action="store_true", help="bind it to nobody")
    p.add_argument("--model", metavar="MODEL")
    p.add_argument("--notes", metavar="TEXT")
    p = add("list", cmd_device_list, "list registered recorders", device)
    p.add_argument("--json", action="store_true")

    p = add("tag", cmd_tag, "bind recordings to a case, an act kind and a retention class")
    p.add_argument("sha256", nargs="*", metavar="SHA256")
    p.add_argument(
        "--device",
        metavar="SERIAL",
        help="with --from/--to: that recorder's recordings in the period",
    )
    p.add_argument("--from", dest="start", metavar="TIME", help="e.g. 2026-11-27T08:00:00+08:00")
    p.add_argument("--to", dest="end", metavar="TIME")
    p.add_argument("--case", required=True, metavar="ID")
    p.add_argument("--kind", required=True, choices=records.ACT_KINDS)
    p.add_argument("--retention", default="routine", choices=records.RETENTION_CLASSES)
    p.add_argument("--reason", metavar="TEXT", help="why (required for evidence and long-term)")
    p.add_argument(
        "--case-type",
        metavar="TYPE",
        help="the kind of case file, for how long evidence is kept ([retention] evidence_days)",
    )

    p = add("show", cmd_show, "everything known of one recording")
    p.add_argument("sha256", metavar="SHA256")
    p.add_argument("--json", action="store_true")

    p = add("offload", cmd_offload, "run one offload session on a recorder that is already mounted")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--device", metavar="SERIAL", help="the recorder's serial (default: the folder name)"
    )
    p.add_argument("--json", action="store_true")

    p = add("status", cmd_status, "what the running agent is doing: each docked recorder")
    p.add_argument("--json", action="store_true")

    add("agent", cmd_agent, "run the dock daemon in the foreground (SIGTERM stops it cleanly)")

    upload = sub.add_parser("upload", help="the outbox of uploads to the platform").add_subparsers(
        dest="upload_command", required=True, metavar="ACTION"
    )
    p = add(
        "status",
        _with_station(uplink.cmd_upload_status),
        "the broker link and what is queued, sending, awaiting a receipt or receipted",
        upload,
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="transfers to list")
    p = add(
        "retry",
        _with_station(uplink.cmd_upload_retry),
        "send one recording again from the start (after the platform refused it)",
        upload,
    )
    p.add_argument("sha256", type=uplink.check_sha256, metavar="SHA256")
    p = add(
        "drain",
        _with_station(uplink.cmd_upload_drain),
        "send everything queued and wait for the receipts (exit 0 when all are receipted)",
        upload,
    )
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S")

    p = add(
        "receive",
        cmd_receive,
        "platform side: take uploads from the broker, store them, answer with signed receipts",
    )
    p.add_argument("--config", metavar="FILE", help="receiver configuration (TOML)")
    p.add_argument("--receiver-home", metavar="DIR", help="state folder (default [receiver] home)")
    p.add_argument(
        "--show-key",
        action="store_true",
        help="print the receipt verifier key for the docks' [upload] platform_key, then exit",
    )

    p = add(
        "demo", cmd_demo, "make sample footage, ingest, export and verify it, saying what happens"
    )
    p.add_argument(
        "--out", metavar="DIR", help="where to write the bundle (default HOME/../demo-export)"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="afterwards keep the demo dock and its kiosk page running until Ctrl-C",
    )
    _user_and_config_parsers(sub, common)
    # Records management under the regulation (Art. 15-20), one module each.
    for part in (
        retention_commands,
        hold_commands,
        export_commands,
        access_commands,
        spotcheck_commands,
        report_commands,
    ):
        part.register(sub, add)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    for name in ("home", "verbose"):
        if not hasattr(args, name):
            setattr(args, name, None if name == "home" else False)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JournalFormatter() if os.environ.get("JOURNAL_STREAM") else _PLAIN)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[stream])
    handler: Handler = args.handler
    try:
        return handler(args)
    except UnverifiableError as e:
        return _fail(args, e, EXIT_UNVERIFIABLE)
    except IntegrityError as e:
        return _fail(args, e, EXIT_INTEGRITY)
    except (ConfigError, InputError, EvidockError) as e:
        return _fail(args, e, EXIT_USAGE)
    except BrokenPipeError:
        return EXIT_OK


def _fail(args: argparse.Namespace, error: Exception, code: int) -> int:
    if args.verbose:
        log.exception("%s", error)
    print(f"evidock: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
