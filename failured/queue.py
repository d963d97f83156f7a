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
import math
import queue
import threading
import time

from . import policy
from .engine import PartlySettled
from .errors import StoreError
from .handlers import Outcome, TaskContext, python_timed_out, run_handler, run_python_here
from .store.state import is_busy

log = logging.getLogger("failured.queue")

DUE_RESOLUTION_SECONDS = 0.001  # the table keeps due times to the millisecond
COALESCE_SECONDS = 0.002  # how long an outcome waits for others still running, to be written with them
SETTLE_AGAIN_SECONDS = 0.5  # after a write the database refused: how long before the timer tries again
# Beyond the ``concurrency`` running, the timer claims as many due retries as its workers start
# within this long at the handlers' recent pace: a flood of quick retries is claimed (and its outcomes
# written) dozens to a transaction, while a slow handler's retries are still claimed as workers free up.
CLAIM_AHEAD_SECONDS = 0.02
# The cap on that, for handlers quicker than 0.3 ms (4 workers). At 64 a flood's retries fell due faster than the
# timer claimed them while reports poured in (bench/flood.py: lateness during the flood p99 140-440 ms); at 256
# the same runs gave p99 20-41 ms. The price is paid only on a crash: kill -9 in the middle of such a flood leaves
# more quick handlers run but not yet recorded, and they run again after the restart (bench/flood.py --kill:
# 150-174 of 20,000 against 0-68 at 64; at least once either way, nothing lost, no finished task run again).
CLAIM_AHEAD_MAX = 256
# The timer claims a retry before it falls due, and its worker starts it on time: the claim's round trip
# (and a step's wait for the write lock, or the server) is paid before the due time, not after it. The
# timer wakes CLAIM_LEAD_SECONDS before the earliest due time and claims what falls due within
# CLAIM_HORIZON_SECONDS, so a steady stream of retries is claimed some milliseconds' worth at a time.
CLAIM_LEAD_SECONDS = 0.025
CLAIM_HORIZON_SECONDS = 0.05
# A retry whose handler takes less than this waits for this process's CPU (the GIL) rather than for the handler.
QUICK_HANDLER_SECONDS = 0.005
PACE_WEIGHT = 0.2  # the weight of the newest outcome in the handlers' pace (a moving average of durations)


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
        self._woken = False  # wake() came while nobody waited: the next wait returns at once

    def __len__(self):
        return len(self._due)

    @property
    def monotonic(self):
        """True when deadlines are monotonic seconds (the queue has a clock)."""
        return self._clock is not None

    def _deadline(self, due):
        if self._clock is None:
            return due
        return self._clock.monotonic() + (due - self._clock.now())

    def push(self, task_id, due, task_type):
        with self._changed:
            # The intake pushes again the scheduled rows it reads (a `recover` moves one to now), whose due
            # times the table keeps to the millisecond: the same due time, not a new one to time again from the
            # wall clock (after a clock set an hour forward, that ran every such retry at once).
            if abs(self._due.get(task_id, math.inf) - due) < DUE_RESOLUTION_SECONDS:
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

    def wait_until_due(self, now, longest, due_counts=True, lead=0.0):
        """Block until the earliest entry is due (``now()`` in the heap's time) or ``lead`` s before, an
        earlier push, a ``wake()``, or ``longest`` s. With ``due_counts`` false (no room to run one) only a
        wake ends it early."""
        with self._changed:
            if not self._woken:
                deadline = self._next_deadline() if due_counts else None
                delay = longest if deadline is None else min(deadline - lead - now(), longest)
                if delay > 0:
                    self._changed.wait(timeout=delay)
            self._woken = False

    def wake(self):
        """Wake the waiting thread now (stopping, enabling retries, a retry finished), or its next wait."""
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def pop_due(self, now, limit):
        """Up to ``limit`` (id, due, type) whose deadline has come, earliest first; ``due`` is as pushed."""
        return [(task_id, due, task_type) for task_id, due, task_type, _ in self.pop_until(now, limit)]

    def pop_until(self, until, limit):
        """``pop_due`` of the entries whose deadline comes by ``until``, each with its deadline:
        (id, due, type, deadline)."""
        popped = []
        with self._changed:
            while self._heap and len(popped) < limit:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > until:
                    break
                deadline, _, task_id, task_type, due = heapq.heappop(self._heap)
                del self._due[task_id]
                popped.append((task_id, due, task_type, deadline))
        return popped

    def contains(self, task_id):
        with self._changed:
            return task_id in self._due

    def _drop_stale(self):
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][4]:
            heapq.heappop(self._heap)


