"""The operator's views of the store: listing tasks and the console's questions.

Without ``store`` these reach the store opened last (the older callers' way); with it, that store.
"""


import time

from . import aggregates
from ._peewee import pw
from .schema import Task

LIST_LIMIT_MAX = 500
MAX_GREP_CHARS = 200
LIST_ERROR_CHARS = 300  # of the error's head a listed task carries, and at most of its summary
# ... and of its tail: enough for a traceback's raised exception whose words run long (an HTTP body quoted)
LIST_TAIL_CHARS = 2000
LIST_COLUMNS = (Task.id, Task.task_type, Task.ref, Task.status, Task.category, Task.matched_by, Task.error_type,
                Task.attempts, Task.max_attempts, Task.next_retry_at, Task.created_at, Task.updated_at,
                pw.fn.substr(Task.error_message, 1, LIST_ERROR_CHARS).alias("error"),
                # The last characters too (a traceback's raised exception), or the whole text when it is shorter
                # (a CASE: SQLite counts a negative substr start from the end, PostgreSQL from before the start).
                pw.Case(None, [(pw.fn.length(Task.error_message) <= LIST_TAIL_CHARS, Task.error_message)],
                        pw.fn.substr(Task.error_message, pw.fn.length(Task.error_message) - (LIST_TAIL_CHARS - 1)))
                .alias("error_tail"))


def _bound(query, store):
    return query.bind(store.db) if store is not None else query


def _dialect(store):
    if store is not None:
        return store.dialect
    return "postgresql" if isinstance(Task._meta.database, pw.PostgresqlDatabase) else "sqlite"


def like_literal(text):
    r"""``text`` as a LIKE operand that matches it literally anywhere (``%``, ``_`` and ``\`` escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_tasks(statuses=(), categories=(), task_types=(), since_at=None, grep=None, before_id=None, limit=50,
               store=None):
    """Tasks newest first (by id, a stable order), at most ``limit``; ``before_id`` is the page cursor.

    ``grep`` is a literal, case-insensitive (ASCII) substring of the error text: LIKE (ILIKE on PostgreSQL,
    whose LIKE minds case) with its wildcards escaped, so a user's text is never a pattern and costs at
    most one scan.
    """
    query = Task.select(*LIST_COLUMNS)
    if statuses:
        query = query.where(Task.status.in_(list(statuses)))
    if categories:
        query = query.where(Task.category.in_(list(categories)))
    if task_types:
        query = query.where(Task.task_type.in_(list(task_types)))
    if since_at is not None:
        query = query.where(Task.created_at >= since_at)
    if grep:
        like = "LIKE" if _dialect(store) == "sqlite" else "ILIKE"
        query = query.where(pw.NodeList((Task.error_message, pw.SQL(like), like_literal(grep[:MAX_GREP_CHARS]),
                                         pw.SQL("ESCAPE '\\'"))))
    if before_id is not None:
        query = query.where(Task.id < before_id)
    limit = max(1, min(int(limit), LIST_LIMIT_MAX + 1))  # one more tells a caller another page exists
    return list(_bound(query.order_by(Task.id.desc()).limit(limit), store).dicts())


def failures_by_period(start, width, store):
    """[(period, category, count)] of tasks created since ``start`` (epoch, on an hour), per hour (width 13)
    or day (10): summed from failure_counts (hours x categories rows, whatever the table holds)."""
    start_hour = time.strftime("%Y-%m-%d %H", time.gmtime(start))
    found = {}
    for hour, category, count in aggregates.failures_by_hour(store, start_hour):
        key = (hour[:width], category)
        found[key] = found.get(key, 0) + count
    return [(period, category, count) for (period, category), count in found.items()]


def unknown_groups(start, limit=20, store=None):
    """[(fingerprint, count, newest id)] of ``unknown`` tasks created since ``start``, most frequent first."""
    count = pw.fn.COUNT(Task.id)
    return list(_bound(Task.select(Task.fingerprint, count, pw.fn.MAX(Task.id))
                       .where(Task.category == "unknown", Task.created_at >= start)
                       .group_by(Task.fingerprint).order_by(count.desc(), Task.fingerprint).limit(limit),
                       store).tuples())


def fingerprint_samples(fingerprint, limit=3, scan=100, store=None):
    """(template, [distinct newest messages]) of one fingerprint, among its ``scan`` newest tasks."""
    rows = list(_bound(Task.select(Task.error_template, Task.error_message).where(Task.fingerprint == fingerprint)
                       .order_by(Task.id.desc()).limit(scan), store).tuples())
    samples = list(dict.fromkeys(message for _, message in rows))[:limit]
    return (rows[0][0] if rows else None), samples


def recent_messages(start, unknown, limit, store=None):
    """[(id, task_type, category, error text)] created since ``start``, newest first, at most ``limit``: the
    ``unknown`` ones (read newest first through the (category, created_at) index), or (``unknown`` False)
    the classified ones."""
    query = Task.select(Task.id, Task.task_type, Task.category, Task.error_message).where(Task.created_at >= start)
    if unknown:
        query = query.where(Task.category == "unknown").order_by(Task.created_at.desc(), Task.id.desc())
    else:
        query = query.where(Task.category.is_null(False), Task.category != "unknown").order_by(Task.id.desc())
    return list(_bound(query.limit(limit), store).tuples())
