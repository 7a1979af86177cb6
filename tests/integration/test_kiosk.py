"""The kiosk page in Debian's Chromium (Playwright), served by a real `evidock agent`.

Issue 5, "Tests that must exist": a camera hot-plugged through umockdev (an exFAT
image on a loop device) shows its tile, the progress moving and "可以拔出" at the
end; a supervisor logs in and tags clips, and the tag entry names them; an
officer cannot tag (no control on the page, and a forged POST gets 403); the
language switch works; a file name holding HTML shows as text. Beside them, the
web attacks the page must withstand: CSRF (no token, a wrong one, another
site's Origin), session fixation, path traversal to thumbnails and media,
foreign Host headers, and the security headers on every response.

Two set-ups: the hot-plug test has its own station and a camera on a umockdev
bed (root, exFAT, FUSE); the others share one station per module, where two
cameras dock through a watched folder (no root needed), a file with a hostile
name is ingested from the command line, and users of each role exist.
Screenshots of the main screens are saved (kiosk_support.Screens).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Dialog, Playwright, sync_playwright

from tests.integration.dock_support import (
    Footage,
    Rig,
    committed,
    of_type,
    sessions,
)
from tests.integration.hardware import exfat_image
from tests.integration.kiosk_support import (
    Screens,
    add_user,
    browser,
    cookie,
    free_port,
    login,
    need_chromium,
    numbered_clips,
    session_csrf,
    sse_events,
    state_purpose,
    wait_http,
)

DAY = datetime(2026, 3, 2, 8, 0, 0)  # the cameras' wall clock (no zone), fixed so runs are alike
HOSTILE_NAME = "<img src=x onerror=alert(1)>.mp4"
HOSTILE_CASE = "<script>window.pwned=1</script>"
SUPERVISOR = ("sup", "supervisor-secret-1")
OFFICER = ("off", "officer-secret-1")
AUDITOR = ("aud", "auditor-secret-1")
ADMIN = ("adm", "admin-secret-1")
OFFICER_ID = "100101"  # the officer account's id: camera A is bound to it
OTHER_OFFICER = "100202"
CAM_A, CAM_B = "KIOSK0001", "KIOSK0002"
CASE_WORK = ("case_work", "A2026-0042")  # the purpose most tests state after logging in


def need_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing (Debian package ffmpeg)")


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    need_chromium()
    with sync_playwright() as playwright:
        yield playwright


# -- the shared station: two cameras docked through a watched folder --------------------------


@dataclass
class Site:
    rig: Rig
    base: str
    screens: Screens
    tmp: Path
    clips_a: dict[str, str] = field(default_factory=dict)  # sha256 -> name (officer 100101)
    clips_b: dict[str, str] = field(default_factory=dict)  # sha256 -> name (officer 100202)
    hostile: str = ""  # sha256 of the file named HOSTILE_NAME

    def url(self, path: str = "") -> str:
        return self.base + path.lstrip("/")


def folder_camera(root: Path, serial: str, officer: str, clips: dict[bytes, bytes]) -> Path:
    """A recorder folder (recorder.json + DCIM/100MEDIA/...) built beside the dock root."""
    folder = root / f".{serial}.building"
    for rel, data in clips.items():
        path = folder / rel.decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    identity = {"serial": serial, "officer": officer, "vendor": "evidock", "model": "test"}
    (folder / "recorder.json").write_text(json.dumps(identity), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    need_chromium()
    need_ffmpeg()
    tmp = tmp_path_factory.mktemp("kiosk")
    rig = Rig(tmp)
    try:
        rig.init_station()
        dock = tmp / "dock"
        dock.mkdir()
        port = free_port()
        rig.configure(
            usb={"enabled": False},
            folder={"roots": [str(dock)], "quiet_s": 0},
            kiosk={"port": port, "session_minutes": 30},
        )
        env = rig.env()
        for (name, secret), role, officer in (
            (SUPERVISOR, "supervisor", None),
            (OFFICER, "officer", OFFICER_ID),
            (AUDITOR, "auditor", None),
            (ADMIN, "admin", None),
        ):
            add_user(env, tmp, name, role, secret, officer)
        assert rig.cli("device", "assign", CAM_A, "--officer", OFFICER_ID).returncode == 0
        # CAM_B is not registered: its tile shows the "not assigned" anomaly.
        hostile_dir = tmp / "hostile"
        hostile_dir.mkdir()
        footage = Footage(tmp / "footage")
        (hostile_dir / HOSTILE_NAME).write_bytes(footage.clip("hostile"))
        ingested = rig.cli("ingest", str(hostile_dir / HOSTILE_NAME))
        assert ingested.returncode == 0, ingested.stderr
        screens = Screens(tmp / "screenshots")
        built = Site(rig, f"http://127.0.0.1:{port}/", screens, tmp)
        built.hostile = ingested.stdout.split()[0]

        agent = rig.start_agent(udev=False)
        wait_http(built.url())
        cams = {
            CAM_A: (OFFICER_ID, footage.camera(CAM_A, DAY, 3)),
            CAM_B: (OTHER_OFFICER, footage.camera(CAM_B, DAY, 2)),
        }
        for serial, (officer, clips) in cams.items():
            folder_camera(tmp, serial, officer, clips).rename(dock / serial)
        agent.wait_status(
            lambda s: committed(CAM_A)(s) and committed(CAM_B)(s), "both cameras", timeout=90
        )
        for entry in of_type(rig.home, "ingest"):
            body = entry["body"]
            target = {CAM_A: built.clips_a, CAM_B: built.clips_b}.get(body.get("device"))
            if target is not None:
                target[body["sha256"]] = body["name"]
        assert len(built.clips_a) == 3 and len(built.clips_b) == 2
        yield built
    finally:
        rig.close()


# -- 1. a camera hot-plugged through umockdev ------------------------------------------------


def test_hotplugged_camera_shows_tile_progress_and_safe_to_unplug(
    pw: Playwright, tmp_path: Path
) -> None:
    """exFAT image + umockdev "add" + `evidock agent` with the kiosk: the page (opened
    before the camera arrives) grows a tile that says 请勿拔出 while the progress bar
    moves, and 可以拔出 once the session is committed."""
    need_ffmpeg()
    serial, officer, count = "ZFY0009001", "100909", 400  # ~20 ms each: several seconds
    rig = Rig(tmp_path)
    try:
        rig.init_station()
        port = free_port()
        rig.configure(kiosk={"port": port})
        assert rig.cli("device", "assign", serial, "--officer", officer).returncode == 0
        clips = numbered_clips(Footage(tmp_path / "footage"), serial, DAY, count)
        image = exfat_image(tmp_path / "cam.img", clips, size_mb=32)
        agent = rig.start_agent()
        base = f"http://127.0.0.1:{port}/"
        wait_http(base)
        screens = Screens(tmp_path / "screenshots")
        with browser(pw, tmp_path / "browser") as context:
            page = context.new_page()
            page.goto(base)
            assert page.locator("html").get_attribute("lang") == "zh-CN"
            page.wait_for_selector("body[data-live='1']")  # the live feed is connected
            assert page.locator("[data-tile]").count() == 0
            assert "暂无记录仪接入" in page.inner_text("#empty")

            rig.plug(image, serial)
            tile = page.locator("[data-tile]", has_text=serial)
            tile.wait_for(timeout=30_000)
            seen: list[tuple[int, str, str]] = []
            shot_mid = False
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = tile.evaluate(
                    "t => [t.querySelector('progress').value,"
                    " t.querySelector('[data-f=files]').textContent,"
                    " t.querySelector('[data-f=unplug]').textContent]"
                )
                pct, files, unplug = int(state[0]), str(state[1]), str(state[2])
                if not seen or seen[-1] != (pct, files, unplug):
                    seen.append((pct, files, unplug))
                if 0 < pct < 100 and not shot_mid:
                    screens.shot(page, "kiosk-dock-copying")
                    shot_mid = True
                if unplug == "可以拔出":
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"never safe to unplug; seen {seen}\n{agent.log_tail()}")

            status = agent.wait_status(committed(serial), "the committed session", timeout=10)
            (session,) = sessions(status, serial)
            assert session["safe_to_unplug"] is True
            pcts = [p for p, _, _ in seen]
            assert pcts == sorted(pcts), f"progress went backwards: {seen}"
            assert any(0 < p < 100 for p in pcts), f"no progress in between: {seen}"
            assert len(set(pcts)) >= 3, f"the bar hardly moved: {seen}"
            assert all(u == "请勿拔出" for _, _, u in seen[:-1]), seen
            assert seen[-1] == (100, f"文件 {count} / {count}", "可以拔出"), seen
            assert "safe" in (tile.get_attribute("class") or "").split()
            assert tile.locator(".officer .value").inner_text() == officer
            assert "校验通过" in tile.locator("[data-f=state_text]").inner_text()
            assert tile.locator("[data-f=anomalies]").is_hidden()
            screens.shot(page, "kiosk-dock-hotplug")

            # Live updates stop being needed: without scripts the page refreshes itself.
            noscript = page.locator("noscript").inner_html()
            assert 'http-equiv="refresh"' in noscript
        code, _ = agent.terminate()
        assert code == 0, agent.log_tail()
    finally:
        rig.close()


# -- 2. supervisors tag; officers cannot ----------------------------------------------------


def test_supervisor_tags_clips_and_the_tag_entry_names_them(pw: Playwright, site: Site) -> None:
    before = len(of_type(site.rig.home, "tag"))
    with browser(pw, site.tmp / "browser-sup") as context:
        page = context.new_page()
        page.goto(site.url())
        page.wait_for_selector("body[data-live='1']")
        for serial in (CAM_A, CAM_B):
            tile = page.locator("[data-tile]", has_text=serial)
            assert tile.locator("[data-f=unplug]").inner_text() == "可以拔出"
        unassigned = page.locator("[data-tile]", has_text=CAM_B).locator("[data-f=anomalies]")
        assert "未绑定警员" in unassigned.inner_text()
        site.screens.shot(page, "kiosk-dock")

        login(page, site.url(), *SUPERVISOR, purpose=CASE_WORK)
        assert page.url.endswith("/recordings")
        rows = page.locator("table.recordings tbody tr")
        assert rows.count() == 6
        # thumbnails of docked clips come from the ledger's digests
        thumbs = page.locator("td.thumb img")
        assert thumbs.count() == 5  # the CLI-ingested file has no thumbnail
        assert all(
            page.evaluate("i => i.complete && i.naturalWidth > 0", thumbs.nth(i).element_handle())
            for i in range(thumbs.count())
        )
        # filter by device, then untagged
        page.fill("input[name=device]", CAM_A)
        page.click("form.filters button[type=submit]")
        page.wait_for_load_state()
        assert page.locator("table.recordings tbody tr").count() == 3
        site.screens.shot(page, "kiosk-supervisor", full_page=True)

        chosen = sorted(site.clips_a)[:2]
        for sha in chosen:
            page.check(f"input[name=sha256][value='{sha}']")
        page.fill("[data-test=case]", "A2026-0042")
        page.select_option("[data-test=kind]", "evidence_preservation")
        page.select_option("[data-test=retention]", "evidence")
        page.fill("[data-test=reason]", "complaint filed")
        page.click("[data-test=tag-submit]")
        page.wait_for_selector("[data-test=tagged]")
        done = page.inner_text("[data-test=tagged]")
        assert "A2026-0042" in done and "sup" in done, done
        assert f"device={CAM_A}" in page.url  # back on the same filtered list
        for sha in chosen:
            row = page.locator(f"tr[data-sha256='{sha}']")
            assert row.locator(".case").inner_text() == "A2026-0042"

        page.goto(site.url("/recordings?untagged=1&device=" + CAM_A))
        assert page.locator("table.recordings tbody tr").count() == 1

    tags = of_type(site.rig.home, "tag")
    assert len(tags) == before + 1
    body = tags[-1]["body"]
    assert body["by"] == "sup", body
    assert body["files"] == chosen
    assert (body["case"], body["kind"], body["retention"], body["reason"]) == (
        "A2026-0042",
        "evidence_preservation",
        "evidence",
        "complaint filed",
    )


def test_supervisor_plays_a_clip_in_the_page_with_range_requests(
    pw: Playwright, site: Site
) -> None:
    """One page load is one ``view`` and one ``play`` entry, naming the user, their role,
    the recording and the purpose; the Range requests of the playback add none."""
    sha = sorted(site.clips_b)[0]
    stored = site.rig.home / "store" / sha[:2] / sha[2:4] / sha
    data = stored.read_bytes()
    with browser(pw, site.tmp / "browser-play") as context:
        page = context.new_page()
        login(page, site.url(), *SUPERVISOR, purpose=("disclosure", "GK-2026-017"))
        before = len(accesses(site))
        page.goto(site.url(f"/recordings/{sha}"))
        assert page.inner_text("[data-test=name]") == site.clips_b[sha]
        video = page.locator("video[data-test=player]")
        video.wait_for()
        page.wait_for_function(
            "() => { const v = document.querySelector('video'); return v.readyState >= 1 }"
        )
        duration = float(video.evaluate("v => v.duration"))
        assert 0.5 < duration < 2.5, duration
        video.evaluate("v => { v.muted = true; return v.play() }")
        page.wait_for_function("() => document.querySelector('video').currentTime > 0.2")
        site.screens.shot(page, "kiosk-player")

        src = video.get_attribute("src") or ""
        assert src.startswith(f"/media/{sha}?grant="), src
        ranged = context.request.get(site.url(src), headers={"Range": "bytes=100-199"})
        assert ranged.status == 206
        assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"
        assert ranged.body() == data[100:200]
        assert ranged.headers["content-type"] == "video/mp4"
        whole = context.request.get(site.url(src))
        assert whole.status == 200 and whole.body() == data
        assert whole.headers["accept-ranges"] == "bytes"
        for start in range(0, len(data), max(1, len(data) // 5)):
            part = context.request.get(site.url(src), headers={"Range": f"bytes={start}-"})
            assert part.status == 206 and part.body() == data[start:]
        # without the grant, the bytes are not served
        assert context.request.get(site.url(f"/media/{sha}")).status == 403
        new = accesses(site)[before:]
        logged = page.inner_text("[data-test=logged]")
        # Art. 16: the page shows the class and the earliest purge date (an untagged
        # recording is routine: a year after it was recorded, plus the grace days).
        kept = page.inner_text("[data-test=retention]")
        purge_after = page.inner_text("[data-test=purge-after]")
    assert "日常" in kept, kept
    assert int(purge_after[:4]) > datetime.now(UTC).year, purge_after
    assert [(e["action"], e["user"], e["role"], e["files"], e["purpose"]) for e in new] == [
        ("view", "sup", "supervisor", [sha], "disclosure request: GK-2026-017"),
        ("play", "sup", "supervisor", [sha], "disclosure request: GK-2026-017"),
    ], new
    assert all(str(e["seq"]) in logged for e in new), logged


def test_officer_cannot_tag_and_sees_only_their_own(pw: Playwright, site: Site) -> None:
    before = len(of_type(site.rig.home, "tag"))
    own, other = sorted(site.clips_a)[0], sorted(site.clips_b)[0]
    with browser(pw, site.tmp / "browser-off") as context:
        page = context.new_page()
        login(page, site.url(), *OFFICER, purpose=CASE_WORK)
        assert page.url.endswith("/recordings")
        shown = {
            page.locator("table.recordings tbody tr").nth(i).get_attribute("data-sha256")
            for i in range(page.locator("table.recordings tbody tr").count())
        }
        assert shown == set(site.clips_a), "an officer must see exactly their own recordings"
        assert page.locator("[data-test=tag-panel]").count() == 0
        assert page.locator("input[name=sha256]").count() == 0
        assert page.locator("form[action='/tag']").count() == 0
        site.screens.shot(page, "kiosk-officer")

        page.goto(site.url(f"/recordings/{own}"))
        assert page.locator("form[action='/tag']").count() == 0
        assert page.locator("video[data-test=player]").count() == 1  # officers play their own

        csrf = session_csrf(page)
        forged = context.request.post(
            site.url("/tag"),
            form={"csrf": csrf, "sha256": own, "case": "FORGED-1", "kind": "other"},
        )
        assert forged.status == 403
        # another officer's recording: neither its page, its thumbnail nor its bytes,
        # and the refusals are not logged as accesses
        logged = len(accesses(site))
        own_src = page.locator("video[data-test=player]").get_attribute("src") or ""
        assert context.request.get(site.url(f"/recordings/{other}")).status == 403
        assert context.request.get(site.url(f"/thumbs/{other}.jpg")).status == 403
        assert context.request.get(site.url(f"/media/{other}")).status == 403
        forged_src = own_src.replace(own, other)  # their own grant, for another recording
        assert context.request.get(site.url(forged_src)).status == 403
        assert len(accesses(site)) == logged, "a refused request was logged"
        assert context.request.get(site.url(f"/thumbs/{own}.jpg")).status == 200
        assert context.request.get(site.url(own_src), headers={"Range": "bytes=0-9"}).status == 206
    assert len(of_type(site.rig.home, "tag")) == before, "a forged POST was recorded"


def test_roles_that_may_not_play_or_view(pw: Playwright, site: Site) -> None:
    sha = sorted(site.clips_a)[0]
    with browser(pw, site.tmp / "browser-roles") as context:
        page = context.new_page()
        before = len(accesses(site))
        login(page, site.url(), *ADMIN)  # admins manage the appliance, not evidence
        assert page.url.endswith("/access")  # where a login takes them instead
        assert page.locator("a[href='/recordings']").count() == 0
        assert context.request.get(site.url("/recordings")).status == 403
        assert context.request.get(site.url(f"/recordings/{sha}")).status == 403
        assert context.request.get(site.url("/purpose")).status == 403
        assert context.request.get(site.url(f"/media/{sha}")).status == 403
        assert context.request.get(site.url(f"/thumbs/{sha}.jpg")).status == 403
        stated = context.request.post(
            site.url("/purpose"), form={"csrf": session_csrf(page), "kind": "inspection"}
        )
        assert stated.status == 403
        assert len(accesses(site)) == before, "an admin's refused request was logged"
        page.click("[data-test=logout]")
        page.wait_for_load_state()
        login(page, site.url(), *AUDITOR, purpose=("spot_check", ""))  # see and play, no tags
        page.goto(site.url(f"/recordings/{sha}"))
        assert page.locator("video[data-test=player]").count() == 1
        assert page.locator("form[action='/tag']").count() == 0
        forged = context.request.post(
            site.url("/tag"),
            form={"csrf": session_csrf(page), "sha256": sha, "case": "X-1", "kind": "other"},
        )
        assert forged.status == 403
    with browser(pw, site.tmp / "browser-anon") as context:
        anonymous = context.request
        assert anonymous.get(site.url(f"/media/{sha}")).status == 403
        assert anonymous.get(site.url(f"/thumbs/{sha}.jpg")).status == 403
        redirect = anonymous.get(site.url("/recordings"), max_redirects=0)
        assert redirect.status == 303 and redirect.headers["location"].startswith("/login")


# -- 3. the language switch ------------------------------------------------------------------


def test_language_switch(pw: Playwright, site: Site) -> None:
    with browser(pw, site.tmp / "browser-lang", locale="en-US") as context:
        page = context.new_page()
        page.goto(site.url())
        # Simplified Chinese by default, whatever the browser's own language
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert page.inner_text("[data-test=login]") == "登录"
        tile = page.locator("[data-tile]", has_text=CAM_A)
        assert tile.locator("[data-f=unplug]").inner_text() == "可以拔出"

        page.click("[data-test=lang-en]")
        page.wait_for_load_state()
        assert page.url == site.url()  # back where the switch was pressed
        assert page.locator("html").get_attribute("lang") == "en"
        assert page.inner_text("[data-test=login]") == "Log in"
        assert tile.locator("[data-f=unplug]").inner_text() == "Safe to unplug"
        page.wait_for_selector("body[data-live='1']")  # the live feed speaks English too
        assert tile.locator("[data-f=unplug]").inner_text() == "Safe to unplug"
        assert "Files 3 / 3" in tile.locator("[data-f=files]").inner_text()
        site.screens.shot(page, "kiosk-dock-en")
        lang = cookie(context, "evidock_lang")
        assert lang is not None and lang["value"] == "en"

        page.reload()
        assert page.inner_text("[data-test=login]") == "Log in"
        login(page, site.url(), *SUPERVISOR)
        assert page.locator("h1").inner_text() == "Purpose"
        state_purpose(page, *CASE_WORK)
        assert page.locator("h1").inner_text() == "Recordings"
        assert page.inner_text("[data-test=purpose-text]") == "Case work: A2026-0042"
        page.click("[data-test=lang-zh-CN]")
        page.wait_for_load_state()
        assert page.url.endswith("/recordings")
        assert page.locator("h1").inner_text() == "音视频记录"
        assert page.inner_text("[data-test=purpose-text]") == "案件办理：A2026-0042"


# -- 4. cross-site scripting through names and tags -----------------------------------------


def test_a_file_name_holding_html_shows_as_text(pw: Playwright, site: Site) -> None:
    dialogs: list[str] = []
    with browser(pw, site.tmp / "browser-xss") as context:
        page = context.new_page()

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        login(page, site.url(), *SUPERVISOR, purpose=CASE_WORK)
        row = page.locator(f"tr[data-sha256='{site.hostile}']")
        assert row.locator("[data-test=name]").inner_text() == HOSTILE_NAME
        assert page.locator("img[src='x']").count() == 0

        # a case number holding a script, bound through the page itself
        row.locator("input[name=sha256]").check()
        page.fill("[data-test=case]", HOSTILE_CASE)
        page.click("[data-test=tag-submit]")
        page.wait_for_selector("[data-test=tagged]")
        assert HOSTILE_CASE in page.inner_text("[data-test=tagged]")
        row = page.locator(f"tr[data-sha256='{site.hostile}']")
        assert row.locator(".case").inner_text() == HOSTILE_CASE

        page.goto(site.url(f"/recordings/{site.hostile}"))
        assert page.inner_text("[data-test=name]") == HOSTILE_NAME
        assert HOSTILE_CASE in page.inner_text("ul.tags")
        assert HOSTILE_NAME in page.title()
        site.screens.shot(page, "kiosk-hostile-name")
        assert page.locator("img[src='x']").count() == 0
        assert page.evaluate("() => window.pwned === undefined")
        raw = context.request.get(site.url(f"/recordings/{site.hostile}")).text()
        assert "<img src=x" not in raw and "&lt;img src=x onerror=alert(1)&gt;" in raw
        assert "<script>window.pwned" not in raw
    assert dialogs == [], f"a script ran: {dialogs}"
    tag = of_type(site.rig.home, "tag")[-1]["body"]
    assert tag["case"] == HOSTILE_CASE and tag["files"] == [site.hostile]


# -- 5. CSRF, session fixation, traversal, hosts, headers --------------------------------------


def test_posts_without_or_with_a_wrong_csrf_token_are_refused(pw: Playwright, site: Site) -> None:
    before = len(of_type(site.rig.home, "tag"))
    sha = sorted(site.clips_b)[-1]
    with browser(pw, site.tmp / "browser-csrf") as context:
        page = context.new_page()
        login(page, site.url(), *SUPERVISOR)
        token = session_csrf(page)
        form: dict[str, str | float | bool] = {"sha256": sha, "case": "CSRF-1", "kind": "other"}
        post = context.request.post
        assert post(site.url("/tag"), form=form).status == 403
        wrong = ("y" if token[0] == "x" else "x") + token[1:]  # one character off
        assert post(site.url("/tag"), form={**form, "csrf": wrong}).status == 403
        assert post(site.url("/tag"), form={**form, "csrf": ""}).status == 403
        other_origin = post(
            site.url("/tag"),
            form={**form, "csrf": token},
            headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert other_origin.status == 403
        # the purpose form is a session's form too
        assert post(site.url("/purpose"), form={"kind": "inspection"}).status == 403
        assert post(site.url("/purpose"), form={"kind": "inspection", "csrf": wrong}).status == 403
        evil = post(
            site.url("/purpose"),
            form={"kind": "inspection", "csrf": token},
            headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert evil.status == 403
        # the login and language forms come before a session: their token is the cookie's
        assert post(site.url("/login"), form={"name": "sup", "secret": "x"}).status == 403
        assert post(site.url("/lang"), form={"lang": "en", "csrf": "forged"}).status == 403
        # a token from another user's session is no good either
        with browser(pw, site.tmp / "browser-csrf-2") as other:
            page2 = other.new_page()
            login(page2, site.url(), *AUDITOR)
            foreign = session_csrf(page2)
        assert post(site.url("/tag"), form={**form, "csrf": foreign}).status == 403
        # ... and with the right token the same request goes through
        good = post(site.url("/tag"), form={**form, "csrf": token}, max_redirects=0)
        assert good.status == 303, good.text()
    tags = of_type(site.rig.home, "tag")
    assert len(tags) == before + 1 and tags[-1]["body"]["case"] == "CSRF-1"


def test_session_fixation_login_gives_a_new_token(pw: Playwright, site: Site) -> None:
    with browser(pw, site.tmp / "browser-fix") as context:
        planted = "attacker-chosen-token-0123456789abcdef"
        context.add_cookies([{"name": "evidock_session", "value": planted, "url": site.url()}])
        page = context.new_page()
        page.goto(site.url())
        assert page.locator("[data-test=login]").count() == 1  # the planted token is nobody
        login(page, site.url(), *SUPERVISOR)
        first = cookie(context, "evidock_session")
        assert first is not None and first["value"] != planted
        assert first["httpOnly"] is True and first["sameSite"] == "Strict"
        assert first["path"] == "/"
        assert page.evaluate("() => document.cookie") == ""  # no cookie readable by script

        login(page, site.url(), *SUPERVISOR)  # logging in again: yet another token
        second = cookie(context, "evidock_session")
        assert second is not None and second["value"] not in (planted, first["value"])

        def works(token: str) -> bool:
            request = urllib.request.Request(
                site.url("/recordings"), headers={"Cookie": f"evidock_session={token}"}
            )
            with urllib.request.urlopen(request) as response:
                return "/login" not in response.url

        assert works(second["value"])
        assert not works(first["value"]), "the session held before login was not ended"
        assert not works(planted)

        page.click("[data-test=logout]")
        page.wait_for_load_state()
        assert cookie(context, "evidock_session") is None
        assert not works(second["value"]), "logout did not end the session"


def test_files_only_by_digests_in_the_ledger(pw: Playwright, site: Site) -> None:
    unknown = "0" * 64
    with browser(pw, site.tmp / "browser-paths") as context:
        page = context.new_page()
        login(page, site.url(), *SUPERVISOR)
        get = context.request.get
        for path in (
            f"/thumbs/{unknown}.jpg",
            f"/media/{unknown}",
            "/thumbs/..%2f..%2fkeys%2fstation.key",
            "/thumbs/%2e%2e/%2e%2e/ledger.db",
            "/media/..%2fledger.db",
            "/media/%2e%2e%2f%2e%2e%2fkeys%2fstation.key",
            "/static/../ledger.db",
            "/static/..%2f..%2f..%2fhashing%2fstation.py",
            f"/media/{unknown.upper()}",
            f"/recordings/{unknown}",
        ):
            response = get(site.url(path))
            assert response.status in (400, 403, 404), (path, response.status)
            assert b"PRIVATE KEY" not in response.body() and b"SQLite" not in response.body()


def test_security_headers_and_hosts(site: Site) -> None:
    for path in ("/", "/login", "/static/kiosk.css", "/static/kiosk.js", "/nowhere"):
        status, headers, _ = _fetch(site.url(path))
        assert status == (404 if path == "/nowhere" else 200), path
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
    _, _, body = _fetch(site.url("/"))
    page = body.decode()
    assert "<script>" not in page and "onclick" not in page and 'style="' not in page
    assert "http://" not in page and "https://" not in page  # every asset local: no CDN
    status, _, _ = _fetch(site.url("/"), {"Host": "evil.example"})  # DNS rebinding
    assert status == 400


def test_live_updates_are_server_sent_events_only_when_changed(site: Site) -> None:
    """The first update comes at once; an unchanged dock is not sent again."""
    head, events = sse_events(site.url("/events"), seconds=3.5)
    assert b"content-type: text/event-stream" in head.lower(), head
    assert events, "no live update"
    assert events[0][0] < 2.0, f"first update after {events[0][0]:.2f} s"
    assert len(events) == 1, "an unchanged dock was sent again"
    view = json.loads(events[0][1])
    tiles = {t["device"]: t for t in view["tiles"]}
    assert tiles[CAM_A]["safe"] is True and tiles[CAM_A]["unplug"] == "可以拔出"
    assert view["uplink"]["state"] == "unconfigured"


# -- 6. the access log: purposes, view and play entries, grants (issue 6 §3, Art. 18) ---------

HOSTILE_PURPOSE = "<script>window.pwned=1</script><img src=x onerror=alert(2)>"


def test_a_purpose_is_required_before_any_recording(pw: Playwright, site: Site) -> None:
    """Nothing of a recording is shown before a purpose is stated; the list's thumbnails
    are one ``view`` entry, not one per reload; a new purpose and a new login start over."""
    sha = sorted(site.clips_a)[0]
    with browser(pw, site.tmp / "browser-purpose") as context:
        page = context.new_page()
        before = len(accesses(site))
        login(page, site.url(), *AUDITOR)
        assert page.url.startswith(site.url("/purpose")), page.url
        assert page.locator("img").count() == 0
        assert page.locator("[data-test=purpose]").count() == 0  # none stated yet
        assert "请说明用途" in page.inner_text("main")
        get = context.request.get
        assert get(site.url(f"/thumbs/{sha}.jpg")).status == 403
        assert get(site.url(f"/media/{sha}")).status == 403
        held = get(site.url(f"/recordings/{sha}"), max_redirects=0)
        assert held.status == 303
        assert held.headers["location"].startswith("/purpose?next=%2Frecordings%2F")
        assert len(accesses(site)) == before, "something was logged before a purpose"

        # a disclosure request needs its number; the form says so and keeps the choice
        page.check("[data-test=purpose-disclosure]")
        page.click("[data-test=purpose-submit]")
        page.wait_for_load_state()
        assert "必须填写申请编号" in page.inner_text("[data-test=purpose-problem]")
        assert page.is_checked("[data-test=purpose-disclosure]")
        site.screens.shot(page, "kiosk-purpose")
        state_purpose(page, "disclosure", "GK-2026-017")
        assert page.url.endswith("/recordings")
        assert page.inner_text("[data-test=purpose-text]") == "信息公开申请：GK-2026-017"
        shown = {
            page.locator("td.thumb img").nth(i).evaluate("i => i.closest('tr').dataset.sha256")
            for i in range(page.locator("td.thumb img").count())
        }
        assert len(shown) == 5  # every docked clip; the CLI-ingested file has no thumbnail
        (listed,) = accesses(site)[before:]
        assert (listed["action"], listed["user"], listed["role"]) == ("view", "aud", "auditor")
        assert (
            set(listed["files"]) == shown and listed["purpose"] == "disclosure request: GK-2026-017"
        )
        assert listed["detail"] == "kiosk: list thumbnails"
        for _ in range(3):  # reloads and paging back add nothing
            page.reload()
            page.wait_for_load_state()
        page.goto(site.url(f"/recordings?device={CAM_A}"))
        assert len(accesses(site)) == before + 1, "the same thumbnails were logged again"
        assert get(site.url(f"/thumbs/{sha}.jpg")).status == 200

        # a new purpose: what is seen from now on is logged under it
        page.click("[data-test=purpose]")
        page.wait_for_load_state()
        assert page.input_value("[data-test=purpose-detail]") == "GK-2026-017"
        state_purpose(page, "inspection", "")
        assert page.url.endswith(f"/recordings?device={CAM_A}")  # back where it was
        (relisted,) = accesses(site)[before + 1 :]
        assert relisted["purpose"] == "inspection" and set(relisted["files"]) == set(site.clips_a)

        # a new login asks again
        page.click("[data-test=logout]")
        page.wait_for_load_state()
        login(page, site.url(), *AUDITOR)
        assert page.url.startswith(site.url("/purpose"))
        assert get(site.url(f"/thumbs/{sha}.jpg")).status == 403


def test_a_grant_is_for_one_user_and_one_recording(pw: Playwright, site: Site) -> None:
    sha, other = sorted(site.clips_b)
    with (
        browser(pw, site.tmp / "browser-grant-a") as first,
        browser(pw, site.tmp / "browser-grant-b") as second,
    ):
        page_a = first.new_page()
        login(page_a, site.url(), *SUPERVISOR, purpose=CASE_WORK)
        page_a.goto(site.url(f"/recordings/{sha}"))
        src = page_a.locator("video[data-test=player]").get_attribute("src") or ""
        assert "grant=" in src
        page_b = second.new_page()
        login(page_b, site.url(), *AUDITOR, purpose=CASE_WORK)
        page_b.goto(site.url(f"/recordings/{other}"))
        src_b = page_b.locator("video[data-test=player]").get_attribute("src") or ""
        before = len(accesses(site))
        ranged = {"Range": "bytes=0-99"}
        assert second.request.get(site.url(src), headers=ranged).status == 403  # A's, for B
        assert first.request.get(site.url(src_b), headers=ranged).status == 403  # B's, for A
        grant = src.split("grant=", 1)[1]
        for forged in (
            f"/media/{other}?grant={grant}",  # A's grant for another recording
            f"/media/{sha}?grant={grant[:-2]}",
            f"/media/{sha}?grant=",
            f"/media/{sha}",
        ):
            assert first.request.get(site.url(forged), headers=ranged).status == 403, forged
        assert first.request.get(site.url(src), headers=ranged).status == 206
        assert second.request.get(site.url(src_b), headers=ranged).status == 206
        # logging out ends the session's grants
        page_a.click("[data-test=logout]")
        page_a.wait_for_load_state()
        assert first.request.get(site.url(src), headers=ranged).status == 403
        assert len(accesses(site)) == before, "a refused or granted range request was logged"


def test_a_grant_expires(pw: Playwright, tmp_path: Path) -> None:
    """A kiosk whose grants lapse after a second unused: the player's URL works, then
    is refused once idle; loading the page again is a new ``play`` entry and grant."""
    need_ffmpeg()
    from agent.kiosk.app import KioskSettings, create_app
    from agent.kiosk.server import KioskServer
    from agent.offload.ingest import Binding, IngestResult, ingest_paths
    from agent.users.accounts import Users
    from hashing.station import Station

    station = Station.init(tmp_path / "home", "dock-grant")
    clip = tmp_path / "CLIP0001.MP4"
    clip.write_bytes(Footage(tmp_path / "footage").clip("expiry"))
    (result,) = list(ingest_paths(station, [clip], Binding(officer=OFFICER_ID)))
    assert isinstance(result, IngestResult)
    users = Users(station)
    users.add("sup", "supervisor", SUPERVISOR[1], officer=None, by="console:test")
    settings = KioskSettings(grant_idle_s=1.5, grant_max_s=60)
    server = KioskServer(create_app(station, lambda: {}, users, settings), "127.0.0.1", free_port())
    server.start()
    try:
        wait_http(server.url)
        with browser(pw, tmp_path / "browser") as context:
            page = context.new_page()
            login(page, server.url, *SUPERVISOR, purpose=CASE_WORK)
            page.goto(server.url + f"recordings/{result.sha256}")
            src = page.locator("video[data-test=player]").get_attribute("src") or ""
            page.close()  # the page's own player stops fetching
            fetch = context.request.get
            assert fetch(server.url + src.lstrip("/"), headers={"Range": "bytes=0-9"}).status == 206
            time.sleep(2.0)
            assert fetch(server.url + src.lstrip("/"), headers={"Range": "bytes=0-9"}).status == 403
            plays = [
                e for e in station.ledger.entries_of_type("access") if e.body["action"] == "play"
            ]
            assert len(plays) == 1
            page = context.new_page()
            page.goto(server.url + f"recordings/{result.sha256}")
            fresh = page.locator("video[data-test=player]").get_attribute("src") or ""
            assert fresh != src
            assert (
                fetch(server.url + fresh.lstrip("/"), headers={"Range": "bytes=0-9"}).status == 206
            )
            plays = [
                e for e in station.ledger.entries_of_type("access") if e.body["action"] == "play"
            ]
            assert len(plays) == 2
    finally:
        server.stop()
        station.close()


def test_an_officer_cannot_view_or_play_another_officers_recording(
    pw: Playwright, site: Site
) -> None:
    other = sorted(site.clips_b)[1]
    with browser(pw, site.tmp / "browser-off-2") as context:
        page = context.new_page()
        login(page, site.url(), *OFFICER, purpose=("other", "shift review"))
        before = len(accesses(site))
        page.goto(site.url(f"/recordings/{other}"))
        assert page.locator("[data-test=error]").count() == 1
        assert page.locator("video").count() == 0
        for path in (f"/recordings/{other}", f"/media/{other}", f"/thumbs/{other}.jpg"):
            assert context.request.get(site.url(path)).status == 403, path
        assert len(accesses(site)) == before, "a refused view was logged"


@pytest.mark.parametrize(
    ("who", "allowed"), [(AUDITOR, True), (ADMIN, True), (SUPERVISOR, False), (OFFICER, False)]
)
def test_who_may_read_the_access_log_page(
    pw: Playwright, site: Site, who: tuple[str, str], allowed: bool
) -> None:
    with browser(pw, site.tmp / f"browser-access-{who[0]}") as context:
        page = context.new_page()
        login(page, site.url(), *who)
        response = context.request.get(site.url("/access"))
        link = page.locator("[data-test=nav-access]")
        if allowed:
            assert response.status == 200
            assert link.count() == 1
        else:
            assert response.status == 403
            assert link.count() == 0
            page.goto(site.url("/access"))
            assert page.locator("[data-test=access-log]").count() == 0


def test_the_access_log_page_filters_and_names_who_why_and_what(pw: Playwright, site: Site) -> None:
    sha = sorted(site.clips_a)[1]
    dialogs: list[str] = []
    with browser(pw, site.tmp / "browser-access") as context:
        page = context.new_page()

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        login(page, site.url(), *OFFICER, purpose=("other", HOSTILE_PURPOSE))
        assert page.inner_text("[data-test=purpose-text]") == f"其他：{HOSTILE_PURPOSE}"
        page.goto(site.url(f"/recordings/{sha}"))
        assert page.evaluate("() => window.pwned === undefined")
        page.click("[data-test=logout]")
        page.wait_for_load_state()

        login(page, site.url(), *ADMIN)
        assert page.url.endswith("/access")
        page.fill("[data-test=access-user]", "off")
        page.fill("[data-test=access-sha]", sha)
        page.click("[data-test=access-apply]")
        page.wait_for_load_state()
        rows = page.locator("[data-test=access-log] tbody tr")
        actions = [rows.nth(i).get_attribute("data-action") for i in range(rows.count())]
        assert actions[:2] == ["play", "view"], actions  # newest first
        newest = rows.nth(0)
        assert newest.locator("[data-test=user]").inner_text().startswith("off")
        assert "执法人员" in newest.locator("[data-test=user]").inner_text()
        assert newest.locator("[data-test=files]").inner_text() == sha
        assert newest.locator("[data-test=purpose]").inner_text() == f"other: {HOSTILE_PURPOSE}"
        assert page.locator("img[src='x']").count() == 0
        assert page.evaluate("() => window.pwned === undefined")
        site.screens.shot(page, "kiosk-access", full_page=True)
        raw = context.request.get(page.url).text()
        assert "<script>window.pwned" not in raw and "&lt;script&gt;window.pwned" in raw
        every = [e for e in accesses(site) if e["user"] == "off" and sha in e["files"]]
        assert rows.count() == len(every)

        # by date: the day of the entries, and a day with none
        today = local_day(every[-1]["time"])
        page.goto(site.url(f"/access?user=off&from={today}&to={today}"))
        assert page.locator("[data-test=access-log] tbody tr").count() == len(
            [e for e in accesses(site) if e["user"] == "off"]
        )
        page.goto(site.url("/access?from=2020-01-01&to=2020-01-02"))
        assert page.locator("[data-test=access-none]").count() == 1
        assert context.request.get(site.url("/access?sha256=../../etc")).status == 400
        assert context.request.get(site.url("/access?from=yesterday")).status == 400
    assert dialogs == [], f"a script ran: {dialogs}"


def local_day(when: str) -> str:
    """The station's local date (UTC+8, the kiosk's default) of an entry time."""
    moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return moment.astimezone(timezone(timedelta(hours=8))).date().isoformat()


def accesses(site: Site) -> list[dict[str, Any]]:
    """The ``access`` entries so far, as {seq, time, **body}."""
    return [
        {"seq": e["seq"], "time": e["time"], **e["body"]} for e in of_type(site.rig.home, "access")
    ]


def _fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """(status, headers, body) of a GET, whatever the status."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _get(url: str, timeout: float = 10.0) -> Any:
    return urllib.request.urlopen(url, timeout=timeout)


