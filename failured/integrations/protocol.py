"""What a failured-driven Celery re-run carries, and what its worker answers.

Shared by the daemon side (``celery_handler``, which sends the task) and the
worker side (``celery``, which reports the outcome), so neither imports the other.

The daemon sends the task with three message headers; the worker, seeing them,
publishes one JSON reply to the named queue through the same broker instead of
reporting a new failure. No result backend is involved.
"""

import json
import uuid

TASK_ID = "failured_task_id"
ATTEMPT = "failured_attempt"
REPLY_TO = "failured_reply_to"
REPLY_PREFIX = "failured.reply"
REPLY_TTL_SECONDS = 3600  # a reply nobody waits for any more is dropped after this (Redis; RabbitMQ: x-expires)
# Payload values that were not JSON when reported are stored as {REPR_MARK: repr(value)}.
REPR_MARK = "__failured_repr__"
MAX_REPR_CHARS = 2000
# In the payload of a Celery task recorded under another task type than its name (see celery.task_type_for): the
# name, which a retry sends.
CELERY_TASK = "celery_task"


def marked_repr(value):
    """``{REPR_MARK: repr(value)}``: a value JSON cannot hold, kept as its repr and marked as such."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the report
        text = f"<{type(value).__name__}: repr failed: {exc!r}>"
    return {REPR_MARK: text[:MAX_REPR_CHARS]}


def reply_queue_name(task_id, attempt):
    """A queue of its own per attempt: a late answer to an earlier attempt cannot be mistaken."""
    return f"{REPLY_PREFIX}.{task_id}.{attempt}.{uuid.uuid4().hex[:12]}"


def headers(task_id, attempt, reply_to):
    return {TASK_ID: int(task_id), ATTEMPT: int(attempt), REPLY_TO: reply_to}


def reply_body(task_id, attempt, ok, error=None, error_type=None, celery_task_id=None, hostname=None, note=None):
    """``note``: how a run that counts as done ended when it did not simply succeed (an Ignore), for the log."""
    return {"task_id": task_id, "attempt": attempt, "ok": bool(ok), "error": error, "error_type": error_type,
            "celery_task_id": celery_task_id, "hostname": hostname, "note": note}


def failured_headers(request):
    """(task id, attempt, reply queue) from a Celery task request, or None for an ordinary run."""
    reply_to = getattr(request, REPLY_TO, None) or (getattr(request, "headers", None) or {}).get(REPLY_TO)
    if not reply_to:
        return None
    custom = getattr(request, "headers", None) or {}
    task_id = getattr(request, TASK_ID, None) or custom.get(TASK_ID)
    attempt = getattr(request, ATTEMPT, None) or custom.get(ATTEMPT)
    return task_id, attempt, reply_to


def json_bytes(value):
    """``value`` as UTF-8 JSON, as the HTTP API and the spool take it: other characters as themselves (a
    Chinese one is 3 bytes, not a 6-byte escape), a lone surrogate as its JSON escape (UTF-8 has no form for it)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")
