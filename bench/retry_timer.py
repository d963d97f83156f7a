"""100,000 pending retries due over 60 seconds, no-op handler: lateness, throughput, peak RSS.

``--store postgresql`` (or BENCH_STORE=postgresql) runs it on a fresh schema of FAILURE_TEST_POSTGRES_URL.
"""

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit, percentile
from pgschema import fresh_schema, store_kind

sys.path.insert(0, str(Path(__file__).resolve().parent))

import noop_handler

from failured.clock import to_db_time
from failured.daemon import Daemon
from failured.settings import Settings
from failured.store import open_store

COUNT = 100_000
SPREAD_SECONDS = 60.0
LEAD_SECONDS = 3.0  # time to start the daemon before the first retry is due


def make_config(directory):
    shutil.copytree(REPO / "config" / "patterns", directory / "patterns")
    (directory / "failured.toml").write_text(
        '[breaker]\nfailures = 1000000\n\n[task_types.bench.handler]\nkind = "python"\n'
        'target = "noop_handler:run"\ntimeout = 10\n', encoding="utf-8")


def make_tasks(db, start):
    store = open_store(db)
    step = SPREAD_SECONDS / COUNT
    rows = []
    for i in range(COUNT):
        due = start + i * step
        created = to_db_time(start - 10)
        rows.append(("bench", "python", "scheduled", "recoverable_network", "connection timeout",
                     f'{{"due": {due!r}}}', 0, 5, to_db_time(due), created, created))
    with store.transaction():
        store.executemany(
            "INSERT INTO tasks (task_type, source, status, category, error_message, payload, attempts,"
            " max_attempts, next_retry_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    if store.dialect == "postgresql" and os.environ.get("BENCH_SETTLE", "1") == "1":
        # The rows as a running daemon leaves them (its decisions wrote them over time): hint bits set and
        # statistics taken. Otherwise the first 20-30 s measure the server's first touch of 100,000 rows loaded
        # a moment before, not the timer. BENCH_SETTLE=0 measures that too.
        store.db.execute_sql("VACUUM (ANALYZE) tasks")
    store.close()


def main(kind):
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as stack:
        directory = Path(directory)
        db = stack.enter_context(fresh_schema()) if kind == "postgresql" else directory / "bench.db"
        make_config(directory / "config")
        start = time.time() + LEAD_SECONDS + (25 if kind == "postgresql" else 10)
        # Made in a child process, so this one's peak RSS is the daemon's alone.
        subprocess.run([sys.executable, __file__, "--make", str(db), repr(start)], check=True)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        settings = Settings(db=db if kind == "postgresql" else Path(db), config_dir=directory / "config",
                            log_dir=directory / "logs", report_dir=directory / "reports", log_level="WARNING",
                            http_addr="off",  # no API: a daemon already on its port would stop the bench
                            # FAILURE_RETRY_CONCURRENCY=N: N retries at once
                            retry_concurrency=int(os.environ.get("FAILURE_RETRY_CONCURRENCY",
                                                                 Settings.retry_concurrency)))
        print(f"retry_timer ({kind}): {COUNT:,} retries due over {SPREAD_SECONDS:g}s, python no-op handler, "
              f"concurrency {settings.retry_concurrency}")
        daemon = Daemon(settings).start()
        ready_before_due = start - time.time()  # < 0: the machine was too busy to start in time; discard the run
        deadline = start + SPREAD_SECONDS + 60
        while len(noop_handler.LATENESS) < COUNT and time.time() < deadline:
            daemon.scheduler.run_pending()
            time.sleep(0.2)
        finished = time.time()
        daemon.stop()
        lateness_ms = [x * 1000 for x in noop_handler.LATENESS]
        ran = len(lateness_ms)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # The retries ran about in due order: each twelfth of them is 5 s of due times (where the lateness was).
        twelfth = max(1, ran // 12)
        by_period = " ".join(f"{percentile(lateness_ms[i:i + twelfth], 0.99):.0f}" for i in range(0, ran, twelfth))
        emit("retry_timer" + ("_postgres" if kind == "postgresql" else ""), {
            "retries run": ran,
            "retries/s": round(ran / (finished - start)),
            "lateness p50 ms": round(percentile(lateness_ms, 0.50), 1),
            "lateness p99 ms": round(percentile(lateness_ms, 0.99), 1),
            "lateness max ms": round(max(lateness_ms), 1),
            "lateness p99 ms by 5 s of due": by_period,
            "load (1 min) at the end": round(os.getloadavg()[0], 1),
            "peak RSS MB": round(rss_mb, 1),
            "daemon ready before the first due s": round(ready_before_due, 1),
            "RSS before daemon MB": round(rss_before / 1024, 1),
        }, "p99 lateness <= 50 ms, RSS <= 100 MB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make"]:
        make_tasks(sys.argv[2] if "://" in sys.argv[2] else Path(sys.argv[2]), float(sys.argv[3]))
    else:
        main(store_kind())
