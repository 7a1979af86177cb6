"""What the kiosk keeps per session for the access log (Art. 18): the purpose the user
stated, which recordings' pictures were already logged as viewed, and the grants
that let the page's player fetch a recording.

All of it lives in the daemon's memory, keyed by the SHA-256 of the session token
(the token itself is never kept). It is not evidence — the ``access`` entries
are — so a restart simply forgets it, and each user states a purpose again.
A new login is a new token, so it starts with no purpose either.

A grant is what the player's ``<video src>`` carries: a random token naming one
session, one user and one recording, issued when the ``play`` entry has been
appended. The many HTTP Range requests of one playback present the same grant,
so one page load is one ``play`` entry, however the browser fetches the bytes.
A grant is refused for another user or session, another recording, or once
expired: after ``idle_s`` without a request (a player left paused) or
``max_s`` after it was issued, whichever comes first; the page is then loaded
again, which is logged again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MAX_SESSIONS = 4096  # sessions remembered; the oldest are forgotten (they state a purpose again)
MAX_GRANTS = 8192


def session_key(token: str) -> str:
    """The key of a session: SHA-256 of its token, as users.db keeps it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Purpose:
    """A stated purpose: the kind chosen (agent.records.access.PURPOSE_KINDS), the detail
    typed, and the text the ``access`` entries carry."""

    kind: str
    detail: str
    text: str


@dataclass
class _Session:
    purpose: Purpose
    viewed: set[str] = field(default_factory=set)  # pictures logged as viewed, this purpose


@dataclass(frozen=True)
class Grant:
    session: str  # session_key of the session it was issued to
    user: str
    sha256: str
    issued: float
    entry: int  # the ``play`` entry it was issued for


class AccessState:
    """Purposes, logged views and player grants of the kiosk's sessions (thread-safe)."""

    def __init__(
        self,
        *,
        idle_s: float = 600.0,
        max_s: float = 4 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._grants: OrderedDict[str, tuple[Grant, float]] = OrderedDict()  # -> (grant, last use)

    # -- purposes ---------------------------------------------------------------------

    def purpose(self, token: str) -> Purpose | None:
        with self._lock:
            found = self._sessions.get(session_key(token))
            return found.purpose if found else None

    def set_purpose(self, token: str, purpose: Purpose) -> None:
        """State (or change) the session's purpose. A change starts a new set of
        logged views and ends the session's player grants: what is seen or played
        from now on is logged under the new purpose."""
        key = session_key(token)
        with self._lock:
            self._sessions[key] = _Session(purpose)
            for grant_token in [t for t, (g, _) in self._grants.items() if g.session == key]:
                del self._grants[grant_token]
            self._sessions.move_to_end(key)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)

    def forget(self, token: str) -> None:
        """The session ended (logout): its purpose, views and grants go."""
        key = session_key(token)
        with self._lock:
            self._sessions.pop(key, None)
            for grant_token in [t for t, (g, _) in self._grants.items() if g.session == key]:
                del self._grants[grant_token]

    # -- pictures already logged -----------------------------------------------------

    def unviewed(self, token: str, shas: Iterable[str]) -> list[str]:
        """Of ``shas``, those whose pictures this session has not yet had logged under
        its purpose. They stay unlogged (no thumbnail goes out) until ``mark_viewed``,
        which the caller runs only after their ``view`` entry is written; two pages
        loaded at once may both log them, never neither."""
        with self._lock:
            found = self._sessions.get(session_key(token))
            return [] if found is None else sorted(set(shas) - found.viewed)

    def mark_viewed(self, token: str, shas: Iterable[str]) -> None:
        """Their ``view`` entry is written: their pictures may go out to this session."""
        with self._lock:
            found = self._sessions.get(session_key(token))
            if found is not None:
                found.viewed.update(shas)

    def viewed(self, token: str, sha256: str) -> bool:
        """Whether this session's view of ``sha256`` is logged (a thumbnail may go out)."""
        with self._lock:
            found = self._sessions.get(session_key(token))
            return found is not None and sha256 in found.viewed

    # -- player grants ---------------------------------------------------------------

    def issue(self, token: str, user: str, sha256: str, entry: int) -> str:
        """A new grant for the player of one page load (after its ``play`` entry)."""
        grant_token = secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock:
            self._prune(now)
            self._grants[grant_token] = (
                Grant(session_key(token), user, sha256, now, entry),
                now,
            )
            while len(self._grants) > MAX_GRANTS:
                self._grants.popitem(last=False)
        return grant_token

    def use(self, grant_token: str, token: str, user: str, sha256: str) -> Grant | None:
        """The grant, if ``grant_token`` lets this session and user fetch ``sha256``
        now (and it is kept alive); else None."""
        now = self.clock()
        key = session_key(token)
        with self._lock:
            found = self._grants.get(grant_token)
            if found is None:
                return None
            grant, last = found
            if self._expired(grant, last, now):
                del self._grants[grant_token]
                return None
            if not (
                hmac.compare_digest(grant.session, key)
                and grant.user == user
                and grant.sha256 == sha256
            ):
                return None
            self._grants[grant_token] = (grant, now)
            return grant

    def _expired(self, grant: Grant, last: float, now: float) -> bool:
        return now - last >= self.idle_s or now - grant.issued >= self.max_s

    def _prune(self, now: float) -> None:
        for grant_token in [
            t for t, (g, last) in self._grants.items() if self._expired(g, last, now)
        ]:
            del self._grants[grant_token]
