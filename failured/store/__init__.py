"""The store: the one layer that writes SQL, over SQLite (a file, the default) or PostgreSQL (a URL).

``database`` opens a store and owns transactions and migrations; ``schema`` has the tables;
``tasks``, ``outbox``, ``breakers``, ``aggregates``, ``maintenance`` and ``queries`` are the
statements, each taking the store it runs on.
"""

from ..states import FINAL_STATUSES, TaskStatus
from .database import (BUSY_TIMEOUT_SECONDS, DISK_FLOOR_BYTES, PRAGMAS, MissingStoreError, PostgresStore, Store,
                       StoreOpenError, StoreUnavailableError, is_url, mask_url, moved_into, open_store,
                       refuse_if_a_daemon_runs, translate_error)
from .outbox import outbox_counts, outbox_rows, send_again
from .queries import (LIST_COLUMNS, LIST_ERROR_CHARS, LIST_TAIL_CHARS, LIST_LIMIT_MAX, MAX_GREP_CHARS, failures_by_period, fingerprint_samples,
                      like_literal, list_tasks, recent_messages, unknown_groups)
from .schema import (MIGRATIONS, MODELS, SCHEMA_VERSION, BaseModel, Breaker, DaemonState, Label, Notification,
                     SchemaInfo, SuccessCount, Task, TaskEvent, UtcTimeField, epoch)

# The task statuses by their old names (the states module is where they live).
NEW, SCHEDULED, RUNNING = TaskStatus.NEW, TaskStatus.SCHEDULED, TaskStatus.RUNNING
RECOVERED, NOTIFIED, EXHAUSTED, MANUAL, RESOLVED = (TaskStatus.RECOVERED, TaskStatus.NOTIFIED, TaskStatus.EXHAUSTED,
                                                   TaskStatus.MANUAL, TaskStatus.RESOLVED)

__all__ = [
    "BUSY_TIMEOUT_SECONDS", "DISK_FLOOR_BYTES", "PRAGMAS", "MissingStoreError", "PostgresStore", "Store",
    "StoreOpenError", "StoreUnavailableError", "is_url", "moved_into",
    "mask_url", "open_store", "refuse_if_a_daemon_runs", "translate_error", "outbox_counts", "outbox_rows", "send_again", "LIST_COLUMNS", "LIST_ERROR_CHARS", "LIST_TAIL_CHARS",
    "LIST_LIMIT_MAX", "MAX_GREP_CHARS", "failures_by_period", "fingerprint_samples", "like_literal", "list_tasks",
    "recent_messages", "unknown_groups", "MIGRATIONS", "MODELS", "SCHEMA_VERSION", "BaseModel", "Breaker",
    "DaemonState", "Label", "Notification", "SchemaInfo", "SuccessCount", "Task", "TaskEvent", "UtcTimeField", "epoch",
    "FINAL_STATUSES", "TaskStatus", "NEW", "SCHEDULED", "RUNNING", "RECOVERED", "NOTIFIED", "EXHAUSTED", "MANUAL",
    "RESOLVED",
]
