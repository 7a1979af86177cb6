"""A local mosquitto 2.0 with TLS, passwords and the shipped ACL.

The demo uploads through one, the benchmarks measure through one, and the
integration tests run against one (tests/integration/broker.py holds their
fixtures): password checks, ACL decisions, MQTT 5 reason codes, retained
messages and persistent sessions are then the broker's, not our idea of them.
The ACL is ``config/mosquitto/acl`` itself, copied, so a change to the shipped
file is a change to what the tests check.

Run as root, mosquitto switches to the ``mosquitto`` user, which must be able to
read every file it is given and write its persistence folder; the broker therefore
lives in its own folder under the system temp folder with everything owned by
that user. Certificates are made with the ``openssl`` command (P-256 keys: milliseconds).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
SHIPPED_ACL = REPO / "config" / "mosquitto" / "acl"
SHIPPED_CONF = REPO / "config" / "mosquitto" / "evidock.conf"

HOST = "127.0.0.1"
# Room for a 4 MiB segment plus topic and properties: above anything evidock sends.
DEFAULT_MAX_PACKET = 4 * 1024 * 1024 + 64 * 1024
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def mosquitto_missing() -> str | None:
    """Why a broker cannot run here, or None if it can."""
    for tool in ("mosquitto", "mosquitto_passwd", "openssl"):
        if _which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install mosquitto openssl)"
    return None


def _which(tool: str) -> str | None:
    # mosquitto lives in /usr/sbin, which a non-root PATH often lacks.
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return shutil.which(tool, path=path)


def _tool(tool: str) -> str:
    found = _which(tool)
    if found is None:
        raise FileNotFoundError(f"{tool} is not installed (Debian: apt-get install mosquitto)")
    return found


# -- PKI ----------------------------------------------------------------------


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        [_tool("openssl"), *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{done.stderr}")


# P-256: key generation takes milliseconds, unlike RSA.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
# Python 3.13 verifies with VERIFY_X509_STRICT, which wants key identifiers and a
# critical basicConstraints; openssl's defaults alone do not give a leaf those.
_LEAF_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)


@dataclass(frozen=True)
class Pki:
    """A throw-away CA and a server certificate for ``localhost`` and 127.0.0.1."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @property
    def ca_file(self) -> str:
        return str(self.ca_cert)

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """A client certificate (CN ``name``) and its key signed by this CA, for
        brokers started with ``require_certificate=True``. Returns (cert, key)."""
        return _issue(self.folder, self.ca_cert, self.ca_key, f"client-{name}", name, "clientAuth")


def _issue(
    folder: Path, ca_cert: Path, ca_key: Path, stem: str, cn: str, usage: str
) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{stem}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    extra = "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if usage == "serverAuth" else ""
    ext.write_text(f"{_LEAF_EXT}extendedKeyUsage={usage}\n{extra}")
    _openssl(
        "req", "-new", *_NEW_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}", cwd=folder
    )
    serial = "0x" + os.urandom(16).hex()
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-set_serial", serial,
        "-days", "30", "-extfile", ext, "-out", cert, cwd=folder,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return cert, key


