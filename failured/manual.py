"""Manual control: recover, requeue, resolve, show. They write the store; a running daemon notices."""

import contextlib
import json
import re

from .errors import InputError, RefusedError, TaskNotFound, UnknownCategory
from .rules import UNKNOWN
from .secrets import masked_argv
from .states import TaskStatus
from .store import aggregates
from .store import tasks as rows
from .store.members import wake_daemons
from .text import clean_text, toml_key

NEW, SCHEDULED, RUNNING = TaskStatus.NEW, TaskStatus.SCHEDULED, TaskStatus.RUNNING
RECOVERED, NOTIFIED, EXHAUSTED, MANUAL, RESOLVED = (TaskStatus.RECOVERED, TaskStatus.NOTIFIED, TaskStatus.EXHAUSTED,
                                                   TaskStatus.MANUAL, TaskStatus.RESOLVED)

REQUEUE_STATUSES = (NOTIFIED, EXHAUSTED, MANUAL, RESOLVED)  # finished, and not by a retry that worked
REQUEUE_DEFAULT_STATUSES = (NOTIFIED, EXHAUSTED, MANUAL)
REQUEUE_PAGE = 1000  # tasks a requeue changes in one transaction: reports wait behind a page, not all of them
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


MAX_DURATION_DAYS = 36600  # a hundred years: a longer "since" went past the earliest time Python can write


def parse_duration(text):
    """'90s', '30m', '2h', '7d' -> seconds; longer than MAX_DURATION_DAYS is that long (it means "all of them")."""
    match = _DURATION.match(text or "")
    if not match:
        raise InputError(f"duration {text!r} is not understood: use a number and s, m, h or d, e.g. 2h")
    return min(float(match.group(1)) * _UNITS[match.group(2)], MAX_DURATION_DAYS * 86400.0)


def _get(store, task_id):
    task = rows.load_task(store, task_id)
    if task is None:
        raise TaskNotFound(task_id)
    return task


def refusal(task, force, has_handler):
    """Why ``recover`` without/with --force must not retry this task now, or None."""
    if task.status == RUNNING:
        return f"task {task.id} is running a retry right now: wait for it to finish"
    if not force and task.status in (RECOVERED, RESOLVED):  # over: that comes before any handler
        return f"task {task.id} {'is already recovered' if task.status == RECOVERED else 'was resolved by hand'}"
    if not has_handler:
        return (f"task {task.id}: task type {task.task_type!r} has no handler: configure one in "
                f"failured.toml under [task_types.{toml_key(task.task_type)}.handler]")
    if force:
        return None
    reasons = {
        RECOVERED: "is already recovered",
        RESOLVED: "was resolved by hand",
        NOTIFIED: f"failed with an unrecoverable error ({task.category}): fix the cause, then use --force",
        EXHAUSTED: f"used all {task.attempts} of its retries: use --force to retry anyway",
        NEW: "has not been classified yet: the daemon acts on it within a second",
        MANUAL: None,
        SCHEDULED: None,
    }
    reason = reasons.get(task.status)
    return f"task {task.id} {reason}" if reason else None


def _schedule_now(store, task, now, event, force, note=None):
    with store.transaction():
        if not _schedule_in_transaction(store, task, now, event, force, note):
            raise RefusedError(f"task {task.id} changed while being requeued: try again")
        wake_daemons(store)  # PostgreSQL: every daemon hears of it at the commit (SQLite: data_version)


def _schedule_in_transaction(store, task, now, event, force, note=None):
    """Schedule ``task`` for now, with its event, in the caller's transaction; False when it changed meanwhile."""
    # A forced retry may go past the attempt limit by exactly one.
    limit = max(task.max_attempts or 0, task.attempts + 1) if force else task.max_attempts
    if not rows.schedule_now(store, task.id, task.status, now, limit):
        return False
    # the attempt it schedules, as a retry_scheduled event names it
    rows.add_event(store, task.id, now, event, SCHEDULED, task.category, task.attempts + 1, force=force,
                   **({"note": note} if note else {}))
    return True


def recover(store, snapshot, task_id, now, force=False):
    """Retry one task now; refuses (RefusedError, with the reason) what should not be retried."""
    task = _get(store, task_id)
    has_handler = bool(task.handler) or snapshot.task_type(task.task_type).handler is not None
    reason = refusal(task, force, has_handler)
    if reason:
        raise RefusedError(reason)
    _schedule_now(store, task, now, "recover_requested", force)
    return rows.load_task(store, task_id)


def check_categories(names, snapshot, store):
    """Refuse (UnknownCategory, naming the valid ones) a category filter that neither the configuration
    (``snapshot``; None when it cannot be read) nor any stored task has: a typo would match nothing.

    A category taken out of the configuration stays on older tasks, so it stays a valid filter.
    """
    configured = ([c.name for c in (*snapshot.ruleset.categories, snapshot.ruleset.unknown)]
                  if snapshot is not None else [UNKNOWN])
    if all(name in configured for name in names):
        return
    stored = {category for _, category, _ in aggregates.tasks_by_status(store)} - {"-"}  # "-": not classified
    known = configured + sorted(stored - set(configured))
    for name in names:
        if name not in known:
            raise UnknownCategory(name, known)


