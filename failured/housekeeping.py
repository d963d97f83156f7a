"""Daily housekeeping: finished tasks and delivered notifications older than the retention go."""

import logging

from .clock import to_db_time
from .store import FINAL_STATUSES

log = logging.getLogger("failured.housekeeping")

BATCH = 5000  # small deletes keep the write lock short for reporters


def _delete_in_batches(store, table, where, params):
    total = 0
    while True:
        with store.transaction():
            cursor = store.db.execute_sql(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT {BATCH})", params)
        total += cursor.rowcount
        if cursor.rowcount < BATCH:
            return total


def purge(store, now, retention_days):
    """Delete what is older than ``retention_days``; returns counts per table."""
    cutoff = to_db_time(now - retention_days * 86400)
    statuses = ",".join("?" * len(FINAL_STATUSES))
    tasks = _delete_in_batches(store, "tasks", f"status IN ({statuses}) AND finished_at < ?", (*FINAL_STATUSES, cutoff))
    notifications = _delete_in_batches(store, "notifications", "status != 'pending' AND created_at < ?", (cutoff,))
    log.info("housekeeping: removed %d tasks and %d notifications older than %d days", tasks, notifications,
             retention_days)
    return {"tasks": tasks, "notifications": notifications}
