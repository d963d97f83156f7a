"""End to end: a real ``failured run`` subprocess, real command and HTTP handlers, sub-second delays."""

import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import SMALL_PATTERNS, wait_for
from failured.intake import record_failure
from failured.store import epoch, open_store

FLAKY = """
import os, sys
counter = sys.argv[1]
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
errors = sys.argv[2:]
if n < len(errors):
    sys.stderr.write(errors[n] + "\\n")
    sys.exit(1)
"""

def command_handler(task_type, script, *args, timeout=10):
    argv = json.dumps([sys.executable, str(script), *args])
    return f'[task_types.{task_type}.handler]\nkind = "command"\nargv = {argv}\ntimeout = {timeout}\n'


def final_status(daemon, task_id, statuses=("recovered", "notified", "exhausted", "manual"), timeout=15):
    rows = daemon.wait_for("SELECT status, attempts, category, error_message FROM tasks WHERE id=?",
                           lambda r: r and r[0][0] in statuses, timeout, task_id)
    return rows[0]


def report(daemon, task_type, error, payload=None):
    """Report a failure as an application does, through the Python API (the CLI's own tests run ``report``)."""
    store = open_store(daemon.db)
    try:
        return record_failure(store, task_type, error, payload=payload)
    finally:
        store.close()


@pytest.fixture
def flaky(tmp_path):
    path = tmp_path / "flaky.py"
    path.write_text(FLAKY)
    return path


def test_fails_twice_then_succeeds_ends_recovered_on_attempt_3(daemon_factory, flaky, tmp_path):
    daemon = daemon_factory(command_handler("sync", flaky, "{payload[counter]}", "connection timeout",
                                            "connection refused")).start()
    task_id = report(daemon, "sync", "connection timeout", {"counter": str(tmp_path / "c1")})
    status, attempts, category, _ = final_status(daemon, task_id)
    assert (status, attempts, category) == ("recovered", 3, "recoverable_network")
    events = [r[0] for r in daemon.query("SELECT event FROM task_events WHERE task_id=? ORDER BY id", task_id)]
    assert events.count("retry_failed") == 2 and events[-1] == "recovered"


def test_error_turning_into_a_data_error_stops_retrying(daemon_factory, flaky, tmp_path):
    daemon = daemon_factory(command_handler("sync", flaky, str(tmp_path / "c2"), "validation failed: bad id",
                                            "x", "y")).start()
    task_id = report(daemon, "sync", "connection timeout")
    status, attempts, category, error = final_status(daemon, task_id)
    assert (status, attempts, category) == ("notified", 1, "unrecoverable_data")
    assert "validation failed" in error
    assert daemon.query("SELECT audience, kind FROM notifications WHERE task_id=?", task_id) == [("admin", "task")]


def test_one_that_keeps_failing_ends_exhausted(daemon_factory, flaky, tmp_path):
    daemon = daemon_factory(command_handler("sync", flaky, str(tmp_path / "c3"), *["connection timeout"] * 9)).start()
    task_id = report(daemon, "sync", "connection timeout")
    status, attempts, _, _ = final_status(daemon, task_id)
    assert (status, attempts) == ("exhausted", 3)
    assert daemon.query("SELECT kind FROM notifications WHERE task_id=?", task_id) == [("exhausted",)]


class _Flaky503(BaseHTTPRequestHandler):
    calls = None  # a list of its own for each test (see test_http_handler_retries_until_2xx)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((body, self.headers.get("Authorization")))
        status = 503 if len(self.calls) <= 2 else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"upstream connection timeout" if status == 503 else b"ok")

    def log_message(self, *args):
        pass


@pytest.mark.sqlite_suffices("the HTTP handler (the store's retries and outcomes: the command handler's tests)")
def test_http_handler_retries_until_2xx(daemon_factory):
    handler = type("Flaky503", (_Flaky503,), {"calls": []})  # fresh calls: this test runs once per store
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        main = (f'[task_types.web.handler]\nkind = "http"\nurl = "http://127.0.0.1:{server.server_port}/retry"\n'
                'headers = { Authorization = "Bearer ${APP_TOKEN}" }\ntimeout = 5\n')
        daemon = daemon_factory(main, APP_TOKEN="s3cret-token").start()
        task_id = report(daemon, "web", "connection timeout", {"order_id": 9})
        status, attempts, _, _ = final_status(daemon, task_id)
        assert (status, attempts) == ("recovered", 3)
        body, auth = handler.calls[0]
        assert body["task_id"] == task_id and body["payload"] == {"order_id": 9} and auth == "Bearer s3cret-token"
        assert "s3cret-token" not in daemon.stderr()
    finally:
        server.shutdown()


