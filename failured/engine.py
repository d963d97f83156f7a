"""The task life cycle in the store: classify and decide, claim with a lease, finish, take back.

Every transition is one transaction: a conditional update of the task (so two
actors never both move it), its ``task_events`` row, and any notification row.
"""

import json
import logging
import os
import random
import signal
import socket
import threading
from contextlib import nullcontext
from dataclasses import dataclass, replace

from . import policy
from .classify import Classification
from .config import config_files, content_digest
from .fingerprint import fingerprint
from .handlers import RUNS_ELSEWHERE, HandlerSpec
from .intake import clean_text
from .integrations.protocol import REPR_MARK
from .members import SoloMembership
from .metrics import Metrics
from .notify import messages
from .notify.outbox import enqueue
from .secrets import known_secrets, masked
from .errors import RefusedError, StoreError, TaskNotFound, UnknownCategory
from .states import TaskStatus
from .store import Task, translate_error
from .store import tasks as rows
from .store.members import claim_state
from .store.tasks import event_row, update_statement

NEW, SCHEDULED, RUNNING = TaskStatus.NEW, TaskStatus.SCHEDULED, TaskStatus.RUNNING
RECOVERED, NOTIFIED, EXHAUSTED, MANUAL, RESOLVED = (TaskStatus.RECOVERED, TaskStatus.NOTIFIED, TaskStatus.EXHAUSTED,
                                                   TaskStatus.MANUAL, TaskStatus.RESOLVED)

log = logging.getLogger("failured.engine")

EXEC_HANDLER_TIMEOUT = 3600.0
NEW_BATCH = 500
DECIDE_PER_TRANSACTION = 50
SHARED_BATCH = 50  # several daemons: new tasks each claims at once (locked while it classifies them)
POSTPONE_SLACK_SECONDS = 1.0  # a retry postponed to within this of a breaker's reopening is not postponed again


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
    decided_at: float | None = None  # when classifying it ended: a flood's due times spread as it was decided
    reported_error: str | None = None  # the reported error with the secrets only the daemon knows masked, if it had any


@dataclass(frozen=True)
class Claimed:
    """A retry this daemon holds the lease for."""

    task: Task
    handler: HandlerSpec
    attempt: int


class PartlySettled(StoreError):
    """``settle`` wrote the successes and the claims, then the database went away while it decided a failed
    retry: ``settled`` [(Claimed, Outcome, next due)] are done, ``claimed`` [Claimed] are ours to run, and
    ``unsettled`` [(Claimed, Outcome)] are to be decided again once it answers (none of them was written)."""

    def __init__(self, cause, settled, claimed, unsettled):
        super().__init__(str(cause))
        self.settled, self.claimed, self.unsettled = settled, claimed, unsettled