class Runner:
    """Waits for the earliest due retries, claims them together and runs them in a bounded pool.

    This thread is the retries' one writer: claims and outcomes are written here in
    batches (one transaction each), the pool threads only run handlers. At most
    ``concurrency`` handlers run at a time; ``claim_limit`` retries are claimed at a time,
    the ones beyond ``concurrency`` waiting for a worker at most about CLAIM_AHEAD_SECONDS
    (their leases, twice the handler's timeout and more, start when they are claimed).
    A retry is claimed up to CLAIM_HORIZON_SECONDS before its due time, and its worker
    starts it at that time, not before.
    """

    def __init__(self, engine, queue, breakers, clock, concurrency, enabled=True, paused=lambda: False):
        self.engine = engine
        self.paused = paused  # True while the disk is full: claiming would fail, so wait
        self.queue = queue
        self.breakers = breakers
        self.clock = clock
        self.enabled = enabled
        self.concurrency = concurrency
        self._pace = None  # the handlers' recent duration (s); None until an outcome came back
        self._pool = _Workers(concurrency, "retry")
        self._outcomes = _Outcomes()  # (Claimed, Outcome) from the pool threads to this one
        # Outcomes a write could not record (the database stopped answering): recorded at a later step, while
        # their leases are ours. Dropped at once, a retry that worked would run again once its lease ran out.
        self._unrecorded = []
        self._kept_since = {}  # task id -> when (monotonic) its outcome was first kept unrecorded
        self._failing = set()  # what cannot reach the database now ("settle", "breakers"): said once, not per step
        self._stopping = threading.Event()
        self._thread = None
        self._running = set()  # task ids claimed (or being claimed) here and not yet finished
        self._running_lock = threading.Lock()
        # Python handlers run on the retry workers themselves: (deadline, Claimed) by call, until each returns or
        # the timer gives up on it (then another worker takes the stuck one's place). See _run_python.
        self._python_calls = {}
        self._python_lock = threading.Lock()
        self._wakes_by = clock.monotonic()  # the latest the timer's current wait ends (monotonic)
        self.last_loop = clock.monotonic()
        self._lock_waited = False  # a wait for another process's lock was said

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="retry-timer", daemon=True)
        self._thread.start()
        return self

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace):
        """Take no new retries; wait up to ``grace`` seconds for the running ones (and record them)."""
        self._stopping.set()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = self.clock.monotonic() + grace
        while self.running and self.clock.monotonic() < deadline:
            self._give_up_on_python_calls()
            self._step(claiming=False, wait=min(0.2, max(0.0, deadline - self.clock.monotonic())))
        self._pool.shutdown()
        return self.running  # retries still running (left to their leases)

    def _loop(self):
        while not self._stopping.is_set():
            self.last_loop = self.clock.monotonic()
            try:
                self._wait_until_due()
                self._step(claiming=not self._stopping.is_set() and self.enabled and not self.paused())
                self._lock_waited = False
            except Exception as exc:
                if not is_busy(exc):
                    log.exception("retry timer: unexpected error; going on")
                elif not self._lock_waited:  # another process holds the database's lock: said once a wait
                    log.warning("retry timer: waits for the database's lock")
                    self._lock_waited = True
                self._stopping.wait(0.5)

    def _wait_until_due(self):
        now = self.clock.monotonic()
        longest = min(1.0, max(0.0, self._give_up_on_python_calls() - now))
        self._wakes_by = now + longest
        if self.enabled and not self.paused():
            self.queue.wait_until_due(self.clock.monotonic, longest, due_counts=self.running < self.claim_limit,
                                      lead=CLAIM_LEAD_SECONDS)
        else:
            self._stopping.wait(longest)

    def _step(self, claiming=True, wait=0.0):
        """Record the outcomes that came back and claim what is due, in one transaction; run the claimed."""
        fresh = self._outcomes.take(0.0 if self._unrecorded else wait)
        if fresh and self.running > len(fresh) + len(self._unrecorded):
            # Others are running: handlers of a burst end together, and one transaction for
            # all of them costs what one costs. Wait a moment for them rather than write each.
            fresh += self._outcomes.take(COALESCE_SECONDS)
        self._keep_pace(fresh)
        results, self._unrecorded = self._still_ours(self._unrecorded) + fresh, []
        due = self._pop_due(self.claim_limit - self.running + len(results)) if claiming else []
        if not results and not due:
            return
        self._started([task_id for task_id, _, _, _ in due])  # before the claim commits: see running_ids
        try:
            dues, claimed = self.engine.settle(results, [(task_id, expected) for task_id, expected, _, _ in due])
        except PartlySettled as partly:
            self._carry_on(due, partly.claimed, partly.settled)
            self._keep_unrecorded(partly.unsettled, partly)
            return
        except Exception as exc:
            self._not_settled(results, due, exc)
            return
        self._recovered("settle", "retry timer: outcomes are recorded again")
        self._carry_on(due, claimed, [(c, o, next_due) for (c, o), next_due in zip(results, dues)])

    def _carry_on(self, due, claimed, settled):
        """Run what was claimed, let go of what was not, and finish each settled (Claimed, Outcome, next due)."""
        ours = {item.task.id for item in claimed}
        for task_id, _, task_type, _ in due:
            if task_id not in ours:
                self._finished([task_id])
                self.breakers.release(task_type)  # a probe that did not run is no probe
        starts = {task_id: deadline for task_id, _, _, deadline in due}
        for item in claimed:
            self._pool.submit(self._run, item, starts[item.task.id])
        for claimed_one, outcome, next_due in settled:
            self._kept_since.pop(claimed_one.task.id, None)
            self._after_finish(claimed_one, outcome, next_due)

    def _not_settled(self, results, due, exc):
        """Nothing was written: keep the outcomes for a later step (their retries stay running here, so no one
        takes their leases back and runs them again) and put the claims back on the heap."""
        self._finished([task_id for task_id, _, _, _ in due])
        for task_id, expected, task_type, _ in due:  # still scheduled in the table: try again
            self.queue.push(task_id, expected, task_type)
            self.breakers.release(task_type)
        self._keep_unrecorded(results, exc)

    def _keep_unrecorded(self, results, exc):
        now = self.clock.monotonic()
        for claimed, _ in results:
            self._kept_since.setdefault(claimed.task.id, now)
        self._unrecorded = results
        if self._failing_now("settle"):
            what = (f"outcomes (tasks {' '.join(str(claimed.task.id) for claimed, _ in results)}) not recorded yet"
                    if results else "due retries not claimed")  # the claims alone failed: said too, not in silence
            if isinstance(exc, StoreError):  # the store layer logs the lost connection itself
                log.warning("retry timer: %s: %s; trying again", what, exc)
            else:
                log.error("retry timer: %s; trying again", what, exc_info=exc)
        time.sleep(SETTLE_AGAIN_SECONDS)  # not the stop event: stopping, the timer still tries to record them

    def _still_ours(self, kept):
        """The kept outcomes whose leases have not run out: a lease lasts the handler's timeout plus its margin
        past the run's end, and once it is out another run may hold the task; an older outcome is dropped."""
        now, ours = self.clock.monotonic(), []
        for claimed, outcome in kept:
            margin = policy.lease_seconds(claimed.handler.timeout) - claimed.handler.timeout
            if now - self._kept_since.get(claimed.task.id, now) < margin:
                ours.append((claimed, outcome))
                continue
            log.warning("task %s %s: retry %s's outcome was not recorded before its lease ran out; the retry "
                        "runs again", claimed.task.id, claimed.task.task_type, claimed.attempt)
            self._kept_since.pop(claimed.task.id, None)
            self._finished([claimed.task.id])
        return ours

    def _failing_now(self, what):
        """True the first time ``what`` fails in a row: a database that is away is said once, not every step."""
        first = what not in self._failing
        self._failing.add(what)
        return first

    def _recovered(self, what, words):
        if what in self._failing:
            self._failing.discard(what)
            log.info(words)

    @property
    def claim_limit(self):
        """How many retries may be claimed (running or waiting for a worker) at once."""
        if self._pace is None:
            return self.concurrency  # nothing known of the handlers yet: claim as workers free up
        ahead = int(self.concurrency * CLAIM_AHEAD_SECONDS / max(self._pace, 1e-6))
        return self.concurrency + min(ahead, CLAIM_AHEAD_MAX)

    def _quick(self):
        pace = self._pace  # set by the timer thread: read once
        return pace is not None and pace < QUICK_HANDLER_SECONDS

    def _keep_pace(self, results):
        for _, outcome in results:
            duration = outcome.duration
            self._pace = duration if self._pace is None else self._pace + PACE_WEIGHT * (duration - self._pace)

    def _pop_due(self, room):
        """Up to ``room`` retries due within CLAIM_HORIZON_SECONDS the breakers let through (the others are
        postponed): (id, due, type, deadline on the heap's clock)."""
        if room <= 0:
            return []
        allowed = []
        running = self.running_ids()
        popped = self.queue.pop_until(self.clock.monotonic() + CLAIM_HORIZON_SECONDS, room)
        for index, (task_id, due, task_type, deadline) in enumerate(popped):
            if task_id in running:
                # A stale entry of a retry that runs here: the intake's sweep pushed it again while it was being
                # claimed (still scheduled in what it read). Its claim would fail, and marking it finished
                # would forget the run: its lease would look abandoned, and one more retry would be claimed.
                continue
            try:
                ok, until = self.breakers.allow(task_type, starts=self._starts(deadline))
                if not ok and self.engine.postpone(task_id, until, "breaker open"):
                    self.queue.push(task_id, until, task_type)
            except Exception as exc:  # the database stopped answering: what is not decided stays on the heap
                if self._failing_now("breakers"):
                    log.warning("retry timer: breakers not consulted (%s); due retries wait on the heap", exc)
                for left_id, left_due, left_type, _ in popped[index:]:
                    if left_id not in running:
                        self.queue.push(left_id, left_due, left_type)
                break
            if ok:
                allowed.append((task_id, due, task_type, deadline))
        else:
            self._recovered("breakers", "retry timer: the breakers are consulted again")
        return allowed

    def _starts(self, deadline):
        """When a retry popped with ``deadline`` starts (monotonic): a queue without a clock speaks the caller's
        times, which mean nothing to the breakers, so its retries count as starting now."""
        return deadline if self.queue.monotonic else None

    def _run(self, claimed, deadline):
        """Run one claimed retry, not before its due time (``deadline``, on the heap's clock)."""
        task = claimed.task
        early = deadline - self.clock.monotonic()
        if early > 0:
            time.sleep(min(early, CLAIM_HORIZON_SECONDS))  # claimed ahead: at most that early
        try:
            context = TaskContext(id=task.id, task_type=task.task_type, ref=task.ref,
                                  payload=_payload(task.payload), attempt=claimed.attempt)
            if claimed.handler.kind == "python":
                outcome = self._run_python(claimed, context)
                if outcome is None:  # given up on meanwhile (recorded as timed out): another worker took our place
                    return _RETIRE
            else:
                outcome = run_handler(claimed.handler, context,
                                      on_start=lambda pid: self.engine.record_pid(task.id, pid))
        except Exception as exc:  # a payload that is not JSON: the retry fails, the loop goes on
            outcome = Outcome(False, f"cannot run the retry: {exc}", type(exc).__name__)
        self._outcomes.put((claimed, outcome))
        self.queue.wake()

    def _run_python(self, claimed, context):
        """A python handler's Outcome, run on this worker; None when the timer gave up on it first.

        Handing each call to a thread of its own and back cost a flood of quick retries more than their
        claims: here the worker runs it, and the timer enforces the timeout (_give_up_on_python_calls)."""
        call, deadline = object(), self.clock.monotonic() + claimed.handler.timeout
        with self._python_lock:
            self._python_calls[call] = (deadline, claimed)
        if deadline < self._wakes_by:
            self.queue.wake()  # the timer would wait past this call's deadline
        try:
            outcome = run_python_here(claimed.handler, context)
        finally:
            with self._python_lock:
                ours = self._python_calls.pop(call, None) is not None
        return outcome if ours else None

    def _give_up_on_python_calls(self):
        """Record the python calls past their timeout as timed out, each worker replaced by a new one (a thread
        cannot be stopped: it is left to finish alone); returns the next deadline (monotonic; inf: none)."""
        now = self.clock.monotonic()
        with self._python_lock:
            late = [call for call, (deadline, _) in self._python_calls.items() if deadline <= now]
            given_up = [self._python_calls.pop(call)[1] for call in late]
            earliest = min((deadline for deadline, _ in self._python_calls.values()), default=float("inf"))
        for claimed in given_up:
            self._pool.add_one()
            self._outcomes.put((claimed, python_timed_out(claimed.handler, claimed.task)))
        return earliest

    def _after_finish(self, claimed, outcome, due):
        task = claimed.task
        try:
            change = self.breakers.record(task.task_type, outcome.ok)
            if change:
                self.engine.breaker_changed(task, change, self.breakers.failures(task.task_type),
                                            self.breakers.config.cooldown_seconds, None if outcome.ok else outcome.error)
            if due is not None:
                self.queue.push(task.id, due, task.task_type)
        except Exception:
            log.exception("task %s %s: breaker not updated after its retry", task.id, task.task_type)
        finally:
            self._finished([task.id])

    def _started(self, task_ids):
        with self._running_lock:
            self._running.update(task_ids)

    def _finished(self, task_ids):
        with self._running_lock:
            self._running.difference_update(task_ids)

    @property
    def running(self):
        """How many retries run now (claimed here, outcome not yet recorded)."""
        with self._running_lock:
            return len(self._running)

    def behind(self):
        """True while a retry the timer would claim now (due within CLAIM_LEAD_SECONDS) waits unclaimed and
        there is room to claim it, or the room is taken by quick retries (retries are enabled): the intake
        gives way then, so that the timer claims it before it is due rather than behind a commit of
        decisions. Quick retries (a flood's) wait for the CPU the intake would take, not for their handlers."""
        if not self.enabled or self.paused():
            return False
        if self.running >= self.claim_limit and not self._quick():
            return False
        deadline = self.queue.next_due()
        return deadline is not None and deadline <= self.clock.monotonic() + CLAIM_LEAD_SECONDS

    def running_ids(self):
        """The task ids whose retries run in this process now (their leases are alive whatever the clock says)."""
        with self._running_lock:
            return frozenset(self._running)


