"""Circuit breaker per task type: stop retry storms, postpone (never drop), probe, resume.

closed --N failures in a row--> open --cool-down over--> half_open (one probe)
half_open --probe ok--> closed;  half_open --probe failed--> open again

The cool-down runs on the monotonic clock; the table keeps the wall-clock time it
ends, for people and for the next start.

Several daemons on one PostgreSQL database share their breakers: each change is decided under the
row's lock from the row (so the daemon that tips a breaker is the one that says so, once), the
probe is claimed in the table (one probe among all daemons), and each daemon reads the table again
at most every REFRESH_SECONDS to learn of the others' changes. Shared, the cool-down is the
table's wall-clock time (one time for every host).
"""

import threading
from dataclasses import dataclass

from .clock import SystemClock
from .states import BreakerState
from .store.breakers import claim_probe, give_probe_back, load_breakers, lock_breaker, save_breaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
REFRESH_SECONDS = 1.0  # shared: how stale a daemon's view of the others' breakers may be
PROBE_ABANDONED_SECONDS = 900.0  # shared: a probe this old belonged to a daemon that died; another may probe
# A retry postponed to the cool-down's end is handed back on the wall clock and put on the heap's monotonic clock
# again: the two readings may land it a few microseconds short of the end. That retry is the probe, not a retry
# to postpone by those microseconds again.
CLOCKS_SLACK_SECONDS = 0.001


@dataclass
class _State:
    state: str = CLOSED
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class Breakers:
    """In-memory state for speed, mirrored to the ``breakers`` table so a restart keeps it."""

    def __init__(self, config, store=None, persist=True, clock=None):
        self.config = config  # config.BreakerConfig; replaced on reload
        self.store = store
        self.persist = persist and store is not None  # without a store: in memory only
        self.clock = clock or SystemClock()
        self._states = {}  # task type -> _State, open_until in monotonic seconds; under _lock
        self._lock = threading.Lock()
        self.shared = self.persist and store.dialect == "postgresql"  # several daemons may use this database
        self._loaded_at = None  # shared: monotonic time of the last read of the table

    def load(self):
        """Read the persisted states (at start; shared, again every REFRESH_SECONDS)."""
        for task_type, state, failures, wall_until in load_breakers(self.store):
            open_until = self._monotonic(wall_until) if wall_until else 0.0
            probing = self.shared and state == HALF_OPEN  # another daemon's probe is out
            self._states[task_type] = _State(BreakerState(state), failures, open_until, probing=probing)
        self._loaded_at = self.clock.monotonic()

    def _refresh(self):
        if self.shared and (self._loaded_at is None or self.clock.monotonic() - self._loaded_at >= REFRESH_SECONDS):
            self.load()

    def _monotonic(self, wall):
        return self.clock.monotonic() + (wall - self.clock.now())

    def _wall(self, monotonic):
        return self.clock.now() + (monotonic - self.clock.monotonic())

    def allow(self, task_type, starts=None):
        """(True, None) to run a retry, or (False, until) to postpone it (``until`` on the wall clock).

        ``starts``: when the retry would start (monotonic; default now). The retry timer claims retries
        ahead of their due time: one that starts once the cool-down is over is the probe, and one that
        starts before is postponed to the cool-down's end, not by the sliver left until then.
        """
        now = self.clock.monotonic()
        probe_at = (now if starts is None else max(now, starts)) + CLOCKS_SLACK_SECONDS
        with self._lock:
            self._refresh()
            state = self._states.get(task_type)
            if state is None or state.state == CLOSED:
                return True, None
            if state.state == OPEN and probe_at < state.open_until:
                return False, self._wall(state.open_until)
            if state.probing or self.shared and not self._claim_probe(task_type, self._wall(probe_at)):
                return False, self._wall(now + min(1.0, self.config.cooldown_seconds))
            state.state, state.probing = HALF_OPEN, True
            return True, None

    def _claim_probe(self, task_type, probe_at):
        """Claim the probe in the table for a retry starting at ``probe_at`` (wall clock)."""
        if claim_probe(self.store, task_type, probe_at, self.clock.now() - PROBE_ABANDONED_SECONDS):
            return True
        self.load()  # another daemon probes (or closed it): see what it did
        return False

    def record(self, task_type, ok):
        """Count a retry's outcome; returns "open", "closed" or None when the state changed.

        The row is written under the lock: two pool threads never store their
        snapshots in the reverse order of the changes.
        """
        if self.shared:
            return self._record_shared(task_type, ok)
        now = self.clock.monotonic()
        with self._lock:
            state = self._states.setdefault(task_type, _State())
            was = state.state
            state.probing = False
            if ok:
                if was == CLOSED and state.failures == 0:
                    return None
                state.state, state.failures = CLOSED, 0
            else:
                state.failures += 1
                if was == HALF_OPEN or state.failures >= self.config.failures:
                    state.state, state.open_until = OPEN, now + self.config.cooldown_seconds
            changed = state.state if state.state != was else None
            if self.persist:
                open_until = self._wall(state.open_until) if state.state != CLOSED and state.open_until else None
                with self.store.transaction():
                    save_breaker(self.store, task_type, state.state, state.failures, open_until, self.clock.now())
        return changed

    def _record_shared(self, task_type, ok):
        """``record`` from the table's row, under its lock: what another daemon recorded counts too."""
        wall = self.clock.now()
        with self._lock:
            if ok and self._closed_and_clean(task_type):
                # A success only resets to closed/0, which the row said at the last refresh: no
                # transaction per recovered retry (another daemon's failures are seen within REFRESH_SECONDS).
                return None
        with self._lock, self.store.transaction():
            was, failures, open_until = lock_breaker(self.store, task_type, wall)
            state = was
            if ok:
                if was == CLOSED and failures == 0:
                    return None
                state, failures, open_until = CLOSED, 0, None
            else:
                failures += 1
                if was == HALF_OPEN or failures >= self.config.failures:
                    state, open_until = OPEN, wall + self.config.cooldown_seconds
            save_breaker(self.store, task_type, state, failures, open_until if state != CLOSED else None, wall)
            self._states[task_type] = _State(BreakerState(state), failures,
                                             self._monotonic(open_until) if open_until else 0.0)
        return state if state != was else None

    def _closed_and_clean(self, task_type):
        self._refresh()
        state = self._states.get(task_type)
        return state is None or state.state == CLOSED and state.failures == 0

    def release(self, task_type):
        """The probe let through did not run (task gone): let the next one probe."""
        with self._lock:
            state = self._states.get(task_type)
            if state is not None:
                state.probing = False
                if self.shared and state.state == HALF_OPEN:
                    give_probe_back(self.store, task_type, self.clock.now())
                    state.state, state.open_until = OPEN, self.clock.monotonic()

    def failures(self, task_type):
        """Consecutive failed retries of ``task_type``, as last recorded here."""
        with self._lock:
            state = self._states.get(task_type)
            return state.failures if state is not None else 0

    def open_types(self):
        """{task type: wall-clock end of its cool-down} of the breakers not closed."""
        with self._lock:
            return {t: self._wall(s.open_until) for t, s in self._states.items() if s.state != CLOSED}
