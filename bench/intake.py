"""Failures recorded per second through report_failure (single calls) vs. plain sqlite3."""

import sqlite3
import tempfile
import time
from pathlib import Path

from common import emit

from failured.intake import record_failure
from failured.store import PRAGMAS, open_store

COUNT = 20_000


def ours(path):
    store = open_store(path)
    start = time.perf_counter()
    for i in range(COUNT):
        record_failure(store, "tracking_update", f"connection timeout to api {i}", payload={"order_id": i})
    elapsed = time.perf_counter() - start
    store.close()
    return COUNT / elapsed


def plain(path):
    open_store(path).close()  # same schema and indexes
    con = sqlite3.connect(path, isolation_level=None)
    for name, value in PRAGMAS:
        con.execute(f"PRAGMA {name} = {value}")
    start = time.perf_counter()
    for i in range(COUNT):
        now = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime())
        con.execute("BEGIN IMMEDIATE")
        cursor = con.execute(
            "INSERT INTO tasks (task_type, source, status, error_message, payload, attempts, created_at, updated_at)"
            " VALUES (?, 'python', 'new', ?, ?, 0, ?, ?)",
            ("tracking_update", f"connection timeout to api {i}", f'{{"order_id": {i}}}', now, now))
        con.execute("INSERT INTO task_events (task_id, at, event, status, error_message) VALUES (?, ?, 'reported', 'new', ?)",
                    (cursor.lastrowid, now, f"connection timeout to api {i}"))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return COUNT / elapsed


def main():
    with tempfile.TemporaryDirectory() as directory:
        print(f"intake: {COUNT:,} single-call reports, one transaction each (WAL, synchronous=NORMAL)")
        ours_rate = ours(Path(directory) / "ours.db")
        plain_rate = plain(Path(directory) / "plain.db")
    emit("intake", {"report_failure /s": round(ours_rate), "plain sqlite3 /s": round(plain_rate),
                    "ratio": round(ours_rate / plain_rate, 2)}, ">= 5,000 failures/s single-call")


if __name__ == "__main__":
    main()
