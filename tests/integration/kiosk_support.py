"""The kiosk in a browser, for tests/integration/test_kiosk.py: Debian's Chromium driven by
Playwright (testing.md "Browser": never ``playwright install``), users made with
`evidock user add`, screenshots kept.

Each browser is a persistent context on a new, empty ``--user-data-dir`` (so no
cookie or cache crosses from one user or test to another), headless, with the
flags testing.md lists; ``locale`` sets the browser's language (the kiosk's own
choice is its cookie, not the browser's).

Screenshots go to the test's temporary folder and, when ``EVIDOCK_SCREENSHOTS``
names a folder, there too (that is how docs/kiosk-*.png are made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright

from tests.integration.dock_support import CLI_ARGV, MEDIA, Footage, clip_name

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}  # a 16:10 kiosk screen
SCREENSHOTS_ENV = "EVIDOCK_SCREENSHOTS"


def need_chromium() -> None:
    """Skip without Debian's chromium unless root (CI installs it: a missing one fails)."""
    if Path(CHROMIUM).exists():
        return
    if os.geteuid() == 0:
        pytest.fail(f"{CHROMIUM} missing; `./run test` installs Debian's chromium (TEST_DEBS)")
    pytest.skip(f"{CHROMIUM} missing (Debian package chromium)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers (any HTTP status); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s: {last}")


@contextmanager
def browser(pw: Playwright, folder: Path, *, locale: str = "zh-CN") -> Iterator[BrowserContext]:
    """A fresh headless Chromium (its own new user-data-dir under ``folder``)."""
    need_chromium()
    folder.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=folder))
    context = pw.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_ARGS, f"--lang={locale}"],
        locale=locale,
        viewport=VIEWPORT,  # type: ignore[arg-type]
    )
    context.set_default_timeout(20_000)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


class Screens:
    """Saves screenshots under ``folder`` and, with EVIDOCK_SCREENSHOTS=DIR, in DIR."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        extra = os.environ.get(SCREENSHOTS_ENV)
        self.extra = Path(extra) if extra else None
        self.saved: list[Path] = []

    def shot(self, page: Page, name: str, *, full_page: bool = False) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 1000, f"{path}: screenshot is empty"
        self.saved.append(path)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.extra / path.name)
        return path


def add_user(
    env: Mapping[str, str],
    folder: Path,
    name: str,
    role: str,
    secret: str,
    officer: str | None = None,
) -> None:
    """`evidock user add NAME --role ROLE [--officer ID] --password-file F` (0600 file)."""
    secret_file = folder / f"{name}.secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    argv = [*CLI_ARGV, "user", "add", name, "--role", role, "--password-file", str(secret_file)]
    if officer is not None:
        argv += ["--officer", officer]
    result = subprocess.run(
        argv, env=dict(env), cwd=folder, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def login(
    page: Page, base: str, name: str, secret: str, *, purpose: tuple[str, str] | None = None
) -> None:
    """Log in through the form; AssertionError (with the page text) if it did not take.
    With ``purpose`` (kind, detail), state it on the form a login leads to."""
    page.goto(base + "login")
    page.fill("[data-test=name]", name)
    page.fill("[data-test=secret]", secret)
    page.click("[data-test=submit]")
    page.wait_for_load_state()
    who = page.locator("[data-test=who]")
    assert who.count() == 1, f"login as {name} failed: {page.inner_text('main')}"
    if purpose is not None:
        state_purpose(page, *purpose)


def state_purpose(page: Page, kind: str = "case_work", detail: str = "") -> None:
    """Fill in and send the purpose form the page shows (Art. 18: why recordings are
    looked at); AssertionError with the page text if the kiosk did not take it."""
    assert urllib.parse.urlsplit(page.url).path == "/purpose", f"no purpose form: {page.url}"
    page.check(f"[data-test=purpose-{kind}]")
    page.fill("[data-test=purpose-detail]", detail)
    page.click("[data-test=purpose-submit]")
    page.wait_for_load_state()
    path = urllib.parse.urlsplit(page.url).path
    assert path != "/purpose", f"purpose not taken: {page.inner_text('main')}"


def cookie(context: BrowserContext, name: str) -> dict[str, Any] | None:
    for c in context.cookies():
        if c.get("name") == name:
            return dict(c)
    return None


def sse_events(url: str, seconds: float) -> tuple[bytes, list[tuple[float, bytes]]]:
    """Listen to an event stream for ``seconds`` on a plain socket: (response head,
    [(seconds after the request, data of each event)]). Good for small events,
    each written as one chunk, as the kiosk writes them."""
    parts = urllib.parse.urlsplit(url)
    started = time.monotonic()
    events: list[tuple[float, bytes]] = []
    raw = b""
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=5) as sock:
        sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        sock.settimeout(0.1)
        while time.monotonic() - started < seconds:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            raw += chunk
            for line in chunk.split(b"\n"):
                if line.startswith(b"data: "):
                    events.append((time.monotonic() - started, line[6:].rstrip(b"\r")))
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head, events


PLACEHOLDER = "evidock-kiosk-clip-" + "0" * 13  # a title of a fixed length, patched per clip


def numbered_clips(
    footage: Footage, serial: str, start: datetime, count: int
) -> dict[bytes, bytes]:
    """``count`` consecutive one-second clips of one camera (``DCIM/100MEDIA/...``), each
    real H.264 and each with its own digest, from one ffmpeg run: the clip's title
    tag is rewritten in place (same length), which keeps the file valid."""
    template = footage.clip(PLACEHOLDER)
    marker = PLACEHOLDER.encode()
    assert template.count(marker) == 1, "the title tag is not in the clip once"
    clips: dict[bytes, bytes] = {}
    for i in range(count):
        title = f"{serial}-{i:08d}".encode().ljust(len(marker), b"-")[: len(marker)]
        name = clip_name(serial, start + timedelta(seconds=i), i + 1)
        clips[f"{MEDIA}/{name}".encode()] = template.replace(marker, title)
    return clips


def session_csrf(page: Page) -> str:
    """The session's CSRF token, as the page's own forms carry it (the logout form)."""
    value = page.locator("form[action='/logout'] input[name=csrf]").get_attribute("value")
    assert value, "no CSRF token on the page"
    return value
