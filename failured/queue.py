"""Pending retries: a min-heap by due time, and the thread that runs them when due.

The heap mirrors ``tasks.next_retry_at``; the table is the truth, the heap is
an index, so a restart rebuilds it and a stale entry is simply skipped.

Due times come in as wall-clock seconds (what the table stores) and are kept as
monotonic deadlines, fixed when pushed: a wall clock set back by 40 s does not
make a retry 40 s late, nor one set forward run it early.
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
    """Task ids by due time. ``push`` of a known id moves it (the old entry goes stale).

    With a ``clock``, entries are ordered by monotonic deadline and ``next_due`` /
    ``pop_due`` speak monotonic time; without one (tests), the given times are used as they are.
    The heap, the due map and the condition are owned here: other threads only call methods.
    """

    def __init__(self, clock=None):
        self._clock = clock
        self._heap = []  # (deadline, order, task id, task type, due)
        self._due = {}  # task id -> its current due time (wall clock, as stored)
        self._order = itertools.count()
        self._changed = threading.Condition(threading.Lock())

    def __len__(self):
        return len(self._due)

    def _deadline(self, due):
        if self._clock is None:
            return due
        return self._clock.monotonic() + (due - self._clock.now())

    def push(self, task_id, due, task_type):
        with self._changed:
            if self._due.get(task_id) == due:
                return
            earliest = self._heap[0][0] if self._heap else None
            deadline = self._deadline(due)
            self._due[task_id] = due
            heapq.heappush(self._heap, (deadline, next(self._order), task_id, task_type, due))
            if earliest is None or deadline < earliest:
                self._changed.notify_all()  # the waiting thread sleeps too long otherwise

    def next_due(self):
        with self._changed:
            return self._next_deadline()

    def _next_deadline(self):
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def wait_until_due(self, now, longest):
        """Block until the earliest entry is due (``now()`` in the heap's time), an earlier push, or ``longest`` s."""
        with self._changed:
            deadline = self._next_deadline()
            delay = longest if deadline is None else min(deadline - now(), longest)
            if delay > 0:
                self._changed.wait(timeout=delay)

    def wake(self):
        """Wake the waiting thread now (stopping, or enabling retries)."""
        with self._changed:
            self._changed.notify_all()

    def pop_due(self, now, limit):
        """Up to ``limit`` (id, due, type) whose deadline has come, earliest first; ``due`` is as pushed."""
        popped = []
        with self._changed:
            while self._heap and len(popped) < limit:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > now:
                    break
                _, _, task_id, task_type, due = heapq.heappop(self._heap)
                del self._due[task_id]
                popped.append((task_id, due, task_type))
        return popped

    def contains(self, task_id):
        with self._changed:
            return task_id in self._due

    def _drop_stale(self):
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][4]:
            heapq.heappop(self._heap)


class Runner:
    """Waits for the earliest due retry and runs it in a bounded pool."""

    def __init__(self, engine, queue, breakers, clock, concurrency, enabled=True, paused=lambda: False):
        self.engine = engine
        self.paused = paused  # True while the disk is full: claiming would fail, so wait
        self.queue = queue
        self.breakers = breakers
        self.clock = clock
        self.enabled = enabled
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="retry")
        self._stopping = threading.Event()
        self._thread = None
        self._running = set()  # task ids whose retry runs here now
        self._running_lock = threading.Lock()
        self.last_loop = clock.monotonic()

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="retry-timer", daemon=True)
        self._thread.start()
        return self

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace):
        """Take no new retries; wait up to ``grace`` seconds for the running ones."""
        self._stopping.set()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        acquired = 0
        deadline = self.clock.monotonic() + grace
        while acquired < self.concurrency:
            if not self._slots.acquire(timeout=max(0.0, deadline - self.clock.monotonic())):
                break
            acquired += 1
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.concurrency - acquired  # retries still running (left to their leases)

    def _loop(self):
        while not self._stopping.is_set():
            self.last_loop = self.clock.monotonic()
            try:
                self._wait_until_due()
                if self._stopping.is_set() or not self.enabled or self.paused():
                    continue
                self._start_due()
            except Exception:
                log.exception("retry timer: unexpected error; going on")
                self._stopping.wait(0.5)

    def _wait_until_due(self):
        if self.enabled and not self.paused():
            self.queue.wait_until_due(self.clock.monotonic, 1.0)
        else:
            self._stopping.wait(1.0)

    def _start_due(self):
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                return
            popped = self.queue.pop_due(self.clock.monotonic(), 1)
            if not popped:
                self._slots.release()
                return
            task_id, due, task_type = popped[0]
            allowed, until = self.breakers.allow(task_type)
            if not allowed:
                self._slots.release()
                if self.engine.postpone(task_id, until, "breaker open"):
                    self.queue.push(task_id, until, task_type)
                continue
            self._started(task_id)
            self._pool.submit(self._run_one, task_id, due, task_type)

    def _run_one(self, task_id, due, task_type):
        try:
            claimed = self.engine.claim(task_id, expected_due=due)
            if claimed is None:
                self.breakers.release(task_type)  # a probe that did not run is no probe
                return
            task = claimed.task
            context = TaskContext(id=task.id, task_type=task.task_type, ref=task.ref,
                                  payload=_payload(task.payload), attempt=claimed.attempt)
            outcome = run_handler(claimed.handler, context,
                                  on_start=lambda pid: self.engine.record_pid(task.id, pid))
            due = self.engine.finish(claimed, outcome)
            change = self.breakers.record(task_type, outcome.ok)
            if change:
                self.engine.breaker_changed(task, change, self.breakers.config.failures,
                                            self.breakers.config.cooldown_seconds)
            if due is not None:
                self.queue.push(task_id, due, task_type)
        except Exception:
            log.exception("task %s %s: retry failed inside failured; the scan will take it back", task_id, task_type)
        finally:
            self._finished(task_id)
            self._slots.release()

    def _started(self, task_id):
        with self._running_lock:
            self._running.add(task_id)

    def _finished(self, task_id):
        with self._running_lock:
            self._running.discard(task_id)

    @property
    def running(self):
        """How many retries run now."""
        with self._running_lock:
            return len(self._running)

    def running_ids(self):
        """The task ids whose retries run in this process now (their leases are alive whatever the clock says)."""
        with self._running_lock:
            return frozenset(self._running)


def _payload(text):
    return json.loads(text) if text else {}
