"""Local users of the dock, their secrets and their kiosk sessions (issue 5).

``home/users.db`` (SQLite, WAL, ``synchronous=FULL``, 0600) holds::

    users          name, role, officer_id, pw_hash, disabled, created, updated,
                   last_login, seq (the ledger entry that last changed the row)
    sessions       token_hash (SHA-256 of the token), user, created, expires, csrf
    failed_logins  user (as typed), at, source
    meta           ledger_seq: the last ``user`` entry reflected here

Why not in ledger.db: sessions and failed logins change on every page view and
every mistyped PIN. They are not evidence, and must neither contend for the
ledger's write lock nor sit beside it. What *is* evidence - that a user was
added, given a new secret or disabled, and by whom - is a ``user`` ledger
entry naming the actor. No secret and no hash ever enters the ledger.

Ordering: no transaction spans two SQLite files durably under WAL, so a change
opens the users.db write transaction (``BEGIN IMMEDIATE``, which also
serialises user changes across processes), appends and commits the ledger
entry, and only then commits users.db. A crash in between leaves an entry
whose change did not take effect - never a change without its entry. On open,
entries not yet reflected here are reconciled: a ``disable`` is applied (the
safe direction); an ``add`` or ``passwd`` cannot be (the secret was never in
the ledger), so it is logged for the admin to repeat.

Secrets: scrypt (RFC 7914) from ``cryptography``, n=2**15, r=8, p=1, a 16-byte
random salt, stored as ``scrypt$n$r$p$salt_b64$hash_b64``; compared in
constant time. A PIN is all digits, at least 6 of them; anything else is a
password of at least 8 characters.

Logins: a wrong name, a wrong secret and a disabled account all fail with the
same message and the same scrypt work (a dummy hash stands in for a missing
user), so the page cannot be used to learn who exists. Failed attempts are
recorded under the name as typed - existing or not, so lockout behaves the
same for both - and logged. A name with ``max_failed_logins`` failures within
``lockout_minutes`` (since its last successful login) is locked for the rest of
that window; each source (the kiosk passes the client address) is slowed down
after every failure it causes: the next try is refused for 1, 2, 4 ... up to
30 seconds, which bounds guessing one common PIN across many names.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import itertools
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from agent._text import check_id
from agent.users import roles
from hashing import _sqlite
from hashing.entries import Entry
from hashing.errors import ConfigError, InputError
from hashing.station import Station

log = logging.getLogger(__name__)

USERS_FILE = "users.db"
USER = "user"  # ledger entry type: {action: add|passwd|disable, name, by, ...}
CONSOLE = "console:"  # `by` of a command run on the machine: the trust anchor

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Bounds on parameters read back from users.db: a tampered row must not make a
# login allocate gigabytes (scrypt needs 128 * n * r bytes).
MAX_SCRYPT_MEMORY = 256 << 20
MAX_SCRYPT_P = 16

PIN_MIN = 6
PASSWORD_MIN = 8
SECRET_MAX = 1024
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_DIGITS = re.compile(r"[0-9]+")

MAX_SESSION_S = 12 * 3600  # a session never outlives a shift, however active
SLIDE_STEP_S = 60.0  # sliding expiry is written at most once a minute per session
SOURCE_DELAY_MAX_S = 30.0
KEEP_FAILED_S = 30 * 86400  # failed-login records kept for review

LOGIN_FAILED = (
    "login failed: wrong user name or PIN/password, or too many attempts; "
    "wait a moment and try again"
)

migrations = Migrations("evidock.users")


@migrations()
def m001_users(db: Database) -> None:
    for sql in (
        "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, officer_id TEXT,"
        " pw_hash TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,"
        " updated TEXT NOT NULL, last_login REAL, seq INTEGER NOT NULL)",
        "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY,"
        " user TEXT NOT NULL REFERENCES users(name), created REAL NOT NULL,"
        " expires REAL NOT NULL, csrf TEXT NOT NULL)",
        "CREATE INDEX sessions_user ON sessions (user)",
        "CREATE TABLE failed_logins (user TEXT NOT NULL, at REAL NOT NULL, source TEXT NOT NULL)",
        "CREATE INDEX failed_logins_user ON failed_logins (user, at)",
        "CREATE INDEX failed_logins_source ON failed_logins (source, at)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ):
        db.execute(sql)


class LoginError(InputError):
    """A login was refused. The message never says why (no user enumeration)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    officer: str | None
    disabled: bool


