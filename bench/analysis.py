"""The analysis report over 1,000,000 failures in 7 days: seconds to compute (target <= 3 s).

The database is built once in a temporary file (plain executemany), then
``analysis_report`` runs over it as the daemon would.
"""

import random
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit

from failured.clock import to_db_time
from failured.config import load_config
from failured.fingerprint import fingerprint
from failured.store import open_store

ROWS = 1_000_000
DAYS = 7
CATEGORIES = [("recoverable_network", 0.40), ("recoverable_temporary", 0.20), ("recoverable_system", 0.05),
              ("unrecoverable_data", 0.15), ("unrecoverable_config", 0.05), ("unrecoverable_business", 0.10),
              ("unknown", 0.05)]
TASK_TYPES = ["tracking_update", "receipt_generation", "screenshot_capture", "order_sync", "payment_processing"]


def task_rows(now):
    """The benchmark's tasks, times as epochs: (type, source, status, category, matched_by, message,
    template, fingerprint, attempts, created, updated, finished, next retry)."""
    rng = random.Random(11)
    names, weights = zip(*CATEGORIES)
    templates = {name: [fingerprint(f"{name} failure kind {word} {i}") + (f"{name} failure kind {word} {i}",)
                        for i, word in enumerate(["alpha", "beta", "gamma", "delta", "omega"] * 60)]
                 for name in names}
    for _ in range(ROWS):
        category = rng.choices(names, weights)[0]
        template, fp, message = rng.choice(templates[category])
        created = now - rng.random() * DAYS * 86400
        if category.startswith("recoverable"):
            status = rng.choices(["recovered", "exhausted", "scheduled"], [0.8, 0.15, 0.05])[0]
        else:
            status = "notified"
        finished = created + rng.random() * 600 if status in ("recovered", "exhausted", "notified") else None
        due = now + rng.random() * 3600 if status == "scheduled" else None
        yield (rng.choice(TASK_TYPES), "python", status, category, "pattern", message, template, fp,
               rng.randint(0, 3), created, created, finished, due)


def build(path, now):
    store = open_store(path)
    batch = []
    for row in task_rows(now):
        batch.append(row[:9] + tuple(to_db_time(t) for t in row[9:]))
        if len(batch) == 50_000:
            _insert(store, batch)
            batch = []
    _insert(store, batch)
    store.db.execute_sql("ANALYZE")
    store.close()


def _insert(store, rows):
    with store.transaction():
        store.db.cursor().executemany(
            "INSERT INTO tasks (task_type, source, status, category, matched_by, error_message, error_template,"
            " fingerprint, attempts, created_at, updated_at, finished_at, next_retry_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def main():
    from failured.analysis import analysis_report

    now = time.time()
    snapshot = load_config(REPO / "config")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "analysis.db"
        started = time.perf_counter()
        build(path, now)
        print(f"analysis: built {ROWS:,} failures over {DAYS} days in {time.perf_counter() - started:.1f}s")
        store = open_store(path)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            report = analysis_report(store, snapshot, now, DAYS)
            timings.append(time.perf_counter() - started)
        store.close()
    assert report["total_failures"] == ROWS, report["total_failures"]
    emit("analysis", {"rows": ROWS, "best s": round(min(timings), 2), "worst s": round(max(timings), 2),
                      "top fingerprints": len(report["top_fingerprints"]),
                      "unknown templates": len(report["unknown_templates"])}, "<= 3 s for 1,000,000 failures")


if __name__ == "__main__":
    sys.exit(main())