_RETIRE = object()  # a job's return value that ends its worker thread (_Workers.add_one started its successor)


class _Workers:
    """``count`` threads that run the jobs given to them, in order (started at the first). What a
    ThreadPoolExecutor does, without a Future per job: at thousands of retries a second its submit cost
    the retry timer as much as the rest of a claim."""

    def __init__(self, count, name):
        self._count, self._name = count, name
        self._jobs = queue.SimpleQueue()
        self._started = False
        self._numbers = itertools.count()

    def submit(self, function, *args):
        if not self._started:
            self._started = True
            for _ in range(self._count):
                self.add_one()
        self._jobs.put((function, args))

    def add_one(self):
        """Start a thread, in the place of one stuck in a job given up on (which ends when it returns _RETIRE)."""
        threading.Thread(target=self._work, name=f"{self._name}_{next(self._numbers)}", daemon=True).start()

    def _work(self):
        while (job := self._jobs.get()) is not None:
            function, args = job
            try:
                if function(*args) is _RETIRE:
                    return
            except Exception:  # a bug must not end the worker
                log.exception("retry worker: unexpected error; going on")

    def shutdown(self):
        """Drop the jobs not started yet; each thread ends after the one it runs."""
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in range(self._count):
            self._jobs.put(None)


class _Outcomes:
    """The outcomes the pool threads hand to the retry timer; ``take`` empties it."""

    def __init__(self):
        self._queue = queue.SimpleQueue()

    def put(self, item):
        self._queue.put(item)

    def take(self, wait=0.0):
        """Everything there now; with ``wait``, block up to that long for the first."""
        items = []
        try:
            items.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            return items


def _payload(text):
    return json.loads(text) if text else {}
