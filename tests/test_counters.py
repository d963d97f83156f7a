"""task_counts and failure_counts: kept exact by triggers through a real mixed run, on SQLite and PostgreSQL.

After every stage the counters must equal a GROUP BY of the tasks (``aggregates.counter_drift`` is empty).
The PostgreSQL runs use test_store_postgres' schema-per-test fixtures and skip without a server.
"""


from conftest import set_schema_version
from test_store_postgres import any_store, location, pg_unavailable, pg_url  # noqa: F401  (fixtures)

from failured.clock import ManualClock
from failured.engine import Engine
from failured.handlers import Outcome
from failured.housekeeping import purge
from failured.intake import record_failure
from failured.manual import recover, resolve
from failured.settings import Settings
from failured.store import aggregates, open_store, queries
from failured.store.schema import SCHEMA_VERSION
from failured.thresholds import recovery_by_category, recovery_total
from failured.web import data

HOUR, DAY = 3600, 86400


def exact(store):
    assert aggregates.counter_drift(store) == []
    total = sum(count for _, _, count in aggregates.tasks_by_status(store))
    assert total == store.scalar("SELECT count(*) FROM tasks")


def retry(engine, clock, task_id, outcome):
    clock.advance(100)
    claimed = engine.claim(task_id)
    assert claimed is not None
    return engine.finish(claimed, outcome)


def test_counters_stay_exact_through_a_mixed_run(any_store, sync_snapshot):  # noqa: F811 (fixtures)
    store, clock = any_store, ManualClock()
    engine = Engine(store, Settings(), clock, lambda: sync_snapshot, owner="test:1:0")
    exact(store)
    ids = {}
    for hour, messages in enumerate([("connection timeout", "malformed json body", "a thing nobody knows"),
                                     ("connection refused", "connection timeout", "validation failed: x"),
                                     ("something odd", "connection timeout")]):
        for n, message in enumerate(messages):
            ids[(hour, n)] = record_failure(store, "sync", message, clock=clock)
        clock.advance(HOUR)
    exact(store)  # all new and unclassified, in three hours
    assert {c for _, c, _ in aggregates.tasks_by_status(store)} == {"-"}
    engine.handle_new()
    exact(store)
    assert retry(engine, clock, ids[(0, 0)], Outcome(True)) is None  # recovered
    retry(engine, clock, ids[(1, 0)], Outcome(False, "connection refused again"))  # scheduled again
    assert retry(engine, clock, ids[(1, 1)], Outcome(False, "malformed json now")) is None  # turns into data
    for _ in range(3):
        retry(engine, clock, ids[(2, 1)], Outcome(False, "connection timeout"))  # exhausted on the third
    exact(store)
    folded = aggregates.compact_counters(store)  # PostgreSQL: delta rows fold to one a key
    exact(store)
    if store.dialect == "postgresql":
        assert folded > store.scalar("SELECT count(*) FROM task_counts") > 0
    resolve(store, ids[(0, 1)], clock.now(), note="fixed by hand")
    engine.relabel(ids[(0, 2)], "recoverable_network")  # unknown -> scheduled
    engine.relabel(ids[(2, 0)], "unrecoverable_data")
    recover(store, sync_snapshot, ids[(1, 2)], clock.now(), force=True)
    exact(store)
    # The console's recovery rate from the counters is the thresholds' rate from the tasks.
    from_tasks = recovery_total(recovery_by_category(store, clock.now() - 7 * DAY, clock.now() + 1))
    assert (from_tasks.finished, from_tasks.recovered) == (2, 1)
    assert data.recovery_rate(store, clock.now() + 1) == from_tasks.rate_percent
    by_status = {(s, c): n for s, c, n in aggregates.tasks_by_status(store)}
    assert by_status[("recovered", "recoverable_network")] == 1
    assert by_status[("resolved", "unrecoverable_data")] == 1
    clock.advance(3 * DAY)
    removed = purge(store, clock.now(), 1)
    assert removed["tasks"] >= 2  # the recovered and resolved ones, at least
    exact(store)
    aggregates.compact_counters(store)
    exact(store)
    # The series the console draws: hours since the first report, by category now.
    series = queries.failures_by_period(clock.now() - 4 * DAY, 13, store)
    assert sum(n for _, _, n in series) == store.scalar("SELECT count(*) FROM tasks")
    assert all(n > 0 for _, _, n in series)