def handler_alive(pid):
    """Whether a process of the command handler's process group still runs. Each handler leads a session of its
    own (its pid is its group's id), and what it starts (``sh -c 'work &'``) may outlive it and its daemon: the
    task must not run again beside them. A group id is not reused while any process of the group lives."""
    if pid == RUNS_ELSEWHERE:
        return True
    if not pid:
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Engine:
    """Moves tasks through their states. ``config()`` returns the active snapshot."""

    def __init__(self, store, settings, clock, config, owner, rng=random, metrics=None, members=None):
        self.store = store
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.clock = clock
        self.config = config
        self.owner = owner
        self.members = members or SoloMembership(owner)  # the other daemons on this database (PostgreSQL)
        self.rng = rng
        self._notified = threading.Event()  # a notification row was written since the dispatcher was last woken
        # The intake and the retry timer write from two threads of this process. Taking turns on a
        # Python lock hands the write lock over at once; through SQLite's busy handler the waiter
        # sleeps 1-100 ms and is not woken when the lock frees. (PostgreSQL's writers do not share a lock:
        # there the threads write side by side, each on its own connection; see _write_turn.)
        self._writes = threading.RLock()
        self._unwritable = set()  # new tasks whose decision could not be written (logged once each)
        self.decided_through = None  # when the last task decided was recorded (wall clock); None: none yet

    def _write_turn(self):
        """Held around a write: the process's turn at SQLite's one write lock; nothing on PostgreSQL."""
        return self._writes if self.store.dialect == "sqlite" else nullcontext()

    # -- deciding -----------------------------------------------------------

    def handler_for(self, task, snapshot):
        if task.handler:
            own = json.loads(task.handler)
            return HandlerSpec(kind="command", argv=tuple(own["argv"]),
                               timeout=float(own.get("timeout", EXEC_HANDLER_TIMEOUT)), cwd=own.get("cwd"))
        return snapshot.task_type(task.task_type).handler

    def handle_new(self, limit=NEW_BATCH):
        """Classify and act on tasks nobody has handled yet; returns [(id, due, type)] to queue."""
        return self._handle_batch(limit)[0]

    def drain_new(self, push, batch=NEW_BATCH, between=None):
        """Decide new tasks batch after batch until one comes back short; ``push(id, due, type)``
        each retry as soon as its batch is written, and call ``between()`` after each commit
        (the daemon lets late retries go first there, while ``decided_through``, when the last
        task decided was recorded, says the reports still waiting are young enough).
        Returns how many tasks were decided.

        A flood is decided as fast as it comes in, not one batch per poll.
        """
        decided = 0
        shared = self.members.shared
        while True:
            # Shared: a batch is claimed (locked) until its decisions commit; its retries are pushed after.
            queued, read = self._handle_batch(batch, push if between and not shared else None,
                                              None if shared else between)
            if shared and between is not None:
                between()
            for item in queued:
                push(*item)
            decided += read
            if read < (min(batch, SHARED_BATCH) if shared else batch):
                return decided

    def _handle_batch(self, limit, push=None, between=None):
        """(retries to queue, tasks read) for one batch of new tasks; with ``push``, each
        commit's retries are pushed at once (and not returned), then ``between()`` is called."""
        shared = self.members.shared
        # Several daemons: the batch's rows stay locked (SKIP LOCKED for the others) until decided.
        with self.store.transaction() if shared else nullcontext():
            return self._decide_batch(limit, push, between, shared)

    def _decide_batch(self, limit, push, between, claim):
        queued = []
        # Read the batch first: a statement still open on this connection would pin an old
        # snapshot, and BEGIN IMMEDIATE on a stale snapshot fails at once with "database is locked".
        tasks = rows.load_new_tasks(self.store, min(limit, SHARED_BATCH) if claim else limit,
                                    tuple(self._unwritable), claim=claim)
        for start in range(0, len(tasks), DECIDE_PER_TRANSACTION):
            # Classify before BEGIN: CPU work never runs while the write lock is held.
            plans = [self._plan(task, NEW) for task in tasks[start:start + DECIDE_PER_TRANSACTION]]
            retries = [(plan, self._retry_statements(plan)) for plan in plans if _plain_retry(plan)]
            others = [plan for plan in plans if not _plain_retry(plan)]
            # One commit for a few tasks: commits, not classifying, are what a burst of failures
            # costs; and the statements are ready before BEGIN, so the lock is held briefly.
            with self._write_turn(), self.store.eager_transaction():
                queued += self._write_retries(retries)
                for plan in others:
                    due = self._write_guarded(plan)
                    if due is not None:
                        queued.append((plan.task.id, due, plan.task.task_type))
            for plan in plans:
                self._after_write(plan, "classified")
            # Ids rise with time: every report still undecided was recorded after this one (see drain_new).
            self.decided_through = plans[-1].task.created_at
            if push is not None:
                for item in queued:
                    push(*item)
                queued = []
                between()
        return queued, len(tasks)

    def _retry_statements(self, plan):
        """(update, event row, due) that schedule a plain retry of a new task, as ``_write`` would."""
        now, decision, result = plan.decided_at, plan.decision, plan.result
        due = now + decision.delay
        plan.fields.update(updated_at=now, next_retry_at=due, max_attempts=decision.limit)
        update = update_statement(plan.task.id, NEW, {**plan.fields, "status": SCHEDULED})
        event = event_row(plan.task.id, now, "retry_scheduled", SCHEDULED, result.category, decision.attempt,
                          decision.delay, matched_by=result.matched_by, pattern=result.pattern)
        return update, event, due

    def _write_retries(self, retries):
        """Run prepared retry decisions; [(id, due, type)] of those written. A task that moved
        meanwhile is left alone; one whose row cannot be written is set aside, as in ``_write_guarded``."""
        queued, events = [], []
        # SQLite: the batch's updates as one statement; one by one when some moved or one cannot be written.
        at_once = len(retries) > 1 and rows.run_updates_at_once(self.store, [update for _, (update, _, _) in retries])
        for plan, (statement, event, due) in retries:
            try:
                if not at_once and not rows.run_update(self.store, statement):
                    continue  # resolved by hand meanwhile
            # A failed statement changed nothing (SQLite statements are atomic; PostgreSQL's error ends the
            # transaction, and the batch is tried again).
            except self.store.statement_errors as exc:
                if self.store.dialect != "sqlite":
                    raise
                known = translate_error(self.store.path, exc)
                if known is not None:
                    raise known from None
                log.exception("task %s %s: could not be written; set aside until restart", plan.task.id,
                              plan.task.task_type)
                self._unwritable.add(plan.task.id)
                continue
            plan.fields["status"] = SCHEDULED
            events.append(event)
            queued.append((plan.task.id, due, plan.task.task_type))
        rows.add_events(self.store, events)
        return queued

    def _write_guarded(self, plan):
        """Write one plan in its own savepoint; a task that cannot be written is set aside, not retried forever."""
        try:
            with self.store.savepoint():
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
        with self._write_turn(), self.store.eager_transaction():
            due = self._write(plan, expected_status, event)
        self._after_write(plan, event)
        return due

    def _plan(self, task, expected_status, new_error=None, error_type=None):
        """Classify and decide without touching the store. Never raises: what cannot be
        decided is decided as ``unknown``, with the reason, so it never blocks other tasks."""
        snapshot = self.config()
        secrets = known_secrets(snapshot, self.settings)
        unmasked_names = _mask_names(task, secrets)
        error = masked(new_error if new_error is not None else task.error_message, secrets) or ""
        error_type = masked(error_type, secrets) if new_error is not None else (error_type or task.error_type)
        try:
            result = snapshot.classifier.classify(error, error_type, task.task_type)
            category = snapshot.ruleset.category(result.category)
            retry_policy = policy.effective_policy(category, snapshot.task_types.get(task.task_type),
                                                   self.settings.max_recovery_attempts)
            handler = self.handler_for(task, snapshot)
            # The task's own limit (one `recover --force` raised) holds while its error stays in the same category;
            # a new category brings its own, lower or higher.
            task_limit = task.max_attempts if result.category == task.category else None
            decision = policy.decide(category, retry_policy, task.attempts, handler is not None, task_limit, self.rng)
            unsendable = _unsendable(handler, task) if decision.action == policy.RETRY else None
            if unsendable and unsendable != new_error:
                # Sent, the retry could only fail, and count against its task type's breaker although it says
                # nothing of that type's health: it is decided now as that failure, never run.
                plan = self._plan(task, expected_status, unsendable, "ValueError")
                masked_report = new_error is None and error != task.error_message
                return replace(plan, reported_error=error if masked_report else None)
        except Exception as exc:
            log.exception("task %s %s: could not be classified; decided as unknown", task.id, task.task_type)
            result = _unclassifiable(snapshot, self.settings.lang, error, error_type, exc)
            category = snapshot.ruleset.unknown
            decision = policy.Decision(policy.NOTIFY_ADMIN)
        fields = dict(category=result.category, matched_by=result.matched_by, matched_pattern=result.pattern,
                      error_template=result.template, fingerprint=result.fingerprint,
                      lease_owner=None, lease_until=None, handler_pid=None, next_retry_at=None, **unmasked_names)
        if new_error is not None:
            fields.update(error_message=error, error_type=error_type)
        elif error != task.error_message:
            fields.update(error_message=error)  # a secret the reporter could not mask
        return Plan(task, result, category, decision, fields, error if new_error is not None else None,
                    error_type, self.clock.now(), fields.get("error_message") if new_error is None else None)

    def _write(self, plan, expected_status, event):
        """The plan's task update, events and notifications; the caller holds the transaction."""
        now = self.clock.now()
        plan.fields["updated_at"] = now
        if plan.new_error is not None:
            rows.add_event(self.store, plan.task.id, now, event, expected_status, plan.result.category,
                           plan.task.attempts, error=plan.new_error, error_type=plan.error_type)
        if plan.reported_error is not None:
            rows.mask_reported_error(self.store, plan.task.id, plan.reported_error)
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
        if not rows.update_task(self.store, task.id, expected_status, fields):
            raise _Moved()
        if decision.action == policy.RETRY:
            rows.add_event(self.store, task.id, now, "retry_scheduled", SCHEDULED, result.category, decision.attempt,
                      decision.delay, **matched)
        elif decision.action == policy.MANUAL:
            rows.add_event(self.store, task.id, now, "manual", MANUAL, result.category, **matched)
            self._notify_manual_once(task, now)
        else:
            audience = "user" if decision.action == policy.NOTIFY_USER else "admin"
            kind = "exhausted" if decision.action == policy.EXHAUSTED else "task"
            task_now = Task(**{**task.__data__, **fields})
            rows.add_event(self.store, task.id, now, "exhausted" if kind == "exhausted" else "notified", fields["status"],
                      result.category, task.attempts, audience=audience, **matched)
            title, body = messages.task_message(lang, kind, audience, task_now, category, now,
                                                attempts=task.attempts if kind == "exhausted" else None,
                                                limit=decision.limit or None)
            enqueue(self.store, self.config(), now, audience, kind, title, body, task=task_now, category=result.category)
            self._notified.set()
        return due

    def _notify_manual_once(self, task, now):
        # Claimed in the database with the notice: once per task type among all daemons.
        task_type = task.task_type
        with self.store.transaction():
            if not claim_state(self.store, f"manual_notified:{task_type}", "1", now):
                return
            title, body = messages.manual_message(self.settings.lang, task_type, task)
            enqueue(self.store, self.config(), now, "admin", "manual", title, body, task_type=task_type)
        self._notified.set()

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
                self.store.delete_state(f"manual_notified:{name}")

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
        task = rows.load_task(self.store, task_id)
        if task is None:
            raise TaskNotFound(task_id)
        if task.status == RUNNING:
            raise RefusedError(f"task {task_id} is running a retry right now: label it when it finishes")
        now = self.clock.now()
        note = clean_text(note) if note else note  # an operator's text is stored as a reporter's is
        try:
            with self.store.transaction():
                self.store.add_label(task, category.name, now, note)
                rows.add_event(self.store, task.id, now, "labelled", task.status, category.name, task.attempts,
                          previous=task.category, **({"note": note} if note else {}))
                if task.status not in (RECOVERED, RESOLVED) and category.name != task.category:
                    self._apply_label(task, category, snapshot, now)
        except _Moved:
            raise RefusedError(f"task {task_id} changed while being labelled: try again") from None
        return rows.load_task(self.store, task_id)

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
        claimed = self.claim_due([(task_id, expected_due)])
        return claimed[0] if claimed else None

    def claim_due(self, items):
        """``claim`` each (task id, expected due) in one transaction; the [Claimed] that were ours to run."""
        return self.settle([], items)[1]

    def record_pid(self, task_id, pid):
        rows.record_pid(self.store, task_id, self.owner, pid)

    def finish(self, claimed, outcome):
        """Record a retry's outcome; returns the next due time when another retry is scheduled."""
        return self.finish_all([(claimed, outcome)])[0]

    def finish_all(self, results):
        """Record the outcomes of many retries, [(Claimed, Outcome)]; returns each one's next due time or None."""
        return self.settle(results, [])[0]

    def settle(self, results, items):
        """Record retries' outcomes and claim the next due tasks, in one transaction: (dues, [Claimed]).

        ``results`` are [(Claimed, Outcome)]; ``dues`` has each one's next due time or None.
        ``items`` are [(task id, expected due)] as for ``claim``. The successes and the claims
        share one transaction (each row still its own conditional update and event); a failed
        retry is classified and decided on its own afterwards, as when it was first reported.
        """
        recovered = [(claimed, outcome) for claimed, outcome in results if outcome.ok]
        # Every statement is ready before BEGIN: the write lock is held for the SQL alone.
        now = self.clock.now()
        finishes = self._prepare_recovered(recovered, now)
        claimed, recorded = [], set()  # recorded: the ids whose success was written (their lease still ours)
        if items and self.store.dialect == "postgresql":  # one round trip: see rows.settle_at_once
            claimed, recorded, items = self._claim_reading_nothing(finishes, items, now)
            finishes = []
        claims, without_handler = self._prepare_claims(items, now)
        if claims or finishes:
            with self._write_turn():
                done, got = rows.run_together(self.store, [(rows.RECOVER, finishes), (rows.CLAIM, claims)])
            claimed += got
            recorded |= {item.task.id for item in done}
        for item in claimed:
            item.task.status, item.task.attempts = RUNNING, item.attempt
            self.metrics.lateness.observe(max(0.0, now - item.task.next_retry_at))
        for claimed_one, _ in recovered:
            task = claimed_one.task
            if task.id not in recorded:  # taken back meanwhile (its lease ran out): its new owner says how it ends
                log.warning("task %s %s: retry %s succeeded, but its lease had been taken back; not recorded",
                            task.id, task.task_type, claimed_one.attempt)
                continue
            self.metrics.retry_ended(True)
            self.metrics.recovered(task.category)
            log.info("task %s %s: recovered on retry %s", task.id, task.task_type, claimed_one.attempt)
        for task in without_handler:
            self._handler_gone(task)
        dues = []
        for index, (claimed_one, outcome) in enumerate(results):
            try:
                dues.append(None if outcome.ok else self._retry_failed(claimed_one, outcome))
            except StoreError as exc:  # each failure is its own transaction: those before it are written
                settled = [(c, o, due) for (c, o), due in zip(results, dues)]
                settled += [(c, o, None) for c, o in results[index:] if o.ok]
                raise PartlySettled(exc, settled, claimed, [(c, o) for c, o in results[index:] if not o.ok]) from exc
        return dues, claimed

    def _claim_reading_nothing(self, finishes, items, now):
        """PostgreSQL: record ``finishes`` and claim the ``items`` whose task type has a handler, in one
        statement; returns ([Claimed], the items it left: a handler of the task's own, or no longer due)."""
        snapshot = self.config()
        leases = {name: policy.lease_seconds(config.handler.timeout)
                  for name, config in snapshot.task_types.items() if config.handler is not None}
        tasks, recorded = rows.settle_at_once(self.store, finishes, items, self.owner, now, leases)
        claimed = [Claimed(task, self.handler_for(task, snapshot), task.attempts) for task in tasks]
        taken = {task.id for task in tasks}
        return claimed, recorded, [item for item in items if item[0] not in taken]

    def _prepare_claims(self, items, now):
        """([(Claimed, claim parameters, event row)] for the items that are due and have a handler, [the due tasks
        whose handler was taken out of the configuration since they were scheduled])."""
        snapshot = self.config()
        prepared, without_handler = [], []
        expected = dict(items)
        for task in rows.load_tasks(self.store, list(expected)):
            expected_due = expected[task.id]
            if task.status != SCHEDULED or task.next_retry_at is None:
                continue
            handler = self.handler_for(task, snapshot)
            if expected_due is not None:
                due = abs(task.next_retry_at - expected_due) < 0.001
            else:
                due = task.next_retry_at <= now + 0.001
            if not due:
                continue
            if handler is None:
                without_handler.append(task)
                continue
            attempt = task.attempts + 1
            prepared.append((Claimed(task, handler, attempt),
                             rows.claim_params(attempt, self.owner, now + policy.lease_seconds(handler.timeout), now,
                                               task.id, task.next_retry_at),
                             event_row(task.id, now, "retry_started", RUNNING, task.category, attempt)))
        if without_handler and not self._config_on_disk_active(snapshot):
            without_handler = []  # a reload is pending: it may bring the handler back
        return prepared, without_handler

    def _config_on_disk_active(self, snapshot):
        """Whether the configuration directory holds what ``snapshot`` was read from (no edit waits for a reload)."""
        return content_digest(config_files(self.settings.config_dir)) == snapshot.digest

    def _handler_gone(self, task):
        """A due retry whose task type has no handler any more: decided again, it waits in ``manual`` (the admins
        told once per task type), as a failure reported without one does."""
        try:
            self._decide(task, SCHEDULED, "reconsidered")
        except _Moved:  # claimed or changed meanwhile
            pass

    def _prepare_recovered(self, recovered, now):
        return [(claimed, rows.recover_params(now, claimed.task.id, self.owner),
                 event_row(claimed.task.id, now, "recovered", RECOVERED, claimed.task.category, claimed.attempt,
                           duration=round(outcome.duration, 3)))
                for claimed, outcome in recovered]

    def _retry_failed(self, claimed, outcome):
        task = claimed.task
        task.lease_owner = self.owner
        try:
            # a handler's text is stored as a reporter's is: whatever it printed or raised, both stores hold it
            due = self._decide(task, RUNNING, "retry_failed", new_error=clean_text(outcome.error or "retry failed"),
                               error_type=clean_text(outcome.error_type) if outcome.error_type else None)
        except _Moved:
            return None
        self.metrics.retry_ended(False)
        return due

    def postpone(self, task_id, until, reason):
        """Move a due retry later without running it (breaker open); it stays scheduled. True while it is
        scheduled: another daemon whose breaker is open too may have postponed it already (one event, not one a
        daemon: their ``until``s differ by the milliseconds between their looks)."""
        now = self.clock.now()
        with self.store.transaction():
            updated = rows.postpone(self.store, task_id, until, now, slack=POSTPONE_SLACK_SECONDS)
            if updated:
                rows.add_event(self.store, task_id, now, "postponed", SCHEDULED, delay=until - now, reason=reason)
                return True
            return rows.task_status(self.store, task_id) == SCHEDULED

    # -- taking back --------------------------------------------------------

    def take_back_leases(self, orphans_only=False, running_here=frozenset()):
        """Running tasks whose daemon is gone: back to scheduled, due now — unless the handler still runs.

        At start (``orphans_only``) every lease not ours is orphaned: we hold the
        daemon lock, so its owner is dead. Later, only expired leases count, and
        never one of ``running_here``: a retry this process runs now is alive,
        however far the wall clock has jumped.
        """
        now = self.clock.now()
        if self.members.shared:  # several daemons: a lease is taken back when its owner is gone or it expired
            running = rows.running_tasks(self.store, not_of_or_lease_before=(self.members.living_owners(), now))
        elif orphans_only:
            running = rows.running_tasks(self.store, not_owner=self.owner)
        else:
            running = rows.running_tasks(self.store, lease_before=now)
        queued, waiting = [], []
        for task in running:
            if task.lease_owner == self.owner and task.id in running_here:
                continue
            if _handler_may_run(task, self.members.shared) and (task.lease_until or 0) > now:
                waiting.append(task.id)  # never run a task twice at the same time
                continue
            _stop_overdue_handler(task, self.members.shared)
            with self.store.transaction():
                updated = rows.take_back(self.store, task.id, task.lease_owner, now)
                if updated:
                    rows.add_event(self.store, task.id, now, "lease_expired", SCHEDULED, task.category,
                                   task.attempts, owner=task.lease_owner)
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
        for task in rows.running_tasks(self.store, owner=self.owner):
            due, reason = now, "daemon stopping"
            if task.handler_pid == RUNS_ELSEWHERE:  # a Celery task runs on in its worker: sent again once it is over
                due = max(now, task.lease_until or now)
                reason = "daemon stopping; its Celery task may still run, so it is sent again when its lease ends"
            elif handler_alive(task.handler_pid):
                try:
                    os.killpg(task.handler_pid, signal.SIGKILL)
                except OSError:
                    pass
            with self.store.transaction():
                updated = rows.take_back(self.store, task.id, self.owner, now, uncount=True, due=due)
                if updated:
                    rows.add_event(self.store, task.id, now, "interrupted", SCHEDULED, task.category,
                                   task.attempts - 1, reason=reason)
                    released.append(task.id)
        return released

    def scheduled(self, due_before=None):
        """[(id, due, type)] of scheduled tasks, for rebuilding the heap."""
        return rows.scheduled(self.store, self.clock.now(), due_before)

    def breaker_changed(self, task, state, failures, cooldown, error=None):
        """Record a breaker opening or closing: an event on the task that tipped it, and an admin notice naming
        ``error``, the failure that tipped it (masked: it is a handler's output)."""
        now = self.clock.now()
        error = masked(error, known_secrets(self.config(), self.settings))
        title, body = messages.breaker_message(self.settings.lang, task.task_type, state == "open", failures, cooldown,
                                               task_id=task.id, error=error)
        with self.store.transaction():
            rows.add_event(self.store, task.id, now, f"breaker_{state}", rows.task_status(self.store, task.id),
                           task.category, task.attempts, task_type=task.task_type)
            enqueue(self.store, self.config(), now, "admin", "breaker", title, body, task_type=task.task_type)
        self._notified.set()
        log.warning("task type %s: breaker %s", task.task_type, state)