@pytest.mark.sqlite_suffices("the handlers' own errors")
def test_bad_handlers_become_clear_errors_and_the_daemon_lives_on(daemon_factory, tmp_path):
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    main = (
        '[task_types.nocmd.handler]\nkind = "command"\nargv = ["/no/such/binary-xyz"]\ntimeout = 5\n'
        f'[task_types.refused.handler]\nkind = "http"\nurl = "http://127.0.0.1:{port}/x"\ntimeout = 2\n'
        '[task_types.noimport.handler]\nkind = "python"\ntarget = "no_such_module_xyz:run"\ntimeout = 5\n'
    )
    daemon = daemon_factory(main).start()
    ids = {t: report(daemon, t, "connection timeout") for t in ("nocmd", "refused", "noimport", "nohandler")}
    expectations = {"nocmd": "/no/such/binary-xyz", "refused": "refused", "noimport": "no_such_module_xyz"}
    for task_type, needle in expectations.items():
        status, attempts, _, error = final_status(daemon, ids[task_type])
        # "connection refused" is itself a network error: it keeps retrying to the limit
        assert status in ("notified", "exhausted"), (task_type, status)
        assert needle.lower() in error.lower(), (task_type, error)
    assert final_status(daemon, ids["nohandler"])[0] == "manual"
    assert daemon.proc.poll() is None


def test_sigterm_lets_the_running_retry_finish_and_exits_0(daemon_factory, tmp_path):
    # the handler runs until the barrier file appears, and the test makes it appear only once
    # the daemon has said it is stopping: the retry is running through the stop at any speed
    script = tmp_path / "held.py"
    script.write_text("import os, sys, time\nopen(sys.argv[1], 'w').close()\n"
                      "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.02)\n"
                      "open(sys.argv[3], 'w').write('done')\n")
    started, barrier, done = tmp_path / "started", tmp_path / "barrier", tmp_path / "done"
    daemon = daemon_factory(command_handler("slow", script, str(started), str(barrier), str(done), timeout=120),
                            FAILURE_SHUTDOWN_GRACE_SECONDS=120).start()
    task_id = report(daemon, "slow", "connection timeout")
    assert wait_for(started.exists, 30)
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_message("STOPPING=1", 30)
    assert daemon.proc.poll() is None  # still waiting for its running retry
    barrier.touch()
    assert daemon.stop() == 0
    assert done.read_text() == "done"
    assert daemon.query("SELECT status FROM tasks WHERE id=?", task_id)[0][0] == "recovered"


def test_sigterm_after_the_grace_period_reschedules_what_still_runs(daemon_factory, tmp_path):
    script = tmp_path / "forever.py"
    script.write_text("import time\ntime.sleep(60)\n")
    daemon = daemon_factory(command_handler("slow", script, timeout=120), FAILURE_SHUTDOWN_GRACE_SECONDS=0.3).start()
    task_id = report(daemon, "slow", "connection timeout")
    daemon.wait_for("SELECT status FROM tasks WHERE id=?", lambda r: r[0][0] == "running", 10, task_id)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0  # killed after 10 s: no need to wait out the 60 s handler
    assert time.monotonic() - started < 10
    status, attempts = daemon.query("SELECT status, attempts FROM tasks WHERE id=?", task_id)[0]
    assert (status, attempts) == ("scheduled", 0)


@pytest.mark.sqlite_only("one daemon per SQLite file; on PostgreSQL several share one (test_several_daemons)")
def test_second_daemon_on_the_same_database_refuses(daemon_factory):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    first = daemon_factory(FAILURE_HTTP_ADDR=address).start()
    result = first.cli("run", timeout=20)  # its port is taken too, by the first: the database is what to say
    assert result.returncode == 1
    assert "another failured daemon (pid" in result.stderr and "cannot listen" not in result.stderr, result.stderr


