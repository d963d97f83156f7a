"""The store on both databases: every test here runs on SQLite and on a real PostgreSQL.

PostgreSQL is FAILURE_TEST_POSTGRES_URL (default postgresql://root@127.0.0.1:5432/test); each
test gets a schema of its own, dropped after, so xdist workers never meet. Where no server
answers, the PostgreSQL half skips and says why.
"""

import os
import subprocess
import sys
import time
import contextlib
import uuid

import pytest

from conftest import set_schema_version
from failured.errors import InputError, StoreError
from failured import housekeeping
from failured.intake import record_failure, record_success
from failured.states import BreakerState, TaskStatus
from failured.store import aggregates, breakers, open_store, outbox, queries
from failured.store import tasks as rows
from failured.store.database import DAEMON_LOCK_KEY
from failured.store.schema import SCHEMA_VERSION
from failured.thresholds import Thresholds, evaluate, recovery_by_category

PG_URL = os.environ.get("FAILURE_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def _pg_reason():
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgresql]')"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL answers at {PG_URL}: {str(exc).strip().splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def pg_unavailable():
    return _pg_reason()


@contextlib.contextmanager
def fresh_schema_url():
    """A URL whose search_path is a fresh schema, dropped on leaving (skips the test where no server answers)."""
    reason = _pg_reason()
    if reason:
        pytest.skip(reason)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_url(pg_unavailable):
    """A URL whose search_path is a fresh schema, dropped after the test."""
    if pg_unavailable:
        pytest.skip(pg_unavailable)
    with fresh_schema_url() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "data" / "failured.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def any_store(location):
    store = open_store(location)
    yield store
    store.close()


class Clock:
    def __init__(self, now=T0):
        self.t = now

    def now(self):
        return self.t


def report(store, message="connection reset by peer", task_type="sync", at=T0):
    return record_failure(store, task_type, message, clock=Clock(at))


def test_a_new_database_records_its_schema_version_and_reopens_as_it_is(location):
    store = open_store(location)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.scalar("SELECT version FROM schema_info") == SCHEMA_VERSION
    report(store)
    store.close()
    again = open_store(location)
    assert again.scalar("SELECT count(*) FROM tasks") == 1
    assert again.rows("SELECT count(*) FROM open_tasks") == [(1,)]  # the views exist on both
    again.close()


def test_a_database_of_a_newer_schema_is_refused(location):
    store = open_store(location)
    with store.transaction():
        set_schema_version(store, SCHEMA_VERSION + 1)
    store.close()
    with pytest.raises(StoreError, match="newer than this failured"):
        open_store(location)


def test_a_version_1_database_is_migrated_forward_on_open(location):
    store = open_store(location)
    report(store)
    with store.transaction():
        store.execute("DROP TABLE labels")
        store.execute('DROP INDEX "tasks_finished_at_category_status_attempts_created_at"')
        set_schema_version(store, 1)
    store.close()
    again = open_store(location)
    assert again.schema_version() == SCHEMA_VERSION == 6
    assert again.label_count() == 0 and again.scalar("SELECT count(*) FROM tasks") == 1
    again.close()


def test_an_old_database_is_not_migrated_under_a_running_daemon_by_a_command_that_only_reads(location):
    from failured.store import Store
    from failured.store.database import OlderSchemaError, PostgresStore, is_url

    store = open_store(location)
    with store.transaction():
        set_schema_version(store, SCHEMA_VERSION - 1)
    store.close()
    daemon = PostgresStore(location) if is_url(location) else Store(location)
    daemon.take_daemon_lock(**({} if is_url(location) else {"exclusive": True}))  # as the older daemon holds it
    try:
        with pytest.raises(OlderSchemaError, match="upgrade and restart the daemon first"):
            open_store(location, create=False)
    finally:
        daemon.close()
    again = open_store(location, create=False)  # no daemon: migrated (and said)
    assert again.schema_version() == SCHEMA_VERSION
    again.close()


