"""The analysis report over 1,000,000 failures in 7 days on PostgreSQL: seconds to compute (target <= 3 s).

The same rows as bench/analysis.py, loaded with COPY into a schema of their own (dropped after)
on FAILURE_TEST_POSTGRES_URL (default postgresql://root@127.0.0.1:5432/test); then
``analysis_report`` runs over them as the daemon would.
"""

import os
import sys
import time
import uuid

from analysis import DAYS, ROWS, task_rows
from common import REPO, emit

from failured.config import load_config
from failured.store import open_store

URL = os.environ.get("FAILURE_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
COLUMNS = ("task_type", "source", "status", "category", "matched_by", "error_message", "error_template", "fingerprint",
           "attempts", "created_at", "updated_at", "finished_at", "next_retry_at")


def rows(now):
    """The rows bench/analysis.py builds, with times as timestamptz values."""
    from datetime import datetime, timezone

    def at(epoch):
        return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)

    for row in task_rows(now):
        yield row[:9] + tuple(at(t) for t in row[9:])


def _server_cpu():
    """CPU seconds used so far by the local postgres processes, ended ones included (the server's share of
    the work, whatever the load of the machine makes the wall time); 0 for a remote server."""
    total = 0
    for stat in os.listdir("/proc"):
        if not stat.isdigit():
            continue
        try:
            with open(f"/proc/{stat}/stat") as handle:
                fields = handle.read().rsplit(")", 1)
        except OSError:
            continue
        if fields[0].endswith("(postgres"):
            parts = fields[1].split()
            # utime + stime, plus cutime + cstime: parallel workers end with the query, and their time
            # goes to the postmaster that reaps them (so does a backend's that closes meanwhile: noise)
            total += sum(int(value) for value in parts[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def main():
    import psycopg

    from failured.analysis import analysis_report

    # KEEP_SCHEMA=name builds into that schema once and keeps it (later runs reuse it: the build takes minutes).
    keep = os.environ.get("KEEP_SCHEMA")
    schema = keep or f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    url = f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{schema}"
    try:
        snapshot = load_config(REPO / "config")
        store = open_store(url)
        built = store.scalar("SELECT count(*) FROM tasks") == ROWS
        now = float(store.get_state("bench_now", time.time()))
        started = time.perf_counter()
        if not built:
            with psycopg.connect(url) as connection:
                with connection.cursor().copy(f"COPY tasks ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows(now):
                        copy.write_row(row)
                connection.commit()
                connection.autocommit = True  # VACUUM runs outside a transaction
                # what autovacuum does after a bulk insert (PostgreSQL 13+): the report reads a settled table
                connection.execute("VACUUM ANALYZE tasks")
            store.set_state("bench_now", repr(now), now)
            print(f"analysis (postgresql): built {ROWS:,} failures over {DAYS} days "
                  f"in {time.perf_counter() - started:.1f}s")
        timings, cpu = [], []
        for _ in range(3):
            started, server, client = time.perf_counter(), _server_cpu(), time.process_time()
            report = analysis_report(store, snapshot, now, DAYS)
            timings.append(time.perf_counter() - started)
            cpu.append(_server_cpu() - server + time.process_time() - client)
        store.close()
    finally:
        if not keep:
            with psycopg.connect(URL, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    assert report["total_failures"] == ROWS, report["total_failures"]
    emit("analysis_postgres", {"rows": ROWS, "best s": round(min(timings), 2), "worst s": round(max(timings), 2),
                               "best cpu s (server + client)": round(min(cpu), 2),
                               "top fingerprints": len(report["top_fingerprints"]),
                               "unknown templates": len(report["unknown_templates"])},
         "<= 3 s for 1,000,000 failures")


if __name__ == "__main__":
    sys.exit(main())
