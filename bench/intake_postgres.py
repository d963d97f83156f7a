"""Failures recorded per second through record_failure (single calls) on PostgreSQL vs. plain psycopg.

Both write into a schema of their own (dropped after) on FAILURE_TEST_POSTGRES_URL (default
postgresql://root@127.0.0.1:5432/test): one transaction per report, as an application's reports are.
"""

import os
import time
import uuid

from common import emit

from failured.intake import record_failure
from failured.store import open_store

URL = os.environ.get("FAILURE_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
COUNT = 5_000


def _schema_url(admin, name):
    admin.execute(f"CREATE SCHEMA {name}")
    return f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{name}"


def ours(url):
    store = open_store(url)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(COUNT):
        record_failure(store, "tracking_update", f"connection timeout to api {i}", payload={"order_id": i})
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    store.close()
    return COUNT / elapsed, cpu / COUNT * 1e6


def plain(url):
    import psycopg

    open_store(url).close()  # same schema and indexes
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("SET TIME ZONE 'UTC'")
        con.execute("SET synchronous_commit = off")  # as the store's sessions
        start = time.perf_counter()
        for i in range(COUNT):
            now = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime())
            con.execute(  # the statement the store sends: both rows at once, one round trip
                "WITH task AS (INSERT INTO tasks (task_type, source, status, error_message, payload, attempts,"
                " created_at, updated_at) VALUES (%s, 'python', 'new', %s, %s, 0, %s, %s)"
                " RETURNING id, created_at, error_message)"
                " INSERT INTO task_events (task_id, at, event, status, error_message)"
                " SELECT id, created_at, 'reported', 'new', error_message FROM task RETURNING task_id",
                ("tracking_update", f"connection timeout to api {i}", f'{{"order_id": {i}}}', now, now)).fetchone()
        return COUNT / (time.perf_counter() - start)


def main():
    import psycopg

    names = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with psycopg.connect(URL, autocommit=True) as admin:
        urls = [_schema_url(admin, name) for name in names]
        try:
            print(f"intake (postgresql): {COUNT:,} single-call reports, one transaction each")
            ours_rate, cpu_us = ours(urls[0])
            plain_rate = plain(urls[1])
        finally:
            for name in names:
                admin.execute(f"DROP SCHEMA {name} CASCADE")
    emit("intake_postgres", {"record_failure /s": round(ours_rate), "plain psycopg /s": round(plain_rate),
                             "ratio": round(ours_rate / plain_rate, 2), "client cpu µs/report": round(cpu_us)},
         ">= 3,000 failures/s single-call")


if __name__ == "__main__":
    main()
