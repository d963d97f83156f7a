"""The vocabularies of failured's state machines, in one place: code and SQL use these, never literals.

Each is a ``StrEnum``: a member is its text (``TaskStatus.NEW == "new"``), so it is stored,
compared and bound as a query parameter as that text, in SQLite and PostgreSQL alike.
"""

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is. ``new`` waits for the daemon; the last five are final."""

    NEW = "new"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RECOVERED = "recovered"
    NOTIFIED = "notified"
    EXHAUSTED = "exhausted"
    MANUAL = "manual"
    RESOLVED = "resolved"


FINAL_STATUSES = (TaskStatus.RECOVERED, TaskStatus.NOTIFIED, TaskStatus.EXHAUSTED, TaskStatus.MANUAL,
                  TaskStatus.RESOLVED)
OPEN_STATUSES = (TaskStatus.NEW, TaskStatus.SCHEDULED, TaskStatus.RUNNING)


class NotificationStatus(StrEnum):
    """An outbox row: ``pending`` until its channel sent it, merged it into a digest, suppressed it or gave up."""

    PENDING = "pending"
    SENT = "sent"
    MERGED = "merged"
    SUPPRESSED = "suppressed"
    FAILED = "failed"


class BreakerState(StrEnum):
    """A task type's circuit breaker: closed -> open -> half_open (one probe) -> closed or open."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class DecisionAction(StrEnum):
    """What the engine does with a task after a (re)classification."""

    RETRY = "retry"
    NOTIFY_ADMIN = "notify_admin"
    NOTIFY_USER = "notify_user"
    EXHAUSTED = "exhausted"
    MANUAL = "manual"


def sql_list(values):
    """``'a', 'b'`` for an ``IN (...)`` of a fixed vocabulary in a view (its members are plain words)."""
    return ", ".join(f"'{value}'" for value in values)
