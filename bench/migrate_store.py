"""`failured migrate-store`: a SQLite database of ROWS tasks (default 200,000), each with 3 events, copied
into a fresh schema of FAILURE_TEST_POSTGRES_URL (default postgresql://root@127.0.0.1:5432/test).

The tasks are made by doubling one reported task in SQL (the copy cares about rows, not their text).
Prints the wall time of the copy, the client's CPU seconds and rows per second; the schema is dropped
after.
"""

import os
import sqlite3
import tempfile
import time
import uuid

from common import emit

from failured.intake import record_failure
from failured.store import open_store
from failured.store.migrate import migrate

URL = os.environ.get("FAILURE_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
ROWS = int(os.environ.get("ROWS", "200000"))
TASK_COLUMNS = ("task_type, ref, source, status, category, matched_by, error_type, error_message, error_template, "
                "fingerprint, payload, attempts, max_attempts, next_retry_at, created_at, updated_at, finished_at")


def build(path):
    store = open_store(path)
    record_failure(store, "sync", "connection timeout talking to the carrier 1", payload='{"order_id": 1}')
    store.close()
    con = sqlite3.connect(path)
    while (count := con.execute("SELECT count(*) FROM tasks").fetchone()[0]) < ROWS:
        con.execute(f"INSERT INTO tasks ({TASK_COLUMNS}) SELECT {TASK_COLUMNS} FROM tasks LIMIT ?", (ROWS - count,))
        con.commit()
    con.execute("DELETE FROM task_events")
    for event in ("reported", "scheduled", "retry_started"):
        con.execute("INSERT INTO task_events (task_id, at, event, status, category, attempt, error_message) "
                    "SELECT id, created_at, ?, status, category, 1, error_message FROM tasks", (event,))
    con.commit()
    con.close()


def main():
    import psycopg

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "failured.db")
        build(path)
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(URL, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        target = f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{schema}"
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            result = migrate(path, target)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            with psycopg.connect(URL, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA {schema} CASCADE")
    rows = sum(table["rows"] for table in result.tables.values() if table["how"] == "copied")
    emit("migrate_store", {"tasks": result.tables["tasks"]["rows"], "rows copied": rows,
                           "wall seconds": round(wall, 2), "client CPU seconds": round(cpu, 2),
                           "rows per second": round(rows / wall)}, "none (a one-off move; reported for planning)")


if __name__ == "__main__":
    main()
