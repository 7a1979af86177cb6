"""A test bed: mosquitto (TLS, passwords, ACL) + the emqx_ft front + optionally moto.

    from tests.emqx_ft.bed import EmqxBed

    with EmqxBed(tmp_path, exporter="local") as bed:
        client.tls_set(ca_certs=bed.ca_file)
        client.username_pw_set("dock-01", bed.passwords["dock-01"])
        client.connect(bed.host, bed.port)        # the front: EMQX's MQTT port
        ...
        bed.export_root                            # local exports, or bed.s3 for S3

Every part is a real process on 127.0.0.1: mosquitto (agent.demo.localbroker.Broker,
``max_packet_size`` EMQX's default 1 MB, so the CONNACK the client sees announces it),
the front (``python -m tests.emqx_ft``, its own server certificate from the same test
CA) and, for ``exporter="s3"``, moto's S3 server (``python -m moto.server``).
moto was picked over s3rver (npm) because boto3, the S3 client the receipt service
uses, is tested against it by its maintainers and it runs from the Python venv the
tests already have; neither enforces S3's 2 KB user-metadata limit, which the S3
exporter therefore checks itself (exporters.S3_USER_METADATA_LIMIT).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from agent.demo.localbroker import Broker, Pki, free_port, make_pki
from tests.emqx_ft.exporters import S3Target
from tests.emqx_ft.front import EMQX_MAX_PACKET_SIZE
from tests.integration.broker import issue_server_cert

REPO = Path(__file__).resolve().parents[2]
RESPONDER_USER = "emqx-ft-responder"
DEFAULT_USERS: Mapping[str, str] = {
    "platform": "platform-test-password",
    "dock-01": "dock-01-test-password",
    "dock-02": "dock-02-test-password",
}
S3_BUCKET = "evidock-exports"
START_TIMEOUT_S = 20.0

# The ACL an EMQX deployment gives evidock, in mosquitto's syntax (the front handles
# every $file… command itself, so none of these rules concern file transfer):
# a dock (user name = station id) writes its checkpoint and ledger mirror and reads
# what the platform says about it; the platform reads and writes every station's
# topics (never as a station itself); the responder publishes results anywhere, as
# EMQX's broker does ($file-response/... included: "#" does not match "$" topics).
EMQX_ACL = """\
# tests/emqx_ft/bed.py: mosquitto behind the emqx_ft stand-in
user platform
topic deny evidock/v1/docks/platform/#
topic readwrite evidock/v1/docks/+/#

user {responder}
topic write #
topic write $file-response/#

pattern readwrite evidock/v1/docks/%u/checkpoint
pattern write evidock/v1/docks/%u/ledger
pattern read evidock/v1/docks/%u/results
pattern read evidock/v1/docks/%u/receipts
pattern read evidock/v1/docks/%u/held
pattern read $file-response/%c
"""


def _wait_line(proc: subprocess.Popen[bytes], out: IO[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = out.readline()
        if line.strip() == b"ready":
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-5000:]}")


class EmqxBed:
    """mosquitto + front (+ moto). ``users`` maps user names to passwords (default:
    platform, dock-01, dock-02); ``acl`` replaces EMQX_ACL (``{responder}`` is filled
    in); ``pki`` reuses a CA. Attributes once entered: ``host``, ``port`` (the front,
    TLS), ``ca_file``, ``passwords``, ``broker`` (the mosquitto, whose ``tls_port`` and
    ``plain_port`` bypass the front), ``export_root`` (local) or ``s3`` (S3Target),
    ``segments_root``."""

    host = "127.0.0.1"

    def __init__(
        self,
        folder: Path,
        *,
        exporter: Literal["local", "s3"] = "local",
        users: Mapping[str, str] | None = None,
        acl: str = EMQX_ACL,
        pki: Pki | None = None,
        max_packet_size: int = EMQX_MAX_PACKET_SIZE,
        s3_min_part_size: int = 5 * 1024 * 1024,
        front_args: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.exporter = exporter
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.acl = acl
        self._pki = pki
        self.max_packet_size = max_packet_size
        self.s3_min_part_size = s3_min_part_size
        self.front_args = front_args
        self.port = free_port()
        self.segments_root = folder / "segments"
        self.export_root: Path | None = None
        self.s3: S3Target | None = None
        self.broker: Broker | None = None
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    @property
    def passwords(self) -> dict[str, str]:
        return dict(self.users)

    @property
    def ca_file(self) -> str:
        assert self._pki is not None
        return self._pki.ca_file

    @property
    def front_log(self) -> str:
        return (self.folder / "front.log").read_text(errors="replace")

    def __enter__(self) -> EmqxBed:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pki = self._pki = self._pki or make_pki(self.folder / "pki")
        front_cert, front_key = issue_server_cert(pki, "front")
        responder_password = secrets.token_urlsafe(18)
        acl_file = self.folder / "emqx.acl"
        acl_file.write_text(self.acl.replace("{responder}", RESPONDER_USER))
        self.broker = Broker(
            pki,
            users={**self.users, RESPONDER_USER: responder_password},
            acl=acl_file,
            max_packet_size=self.max_packet_size,
        )
        self.broker.start()
        pw_file = self.folder / "responder.password"
        pw_file.write_text(responder_password)
        pw_file.chmod(0o600)
        args = [
            sys.executable, "-m", "tests.emqx_ft",
            "--listen", f"{self.host}:{self.port}",
            "--certfile", str(front_cert), "--keyfile", str(front_key),
            "--upstream", f"{self.host}:{self.broker.plain_port}",
            "--responder-user", RESPONDER_USER, "--responder-password-file", str(pw_file),
            "--storage", str(self.segments_root),
            "--max-packet-size", str(self.max_packet_size),
        ]  # fmt: skip
        if self.exporter == "local":
            self.export_root = self.folder / "exports"
            args += ["--exporter", f"local:{self.export_root}"]
        else:
            self.s3 = self._start_moto()
            secret_file = self.folder / "s3.secret"
            secret_file.write_text(self.s3.secret_key)
            args += [
                "--exporter", f"s3:{self.s3.endpoint}:{self.s3.bucket}",
                "--s3-access-key", self.s3.access_key, "--s3-secret-key-file", str(secret_file),
                "--s3-min-part-size", str(self.s3_min_part_size),
            ]  # fmt: skip
        self._spawn(args + list(self.front_args), "front")

    def _spawn(self, args: list[str], name: str) -> None:
        log = self.folder / f"{name}.log"
        err = log.open("ab")
        proc = subprocess.Popen(
            args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self._procs.append((proc, err))
        if name == "front":
            assert proc.stdout is not None
            _wait_line(proc, proc.stdout, "the emqx_ft front", log)

    def _start_moto(self) -> S3Target:
        port = free_port()
        self._spawn([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)], "moto")
        endpoint = f"http://{self.host}:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    log = (self.folder / "moto.log").read_text(errors="replace")
                    raise RuntimeError(f"moto did not start:\n{log}") from None
                time.sleep(0.1)
        target = S3Target(endpoint, S3_BUCKET, "evidock-test-key", secrets.token_urlsafe(24))
        s3_client(target).create_bucket(Bucket=target.bucket)
        return target

    def close(self) -> None:
        """Stop the front, moto and mosquitto (in that order)."""
        for proc, err in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            err.close()
        self._procs.clear()
        if self.broker is not None:
            self.broker.close()
            self.broker = None


def s3_client(target: S3Target) -> Any:
    """A boto3 S3 client for the bed's moto (tests read exports back with it)."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=target.endpoint, aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key, region_name=target.region,
    )  # fmt: skip
