"""Failures recorded per second, single calls: record_failure (a store in hand), report_failure (the
public call: FAILURE_DB from the environment) and plain sqlite3 with the same statements."""

import os
import sqlite3
import tempfile
import time
from pathlib import Path

from common import emit

from failured.intake import record_failure, report_failure
from failured.store import PRAGMAS, open_store

COUNT = 20_000


def timed(loop):
    """(calls/s, CPU µs a call) of ``loop()``, which makes COUNT calls: the CPU figure says more than the
    rate on a machine other work loads."""
    start, cpu = time.perf_counter(), time.process_time()
    loop()
    return COUNT / (time.perf_counter() - start), (time.process_time() - cpu) / COUNT * 1e6


def ours(path):
    store = open_store(path)

    def loop():
        for i in range(COUNT):
            record_failure(store, "tracking_update", f"connection timeout to api {i}", payload={"order_id": i})
    figures = timed(loop)
    store.close()
    return figures


def public(path):
    os.environ["FAILURE_DB"] = str(path)
    os.environ.setdefault("FAILURE_CONFIG_DIR", str(path.parent / "config"))
    report_failure("tracking_update", "warm-up")

    def loop():
        for i in range(COUNT):
            report_failure("tracking_update", f"connection timeout to api {i}", payload={"order_id": i})
    return timed(loop)


def plain(path):
    open_store(path).close()  # same schema and indexes
    con = sqlite3.connect(path, isolation_level=None)
    for name, value in PRAGMAS:
        con.execute(f"PRAGMA {name} = {value}")
    start, cpu = time.perf_counter(), time.process_time()
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
    figures = COUNT / (time.perf_counter() - start), (time.process_time() - cpu) / COUNT * 1e6
    con.close()
    return figures


def main():
    with tempfile.TemporaryDirectory() as directory:
        print(f"intake: {COUNT:,} single-call reports, one transaction each (WAL, synchronous=NORMAL)")
        (ours_rate, ours_cpu), (public_rate, public_cpu), (plain_rate, plain_cpu) = (
            ours(Path(directory) / "ours.db"), public(Path(directory) / "public.db"), plain(Path(directory) / "plain.db"))
    emit("intake", {"record_failure /s": round(ours_rate), "report_failure /s": round(public_rate),
                    "plain sqlite3 /s": round(plain_rate), "ratio": round(ours_rate / plain_rate, 2),
                    "CPU µs/call: record / report / plain": f"{ours_cpu:.0f} / {public_cpu:.0f} / {plain_cpu:.0f}",
                    "load": round(os.getloadavg()[0], 1)},
         ">= 5,000 failures/s single-call")


if __name__ == "__main__":
    main()
