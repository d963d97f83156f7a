"""What the HTTP API does, over the daemon's store and live state. Thin: it reuses intake, manual, status."""

import logging
import os
import threading

from . import listing, manual
from . import status as status_module
from .clock import SystemClock
from .engine import Engine
from .errors import RefusedError, TaskNotFound
from .secrets import known_secrets
from .intake import record_failure, record_success
from .store.tasks import stored_error

log = logging.getLogger("failured.api")


class Backend:
    """``config()`` returns the active snapshot; ``wake()`` makes the daemon act now."""

    def __init__(self, store, settings, config, wake=lambda: None, health=lambda: (True, {}),
                 metrics_registry=None, clock=None):
        self.store = store
        self.settings = settings
        self.config = config
        self.wake = wake
        self.health = health
        self.metrics_registry = metrics_registry
        self.clock = clock or SystemClock()
        # Request threads queue here rather than inside SQLite, whose busy handler
        # sleeps in steps of up to 100 ms: p99 ingest latency 130 ms -> under 20 ms.
        self._writes = threading.Lock()

    def report_failure(self, task_type, error, *, error_type=None, payload=None, ref=None):
        with self._writes:
            task_id = record_failure(self.store, task_type, error, error_type=error_type, payload=payload, ref=ref,
                                     source="http", clock=self.clock,
                                     secrets=known_secrets(self.config(), self.settings))
        self.wake()
        return {"task_id": task_id, "status": "new", "classification": self._classify_stored(task_id)}

    def _classify_stored(self, task_id):
        """How the daemon will classify the stored task: from the row (cleaned, cut, masked), not the request.

        The task is stored already, so nothing here may fail the request (a client would report it
        again): on any error the answer says null and the daemon decides the task by itself.
        """
        try:
            task_type, error_type, message = stored_error(self.store, task_id)
            return self.config().classifier.classify(message, error_type, task_type).to_dict()
        except Exception:
            log.exception("task %s: stored, but the API could not classify it (the daemon will)", task_id)
            return None

    def report_success(self, task_type, count=1):
        with self._writes:
            record_success(self.store, task_type, count, clock=self.clock)
        return {"task_type": task_type, "count": count}

    def task(self, task_id):
        return manual.show(self.store, task_id)

    def recover(self, task_id, force=False):
        task = manual.recover(self.store, self.config(), task_id, self.clock.now(), force)
        self.wake()
        return {"task_id": task.id, "task_type": task.task_type, "status": task.status, "category": task.category,
                "attempts": task.attempts, "next_retry_at": task.next_retry_at}

    def label(self, task_id, category, note=None):
        engine = Engine(self.store, self.settings, self.clock, self.config, owner=f"api:{os.getpid()}")
        with self._writes:
            task = engine.relabel(task_id, category, note)
        self.wake()
        return {"task_id": task.id, "task_type": task.task_type, "status": task.status, "category": task.category,
                "attempts": task.attempts, "next_retry_at": task.next_retry_at}

    def status(self):
        return status_module.collect(self.store, self.config(), self.clock.now())

    # -- listing and bulk actions (H10, issue 16) ---------------------------

    def tasks(self, task_filter):
        """One page of tasks, newest first: {"tasks": [...], "next_cursor": id text or null}."""
        rows, cursor = listing.list_page(task_filter, self.clock.now(), self.store)
        return {"tasks": rows, "next_cursor": cursor}

    def requeue(self, dry_run=False, limit=manual.REQUEUE_PAGE, after_id=None, **filters):
        """``failured requeue`` over the API, one page of ``limit`` matches above ``after_id`` (the lock is held
        for that page only): (requeued tasks, [(task, why skipped)], the id to continue after or None)."""
        with self._writes:
            result = manual.requeue_page(self.store, self.config(), self.clock.now(), dry_run, limit, after_id,
                                         **filters)
        if not dry_run:
            self.wake()
        return result

    def resolve(self, task_ids, note=None):
        """Resolve each task; ([resolved tasks], [(task id, why refused)]) — one refusal stops no other."""
        resolved, refused = [], []
        for task_id in task_ids:
            try:
                with self._writes:
                    resolved.append(manual.resolve(self.store, task_id, self.clock.now(), note))
            except (RefusedError, TaskNotFound) as exc:
                refused.append((task_id, str(exc)))
        return resolved, refused

    def metrics(self):
        if self.metrics_registry is None:
            return b"", "text/plain; version=0.0.4; charset=utf-8"
        return self.metrics_registry.exposition()
