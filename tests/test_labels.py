"""Operators' labels: the task's course follows the label, the label is kept and exported, the model learns it."""

import sys

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.config import load_config
from failured.engine import Engine
from failured.errors import InputError, RefusedError
from failured.intake import record_failure
from failured.settings import Settings
from failured.store import SCHEMA_VERSION, Label, Notification, Task, open_store

HANDLER = """
[model]
enabled = false  # these tests are about labels changing a course, not about what the model guesses

[task_types.sync.handler]
kind = "command"
argv = ["true"]
timeout = 10
"""


@pytest.fixture
def engine(store, clock, tmp_path):
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER))
    return Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")


def test_a_wrongly_retried_data_error_stops_and_the_admins_hear_of_it(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout while saving", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(task_id).status == "scheduled"
    task = engine.relabel(task_id, "unrecoverable_data", note="the payload was truncated")
    assert (task.status, task.category, task.matched_by, task.next_retry_at) == (
        "notified", "unrecoverable_data", "label", None)
    assert Notification.select().where(Notification.task == task_id, Notification.audience == "admin").exists()
    [label] = Label.select()
    assert (label.category, label.decided, label.note) == ("unrecoverable_data", "recoverable_network",
                                                           "the payload was truncated")


def test_a_wrongly_notified_network_error_is_scheduled(engine, store, clock):
    task_id = record_failure(store, "sync", "the upstream went away", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(task_id).status == "notified"  # unknown: the admins were told
    task = engine.relabel(task_id, "recoverable_network")
    assert (task.status, task.finished_at) == ("scheduled", None)
    assert task.next_retry_at == pytest.approx(clock.now() + 0.05)


def test_a_recovered_task_keeps_its_state_and_the_label_is_still_kept(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    from failured.handlers import Outcome
    engine.finish(engine.claim(task_id), Outcome(ok=True))
    assert engine.relabel(task_id, "unrecoverable_data").status == "recovered"
    assert store.labelled_examples() == [("unrecoverable_data", None, "connection timeout")]


def test_unknown_category_and_running_task_are_refused(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    with pytest.raises(InputError, match="no category 'nope'"):
        engine.relabel(task_id, "nope")
    clock.advance(1)
    engine.claim(task_id)
    with pytest.raises(RefusedError, match="running"):
        engine.relabel(task_id, "unrecoverable_data")
    assert Label.select().count() == 0


@pytest.mark.sqlite_only("version 1 databases are SQLite's (PRAGMA user_version): PostgreSQL came later")
def test_a_version_1_database_gains_the_labels_table(tmp_path):
    path = tmp_path / "old.db"
    store = open_store(path)
    store.db.execute_sql("DROP TABLE labels")
    store.db.execute_sql('DROP INDEX "tasks_finished_at_category_status_attempts_created_at"')
    store.db.execute_sql("PRAGMA user_version = 1")
    store.close()
    store = open_store(path)
    assert store.schema_version() == SCHEMA_VERSION >= 2  # migrated all the way up (3 since the store's own step)
    assert store.label_count() == 0
    store.close()


@pytest.mark.sqlite_suffices("its cost is the model's retraining; labels on PostgreSQL: the tests above and the API's")
def test_label_changes_a_tasks_course_end_to_end_and_is_exported(daemon_factory):
    main = HANDLER.replace('argv = ["true"]', f'argv = ["{sys.executable}", "-c", "pass"]')
    daemon = daemon_factory(main).start()
    try:
        assert daemon.cli("report", "--type", "sync", "--error", "upstream went away mid-request").returncode == 0
        daemon.wait_for("SELECT status FROM tasks", lambda r: r and r[0][0] == "notified")
        result = daemon.cli("label", "1", "recoverable_network", "--note", "a flaky proxy")
        assert result.returncode == 0, result.stderr
        assert "labelled recoverable_network" in result.stdout
        daemon.wait_for("SELECT status FROM tasks", lambda r: r[0][0] == "recovered")
        events = [e for (e,) in daemon.query("SELECT event FROM task_events WHERE task_id = 1 ORDER BY id")]
        assert events.index("labelled") < events.index("retry_started") and events[-1] == "recovered"
        from conftest import wait_for
        assert wait_for(lambda: "reloaded (the model learns the operators' labels)" in daemon.stderr(), timeout=60)
        # classify answers as the daemon does now: with the model that learned the label
        assert daemon.cli("report", "--type", "sync", "--error", "upstream went away mid-request").returncode == 0
        daemon.wait_for("SELECT matched_by FROM tasks WHERE id = 2", lambda r: r and r[0][0])
        [decided] = daemon.query("SELECT category, matched_by, matched_pattern FROM tasks WHERE id = 2")
        import json
        explained = json.loads(daemon.cli("classify", "--json", "upstream went away mid-request").stdout)
        assert (explained["category"], explained["matched_by"], explained["pattern"]) == decided
        exported = daemon.cli("labels", "export")
        assert exported.returncode == 0
        lines = exported.stdout.splitlines()
        assert lines[0] == "category\terror_type\tsource\tmessage"
        assert lines[1] == "recoverable_network\t\toperator-label:task-1\tupstream went away mid-request"
        assert daemon.cli("label", "1", "nope").returncode == 2
    finally:
        daemon.stop()
    assert daemon.query("SELECT count(*) FROM labels") == [(1,)]


def test_the_api_labels_a_task(daemon_factory):
    import http.client
    import json
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = daemon_factory(HANDLER, FAILURE_HTTP_ADDR=f"127.0.0.1:{port}").start()
    try:
        daemon.cli("report", "--type", "sync", "--error", "connection timeout")
        # its retry (due 50 ms after the decision, `true`) ends recovered; a task whose retry runs refuses a label
        daemon.wait_for("SELECT status FROM tasks", lambda r: r and r[0][0] == "recovered")

        def post(body):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/tasks/1/label", json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())

        status, data = post({"category": "unrecoverable_data", "note": "bad payload"})
        assert status == 200 and data["task_id"] == 1, data
        assert daemon.query("SELECT category, note FROM labels") == [("unrecoverable_data", "bad payload")]
        status, data = post({"category": "nope"})
        assert status == 409 and data["error"] == "unknown_category" and "no category 'nope'" in data["detail"]
    finally:
        daemon.stop()


def test_the_analysis_report_shows_where_labels_differ_by_category_pair(engine, store, clock, tmp_path):
    from failured.analysis import analysis_report
    from failured.report_html import render_html

    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER))
    for error in ("connection timeout a", "connection timeout b", "validation failed"):
        record_failure(store, "sync", error, clock=clock)
    engine.handle_new()
    engine.relabel(1, "unrecoverable_data")
    engine.relabel(2, "unrecoverable_data")
    engine.relabel(3, "unrecoverable_data")  # agrees with failured: not a disagreement
    report = analysis_report(store, snapshot, clock.now() + 1, 7, "en")
    assert report["label_disagreements"] == [
        {"decided": "recoverable_network", "labelled": "unrecoverable_data", "count": 2}]
    assert 'data-figure="labels:recoverable_network&gt;unrecoverable_data">2<' in render_html(report, "en")


def test_classify_answers_with_the_labels_the_daemon_learns(engine, store, clock, db_location, tmp_path, monkeypatch):
    """``failured classify`` explains the daemon's answer: its model learns the operators' labels, so classify's
    must too (without them a labelled wording got another answer than the daemon gives)."""
    from failured import cli

    task_id = record_failure(store, "sync", "gizmo melted down", clock=clock)
    engine.handle_new()
    engine.relabel(task_id, "unrecoverable_business")
    learned = []

    def load_config_noting_labels(*args, labels=(), **kwargs):
        learned.extend(labels)
        raise SystemExit(0)  # what it classifies after is not this test's

    monkeypatch.setattr(cli, "load_config", load_config_noting_labels)
    with pytest.raises(SystemExit):
        cli.cmd_classify(type("Args", (), {"config": str(tmp_path / "cfg"), "message": "gizmo melted down"})(),
                         Settings(db=db_location))
    assert learned == [("unrecoverable_business", None, "gizmo melted down")]
    learned.clear()
    with pytest.raises(SystemExit):  # no database (a laptop, a shell without FAILURE_DB): no labels, no error
        cli.cmd_classify(type("Args", (), {"config": str(tmp_path / "cfg"), "message": "x"})(),
                         Settings(db=str(tmp_path / "none" / "failured.db")))
    assert learned == []


@pytest.mark.parametrize("message", ["FileNotFoundError: C:\\new\\notes.txt", "trailing backslash \\",
                                     "line one\\\nline two", "literal \\\\n and a real\nnewline",
                                     "GuzzleHttp\\Exception\\ConnectException: refused"])
def test_an_exported_label_reads_back_as_the_message_it_was_given_for(message):
    from failured.corpus import COLUMNS, format_row, parse

    line = format_row("unrecoverable_config", "App\\notify\\Error", "operator-label", message)
    [(category, error_type, source, read)] = parse(["\t".join(COLUMNS), line])
    assert (category, error_type, source, read) == ("unrecoverable_config", "App\\notify\\Error", "operator-label",
                                                    message)
    assert "\n" not in line
