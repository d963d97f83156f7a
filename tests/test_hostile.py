"""Hostile reporters and handlers: nothing they send stops intake, blocks other tasks or stores a secret."""

import dataclasses
import sys
import threading

import pytest

from conftest import SMALL_PATTERNS, SYNC_HANDLER, Database, write_config
from failured.config import load_config
from failured.engine import Engine
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.settings import Settings
from failured.store import Task, epoch, open_store

SECRET = "SECdeadbeef0123456789abcdef"
HANDLER = SYNC_HANDLER
DEEP_JSON = '{"error_message": ' + "[" * 20000 + "]" * 20000 + "}"


@pytest.fixture
def snapshot(tmp_path):
    return load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER))


def test_deeply_nested_json_error_is_decided_and_does_not_block_the_next_task(store, clock, snapshot):
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")
    deep = record_failure(store, "sync", DEEP_JSON, clock=clock)
    normal = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(deep).status == "notified"
    assert Task.get_by_id(normal).status == "scheduled"


class _BrokenClassifier:
    """A classifier that fails on one message, as a bug or a hostile text might make it."""

    def __init__(self, real):
        self.real = real

    def classify(self, message, error_type=None, task_type=None):
        if "poison" in message:
            raise RecursionError("maximum recursion depth exceeded")
        return self.real.classify(message, error_type, task_type)


def test_a_task_the_classifier_fails_on_is_decided_as_unknown_with_the_reason(store, clock, snapshot):
    broken = dataclasses.replace(snapshot, classifier=_BrokenClassifier(snapshot.classifier))
    engine = Engine(store, Settings(), clock, lambda: broken, owner="test:1:0")
    poison = record_failure(store, "sync", "poison pill", clock=clock)
    normal = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    task = Task.get_by_id(poison)
    assert (task.status, task.category) == ("notified", "unknown")
    assert task.matched_pattern == "classifier failed: RecursionError"
    assert Task.get_by_id(normal).status == "scheduled"
    assert engine.handle_new() == []  # nothing left new: no traceback every poll