_PARTIAL = ("tasks_category_created_at_fingerprint", "tasks_fingerprint",
            "tasks_finished_at_category_status_attempts_created_at")


def _index_definitions(store):
    if store.dialect == "sqlite":
        return dict(store.rows("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'"))
    return dict(store.rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks'"
                           " AND schemaname = current_schema()"))


def test_a_version_5_database_keeps_new_tasks_out_of_the_indexes_of_what_they_lack(location):
    store = open_store(location)
    assert all("WHERE" in _index_definitions(store)[name] for name in _PARTIAL)
    first = report(store)
    with store.transaction():  # the indexes as schema 5 had them: every row in each
        for name, columns in zip(_PARTIAL, ('"category", "created_at", "fingerprint"', '"fingerprint"',
                                            '"finished_at", "category", "status", "attempts", "created_at"')):
            store.execute(f'DROP INDEX "{name}"')
            store.execute(f'CREATE INDEX "{name}" ON "tasks" ({columns})')
        set_schema_version(store, 5)
    store.close()
    again = open_store(location)
    assert again.schema_version() == SCHEMA_VERSION == 6
    definitions = _index_definitions(again)
    assert all("WHERE" in definitions[name] and "IS NOT NULL" in definitions[name] for name in _PARTIAL)
    second = report(again)
    with again.transaction():
        assert rows.update_task(again, second, TaskStatus.NEW, {"status": TaskStatus.NOTIFIED, "category": "unknown",
                                                               "fingerprint": "f1", "finished_at": T0 + 5})
    # The queries that read through them still find what they look for.
    assert again.rows("SELECT id FROM tasks WHERE fingerprint = ?", "f1") == [(second,)]
    assert again.rows("SELECT id FROM tasks WHERE category = ? AND created_at >= ?", "unknown",
                      again.time(T0 - 60)) == [(second,)]
    assert again.rows("SELECT id FROM tasks WHERE finished_at >= ?", again.time(T0)) == [(second,)]
    assert again.rows("SELECT id FROM tasks WHERE status = 'new'") == [(first,)]
    again.close()


def test_one_daemon_lock_per_sqlite_database(tmp_path):
    location = tmp_path / "failured.db"
    first, second = open_store(location), open_store(location)
    first.take_daemon_lock()
    with pytest.raises(StoreError, match="another failured daemon"):
        second.take_daemon_lock()
    first.close()  # a daemon that stops (or dies) lets the next one start
    second.take_daemon_lock()
    second.close()


def test_daemons_share_a_postgresql_database_but_not_with_an_older_failured(pg_url):
    import psycopg

    first, second = open_store(pg_url), open_store(pg_url)
    first.take_daemon_lock()
    second.take_daemon_lock()  # several daemons: see test_several_daemons.py
    first.close()
    second.close()
    with psycopg.connect(pg_url, autocommit=True) as older:  # a failured of one daemon per database holds it alone
        older.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (DAEMON_LOCK_KEY,))
        third = open_store(pg_url)
        with pytest.raises(StoreError, match="older version"):
            third.take_daemon_lock()
        third.close()


def test_migrate_store_holds_a_postgresql_database_alone(pg_url):
    """While migrate-store fills a database no daemon starts on it, and it does not start beside a daemon."""
    copying, daemon = open_store(pg_url), open_store(pg_url)
    copying.take_daemon_lock(exclusive=True)
    with pytest.raises(StoreError, match="migrate-store"):
        daemon.take_daemon_lock()
    copying.close()
    daemon.take_daemon_lock()
    again = open_store(pg_url)
    with pytest.raises(StoreError, match="a failured daemon or migrate-store is using"):
        again.take_daemon_lock(exclusive=True)
    daemon.close()
    again.close()


def test_a_daemon_lock_the_server_dropped_is_taken_again(pg_url):
    import psycopg

    store = open_store(pg_url)
    store.take_daemon_lock()
    assert store.keep_daemon_lock() is False  # held: nothing to do
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store._lock_connection.info.backend_pid,))
        assert store.keep_daemon_lock() is True
        taken = admin.execute("SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))",
                              (DAEMON_LOCK_KEY,)).fetchone()[0]
        assert not taken  # an older failured, which takes it alone, still cannot start beside this one
    store.close()


