"""The outbox: every notification is first a row, written in the caller's transaction."""

from ..store import Notification

PENDING = "pending"


def enqueue(now, audience, kind, title, body, task=None, category=None, task_type=None, fingerprint=None):
    """Insert one pending notification row; call inside the transaction of the change that caused it."""
    return Notification.insert(
        task=task.id if task is not None else None, created_at=now, audience=audience, kind=kind,
        category=category, task_type=task_type if task_type is not None else getattr(task, "task_type", None),
        fingerprint=fingerprint if fingerprint is not None else getattr(task, "fingerprint", None),
        title=title, body=body, status=PENDING, next_attempt_at=now,
    ).execute()
