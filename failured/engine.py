"""The task life cycle in the store: classify and decide, claim with a lease, finish, take back.

Every transition is one transaction: a conditional update of the task (so two
actors never both move it), its ``task_events`` row, and any notification row.
"""

import json
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass

from . import policy
from .classify import Classification
from .fingerprint import fingerprint
from .handlers import HandlerSpec
from .metrics import Metrics
from .notify import messages
from .notify.outbox import enqueue
from .secrets import known_secrets, masked
from .clock import from_db_time, to_db_time
from .errors import RefusedError, StoreError, TaskNotFound, UnknownCategory
from .store import EXHAUSTED, MANUAL, NEW, NOTIFIED, RECOVERED, RESOLVED, RUNNING, SCHEDULED, Task, UtcTimeField

log = logging.getLogger("failured.engine")

EXEC_HANDLER_TIMEOUT = 3600.0
NEW_BATCH = 500
DECIDE_PER_TRANSACTION = 50


@dataclass(frozen=True)
class Plan:
    """What deciding a task came to, worked out before the write lock is taken."""

    task: Task
    result: object  # classify.Classification
    category: object  # rules.Category
    decision: policy.Decision
    fields: dict
    new_error: str | None
    error_type: str | None


@dataclass(frozen=True)
class Claimed:
    """A retry this daemon holds the lease for."""

    task: Task
    handler: HandlerSpec
    attempt: int