def test_a_daemon_lock_not_taken_again_at_once_is_taken_at_a_later_heartbeat(pg_url, monkeypatch):
    import psycopg

    store = open_store(pg_url)
    store.take_daemon_lock()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store._lock_connection.info.backend_pid,))
    take, refused = store.take_daemon_lock, []

    def too_many_clients_once(exclusive=False):
        if not refused:
            refused.append(True)
            raise StoreError("cannot open database: FATAL: sorry, too many clients already")
        return take(exclusive)

    monkeypatch.setattr(store, "take_daemon_lock", too_many_clients_once)
    with pytest.raises(StoreError, match="too many clients"):
        store.keep_daemon_lock()
    assert store.keep_daemon_lock() is True  # the next heartbeat: it still wants the lock, and takes it
    assert store.keep_daemon_lock() is False
    store.close()


def test_a_daemon_starting_while_status_tests_the_sqlite_lock_waits_an_instant_not_refuses(tmp_path, monkeypatch):
    """``status`` holds the lock file shared for an instant to see whether a daemon holds it."""
    import fcntl

    from failured.store import database

    store = open_store(tmp_path / "failured.db")
    real_flock, tries = fcntl.flock, []

    def held_by_a_prober_at_first(handle, operation):
        tries.append(operation)
        if len(tries) == 1:
            raise BlockingIOError("the prober holds it")
        return real_flock(handle, operation)

    monkeypatch.setattr(database.fcntl, "flock", held_by_a_prober_at_first)
    store.take_daemon_lock()
    assert len(tries) == 2  # refused once, taken on the next try
    monkeypatch.setattr(database.fcntl, "flock", real_flock)
    prober = open_store(tmp_path / "failured.db")
    assert prober.daemon_lock_held() is True  # as ``status`` sees it now
    prober.close()
    store.close()


def test_times_round_trip_to_the_millisecond(any_store):
    task_id = report(any_store, at=T0 + 0.123)
    task = rows.load_task(any_store, task_id)
    assert task.created_at == pytest.approx(T0 + 0.123, abs=1e-6)
    assert task.status == TaskStatus.NEW
    assert rows.load_new_tasks(any_store, 10)[0].id == task_id


def test_conditional_update_claim_and_recover_write_their_events(any_store):
    task_id = report(any_store)
    due = T0 + 30.5
    with any_store.transaction():
        assert rows.update_task(any_store, task_id, TaskStatus.NEW, {"status": TaskStatus.SCHEDULED,
                                                                     "next_retry_at": due, "updated_at": T0})
        assert not rows.update_task(any_store, task_id, TaskStatus.NEW, {"status": TaskStatus.SCHEDULED})
    assert rows.scheduled(any_store, T0) == [(task_id, pytest.approx(due), "sync")]
    claim = [("claimed", rows.claim_params(1, "me", due + 60, due, task_id, due),
              rows.event_row(task_id, due, "retry_started", TaskStatus.RUNNING, None, 1))]
    stale = [("stale", rows.claim_params(1, "me", due + 60, due, task_id, due + 1),
              rows.event_row(task_id, due, "retry_started", TaskStatus.RUNNING, None, 1))]
    with any_store.transaction():
        assert rows.run_prepared(any_store, rows.CLAIM, claim + stale) == ["claimed"]
    assert [t.id for t in rows.running_tasks(any_store, owner="me")] == [task_id]
    with any_store.transaction():
        assert rows.run_prepared(any_store, rows.RECOVER, [
            ("ok", rows.recover_params(due + 2, task_id, "me"),
             rows.event_row(task_id, due + 2, "recovered", TaskStatus.RECOVERED, None, 1, duration=1.5))]) == ["ok"]
    events = [event for _, event, *_ in rows.task_history(any_store, task_id)]
    assert events == ["reported", "retry_started", "recovered"]
    assert rows.load_task(any_store, task_id).status == TaskStatus.RECOVERED


