"""The outbox: every notification is first rows, written in the caller's transaction.

One row per channel the routes choose (``log`` always), so each channel's
delivery, rate limit and final state are its own.
"""

from ..states import NotificationStatus
from ..store import outbox as rows
from .routing import channels_for

PENDING, SENT, MERGED, SUPPRESSED, FAILED = (NotificationStatus.PENDING, NotificationStatus.SENT, NotificationStatus.MERGED,
                                             NotificationStatus.SUPPRESSED, NotificationStatus.FAILED)


def enqueue(store, snapshot, now, audience, kind, title, body, task=None, category=None, task_type=None,
            fingerprint=None):
    """Insert pending rows for every routed channel; call inside the transaction of the change that caused it."""
    task_type = task_type if task_type is not None else getattr(task, "task_type", None)
    fingerprint = fingerprint if fingerprint is not None else getattr(task, "fingerprint", None)
    task_id = task.id if task is not None else None
    channels = channels_for(snapshot.routes, audience, category, task_type)
    return rows.insert_pending(store, now, task_id, audience, kind, category, task_type, fingerprint, title, body,
                               channels)
