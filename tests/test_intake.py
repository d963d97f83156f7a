import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from failured.errors import InputError
from failured.intake import (MAX_ERROR_BYTES, MAX_NAME_BYTES, MAX_PAYLOAD_BYTES, bound_error, record_failure,
                             record_success)
from failured.secrets import masked
from failured.store import SuccessCount, Task, TaskEvent, open_store


def test_report_writes_one_task_and_its_first_event(store, clock):
    task_id = record_failure(store, "tracking_update", "connection timeout", error_type="ConnectTimeout",
                             payload={"order_id": 7}, ref="order-7", clock=clock)
    task = Task.get_by_id(task_id)
    assert (task.task_type, task.status, task.error_type, task.ref) == ("tracking_update", "new", "ConnectTimeout", "order-7")
    assert json.loads(task.payload) == {"order_id": 7}
    events = list(TaskEvent.select().where(TaskEvent.task == task_id))
    assert [(e.event, e.status) for e in events] == [("reported", "new")]


def test_long_error_is_cut_with_a_visible_marker_keeping_head_and_tail(store):
    message = "HEAD " + "x" * 200_000 + " TAIL"
    task = Task.get_by_id(record_failure(store, "t", message))
    assert len(task.error_message.encode()) <= MAX_ERROR_BYTES
    assert task.error_message.startswith("HEAD ") and task.error_message.endswith(" TAIL")
    assert "bytes cut" in task.error_message


def test_a_huge_error_is_masked_only_where_the_cut_keeps_it_and_the_same_as_masked_whole(store):
    """Past a megabyte only the head and tail the cut keeps (and MASK_REACH around them) are masked: what is
    stored is what masking the whole text and cutting it gives, its marker counting every byte cut."""
    secret = "tok_SUPERSECRET_0123456789"
    message = (f"HEAD password=hunter2hunter2 {secret} " + "é" * 3_000_000
               + f" api_key=AKIA1234567890ABCDEF {secret} TAIL")
    expected = bound_error(masked(message, [secret]), MAX_ERROR_BYTES)
    stored = Task.get_by_id(record_failure(store, "t", message, secrets=[secret])).error_message
    assert stored == expected
    assert "hunter2" not in stored and "AKIA" not in stored and secret not in stored
    assert "bytes cut]" in stored  # the same count as the whole text's (the assertion above)


def test_a_long_error_type_or_reference_is_cut_and_secrets_in_them_masked(store):
    secret = "tok_SUPERSECRET_0123456789"
    task = Task.get_by_id(record_failure(store, "t", "boom", error_type="E" * 10_000_000 + f" {secret}",
                                         ref=f"order-7 {secret} " + "r" * 10_000_000, secrets=[secret]))
    for stored in (task.error_type, task.ref):
        assert len(stored.encode()) <= MAX_NAME_BYTES and "bytes cut" in stored and secret not in stored
    assert task.error_type.endswith(" ***") and task.ref.startswith("order-7 *** ")


def test_non_utf8_bytes_are_replaced_not_fatal(store):
    task = Task.get_by_id(record_failure(store, "t", b"bad \xff\xfe bytes"))
    assert task.error_message == "bad \ufffd\ufffd bytes"
    task = Task.get_by_id(record_failure(store, "t", "surrogate \udcff here"))
    assert "\ufffd" in task.error_message


def _nested(depth):
    value = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("payload, reason", [
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "not valid JSON"),
    (42, "must be a JSON object"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (_nested(100_000), "nested too deeply"),
    ({"order": "x" * MAX_PAYLOAD_BYTES}, "more than the 1,048,576 a task may carry"),
    # stored, these made every answer that shows the task invalid JSON (JSON.parse and jq refuse NaN)
    ('{"a": NaN}', "JSON has no NaN or Infinity"),
    ({"a": float("inf")}, "JSON has no NaN or Infinity"),
    ('{"a": 1e999}', "JSON has no NaN or Infinity"),
    ('{"a": "\\ud800"}', "lone surrogate"),
    ({(1, 2): "a tuple key"}, "keys must be str"),
])
def test_bad_payload_is_refused_and_nothing_is_written(store, payload, reason):
    with pytest.raises(InputError, match=reason):
        record_failure(store, "t", "boom", payload=payload)
    assert Task.select().count() == 0


@pytest.mark.parametrize("task_type", ["", "   ", None])
def test_empty_task_type_is_refused(store, task_type):
    with pytest.raises(InputError, match="task type is empty"):
        record_failure(store, task_type, "boom")
    assert Task.select().count() == 0


@pytest.mark.parametrize("task_type", ["poison\nline", "a\rb", "ansi\x1b[31mRED", "bell\x07", "del\x7f",
                                       "c1\x85next", "line\u2028sep", "bidi\u202eevil",
                                       "u\x00x"])  # NUL was stored as U+FFFD: a type no handler matched
def test_a_task_type_with_a_control_character_is_refused_and_nothing_is_written(store, task_type):
    with pytest.raises(InputError, match=r"task type has a control character \(U\+[0-9A-F]{4} at character \d+\)"):
        record_failure(store, task_type, "boom")
    with pytest.raises(InputError, match="control character"):
        record_success(store, task_type)
    assert Task.select().count() == 0


def test_surrounding_white_space_of_a_task_type_is_still_stripped(store):
    assert Task.get_by_id(record_failure(store, "\t order_sync\n", "boom")).task_type == "order_sync"