def test_a_batch_of_claims_and_recoveries_applies_to_the_rows_still_due(any_store):
    ids = [report(any_store) for _ in range(3)]
    due = T0 + 30.5
    with any_store.transaction():
        for task_id in ids:
            rows.update_task(any_store, task_id, TaskStatus.NEW, {"status": TaskStatus.SCHEDULED,
                                                                  "next_retry_at": due, "updated_at": T0})
    claims = [(task_id, rows.claim_params(1, "me", due + 60, due, task_id, due + (1 if n == 1 else 0)),
               rows.event_row(task_id, due, "retry_started", TaskStatus.RUNNING, None, 1))
              for n, task_id in enumerate(ids)]  # the second one's due time moved meanwhile
    with any_store.transaction():
        assert rows.run_prepared(any_store, rows.CLAIM, claims) == [ids[0], ids[2]]
    finishes = [(task_id, rows.recover_params(due + 2, task_id, owner),
                 rows.event_row(task_id, due + 2, "recovered", TaskStatus.RECOVERED, None, 1, duration=1.5))
                for task_id, owner in ((ids[0], "me"), (ids[2], "someone else"))]
    with any_store.transaction():
        assert rows.run_prepared(any_store, rows.RECOVER, finishes) == [ids[0]]
    assert [rows.load_task(any_store, task_id).status for task_id in ids] == [
        TaskStatus.RECOVERED, TaskStatus.SCHEDULED, TaskStatus.RUNNING]
    assert [[event for _, event, *_ in rows.task_history(any_store, task_id)] for task_id in ids] == [
        ["reported", "retry_started", "recovered"], ["reported"], ["reported", "retry_started"]]
    task = rows.load_task(any_store, ids[0])
    assert (task.attempts, task.lease_owner, task.finished_at) == (1, None, pytest.approx(due + 2))


def test_a_lease_is_taken_back_once(any_store):
    task_id = report(any_store)
    with any_store.transaction():
        rows.update_task(any_store, task_id, TaskStatus.NEW, {"status": TaskStatus.RUNNING, "lease_owner": "gone",
                                                              "lease_until": T0 + 1, "attempts": 1})
    assert [t.id for t in rows.running_tasks(any_store, lease_before=T0 + 2)] == [task_id]
    assert [t.id for t in rows.running_tasks(any_store, not_owner="me")] == [task_id]
    with any_store.transaction():
        assert rows.take_back(any_store, task_id, "gone", T0 + 2, uncount=True)
        assert not rows.take_back(any_store, task_id, "gone", T0 + 2)
    task = rows.load_task(any_store, task_id)
    assert (task.status, task.attempts, task.lease_owner) == (TaskStatus.SCHEDULED, 0, None)


def test_outbox_state_and_breakers(any_store):
    with any_store.transaction():
        assert outbox.insert_pending(any_store, T0, None, "admin", "task", "c", "sync", "fp", "t", "b",
                                     ["log", "robot"]) == 2
    assert sorted(aggregates.pending_notifications(any_store)) == [("log", 1, T0), ("robot", 1, T0)]
    any_store.set_state("k:a", "1", T0)
    any_store.set_state("k:a", "2", T0 + 1)  # replaced, not doubled
    assert any_store.states("k:") == {"k:a": "2"}
    with any_store.transaction():
        breakers.save_breaker(any_store, "sync", BreakerState.OPEN, 3, T0 + 60, T0)
        breakers.save_breaker(any_store, "sync", BreakerState.OPEN, 4, T0 + 90, T0)
    assert breakers.load_breakers(any_store) == [("sync", "open", 4, T0 + 90)]
    assert aggregates.breakers_open_count(any_store) == 1


def test_listing_grep_is_literal_on_both(any_store):
    report(any_store, "disk 100% full_now")
    report(any_store, "disk 100 percent")
    found = queries.list_tasks(grep="100% FULL_", store=any_store)
    assert [row["error"] for row in found] == ["disk 100% full_now"]


