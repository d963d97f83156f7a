"""The outbox: every notification is first rows, written in the caller's transaction.

One row per channel the routes choose (``log`` always), so each channel's
delivery, rate limit and final state are its own.
"""

from ..store import Notification
from .routing import channels_for

PENDING, SENT, MERGED, SUPPRESSED, FAILED = "pending", "sent", "merged", "suppressed", "failed"


def enqueue(snapshot, now, audience, kind, title, body, task=None, category=None, task_type=None,
            fingerprint=None):
    """Insert pending rows for every routed channel; call inside the transaction of the change that caused it."""
    task_type = task_type if task_type is not None else getattr(task, "task_type", None)
    fingerprint = fingerprint if fingerprint is not None else getattr(task, "fingerprint", None)
    rows = [dict(task=task.id if task is not None else None, created_at=now, audience=audience, kind=kind,
                 category=category, task_type=task_type, fingerprint=fingerprint, title=title, body=body,
                 status=PENDING, channel=channel, next_attempt_at=now)
            for channel in channels_for(snapshot.routes, audience, category, task_type)]
    Notification.insert_many(rows).execute()
    return len(rows)
