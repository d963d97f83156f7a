import sqlite3

import pytest

from failured.errors import StoreError
from failured.intake import record_failure
from failured.store import SCHEMA_VERSION, Store, open_store


def test_fresh_database_has_schema_version_wal_and_views(tmp_path):
    store = open_store(tmp_path / "a" / "b.db")
    store.close()
    con = sqlite3.connect(tmp_path / "a" / "b.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")}
    assert {"tasks", "task_events", "notifications", "pending_retries", "failures_last_24h"} <= names


def test_an_event_write_maintains_no_index_it_does_not_need(sqlite_store):
    """(task_id, id) serves lookups by task (no index on task_id alone); SQLite's NULL xact is in no index."""
    indexes = dict(sqlite_store.rows("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'task_events'"))
    assert "task_events_task_id" not in indexes and "task_events_task_id_id" in indexes
    assert "IS NOT NULL" in indexes["task_events_xact"]
    plan = sqlite_store.rows("EXPLAIN QUERY PLAN SELECT id FROM task_events WHERE task_id = 1 ORDER BY id")
    assert "task_events_task_id_id" in " ".join(map(str, plan))


def test_connection_pragmas_are_on(sqlite_store):
    assert sqlite_store.db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert sqlite_store.db.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_indexes_cover_daemon_and_report_queries(sqlite_store):
    plan = sqlite_store.db.execute_sql(
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE status='scheduled' ORDER BY next_retry_at LIMIT 5"
    ).fetchall()
    assert "tasks_status_next_retry_at" in " ".join(str(row) for row in plan)
    indexed = {r[0] for r in sqlite_store.db.execute_sql("SELECT sql FROM sqlite_master WHERE type='index'") if r[0]}
    text = " ".join(indexed)
    for column in ("created_at", "category", "task_type", "fingerprint"):
        assert column in text


def test_newer_database_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "x.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer than this failured"):
        open_store(path)


def test_migration_steps_run_in_order_on_an_old_database(tmp_path, monkeypatch):
    from failured import store as store_module

    path = tmp_path / "m.db"
    open_store(path).close()
    monkeypatch.setattr(store_module.database, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION + 1,
                        ["ALTER TABLE tasks ADD COLUMN priority_hint INTEGER"])
    store = Store(path).open()
    assert store.schema_version() == SCHEMA_VERSION + 1
    columns = [r[1] for r in store.db.execute_sql("PRAGMA table_info(tasks)")]
    assert "priority_hint" in columns
    store.close()


def test_times_are_readable_utc_text_in_sqlite3(sqlite_store, clock, tmp_path):
    task_id = record_failure(sqlite_store, "t", "boom", clock=clock)
    con = sqlite3.connect(sqlite_store.path)
    created = con.execute("SELECT created_at FROM tasks WHERE id=?", (task_id,)).fetchone()[0]
    assert created == "2023-11-14 22:13:20.000"


def test_pending_retries_view_lists_scheduled_tasks_by_due_time(store, clock):
    from failured.store import Task

    ids = [record_failure(store, "t", f"e{i}", clock=clock) for i in range(3)]
    for offset, task_id in zip((30, 10, 20), ids):
        Task.update(status="scheduled", next_retry_at=clock.now() + offset).where(Task.id == task_id).execute()
    rows = store.db.execute_sql("SELECT id FROM pending_retries").fetchall()
    assert [r[0] for r in rows] == [ids[1], ids[2], ids[0]]
