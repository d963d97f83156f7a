"""The Celery integration's parts without a broker: spool, reporter, targets, payloads, handler config."""

import json
import multiprocessing
import sqlite3
import sys
import time

import pytest

pytest.importorskip("celery", reason="Celery is not installed: pip install -e '.[test]'")

from failured.errors import ConfigError, RefusedError  # noqa: E402
from failured.handlers import HandlerSpec, TaskContext, parse_handler, run_handler  # noqa: E402
from failured.integrations import celery as integration  # noqa: E402
from failured.integrations import protocol  # noqa: E402
from failured.integrations.celery_handler import call_arguments  # noqa: E402
from failured.integrations.reporter import Reporter  # noqa: E402
from failured.integrations.spool import Spool  # noqa: E402
from failured.integrations.targets import DeliveryError, HttpTarget, StoreTarget  # noqa: E402
from failured.store import open_store  # noqa: E402
from conftest import wait_for  # noqa: E402


def failure(n):
    return {"kind": "failure", "task_type": "shop.sync", "error": f"boom {n}", "error_type": "ValueError",
            "payload": {"args": [n], "kwargs": {}, "celery_task_id": f"c-{n}", "queue": "celery"}, "ref": f"c-{n}"}


def refs(db):
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT ref FROM tasks ORDER BY id")]
    finally:
        con.close()


# -- spool ---------------------------------------------------------------------------------

def test_spool_drains_oldest_first_and_stops_at_the_first_failure(tmp_path):
    spool = Spool(tmp_path / "spool")
    for n in range(5):
        spool.put(failure(n))
    assert not list((tmp_path / "spool").glob(".*.tmp"))  # written by rename: no half files
    got = []

    def deliver(record):
        if len(got) == 3:
            raise DeliveryError("down")
        got.append(record["ref"])

    sent, error = spool.drain(deliver)
    assert (sent, got, str(error)) == (3, ["c-0", "c-1", "c-2"], "down")
    assert [json.loads(p.read_text())["ref"] for p in spool.pending()] == ["c-3", "c-4"]


def test_spool_sets_aside_a_record_that_is_not_json(tmp_path):
    spool = Spool(tmp_path)
    (tmp_path / "00000000000000000001-1-000001.json").write_text("{half")
    spool.put(failure(1))
    got = []
    assert spool.drain(lambda r: got.append(r["ref"])) == (1, None)
    assert got == ["c-1"] and len(list(tmp_path.glob("*.bad"))) == 1


def _drain_into(spool_dir, out_path):
    def deliver(record):
        with open(out_path, "a") as f:
            f.write(record["ref"] + "\n")

    Spool(spool_dir).drain(deliver)


def test_two_processes_draining_one_spool_send_each_record_once(tmp_path):
    spool = Spool(tmp_path / "spool")
    for n in range(100):
        spool.put(failure(n))
    out = tmp_path / "sent.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_drain_into, args=(tmp_path / "spool", out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = out.read_text().splitlines()
    assert sorted(lines) == sorted(f"c-{n}" for n in range(100)) and spool.is_empty()


# -- reporter and targets ----------------------------------------------------------------

def test_reports_spool_while_the_store_is_missing_and_arrive_once_in_order_later(tmp_path):
    db = tmp_path / "data" / "failured.db"
    spool = Spool(tmp_path / "spool")
    reporter = Reporter(StoreTarget(db, timeout=0.5), spool, flush_interval=0.2)
    assert [reporter.report_failure(failure(n)) for n in range(3)] == ["spooled"] * 3
    open_store(db).close()  # the daemon created the database: the background flush delivers
    assert wait_for(lambda: spool.is_empty(), 60)
    assert refs(db) == ["c-0", "c-1", "c-2"]
    reporter.report_failure(failure(3))  # sent at once, or behind the last of the spool: in order either way
    assert wait_for(lambda: refs(db) == ["c-0", "c-1", "c-2", "c-3"], 60)