@dataclass(frozen=True)
class Session:
    token: str = field(repr=False)  # the cookie value; only its SHA-256 is stored
    user: str
    expires: float  # seconds since the epoch
    csrf: str = field(repr=False)  # the form token bound to this session


@dataclass(frozen=True)
class UserPolicy:
    """Login settings ([kiosk] in the config file; the defaults are the shipped ones)."""

    session_minutes: int = 30
    max_failed_logins: int = 5
    lockout_minutes: int = 15
    scrypt_n: int = SCRYPT_N  # cost of new hashes; only tests lower it

    def __post_init__(self) -> None:
        for name in ("session_minutes", "max_failed_logins", "lockout_minutes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[kiosk] {name} must be at least 1")
        if self.scrypt_n < 2 or self.scrypt_n & (self.scrypt_n - 1):
            raise ConfigError("scrypt n must be a power of two")

    @classmethod
    def from_config(cls, kiosk: Mapping[str, Any]) -> UserPolicy:
        """From the ``[kiosk]`` table (``cfg.values["kiosk"]``)."""
        return cls(
            session_minutes=int(kiosk["session_minutes"]),
            max_failed_logins=int(kiosk["max_failed_logins"]),
            lockout_minutes=int(kiosk["lockout_minutes"]),
        )


DEFAULT_POLICY = UserPolicy()


# -- secrets ------------------------------------------------------------------


