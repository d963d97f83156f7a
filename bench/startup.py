"""Time from starting `failured run` to READY=1 (sd_notify) with 1,000,000 tasks in the database.

``--store postgresql`` (or BENCH_STORE=postgresql) loads the tasks with COPY into a fresh schema of
FAILURE_TEST_POSTGRES_URL instead (dropped after).
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import analysis as analysis_bench
from common import REPO, emit, percentile
from pgschema import fresh_schema, store_kind

RUNS = 5


def time_to_ready(directory, db):
    notify_path = str(directory / "notify.sock")
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(60)
    env = {**os.environ, "FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(REPO / "config"),
           "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_REPORT_DIR": str(directory / "reports"),
           "FAILURE_LOG_LEVEL": "WARNING", "NOTIFY_SOCKET": notify_path}
    started = time.perf_counter()
    daemon = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=directory)
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        return time.perf_counter() - started
    finally:
        daemon.terminate()
        daemon.wait(60)
        sock.close()


def build_postgres(url, now):
    """The same tasks as analysis.build, with COPY (as bench/analysis_postgres.py loads them)."""
    import psycopg
    from analysis_postgres import COLUMNS, rows

    from failured.store import open_store

    store = open_store(url)
    with psycopg.connect(url) as connection:
        with connection.cursor().copy(f"COPY tasks ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows(now):
                copy.write_row(row)
        connection.execute("ANALYZE tasks")
    scheduled = store.scalar("SELECT count(*) FROM tasks WHERE status = 'scheduled'")
    store.close()
    return scheduled


def main(kind):
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as stack:
        directory = Path(directory)
        if kind == "postgresql":
            db = stack.enter_context(fresh_schema())
            scheduled = build_postgres(db, time.time())
        else:
            db = directory / "startup.db"
            analysis_bench.build(db, time.time())
            scheduled = subprocess.run(
                ["sqlite3", str(db), "SELECT count(*) FROM tasks WHERE status = 'scheduled'"],
                check=False, capture_output=True, text=True).stdout.strip() if shutil.which("sqlite3") else "?"
        print(f"startup ({kind}): {analysis_bench.ROWS:,} tasks ({scheduled} scheduled retries to load into the heap)")
        timings = [time_to_ready(directory, db) for _ in range(RUNS)]
    emit("startup" + ("_postgres" if kind == "postgresql" else ""), {"rows": analysis_bench.ROWS, "READY p50 s": round(percentile(timings, 0.5), 2),
                     "READY max s": round(max(timings), 2)}, "<= 2 s to READY with 1,000,000 rows")


if __name__ == "__main__":
    main(store_kind())
