"""SQLite: another process holding the database's write lock (a VACUUM of a large file) for longer than the store's
busy timeout neither ends the daemon nor stops its watchdog pings; the daemon says so once, and carries on."""

import json
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.request

import pytest
from conftest import wait_for

from failured.store import BUSY_TIMEOUT_SECONDS


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(daemon):
    port = re.search(r"HTTP API on 127\.0\.0\.1:(\d+)", daemon.stderr()).group(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def pings(daemon):
    return sum(message == "WATCHDOG=1" for message in list(daemon.messages))


@pytest.mark.sqlite_only("SQLite's write lock, held by another process")
def test_a_write_lock_held_past_the_busy_timeout_is_waited_out(daemon_factory):
    daemon = daemon_factory(FAILURE_HTTP_ADDR=f"127.0.0.1:{free_port()}", WATCHDOG_USEC="2000000").start()  # a ping a second
    assert wait_for(lambda: "HTTP API on" in daemon.stderr(), 10)
    # A new database runs scan, analysis and housekeeping at the first start: a job already waiting for the lock
    # waits out the busy timeout once (the unit's WatchdogSec=60 allows it); this test is about the waits after.
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key IN ('last_scan', 'last_analysis', 'last_housekeeping')",
                    lambda r: r and r[0][0] == 3, 30)
    vacuum = sqlite3.connect(daemon.db, isolation_level=None)
    vacuum.execute("BEGIN IMMEDIATE")
    try:
        # It used to wait out the busy timeout in its heartbeat, then exit 1 with "database is locked".
        held_until = time.monotonic() + BUSY_TIMEOUT_SECONDS + 5
        while "is busy" not in daemon.stderr():
            assert daemon.proc.poll() is None, daemon.stderr()
            assert time.monotonic() < held_until, daemon.stderr()
            time.sleep(0.05)
        status, answer = health(daemon)
        assert status == 503 and answer["store_busy"] is True
        seen = pings(daemon)
        # a ping a second, but for the heartbeat's own wait of at most 5 s every 5 s
        assert wait_for(lambda: pings(daemon) >= seen + 3, 20), "the watchdog pings stopped"
        while time.monotonic() < held_until:  # past the busy timeout: still running
            assert daemon.proc.poll() is None, daemon.stderr()
            time.sleep(0.2)
    finally:
        vacuum.execute("COMMIT")
        vacuum.close()
    released = time.time()
    assert wait_for(lambda: "writable again" in daemon.stderr(), 15), daemon.stderr()
    daemon.wait_for("SELECT value FROM daemon_state WHERE key = 'heartbeat'",
                    lambda r: r and float(r[0][0].split()[0]) >= released, 15)
    assert health(daemon)[0] == 200
    assert daemon.stderr().count("is busy") == 1
    assert "Traceback" not in daemon.stderr()  # the dispatcher's lanes and the retry timer wait too, saying so once
    assert daemon.stop() == 0
