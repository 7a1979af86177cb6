"""The kiosk's HTTP server: uvicorn in a thread of the daemon, on the loopback address.

The socket is bound in ``start()``, in the caller's thread, so a port already in
use is reported there (and the daemon goes on offloading without a screen)
instead of killing a thread silently. ``stop()`` ends the live streams, asks
uvicorn to exit and waits a bounded time: the kiosk never holds the daemon up.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette

from hashing.errors import ConfigError

log = logging.getLogger(__name__)

GRACE_S = 2  # open live streams get this long to end at shutdown


class KioskServer:
    def __init__(
        self,
        app: Starlette,
        host: str = "127.0.0.1",
        port: int = 8470,
        *,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        """``closers`` run after the server stopped (e.g. the user store's close)."""
        self.app = app
        self.host = host
        self.port = port
        self.closers = list(closers)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind and serve in a daemon thread. Raises ConfigError if the address is unusable."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it a response's last segment waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise ConfigError(
                f"kiosk: cannot listen on {self.host}:{self.port}: {e.strerror}; "
                "set [kiosk] address and port in /etc/evidock/evidock.toml"
            ) from e
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACE_S,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(self._server, sock), name="kiosk", daemon=True
        )
        self._thread.start()
        log.warning("kiosk on %s", self.url)

    @staticmethod
    def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except Exception:  # error boundary: the dock goes on without its screen
            log.exception("kiosk server stopped")

    def wait_started(self, timeout_s: float = 10.0) -> bool:
        """True once uvicorn serves (for tests and the benchmark)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._server is not None and self._server.started:
                return True
            if self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        kiosk: Any = getattr(self.app.state, "kiosk", None)
        if kiosk is not None:
            kiosk.closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(1.0)
        if self._socket is not None:
            self._socket.close()
        if kiosk is not None:
            kiosk.close()
        for close in self.closers:
            try:
                close()
            except Exception:
                log.exception("closing a kiosk resource failed")
        self.closers = []
