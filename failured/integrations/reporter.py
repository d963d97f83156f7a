"""Deliver a worker's reports without losing one and without holding the worker up.

A failure is sent at once when nothing older waits in the spool; otherwise, or
when sending fails, it is spooled and a background thread sends the spool oldest
first. Successes are only counted in memory and sent as one count per task type
every ``flush_interval`` (spooled too when failured cannot take them).
"""

import atexit
import logging
import os
import threading
import time
from collections import Counter

from .targets import DeliveryError

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.25


class Reporter:
    """One per worker process (the flusher thread is started again after a fork)."""

    def __init__(self, target, spool, *, flush_interval=5.0, clock=time.monotonic):
        self.target = target
        self.spool = spool
        self.flush_interval = flush_interval
        self.clock = clock
        self._successes = Counter()  # task type -> runs not yet sent; guarded by _lock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()  # one flush at a time (thread vs. shutdown)
        self._thread = None
        self._pid = None
        self._retry_at = 0.0  # after a failed delivery, the flusher waits until then
        self._backoff = MIN_BACKOFF
        self._stopping = False

    # -- from the worker's signal handlers -------------------------------------------------

    def report_failure(self, record):
        """Send or spool one failure record; returns "sent", "spooled" or "rejected". Never raises."""
        self._ensure_thread()
        try:
            if self.clock() >= self._retry_at and self.spool.is_empty():
                try:
                    self.target.send(record)
                    return "sent"
                except DeliveryError as exc:
                    if exc.permanent:
                        log.error("failured refused a %s report (%s); kept in %s as .rejected",
                                  record.get("task_type"), exc, self.spool.dir)
                        self._set_aside(record)
                        return "rejected"
                    self._failed(exc)
            self.spool.put(record)
            self._wake.set()
            return "spooled"
        except Exception:  # never into the worker: its task result must stay what it was
            log.exception("failured: could not report or spool a failure of %s", record.get("task_type"))
            return "lost"

    def count_success(self, task_type):
        with self._lock:
            self._successes[task_type] += 1
        self._ensure_thread()

    # -- sending ---------------------------------------------------------------------------

    def flush(self, deadline=None):
        """Send counted successes, then the spool oldest first. Returns the number of records sent."""
        with self._flush_lock:
            sent = self._flush_successes()
            drained, error = self.spool.drain(self._send_spooled, deadline)
            if error is not None:
                self._failed(error)
            elif drained or sent:  # failured is back: send directly again
                self._backoff, self._retry_at = MIN_BACKOFF, 0.0
            return sent + drained

    def _flush_successes(self):
        with self._lock:
            counts, self._successes = self._successes, Counter()
        sent = 0
        for task_type, count in counts.items():
            record = {"kind": "success", "task_type": task_type, "count": count}
            if self.clock() >= self._retry_at and self.spool.is_empty():
                try:
                    self.target.send(record)
                    sent += 1
                    continue
                except DeliveryError as exc:
                    if exc.permanent:
                        log.error("failured refused a success count for %s: %s", task_type, exc)
                        continue
                    self._failed(exc)
            self.spool.put(record)
        return sent

    def _send_spooled(self, record):
        try:
            self.target.send(record)
        except DeliveryError as exc:
            if not exc.permanent:
                raise
            log.error("failured refused a spooled %s report (%s); kept as .rejected", record.get("task_type"), exc)
            self._set_aside(record)

    def _set_aside(self, record):
        path = self.spool.put(record)
        os.rename(path, path.with_suffix(".rejected"))

    def _failed(self, exc):
        if self._backoff == MIN_BACKOFF:  # one warning per outage, not one per report
            log.warning("failured not reachable at %s (%s): reports go to %s until it is",
                        self.target.describe(), exc, self.spool.dir)
        self._retry_at = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, max(self.flush_interval, MIN_BACKOFF))

    # -- the background flusher ------------------------------------------------------------

    def _ensure_thread(self):
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            # After a fork the parent's thread is gone (and a held lock would stay held).
            self._flush_lock = threading.Lock()
            self._wake = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="failured-flusher", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self):
        while not self._stopping:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            wait = self._retry_at - self.clock()
            if wait > 0:
                time.sleep(min(wait, self.flush_interval))
            try:
                self.flush()
            except Exception:  # a loop of its own: never dies
                log.exception("failured: flushing the spool failed")

    def close(self, timeout=None):
        """Last flush at shutdown, bounded by ``timeout`` (default: the target's timeout)."""
        if self._pid != os.getpid():
            return
        self._stopping = True
        limit = timeout if timeout is not None else getattr(self.target, "timeout", 2.0)
        try:
            self.flush(deadline=time.monotonic() + limit)
        except Exception:
            log.exception("failured: last flush failed; the spool keeps what was not sent")