def _finish(store, task_id, status, category, attempts, finished):
    with store.transaction():
        rows.update_task(store, task_id, TaskStatus.NEW, {"status": status, "category": category,
                                                          "attempts": attempts, "finished_at": finished,
                                                          "fingerprint": "fp1"})


def test_aggregates_agree_on_both_stores(any_store):
    """Daily series, the time-to-recovery histogram and the recovery rate, computed in SQL."""
    for i in range(4):
        task_id = report(any_store, at=T0 + i * 86400)
        _finish(any_store, task_id, TaskStatus.RECOVERED, "recoverable_network", 1, T0 + i * 86400 + 10 + i)
    task_id = report(any_store, at=T0 + 3600)
    _finish(any_store, task_id, TaskStatus.EXHAUSTED, "recoverable_network", 3, T0 + 7200)
    record_success(any_store, "sync", 5, clock=Clock(T0 + 5))
    scan = aggregates.period_scan(any_store, T0 - 1, T0 + 5 * 86400)
    days = sorted({row[0] for row in scan})
    assert days == ["2023-11-14", "2023-11-15", "2023-11-16", "2023-11-17"]
    histogram = aggregates.recovery_histogram(any_store, T0, T0 + 5 * 86400, "recoverable_")
    assert [(s, n) for s, n, _ in histogram] == [(10, 1), (11, 1), (12, 1), (13, 1)]
    assert sum(total for _, _, total in histogram) == pytest.approx(46.0, abs=0.01)  # julianday: ~1 ms
    by_category = recovery_by_category(any_store, T0, T0 + 5 * 86400)
    assert (by_category["recoverable_network"].recovered, by_category["recoverable_network"].finished) == (4, 5)
    checks = {c.name: c for c in evaluate(any_store, T0 + 60, Thresholds(window_minutes=60 * 24 * 10))}
    assert checks["recent_failures"].value == 5


def test_the_analysis_and_processing_reports_run_on_both(any_store, sync_snapshot):
    from failured.analysis import analysis_report
    from failured.reports import processing_report

    for i in range(3):
        task_id = report(any_store, f"frobnicator {i} exploded", at=T0 + i * 3600)
        with any_store.transaction():
            rows.update_task(any_store, task_id, TaskStatus.NEW, {"status": TaskStatus.NOTIFIED, "category": "unknown",
                                                                  "fingerprint": "fpx", "error_template": "frob <n>",
                                                                  "finished_at": T0 + i * 3600 + 1})
            rows.add_event(any_store, task_id, T0 + i * 3600 + 1, "notified", TaskStatus.NOTIFIED, "unknown")
    task_id = report(any_store, at=T0 + 100)
    _finish(any_store, task_id, TaskStatus.RECOVERED, "recoverable_network", 2, T0 + 130)
    result = analysis_report(any_store, sync_snapshot, T0 + 86400, days=7, lang="en")
    assert result["total_failures"] == 4
    assert result["category_distribution"] == {"unknown": 3, "recoverable_network": 1}
    days = [(day["date"], day["total"]) for day in result["daily_failures"]]
    assert days[-2:] == [("2023-11-14", 3), ("2023-11-15", 1)]
    assert result["recovery"]["mean_seconds_to_recovery"] == 30.0
    assert result["top_fingerprints"][0]["first_seen"] == "2023-11-14T22:13:20Z"
    assert result["unknown_templates"][0]["samples"] == ["frobnicator 2 exploded", "frobnicator 1 exploded",
                                                          "frobnicator 0 exploded"]
    processed = processing_report(any_store, T0 + 86400, "en")
    assert processed["stats"]["notified"] == 3 and processed["total_processed"] == 3
    assert processing_report(any_store, T0 + 86401, "en")["total_processed"] == 0  # the watermark moved


