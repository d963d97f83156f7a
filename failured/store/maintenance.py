"""Housekeeping's deletes: old finished tasks, ended notifications and hourly success tallies, in small batches."""

from ..states import FINAL_STATUSES, NotificationStatus, TaskStatus
from .tasks import success_hour

BATCH = 1000  # small deletes keep the write lock short for reporters (a task takes its events with it)

# A `manual` task waits for an operator (a handler to configure, then `requeue`, or `resolve`): kept however old.
PURGED_STATUSES = tuple(status for status in FINAL_STATUSES if status != TaskStatus.MANUAL)

# What housekeeping deletes, in this order: a table's batches, then the next table's.
PURGED = ("tasks", "notifications", "success_counts")


def _batch_statement(what, limit):
    statuses = ", ".join("?" * len(PURGED_STATUSES))
    if what == "tasks":
        return (f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE status IN ({statuses}) "
                f"AND finished_at < ? LIMIT {int(limit)})")
    if what == "notifications":
        return (f"DELETE FROM notifications WHERE id IN (SELECT id FROM notifications WHERE status != ? "
                f"AND created_at < ? LIMIT {int(limit)})")
    return (f"DELETE FROM success_counts WHERE (task_type, hour) IN (SELECT task_type, hour FROM success_counts "
            f"WHERE hour < ? LIMIT {int(limit)})")


def purge_batch(store, what, cutoff, limit=BATCH):
    """Delete up to ``limit`` rows of ``what`` (one of PURGED) older than ``cutoff``, in one transaction;
    returns how many went (fewer than ``limit``: that table is done)."""
    if what == "tasks":
        params = (*PURGED_STATUSES, store.time(cutoff))
    elif what == "notifications":
        params = (NotificationStatus.PENDING, store.time(cutoff))
    else:
        params = (success_hour(cutoff),)
    with store.transaction():
        return store.execute(_batch_statement(what, limit), params).rowcount
