"""Fixtures for a real mosquitto 2.0 (agent.demo.localbroker) with TLS, passwords and the shipped ACL.

evidock's uploads go through an MQTT broker it does not control, so the tests run a
real one rather than a fake: password checks, ACL decisions, MQTT 5 reason codes,
retained messages and persistent sessions are the broker's, not our idea of them.
The ACL is ``config/mosquitto/acl`` itself, copied, so a change to the shipped file
is a change to what these tests check.

Use the fixtures from another test module by importing them under another name:
each fixture carries its own name, so the alias keeps ruff from seeing the test's
``broker`` argument as a redefinition of the import (F811), and the ``noqa`` keeps
ruff from removing an import it sees as unused::

    from tests.integration.broker import Broker
    from tests.integration.broker import broker as _broker  # noqa: F401
    from tests.integration.broker import pki as _pki  # noqa: F401

    def test_upload(broker: Broker) -> None:
        ...

``from tests.integration.broker import broker, pki  # noqa: F401`` works as well,
with ``# noqa: F811`` on every test that takes ``broker``. Registering the module
with ``pytest_plugins = ("tests.integration.broker",)`` also works, but pytest
then warns that it cannot rewrite asserts in a module the test already imported.

Fixtures: ``pki`` (session: one CA and server certificate for the whole run),
``broker`` (per test: a started broker with the users in ``TEST_PASSWORDS``) and
``broker_factory`` (per test: ``broker_factory(max_packet_size=..., ...)`` starts
more brokers with other settings; all are stopped and removed at teardown). They
skip the test when mosquitto or openssl is not installed.

Run as root, mosquitto switches to the ``mosquitto`` user, which must be able to
read every file it is given and write its persistence folder; the broker therefore
lives in its own folder under the system temp folder (pytest's ``tmp_path`` sits in
a root-only folder) with everything owned by that user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.demo.localbroker import (
    SHIPPED_ACL,
    SHIPPED_CONF,
    Broker,
    Pki,
    _issue,
    connack_code,
    free_port,
    make_pki,
    mosquitto_missing,
)

TEST_PASSWORDS: Mapping[str, str] = {
    "platform": "platform-test-password",
    "dock-01": "dock-01-test-password",
    "dock-02": "dock-02-test-password",
}

__all__ = [
    "SHIPPED_ACL",
    "SHIPPED_CONF",
    "TEST_PASSWORDS",
    "Broker",
    "BrokerFactory",
    "Pki",
    "connack_code",
    "free_port",
    "issue_server_cert",
    "make_pki",
    "require_mosquitto",
]


def require_mosquitto() -> None:
    """Skip the calling test when no broker can run (CI installs mosquitto)."""
    reason = mosquitto_missing()
    if reason is not None:
        pytest.skip(reason)


def issue_server_cert(pki: Pki, stem: str) -> tuple[Path, Path]:
    """Another server certificate (CN and SAN ``localhost``, SAN IP 127.0.0.1) from the
    test CA, for a TLS server in front of the broker (tests/emqx_ft). Returns (cert, key)."""
    return _issue(pki.folder, pki.ca_cert, pki.ca_key, stem, "localhost", "serverAuth")


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(name="pki", scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA and server certificate for the whole run (a few milliseconds with P-256)."""
    require_mosquitto()
    return make_pki(tmp_path_factory.mktemp("pki"))


BrokerFactory = Callable[..., Broker]


@contextmanager
def _brokers(pki: Pki) -> Iterator[BrokerFactory]:
    made: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        kwargs.setdefault("users", TEST_PASSWORDS)
        b = Broker(pki, **kwargs)
        made.append(b)
        b.start()
        return b

    try:
        yield make
    finally:
        for b in made:
            b.stop()
            # pytest shows this with the test's output, i.e. only when it failed.
            print(f"--- {b!r} log ---\n{b.log_text()[-20_000:]}")
            b.close()


@pytest.fixture(name="broker")
def broker(pki: Pki) -> Iterator[Broker]:
    """A started broker with the users and passwords in ``TEST_PASSWORDS``
    (``platform``, ``dock-01``, ``dock-02``), also in ``broker.passwords``."""
    require_mosquitto()
    with _brokers(pki) as make:
        yield make()


@pytest.fixture(name="broker_factory")
def broker_factory(pki: Pki) -> Iterator[BrokerFactory]:
    """Start brokers with other settings: ``broker_factory(max_packet_size=...)`` takes
    ``Broker``'s keyword arguments (``users`` defaults to ``TEST_PASSWORDS``); all
    are stopped and deleted at teardown."""
    require_mosquitto()
    with _brokers(pki) as make:
        yield make
