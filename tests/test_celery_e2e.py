"""Celery integration end to end: a real ``celery worker``, a real ``failured run``, real brokers.

Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest); a broker that
does not answer skips its tests with the reason. One daemon and one worker per
broker are shared by the tests of this module; each test uses keys of its own.
"""

import datetime
import decimal
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

celery = pytest.importorskip("celery", reason="Celery is not installed: pip install -e '.[test]'")

from conftest import REPO, DaemonProcess  # noqa: E402
from failured.integrations.spool import Spool  # noqa: E402
from failured.text import toml_key  # noqa: E402

BROKERS = {
    "redis": ("127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
    "rabbitmq": ("127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672//"),
}
TOKEN = "celery-test-token-0123456789"

# The worker's app, written into the test's directory: the real one-line install plus test tasks.
WORKER_APP = '''
import os, pathlib, time
from celery import Celery
from celery.exceptions import Ignore, Reject
from celery.utils.log import get_task_logger
from failured.integrations import celery as failured_celery

app = Celery("t", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(task_default_queue=os.environ["T_QUEUE"], broker_connection_retry_on_startup=True,
                worker_prefetch_multiplier=1)
failured_celery.install(app, include=["t.*"], timeout=2.0, flush_interval=0.3)
log = get_task_logger(__name__)
STATE = pathlib.Path(os.environ["T_STATE_DIR"])


def run_number(key):
    with open(STATE / (key + ".runs"), "a") as f:
        f.write("run\\n")
    n = len((STATE / (key + ".runs")).read_text().splitlines())
    log.warning("RUN %s %s", key, n)
    return n


@app.task(name="t.flaky")
def flaky(key, fail_times):
    n = run_number(key)
    if n <= fail_times:
        raise ConnectionRefusedError(111, "Connection refused (run %d)" % n)
    return n


@app.task(name="t.bad_data")
def bad_data(key):
    run_number(key)
    raise ValueError("invalid literal for int() with base 10: 'abc'")


@app.task(name="t.autoretry", autoretry_for=(ConnectionRefusedError,), max_retries=2, default_retry_delay=0)
def autoretry(key):
    run_number(key)
    raise ConnectionRefusedError(111, "Connection refused")


@app.task(name="t.surrogate")
def surrogate(key, text):
    run_number(key)
    raise ValueError("bad bytes: " + b"\\xff\\xfe".decode("utf-8", "surrogateescape"))


@app.task(name="t.chained")
def chained(key):
    run_number(key)
    raise RuntimeError("sync step failed") from ConnectionResetError(104, "Connection reset by peer")


@app.task(name="t.rejects")
def rejects(key):
    run_number(key)
    raise Reject("poison message", requeue=False)


@app.task(name="t.ignored_on_retry")
def ignored_on_retry(key):
    if run_number(key) == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    raise Ignore("already synced")


@app.task(name="t.rejected_on_retry")
def rejected_on_retry(key):
    if run_number(key) == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    raise Reject("poison message", requeue=False)


@app.task(name="t.revoked_on_retry", bind=True)
def revoked_on_retry(self, key):
    if run_number(key) == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    (STATE / (key + ".running")).write_text(self.request.id)
    time.sleep(600)  # the test revokes it


@app.task(name="t.typed")
def typed(key, *values):
    if run_number(key) == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    (STATE / (key + ".values")).write_text(repr(values))


@app.task(name="t.unsendable")
def unsendable(key, value):
    run_number(key)
    raise ConnectionRefusedError(111, "Connection refused")


@app.task(name="t.long_" + "x" * 250)
def long_name(key):
    run_number(key)
    raise ConnectionRefusedError(111, "Connection refused")


@app.task(name="t.escape\\x1b[31m_red")
def escape_in_name(key):
    if run_number(key) == 1:
        raise ConnectionRefusedError(111, "Connection refused")


@app.task(name="t.bulk")
def bulk(key):
    run_number(key)
    raise ConnectionRefusedError(111, "Connection refused")


@app.task(name="t.dies")
def dies(key):
    run_number(key)
    os.kill(os.getpid(), 9)  # as the OOM killer would: the prefork child is gone, the main process fails the task


@app.task(name="t.outlives_its_limit", time_limit=2)
def outlives_its_limit(key):
    n = run_number(key)
    if n == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    time.sleep(60)  # failured's retry: the hard time limit kills the child


@app.task(name="t.answers_late")
def answers_late(key):
    n = run_number(key)
    if n == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    go = STATE / (key + ".go")  # the test creates it once failured has stopped waiting for this answer
    while not go.exists():
        time.sleep(0.01)
    return n


@app.task(name="t.hang_once")
def hang_once(key):
    n = run_number(key)
    if n == 1:
        raise ConnectionRefusedError(111, "Connection refused")
    if n == 2:  # the first failured-driven run: the test kills the worker now
        (STATE / (key + ".hanging")).write_text(str(os.getpid()))
        time.sleep(600)
    return n
'''

LONG_NAME, ESCAPE_NAME = "t.long_" + "x" * 250, "t.escape\x1b[31m_red"  # Celery takes both; failured refuses both
FAILURED_TOML = '''
[task_types."t.flaky".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types."t.flaky".retry]
delays = [0.1]
max_attempts = 5

[task_types."t.outlives_its_limit".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 60
[task_types."t.outlives_its_limit".retry]
delays = [0.1]
max_attempts = 1

[task_types."t.answers_late".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 2
[task_types."t.answers_late".retry]
delays = [0.1]
max_attempts = 1

[task_types."t.ignored_on_retry".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types."t.ignored_on_retry".retry]
delays = [0.1]
max_attempts = 3

[task_types."t.rejected_on_retry".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types."t.rejected_on_retry".retry]
delays = [0.1]
max_attempts = 3

[task_types."t.revoked_on_retry".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types."t.revoked_on_retry".retry]
delays = [0.1]
max_attempts = 3

[task_types."t.typed".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types."t.typed".retry]
delays = [0.1]
max_attempts = 3

[task_types."t.unsendable".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types."t.unsendable".retry]
delays = [0.1]
max_attempts = 3

[task_types.{escape_type}.handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 20
[task_types.{escape_type}.retry]
delays = [0.1]
max_attempts = 3

[task_types."t.hang_once".handler]
kind = "celery"
broker = "${CELERY_BROKER_URL}"
timeout = 3
[task_types."t.hang_once".retry]
delays = [0.1]
max_attempts = 5
'''


def task_type_for(name):
    from failured.integrations.celery import task_type_for  # Celery's app machinery: loaded by the tests that run

    return task_type_for(name)


def broker_answers(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    if not condition():
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Worker:
    """A real ``celery worker`` (solo pool by default: kill -9 takes the task with it)."""

    def __init__(self, workdir, env, queue, pool="solo"):
        self.workdir, self.env, self.queue, self.pool = workdir, env, queue, pool
        self.proc = None
        self.logs = []

    def start(self):
        self.launch()
        self.wait_ready()

    def launch(self):
        logfile = self.workdir / f"worker-{self.pool}-{len(self.logs)}.log"
        self.logs.append(logfile)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tapp", "worker", f"--pool={self.pool}", "--loglevel=INFO",
             "-Q", self.queue, "-n", f"{self.queue}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--logfile", str(logfile)],
            cwd=self.workdir, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "worker.err", "ab"))

    def wait_ready(self):
        logfile = self.logs[-1]
        wait_until(lambda: logfile.exists() and " ready." in logfile.read_text(errors="replace"), 60,
                   f"the celery worker to be ready ({logfile})")

    def log_text(self):
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Setup:
    """One broker's daemon, worker and sending app."""

    def __init__(self, root, broker_url):
        self.root = root
        self.queue = f"failured-test-{uuid.uuid4().hex[:8]}"
        self.state = root / "state"
        self.spool = root / "spool"
        self.state.mkdir()
        (root / "tapp.py").write_text(WORKER_APP)
        config = root / "config"
        shutil.copytree(REPO / "config" / "patterns", config / "patterns")
        (config / "failured.toml").write_text(textwrap.dedent(FAILURED_TOML).replace(
            "{escape_type}", toml_key(task_type_for(ESCAPE_NAME))))
        port = free_port()
        self.daemon = DaemonProcess(root, {
            "FAILURE_DB": str(root / "data" / "failured.db"), "FAILURE_CONFIG_DIR": str(config),
            "FAILURE_LOG_DIR": str(root / "logs"), "FAILURE_REPORT_DIR": str(root / "reports"),
            "FAILURE_POLL_SECONDS": "0.05", "FAILURE_LOG_LEVEL": "INFO", "FAILURE_LANG": "en",
            "FAILURE_HTTP_ADDR": f"127.0.0.1:{port}", "FAILURE_API_TOKEN": TOKEN, "CELERY_BROKER_URL": broker_url,
        })
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
        env.update(CELERY_BROKER_URL=broker_url, FAILURE_API_URL=f"http://127.0.0.1:{port}",
                   FAILURE_API_TOKEN=TOKEN, FAILURE_SPOOL_DIR=str(self.spool), T_STATE_DIR=str(self.state),
                   T_QUEUE=self.queue, PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
        self.env = env
        self.worker = Worker(root, env, self.queue)
        self.app = celery.Celery("sender", broker=broker_url, set_as_current=False)

    def send(self, name, *args, queue=None):
        return self.app.send_task(name, args=list(args), queue=queue or self.queue).id

    def spooled_refs(self):
        refs = []
        for path in Spool(self.spool).pending():
            try:
                refs.append(Spool.read(path).get("ref"))
            except FileNotFoundError:  # sent just now
                pass
        return refs

    def spooled(self):
        return len(Spool(self.spool).pending())

    def runs(self, key):
        path = self.state / f"{key}.runs"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def tasks(self, task_type):
        return self.daemon.query("SELECT id, status, ref, attempts FROM tasks WHERE task_type = ? ORDER BY id",
                                 task_type)

    def task_by_ref(self, ref, statuses, timeout=60):
        rows = self.daemon.wait_for("SELECT id, status, attempts FROM tasks WHERE ref = ?",
                                    lambda rows: rows and rows[0][1] in statuses, timeout, ref)
        return rows[0]

    def close(self):
        # Killed, not stopped: nothing is checked after this, and on RabbitMQ a warm (or cold) shutdown
        # waits up to 10 s for the worker's event loop to wake from its poll.
        if self.worker.proc and self.worker.proc.poll() is None:
            self.worker.kill()
        self.daemon.close()
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:
            pass


def start_setup(tmp_path_factory, broker):
    host, port, url = BROKERS[broker]
    if not broker_answers(host, port):
        pytest.skip(f"{broker} does not answer on {host}:{port}: start it to run the Celery tests")
    s = Setup(tmp_path_factory.mktemp(f"celery-{broker}"), url)
    s.worker.launch()  # both start at once: imports are most of their start-up time
    s.daemon.start(ready_timeout=60)
    s.worker.wait_ready()
    return s


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    """Start a broker's daemon and worker on first use; all are stopped at the module's end."""
    started = {}

    def get(broker):
        if broker not in started:
            started[broker] = start_setup(tmp_path_factory, broker)
        return started[broker]

    yield get
    for s in started.values():
        s.close()


@pytest.fixture(params=sorted(BROKERS))
def any_broker(request, setups, tmp_path_factory):
    if request.param == "redis":
        yield setups("redis")
        return
    # Only this test runs on another broker: its daemon and worker stop with it rather than
    # idling (~0.025 CPU-s a second for the daemon) until the module's end.
    s = start_setup(tmp_path_factory, request.param)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def setup(setups):
    # Broker-independent behaviour is proven once, on Redis, to keep the suite fast.
    return setups("redis")


def test_network_error_twice_then_success_is_retried_through_the_broker_and_recovered(any_broker):
    setup = any_broker
    key = uuid.uuid4().hex
    ref = setup.send("t.flaky", key, 2)
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered",))
    assert attempts == 2
    assert setup.runs(key) == 3
    assert setup.worker.log_text().count(f"RUN {key} ") == 3
    errors = setup.daemon.query("SELECT error_message FROM task_events WHERE task_id = ? AND event = 'retry_failed'",
                                task_id)
    assert len(errors) == 1 and "Connection refused (run 2)" in errors[0][0]  # the re-run's own error
    row = setup.daemon.query("SELECT category, payload, error_type FROM tasks WHERE id = ?", task_id)[0]
    assert row[0] == "recoverable_network"
    assert json.loads(row[1]) == {"args": [key, 2], "kwargs": {}, "celery_task_id": ref, "queue": setup.queue}
    assert row[2] == "ConnectionRefusedError"


def test_manual_recovery_task_retries_a_finished_task_through_the_worker(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.flaky", key, 1)
    task_id, _, attempts = setup.task_by_ref(ref, ("recovered",))
    setup.app.send_task("failured.manual_recovery_task", kwargs={"task_id": task_id, "force_retry": True},
                        queue=setup.queue)
    setup.daemon.wait_for("SELECT status, attempts FROM tasks WHERE id = ?",
                          lambda rows: rows[0] == ("recovered", attempts + 1), 60, task_id)
    assert setup.runs(key) == 3
    events = [r[0] for r in setup.daemon.query("SELECT event FROM task_events WHERE task_id = ?", task_id)]
    assert "recover_requested" in events


def test_data_error_is_reported_once_not_retried_and_admins_are_told(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.bad_data", key)
    task_id, status, attempts = setup.task_by_ref(ref, ("notified",))
    assert attempts == 0 and setup.runs(key) == 1
    assert len(setup.daemon.query("SELECT id FROM tasks WHERE ref = ?", ref)) == 1
    alerts = Path(setup.daemon.env["FAILURE_LOG_DIR"]) / "admin_alerts.log"
    wait_until(lambda: alerts.exists() and any(json.loads(line).get("task_id") == task_id
                                               for line in alerts.read_text().splitlines()), 30,
               "the admin alert")
    error = setup.daemon.query("SELECT error_message FROM tasks WHERE id = ?", task_id)[0][0]
    assert error.startswith("Traceback (most recent call last)") and error.rstrip().endswith(
        "ValueError: invalid literal for int() with base 10: 'abc'")


def test_an_error_and_arguments_holding_lone_surrogates_are_recorded_not_lost(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.surrogate", key, "name: " + b"\xe9".decode("utf-8", "surrogateescape"))
    task_id, _, _ = setup.task_by_ref(ref, ("notified", "manual", "scheduled", "exhausted"))
    error, payload = setup.daemon.query("SELECT error_message, payload FROM tasks WHERE id = ?", task_id)[0]
    assert error.endswith("ValueError: bad bytes: \ufffd\ufffd")
    assert json.loads(payload)["args"] == [key, {"__failured_repr__": "'name: \\udce9'"}]  # not text: kept as repr
    assert not list(setup.root.glob("spool/*.rejected"))


def test_a_chained_exception_is_stored_with_its_cause_and_classified_by_it(setup):
    ref = setup.send("t.chained", uuid.uuid4().hex)
    rows = setup.daemon.wait_for("SELECT error_message, error_type, category FROM tasks WHERE ref = ?",
                                 lambda rows: rows and rows[0][2] is not None, 60, ref)
    error, error_type, category = rows[0]
    assert error.startswith("ConnectionResetError: [Errno 104] Connection reset by peer\n\n"
                            "The above exception was the direct cause of the following exception:\n\n"
                            "Traceback (most recent call last):")
    assert error.endswith("RuntimeError: sync step failed") and "^^^" not in error
    assert (error_type, category) == ("RuntimeError", "recoverable_network")


def test_a_task_that_rejects_its_message_is_not_a_failure(setup):
    rejected = setup.send("t.rejects", uuid.uuid4().hex)
    after = setup.send("t.bad_data", uuid.uuid4().hex)  # the same worker runs it next: its report comes after
    setup.task_by_ref(after, ("notified",))
    assert setup.daemon.query("SELECT id FROM tasks WHERE ref = ?", rejected) == []


def _retry_events(setup, task_id):
    return setup.daemon.query("SELECT event, error_message FROM task_events WHERE task_id = ? "
                              "AND event IN ('recovered', 'retry_failed') ORDER BY id", task_id)


def test_a_retry_that_ends_in_ignore_is_done_at_once(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.ignored_on_retry", key)
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert (status, attempts, setup.runs(key)) == ("recovered", 1, 2)
    assert [event for event, _ in _retry_events(setup, task_id)] == ["recovered"]  # not waited out
    assert "ended in Ignore: already synced: done" in setup.worker.log_text()


def test_a_retry_that_rejects_its_message_is_a_data_error_at_once(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.rejected_on_retry", key)
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert (status, attempts, setup.runs(key)) == ("notified", 1, 2)
    [(_, error)] = _retry_events(setup, task_id)
    assert error.startswith("[DATA] Celery task t.rejected_on_retry rejected its message (Reject, requeue=False): "
                            "poison message")
    assert setup.daemon.query("SELECT category, error_type FROM tasks WHERE id = ?", task_id) == [
        ("unrecoverable_data", "celery.exceptions.Reject")]


def test_a_retry_revoked_in_celery_is_answered_as_revoked_and_a_person_is_told(setup, prefork):
    key = uuid.uuid4().hex
    ref = setup.send("t.revoked_on_retry", key, queue=prefork)
    running = setup.state / (key + ".running")
    wait_until(running.exists, 60, "the failured-driven run to start")
    setup.app.control.revoke(running.read_text(), terminate=True)
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert (status, attempts) == ("notified", 1)
    [(_, error)] = _retry_events(setup, task_id)
    assert error == "Celery task t.revoked_on_retry was revoked in Celery (terminated by signal 15): stopped on purpose"
    assert setup.daemon.query("SELECT category, error_type FROM tasks WHERE id = ?", task_id) == [
        ("unknown", "celery.exceptions.TaskRevokedError")]


def test_arguments_kombus_json_carries_are_sent_again_as_the_same_values(setup):
    values = (datetime.datetime(2024, 3, 18, 14, 2, 11, 532000, tzinfo=datetime.timezone.utc),
              datetime.date(2024, 3, 18), datetime.time(14, 2), decimal.Decimal("19.90"),
              uuid.UUID("12345678-1234-5678-1234-567812345678"), b"raw", b"\xff\x00")
    key = uuid.uuid4().hex
    ref = setup.send("t.typed", key, *values)
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert (status, attempts) == ("recovered", 1)
    assert (setup.state / (key + ".values")).read_text() == repr(values)  # what the retry's worker was given
    args = json.loads(setup.daemon.query("SELECT payload FROM tasks WHERE id = ?", task_id)[0][0])["args"]
    assert args[1:3] == [{"__type__": "datetime", "__value__": "2024-03-18T14:02:11.532000+00:00"},
                         {"__type__": "date", "__value__": "2024-03-18"}]


def test_a_payload_that_cannot_be_sent_again_is_told_at_once_and_never_counts_against_the_breaker(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.unsendable", key, float("nan"))  # kombu carries NaN; JSON cannot hold it: kept as its repr
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert (status, attempts, setup.runs(key)) == ("notified", 0, 1)  # no retry was made
    error, category = setup.daemon.query("SELECT error_message, category FROM tasks WHERE id = ?", task_id)[0]
    assert error.startswith("[DATA] payload args[1] was kept only as its repr") and category == "unrecoverable_data"
    assert setup.daemon.query("SELECT consecutive_failures FROM breakers WHERE task_type = 't.unsendable' "
                              "AND consecutive_failures > 0") == []
    reported = setup.daemon.query("SELECT error_message FROM task_events WHERE task_id = ? AND event = 'reported'",
                                  task_id)
    assert reported[0][0].endswith("ConnectionRefusedError: [Errno 111] Connection refused")


def test_task_names_failured_would_refuse_are_recorded_under_a_type_of_their_own_and_retried_by_name(setup):
    ref = setup.send(LONG_NAME, uuid.uuid4().hex)
    task_id, _, _ = setup.task_by_ref(ref, ("manual", "notified"))  # recorded; no handler for it here
    task_type, payload = setup.daemon.query("SELECT task_type, payload FROM tasks WHERE id = ?", task_id)[0]
    assert len(task_type) == 200 and task_type.startswith("t.long_xxx") and task_type == task_type_for(LONG_NAME)
    assert json.loads(payload)["celery_task"] == LONG_NAME
    key = uuid.uuid4().hex
    ref = setup.send(ESCAPE_NAME, key)
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert (status, attempts, setup.runs(key)) == ("recovered", 1, 2)  # the retry sent the task by its own name
    assert setup.daemon.query("SELECT task_type FROM tasks WHERE id = ?", task_id)[0][0].startswith(
        "t.escape\\x1b[31m_red#")


def test_celery_autoretry_reaches_failured_only_when_used_up(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.autoretry", key)
    setup.daemon.wait_for("SELECT id FROM tasks WHERE ref = ?", bool, 60, ref)
    # Reported after Celery's own three runs, and once.
    assert setup.runs(key) == 3
    assert len(setup.daemon.query("SELECT id FROM tasks WHERE ref = ?", ref)) == 1


def test_reports_made_while_failured_is_down_are_spooled_and_delivered_once_after_restart(setup):
    setup.daemon.stop()
    keys = [uuid.uuid4().hex for _ in range(100)]
    refs = {setup.send("t.bulk", key) for key in keys}
    # A report is spooled after its run fails: one directory listing per look, not 100 files read.
    wait_until(lambda: setup.spooled() >= 100, 120, "100 spooled reports")
    assert all(setup.runs(k) == 1 for k in keys)  # each ran once
    setup.daemon.start(ready_timeout=60)
    wait_until(lambda: setup.spooled() == 0, 60, "the spool to drain")
    rows = setup.daemon.query("SELECT ref FROM tasks WHERE task_type = 't.bulk'")
    assert sorted(r[0] for r in rows) == sorted(refs)  # none lost, none doubled


def test_worker_killed_during_a_failured_retry_times_out_and_the_task_still_ends_final(setup):
    key = uuid.uuid4().hex
    ref = setup.send("t.hang_once", key)
    hanging = setup.state / f"{key}.hanging"
    wait_until(hanging.exists, 60, "the failured-driven run to start")
    setup.worker.kill()
    setup.worker.start()
    task_id, status, attempts = setup.task_by_ref(ref, ("recovered", "exhausted", "notified"))
    assert status == "recovered" and attempts >= 2
    errors = [r[0] for r in setup.daemon.query(
        "SELECT error_message FROM task_events WHERE task_id = ? AND event = 'retry_failed'", task_id)]
    assert any("no answer from Celery task t.hang_once" in e and "within 3s" in e for e in errors)


def test_a_worker_killed_right_after_a_report_loses_nothing_the_next_worker_delivers_it_once(setup):
    setup.daemon.stop()  # so the report is still in the spool when its worker dies
    key = uuid.uuid4().hex
    ref = setup.send("t.bulk", key)
    wait_until(lambda: ref in setup.spooled_refs(), 60, "the report handed to the spool")
    setup.worker.kill()
    setup.worker.start()  # runs no task: its sender starts with the worker and finds the report
    setup.daemon.start(ready_timeout=60)
    setup.daemon.wait_for("SELECT id FROM tasks WHERE ref = ?", bool, 60, ref)
    wait_until(lambda: ref not in setup.spooled_refs(), 60, "the spool to drain")
    assert len(setup.daemon.query("SELECT id FROM tasks WHERE ref = ?", ref)) == 1


def test_a_prefork_pool_reports_every_failure_once_from_its_child_processes(setup):
    queue = f"{setup.queue}-prefork"
    worker = Worker(setup.root, {**setup.env, "T_QUEUE": queue}, queue, pool="prefork")
    worker.launch()
    try:
        worker.wait_ready()
        refs = {setup.send("t.bulk", uuid.uuid4().hex, queue=queue) for _ in range(20)}
        wait_until(lambda: len(setup.daemon.query(
            "SELECT id FROM tasks WHERE task_type = 't.bulk' AND ref IN (%s)" % ",".join("?" * len(refs)),
            *refs)) >= 20, 120, "20 reports from the prefork children")
    finally:
        worker.stop()
    rows = setup.daemon.query("SELECT ref FROM tasks WHERE ref IN (%s)" % ",".join("?" * len(refs)), *refs)
    assert sorted(r[0] for r in rows) == sorted(refs)


@pytest.fixture
def prefork(setup):
    """A prefork worker on a queue of its own (its children run the tasks; its main process fails those that die)."""
    queue = f"{setup.queue}-prefork-{uuid.uuid4().hex[:4]}"
    worker = Worker(setup.root, {**setup.env, "T_QUEUE": queue}, queue, pool="prefork")
    worker.launch()
    try:
        worker.wait_ready()
        yield queue
    finally:
        worker.stop()


def test_a_task_whose_prefork_child_is_killed_is_recorded_once_with_its_queue(setup, prefork):
    key = uuid.uuid4().hex
    ref = setup.send("t.dies", key, queue=prefork)
    rows = setup.daemon.wait_for("SELECT error_type, error_message, payload, category FROM tasks WHERE ref = ?",
                                 lambda rows: rows and rows[0][3] is not None, 60, ref)
    error_type, error, payload, category = rows[0]
    assert error_type == "billiard.exceptions.WorkerLostError" and "signal 9 (SIGKILL)" in error
    assert json.loads(payload)["queue"] == prefork  # a retry goes where the task ran
    assert category == "recoverable_system"
    assert len(setup.daemon.query("SELECT id FROM tasks WHERE ref = ?", ref)) == 1


def test_a_failured_retry_killed_by_its_hard_time_limit_answers_its_attempt_and_is_no_new_task(setup, prefork):
    key = uuid.uuid4().hex
    ref = setup.send("t.outlives_its_limit", key, queue=prefork)
    task_id, status, attempts = setup.task_by_ref(ref, ("exhausted", "notified", "recovered"), timeout=90)
    errors = [r[0] for r in setup.daemon.query(
        "SELECT error_message FROM task_events WHERE task_id = ? AND event = 'retry_failed'", task_id)]
    assert len(errors) == 1 and "TimeLimitExceeded" in errors[0], errors  # the answer, not the 60 s timeout
    assert "no answer from Celery task" not in errors[0]
    assert json.loads(setup.daemon.query("SELECT payload FROM tasks WHERE id = ?", task_id)[0][0])["queue"] == prefork
    assert setup.tasks("t.outlives_its_limit") == [(task_id, status, ref, attempts)]  # no second task


def test_an_answer_that_comes_after_the_wait_does_not_stay_in_redis_for_ever(setup):
    import redis

    client = redis.Redis.from_url(BROKERS["redis"][2])
    before = set(client.keys("failured.reply.*"))  # other runs' (task ids repeat from one database to the next)
    key = uuid.uuid4().hex
    ref = setup.send("t.answers_late", key)
    task_id, _, _ = setup.task_by_ref(ref, ("exhausted", "notified", "manual"), timeout=90)  # the wait timed out
    (setup.state / (key + ".go")).write_text("")
    wait_until(lambda: set(client.keys(f"failured.reply.{task_id}.*")) - before, 60, "the late answer")
    [reply] = set(client.keys(f"failured.reply.{task_id}.*")) - before
    wait_until(lambda: client.ttl(reply) > 0, 60, "the reply's expiry (set just after the answer)")
    assert client.ttl(reply) <= 3600
