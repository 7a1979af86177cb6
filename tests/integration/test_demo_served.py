"""`evidock demo --serve` as a newcomer runs it, its kiosk page opened in a real browser.

The real command runs as a subprocess (bounded waits; SIGTERM in teardown, and
it must then exit 0). Debian's Chromium, driven by Playwright
(kiosk_support.browser: never ``playwright install``), opens the address the
demo prints, logged out and as each user the demo says to log in as, in both
languages. Pages are found by following every same-site link of each page
(the nav bar first among them), not from a fixed list: a new page that answers
500 is caught. Each must answer 200 and show its heading, with no 5xx for any
request the page makes and no script error. The dock page must say sensibly
that no broker is configured (uploads stay queued), before and after the live
feed takes over. One screenshot of the dock page is kept (Screens).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Page, Playwright, Response, sync_playwright

from agent.demo.tour import AUDITOR, SERIAL, SUPERVISOR
from agent.kiosk.i18n import EN, ZH, Translator
from tests.integration.dock_support import CLI_ARGV
from tests.integration.kiosk_support import Screens, browser, login, need_chromium, wait_http

READY_S = 300.0  # the whole demo before it serves (2 shared cores: usually ~30 s)
STOP_S = 60.0  # SIGTERM to exit
HEX64 = re.compile(r"[0-9a-f]{64}")
NOT_PAGES = ("/static/", "/thumbs/", "/media/", "/events")
MAX_PAGES = 40  # a crawl that finds more is running away
# Where a page's heading comes from: an i18n key, by path (a 64-hex segment is {sha256}).
HEADINGS = {
    "/": "nav.dock",
    "/login": "login.title",
    "/purpose": "purpose.title",
    "/recordings": "rec.title",
    "/access": "access.title",
}
RECORDING_NAME = re.compile(rf"{SERIAL}_\d{{14}}_\d{{4}}\.MP4")  # a demo clip's page
KIOSK_LINE = re.compile(r"kiosk page \(.*\): (http://\S+/)")
LOGIN_LINE = re.compile(r"\bas ([\w.-]+), password in (\S+?): ")
READY_LINE = "Ctrl-C stops"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str
    tmp: Path
    screens: Screens
    passwords: dict[str, str] = field(default_factory=dict)  # user -> secret, as printed

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _evidock() -> list[str]:
    """The `evidock` command of this virtual environment (else python -m agent.cli)."""
    script = Path(sys.executable).parent / "evidock"
    return [str(script)] if script.exists() else list(CLI_ARGV)


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then (after STOP_S) SIGKILL: the exit code, None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    need_chromium()
    tmp = tmp_path_factory.mktemp("demo-served")
    log = tmp / "demo.log"
    argv = [*_evidock(), "demo", "--home", str(tmp / "station"), "--out", str(tmp / "export")]
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, "--serve"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    stopped = False
    try:
        deadline = time.monotonic() + READY_S
        text = ""
        while READY_LINE not in text:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited ({proc.returncode}) before serving:\n{text}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not serve within {READY_S:.0f} s:\n{text}")
            time.sleep(0.5)
            text = log.read_text(encoding="utf-8", errors="replace")
        served_part = text[text.index("Demo complete") :]
        found = KIOSK_LINE.findall(served_part)
        assert found, f"the demo printed no kiosk address:\n{served_part}"
        site = Served(proc, log, found[-1], tmp, Screens(tmp / "screenshots"))
        for name, secret_file in LOGIN_LINE.findall(served_part):
            path = Path(secret_file)
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            site.passwords[name] = path.read_text(encoding="utf-8").strip()
        wait_http(site.base)
        yield site
        code = _stop(proc)
        stopped = True
        assert code == 0, f"SIGTERM: the demo exited {code}:\n{site.output()[-3000:]}"
    finally:
        if not stopped:
            _stop(proc)


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    need_chromium()
    with sync_playwright() as playwright:
        yield playwright


# -- the crawl -------------------------------------------------------------------------------


def page_kind(url: str) -> str:
    """A page, whatever its digest or query values: the path with {sha256} for a digest,
    and the query's keys (``/access?sha256``): one visit of each kind is enough."""
    parts = urllib.parse.urlsplit(url)
    keys = sorted({k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)})
    return HEX64.sub("{sha256}", parts.path) + ("?" + "&".join(keys) if keys else "")


