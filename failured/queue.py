"""Pending retries: a min-heap by due time, and the thread that runs them when due.

The heap mirrors ``tasks.next_retry_at``; the table is the truth, the heap is
an index, so a restart rebuilds it and a stale entry is simply skipped.
"""

import heapq
import json
import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from .handlers import TaskContext, run_handler

log = logging.getLogger("failured.queue")


class RetryQueue:
    """Task ids by due time. ``push`` of a known id moves it (the old entry goes stale)."""

    def __init__(self):
        self._heap = []
        self._due = {}  # task id -> its current due time
        self._order = itertools.count()
        self.changed = threading.Condition()

    def __len__(self):
        return len(self._due)

    def push(self, task_id, due, task_type):
        with self.changed:
            if self._due.get(task_id) == due:
                return
            earliest = self._heap[0][0] if self._heap else None
            self._due[task_id] = due
            heapq.heappush(self._heap, (due, next(self._order), task_id, task_type))
            if earliest is None or due < earliest:
                self.changed.notify_all()  # the waiting thread sleeps too long otherwise

    def next_due(self):
        with self.changed:
            self._drop_stale()
            return self._heap[0][0] if self._heap else None

    def pop_due(self, now, limit):
        """Up to ``limit`` (id, due, type) whose due time has come, earliest first."""
        popped = []
        with self.changed:
            while self._heap and len(popped) < limit:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > now:
                    break
                due, _, task_id, task_type = heapq.heappop(self._heap)
                del self._due[task_id]
                popped.append((task_id, due, task_type))
        return popped

    def contains(self, task_id):
        with self.changed:
            return task_id in self._due

    def _drop_stale(self):
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)


class Runner:
    """Waits for the earliest due retry and runs it in a bounded pool."""

    def __init__(self, engine, queue, breakers, clock, concurrency, enabled=True):
        self.engine = engine
        self.queue = queue
        self.breakers = breakers
        self.clock = clock
        self.enabled = enabled
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="retry")
        self._stopping = threading.Event()
        self._thread = None
        self._running = 0
        self._running_lock = threading.Lock()
        self.last_loop = clock.now()

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="retry-timer", daemon=True)
        self._thread.start()
        return self

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace):
        """Take no new retries; wait up to ``grace`` seconds for the running ones."""
        self._stopping.set()
        with self.queue.changed:
            self.queue.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        acquired = 0
        deadline = self.clock.now() + grace
        while acquired < self.concurrency:
            if not self._slots.acquire(timeout=max(0.0, deadline - self.clock.now())):
                break
            acquired += 1
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.concurrency - acquired  # retries still running (left to their leases)

    def _loop(self):
        while not self._stopping.is_set():
            self.last_loop = self.clock.now()
            try:
                self._wait_until_due()
                if self._stopping.is_set() or not self.enabled:
                    continue
                self._start_due()
            except Exception:
                log.exception("retry timer: unexpected error; going on")
                self._stopping.wait(0.5)

    def _wait_until_due(self):
        with self.queue.changed:
            due = self.queue.next_due() if self.enabled else None
            delay = 1.0 if due is None else due - self.clock.now()
            if delay > 0:
                self.queue.changed.wait(timeout=min(delay, 1.0))

    def _start_due(self):
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                return
            popped = self.queue.pop_due(self.clock.now(), 1)
            if not popped:
                self._slots.release()
                return
            task_id, _, task_type = popped[0]
            allowed, until = self.breakers.allow(task_type, self.clock.now())
            if not allowed:
                self._slots.release()
                if self.engine.postpone(task_id, until, "breaker open"):
                    self.queue.push(task_id, until, task_type)
                continue
            self._count(+1)
            self._pool.submit(self._run_one, task_id, task_type)

    def _run_one(self, task_id, task_type):
        try:
            claimed = self.engine.claim(task_id)
            if claimed is None:
                self.breakers.release(task_type)  # a probe that did not run is no probe
                return
            task = claimed.task
            context = TaskContext(id=task.id, task_type=task.task_type, ref=task.ref,
                                  payload=_payload(task.payload), attempt=claimed.attempt)
            outcome = run_handler(claimed.handler, context,
                                  on_start=lambda pid: self.engine.record_pid(task.id, pid))
            due = self.engine.finish(claimed, outcome)
            change = self.breakers.record(task_type, outcome.ok, self.clock.now())
            if change:
                self.engine.breaker_changed(task, change, self.breakers.config.failures,
                                            self.breakers.config.cooldown_seconds)
            if due is not None:
                self.queue.push(task_id, due, task_type)
        except Exception:
            log.exception("task %s %s: retry failed inside failured; the scan will take it back", task_id, task_type)
        finally:
            self._count(-1)
            self._slots.release()

    def _count(self, step):
        with self._running_lock:
            self._running += step

    @property
    def running(self):
        return self._running


def _payload(text):
    return json.loads(text) if text else {}
