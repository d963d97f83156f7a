"""Failures recorded per second through record_failure and report_failure (single calls) on PostgreSQL vs.
plain psycopg.

Each writes into a schema of its own (dropped after) on FAILURE_TEST_POSTGRES_URL (default
postgresql://root@127.0.0.1:5432/test): one transaction per report, as an application's reports are.
Besides the rates (which other work on the machine moves), the CPU a report costs: the client's, and the
server's (its session's process, read from /proc where the server runs on this machine).
"""

import os
import time
import uuid

from common import emit

from failured.intake import default_store, record_failure, report_failure
from failured.store import open_store

URL = os.environ.get("FAILURE_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
COUNT = 5_000


def _schema_url(admin, name):
    admin.execute(f"CREATE SCHEMA {name}")
    return f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{name}"


def server_cpu(pid):
    """CPU seconds the server process ``pid`` has used (None where it is not on this machine)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(loop, backend):
    """(reports/s, client CPU µs a report, server CPU µs a report or None) of ``loop()`` (COUNT reports)."""
    server = server_cpu(backend)
    start, cpu = time.perf_counter(), time.process_time()
    loop()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    server = None if server is None else (server_cpu(backend) - server) / COUNT * 1e6
    return COUNT / elapsed, cpu / COUNT * 1e6, server


def ours(url):
    store = open_store(url)

    def loop():
        for i in range(COUNT):
            record_failure(store, "tracking_update", f"connection timeout to api {i}", payload={"order_id": i})
    figures = timed(loop, store.scalar("SELECT pg_backend_pid()"))
    store.close()
    return figures


def public(url):
    os.environ["FAILURE_DB"] = url
    report_failure("tracking_update", "warm-up")
    backend = default_store().scalar("SELECT pg_backend_pid()")

    def loop():
        for i in range(COUNT):
            report_failure("tracking_update", f"connection timeout to api {i}", payload={"order_id": i})
    return timed(loop, backend)


def plain(url):
    import psycopg

    open_store(url).close()  # same schema and indexes
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("SET TIME ZONE 'UTC'")
        con.execute("SET synchronous_commit = off")  # as the store's sessions
        backend = con.execute("SELECT pg_backend_pid()").fetchone()[0]

        def loop():
            for i in range(COUNT):
                one(i)

        def one(i):
            now = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime())
            con.execute(  # the statement the store sends: both rows at once, one round trip
                "WITH task AS (INSERT INTO tasks (task_type, source, status, error_message, payload, attempts,"
                " created_at, updated_at) VALUES (%s, 'python', 'new', %s, %s, 0, %s, %s)"
                " RETURNING id, created_at, error_message)"
                " INSERT INTO task_events (task_id, at, event, status, error_message)"
                " SELECT id, created_at, 'reported', 'new', error_message FROM task RETURNING task_id",
                ("tracking_update", f"connection timeout to api {i}", f'{{"order_id": {i}}}', now, now)).fetchone()
        return timed(loop, backend)


def main():
    import psycopg

    names = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    with psycopg.connect(URL, autocommit=True) as admin:
        urls = [_schema_url(admin, name) for name in names]
        try:
            print(f"intake (postgresql): {COUNT:,} single-call reports, one transaction each")
            figures = {"record_failure": ours(urls[0]), "report_failure": public(urls[1]), "plain psycopg": plain(urls[2])}
        finally:
            for name in names:
                admin.execute(f"DROP SCHEMA {name} CASCADE")
    shown = {f"{name} /s": round(rate) for name, (rate, _, _) in figures.items()}
    shown["ratio"] = round(figures["record_failure"][0] / figures["plain psycopg"][0], 2)
    for name, (_, client, server) in figures.items():
        shown[f"{name} CPU µs/report client / server"] = f"{client:.0f} / {'-' if server is None else f'{server:.0f}'}"
    shown["load"] = round(os.getloadavg()[0], 1)
    emit("intake_postgres", shown, ">= 3,000 failures/s single-call")


if __name__ == "__main__":
    main()