def make_pki(folder: Path, ca_name: str = "evidock test CA") -> Pki:
    """A new CA in ``folder`` and a server certificate it signed (CN and SAN
    ``localhost``, SAN IP 127.0.0.1). Raises RuntimeError with openssl's message."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = folder / "ca.crt", folder / "ca.key"
    _openssl(
        "req", "-x509", *_NEW_KEY, "-keyout", ca_key, "-out", ca_cert, "-days", "30",
        "-subj", f"/CN={ca_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    server_cert, server_key = _issue(folder, ca_cert, ca_key, "server", "localhost", "serverAuth")
    return Pki(folder, ca_cert, ca_key, server_cert, server_key)


# -- the broker -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _encode_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connack_code(host: str, port: int, username: str, password: str, timeout: float = 2.0) -> int:
    """The MQTT 3.1.1 CONNACK return code for these credentials (0 accepted, 4 bad user
    name or password, 5 not authorised), from one plain connection. A probe with no
    client library, so it tells nothing about paho, only about the broker."""
    variable = _encode_string("MQTT") + bytes([4, 0xC2]) + (10).to_bytes(2, "big")
    payload = b"".join(
        _encode_string(s) for s in (f"probe-{os.urandom(6).hex()}", username, password)
    )
    body = variable + payload
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"\x10" + _remaining_length(len(body)) + body)
        reply = b""
        while len(reply) < 4:
            chunk = s.recv(4 - len(reply))
            if not chunk:
                raise ConnectionError(f"{host}:{port} closed the connection before CONNACK")
            reply += chunk
        if reply[0] != 0x20:
            raise ConnectionError(f"{host}:{port} answered CONNECT with {reply!r}")
        if reply[3] == 0:
            s.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return reply[3]


class Broker:
    """One mosquitto process with a TLS listener and a plain one, both on 127.0.0.1.

    Both listeners take the same users and ACL (``per_listener_settings false``); the
    plain one exists for benchmarks and baselines, never as a way around the
    passwords. State lives in ``dir``: config, password file, ACL, certificates,
    the persistence folder (``data``) and the log. ``restart()`` keeps ports and
    persistence, so retained messages and QoS 1 session state survive it; mosquitto
    writes its persistence file when it stops cleanly and every
    ``autosave_interval`` seconds, so after ``kill()`` only what the last save held
    comes back.
    """

    host = HOST

    def __init__(
        self,
        pki: Pki,
        *,
        users: Mapping[str, str] | None = None,
        acl: Path = SHIPPED_ACL,
        max_packet_size: int = DEFAULT_MAX_PACKET,
        max_inflight_messages: int = 100,
        max_queued_messages: int = 10_000,
        autosave_interval: int = 1800,
        require_certificate: bool = False,
        debug_log: bool = True,
        extra_config: str = "",
    ) -> None:
        self.mosquitto = _tool("mosquitto")
        self.pki = pki
        self.max_packet_size = max_packet_size
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        self.require_certificate = require_certificate
        self.debug_log = debug_log
        self.extra_config = extra_config
        self.passwords: dict[str, str] = {}
        self.tls_port = free_port()
        self.plain_port = free_port()
        while self.plain_port == self.tls_port:
            self.plain_port = free_port()
        self.ca_file = pki.ca_file

        self.dir = Path(tempfile.mkdtemp(prefix="evidock-mosquitto-"))
        self.conf_file = self.dir / "mosquitto.conf"
        self.password_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.data_dir = self.dir / "data"
        self.log_file = self.dir / "mosquitto.log"
        self.cafile = self.dir / "ca.crt"
        self.certfile = self.dir / "server.crt"
        self.keyfile = self.dir / "server.key"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        try:
            shutil.copyfile(acl, self.acl_file)
            shutil.copyfile(pki.ca_cert, self.cafile)
            shutil.copyfile(pki.server_cert, self.certfile)
            shutil.copyfile(pki.server_key, self.keyfile)
            self.data_dir.mkdir()
            self.password_file.touch()
            self.log_file.touch()
            for name, password in (users or {}).items():
                self.add_user(name, password)
            self._hand_over()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # -- files ------------------------------------------------------------------

    def render_config(self) -> str:
        """The mosquitto.conf this broker runs with (written again on every start)."""
        log_types = ["all"] if self.debug_log else ["error", "warning", "notice", "information"]
        lines = [
            "# evidock local broker: agent/demo/localbroker.py",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            "persistence true",
            f"persistence_location {self.data_dir}",
            f"autosave_interval {self.autosave_interval}",
            f"max_packet_size {self.max_packet_size}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
            "log_dest stderr",
            *(f"log_type {t}" for t in log_types),
            "log_timestamp_format %H:%M:%S",
            "",
            f"listener {self.tls_port} {self.host}",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
            "",
            f"listener {self.plain_port} {self.host}",
            "",
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _hand_over(self) -> None:
        """Give the folder to the user mosquitto drops to when started as root."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return  # no such user: mosquitto stays root and reads everything
        for path in (self.dir, *self.dir.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)

    def add_user(self, name: str, password: str) -> None:
        """Add or change a user. On a running broker this reloads the password file
        (SIGHUP) and returns once a connection with the new password is accepted."""
        done = subprocess.run(
            [_tool("mosquitto_passwd"), "-b", str(self.password_file), name, password],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd for {name!r} failed: {done.stderr.strip()}")
        self.passwords[name] = password
        self._hand_over()  # mosquitto_passwd replaces the file, owned by whoever ran it
        if self.running:
            self.reload()
            self._wait_until(lambda: self._accepts(name, password), f"the new password of {name!r}")

    def _accepts(self, name: str, password: str) -> bool:
        try:
            return connack_code(self.host, self.plain_port, name, password) == 0
        except OSError:
            return False

    # -- process ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start mosquitto and return once both listeners accept connections.
        Raises RuntimeError with the broker's log if it does not come up in 10 s."""
        if self.running:
            raise RuntimeError("broker already running")
        self.conf_file.write_text(self.render_config())
        self._hand_over()
        self._log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            [self.mosquitto, "-c", str(self.conf_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until(
            lambda: self._tls_ready() and self._listening(self.plain_port),
            f"mosquitto to listen on {self.tls_port} and {self.plain_port}",
        )

    def _listening(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _tls_ready(self) -> bool:
        """A completed TLS handshake, verified against the CA: the listener is up
        and serves the certificate clients will check. A refused connection means
        not yet; a certificate or TLS error is raised at once, with the log."""
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with (
                socket.create_connection((self.host, self.tls_port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                # close_notify, so mosquitto logs a clean close rather than an EOF error.
                with suppress(OSError):
                    tls.unwrap()
                return True
        except ssl.SSLError as e:
            raise RuntimeError(
                f"TLS to {self.host}:{self.tls_port} failed: {e}\n{self.log_text()}"
            ) from e
        except OSError:
            return False

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise RuntimeError(
                    f"mosquitto exited ({code}) waiting for {what}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.log_text()}")
            time.sleep(0.02)

    def reload(self) -> None:
        """SIGHUP: mosquitto 2.0 re-reads the password file and the ACL (not the
        listeners). The reload happens on the broker's next loop, after this returns."""
        if self._proc is None or not self.running:
            raise RuntimeError("broker is not running")
        self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file as it exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: nothing is saved; persistence keeps only the last autosave."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop cleanly and start again on the same ports with the same persistence."""
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def close(self) -> None:
        """Stop the broker and delete its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        """Everything mosquitto logged so far, across restarts."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Broker(tls={self.host}:{self.tls_port}, plain={self.host}:{self.plain_port}, dir={self.dir})"