def test_housekeeping_deletes_only_what_is_old_and_finished(any_store):
    old = report(any_store, at=T0)
    _finish(any_store, old, TaskStatus.NOTIFIED, "unrecoverable_data", 0, T0)
    young = report(any_store, at=T0 + 86400 * 10)
    assert housekeeping.purge(any_store, T0 + 86400, 0) == {"tasks": 1, "notifications": 0, "success_counts": 0}
    assert [t.id for t in rows.find_tasks(any_store, tuple(TaskStatus))] == [young]


def test_a_reading_command_creates_nothing_in_an_empty_database(location):
    with pytest.raises(InputError, match="no database at"):
        open_store(location, create=False)


def test_a_password_in_the_url_never_shows_in_the_error(pg_unavailable):
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://someone:hunter2secret@127.0.0.1:1/nothing")
    assert "hunter2secret" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("url, shown", [
    ("postgresql://someone:hunter2secret@127.0.0.1:1/nothing", "postgresql://someone:***@127.0.0.1:1/nothing"),
    ("postgresql://someone@127.0.0.1:1/nothing?password=hunter2secret&sslmode=disable",
     "postgresql://someone@127.0.0.1:1/nothing?password=***&sslmode=disable"),
    ("postgresql:///nothing?host=127.0.0.1&port=1&PASSWORD=hunter2secret",
     "postgresql:///nothing?host=127.0.0.1&port=1&PASSWORD=***"),
])
def test_an_unreachable_server_is_exit_2_at_start_with_the_password_masked(tmp_path, url, shown):
    from conftest import run_cli

    result = run_cli("status", env={"FAILURE_DB": url}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"cannot open database {shown}" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["report", "run"])