def select_for_requeue(store, category=None, task_type=None, statuses=None, since_seconds=None, now=None,
                       limit=REQUEUE_PAGE, after_id=None):
    """One page of what a requeue with these filters takes: (up to ``limit`` tasks with an id above
    ``after_id``, by id; the id to continue after, or None when no task is left)."""
    found = rows.find_tasks(store, statuses or REQUEUE_DEFAULT_STATUSES, category, task_type,
                            None if since_seconds is None else now - since_seconds, after_id, limit + 1)
    more = len(found) > limit
    return found[:limit], (found[limit - 1].id if more else None)


def requeue(store, snapshot, now, dry_run=False, **filters):
    """Retry every finished task the filters match (e.g. every config error after a key was fixed), a page
    of REQUEUE_PAGE at a time, each page its own transaction.

    Returns (requeued, skipped): skipped pairs a task with why (no handler, changed meanwhile).
    """
    _check_requeue_filters(store, snapshot, filters)
    requeued, skipped, cursor = [], [], None
    while True:
        page_requeued, page_skipped, cursor = _requeue_page(store, snapshot, now, dry_run, REQUEUE_PAGE, cursor,
                                                            filters)
        requeued += page_requeued
        skipped += page_skipped
        if cursor is None:
            return requeued, skipped


def requeue_page(store, snapshot, now, dry_run=False, limit=REQUEUE_PAGE, after_id=None, **filters):
    """``requeue`` of one page: the first ``limit`` matches with an id above ``after_id``, in one transaction.

    Returns (requeued, skipped, the id to continue after or None when no match is left).
    """
    _check_requeue_filters(store, snapshot, filters)
    return _requeue_page(store, snapshot, now, dry_run, limit, after_id, filters)


def _check_requeue_filters(store, snapshot, filters):
    for status in filters.get("statuses") or ():
        if status not in REQUEUE_STATUSES:
            raise InputError(f"status {status[:40]!r} cannot be requeued: use {', '.join(REQUEUE_STATUSES)}")
    if filters.get("category"):
        check_categories([filters["category"]], snapshot, store)


def _requeue_page(store, snapshot, now, dry_run, limit, after_id, filters):
    # One transaction a page: the write lock is held for at most `limit` tasks, so reports wait that long at most.
    with contextlib.nullcontext() if dry_run else store.transaction():
        tasks, cursor = select_for_requeue(store, now=now, limit=limit, after_id=after_id, **filters)
        requeued, skipped = [], []
        for task in tasks:
            if not (task.handler or snapshot.task_type(task.task_type).handler is not None):
                skipped.append((task, f"task type {task.task_type!r} has no handler"))
            elif dry_run or _schedule_in_transaction(store, task, now, "requeued", force=True):
                requeued.append(task)
            else:
                skipped.append((task, f"task {task.id} changed while being requeued"))
        if requeued and not dry_run:
            wake_daemons(store)  # PostgreSQL: every daemon hears of it at the commit (SQLite: data_version)
    return requeued, skipped, cursor


def resolve(store, task_id, now, note=None):
    """Close a task by hand."""
    note = clean_text(note) if note else note  # an operator's text is stored as a reporter's is
    task = _get(store, task_id)
    if task.status == RUNNING:
        raise RefusedError(f"task {task_id} is running a retry right now: resolve it when it finishes")
    if task.status == RESOLVED:
        raise RefusedError(f"task {task_id} is already resolved")
    if task.status == RECOVERED:  # a retry finished it: resolved, the analysis would count a recovery as a failure
        raise RefusedError(f"task {task_id} is already recovered: a retry finished it, there is nothing to resolve")
    with store.transaction():
        if not rows.resolve_task(store, task_id, task.status, now, note):
            raise RefusedError(f"task {task_id} changed while being resolved: try again")
        rows.add_event(store, task_id, now, "resolved", RESOLVED, task.category, task.attempts,
                  **({"note": note} if note else {}))
    return rows.load_task(store, task_id)


def _shown_handler(stored):
    """A task's own handler (``failured exec``'s command) with credentials on its command line masked."""
    handler = json.loads(stored) if stored else None
    if handler and isinstance(handler.get("argv"), list):
        handler["argv"] = masked_argv(handler["argv"])
    return handler


def show(store, task_id):
    """The task with its full history, as plain data."""
    task = _get(store, task_id)
    data = {name: getattr(task, name) for name in task._meta.sorted_field_names}
    data["payload"] = json.loads(task.payload) if task.payload else None
    data["handler"] = _shown_handler(task.handler)
    data["events"] = [
        {"at": at, "event": event, "status": status, "category": category, "attempt": attempt,
         "delay_seconds": delay, "error": error, "detail": json.loads(detail) if detail else None}
        for at, event, status, category, attempt, delay, error, detail in rows.task_history(store, task_id)
    ]
    return data
