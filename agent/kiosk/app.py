"""The kiosk web application (Starlette): the dock screen, supervisors' recordings, login.

Served by the daemon on 127.0.0.1 (agent.kiosk.server). Pages are rendered on
the server; the dock screen then follows the daemon through server-sent events
(``/events``: the tiles and the uplink panel as compact JSON, sent when they
change, checked about once a second) applied by a small script, and falls back
to a meta refresh where scripts do not run.

Routes::

    GET  /                      dock screen: one tile per docked recorder, uplink panel
    GET  /events                live updates of the dock screen (text/event-stream)
    GET  /login, POST /login    log in (user name and password or PIN)
    POST /logout                end the session
    POST /lang                  choose the language (cookie)
    GET  /purpose, POST /purpose  state (or change) why recordings are looked at
    GET  /recordings            recent recordings with thumbnails; filters; tag form
    GET  /recordings/{sha256}   one recording: facts, cases, anomalies, player
    POST /tag                   bind recordings to a case (agent.records.registry.tag, by the user)
    GET  /thumbs/{sha256}.jpg   thumbnail of a recording this session's log covers
    GET  /media/{sha256}?grant= the stored recording, with HTTP Range, for the player
    GET  /access                the access log (auditors and admins)
    GET  /static/...            CSS and script (no CDN: a kiosk has no internet)

The access log (Art. 18, Art. 20 (3); agent.records.access): nothing of a recording
leaves the page without an ``access`` entry naming the user, their role, the
recordings and the purpose.

- A user who may look at recordings states a purpose first (``/purpose``: a
  case, a spot check, a disclosure request with its number, an inspection, or
  another reason in words). It is kept with the session on the server
  (agent.kiosk.grants), shown in the top bar, changeable there, and asked
  again at every login.
- Opening a recording's page appends a ``view`` entry. If the user's role may
  play it, a ``play`` entry too, and the player's URL carries a grant for this
  session, user and recording (grants.py): the Range requests of that playback
  need it, and no further entry. A page load is one ``play`` entry; ``/media``
  without a valid grant is 403.
- Thumbnails are stills of the footage. The list page logs one ``view`` entry
  for the recordings whose thumbnails it shows for the first time in this
  session under this purpose, and ``/thumbs`` serves only those the session's
  entries cover. Paging back, reloading and the dock screen's live updates
  (which carry no pictures) add nothing.
- Admins see no recordings (agent.users.roles); officers only their own: a refused
  request appends nothing.

Threat model, and what answers it:

- Cross-site request forgery: every POST carries a token. Logged-in forms
  carry the session's CSRF token (agent.users.accounts.Session.csrf); the login and
  language forms, which come before any session, a random double-submit
  token from an HttpOnly cookie. A POST whose Origin is another site is
  refused too, and every cookie is SameSite=Strict.
- Session fixation: the session cookie is whatever ``Users.login`` returns, a
  new random token at each login; a cookie the browser held before is
  ignored (and its session ended), never promoted.
- Cross-site scripting through file names, case numbers, tags, officer ids:
  Jinja2 autoescaping is on for every template, the script sets text with
  ``textContent`` only, and the Content-Security-Policy allows scripts from
  this origin's files only (no inline script, no eval).
- Reading files it should not: thumbnails and media are looked up by a
  digest that must be 64 hex characters *and* name a recording in the
  ledger; the path is built from the digest, never from the request. Roles
  decide who may view, play and tag (agent.users.roles); an officer sees only
  recordings bound to their own police number. A thumbnail goes out only
  when this session's ``view`` entries cover it, the recording's bytes only
  with the player's grant (above), and a guessed or borrowed URL is 403.
- DNS rebinding: requests must name this host (127.0.0.1, localhost or the
  configured address), or they get 400.
- Clickjacking and leaks: X-Frame-Options DENY, frame-ancestors 'none',
  Referrer-Policy no-referrer, nosniff, no-store on pages.

Every change of state a user makes is a ledger entry naming them: tagging is
``agent.records.registry.tag(..., by=user.name)``, as the CLI's; every look at a
recording is an ``access`` entry (agent.records.access.record_access, as `evidock
play`); logins and their failures are recorded by agent.users.accounts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.kiosk import i18n
from agent.kiosk.catalog import Catalog, Filters, is_sha256
from agent.kiosk.grants import AccessState, Purpose
from agent.kiosk.i18n import Translator
from agent.kiosk.views import EMPTY_TILE, dock_view, duration_text, local_time, size_text
from agent.records import access, retention
from agent.records import index as schema
from agent.records import registry as records
from agent.users.accounts import LoginError, Session, User, Users
from agent.users.roles import PermissionDeniedError, can, officer_scope
from hashing.errors import EvidockError, InputError, explain
from hashing.retention import Policy
from hashing.station import Station

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "evidock_session"
CSRF_COOKIE = "evidock_csrf"  # double-submit token for the forms before a session exists
LANG_COOKIE = "evidock_lang"
KEEPALIVE_S = 15.0
MAX_FORM_FIELDS = 2000  # a page of recordings plus the tag fields, with room to spare

Snapshot = Callable[[], Mapping[str, Any]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
ACTIVE = {
    "dock.html": "dock",
    "recordings.html": "recordings",
    "recording.html": "recordings",
    "access.html": "access",
}
ACCESS_ROWS = 500  # the access page shows the newest this many; filters narrow it
# What may be played in the page, by the recording's file extension.
PLAYABLE = {"video", "audio", "image"}


@dataclass(frozen=True)
class KioskSettings:
    language: str = i18n.DEFAULT
    utc_offset_minutes: int = 480  # station local time, as [offload] utc_offset_minutes
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost")  # Host headers accepted
    live_interval_s: float = 1.0  # how often the live feed looks for a change
    snapshot_every_s: float = 0.5  # one daemon snapshot serves every screen this long
    refresh_s: int = 5  # the meta refresh of the dock screen without scripts
    grant_idle_s: float = 600.0  # a player grant lapses after this long unused (grants.py)
    grant_max_s: float = 4 * 3600.0  # ... and this long after it was issued
    retention: Policy = field(default_factory=Policy)  # [retention]: shown per recording


class SecurityHeaders:
    """Adds the security headers to every HTTP response (pure ASGI, so streaming
    responses such as the event stream pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers[key] = value
                if "cache-control" not in headers:
                    # Pages and data are never stored; the stylesheet and script are
                    # revalidated (ETag) so a reload costs a 304.
                    static = str(scope.get("path", "")).startswith("/static/")
                    headers["cache-control"] = "no-cache" if static else "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class DockFeed:
    """The dock view, shared by every page and live stream: the daemon's snapshot is
    taken at most once per ``min_interval_s`` however many screens watch."""

    snapshot: Snapshot
    catalog: Catalog
    offset_minutes: int
    min_interval_s: float = 0.5
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _taken: float = -1.0
    _snap: dict[str, Any] = field(default_factory=dict)
    _views: dict[str, dict[str, Any]] = field(default_factory=dict)

    def view(self, lang: str) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if now - self._taken >= self.min_interval_s:
                self._taken = now
                try:
                    self._snap = dict(self.snapshot())
                    self._views = {}
                except Exception:  # the screen keeps the last picture; the log says why
                    log.exception("kiosk: the daemon's snapshot failed")
            view = self._views.get(lang)
            if view is None:
                view = dock_view(
                    Translator(lang),
                    self._snap,
                    anomaly_kind=self.catalog.anomaly_kind,
                    uploads_of=self.catalog.uploads_of,
                    offset_minutes=self.offset_minutes,
                )
                self._views[lang] = view
            return view


class Kiosk:
    """The application's state and handlers; ``create_app`` wires them to routes."""

    def __init__(
        self, station: Station, snapshot: Snapshot, users: Users, settings: KioskSettings
    ) -> None:
        schema.ensure(station)  # the tags and anomalies tables the pages read
        self.station = station
        self.users = users
        self.settings = settings
        self.catalog = Catalog(station.home)
        self.feed = DockFeed(
            snapshot, self.catalog, settings.utc_offset_minutes, settings.snapshot_every_s
        )
        self.thumbs = station.home / "thumbs"
        self.access = AccessState(idle_s=settings.grant_idle_s, max_s=settings.grant_max_s)
        self.closing = threading.Event()  # set by the server at shutdown: streams end
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every template, whatever its name (XSS through names and tags)
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["size_text"] = size_text

    def close(self) -> None:
        self.catalog.close()

    # -- request context -------------------------------------------------------------

    def lang(self, request: Request) -> str:
        value = request.cookies.get(LANG_COOKIE)
        return i18n.pick(value) if value else i18n.pick(self.settings.language)

    def who(self, request: Request) -> tuple[User, Session] | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        found = self.users.session(token)
        if found is None or found[0].disabled:
            return None
        return found

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        who: tuple[User, Session] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        lang = self.lang(request)
        t = Translator(lang)
        anon = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        user = who[0] if who else None
        role = user.role if user else None
        purpose = self.access.purpose(who[1].token) if who else None
        # A failed scrub (Art. 20 (2), agent.records.scrub) stays on every page of the people
        # who answer for the store until a later scrub passes; it is never repaired here.
        scrub = self.catalog.last_scrub() if role and can(role, "view_devices") else None
        body = self.env.get_template(template).render(
            t=t,
            lang=lang,
            html_lang=i18n.HTML_LANG[lang],
            languages=[(code, i18n.NATIVE_NAMES[code]) for code in i18n.LANGUAGES],
            anon_csrf=anon,
            csrf=who[1].csrf if who else "",
            user=user,
            purpose=purpose,
            role_text=t(f"role.{role}") if role else "",
            may=lambda action: role is not None and can(role, action),
            here=_here(request),
            active=ACTIVE.get(template, ""),
            station=self.station.station_id,
            settings=self.settings,
            scrub_alert=scrub if scrub and (scrub[1] or not scrub[2]) else None,
            duration_text=lambda s: duration_text(t, s),
            local_time=lambda w: local_time(w, self.settings.utc_offset_minutes),
            **context,
        )
        response = HTMLResponse(body, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != anon:
            _set_cookie(response, CSRF_COOKIE, anon)
        return response

    def error(
        self,
        request: Request,
        status: int,
        key: str,
        who: tuple[User, Session] | None = None,
        **values: Any,
    ) -> HTMLResponse:
        t = Translator(self.lang(request))
        return self.render(request, "error.html", status, who=who, message=t(key, **values))

    async def form(self, request: Request) -> FormData:
        return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)

    async def logged_in_post(
        self, request: Request
    ) -> tuple[tuple[User, Session], FormData] | Response:
        """A form posted by a logged-in user, from this page, with their session's
        token; else the 403 page to answer with."""
        who = await run_in_threadpool(self.who, request)
        form = await self.form(request)
        if who is None:
            return self.error(request, 403, "error.login_needed")
        if not self.same_origin(request) or not _token_ok(form, who[1]):
            return self.error(request, 403, "error.csrf", who)
        return who, form

    def same_origin(self, request: Request) -> bool:
        """A browser says where a POST comes from; another site's is refused (on top of
        the token). Sec-Fetch-Site is always sent by current browsers; Origin is
        "null" under Referrer-Policy no-referrer, so only a named origin counts."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return True
        host = request.headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}")

    # -- dock screen -----------------------------------------------------------------

    async def dock(self, request: Request) -> Response:
        who = await run_in_threadpool(self.who, request)
        view = await run_in_threadpool(self.feed.view, self.lang(request))
        return self.render(request, "dock.html", who=who, view=view, empty_tile=EMPTY_TILE)

    async def events(self, request: Request) -> Response:
        lang = self.lang(request)
        interval = self.settings.live_interval_s

        async def stream() -> AsyncIterator[str]:
            last = ""
            quiet_since = time.monotonic()
            yield "retry: 2000\n\n"
            while not self.closing.is_set():
                view = await run_in_threadpool(self.feed.view, lang)
                data = json.dumps(view, ensure_ascii=False, separators=(",", ":"))
                now = time.monotonic()
                if data != last:
                    last, quiet_since = data, now
                    yield f"data: {data}\n\n"
                elif now - quiet_since >= KEEPALIVE_S:
                    quiet_since = now
                    yield ": still here\n\n"
                await asyncio.sleep(interval)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # -- language, login, logout -----------------------------------------------------

    def anon_token_ok(self, request: Request, form: FormData) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = form.get("csrf")
        return (
            bool(cookie)
            and isinstance(sent, str)
            and hmac.compare_digest(sent.encode(), cookie.encode())
        )

    async def set_language(self, request: Request) -> Response:
        form = await self.form(request)
        if not self.same_origin(request) or not self.anon_token_ok(request, form):
            return self.error(request, 403, "error.csrf")
        lang = i18n.pick(str(form.get("lang", "")))
        response = RedirectResponse(_local(str(form.get("next", "/"))), status_code=303)
        _set_cookie(response, LANG_COOKIE, lang, max_age=10 * 365 * 86400)
        return response

    async def login_page(self, request: Request) -> Response:
        return self.render(
            request, "login.html", next=_local(request.query_params.get("next", "/recordings"))
        )

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        if not self.same_origin(request) or not self.anon_token_ok(request, form):
            return self.error(request, 403, "error.csrf")
        name, secret = str(form.get("name", "")), str(form.get("secret", ""))
        source = request.client.host if request.client else "unknown"
        target = _local(str(form.get("next", "/recordings")))
        try:
            session = await run_in_threadpool(self.users.login, name, secret, source=source)
        except LoginError:
            return self.render(request, "login.html", 401, failed=True, next=target, name=name)
        # Session fixation: whatever session cookie came with the request is ended,
        # never reused; the browser gets the new random token from Users.login.
        old = request.cookies.get(SESSION_COOKIE)
        if old and not hmac.compare_digest(old.encode(), session.token.encode()):
            await run_in_threadpool(self.users.logout, old)
            self.access.forget(old)
        user = await run_in_threadpool(self.users.get, session.user)
        response = RedirectResponse(_landing(user, target), status_code=303)
        # No Max-Age: the server decides when a session ends (it slides while used).
        _set_cookie(response, SESSION_COOKIE, session.token)
        return response

    async def logout(self, request: Request) -> Response:
        who = await run_in_threadpool(self.who, request)
        form = await self.form(request)
        if who is not None:
            if not self.same_origin(request) or not _token_ok(form, who[1]):
                return self.error(request, 403, "error.csrf", who)
            await run_in_threadpool(self.users.logout, who[1].token)
            self.access.forget(who[1].token)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # -- purpose ---------------------------------------------------------------------

    @staticmethod
    def may_see(user: User) -> bool:
        """Whether ``user`` may look at recordings at all: every look is an access
        entry, which needs the ``play`` permission and an officer scope."""
        return can(user.role, "play") and Kiosk.scope(user) is not False

    async def purpose_page(self, request: Request) -> Response:
        who = await run_in_threadpool(self.who, request)
        if who is None:
            return _to_login(request)
        if not self.may_see(who[0]):
            return self.error(request, 403, "error.forbidden", who)
        current = self.access.purpose(who[1].token)
        return self.render(
            request,
            "purpose.html",
            who=who,
            kinds=list(access.PURPOSE_KINDS),
            chosen=current.kind if current else "",
            detail=current.detail if current else "",
            problem="",
            next=_local(request.query_params.get("next", "/recordings")),
        )

    async def set_purpose(self, request: Request) -> Response:
        posted = await self.logged_in_post(request)
        if isinstance(posted, Response):
            return posted
        who, form = posted
        if not self.may_see(who[0]):
            return self.error(request, 403, "error.forbidden", who)
        kind, detail = str(form.get("kind", "")), str(form.get("detail", ""))
        target = _local(str(form.get("next", "/recordings")))
        try:
            text = access.purpose_text(kind, detail)
        except InputError:
            if kind not in access.PURPOSE_KINDS:
                problem = "purpose.need_kind"
            elif access.PURPOSE_KINDS[kind][1] and not detail.strip():
                problem = f"purpose.need_detail.{kind}"
            else:
                problem = "purpose.bad_text"
            return self.render(
                request,
                "purpose.html",
                400,
                who=who,
                kinds=list(access.PURPOSE_KINDS),
                chosen=kind if kind in access.PURPOSE_KINDS else "",
                detail=detail[: access.PURPOSE_MAX * 2],
                problem=problem,
                next=target,
            )
        self.access.set_purpose(who[1].token, Purpose(kind, detail.strip(), text))
        log.info("user %s states the purpose %r", who[0].name, text)
        return RedirectResponse(target, status_code=303)

    def need_purpose(self, request: Request, who: tuple[User, Session]) -> Purpose | Response:
        """The session's purpose, or the response that refuses (403: the role sees no
        recordings) or asks for one first (a redirect to /purpose, then back)."""
        if not self.may_see(who[0]):
            return self.error(request, 403, "error.forbidden", who)
        purpose = self.access.purpose(who[1].token)
        if purpose is None:
            target = "/purpose?" + urlencode({"next": _here(request)})
            return RedirectResponse(target, status_code=303)
        return purpose

    def log_access(
        self, user: User, action: str, files: list[str], purpose: Purpose, detail: str
    ) -> int:
        """Append the ``access`` entry (agent.records.access.record_access); its seq."""
        entry = access.record_access(self.station, user, action, files, purpose.text, detail=detail)
        log.info(
            "user %s: %s of %d recording(s), entry %d", user.name, action, len(files), entry.seq
        )
        return entry.seq

    # -- recordings ------------------------------------------------------------------

    @staticmethod
    def scope(user: User) -> str | bool | None:
        """None: may view every recording; an officer id: only that officer's;
        False: none at all (agent.users.roles.officer_scope)."""
        try:
            return officer_scope(user)
        except PermissionDeniedError:
            return False

    async def recordings(self, request: Request) -> Response:
        who = await run_in_threadpool(self.who, request)
        if who is None:
            return _to_login(request)
        user = who[0]
        purpose = self.need_purpose(request, who)
        if isinstance(purpose, Response):
            return purpose
        scope = self.scope(user)
        q = request.query_params
        day: date | None = None
        if q.get("date"):
            try:
                day = date.fromisoformat(q["date"])
            except ValueError:
                return self.error(request, 400, "error.bad_input", who, message=q["date"])
        filters = Filters(
            officer=q.get("officer", "").strip()[:64],
            device=q.get("device", "").strip()[:64],
            day=day,
            untagged=q.get("untagged") == "1",
            officer_only=scope if isinstance(scope, str) else None,
        )
        try:
            page_no = int(q.get("page", "1"))
        except ValueError:
            page_no = 1
        page = await run_in_threadpool(
            self.catalog.page, filters, page_no, self.settings.utc_offset_minutes
        )
        officers, devices = await run_in_threadpool(self.catalog.options)
        thumbs = await run_in_threadpool(self.thumbs_of, [r.sha256 for r in page.rows])
        # Thumbnails are stills of the footage: the ones not yet covered by this session's
        # entries are logged as one view before the page that shows them goes out.
        new = self.access.unviewed(who[1].token, thumbs)
        if new:
            await run_in_threadpool(
                self.log_access, user, access.VIEW, new, purpose, "kiosk: list thumbnails"
            )
            self.access.mark_viewed(who[1].token, new)
        tagged = None
        if q.get("tagged", "").isdigit():
            body = await run_in_threadpool(self.catalog.tag_entry, int(q["tagged"]))
            tagged = {**body, "seq": int(q["tagged"])} if body else None
        base = {
            k: v
            for k, v in (
                ("officer", filters.officer),
                ("device", filters.device),
                ("date", day.isoformat() if day else ""),
                ("untagged", "1" if filters.untagged else ""),
            )
            if v
        }
        return self.render(
            request,
            "recordings.html",
            who=who,
            page=page,
            thumbs=thumbs,
            filters=filters,
            day=day.isoformat() if day else "",
            officers=officers if scope is None else [],
            devices=devices,
            only_own=scope is not None,
            tagged=tagged,
            kinds=records.ACT_KINDS,
            retentions=records.RETENTION_CLASSES,
            page_url=lambda n: "/recordings?" + urlencode({**base, "page": n}),
        )

    def thumbs_of(self, shas: list[str]) -> set[str]:
        return {s for s in shas if (self.thumbs / f"{s}.jpg").is_file()}

    def may_view(self, user: User, officer: str | None) -> bool:
        scope = self.scope(user)
        return scope is None or (isinstance(scope, str) and officer == scope)

    async def recording(self, request: Request) -> Response:
        who = await run_in_threadpool(self.who, request)
        if who is None:
            return _to_login(request)
        user, session = who
        sha = str(request.path_params["sha256"])
        rec = await run_in_threadpool(self.catalog.recording, sha)
        if rec is None:
            return self.error(request, 404, "error.not_found", who)
        if not self.may_see(user) or not self.may_view(user, rec.officer):
            return self.error(request, 403, "error.forbidden", who)
        purpose = self.need_purpose(request, who)
        if isinstance(purpose, Response):
            return purpose
        anomalies = await run_in_threadpool(self.catalog.anomalies_of, rec)
        # Art. 16: each recording's earliest purge date is computed and shown.
        kept = await run_in_threadpool(
            retention.status, self.station, sha, self.settings.retention, datetime.now(UTC)
        )
        has_thumb = bool(await run_in_threadpool(self.thumbs_of, [rec.sha256]))
        kind = mimetypes.guess_type(rec.name)[0] or ""
        media_kind = kind.split("/", 1)[0] if kind else ""
        gone = ""
        try:
            await run_in_threadpool(access.stored_path, self.station, sha)
        except InputError as e:
            gone = explain(e)
        # The page shows the recording's facts and picture: a view, logged first.
        logged = [
            await run_in_threadpool(
                self.log_access, user, access.VIEW, [sha], purpose, "kiosk: recording page"
            )
        ]
        self.access.mark_viewed(session.token, [sha])  # its thumbnail may now go out
        grant = ""
        if media_kind in PLAYABLE and not gone and can(user.role, "play"):
            seq = await run_in_threadpool(
                self.log_access, user, access.PLAY, [sha], purpose, "kiosk: player"
            )
            logged.append(seq)
            grant = self.access.issue(session.token, user.name, sha, seq)
        return self.render(
            request,
            "recording.html",
            who=who,
            rec=rec,
            anomalies=anomalies,
            has_thumb=has_thumb,
            media_kind=media_kind,
            media_url=f"/media/{sha}?" + urlencode({"grant": grant}) if grant else "",
            gone=gone,
            kept=kept,
            logged=logged,
            kinds=records.ACT_KINDS,
            retentions=records.RETENTION_CLASSES,
        )

    async def tag(self, request: Request) -> Response:
        posted = await self.logged_in_post(request)
        if isinstance(posted, Response):
            return posted
        who, form = posted
        user = who[0]
        if not can(user.role, "tag"):
            log.warning("user %s (%s) tried to tag; refused", user.name, user.role)
            return self.error(request, 403, "error.forbidden", who)
        files = [str(v) for v in form.getlist("sha256") if isinstance(v, str)]
        if not all(is_sha256(f) for f in files):
            return self.error(request, 400, "error.bad_input", who, message="sha256")
        reason = str(form.get("reason", "")).strip() or None
        try:
            entry = await run_in_threadpool(
                lambda: records.tag(
                    self.station,
                    files,
                    case=str(form.get("case", "")).strip(),
                    kind=str(form.get("kind", "")),
                    retention=str(form.get("retention", "routine")),
                    reason=reason,
                    by=user.name,
                )
            )
        except InputError as e:
            return self.error(request, 400, "error.bad_input", who, message=explain(e))
        log.info("user %s tagged %d recording(s) (entry %d)", user.name, len(files), entry.seq)
        path, _, query = _local(str(form.get("next", "/recordings"))).partition("?")
        kept = [(k, v) for k, v in parse_qsl(query) if k != "tagged"]
        back = f"{path}?{urlencode([*kept, ('tagged', str(entry.seq))])}"
        return RedirectResponse(back, status_code=303)

    # -- the access log --------------------------------------------------------------

    async def access_page(self, request: Request) -> Response:
        who = await run_in_threadpool(self.who, request)
        if who is None:
            return _to_login(request)
        if not can(who[0].role, "view_access_log"):
            log.warning("user %s (%s) asked for the access log; refused", who[0].name, who[0].role)
            return self.error(request, 403, "error.forbidden", who)
        q = request.query_params
        name = q.get("user", "").strip()[:64]
        sha = q.get("sha256", "").strip().lower()
        if sha and not is_sha256(sha):
            return self.error(request, 400, "error.bad_input", who, message=f"SHA-256: {sha[:80]}")
        zone = timezone(timedelta(minutes=self.settings.utc_offset_minutes))
        bounds: list[datetime | None] = []
        for key, extra in (("from", 0), ("to", 1)):  # local days; "to" includes its day
            text = q.get(key, "")
            if not text:
                bounds.append(None)
                continue
            try:
                day = date.fromisoformat(text)
            except ValueError:
                return self.error(request, 400, "error.bad_input", who, message=text[:80])
            start = datetime(day.year, day.month, day.day, tzinfo=zone)
            bounds.append(start + timedelta(days=extra))
        found = await run_in_threadpool(
            lambda: access.access_log(
                self.station, user=name or None, sha256=sha or None, start=bounds[0], end=bounds[1]
            )
        )
        found.reverse()  # newest first
        return self.render(
            request,
            "access.html",
            who=who,
            rows=found[:ACCESS_ROWS],
            total=len(found),
            shown=min(len(found), ACCESS_ROWS),
            filter_user=name,
            filter_sha=sha,
            filter_from=q.get("from", "")[:10],
            filter_to=q.get("to", "")[:10],
            may_open=self.may_see(who[0]),
        )

    # -- files -----------------------------------------------------------------------

    async def thumb(self, request: Request) -> Response:
        sha = str(request.path_params["sha256"])
        denied, who = await self.file_access(request, sha)
        if denied is not None or who is None:
            return denied or Response(status_code=403)
        # Only stills this session's entries cover (the list or the recording's page).
        if not self.access.viewed(who[1].token, sha):
            return Response(status_code=403)
        path = self.thumbs / f"{sha}.jpg"  # built from a checked digest, never from the URL
        # A purged recording shows nothing of itself any more (Art. 16); its entries remain.
        if not path.is_file() or await run_in_threadpool(self.catalog.purged, sha):
            return Response(status_code=404)
        # no-store: the kiosk's browser is shared, and a cached still would go out to
        # the next user with no request and so no entry.
        return FileResponse(path, media_type="image/jpeg", headers={"cache-control": "no-store"})

    async def media(self, request: Request) -> Response:
        sha = str(request.path_params["sha256"])
        denied, who = await self.file_access(request, sha)
        if denied is not None or who is None:
            return denied or Response(status_code=403)
        user, session = who
        grant = self.access.use(
            request.query_params.get("grant", ""), session.token, user.name, sha
        )
        if grant is None:  # another user's, another recording's, expired, or none
            log.warning("user %s asked for %s without a valid grant; refused", user.name, sha)
            return Response(status_code=403)
        rec = await run_in_threadpool(self.catalog.recording, sha)
        kind = (mimetypes.guess_type(rec.name)[0] if rec else None) or ""
        if kind.split("/", 1)[0] not in PLAYABLE:
            kind = "application/octet-stream"
        path = self.station.store.path_for(sha)
        if not path.is_file():
            return Response(status_code=404)
        return FileResponse(
            path,
            media_type=kind,
            headers={"cache-control": "private, no-store", "content-disposition": "inline"},
        )

    async def file_access(
        self, request: Request, sha: str
    ) -> tuple[Response | None, tuple[User, Session] | None]:
        """(None, who) if the logged-in user may see the recording ``sha`` of the
        ledger at all (role and officer scope); else (the response that refuses, who)."""
        if not is_sha256(sha):
            return Response(status_code=404), None
        who = await run_in_threadpool(self.who, request)
        if who is None:
            return Response(status_code=403), None
        known, officer = await run_in_threadpool(self.catalog.owner, sha)
        if not known:
            return Response(status_code=404), who
        user = who[0]
        if not self.may_see(user) or not self.may_view(user, officer):
            return Response(status_code=403), who
        return None, who


def _token_ok(form: FormData, session: Session) -> bool:
    sent = form.get("csrf")
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def _set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    # HttpOnly: no script reads it; SameSite=Strict: no other site sends it; Path=/.
    # Not Secure: the kiosk is plain HTTP on the loopback interface.
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict")


def _local(target: str) -> str:
    """A redirect target on this site only (no //host, no scheme): else '/'."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _landing(user: User | None, target: str) -> str:
    """Where a login goes: the page asked for, but a role that sees no recordings is
    sent to what it may use instead (admins: the access log) rather than a refusal."""
    if user is None or not target.startswith("/recordings") or Kiosk.may_see(user):
        return target
    return "/access" if can(user.role, "view_access_log") else "/"


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _to_login(request: Request) -> Response:
    return RedirectResponse("/login?" + urlencode({"next": _here(request)}), status_code=303)


def create_app(
    station: Station,
    snapshot: Snapshot,
    users: Users,
    settings: KioskSettings | None = None,
) -> Starlette:
    """The kiosk for ``station``. ``snapshot`` returns ``Daemon.snapshot()`` (called
    from worker threads); ``users`` checks logins and sessions."""
    settings = settings or KioskSettings()
    kiosk = Kiosk(station, snapshot, users, settings)

    async def not_found(request: Request, exc: Exception) -> Response:
        return kiosk.error(request, 404, "error.not_found")

    async def bad_input(request: Request, exc: Exception) -> Response:
        log.warning("kiosk: %s", exc)
        return kiosk.error(request, 400, "error.bad_input", message=str(exc))

    routes = [
        Route("/", kiosk.dock),
        Route("/events", kiosk.events),
        Route("/login", kiosk.login_page, methods=["GET"]),
        Route("/login", kiosk.login, methods=["POST"]),
        Route("/logout", kiosk.logout, methods=["POST"]),
        Route("/lang", kiosk.set_language, methods=["POST"]),
        Route("/purpose", kiosk.purpose_page, methods=["GET"]),
        Route("/purpose", kiosk.set_purpose, methods=["POST"]),
        Route("/recordings", kiosk.recordings),
        Route("/recordings/{sha256}", kiosk.recording),
        Route("/tag", kiosk.tag, methods=["POST"]),
        Route("/thumbs/{sha256}.jpg", kiosk.thumb),
        Route("/media/{sha256}", kiosk.media),
        Route("/access", kiosk.access_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.hosts)),
        ],
        exception_handlers={404: not_found, EvidockError: bad_input},
    )
    app.state.kiosk = kiosk
    return app