def test_a_secret_in_a_task_type_is_masked(store):
    secret = "tok_SUPERSECRET_0123456789"
    task = Task.get_by_id(record_failure(store, f"sync {secret}", "boom", secrets=[secret]))
    assert task.task_type == "sync ***"


def test_successes_are_tallied_per_type_and_hour(store, clock):
    record_success(store, "sync", clock=clock)
    record_success(store, "sync", 4, clock=clock)
    clock.advance(3600)
    record_success(store, "sync", clock=clock)
    counts = sorted(r.count for r in SuccessCount.select())
    assert counts == [1, 5]


# Plain interpreters, not multiprocessing's spawn: a spawned child imports pytest and this file again.
WRITER = """
import sys
from pathlib import Path
from failured.intake import record_failure
from failured.store import open_store

path, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(path)
for i in range(count):
    record_failure(store, f"type{worker}", f"error {worker}-{i}")
store.close()
"""
READER = """
import os, sqlite3, sys

con = sqlite3.connect(sys.argv[1], timeout=30)
while not os.path.exists(sys.argv[2]):
    con.execute("SELECT count(*) FROM tasks").fetchone()
con.close()
"""


def test_eight_writer_processes_and_a_reader_lose_nothing(tmp_path):
    path, stop = tmp_path / "c.db", tmp_path / "stop"
    open_store(path).close()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(stop)])
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "100"]) for w in range(8)]
    exits = [process.wait(120) for process in writers]
    stop.touch()
    assert reader.wait(10) == 0
    assert exits == [0] * 8
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM tasks").fetchone()[0] == 800
    assert con.execute("SELECT count(*) FROM task_events").fetchone()[0] == 800
    assert con.execute("SELECT count(DISTINCT error_message) FROM tasks").fetchone()[0] == 800


def test_report_failure_follows_failure_db_when_it_changes(tmp_path, monkeypatch):
    from failured.intake import report_failure

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("FAILURE_CONFIG_DIR", str(tmp_path / "config"))
    ids = {}
    for name in ("first.db", "second.db", "first.db"):
        monkeypatch.setenv("FAILURE_DB", str(tmp_path / name))
        ids.setdefault(name, []).append(report_failure("sync", f"connection timeout into {name}"))
    counts = {}
    for name in ("first.db", "second.db"):
        con = sqlite3.connect(tmp_path / name)
        counts[name] = [row[0] for row in con.execute("SELECT error_message FROM tasks ORDER BY id")]
        con.close()
    assert counts == {"first.db": ["connection timeout into first.db"] * 2,
                      "second.db": ["connection timeout into second.db"]}


def test_report_failure_reads_a_dotenv_written_after_its_first_call(tmp_path, monkeypatch):
    from failured.intake import report_failure

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAILURE_DB", raising=False)
    monkeypatch.setenv("FAILURE_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / ".env").write_text(f"FAILURE_DB={tmp_path / 'a.db'}\n")
    report_failure("sync", "connection timeout a")
    (tmp_path / ".env").write_text(f"FAILURE_DB={tmp_path / 'bb.db'}\n")  # another size: a new file state
    report_failure("sync", "connection timeout b")
    for name, text in (("a.db", "connection timeout a"), ("bb.db", "connection timeout b")):
        con = sqlite3.connect(tmp_path / name)
        assert [row[0] for row in con.execute("SELECT error_message FROM tasks")] == [text]
        con.close()


@pytest.mark.sqlite_suffices("a new SQLite file in the working directory")
def test_report_failure_says_once_when_it_creates_a_database(tmp_path):
    # An application started in another directory than the daemon's would otherwise fill a database no one reads.
    code = ("from failured import report_failure\n"
            "report_failure('sync', 'connection timeout a')\nreport_failure('sync', 'connection timeout b')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    first = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    created = tmp_path / "data" / "failured.db"
    assert created.exists()
    assert first.stderr.count(f"created a new database at {created}") == 1, first.stderr
    assert "check FAILURE_DB" in first.stderr
    again = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "created a new database" not in again.stderr, again.stderr


def test_an_exception_given_as_the_error_is_its_traceback_and_its_type(store):
    def fail():
        raise ConnectionResetError(104, "Connection reset by peer")

    try:
        fail()
    except OSError as exc:
        task_id = record_failure(store, "sync", exc)
    task = Task.get_by_id(task_id)
    assert task.error_type == "ConnectionResetError"
    assert task.error_message.startswith("Traceback (most recent call last):\n  File ")
    assert "in fail\n" in task.error_message and task.error_message.endswith("[Errno 104] Connection reset by peer")


@pytest.mark.parametrize("fields, reason", [({"error": None}, "error must be text or an exception, not NoneType"),
                                            ({"error": 5}, "error must be text or an exception, not int"),
                                            ({"error": "x", "error_type": 3}, "error_type must be text, not int"),
                                            ({"error": "x", "ref": 42}, "ref must be text, not int")])
def test_an_error_type_or_ref_that_is_not_text_is_a_clear_input_error(store, fields, reason):
    with pytest.raises(InputError, match=reason):
        record_failure(store, "t", **fields)
    assert Task.select().count() == 0


def test_payload_values_json_cannot_hold_are_kept_as_marked_reprs_not_as_plain_strings(store):
    task_id = record_failure(store, "t", "boom", payload={"ids": {7}, "ok": [1, "a"]})
    assert json.loads(Task.get_by_id(task_id).payload) == {"ids": {"__failured_repr__": "{7}"}, "ok": [1, "a"]}
