"""Housekeeping's deletes: old finished tasks and delivered notifications, in small batches."""

from ..states import FINAL_STATUSES, NotificationStatus

BATCH = 5000  # small deletes keep the write lock short for reporters


def _delete_in_batches(store, table, where, params):
    total = 0
    while True:
        with store.transaction():
            deleted = store.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT {BATCH})",
                params).rowcount
        total += deleted
        if deleted < BATCH:
            return total


def purge_finished(store, cutoff):
    """Delete finished tasks (finished before ``cutoff``) and ended notifications (created before it):
    {"tasks": n, "notifications": n}."""
    cutoff = store.time(cutoff)
    statuses = ", ".join("?" * len(FINAL_STATUSES))
    tasks = _delete_in_batches(store, "tasks", f"status IN ({statuses}) AND finished_at < ?", (*FINAL_STATUSES, cutoff))
    notifications = _delete_in_batches(store, "notifications", "status != ? AND created_at < ?",
                                       (NotificationStatus.PENDING, cutoff))
    return {"tasks": tasks, "notifications": notifications}