_INSERT_EVENT = ("INSERT INTO task_events (task_id, at, event, status, category, attempt, delay_seconds,"
                 " error_message, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_TASK_COLUMNS = [field.column_name for field in Task._meta.sorted_fields]
_SELECT_TASK = f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE id = ?"
_TIME_COLUMNS = {f.column_name for f in Task._meta.sorted_fields if isinstance(f, UtcTimeField)}
_CLAIM = ("UPDATE tasks SET status = 'running', attempts = ?, lease_owner = ?, lease_until = ?, updated_at = ?,"
          " handler_pid = NULL WHERE id = ? AND status = 'scheduled' AND next_retry_at = ?")
_RECOVERED = ("UPDATE tasks SET status = 'recovered', finished_at = ?, updated_at = ?, lease_owner = NULL,"
              " lease_until = NULL, handler_pid = NULL, next_retry_at = NULL"
              " WHERE id = ? AND status = 'running' AND lease_owner = ?")


def add_event(task_id, now, event, status, category=None, attempt=None, delay=None, error=None, **detail):
    # Plain SQL: this runs several times per retry, and peewee's query building would dominate.
    Task._meta.database.execute_sql(_INSERT_EVENT, (
        task_id, to_db_time(now), event, status, category, attempt, delay, error,
        json.dumps(detail, ensure_ascii=False) if detail else None))


_MASK_REPORTED = "UPDATE task_events SET error_message = ? WHERE task_id = ? AND event = 'reported'"


def mask_reported_error(task_id, error):
    """The first event keeps the reported text: replace it with the masked one too."""
    Task._meta.database.execute_sql(_MASK_REPORTED, (error, task_id))


_UPDATE_SQL = {}


def update_task(task_id, expected_status, fields):
    """``UPDATE tasks SET fields WHERE id AND status`` in plain SQL (a hot path); True when it applied."""
    columns = tuple(sorted(fields))
    sql = _UPDATE_SQL.get(columns)
    if sql is None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        sql = _UPDATE_SQL[columns] = f"UPDATE tasks SET {assignments} WHERE id = ? AND status = ?"
    values = [to_db_time(fields[c]) if c in _TIME_COLUMNS and isinstance(fields[c], (int, float)) else fields[c]
              for c in columns]
    return Task._meta.database.execute_sql(sql, (*values, task_id, expected_status)).rowcount == 1


def load_task(task_id):
    """One task by id, through plain SQL (hot path), or None."""
    row = Task._meta.database.execute_sql(_SELECT_TASK, (task_id,)).fetchone()
    if row is None:
        return None
    values = {column: (from_db_time(value) if column in _TIME_COLUMNS else value)
              for column, value in zip(_TASK_COLUMNS, row)}
    return Task(**values)


def pid_alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Engine:
    """Moves tasks through their states. ``config()`` returns the active snapshot."""

    def __init__(self, store, settings, clock, config, owner, rng=random, metrics=None):
        self.store = store
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.clock = clock
        self.config = config
        self.owner = owner
        self.rng = rng
        self._notified = threading.Event()  # a notification row was written since the dispatcher was last woken
        self._unwritable = set()  # new tasks whose decision could not be written (logged once each)

    # -- deciding -----------------------------------------------------------

    def handler_for(self, task, snapshot):
        if task.handler:
            own = json.loads(task.handler)
            return HandlerSpec(kind="command", argv=tuple(own["argv"]),
                               timeout=float(own.get("timeout", EXEC_HANDLER_TIMEOUT)), cwd=own.get("cwd"))
        return snapshot.task_type(task.task_type).handler

    def handle_new(self, limit=NEW_BATCH):
        """Classify and act on tasks nobody has handled yet; returns [(id, due, type)] to queue."""
        queued = []
        # Read the batch first: a statement still open on this connection would pin an old
        # snapshot, and BEGIN IMMEDIATE on a stale snapshot fails at once with "database is locked".
        query = Task.select().where(Task.status == NEW)
        if self._unwritable:
            query = query.where(Task.id.not_in(list(self._unwritable)))
        tasks = list(query.order_by(Task.id).limit(limit))
        for start in range(0, len(tasks), DECIDE_PER_TRANSACTION):
            # Classify before BEGIN: CPU work never runs while the write lock is held.
            plans = [self._plan(task, NEW) for task in tasks[start:start + DECIDE_PER_TRANSACTION]]
            # One commit for a few tasks (each its own savepoint): commits, not classifying,
            # are what a burst of failures costs.
            with self.store.transaction():
                for plan in plans:
                    due = self._write_guarded(plan)
                    if due is not None:
                        queued.append((plan.task.id, due, plan.task.task_type))
            for plan in plans:
                self._after_write(plan, "classified")
        return queued

    def _write_guarded(self, plan):
        """Write one plan in its own savepoint; a task that cannot be written is set aside, not retried forever."""
        try:
            with self.store.transaction():
                return self._write(plan, NEW, "classified")
        except _Moved:
            return None
        except StoreError:
            raise  # disk full, read-only: the whole batch waits, the daemon says so
        except Exception:
            log.exception("task %s %s: could not be written; set aside until restart", plan.task.id,
                          plan.task.task_type)
            self._unwritable.add(plan.task.id)
            return None

    def _decide(self, task, expected_status, event, new_error=None, error_type=None):
        """Classify the task's (new) error, decide, and apply it in one transaction; returns due time or None."""
        plan = self._plan(task, expected_status, new_error, error_type)
        with self.store.transaction():
            due = self._write(plan, expected_status, event)
        self._after_write(plan, event)
        return due

    def _plan(self, task, expected_status, new_error=None, error_type=None):
        """Classify and decide without touching the store. Never raises: what cannot be
        decided is decided as ``unknown``, with the reason, so it never blocks other tasks."""
        snapshot = self.config()
        secrets = known_secrets(snapshot, self.settings)
        error = masked(new_error if new_error is not None else task.error_message, secrets) or ""
        error_type = error_type if new_error is not None else (error_type or task.error_type)
        try:
            result = snapshot.classifier.classify(error, error_type, task.task_type)
            category = snapshot.ruleset.category(result.category)
            retry_policy = policy.effective_policy(category, snapshot.task_types.get(task.task_type),
                                                   self.settings.max_recovery_attempts)
            has_handler = self.handler_for(task, snapshot) is not None
            decision = policy.decide(category, retry_policy, task.attempts, has_handler, task.max_attempts, self.rng)
        except Exception as exc:
            log.exception("task %s %s: could not be classified; decided as unknown", task.id, task.task_type)
            result = _unclassifiable(snapshot, self.settings.lang, error, error_type, exc)
            category = snapshot.ruleset.unknown
            decision = policy.Decision(policy.NOTIFY_ADMIN)
        fields = dict(category=result.category, matched_by=result.matched_by, matched_pattern=result.pattern,
                      error_template=result.template, fingerprint=result.fingerprint,
                      lease_owner=None, lease_until=None, handler_pid=None, next_retry_at=None)
        if new_error is not None:
            fields.update(error_message=error, error_type=error_type)
        elif error != task.error_message:
            fields.update(error_message=error)  # a secret the reporter could not mask
        return Plan(task, result, category, decision, fields, error if new_error is not None else None,
                    error_type)

    def _write(self, plan, expected_status, event):
        """The plan's task update, events and notifications; the caller holds the transaction."""
        now = self.clock.now()
        plan.fields["updated_at"] = now
        if plan.new_error is not None:
            add_event(plan.task.id, now, event, RUNNING, plan.result.category, plan.task.attempts,
                      error=plan.new_error, error_type=plan.error_type)
        if plan.new_error is None and "error_message" in plan.fields:
            mask_reported_error(plan.task.id, plan.fields["error_message"])
        return self._apply(plan.task, expected_status, plan.decision, plan.category, plan.result, plan.fields, now)

    def _after_write(self, plan, event):
        decision, result, task = plan.decision, plan.result, plan.task
        if event == "classified":
            self.metrics.classified(result.category, task.task_type)
        if decision.action != policy.RETRY or plan.fields.get("status") == SCHEDULED:
            log.info("task %s %s: %s (%s)", task.id, task.task_type, self._describe(decision), result.category)

    def _apply(self, task, expected_status, decision, category, result, fields, now):
        lang = self.settings.lang
        matched = {"matched_by": result.matched_by, "pattern": result.pattern}
        if decision.action == policy.RETRY:
            due = now + decision.delay
            fields.update(status=SCHEDULED, next_retry_at=due, max_attempts=decision.limit)
        else:
            due = None
            status = {policy.EXHAUSTED: EXHAUSTED, policy.MANUAL: MANUAL}.get(decision.action, NOTIFIED)
            fields.update(status=status, finished_at=now, max_attempts=decision.limit or task.max_attempts)
        if not update_task(task.id, expected_status, fields):
            raise _Moved()
        task_now = Task(**{**task.__data__, **fields})
        if decision.action == policy.RETRY:
            add_event(task.id, now, "retry_scheduled", SCHEDULED, result.category, decision.attempt,
                      decision.delay, **matched)
        elif decision.action == policy.MANUAL:
            add_event(task.id, now, "manual", MANUAL, result.category, **matched)
            self._notify_manual_once(task.task_type, now)
        else:
            audience = "user" if decision.action == policy.NOTIFY_USER else "admin"
            kind = "exhausted" if decision.action == policy.EXHAUSTED else "task"
            add_event(task.id, now, "exhausted" if kind == "exhausted" else "notified", fields["status"],
                      result.category, task.attempts, audience=audience, **matched)
            title, body = messages.task_message(lang, kind, audience, task_now, category, now,
                                                attempts=task.attempts if kind == "exhausted" else None,
                                                limit=decision.limit or None)
            enqueue(self.config(), now, audience, kind, title, body, task=task_now, category=result.category)
            self._notified.set()
        return due

    def _notify_manual_once(self, task_type, now):
        key = f"manual_notified:{task_type}"
        if self.store.get_state(key) is None:
            self.store.set_state(key, "1", now)
            title, body = messages.manual_message(self.settings.lang, task_type)
            enqueue(self.config(), now, "admin", "manual", title, body, task_type=task_type)

    def notified_since_wake(self):
        """True once after notifications were queued (retry outcomes, breakers), so intake wakes the dispatcher."""
        notified = self._notified.is_set()
        if notified:
            self._notified.clear()
        return notified

    def forget_manual_notices(self, snapshot):
        """A handler appeared for a task type: its next manual task alerts again."""
        for name, config in snapshot.task_types.items():
            if config.handler is not None:
                self.store.db.execute_sql("DELETE FROM daemon_state WHERE key = ?", (f"manual_notified:{name}",))

    @staticmethod
    def _describe(decision):
        if decision.action == policy.RETRY:
            return f"retry {decision.attempt}/{decision.limit} in {decision.delay:g}s"
        if decision.action == policy.EXHAUSTED:
            return f"exhausted after {decision.attempt}/{decision.limit} retries"
        return decision.action

    # -- operators' labels ---------------------------------------------------

    def relabel(self, task_id, category_name, note=None):
        """Record an operator's label and set the task's course by that category; returns the task.

        A wrongly retried data error stops (and the admins hear of it); a wrongly notified
        network error is scheduled. A recovered or resolved task keeps its state: the label
        only teaches the model.
        """
        snapshot = self.config()
        category = snapshot.ruleset.category(category_name)
        if category is None:
            raise UnknownCategory(category_name, [c.name for c in (*snapshot.ruleset.categories,
                                                                     snapshot.ruleset.unknown)])
        task = load_task(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        if task.status == RUNNING:
            raise RefusedError(f"task {task_id} is running a retry right now: label it when it finishes")
        now = self.clock.now()
        try:
            with self.store.transaction():
                self.store.add_label(task, category.name, now, note)
                add_event(task.id, now, "labelled", task.status, category.name, task.attempts,
                          previous=task.category, **({"note": note} if note else {}))
                if task.status not in (RECOVERED, RESOLVED) and category.name != task.category:
                    self._apply_label(task, category, snapshot, now)
        except _Moved:
            raise RefusedError(f"task {task_id} changed while being labelled: try again") from None
        return load_task(task_id)

    def _apply_label(self, task, category, snapshot, now):
        result = _labelled(task, category, self.settings.lang)
        retry_policy = policy.effective_policy(category, snapshot.task_types.get(task.task_type),
                                               self.settings.max_recovery_attempts)
        decision = policy.decide(category, retry_policy, task.attempts, self.handler_for(task, snapshot) is not None,
                                 None, self.rng)
        fields = dict(category=category.name, matched_by="label", matched_pattern=None, updated_at=now,
                      next_retry_at=None, finished_at=None)
        self._apply(task, task.status, decision, category, result, fields, now)

    # -- running ------------------------------------------------------------

    def claim(self, task_id, expected_due=None):
        """Take a due scheduled task: running, lease, attempts + 1 — or None if it is not ours to run.

        ``expected_due`` is the due time the retry heap waited for (on the monotonic clock):
        the task is due when the table still says that time, whatever the wall clock says now.
        Without it, the wall clock decides.
        """
        snapshot = self.config()
        task = load_task(task_id)
        if task is None or task.status != SCHEDULED or task.next_retry_at is None:
            return None
        handler = self.handler_for(task, snapshot)
        now = self.clock.now()
        if expected_due is not None:
            due = abs(task.next_retry_at - expected_due) < 0.001
        else:
            due = task.next_retry_at <= now + 0.001
        if handler is None or not due:
            return None
        lease_until = now + policy.lease_seconds(handler.timeout)
        attempt = task.attempts + 1
        with self.store.transaction():
            updated = self.store.db.execute_sql(_CLAIM, (
                attempt, self.owner, to_db_time(lease_until), to_db_time(now), task_id,
                to_db_time(task.next_retry_at))).rowcount
            if not updated:
                return None
            add_event(task_id, now, "retry_started", RUNNING, task.category, attempt)
        task.status, task.attempts = RUNNING, attempt
        self.metrics.lateness.observe(max(0.0, now - task.next_retry_at))
        return Claimed(task, handler, attempt)

    def record_pid(self, task_id, pid):
        Task.update(handler_pid=pid).where(Task.id == task_id, Task.lease_owner == self.owner).execute()

    def finish(self, claimed, outcome):
        """Record a retry's outcome; returns the next due time when another retry is scheduled."""
        task = claimed.task
        now = self.clock.now()
        self.metrics.retries.labels("recovered" if outcome.ok else "failed").inc()
        if outcome.ok:
            self.metrics.recoveries.labels(task.category or "unknown").inc()
            with self.store.transaction():
                stamp = to_db_time(now)
                updated = self.store.db.execute_sql(_RECOVERED, (stamp, stamp, task.id, self.owner)).rowcount
                if updated:
                    add_event(task.id, now, "recovered", RECOVERED, task.category, claimed.attempt,
                              duration=round(outcome.duration, 3))
            log.info("task %s %s: recovered on retry %s", task.id, task.task_type, claimed.attempt)
            return None
        task.lease_owner = self.owner
        try:
            return self._decide(task, RUNNING, "retry_failed", new_error=outcome.error or "retry failed",
                                error_type=outcome.error_type)
        except _Moved:
            return None

    def postpone(self, task_id, until, reason):
        """Move a due retry later without running it (breaker open); it stays scheduled."""
        now = self.clock.now()
        with self.store.transaction():
            updated = (Task.update(next_retry_at=until, updated_at=now)
                       .where(Task.id == task_id, Task.status == SCHEDULED).execute())
            if updated:
                add_event(task_id, now, "postponed", SCHEDULED, delay=until - now, reason=reason)
        return bool(updated)

    # -- taking back --------------------------------------------------------

    def take_back_leases(self, orphans_only=False, running_here=frozenset()):
        """Running tasks whose daemon is gone: back to scheduled, due now — unless the handler still runs.

        At start (``orphans_only``) every lease not ours is orphaned: we hold the
        daemon lock, so its owner is dead. Later, only expired leases count, and
        never one of ``running_here``: a retry this process runs now is alive,
        however far the wall clock has jumped.
        """
        now = self.clock.now()
        query = Task.select().where(Task.status == RUNNING)
        query = query.where(Task.lease_owner != self.owner) if orphans_only else query.where(Task.lease_until < now)
        queued, waiting = [], []
        for task in list(query):
            if task.lease_owner == self.owner and task.id in running_here:
                continue
            if pid_alive(task.handler_pid) and (task.lease_until or 0) > now:
                waiting.append(task.id)  # never run a task twice at the same time
                continue
            with self.store.transaction():
                updated = (Task.update(status=SCHEDULED, next_retry_at=now, lease_owner=None, lease_until=None,
                                       handler_pid=None, updated_at=now)
                           .where(Task.id == task.id, Task.status == RUNNING, Task.lease_owner == task.lease_owner)
                           .execute())
                if updated:
                    add_event(task.id, now, "lease_expired", SCHEDULED, task.category, task.attempts,
                              owner=task.lease_owner)
            if updated:
                log.warning("task %s %s: retry %s was interrupted (owner %s); rescheduled now",
                            task.id, task.task_type, task.attempts, task.lease_owner)
                queued.append((task.id, now, task.task_type))
        return queued, waiting

    def release_own_leases(self):
        """At shutdown: stop our still-running handlers and put their tasks back, due now.

        The interrupted attempt is not counted: the daemon stopped, the task did not fail.
        """
        now = self.clock.now()
        released = []
        for task in list(Task.select().where(Task.status == RUNNING, Task.lease_owner == self.owner)):
            if pid_alive(task.handler_pid):
                try:
                    os.killpg(task.handler_pid, signal.SIGKILL)
                except OSError:
                    pass
            with self.store.transaction():
                updated = (Task.update(status=SCHEDULED, next_retry_at=now, attempts=Task.attempts - 1,
                                       lease_owner=None, lease_until=None, handler_pid=None, updated_at=now)
                           .where(Task.id == task.id, Task.status == RUNNING, Task.lease_owner == self.owner)
                           .execute())
                if updated:
                    add_event(task.id, now, "interrupted", SCHEDULED, task.category, task.attempts - 1,
                              reason="daemon stopping")
                    released.append(task.id)
        return released

    def scheduled(self, due_before=None):
        """[(id, due, type)] of scheduled tasks, for rebuilding the heap."""
        query = Task.select(Task.id, Task.next_retry_at, Task.task_type).where(Task.status == SCHEDULED)
        if due_before is not None:
            query = query.where(Task.next_retry_at <= due_before)
        now = self.clock.now()  # a scheduled row without a due time (edited by hand) is due now
        return [(task_id, now if due is None else due, task_type) for task_id, due, task_type in query.tuples()]

    def breaker_changed(self, task, state, failures, cooldown):
        """Record a breaker opening or closing: an event on the task that tipped it, and an admin notice."""
        now = self.clock.now()
        title, body = messages.breaker_message(self.settings.lang, task.task_type, state == "open", failures, cooldown)
        with self.store.transaction():
            add_event(task.id, now, f"breaker_{state}", Task.get_by_id(task.id).status, task.category,
                      task.attempts, task_type=task.task_type)
            enqueue(self.config(), now, "admin", "breaker", title, body, task_type=task.task_type)
        log.warning("task type %s: breaker %s", task.task_type, state)


def _unclassifiable(snapshot, lang, message, error_type, exc):
    """The ``unknown`` result for a message the classifier failed on, naming why."""
    try:
        template, digest = fingerprint(message[:4096])
    except Exception:
        template, digest = "", ""
    unknown = snapshot.ruleset.unknown
    return Classification(
        category=unknown.name, label=unknown.label_in(lang), action=unknown.action, matched_by="none",
        pattern=f"classifier failed: {type(exc).__name__}", fingerprint=digest, template=template,
        error_type=error_type, message=message, suggestion=unknown.suggestion_in(lang))


def _labelled(task, category, lang):
    """The classification an operator's label stands for."""
    return Classification(
        category=category.name, label=category.label_in(lang), action=category.action, matched_by="label",
        pattern=None, fingerprint=task.fingerprint or "", template=task.error_template or "",
        error_type=task.error_type, message=task.error_message, suggestion=category.suggestion_in(lang))


class _Moved(Exception):
    """The task changed under us (resolved by hand, taken back): leave it alone."""
