"""The daemon's heartbeat row, written without waiting long behind another process's lock, and how a
"busy" database is told apart from other store errors."""

import sqlite3
from contextlib import contextmanager

from ._peewee import pw
from .database import BUSY_TIMEOUT_SECONDS

# What SQLite ("database is locked", "database table is locked") and PostgreSQL (lock_timeout) say when
# another connection held a lock longer than this one waited.
_BUSY_WORDS = ("database is locked", "database table is locked", "database is busy", "lock timeout")


def is_busy(exc):
    """True when ``exc``, or an error it was raised from, says another connection held a lock too long."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        driver = isinstance(exc, (pw.OperationalError, sqlite3.OperationalError)) or "Busy" in type(exc).__name__
        if driver and any(words in str(exc).lower() for words in _BUSY_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def set_state_soon(store, key, value, now, wait_seconds):
    """``store.set_state``, giving up after ``wait_seconds`` for the write lock (an error ``is_busy`` knows).

    The daemon's heartbeat: the main loop it runs on also pings systemd's watchdog, and a VACUUM in
    another process holds SQLite's write lock longer than the watchdog waits.
    """
    with _lock_wait(store, wait_seconds), store.transaction():
        if store.dialect != "sqlite":
            store.execute(f"SET LOCAL lock_timeout = {int(wait_seconds * 1000)}")
        store.put_state(key, value, now)


@contextmanager
def _lock_wait(store, seconds):
    """SQLite: this thread's connection waits ``seconds`` for a lock (not BUSY_TIMEOUT_SECONDS) meanwhile."""
    if store.dialect != "sqlite":
        yield
        return
    connection = store.db.connection()
    connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    try:
        yield
    finally:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