@pytest.mark.parametrize("url, said", [
    ("postgresql://root:hunter2secret@127.0.0.1:5432/?sslmode=disable", "names no database: say which one"),
    ("postgresql://root:hunter2secret@127.0.0.1:5432/test?connect_timeout=abc",
     "connect_timeout='abc' is not a whole number of seconds"),
])
def test_a_url_every_connection_would_fail_on_is_one_line_and_exit_2_for_every_command(tmp_path, pg_unavailable,
                                                                                      command, url, said):
    """``run`` died in a traceback on connect_timeout=abc (its members' connection reads it) while ``report``
    wrote tasks no daemon could start for; a URL without a database put the tables in libpq's default one."""
    from conftest import SMALL_PATTERNS, run_cli, write_config

    if pg_unavailable:
        pytest.skip(pg_unavailable)
    arguments = ["report", "--type", "t", "--error", "e"] if command == "report" else ["run"]
    env = {"FAILURE_DB": url, "FAILURE_HTTP_ADDR": "off", "PGDATABASE": "",
           "FAILURE_CONFIG_DIR": str(write_config(tmp_path / "c", SMALL_PATTERNS))}
    result = run_cli(*arguments, env=env, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert said in result.stderr and "hunter2secret" not in result.stderr


def test_a_heartbeat_without_a_daemon_row_is_no_daemon(pg_url):
    """migrate-store copies the SQLite daemon's last heartbeat: on PostgreSQL only the daemons' rows say one runs
    (status said "healthy, heartbeat 12.7s ago" with no daemon started)."""
    from failured.status import daemon_status

    store = open_store(pg_url)
    try:
        now = time.time()
        store.set_state("heartbeat", f"{now:.3f} pid=1", now)
        assert daemon_status(store, now)["alive"] is False
    finally:
        store.close()


def test_a_reporter_masks_its_own_database_password_and_pgpassword(tmp_path, pg_url, monkeypatch):
    """A reporter knows the password it connects with even where no daemon does (its URL has none)."""
    from conftest import run_cli

    with_password = pg_url.replace("postgresql://root@", "postgresql://root:Pw0rdXyz77@", 1)
    assert with_password != pg_url
    env = {"FAILURE_DB": with_password, "PGPASSWORD": "EnvPw5566x"}
    error = "login failed using Pw0rdXyz77 for root; connect failed: password EnvPw5566x"
    result = run_cli("report", "--type", "t", "--error", error, "--ref", "ref-Pw0rdXyz77", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("PGPASSWORD", "EnvPw5566x")
    store = open_store(with_password)
    try:
        record_failure(store, "t", "python api: password Pw0rdXyz77 rejected, EnvPw5566x too")
    finally:
        store.close()
    stored = _pg_query(pg_url, "SELECT error_message, ref FROM tasks ORDER BY id")
    assert stored == [("login failed using *** for root; connect failed: password ***", "ref-***"),
                      ("python api: password *** rejected, *** too", None)]


def test_without_the_postgresql_driver_a_report_says_what_to_install(tmp_path):
    """Where psycopg is not installed (the plain install), one line says so: no traceback, exit 2."""
    no_driver = ("import sys; sys.modules['psycopg'] = None; from failured.cli import main; "  # import fails as if absent
                 "sys.exit(main(['report', '--type', 'sync', '--error', 'boom']))")
    env = {**os.environ, "FAILURE_DB": "postgresql://someone:hunter2secret@127.0.0.1:1/nothing"}
    result = subprocess.run([sys.executable, "-c", no_driver], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'failured[postgresql]'" in result.stderr and "hunter2secret" not in result.stderr


def _pg_query(url, sql):
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(sql).fetchall()


def test_the_daemon_runs_on_postgresql_report_retry_recovered(pg_url, daemon_factory):
    """A real daemon on PostgreSQL: a network failure is retried by its handler and recovers."""
    main = f"""
[model]
enabled = false  # the store is under test here, not the learned fallback (training costs seconds)

[task_types.sync.handler]
kind = "command"
argv = ["{sys.executable}", "-c", "pass"]
timeout = 10
"""
    daemon = daemon_factory(main, FAILURE_DB=pg_url).start()
    result = daemon.cli("report", "--type", "sync", "--error", "connection timeout talking to the carrier")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = _pg_query(pg_url, "SELECT status FROM tasks")
        if status == [("recovered",)]:
            break
        assert daemon.proc.poll() is None, daemon.stderr()
        time.sleep(0.05)
    assert status == [("recovered",)], daemon.stderr()
    events = [e for (e,) in _pg_query(pg_url, "SELECT event FROM task_events ORDER BY id")]
    assert events[0] == "reported" and events[-1] == "recovered" and "retry_started" in events
    assert daemon.stop() == 0, daemon.stderr()


def test_the_daemon_carries_on_after_postgresql_drops_its_sessions(pg_url, daemon_factory):
    """Every session of the daemon is terminated (a server restart, a failover): it says so once,
    connects again, and decides the next report."""
    daemon = daemon_factory("[model]\nenabled = false\n", FAILURE_DB=pg_url).start()
    assert daemon.cli("report", "--type", "sync", "--error", "malformed json before").returncode == 0
    _wait_status(pg_url, daemon, [("notified",)])
    killed = _pg_query(PG_URL, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               f"WHERE application_name = 'failured:{daemon.proc.pid}'")  # this daemon's only
    assert killed[0][0] >= 1
    assert daemon.cli("report", "--type", "sync", "--error", "malformed json after").returncode == 0
    _wait_status(pg_url, daemon, [("notified",), ("notified",)])
    assert daemon.proc.poll() is None, daemon.stderr()
    assert daemon.stop() == 0, daemon.stderr()
    log = daemon.stderr()
    # Once per outage at most: each thread's connection died, and the threads meet that one after another
    # (one that is not used again before the stop never does). A notification channel that meets it first
    # says, in a line of its own, that its delivery waits (quoting the same error): not a second outage.
    outage = "what is held stays held, trying again with backoff"
    assert log.count(outage) <= 1, log
    assert (outage in log) == ("the database answers again" in log), log


def _wait_status(url, daemon, expected, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _pg_query(url, "SELECT status FROM tasks ORDER BY id")
        if found == expected:
            return
        assert daemon.proc.poll() is None, daemon.stderr()
        time.sleep(0.05)
    raise AssertionError(f"{found} != {expected}\n{daemon.stderr()}")