def test_a_locked_store_holds_the_worker_no_longer_than_the_timeout_and_nothing_doubles(tmp_path):
    db = tmp_path / "failured.db"
    open_store(db).close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    reporter = Reporter(StoreTarget(db, timeout=0.3), Spool(tmp_path / "spool"), flush_interval=3600)
    started = time.monotonic()
    assert reporter.report_failure(failure(1)) == "spooled"
    assert time.monotonic() - started < 10  # bounded by the timeout, not SQLite's usual 30 s
    blocker.execute("ROLLBACK")
    reporter._retry_at = 0
    reporter.flush()
    assert refs(db) == ["c-1"]


def test_successes_are_counted_in_memory_and_sent_as_one_count(tmp_path):
    db = tmp_path / "failured.db"
    open_store(db).close()
    reporter = Reporter(StoreTarget(db), Spool(tmp_path / "spool"), flush_interval=3600)
    for _ in range(1000):
        reporter.count_success("shop.sync")
    reporter.flush()
    con = sqlite3.connect(db)
    assert con.execute("SELECT task_type, SUM(count) FROM success_counts GROUP BY task_type").fetchall() == \
        [("shop.sync", 1000)]


def test_successes_counted_while_failured_is_down_are_spooled_not_dropped(tmp_path):
    reporter = Reporter(HttpTarget("http://127.0.0.1:9", timeout=0.5), Spool(tmp_path / "s"), flush_interval=3600)
    reporter.count_success("shop.sync")
    reporter.count_success("shop.sync")
    reporter.flush()
    [path] = Spool(tmp_path / "s").pending()
    assert json.loads(path.read_text()) == {"kind": "success", "task_type": "shop.sync", "count": 2}


# -- what a failure report holds -----------------------------------------------------------

def test_payload_values_json_cannot_hold_are_kept_as_marked_reprs():
    value = {"order": 7, "price": 1.5, "when": object.__new__(type("Stamp", (), {"__repr__": lambda s: "Stamp()"})),
             "nan": float("nan"), "ids": (1, 2), "by_int": {1: "a"}}
    assert integration.json_safe(value) == {
        "order": 7, "price": 1.5, "when": {protocol.REPR_MARK: "Stamp()"}, "nan": {protocol.REPR_MARK: "nan"},
        "ids": [1, 2], "by_int": {protocol.REPR_MARK: "{1: 'a'}"}}


def _fails_deep(depth):
    if depth == 0:
        raise ConnectionRefusedError(111, "Connection refused")
    _fails_deep(depth - 1)


def test_error_text_is_the_last_frames_and_the_error_line_within_the_intake_limit():
    try:
        _fails_deep(30)
    except ConnectionRefusedError as exc:
        text = integration.error_text(exc, exc.__traceback__)
        error_type = integration.qualified_name(type(exc))
    assert text.startswith("Traceback (most recent call last):")
    assert 'File "' in text and "in test_error_text" not in text  # the last frames only
    assert text.endswith("ConnectionRefusedError: [Errno 111] Connection refused")
    assert error_type == "ConnectionRefusedError"
    huge = ValueError("x" * 200_000)
    assert len(integration.error_text(huge).encode()) <= integration.MAX_ERROR_BYTES


def test_include_and_exclude_take_names_and_globs_and_never_report_the_recovery_task():
    wanted = integration.TaskFilter(include=["shop.*"], exclude=["shop.tasks.noisy"])
    assert wanted("shop.tasks.sync") and not wanted("shop.tasks.noisy") and not wanted("other.task")
    assert not integration.TaskFilter()(integration.MANUAL_TASK)


# -- the celery handler kind ---------------------------------------------------------------

def test_a_celery_handler_is_parsed_with_its_options():
    spec = parse_handler({"kind": "celery", "broker": "${CELERY_BROKER_URL}", "task": "shop.sync",
                          "queue": "retries", "countdown": 1, "timeout": 30}, "failured.toml", "h")
    assert spec.kind == "celery" and spec.timeout == 30
    assert dict(spec.options) == {"broker": "${CELERY_BROKER_URL}", "task": "shop.sync", "queue": "retries",
                                  "countdown": 1.0}


