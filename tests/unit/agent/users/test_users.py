"""Local users: secrets, ledger entries, logins, lockout, sessions, and `evidock user`."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config
from agent.cli import main
from agent.users import accounts as users
from agent.users.accounts import (
    LOGIN_FAILED,
    MAX_SESSION_S,
    USER,
    LoginError,
    User,
    UserPolicy,
    Users,
    check_secret,
    hash_secret,
    verify_secret,
)
from agent.users.roles import PermissionDeniedError
from hashing.errors import ConfigError, InputError
from hashing.station import Station

FAST = UserPolicy(scrypt_n=2**10)  # the stored parameters travel with each hash
ADMIN_PW = "correct horse battery"
PIN = "482913"
CONSOLE = "console:root"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    st = Station.init(tmp_path / "home", "ST-1")
    yield st
    st.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(station: Station, clock: Clock) -> Iterator[Users]:
    u = Users(station, FAST, clock=clock)
    u.add("admin1", "admin", ADMIN_PW, officer=None, by=CONSOLE)
    u.add("li", "officer", PIN, officer="100001", by="admin1")
    u.add("wang", "supervisor", "supervisor-pass", officer=None, by="admin1")
    yield u
    u.close()


def user_entries(station: Station) -> list[dict[str, object]]:
    return [dict(e.body) for e in station.ledger.entries_of_type(USER)]


# -- secrets -------------------------------------------------------------------


def test_hash_format_is_scrypt_with_the_issue_parameters() -> None:
    encoded = hash_secret("abcdefgh")
    name, n, r, p, salt, key = encoded.split("$")
    assert (name, n, r, p) == ("scrypt", "32768", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 32
    assert verify_secret("abcdefgh", encoded)
    assert not verify_secret("abcdefgX", encoded)
    assert hash_secret("abcdefgh") != encoded  # a fresh salt each time


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "md5$abc",
        "scrypt$1024$8$1$AAAA$AAAA",  # salt and hash too short
        "scrypt$1000$8$1$" + "A" * 24 + "$" + "A" * 44,  # n not a power of two
        "scrypt$1073741824$8$1$" + "A" * 24 + "$" + "A" * 44,  # 1 TiB of memory: refused
        "scrypt$1024$8$1$!!!$" + "A" * 44,
    ],
)
def test_a_malformed_stored_hash_never_matches(stored: str) -> None:
    assert not verify_secret("anything-at-all", stored)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("12345", "at least 6 digits"),
        ("123456", "too easy"),
        ("987654", "too easy"),
        ("000000", "too easy"),
        ("abc1234", "at least 8 characters"),
        ("pass\nword1", "control characters"),
        ("x" * 1025, "longer than"),
    ],
)
def test_weak_secrets_are_refused(secret: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_secret(secret)


@pytest.mark.parametrize("secret", ["482913", "1357913", "abcdefgh", "长城长城长城长城"])
def test_good_secrets_pass(secret: str) -> None:
    check_secret(secret)


# -- changes and their ledger entries ----------------------------------------------


def test_changes_are_ledger_entries_naming_the_actor_and_never_the_secret(
    store: Users, station: Station
) -> None:
    store.passwd("li", "573920", by="admin1")
    store.disable("wang", by=CONSOLE)
    assert user_entries(station) == [
        {"action": "add", "name": "admin1", "role": "admin", "officer": None, "by": CONSOLE},
        {"action": "add", "name": "li", "role": "officer", "officer": "100001", "by": "admin1"},
        {"action": "add", "name": "wang", "role": "supervisor", "officer": None, "by": "admin1"},
        {"action": "passwd", "name": "li", "by": "admin1"},
        {"action": "disable", "name": "wang", "by": CONSOLE},
    ]
    raw = b"".join(data for _, data in station.ledger.raw_entries())
    assert b"scrypt" not in raw and PIN.encode() not in raw and b"573920" not in raw
    # each row names the entry that last changed it
    rows = dict(store._conn.execute("SELECT name, seq FROM users").fetchall())
    seqs = {e.body["name"]: e.seq for e in station.ledger.entries_of_type(USER)}
    assert rows == seqs
    # disabling again records nothing
    store.disable("wang", by=CONSOLE)
    assert len(user_entries(station)) == 5


def test_users_db_is_private_wal_and_full_sync(store: Users, station: Station) -> None:
    path = station.home / "users.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for extra in ("users.db-wal", "users.db-shm"):
        if (station.home / extra).exists():
            assert stat.S_IMODE((station.home / extra).stat().st_mode) == 0o600
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as other:
        hashes = [r[0] for r in other.execute("SELECT pw_hash FROM users")]
    assert all(h.startswith("scrypt$1024$8$1$") for h in hashes)


def test_account_rules(store: Users) -> None:
    with pytest.raises(InputError, match="needs the officer id"):
        store.add("zhang", "officer", PIN, officer=None, by=CONSOLE)
    with pytest.raises(InputError, match="role 'root'"):
        store.add("zhang", "root", PIN, officer=None, by=CONSOLE)
    for bad in ("", "a b", "x:y", "-lead", "a" * 33, "张三"):
        with pytest.raises(InputError, match="user name"):
            store.add(bad, "auditor", PIN, officer=None, by=CONSOLE)
    with pytest.raises(InputError, match="exists"):
        store.add("li", "auditor", PIN, officer=None, by=CONSOLE)
    store.disable("li", by=CONSOLE)
    with pytest.raises(InputError, match=r"exists \(disabled\); user names are never reused"):
        store.add("li", "officer", PIN, officer="100001", by=CONSOLE)
    with pytest.raises(InputError, match="no user 'nobody'"):
        store.passwd("nobody", PIN, by=CONSOLE)
    with pytest.raises(InputError, match="no user 'nobody'"):
        store.disable("nobody", by=CONSOLE)


def test_only_an_enabled_admin_or_the_console_changes_users(store: Users, station: Station) -> None:
    before = len(user_entries(station))
    for actor in ("wang", "li", "nobody"):
        with pytest.raises(PermissionDeniedError):
            store.add("zhao", "auditor", "auditor-pass", officer=None, by=actor)
        with pytest.raises(PermissionDeniedError):
            store.passwd("admin1", "new-admin-pass", by=actor)
        with pytest.raises(PermissionDeniedError):
            store.disable("admin1", by=actor)
    with pytest.raises(InputError, match="console user"):
        store.disable("li", by="console:")
    assert len(user_entries(station)) == before  # nothing refused reached the ledger
    store.add("admin2", "admin", "second-admin", officer=None, by="admin1")
    store.disable("admin1", by="admin2")
    with pytest.raises(PermissionDeniedError, match="disabled"):
        store.add("zhao", "auditor", "auditor-pass", officer=None, by="admin1")
    assert store.get("zhao") is None


def test_get_and_list(store: Users) -> None:
    assert store.get("li") == User("li", "officer", "100001", disabled=False)
    assert store.get("nobody") is None
    store.disable("li", by=CONSOLE)
    assert [u.name for u in store.list()] == ["admin1", "li", "wang"]
    assert store.list()[1].disabled


# -- logins ----------------------------------------------------------------------


def test_login_gives_a_new_random_session_each_time(store: Users, station: Station) -> None:
    first = store.login("li", PIN, source="kiosk")
    second = store.login("li", PIN, source="kiosk")
    assert first.token != second.token and first.csrf != second.csrf
    assert len(first.token) >= 43 and first.user == "li"
    assert first.token not in repr(first) and first.csrf not in repr(first)
    found = store.session(first.token)
    assert found is not None
    user, session = found
    assert user == User("li", "officer", "100001", False)
    assert (session.token, session.user, session.csrf) == (first.token, "li", first.csrf)
    # only the token's SHA-256 is on disk
    stored = [r[0] for r in store._conn.execute("SELECT token_hash FROM sessions")]
    assert first.token not in stored
    assert hashlib.sha256(first.token.encode()).hexdigest() in stored
    assert store.session("made-up-token") is None
    assert store.session("") is None


def test_failures_look_the_same_whatever_the_cause(
    store: Users, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.disable("wang", by=CONSOLE)
    calls: list[str] = []
    real = users.verify_secret

    def counting(secret: str, encoded: str) -> bool:
        calls.append(encoded)
        return real(secret, encoded)

    monkeypatch.setattr(users, "verify_secret", counting)
    messages = []
    for name, secret in (("li", "000111"), ("nobody", PIN), ("wang", "supervisor-pass")):
        with pytest.raises(LoginError) as e:
            store.login(name, secret, source=f"src-{name}")
        messages.append(str(e.value))
    assert messages == [LOGIN_FAILED] * 3
    assert len(calls) == 3  # the scrypt work is done for a missing user too
    assert all(c.startswith("scrypt$") for c in calls)


def test_failed_logins_are_recorded_and_logged(
    store: Users, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.users.accounts")
    with pytest.raises(LoginError):
        store.login("li", "999111", source="10.0.0.9")
    rows = store._conn.execute("SELECT user, source FROM failed_logins").fetchall()
    assert rows == [("li", "10.0.0.9")]
    assert "failed login as 'li' from 10.0.0.9 (wrong secret); 1 of 5" in caplog.text
    assert "999111" not in caplog.text


def test_lockout_after_max_failures_then_release(store: Users, clock: Clock) -> None:
    for i in range(5):
        with pytest.raises(LoginError):
            store.login("li", "000111", source=f"s{i}")  # other sources: no slow-down
    with pytest.raises(LoginError):
        store.login("li", PIN, source="s9")  # locked: even the right PIN fails
    assert store._conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    clock.advance(15 * 60 + 1)
    assert store.login("li", PIN, source="s9").user == "li"


def test_lockout_is_the_same_for_names_that_do_not_exist(store: Users, clock: Clock) -> None:
    for name in ("li", "ghost"):
        for i in range(5):
            with pytest.raises(LoginError):
                store.login(name, "000111", source=f"{name}{i}")
    counts = dict(
        store._conn.execute("SELECT user, count(*) FROM failed_logins GROUP BY user").fetchall()
    )
    assert counts == {"li": 5, "ghost": 5}
    assert store._failures("li", clock.now) == store._failures("ghost", clock.now) == 5


def test_a_successful_login_resets_the_count_for_that_name(store: Users, clock: Clock) -> None:
    for round_ in range(3):
        for i in range(4):
            with pytest.raises(LoginError):
                store.login("li", "000111", source=f"r{round_}-{i}")
        clock.advance(1)
        store.login("li", PIN, source=f"ok{round_}")


def test_each_failure_slows_down_its_source(store: Users, clock: Clock) -> None:
    with pytest.raises(LoginError):
        store.login("li", "000111", source="kiosk")
    with pytest.raises(LoginError):
        store.login("li", PIN, source="kiosk")  # too soon after a failure from there
    assert store.login("li", PIN, source="elsewhere").user == "li"
    clock.advance(1.1)
    assert store.login("li", PIN, source="kiosk").user == "li"
    # guessing across many names from one place: 1, 2, 4, 8, 16, 30, 30 ... seconds apart
    waits = []
    for i in range(8):
        with pytest.raises(LoginError):
            store.login(f"name{i}", "000111", source="sprayer")
        waits.append(store._source_wait("sprayer", clock.now))
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]


def test_sessions_expire_slide_and_are_capped(store: Users, clock: Clock) -> None:
    session = store.login("wang", "supervisor-pass", source="kiosk")
    assert session.expires == clock.now + 30 * 60
    clock.advance(29 * 60)
    found = store.session(session.token)
    assert found is not None and found[1].expires == clock.now + 30 * 60  # slid
    clock.advance(30 * 60 + 1)
    assert store.session(session.token) is None  # idle too long
    # an active session still ends MAX_SESSION_S after login
    session = store.login("wang", "supervisor-pass", source="kiosk")
    login_at = clock.now
    while clock.now < login_at + MAX_SESSION_S - 20 * 60:
        clock.advance(20 * 60)
        assert store.session(session.token) is not None
    clock.advance(20 * 60)
    assert store.session(session.token) is None


def test_logout_disable_and_passwd_end_sessions(store: Users) -> None:
    a = store.login("wang", "supervisor-pass", source="kiosk")
    store.logout(a.token)
    assert store.session(a.token) is None
    b = store.login("wang", "supervisor-pass", source="kiosk")
    store.passwd("wang", "new-supervisor-pass", by="admin1")
    assert store.session(b.token) is None
    with pytest.raises(LoginError):
        store.login("wang", "supervisor-pass", source="other")
    c = store.login("wang", "new-supervisor-pass", source="third")
    store.disable("wang", by="admin1")
    assert store.session(c.token) is None
    with pytest.raises(LoginError):
        store.login("wang", "new-supervisor-pass", source="fourth")


def test_a_second_process_sees_changes(store: Users, station: Station) -> None:
    other = Users(Station.open(station.home), FAST)
    try:
        session = store.login("li", PIN, source="kiosk")
        assert other.session(session.token) is not None
        other.disable("li", by=CONSOLE)
        assert store.session(session.token) is None
    finally:
        other.close()


def test_entries_that_did_not_take_effect_are_reconciled(
    store: Users, station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between the ledger commit and the users.db commit: on the next open a
    disable is applied, an add or passwd (whose secret never was in the ledger) is
    reported."""
    session = store.login("li", PIN, source="kiosk")
    store.close()
    station.ledger.append(USER, {"action": "disable", "name": "li", "by": CONSOLE})
    station.ledger.append(USER, {"action": "add", "name": "zhao", "role": "auditor",
                                 "officer": None, "by": CONSOLE})  # fmt: skip
    caplog.set_level(logging.WARNING, logger="agent.users.accounts")
    again = Users(station, FAST)
    try:
        li = again.get("li")
        assert li is not None and li.disabled
        assert again.session(session.token) is None
        assert again.get("zhao") is None
        assert "user 'li' disabled" in caplog.text
        assert "add of user 'zhao', which did not take effect" in caplog.text
        caplog.clear()
        Users(station, FAST).close()  # reported once, not at every open
        assert caplog.text == ""
    finally:
        again.close()