def _handler_may_run(task, shared):
    """Whether the handler of a leased task may still run: its process lives; or, several daemons sharing
    the database, it ran on another host, where no one here can tell (its lease, the handler's timeout,
    bounds the wait)."""
    if shared and task.handler_pid and (task.lease_owner or "").split(":", 1)[0] != socket.gethostname():
        return True  # RUNS_ELSEWHERE included
    return handler_alive(task.handler_pid)


def _stop_overdue_handler(task, shared):
    """The lease (twice the handler's timeout, and more) ended while processes of its handler still run here: their
    daemon died (``kill -9``) and what the handler started outlived it. Killed, as its timeout would have killed it,
    before the task runs again; never beside itself."""
    ran_elsewhere = shared and (task.lease_owner or "").split(":", 1)[0] != socket.gethostname()
    if task.handler_pid == RUNS_ELSEWHERE or ran_elsewhere or not handler_alive(task.handler_pid):
        return
    try:
        os.killpg(task.handler_pid, signal.SIGKILL)
    except OSError:
        return
    log.warning("task %s %s: the handler of retry %s (process group %s) outlived its lease; killed before it runs "
                "again", task.id, task.task_type, task.attempts, task.handler_pid)


def _mask_names(task, secrets):
    """Mask the task's type, reference and error type in place; returns those that changed, to be stored.
    A reporter masks only the secrets its own process knows (not the API token, not a literal channel key)."""
    changed = {}
    for name in ("task_type", "ref", "error_type"):
        value = getattr(task, name)
        if value and masked(value, secrets) != value:
            changed[name] = masked(value, secrets)
            setattr(task, name, changed[name])
    return changed


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


def _unsendable(handler, task):
    """Why ``handler`` can never send ``task``'s payload (a Celery task's argument kept only as its repr), or None."""
    if handler is None or handler.kind != "celery" or not task.payload or REPR_MARK not in task.payload:
        return None  # the mark's text first: a flood's payloads are not parsed for nothing
    from .integrations.celery_handler import call_arguments  # Celery is optional: only a celery handler needs this

    try:
        call_arguments(json.loads(task.payload))
    except ValueError as exc:
        return str(exc)
    return None


def _plain_retry(plan):
    """A new task simply scheduled for a retry: the flood's common case, written by prepared statements."""
    return (plan.decision.action == policy.RETRY and plan.new_error is None and "error_message" not in plan.fields
            and plan.decided_at is not None)


class _Moved(Exception):
    """The task changed under us (resolved by hand, taken back): leave it alone."""