def test_a_taken_port_leaves_the_dock_without_its_screen_only(tmp_path: Path) -> None:
    """The kiosk is an error boundary: a port in use is logged and the daemon runs on."""
    from agent import config
    from agent.dock import wiring
    from hashing.station import Station

    station = Station.init(tmp_path / "home", "ST-1")
    dock = tmp_path / "dock"
    dock.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "evidock.toml"
        path.write_text(
            f'[usb]\nenabled = false\n[folder]\nroots = ["{dock}"]\n[kiosk]\nport = {port}\n'
        )
        cfg = config.load(path)
        daemon = wiring.build_daemon(station, cfg)
        assert wiring.start_kiosk(station, cfg, daemon) is None
    server = wiring.start_kiosk(station, cfg, daemon)  # the port is free again
    assert server is not None
    try:
        wait_http(server.url)
        status, _, body = _fetch(server.url)
        assert status == 200 and "暂无记录仪接入" in body.decode()
    finally:
        server.stop()
        station.close()


def test_a_failed_scrub_stays_on_screen_until_a_scrub_passes(
    pw: Playwright, tmp_path: Path
) -> None:
    """Art. 20 (2): a stored file that no longer matches its digest is an alert on every
    page of supervisors, auditors and admins (not officers) from the failing scrub
    until a later scrub passes; the kiosk only shows it and repairs nothing."""
    from agent.kiosk.app import KioskSettings, create_app
    from agent.kiosk.server import KioskServer
    from agent.offload.ingest import Binding, IngestResult, ingest_paths
    from agent.records.scrub import scrub
    from agent.users.accounts import Users
    from hashing.station import Station

    station = Station.init(tmp_path / "home", "dock-scrub")
    clip = tmp_path / "CLIP0001.MP4"
    clip.write_bytes(b"footage " * 4096)
    (result,) = list(ingest_paths(station, [clip], Binding(officer=OFFICER_ID)))
    assert isinstance(result, IngestResult)
    users = Users(station)
    for (name, secret), role, officer in (
        (SUPERVISOR, "supervisor", None),
        (ADMIN, "admin", None),
        (OFFICER, "officer", OFFICER_ID),
    ):
        users.add(name, role, secret, officer=officer, by="console:test")
    stored = station.store.path_for(result.sha256)
    server = KioskServer(
        create_app(station, lambda: {}, users, KioskSettings()), "127.0.0.1", free_port()
    )
    server.start()

    def alert_seen(who: tuple[str, str], purpose: tuple[str, str] | None) -> str | None:
        with browser(pw, tmp_path / f"browser-{who[0]}") as context:
            page = context.new_page()
            login(page, server.url, *who, purpose=purpose)
            page.goto(server.url + ("access" if who == ADMIN else "recordings"))
            found = page.locator("[data-test=scrub-alert]")
            return found.inner_text() if found.count() else None

    try:
        wait_http(server.url)
        assert scrub(station, by="console:test").ok
        assert alert_seen(SUPERVISOR, CASE_WORK) is None
        original = stored.read_bytes()
        stored.chmod(0o600)
        stored.write_bytes(b"X" + original[1:])
        failed = scrub(station, by="console:test")
        assert not failed.ok
        for who, purpose in ((SUPERVISOR, CASE_WORK), (ADMIN, None)):
            text = alert_seen(who, purpose)
            assert text is not None and str(failed.entry.seq) in text, (who, text)
        assert alert_seen(OFFICER, CASE_WORK) is None
        assert stored.read_bytes()[:1] == b"X", "the kiosk must not repair the file"
        stored.write_bytes(original)
        stored.chmod(0o400)
        assert scrub(station, by="console:test").ok
        assert alert_seen(SUPERVISOR, CASE_WORK) is None
    finally:
        server.stop()
        users.close()
        station.close()