@dataclass
class Watch:
    """Every 5xx answer and script error while a browser page is open."""

    failures: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def on_response(r: Response) -> None:
            if r.status >= 500:
                self.failures.append(f"HTTP {r.status} for {r.url}")

        page.on("response", on_response)
        page.on("pageerror", lambda e: self.failures.append(f"script error: {e}"))
        page.on(
            "console",
            lambda m: self.failures.append(f"console: {m.text}") if m.type == "error" else None,
        )


def check_heading(page: Page, t: Translator) -> str:
    """The page's heading is shown, and is the one its path calls for; its text."""
    heading = page.locator("main h1").first
    assert heading.count() == 1, f"{page.url}: no heading: {page.inner_text('body')[:500]}"
    assert heading.is_visible(), f"{page.url}: the heading is hidden"
    text = heading.inner_text().strip()
    path = urllib.parse.urlsplit(page.url).path
    assert page.locator("[data-test=error]").count() == 0, f"{page.url}: error page: {text}"
    if path in HEADINGS:
        assert text == t(HEADINGS[path]), (page.url, text)
    elif page_kind(path) == "/recordings/{sha256}":
        assert RECORDING_NAME.fullmatch(text), (page.url, text)
    else:  # a page this test does not know yet: it has a heading of its own
        assert text, f"{page.url}: empty heading"
    return text


def crawl(page: Page, base: str, t: Translator, starts: list[str]) -> dict[str, str]:
    """Visit ``starts`` and every same-site page their links lead to, breadth first (one
    of each kind); each must answer 200 and show its heading. {kind: heading}."""
    origin = urllib.parse.urlsplit(base)[:2]
    queue = deque(urllib.parse.urljoin(base, s) for s in starts)
    asked: set[str] = set()
    reached: dict[str, str] = {}
    while queue:
        url = queue.popleft()
        kind = page_kind(url)
        if kind in asked:
            continue
        asked.add(kind)
        assert len(asked) <= MAX_PAGES, f"more than {MAX_PAGES} kinds of page: {sorted(asked)}"
        response = page.goto(url)
        assert response is not None, url
        body = page.inner_text("body")[:800]
        assert response.status == 200, f"{url} -> {page.url}: HTTP {response.status}\n{body}"
        reached[page_kind(page.url)] = check_heading(page, t)
        hrefs: list[str] = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for href in hrefs:
            parts = urllib.parse.urlsplit(href)
            if parts[:2] == origin and not parts.path.startswith(NOT_PAGES):
                queue.append(urllib.parse.urlunsplit((*parts[:4], "")))
    return reached


def nav_links(page: Page) -> set[str]:
    """Where the top bar's links go, as paths."""
    hrefs: list[str] = page.eval_on_selector_all("nav a[href]", "els => els.map(e => e.href)")
    return {urllib.parse.urlsplit(h).path for h in hrefs}


def switch_language(page: Page, lang: str) -> None:
    page.click(f"[data-test=lang-{lang}]")
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == lang


def check_uplink_panel(page: Page, t: Translator) -> None:
    """No broker is configured: the panel says so, and that uploads wait on the dock."""
    panel = page.locator("#uplink")
    assert "uplink-unconfigured" in (panel.get_attribute("class") or "")
    assert panel.locator("h2").inner_text() == t("uplink.title")
    assert panel.locator("[data-u=link]").inner_text() == t("uplink.unconfigured")
    note = panel.locator("[data-u=note]")
    assert note.is_visible() and note.inner_text() == t("uplink.unconfigured_note")
    lines = panel.locator("[data-u=lines] li").all_inner_texts()
    assert lines, "the uplink panel lists nothing"


# -- the tests -------------------------------------------------------------------------------


