"""Signals that come while the daemon starts (training the model takes seconds): acted on once it has started."""

import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import wait_for

from failured.store import open_store


def has_open(pid, path):
    """Whether process ``pid`` has the file ``path`` open (it is inside start(): it has opened the store)."""
    folder = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(folder / fd) == os.path.realpath(path) for fd in os.listdir(folder))
    except OSError:
        return False


def start_held(daemon):
    """Start ``daemon`` while the test holds the database's write lock: its start-up waits at its first write.
    Returns the lock (roll it back to let the start-up go on) and the thread waiting for READY."""
    open_store(daemon.db).close()
    lock = sqlite3.connect(daemon.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    starting = threading.Thread(target=lambda: daemon.start(ready_timeout=40), daemon=True)
    starting.start()
    assert wait_for(lambda: daemon.proc is not None and has_open(daemon.proc.pid, daemon.db), 20)
    return lock, starting


@pytest.mark.sqlite_only("holds SQLite's write lock to keep the daemon in its start-up")
def test_sighup_during_start_up_reloads_once_started(daemon_factory):
    daemon = daemon_factory()
    lock, starting = start_held(daemon)
    daemon.proc.send_signal(signal.SIGHUP)
    lock.execute("ROLLBACK")
    daemon.wait_message("READY=1", 40)
    daemon.wait_message("RELOADING=1", 10)
    assert daemon.proc.poll() is None
    starting.join(5)


@pytest.mark.sqlite_only("holds SQLite's write lock to keep the daemon in its start-up")
def test_sigterm_during_start_up_stops_cleanly(daemon_factory):
    daemon = daemon_factory()
    lock, _ = start_held(daemon)
    daemon.proc.send_signal(signal.SIGTERM)
    lock.execute("ROLLBACK")
    assert daemon.proc.wait(40) == 0, daemon.stderr()
    assert "stopped" in daemon.stderr()


@pytest.mark.sqlite_only("holds SQLite's write lock to keep the daemon in its start-up")
def test_a_long_start_up_asks_systemd_for_more_time_and_stops_asking_once_ready(daemon_factory):
    """Training the model on a first start takes half a minute, more on a slow machine: past the unit's
    TimeoutStartSec (90 s) systemd would kill the start and begin it again, for ever."""
    daemon = daemon_factory()
    lock, starting = start_held(daemon)
    daemon.wait_message("EXTEND_TIMEOUT_USEC=30000000", 20)
    assert any("STATUS=starting: loading the configuration and its model" in m for m in daemon.messages)
    lock.execute("ROLLBACK")
    daemon.wait_message("READY=1", 40)
    ready_at = next(i for i, m in enumerate(daemon.messages) if "READY=1" in m)
    assert not any("EXTEND_TIMEOUT_USEC" in m for m in daemon.messages[ready_at + 1:])
    starting.join(5)
