"""The kiosk's per-session access state (agent.kiosk.grants): purposes, logged views and
player grants, with a clock the test moves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.kiosk.grants import AccessState, Purpose, session_key

A, B = "token-of-session-a", "token-of-session-b"
SHA1, SHA2 = "1" * 64, "2" * 64
CASE = Purpose("case_work", "A-1", "case work: A-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(idle: float = 60.0, most: float = 600.0) -> tuple[AccessState, Clock]:
    clock = Clock()
    return AccessState(idle_s=idle, max_s=most, clock=clock), clock


def test_a_purpose_belongs_to_one_session_and_goes_with_it() -> None:
    s, _ = state()
    assert s.purpose(A) is None
    s.set_purpose(A, CASE)
    assert s.purpose(A) == CASE and s.purpose(B) is None
    other = Purpose("other", "x", "other: x")
    s.set_purpose(A, other)
    assert s.purpose(A) == other
    s.forget(A)
    assert s.purpose(A) is None
    assert session_key(A) != A and len(session_key(A)) == 64


def test_views_are_logged_once_per_purpose_and_only_after_their_entry() -> None:
    s, _ = state()
    s.mark_viewed(A, [SHA1])
    assert not s.viewed(A, SHA1)  # no purpose, no session state: nothing counts as logged
    assert s.unviewed(A, [SHA1]) == []
    s.set_purpose(A, CASE)
    assert s.unviewed(A, [SHA2, SHA1, SHA1]) == [SHA1, SHA2]
    # Until their entry is written, none of their pictures may go out.
    assert not s.viewed(A, SHA1) and not s.viewed(A, SHA2)
    assert s.unviewed(A, [SHA1, SHA2]) == [SHA1, SHA2]  # a page loaded meanwhile logs them too
    s.mark_viewed(A, [SHA1, SHA2])
    assert s.unviewed(A, [SHA1, SHA2]) == []  # the same list again: no new entry
    assert s.viewed(A, SHA1) and not s.viewed(B, SHA1)
    s.set_purpose(A, Purpose("inspection", "", "inspection"))  # a new purpose: logged anew
    assert not s.viewed(A, SHA1)
    assert s.unviewed(A, [SHA1]) == [SHA1]


def test_a_new_purpose_ends_the_sessions_grants() -> None:
    s, _ = state()
    s.set_purpose(A, CASE)
    mine, theirs = s.issue(A, "sup", SHA1, entry=3), s.issue(B, "aud", SHA1, entry=4)
    s.set_purpose(A, Purpose("inspection", "", "inspection"))
    assert s.use(mine, A, "sup", SHA1) is None  # played under the old purpose's entry: ended
    assert s.use(theirs, B, "aud", SHA1) is not None  # another session's grant stays


def test_a_grant_serves_its_session_user_and_file_only() -> None:
    s, _ = state()
    grant = s.issue(A, "sup", SHA1, entry=7)
    used = s.use(grant, A, "sup", SHA1)
    assert used is not None and (used.user, used.sha256, used.entry) == ("sup", SHA1, 7)
    assert s.use(grant, B, "aud", SHA1) is None  # another user in another session
    assert s.use(grant, B, "sup", SHA1) is None  # the same name, another session
    assert s.use(grant, A, "aud", SHA1) is None
    assert s.use(grant, A, "sup", SHA2) is None  # another recording
    assert s.use("forged", A, "sup", SHA1) is None
    assert s.use("", A, "sup", SHA1) is None
    assert s.use(grant, A, "sup", SHA1) is not None  # refusals do not spend it
    s.forget(A)
    assert s.use(grant, A, "sup", SHA1) is None  # logout ends it


def test_a_grant_lapses_when_idle_and_at_its_maximum_age() -> None:
    s, clock = state(idle=60, most=600)
    grant = s.issue(A, "sup", SHA1, entry=1)
    for _ in range(10):  # kept alive by use, every 59 s (590 s in all) ...
        clock.now += 59
        assert s.use(grant, A, "sup", SHA1) is not None
    clock.now += 59  # ... but never beyond 600 s after it was issued
    assert s.use(grant, A, "sup", SHA1) is None
    idle = s.issue(A, "sup", SHA1, entry=2)
    clock.now += 60
    assert s.use(idle, A, "sup", SHA1) is None
    assert s.use(idle, A, "sup", SHA1) is None  # and it stays gone


@given(st.lists(st.sampled_from([SHA1, SHA2, "3" * 64, "4" * 64]), max_size=12))
def test_logged_views_add_up_to_the_distinct_recordings(batches: list[str]) -> None:
    s, _ = state()
    s.set_purpose(A, CASE)
    logged: list[str] = []
    for i in range(0, len(batches), 3):
        new = s.unviewed(A, batches[i : i + 3])
        logged += new
        s.mark_viewed(A, new)
    assert sorted(logged) == sorted(set(batches))