def test_the_dock_page_a_newcomer_opens(served: Served, pw: Playwright) -> None:
    """The address the demo prints answers 200 with the dock page, in Chinese first, its
    uplink panel saying that no broker is configured, also once the live feed runs."""
    zh = Translator(ZH)
    watch = Watch()
    with browser(pw, served.tmp / "browser-home") as context:
        page = context.new_page()
        watch.attach(page)
        response = page.goto(served.base)
        assert response is not None and response.status == 200, served.output()[-3000:]
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        check_heading(page, zh)
        check_uplink_panel(page, zh)
        page.wait_for_selector("body[data-live='1']")  # the page's script applied /events
        check_uplink_panel(page, zh)
        assert page.locator("[data-test=login]").inner_text() == zh("nav.login")
        served.screens.shot(page, "demo-served-dock")
        switch_language(page, EN)
        check_heading(page, Translator(EN))
        check_uplink_panel(page, Translator(EN))
    assert not watch.failures, watch.failures


@pytest.mark.parametrize("lang", [ZH, EN])
def test_every_page_a_logged_out_user_reaches(served: Served, pw: Playwright, lang: str) -> None:
    t = Translator(lang)
    watch = Watch()
    with browser(pw, served.tmp / f"browser-anon-{lang}") as context:
        page = context.new_page()
        watch.attach(page)
        page.goto(served.base)
        if lang != ZH:
            switch_language(page, lang)
        assert nav_links(page) == {"/"}, "a logged-out user sees more than the dock"
        reached = crawl(page, served.base, t, ["/", "/login"])
        assert {"/", "/login"} <= set(reached), reached
        # What needs a login sends there, and says so with the login page's heading.
        for path in ("/recordings", "/purpose", "/access"):
            response = page.goto(served.base.rstrip("/") + path)
            assert response is not None and response.status == 200, path
            assert urllib.parse.urlsplit(page.url).path == "/login", (path, page.url)
            check_heading(page, t)
    assert not watch.failures, watch.failures


# (user, the kinds of page their nav and links must lead to) for each user the demo makes.
ROLE_PAGES = {
    SUPERVISOR: {"/", "/purpose?next", "/recordings", "/recordings/{sha256}"},
    AUDITOR: {"/", "/purpose?next", "/recordings", "/recordings/{sha256}", "/access"},
}


def test_the_demo_says_how_to_log_in_as_each_of_its_users(served: Served) -> None:
    assert set(served.passwords) == set(ROLE_PAGES), served.output()[-2000:]


@pytest.mark.parametrize("lang", [ZH, EN])
@pytest.mark.parametrize("name", sorted(ROLE_PAGES))
def test_every_page_each_demo_user_reaches(
    served: Served, pw: Playwright, name: str, lang: str
) -> None:
    """Log in with the password file the demo names; the purpose form comes first (a
    page of its own), then every page the links lead to."""
    secret = served.passwords.get(name)
    assert secret, f"the demo did not say how to log in as {name}"
    t = Translator(lang)
    watch = Watch()
    with browser(pw, served.tmp / f"browser-{name}-{lang}") as context:
        page = context.new_page()
        watch.attach(page)
        page.goto(served.base)
        if lang != ZH:
            switch_language(page, lang)
        login(page, served.base, name, secret)
        assert urllib.parse.urlsplit(page.url).path == "/purpose", page.url
        check_heading(page, t)
        page.check("[data-test=purpose-inspection]")
        page.click("[data-test=purpose-submit]")
        page.wait_for_load_state()
        assert urllib.parse.urlsplit(page.url).path == "/recordings", page.url
        check_heading(page, t)
        assert page.locator("[data-test=name]").count() == 5, "the demo's 5 clips are listed"
        reached = crawl(page, served.base, t, ["/", *sorted(nav_links(page))])
        missing = ROLE_PAGES[name] - set(reached)
        assert not missing, f"{name}: not reached: {missing}; reached {sorted(reached)}"
        if "/access" not in ROLE_PAGES[name]:
            assert "/access" not in reached, f"{name} reached the access log"
        page.goto(served.base)
        check_uplink_panel(page, t)  # logged in, the dock page is the same
    assert not watch.failures, watch.failures