@pytest.mark.sqlite_suffices("sd_notify")
def test_sd_notify_ready_status_watchdog_and_reload(daemon_factory):
    daemon = daemon_factory(WATCHDOG_USEC="400000").start()
    daemon.wait_message("WATCHDOG=1", 5)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_message("RELOADING=1", 5)
    assert any(m.startswith("READY=1") and "STATUS=" in m for m in daemon.messages)


def test_manual_recover_from_the_cli_is_noticed_by_the_running_daemon(daemon_factory, flaky, tmp_path):
    daemon = daemon_factory(command_handler("sync", flaky, str(tmp_path / "c4"))).start()
    task_id = report(daemon, "sync", "malformed json")
    assert final_status(daemon, task_id)[0] == "notified"
    refused = daemon.cli("recover", str(task_id))
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert daemon.cli("recover", str(task_id), "--force").returncode == 0
    assert final_status(daemon, task_id, ("recovered",), timeout=5)[0] == "recovered"


def test_recovery_disabled_classifies_and_notifies_but_does_not_retry(daemon_factory, flaky, tmp_path):
    main = command_handler("sync", flaky, str(tmp_path / "c5"))
    daemon = daemon_factory(main, FAILURE_RECOVERY_ENABLED="false").start()
    retry = report(daemon, "sync", "connection timeout")
    data = report(daemon, "sync", "malformed json")
    assert final_status(daemon, data)[0] == "notified"
    # the retry's due time has passed...
    daemon.wait_for("SELECT next_retry_at FROM tasks WHERE id=?", lambda r: epoch(r[0][0]) < time.time(), 30, retry)
    # ...and a clean stop ends every loop: what has not happened by now never will
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.query("SELECT status, attempts FROM tasks WHERE id=?", retry)[0] == ("scheduled", 0)
    assert not (tmp_path / "c5").exists()
    # turned back on, the waiting retry runs
    restarted = daemon_factory(main).start()
    assert final_status(restarted, retry, ("recovered",), timeout=30)[0] == "recovered"


def test_reaction_report_to_zero_delay_retry_is_prompt(daemon_factory, tmp_path):
    patterns = SMALL_PATTERNS.replace("delays = [0.05, 0.1, 0.2]", "delays = [0]")
    script = tmp_path / "stamp.py"
    script.write_text("import sys\nopen(sys.argv[1], 'w').write('ran')\n")
    daemon = daemon_factory(command_handler("sync", script, str(tmp_path / "stamp")), patterns=patterns).start()
    task_id = report(daemon, "sync", "connection timeout")
    daemon.wait_for("SELECT count(*) FROM tasks WHERE status='recovered'", lambda r: r[0][0] == 1, 30)
    assert (tmp_path / "stamp").read_text() == "ran"
    # from the row written by the report to the retry's start, both stamped in the database:
    # the daemon's own reaction, without the start-up of the CLI or of the handler process
    # (the bench measures the figure itself: p50 240 ms)
    [(reported, started)] = daemon.query("SELECT t.created_at, e.at FROM tasks t JOIN task_events e "
                                         "ON e.task_id = t.id AND e.event = 'retry_started' WHERE t.id = ?", task_id)
    assert epoch(started) - epoch(reported) < 2.0


def test_a_scheduled_job_on_a_full_disk_is_one_warning_not_a_traceback(caplog):
    """Disk full is an expected condition: the heartbeat alerts once; a job that meets it says so in a line."""
    from types import SimpleNamespace

    from failured.daemon import Daemon
    from failured.errors import StoreFullError

    seen = []

    def check_thresholds():
        raise StoreFullError("data/failured.db", "0 bytes free on its filesystem")

    Daemon._guarded(SimpleNamespace(_disk_full=seen.append), check_thresholds)
    assert [str(e) for e in seen] == [str(StoreFullError("data/failured.db", "0 bytes free on its filesystem"))]
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    assert "scheduled job check_thresholds skipped: disk full" in caplog.text