def test_policy_defaults_are_the_shipped_kiosk_settings() -> None:
    shipped = config.load(Path(__file__).parents[4] / "config" / "evidock.toml")
    assert UserPolicy.from_config(shipped.values["kiosk"]) == UserPolicy()
    with pytest.raises(ConfigError):
        UserPolicy(lockout_minutes=0)


# -- the command line ---------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("EVIDOCK_HOME", str(home))
    Station.init(home, "ST-1").close()
    return home


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / f"secret-{len(list(tmp_path.iterdir()))}"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("action", ["add", "passwd", "disable", "list"])
def test_user_commands_have_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", action, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: evidock user" in out and "--home" in out


def test_user_commands(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = secret_file(tmp_path, ADMIN_PW)
    assert main(["user", "add", "boss", "--role", "admin", "--password-file", pw]) == 0
    assert "user boss added as admin" in capsys.readouterr().out
    pin = secret_file(tmp_path, PIN)
    args = ["user", "add", "li", "--role", "officer", "--officer", "100001"]
    assert main([*args, "--password-file", pin]) == 0
    assert "officer id 100001" in capsys.readouterr().out
    assert main(["user", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "ROLE", "OFFICER", "STATE"]
    assert out[1].split() == ["boss", "admin", "-", "active"]
    assert out[2].split() == ["li", "officer", "100001", "active"]
    assert main(["user", "passwd", "li", "--password-file", secret_file(tmp_path, "573920")]) == 0
    assert "sessions have ended" in capsys.readouterr().out
    assert main(["user", "disable", "li"]) == 0
    assert main(["user", "disable", "li"]) == 0
    assert "already disabled" in capsys.readouterr().out
    assert main(["user", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"name": "boss", "role": "admin", "officer": None, "disabled": False},
        {"name": "li", "role": "officer", "officer": "100001", "disabled": True},
    ]
    station = Station.open(home)
    try:
        bodies = user_entries(station)
    finally:
        station.close()
    actor = bodies[0]["by"]
    assert isinstance(actor, str) and actor.startswith("console:")
    assert [b["action"] for b in bodies] == ["add", "add", "passwd", "disable"]
    station = Station.open(home)
    store = Users(station)
    try:
        assert store.login("boss", ADMIN_PW, source="test").user == "boss"
    finally:
        store.close()
        station.close()


def test_user_command_errors_exit_2(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = secret_file(tmp_path, ADMIN_PW)
    cases = [
        (["user", "add", "li", "--role", "officer", "--password-file", pw], "officer id"),
        (["user", "add", "x y", "--role", "admin", "--password-file", pw], "user name"),
        (["user", "add", "a", "--role", "root", "--password-file", pw], "invalid choice"),
        (
            ["user", "add", "a", "--role", "admin", "--password-file", secret_file(tmp_path, "a", 0o644)],
            "readable by others",
        ),
        (["user", "add", "a", "--role", "admin", "--password-file", secret_file(tmp_path, "12345")], "6 digits"),
        (["user", "passwd", "nobody", "--password-file", pw], "no user 'nobody'"),
        (["user", "disable", "nobody"], "no user 'nobody'"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main(["user", "add", "boss", "--role", "admin", "--password-file", pw]) == 0
    assert main(["user", "add", "boss", "--role", "admin", "--password-file", pw]) == 2
    assert "exists" in capsys.readouterr().err


def test_user_add_asks_twice_at_the_terminal(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["s3cret-pass", "s3cret-typo"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["user", "add", "boss", "--role", "admin"]) == 2
    assert "differ" in capsys.readouterr().err
    answers = iter(["s3cret-pass", "s3cret-pass"])
    assert main(["user", "add", "boss", "--role", "admin"]) == 0
    station = Station.open(home)
    store = Users(station)
    try:
        assert store.login("boss", "s3cret-pass", source="test").user == "boss"
    finally:
        store.close()
        station.close()


def test_secrets_never_come_from_argv(home: Path) -> None:
    # no option takes a secret, and no abbreviation turns --password into --password-file
    for action in ("add", "passwd"):
        assert main(["user", action, "boss", "--role", "admin", "--password", "s3cret-pass"]) == 2
    assert main(["user", "add", "boss", "--role", "admin", "--password-f", "/x"]) == 2
    station = Station.open(home)
    store = Users(station)
    try:
        assert store.list() == []
    finally:
        store.close()
        station.close()
