"""A tiny sd_notify(3) client: tell systemd the daemon is ready, what it is doing,
and that it is still alive (systemd/evidock.service: Type=notify, WatchdogSec=).

No dependency: one AF_UNIX datagram to ``$NOTIFY_SOCKET`` per message, as
sd_notify(3) specifies; a name starting with ``@`` is an abstract socket.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op returning False,
so the daemon runs the same in a terminal, in tests and under systemd.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    name = os.environ.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace
    if name.startswith("/"):
        return name
    return None  # unset, or a kind we do not speak (vsock:)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=..."``, several
    separated by newlines). True if it was sent; never raises: a daemon must not
    stop because its supervisor went away."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8", "replace"))
    except OSError as e:
        log.debug("sd_notify %r to %r failed: %s", state, address, e)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1`` (``$WATCHDOG_USEC``), or
    None when there is no watchdog for this process (unset, malformed, or
    ``$WATCHDOG_PID`` names another process: the variable was inherited)."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1e6