@pytest.mark.parametrize("table, key", [
    ({"kind": "celery"}, "h.broker"),
    ({"kind": "celery", "broker": "redis://x", "countdown": 60, "timeout": 60}, "h.countdown"),
    ({"kind": "celery", "broker": "redis://x", "argv": ["x"]}, "h.argv"),
    ({"kind": "celery", "broker": "redis://x", "task": ""}, "h.task"),
])
def test_a_bad_celery_handler_is_refused_naming_the_key(table, key):
    with pytest.raises(ConfigError) as caught:
        parse_handler(table, "failured.toml", "h")
    assert caught.value.key == key


def test_stored_payloads_become_the_call_arguments():
    assert call_arguments({"args": [1, "a"], "kwargs": {"b": 2}, "celery_task_id": "x", "queue": "q"}) == \
        ([1, "a"], {"b": 2})
    assert call_arguments({"order_id": 42}) == ([], {"order_id": 42})  # reported some other way: kwargs
    with pytest.raises(ValueError, match=r"payload args\[1\] was not JSON"):
        call_arguments({"args": [1, {protocol.REPR_MARK: "<obj>"}], "kwargs": {}})


def _spec(broker, timeout=2.0):
    return HandlerSpec(kind="celery", timeout=timeout, options=(("broker", broker), ("countdown", 0.0)))


def _context():
    return TaskContext(id=1, task_type="shop.sync", ref="c-1", payload={"args": [1], "kwargs": {}}, attempt=1)


def test_a_celery_retry_with_an_unset_broker_variable_fails_saying_which(monkeypatch):
    monkeypatch.delenv("NO_SUCH_BROKER_VAR", raising=False)
    outcome = run_handler(_spec("${NO_SUCH_BROKER_VAR}"), _context())
    assert not outcome.ok and "NO_SUCH_BROKER_VAR" in outcome.error


def test_a_celery_retry_with_the_broker_down_fails_without_showing_the_password():
    outcome = run_handler(_spec("redis://:s3cr3t-pass@127.0.0.1:9/0"), _context())
    assert not outcome.ok and "s3cr3t-pass" not in outcome.error and "127.0.0.1:9" in outcome.error


def test_a_payload_that_cannot_be_sent_again_fails_as_a_data_error_without_sending():
    context = TaskContext(1, "shop.sync", None, {"args": [{protocol.REPR_MARK: "<obj>"}], "kwargs": {}}, 1)
    outcome = run_handler(_spec("redis://127.0.0.1:9/0"), context)
    assert not outcome.ok and outcome.error_type == "ValueError" and "not JSON" in outcome.error


# -- manual_recovery_task --------------------------------------------------------------------

def test_manual_recovery_task_does_what_recover_does(tmp_path, monkeypatch):
    from conftest import write_config
    from failured.intake import record_failure

    config = write_config(tmp_path / "config", main='[task_types.t.handler]\nkind = "command"\nargv = ["true"]\n')
    db = tmp_path / "failured.db"
    store = open_store(db)
    task_id = record_failure(store, "t", "boom")
    store.db.execute_sql("UPDATE tasks SET status = 'exhausted', attempts = 3, max_attempts = 3 WHERE id = ?",
                         (task_id,))
    store.close()
    monkeypatch.setenv("FAILURE_DB", str(db))
    monkeypatch.setenv("FAILURE_CONFIG_DIR", str(config))
    monkeypatch.setattr(integration, "_installed", None)
    with pytest.raises(RefusedError, match="used all 3 of its retries"):
        integration.manual_recovery_task(task_id)
    result = integration.manual_recovery_task(task_id=task_id, force_retry=True)
    assert result["status"] == "scheduled" and result["task_id"] == task_id


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
