"""The outbox: every notification is first rows, written in the caller's transaction.

One row per channel the routes choose (``log`` always), so each channel's
delivery, rate limit and final state are its own.
"""

from ..clock import to_db_time
from ..store import Notification
from .routing import channels_for

PENDING, SENT, MERGED, SUPPRESSED, FAILED = "pending", "sent", "merged", "suppressed", "failed"
_INSERT = ("INSERT INTO notifications (task_id, created_at, audience, kind, category, task_type, fingerprint, title,"
           " body, status, channel, attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, 0, ?)")


def enqueue(snapshot, now, audience, kind, title, body, task=None, category=None, task_type=None,
            fingerprint=None):
    """Insert pending rows for every routed channel; call inside the transaction of the change that caused it."""
    task_type = task_type if task_type is not None else getattr(task, "task_type", None)
    fingerprint = fingerprint if fingerprint is not None else getattr(task, "fingerprint", None)
    task_id = task.id if task is not None else None
    stamp = to_db_time(now)
    rows = [(task_id, stamp, audience, kind, category, task_type, fingerprint, title, body, channel, stamp)
            for channel in channels_for(snapshot.routes, audience, category, task_type)]
    # Plain SQL: this runs for every notified failure, inside the engine's transaction.
    Notification._meta.database.cursor().executemany(_INSERT, rows)
    return len(rows)
