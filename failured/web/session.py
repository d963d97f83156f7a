"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, and a CSRF token per session.

Kept in memory (a restart logs everyone out); one lock guards the table, which request
threads share. The oldest sessions go first past MAX_SESSIONS.
"""

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

COOKIE = "failured_session"
LIFETIME_SECONDS = 12 * 3600
MAX_SESSIONS = 1000


@dataclass
class Session:
    id: str
    csrf: str
    expires: float
    flash: list = field(default_factory=list)  # one-shot messages for the next page: (kind, text)


class Sessions:
    """The session table; ``monotonic`` is injectable for tests."""

    def __init__(self, monotonic=time.monotonic):
        self._lock = threading.Lock()
        self._sessions = {}
        self._monotonic = monotonic

    def create(self):
        now = self._monotonic()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + LIFETIME_SECONDS)
        with self._lock:
            for stale in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[stale]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].expires)]
            self._sessions[session.id] = session
        return session

    def get(self, session_id):
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= self._monotonic():
                del self._sessions[session_id]
                return None
            return session

    def drop(self, session_id):
        with self._lock:
            self._sessions.pop(session_id, None)


def csrf_ok(session, given):
    """Constant-time comparison of a form's CSRF token with the session's."""
    return session is not None and bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())


def cookie_header(session):
    return ("Set-Cookie", f"{COOKIE}={session.id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECONDS}")


def expired_cookie_header():
    return ("Set-Cookie", f"{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")


def cookie_value(header):
    """The session id from a Cookie header (None when absent)."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None
