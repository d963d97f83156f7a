"""PostgreSQL: a table another session keeps locked never stalls a daemon's main loop past systemd's watchdog.

A real daemon on a real server pings a real NOTIFY_SOCKET; a psql-like session holds daemon_state in ACCESS
EXCLUSIVE mode, as `lock table ... ; select pg_sleep(50)` did in production.
"""

import threading
import time

import pytest

from conftest import DaemonProcess, daemon_env, write_config
from test_store_postgres import pg_unavailable, pg_url  # noqa: F401 - fixtures: a fresh schema of the real server
from failured.store import open_store
from failured.store.database import DAEMON_LOCK_TIMEOUT_MS

WATCHDOG_SECONDS = 30  # the unit's WatchdogSec


def lock_timeout_ms(store):
    return store.scalar("SELECT setting::int FROM pg_settings WHERE name = 'lock_timeout'")


def pings(daemon):
    return sum(message == "WATCHDOG=1" for message in list(daemon.messages))


@pytest.fixture
def daemon(pg_url, tmp_path):
    process = DaemonProcess(tmp_path, daemon_env(tmp_path, pg_url, write_config(tmp_path / "config"),
                                                 WATCHDOG_USEC=2_000_000))  # a ping every second
    yield process.start()
    process.close()


def test_a_locked_table_does_not_stop_the_watchdog_pings(daemon, pg_url, table="daemon_state"):
    import psycopg

    daemon.wait_message("WATCHDOG=1")
    with psycopg.connect(pg_url) as blocker:
        blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        seen, last_ping, longest = pings(daemon), time.monotonic(), 0.0
        held_until = time.monotonic() + 3 * DAEMON_LOCK_TIMEOUT_MS / 1000  # long enough for several timeouts
        while time.monotonic() < held_until:
            now = time.monotonic()
            if pings(daemon) > seen:
                seen, last_ping = pings(daemon), now
            longest = max(longest, now - last_ping)
            assert longest < WATCHDOG_SECONDS * 2 / 3, f"no watchdog ping for {longest:.1f}s"
            assert daemon.proc.poll() is None, daemon.stderr()
            time.sleep(0.05)
        blocker.rollback()
    assert longest < WATCHDOG_SECONDS / 2, f"no watchdog ping for {longest:.1f}s"


def test_a_daemons_statement_on_a_locked_table_gives_up_after_the_lock_timeout(pg_url):
    import psycopg

    store = open_store(pg_url)
    blocker = psycopg.connect(pg_url)
    try:
        store.take_daemon_lock()
        blocker.execute("LOCK TABLE daemon_state IN ACCESS EXCLUSIVE MODE")
        # Let go long after the timeout: without one the read would wait for it, then answer.
        release = threading.Timer(3 * DAEMON_LOCK_TIMEOUT_MS / 1000, blocker.rollback)
        release.start()
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            store.get_state("heartbeat")
        waited = time.monotonic() - started
        release.cancel()
        assert "lock timeout" in str(raised.value)  # what the daemon's loops take for a busy database
        assert DAEMON_LOCK_TIMEOUT_MS / 1000 - 0.5 < waited < 2 * DAEMON_LOCK_TIMEOUT_MS / 1000
        blocker.rollback()
        assert store.get_state("heartbeat") is None  # the session goes on: the next step's statement runs
    finally:
        blocker.close()
        store.close()


def test_lock_waits_are_bounded_for_a_daemon_only(pg_url):
    """The daemon's sessions (it holds the shared daemon lock) give up on a lock; migrate-store (alone) and
    commands that are not the daemon wait as long as it takes."""
    daemon_store, other = open_store(pg_url), open_store(pg_url)
    try:
        daemon_store.take_daemon_lock()
        assert lock_timeout_ms(daemon_store) == DAEMON_LOCK_TIMEOUT_MS
        assert lock_timeout_ms(other) == 0
    finally:
        daemon_store.close()
        other.close()
    alone = open_store(pg_url)
    try:
        alone.take_daemon_lock(exclusive=True)
        assert lock_timeout_ms(alone) == 0
    finally:
        alone.close()


def test_a_daemon_session_opened_later_bounds_its_lock_waits_too(pg_url):
    store = open_store(pg_url)
    try:
        store.take_daemon_lock()
        seen = []
        thread = threading.Thread(target=lambda: (seen.append(lock_timeout_ms(store)), store.db.close()))
        thread.start()
        thread.join()
        assert seen == [DAEMON_LOCK_TIMEOUT_MS]
    finally:
        store.close()
