"""Deliver a worker's reports without losing one and without holding the worker up.

The failing task pays only for the hand-off: its report is copied into a slot of
the spool (see ``spool``) and a sender thread of the worker process is woken. That
thread keeps slots ready, sends the spool oldest first, a batch at a time, and
removes each report once failured has it. While failured cannot be reached it backs off, and fsyncs the
waiting files in one go, so a long outage also survives a power loss. Successes are
only counted in memory and sent as one count per task type every ``flush_interval``
(spooled when failured cannot take them).
"""

import atexit
import logging
import os
import threading
import time
from collections import Counter

from .spool import SENT

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.25


class Reporter:
    """One per worker process: the sender thread is started on first use, and again after a fork."""

    def __init__(self, target, spool, *, flush_interval=5.0, clock=time.monotonic):
        self.target = target
        self.spool = spool
        self.flush_interval = flush_interval
        self.clock = clock
        self.batch = getattr(target, "batch", 1)
        self._reset()
        atexit.register(self.close)
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        """Fresh state for this process (a forked child has none of its parent's threads or lock owners)."""
        self._lock = threading.Lock()  # guards _successes and the thread's start
        self._successes = Counter()  # task type -> runs not yet sent
        self._wake = threading.Event()  # "there is something to send"
        self._stop = threading.Event()  # close() was called
        self._flush_lock = threading.Lock()  # one flush at a time (sender thread vs. close)
        self._thread = None  # started on first use in this process
        self._retry_at = 0.0  # after a failed delivery the sender waits until then
        self._backoff = MIN_BACKOFF
        self._synced = set()  # names of waiting files this process has fsynced; owned by the flush lock
        self._prepare_failing = False  # owned by the sender thread

    # -- from the worker's signal handlers -------------------------------------------------

    def report_failure(self, record):
        """Hand one failure record to the spool and wake the sender; returns "spooled" (or, when the spool
        cannot be written, "sent", "rejected" or "lost").

        Never raises: the task's own result must stay what it was.
        """
        try:
            self.spool.put(record)
        except Exception as exc:  # a full or read-only disk: try failured itself before giving up
            return self._send_now(record, exc)
        self.start()
        self._wake.set()
        return "spooled"

    def _send_now(self, record, spool_error):
        try:
            outcomes, error = self.target.send_many([record])
        except Exception as exc:
            outcomes, error = [], exc
        if outcomes:
            return "sent" if outcomes[0] == SENT else "rejected"
        log.error("failured: a failure of %s is lost: the spool %s cannot take it (%s) and failured did not (%s)",
                  record.get("task_type"), self.spool.dir, spool_error, error)
        return "lost"

    def count_success(self, task_type):
        with self._lock:
            self._successes[task_type] += 1
        self.start()

    # -- sending ---------------------------------------------------------------------------

    def flush(self, stop=None):
        """Send the spool oldest first, then the counted successes. Returns the number of records sent."""
        with self._flush_lock:
            return self._flush(stop)

    def _flush(self, stop):
        sent, error = self.spool.drain(self._send_batch, self.batch, stop)
        if error is not None:
            self._failed(error)
            self._sync_waiting()
        elif sent:
            self._backoff, self._retry_at = MIN_BACKOFF, 0.0
        return sent + self._flush_successes()

    def _send_batch(self, records):
        if threading.current_thread() is self._thread:  # a long drain: keep slots ready meanwhile
            self._prepare()
        return self.target.send_many(records)

    def _flush_successes(self):
        with self._lock:
            counts, self._successes = self._successes, Counter()
        records = [{"kind": "success", "task_type": t, "count": n} for t, n in counts.items()]
        if records and self.clock() >= self._retry_at:
            outcomes, error = self.target.send_many(records)
            if error is not None:
                self._failed(error)
            records = records[len(outcomes):]
        for record in records:  # failured is down: keep the counts for later
            self.spool.put(record)
        return len(counts) - len(records)

    def _failed(self, exc):
        if self._backoff == MIN_BACKOFF:  # one warning per outage, not one per report
            log.warning("failured not reachable at %s (%s): reports wait in %s until it is",
                        self.target.describe(), exc, self.spool.dir)
        self._retry_at = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, max(self.flush_interval, MIN_BACKOFF))

    def _sync_waiting(self):
        """fsync the files that will wait for failured, each once, all in one go (off the task's path)."""
        waiting = {path.name: path for path in self.spool.pending()}
        self._synced &= waiting.keys()
        new = [path for name, path in waiting.items() if name not in self._synced]
        if new and not self.spool.durable:
            self.spool.sync(new)
        self._synced.update(path.name for path in new)

    # -- the sender thread -----------------------------------------------------------------

    def start(self):
        """Start this process's sender thread if it is not running (it also sends what earlier workers left)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="failured-sender", daemon=True)
                self._thread.start()

    def _run(self):
        self._wake.set()  # a first pass at once: the spool may hold what a killed worker left
        try:
            self.spool.salvage()
        except Exception:  # a loop of its own: never dies
            log.exception("failured: could not look for half-written reports in %s", self.spool.dir)
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._prepare()
            while (wait := self._retry_at - self.clock()) > 0 and not self._stop.is_set():
                if self._wake.wait(wait):  # reports while failured is down: keep slots ready for them
                    self._wake.clear()
                    self._prepare()
            if self._stop.is_set():
                break
            try:
                self.flush(stop=self._stop.is_set)
            except Exception as exc:  # a loop of its own: never dies
                log.exception("failured: sending the spool failed")
                self._failed(exc)

    def _prepare(self):
        try:
            self.spool.prepare()
            self._prepare_failing = False
        except (OSError, ValueError) as exc:  # a full disk: put() then writes files of its own (or sends at once)
            if not self._prepare_failing:  # once until it works again
                log.warning("failured: cannot make slots in %s: %s", self.spool.dir, exc)
            self._prepare_failing = True

    def close(self, timeout=None):
        """At shutdown: stop the sender and send what is left within ``timeout`` (default: the target's).

        What is not sent by then stays in the spool for the next worker. Nothing to do
        in a process that never reported (one that only sends tasks, say).
        """
        if self._thread is None or self._stop.is_set():
            return
        limit = timeout if timeout is not None else getattr(self.target, "timeout", 2.0)
        deadline = time.monotonic() + limit
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(limit)
        if not self._flush_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            log.warning("failured: still sending at shutdown; the spool %s keeps the rest", self.spool.dir)
            return
        try:
            self._flush(stop=lambda: time.monotonic() >= deadline)
            self.spool.discard_slots()
        except Exception:
            log.exception("failured: last flush failed; the spool %s keeps what was not sent", self.spool.dir)
        finally:
            self._flush_lock.release()