def test_thumbnails_are_not_cached_and_gone_once_purged(pw: Playwright, tmp_path: Path) -> None:
    """A still goes out only with no-store (the kiosk's browser is shared: a cached one
    would reach the next user with no request, so no entry), and not at all once its
    recording was purged (Art. 16): its entries stay, its pictures do not."""
    from agent.kiosk.app import KioskSettings, create_app
    from agent.kiosk.server import KioskServer
    from agent.offload.ingest import Binding, IngestResult, ingest_paths
    from agent.users.accounts import Users
    from hashing.retention import PURGE
    from hashing.station import Station

    station = Station.init(tmp_path / "home", "dock-thumbs")
    clip = tmp_path / "CLIP0001.MP4"
    clip.write_bytes(b"footage " * 4096)
    (result,) = list(ingest_paths(station, [clip], Binding(officer=OFFICER_ID)))
    assert isinstance(result, IngestResult)
    thumbs = station.home / "thumbs"
    thumbs.mkdir(exist_ok=True)
    (thumbs / f"{result.sha256}.jpg").write_bytes(b"\xff\xd8\xff\xe0 a still")
    users = Users(station)
    users.add(SUPERVISOR[0], "supervisor", SUPERVISOR[1], officer=None, by="console:test")
    server = KioskServer(
        create_app(station, lambda: {}, users, KioskSettings()), "127.0.0.1", free_port()
    )
    server.start()
    try:
        wait_http(server.url)
        with browser(pw, tmp_path / "browser") as context:
            page = context.new_page()
            login(page, server.url, *SUPERVISOR, purpose=CASE_WORK)
            page.goto(server.url + f"recordings/{result.sha256}")
            still = context.request.get(server.url + f"thumbs/{result.sha256}.jpg")
            assert still.status == 200
            assert still.headers["cache-control"] == "no-store"
            station.ledger.append(PURGE, {"sha256": result.sha256, "by": "console:test"})
            page.goto(server.url + f"recordings/{result.sha256}")
            gone = context.request.get(server.url + f"thumbs/{result.sha256}.jpg")
            assert gone.status == 404
    finally:
        server.stop()
        users.close()
        station.close()
