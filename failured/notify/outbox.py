"""The outbox: every notification is first rows, written in the caller's transaction.

One row per channel the routes choose (``log`` always), so each channel's
delivery, rate limit and final state are its own.
"""

from ..states import NotificationStatus
from ..store import outbox as rows
from .routing import channels_for

PENDING, SENT, MERGED, SUPPRESSED, FAILED = (NotificationStatus.PENDING, NotificationStatus.SENT, NotificationStatus.MERGED,
                                             NotificationStatus.SUPPRESSED, NotificationStatus.FAILED)
# A row's fingerprint says what it is about: a task's error, or (for an alert about a channel, such as its
# notification delay) "channel:NAME", so the alert names the channel without passing it off as a task type.
CHANNEL_SUBJECT = "channel:"
UNDELIVERABLE_KIND = "undeliverable"  # the notice that a notification a channel refused on its own was given up


def about_channel(name):
    """The fingerprint of a notice about channel ``name``."""
    return f"{CHANNEL_SUBJECT}{name}"


def notice_fields(row):
    """What a channel's JSON carries besides the words: the task's fields, or the channel a notice is about."""
    fields = {"notification_id": row.id, "task_id": row.task_id, "category": row.category,
              "task_type": row.task_type, "fingerprint": row.fingerprint}
    if row.task_id is None and (row.fingerprint or "").startswith(CHANNEL_SUBJECT):
        fields.update(fingerprint=None, channel=row.fingerprint[len(CHANNEL_SUBJECT):])
    return fields


def enqueue(store, snapshot, now, audience, kind, title, body, task=None, category=None, task_type=None,
            fingerprint=None):
    """Insert pending rows for every routed channel; call inside the transaction of the change that caused it."""
    task_type = task_type if task_type is not None else getattr(task, "task_type", None)
    fingerprint = fingerprint if fingerprint is not None else getattr(task, "fingerprint", None)
    task_id = task.id if task is not None else None
    channels = channels_for(snapshot.routes, audience, category, task_type)
    return rows.insert_pending(store, now, task_id, audience, kind, category, task_type, fingerprint, title, body,
                               channels)