def test_a_retry_claim_writes_no_counter_row(any_store, sync_snapshot):  # noqa: F811 (fixtures)
    """Running counts as scheduled in task_counts, so the claim leaves the counter table as it was; the
    running task is still reported as running (counted live)."""
    store, clock = any_store, ManualClock()
    engine = Engine(store, Settings(), clock, lambda: sync_snapshot, owner="test:1:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    counter_rows = "SELECT status, category, count FROM task_counts ORDER BY 1, 2, 3"
    before = store.rows(counter_rows)
    clock.advance(100)
    claimed = engine.claim(task_id)
    assert store.rows(counter_rows) == before
    by_status = {(s, c): n for s, c, n in aggregates.tasks_by_status(store)}
    assert by_status == {("running", "recoverable_network"): 1}
    exact(store)
    engine.finish(claimed, Outcome(False, "connection timeout"))  # running -> scheduled: nothing to move
    assert store.rows(counter_rows) == before
    exact(store)


def test_a_version_2_database_gains_filled_counters_when_opened(location):  # noqa: F811 (fixtures)
    clock = ManualClock()
    store = open_store(location)
    for n in range(5):
        record_failure(store, "sync", f"error {n % 2}", clock=clock)
        clock.advance(HOUR / 2)
    with store.transaction():  # make it the database an older failured wrote
        if store.dialect == "sqlite":
            for name in ("insert", "update_task_counts", "update_failure_counts", "update_recovery_counts", "delete"):
                store.execute(f"DROP TRIGGER tasks_counters_{name}")
        else:
            store.execute("DROP FUNCTION failured_tasks_counters() CASCADE")
        store.execute("DROP TABLE task_counts")
        store.execute("DROP TABLE failure_counts")
        store.execute("DROP TABLE recovery_counts")
        store.execute('DROP INDEX "tasks_category_created_at_fingerprint"')
        store.execute('CREATE INDEX "tasks_category_created_at" ON "tasks" ("category", "created_at")')
        set_schema_version(store, 2)
    if store.dialect == "sqlite":
        store.db.execute_sql("ANALYZE")  # an analysed database: the new index gets statistics too
    record_failure(store, "sync", "written while no trigger counted", clock=clock)
    store.close()
    again = open_store(location)
    assert again.schema_version() == SCHEMA_VERSION == 6
    assert aggregates.tasks_by_status(again) == [("new", "-", 6)]
    assert sum(n for _, _, n in aggregates.failures_by_hour(again, "")) == 6
    if again.dialect == "sqlite":  # the new index has statistics, or none to have (schema 6 keeps unclassified tasks out)
        classified = again.scalar("SELECT count(*) FROM tasks WHERE category IS NOT NULL")
        analysed = again.scalar("SELECT count(*) FROM sqlite_stat1 WHERE idx = 'tasks_category_created_at_fingerprint'")
        assert analysed == (1 if classified else 0)
        assert again.scalar("SELECT count(*) FROM sqlite_stat1 WHERE idx = 'tasks_task_type_created_at'") == 1
    record_failure(again, "sync", "after the migration", clock=clock)  # the triggers count again
    exact(again)
    again.close()


def test_rebuild_counters_repairs_counts_that_drifted(any_store):  # noqa: F811 (fixtures)
    clock = ManualClock()
    for n in range(3):
        record_failure(any_store, "sync", f"error {n}", clock=clock)
    with any_store.transaction():
        any_store.execute("UPDATE task_counts SET count = 99")
        any_store.execute("DELETE FROM failure_counts")
    assert aggregates.counter_drift(any_store) != []  # the check can fail
    aggregates.rebuild_counters(any_store)
    exact(any_store)


def test_postgresql_writers_never_wait_on_a_counter_row(pg_url):  # noqa: F811 (fixtures)
    """Two reports in two open transactions: the second commits while the first still holds its rows
    (an upserted counter row would make it wait for the first's commit)."""
    import psycopg

    open_store(pg_url).close()  # the schema and its triggers
    insert = ("INSERT INTO tasks (task_type, source, status, error_message, attempts, created_at, updated_at)"
              " VALUES ('sync', 'python', 'new', %s, 0, now(), now())")
    with psycopg.connect(pg_url) as first, psycopg.connect(pg_url) as second:
        first.execute(insert, ("first",))  # its transaction stays open
        second.execute("SET lock_timeout = '2s'")
        second.execute(insert, ("second",))
        second.execute("UPDATE tasks SET status = 'notified', category = 'unknown' WHERE error_message = 'second'")
        second.commit()  # would have raised LockNotAvailable behind first's counter rows
        first.commit()
    store = open_store(pg_url)
    exact(store)
    assert aggregates.compact_counters(store) > 0
    assert sorted(aggregates.tasks_by_status(store)) == [("new", "-", 1), ("notified", "unknown", 1)]
    exact(store)
    store.close()
