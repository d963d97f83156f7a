"""The processing report after a flood: a bounded list of the tasks decided last, totals over every task, and a
bounded amount of memory to build it (on SQLite and on PostgreSQL)."""

import json
import tracemalloc

from failured import reports
from failured.store import Task
from failured.store import tasks as rows

T0 = 1_700_000_000.0


def flood(store, count):
    """``count`` tasks of two types, each notified (the odd ones after a scheduled retry), in a few statements."""
    with store.transaction():
        for start in range(0, count, 1000):  # PostgreSQL takes at most 65,535 parameters a statement
            Task.insert_many([{"task_type": "sync" if i % 3 else "receipt", "source": "test", "status": "notified",
                               "category": "recoverable_network" if i % 2 else "unknown",
                               "error_message": f"flood {i}", "created_at": T0, "updated_at": T0}
                              for i in range(start, min(count, start + 1000))]).bind(store.db).execute()
        ids = [row[0] for row in store.rows("SELECT id FROM tasks ORDER BY id")]
        events = [rows.event_row(task_id, T0, "retry_scheduled", "scheduled", "recoverable_network", 1, 30.0)
                  for task_id in ids if task_id % 2]
        events += [rows.event_row(task_id, T0 + 1, "notified", "notified", "recoverable_network" if task_id % 2
                                  else "unknown", 0, audience="admin") for task_id in ids]
        rows.add_events(store, events)
    return ids


def test_a_flood_lists_the_tasks_decided_last_and_counts_every_task(store):
    ids = flood(store, reports.RESULTS_LIMIT + 250)
    report = reports.processing_report(store, T0 + 60, "en")
    assert report["total_processed"] == len(ids) and report["stats"]["scanned"] == len(ids)
    assert len(report["results"]) == reports.RESULTS_LIMIT and report["results_omitted"] == 250
    assert [r["task_id"] for r in report["results"]] == sorted(ids, reverse=True)[:reports.RESULTS_LIMIT]
    assert all(r["action_taken"] == "notify_admin" for r in report["results"])
    summary = report["summary"]
    assert summary["by_decision"] == {"notified": len(ids)}
    assert sum(summary["by_task_type"].values()) == sum(summary["by_category"].values()) == len(ids)
    assert summary["by_category"] == {"recoverable_network": sum(1 for i in ids if i % 2),
                                      "unknown": sum(1 for i in ids if not i % 2)}
    assert reports.processing_report(store, T0 + 61, "en")["total_processed"] == 0  # every task reported once


def test_the_report_of_a_big_flood_stays_small_in_memory_and_on_disk(store, tmp_path):
    flood(store, 20_000)
    tracemalloc.start()
    try:
        report = reports.processing_report(store, T0 + 60, "en")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report["total_processed"] == 20_000
    assert peak < 4 * 1024 * 1024, f"{peak:,} bytes at the peak"  # before: ~30 MB, growing with the tasks
    path = reports.write_report(tmp_path, reports.PROCESSING, report, T0 + 60)
    assert path.stat().st_size < 512 * 1024
    assert json.loads(path.read_text())["results_omitted"] == 20_000 - reports.RESULTS_LIMIT