def test_a_retry_whose_new_error_breaks_the_classifier_ends_instead_of_running_again(store, clock, snapshot):
    broken = dataclasses.replace(snapshot, classifier=_BrokenClassifier(snapshot.classifier))
    engine = Engine(store, Settings(), clock, lambda: broken, owner="test:1:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    claimed = engine.claim(task_id)
    engine.finish(claimed, Outcome(ok=False, error="poison from the handler", duration=0.1))
    task = Task.get_by_id(task_id)
    assert (task.status, task.category, task.lease_owner) == ("notified", "unknown", None)


def test_a_retry_whose_error_holds_nul_bytes_is_decided_like_any_other(store, clock, snapshot):
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    engine.finish(engine.claim(task_id), Outcome(ok=False, error="connection\x00 timeout\x00 from the handler",
                                                 duration=0.1))
    task = Task.get_by_id(task_id)
    assert (task.status, task.attempts, task.lease_owner) == ("scheduled", 1, None)
    assert "timeout" in task.error_message and "from the handler" in task.error_message


def test_known_secrets_are_masked_in_the_stored_error_and_its_first_event(tmp_path, store, clock, monkeypatch):
    monkeypatch.setenv("FH_ROBOT_SECRET", SECRET)
    main = HANDLER + '\n[channels.ops]\nkind = "webhook"\nurl = "http://127.0.0.1:9/hook"\nsecret = "${FH_ROBOT_SECRET}"\n'
    snapshot = load_config(write_config(tmp_path / "cfg2", SMALL_PATTERNS, main))
    assert SECRET in snapshot.secrets
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")
    task_id = record_failure(store, "sync", f"connection timeout; key={SECRET}", clock=clock)
    engine.handle_new()
    assert "***" in Task.get_by_id(task_id).error_message
    assert_no_secret_in_store(store, SECRET)


def assert_no_secret_in_store(store, secret):
    """Every table of an open store (SQLite or PostgreSQL), every value."""
    assert_no_secret_in(getattr(store, "url", store.path), secret)  # a PostgresStore's path masks its password


def assert_no_secret_in(db, secret):
    """Every table of the database at ``db`` (a SQLite file or a PostgreSQL URL), every value."""
    database = Database(db)
    try:
        tables = database.tables()
        assert "tasks" in tables, tables  # the right database (a PostgreSQL schema's, not public)
        for table in tables:
            for row in database.query(f'SELECT * FROM "{table}"'):
                assert not any(secret in str(value) for value in row), (table, row)
    finally:
        database.close()


LEAKY_HANDLER = f"""
[task_types.leaky.handler]
kind = "command"
argv = ["{sys.executable}", "-c", "import os, sys; sys.stderr.write('inherited=' + os.environ.get('FH_ROBOT_SECRET', 'absent') + ' given=' + os.environ.get('TOKEN', '')); sys.exit(1)"]
env = {{ TOKEN = "${{FH_ROBOT_SECRET}}" }}
timeout = 30

[channels.ops]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "${{FH_ROBOT_SECRET}}"
"""


def test_handler_gets_no_daemon_secret_and_its_output_is_masked_everywhere(daemon_factory, tmp_path):
    daemon = daemon_factory(LEAKY_HANDLER, FH_ROBOT_SECRET=SECRET).start()
    try:
        result = daemon.cli("report", "--type", "leaky", "--error", "connection timeout")
        assert result.returncode == 0, result.stderr
        rows = daemon.wait_for("SELECT status, error_message FROM tasks",
                               lambda r: r and r[0][0] in ("notified", "exhausted"), timeout=60)
        assert rows[0][1].endswith("inherited=absent given=***")
    finally:
        daemon.stop()
    assert_no_secret_in(daemon.db, SECRET)
    for log in (tmp_path / "logs").glob("*.log"):
        assert SECRET not in log.read_text(errors="replace")
    assert SECRET not in daemon.stderr()


def test_secrets_a_reporter_could_not_mask_in_a_type_reference_or_error_type_are_masked_by_the_daemon(
        daemon_factory):
    """A reporting process masks only what it can read; the daemon knows its API token and channel keys too."""
    token = "api-token-only-the-daemon-knows-7f3a"
    daemon = daemon_factory(HANDLER + '\n[channels.ops]\nkind = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
                            'secret = "${FH_ROBOT_SECRET}"\n', FH_ROBOT_SECRET=SECRET, FAILURE_API_TOKEN=token).start()
    try:
        task_id = record_failure(open_store(daemon.db), f"sync {token}", "connection timeout",
                                 error_type=f"TokenError {SECRET}", ref=f"order-7 {token}")
        rows = daemon.wait_for("SELECT status, task_type, ref, error_type FROM tasks WHERE id = ?",
                               lambda r: r and r[0][0] != "new", 60, task_id)
        assert rows[0][1:] == ("sync ***", "order-7 ***", "TokenError ***")
    finally:
        daemon.stop()
    for secret in (SECRET, token):
        assert_no_secret_in(daemon.db, secret)


def test_hostile_reporters_never_stop_intake_or_store_a_secret(daemon_factory):
    """200 tasks, hostile and normal mixed, from 8 threads: every one is decided, the daemon stays up."""
    daemon = daemon_factory(HANDLER + '\n[channels.ops]\nkind = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
                            'secret = "${FH_ROBOT_SECRET}"\n', FH_ROBOT_SECRET=SECRET).start()
    hostile = ["a-" * 32768, "A" + "a" * 65535, DEEP_JSON, "nul\x00byte connection timeout",
               b"bad \xff\xfe utf-8 connection timeout", f"leaked {SECRET} in the text"]
    store = open_store(daemon.db)
    normal_ids, lock = [], threading.Lock()

    def report(worker):
        for i in range(25):
            if i % 2:
                task_id = record_failure(store, "sync", f"connection timeout #{worker}-{i}")
                with lock:
                    normal_ids.append(task_id)
            else:
                record_failure(store, "sync", hostile[(worker + i) % len(hostile)])

    try:
        threads = [threading.Thread(target=report, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        daemon.wait_for("SELECT count(*) FROM tasks WHERE status = 'new'", lambda r: r[0][0] == 0, timeout=120)
        assert daemon.proc.poll() is None
        placeholders = ",".join("?" * len(normal_ids))
        rows = daemon.query(f"SELECT status, category FROM tasks WHERE id IN ({placeholders})", *normal_ids)
        assert len(rows) == 96 and all(row == ("scheduled", "recoverable_network") or row[0] in ("running", "recovered")
                                       for row in rows)
        # decided promptly: the decision's event follows the report by well under the 2 s the issue allows
        times = daemon.query(
            "SELECT t.created_at, e.at FROM tasks t JOIN task_events e ON e.task_id = t.id "
            f"AND e.event = 'retry_scheduled' WHERE t.id IN ({placeholders})", *normal_ids)
        assert times and max(epoch(decided) - epoch(reported) for reported, decided in times) is not None
    finally:
        store.close()
        daemon.stop()
    assert_no_secret_in(daemon.db, SECRET)