def check_secret(secret: str) -> None:
    """Refuse a PIN shorter than 6 digits (or a trivial one such as 123456 or
    000000) and a password shorter than 8 characters. Raises InputError."""
    if len(secret) > SECRET_MAX:
        raise InputError(f"secret longer than {SECRET_MAX} characters")
    if not secret.isprintable():
        raise InputError("the PIN or password holds control characters (a stray newline?)")
    if _DIGITS.fullmatch(secret):
        if len(secret) < PIN_MIN:
            raise InputError(f"a PIN needs at least {PIN_MIN} digits")
        steps = {int(b) - int(a) for a, b in itertools.pairwise(secret)}
        if steps in ({0}, {1}, {-1}):
            raise InputError("that PIN is too easy to guess (repeated or consecutive digits)")
    elif len(secret) < PASSWORD_MIN:
        raise InputError(
            f"a password needs at least {PASSWORD_MIN} characters (or use a PIN of "
            f"{PIN_MIN} or more digits)"
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_secret(secret: str, *, n: int = SCRYPT_N) -> str:
    """``scrypt$n$r$p$salt_b64$hash_b64`` for ``secret`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    key = Scrypt(salt=salt, length=KEY_BYTES, n=n, r=SCRYPT_R, p=SCRYPT_P).derive(
        secret.encode("utf-8")
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not an scrypt$n$r$p$salt$hash string")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= MAX_SCRYPT_P:
        raise ValueError("scrypt parameters out of range")
    if 128 * n * r > MAX_SCRYPT_MEMORY:
        raise ValueError("scrypt parameters need too much memory")
    salt = base64.b64decode(parts[4], validate=True)
    key = base64.b64decode(parts[5], validate=True)
    if len(salt) < SALT_BYTES or len(key) < 16:
        raise ValueError("salt or hash too short")
    return n, r, p, salt, key


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` matches ``encoded`` (constant-time compare). A malformed
    stored hash never matches; it is logged, since users.db should not hold one."""
    try:
        n, r, p, salt, expected = _parse_hash(encoded)
    except ValueError as e:
        log.error("unusable password hash in %s: %s", USERS_FILE, e)
        return False
    key = Scrypt(salt=salt, length=len(expected), n=n, r=r, p=p).derive(secret.encode("utf-8"))
    return hmac.compare_digest(key, expected)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InputError(
            f"user name {name!r}: use 1-32 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_account(name: str, role: str, officer: str | None) -> None:
    """A new account's name, role and officer id (officers need theirs: it decides
    which recordings are theirs). Raises InputError."""
    check_name(name)
    if role not in roles.ROLES:
        raise InputError(f"role {role!r}: choose one of {', '.join(roles.ROLES)}")
    if officer is not None:
        check_id(officer, "officer")
    elif role == roles.OFFICER:
        raise InputError(f"an officer account needs the officer id (--officer) of {name!r}")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the store -----------------------------------------------------------------


class Users:
    """The dock's users (thread-safe; safe beside other processes: the CLI and the
    daemon open the same users.db)."""

    def __init__(
        self,
        station: Station,
        policy: UserPolicy = DEFAULT_POLICY,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.station = station
        self.policy = policy
        self.clock = clock
        self.path = station.home / USERS_FILE
        self._lock = threading.RLock()
        self._dummy: str | None = None
        self._conn = self._open()
        try:
            self._reconcile()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> sqlite3.Connection:
        return _sqlite.connect(self.path, migrations)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _sqlite.write(self._conn) as conn:
            yield conn

    def _record(self, conn: sqlite3.Connection, body: Mapping[str, Any]) -> Entry:
        """Append the ``user`` entry (committed, durable) inside the open users.db
        transaction, which commits after it (module docstring: Ordering)."""
        with self.station.ledger.transaction() as tx:
            entry = tx.append(USER, body)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('ledger_seq', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(entry.seq),),
        )
        return entry

    def _reconcile(self) -> None:
        # Inside the write transaction: a change another process is making right
        # now (its entry committed, its users.db row not yet) is waited for, not
        # taken for a lost one.
        with self._write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'ledger_seq'").fetchone()
            applied = int(row[0]) if row else -1
            pending = [e for e in self.station.ledger.entries_of_type(USER) if e.seq > applied]
            for entry in pending:
                name, action = str(entry.body.get("name")), entry.body.get("action")
                current = conn.execute(
                    "SELECT disabled, seq FROM users WHERE name = ?", (name,)
                ).fetchone()
                if current is not None and current[1] >= entry.seq:
                    continue
                if action == "disable" and current is not None:
                    conn.execute(
                        "UPDATE users SET disabled = 1, seq = ? WHERE name = ?", (entry.seq, name)
                    )
                    conn.execute("DELETE FROM sessions WHERE user = ?", (name,))
                    log.warning("applied ledger entry %d: user %r disabled", entry.seq, name)
                else:
                    log.warning(
                        "ledger entry %d records %s of user %r, which did not take effect "
                        "(the dock stopped in between); run `evidock user %s` again",
                        entry.seq,
                        action,
                        name,
                        action,
                    )
            if pending:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('ledger_seq', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(pending[-1].seq),),
                )

    # -- who may change users --------------------------------------------------

    def _authorise(self, conn: sqlite3.Connection, by: str) -> None:
        """``by`` is ``console:<unix user>`` (the command line on the machine: whoever
        can write the station folder can do anything to it anyway) or the name of
        an enabled admin. Checked inside the write transaction, so an admin
        disabled a moment ago cannot act."""
        if by.startswith(CONSOLE):
            who = by[len(CONSOLE) :]
            if not who or len(who) > 64 or not who.isprintable():
                raise InputError(f"actor {by!r}: not a usable console user name")
            return
        roles.require(self._get(conn, by), "manage_users")

    # -- changes -----------------------------------------------------------------

    def add(self, name: str, role: str, secret: str, *, officer: str | None, by: str) -> User:
        """Add a user; a ``user`` entry {action: "add", name, role, officer, by}.

        Officers need their officer id (the one the device registry binds
        recorders to): it decides which recordings are theirs. Names are never
        reused, not even after a disable, so the ledger's names stay unambiguous.
        Raises InputError, roles.PermissionDeniedError."""
        check_account(name, role, officer)
        check_secret(secret)
        pw_hash = hash_secret(secret, n=self.policy.scrypt_n)
        now = _rfc3339(self.clock())
        with self._write() as conn:
            self._authorise(conn, by)
            existing = self._get(conn, name)
            if existing is not None:
                state = " (disabled)" if existing.disabled else ""
                raise InputError(
                    f"user {name!r} exists{state}; user names are never reused, choose another"
                )
            entry = self._record(
                conn, {"action": "add", "name": name, "role": role, "officer": officer, "by": by}
            )
            conn.execute(
                "INSERT INTO users (name, role, officer_id, pw_hash, disabled, created, updated, seq)"
                " VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (name, role, officer, pw_hash, now, now, entry.seq),
            )
        log.info("user %s (%s) added by %s (entry %d)", name, role, by, entry.seq)
        return User(name, role, officer, disabled=False)

    def passwd(self, name: str, secret: str, *, by: str) -> None:
        """Set a new PIN or password; a ``user`` entry {action: "passwd", name, by}.
        The user's open sessions end. Raises InputError, PermissionDeniedError."""
        check_secret(secret)
        pw_hash = hash_secret(secret, n=self.policy.scrypt_n)
        with self._write() as conn:
            self._authorise(conn, by)
            if self._get(conn, name) is None:
                raise InputError(f"no user {name!r}")
            entry = self._record(conn, {"action": "passwd", "name": name, "by": by})
            conn.execute(
                "UPDATE users SET pw_hash = ?, updated = ?, seq = ? WHERE name = ?",
                (pw_hash, _rfc3339(self.clock()), entry.seq, name),
            )
            conn.execute("DELETE FROM sessions WHERE user = ?", (name,))
        log.info("new secret for user %s set by %s (entry %d)", name, by, entry.seq)

    def disable(self, name: str, *, by: str) -> None:
        """Disable a user for good; a ``user`` entry {action: "disable", name, by}.
        Their sessions end at once. Disabling a disabled user records nothing.
        Raises InputError, PermissionDeniedError."""
        with self._write() as conn:
            self._authorise(conn, by)
            user = self._get(conn, name)
            if user is None:
                raise InputError(f"no user {name!r}")
            if user.disabled:
                return
            entry = self._record(conn, {"action": "disable", "name": name, "by": by})
            conn.execute(
                "UPDATE users SET disabled = 1, updated = ?, seq = ? WHERE name = ?",
                (_rfc3339(self.clock()), entry.seq, name),
            )
            conn.execute("DELETE FROM sessions WHERE user = ?", (name,))
        log.warning("user %s disabled by %s (entry %d)", name, by, entry.seq)

    # -- reading -------------------------------------------------------------------

    @staticmethod
    def _get(conn: sqlite3.Connection, name: str) -> User | None:
        row = conn.execute(
            "SELECT name, role, officer_id, disabled FROM users WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else User(row[0], row[1], row[2], bool(row[3]))

    def get(self, name: str) -> User | None:
        with self._lock:
            return self._get(self._conn, name)

    def list(self) -> builtins.list[User]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, role, officer_id, disabled FROM users ORDER BY name"
            ).fetchall()
        return [User(r[0], r[1], r[2], bool(r[3])) for r in rows]

    # -- logins and sessions ---------------------------------------------------------

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = hash_secret(secrets.token_urlsafe(16), n=self.policy.scrypt_n)
        return self._dummy

    def _source_wait(self, source: str, now: float) -> float:
        """Seconds until ``source`` may try again (0: now)."""
        window = now - self.policy.lockout_minutes * 60
        count, last = self._conn.execute(
            "SELECT count(*), max(at) FROM failed_logins WHERE source = ? AND at > ?",
            (source, window),
        ).fetchone()
        if not count:
            return 0.0
        delay = min(2.0 ** (int(count) - 1), SOURCE_DELAY_MAX_S)
        return max(0.0, float(last) + delay - now)

    def _failures(self, name: str, now: float) -> int:
        """Failures of ``name`` within the lockout window since its last login."""
        since = now - self.policy.lockout_minutes * 60
        row = self._conn.execute("SELECT last_login FROM users WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] is not None:
            since = max(since, float(row[0]))
        (count,) = self._conn.execute(
            "SELECT count(*) FROM failed_logins WHERE user = ? AND at > ?", (name, since)
        ).fetchone()
        return int(count)

    def login(self, name: str, secret: str, *, source: str) -> Session:
        """A new session for ``name`` if ``secret`` is right (see the module docstring
        for lockout and slow-down). Every success makes a new random token, so a
        token planted before login is worthless (session fixation). Raises
        LoginError with one message whatever went wrong."""
        now = self.clock()
        typed, where = _clip(name, 64), _clip(source, 128)
        with self._lock:
            wait = self._source_wait(where, now)
            if wait > 0:
                log.warning(
                    "login as %r from %s refused: too many failed logins from there "
                    "(next try in %.0f s)",
                    typed,
                    where,
                    wait,
                )
                raise LoginError(LOGIN_FAILED)
            failures = self._failures(typed, now)
            if failures >= self.policy.max_failed_logins:
                log.warning(
                    "login as %r from %s refused: locked after %d failed logins within %d minutes",
                    typed,
                    where,
                    failures,
                    self.policy.lockout_minutes,
                )
                raise LoginError(LOGIN_FAILED)
            row = self._conn.execute(
                "SELECT pw_hash, disabled FROM users WHERE name = ?", (name,)
            ).fetchone()
            # The same scrypt work whether or not the user exists.
            # Nothing longer than SECRET_MAX was ever stored, so clipping cannot
            # make a wrong secret match; it bounds the work a request can cause.
            clipped = secret[: SECRET_MAX + 1]
            matches = verify_secret(clipped, row[0] if row else self._dummy_hash())
            if row is None or row[1] or not matches:
                why = "no such user" if row is None else "disabled" if row[1] else "wrong secret"
                with self._write() as conn:
                    conn.execute(
                        "INSERT INTO failed_logins (user, at, source) VALUES (?, ?, ?)",
                        (typed, now, where),
                    )
                    conn.execute("DELETE FROM failed_logins WHERE at < ?", (now - KEEP_FAILED_S,))
                log.warning(
                    "failed login as %r from %s (%s); %d of %d before a %d-minute lockout",
                    typed,
                    where,
                    why,
                    failures + 1,
                    self.policy.max_failed_logins,
                    self.policy.lockout_minutes,
                )
                raise LoginError(LOGIN_FAILED)
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            expires = now + self.policy.session_minutes * 60
            with self._write() as conn:
                conn.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
                conn.execute(
                    "INSERT INTO sessions (token_hash, user, created, expires, csrf)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (_token_hash(token), name, now, expires, csrf),
                )
                conn.execute("UPDATE users SET last_login = ? WHERE name = ?", (now, name))
        log.info("user %s logged in from %s", name, where)
        return Session(token=token, user=name, expires=expires, csrf=csrf)

    def session(self, token: str) -> tuple[User, Session] | None:
        """The user and session behind a token, if it is valid, unexpired and its
        user enabled. Each use extends it to ``session_minutes`` from now (at most
        MAX_SESSION_S after login)."""
        if not token or len(token) > 256:
            return None
        key = _token_hash(token)
        now = self.clock()
        with self._lock:
            row = self._conn.execute(
                "SELECT s.user, s.created, s.expires, s.csrf, u.role, u.officer_id, u.disabled"
                " FROM sessions s JOIN users u ON u.name = s.user WHERE s.token_hash = ?",
                (key,),
            ).fetchone()
            if row is None:
                return None
            name, created, expires, csrf, role, officer, disabled = row
            if disabled or expires <= now or created + MAX_SESSION_S <= now:
                self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", (key,))
                return None
            slid = min(now + self.policy.session_minutes * 60, created + MAX_SESSION_S)
            if slid - expires >= SLIDE_STEP_S:
                self._conn.execute(
                    "UPDATE sessions SET expires = ? WHERE token_hash = ?", (slid, key)
                )
                expires = slid
        return User(name, role, officer, False), Session(token, name, float(expires), csrf)

    def logout(self, token: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),))
