"""Circuit breaker per task type: stop retry storms, postpone (never drop), probe, resume.

closed --N failures in a row--> open --cool-down over--> half_open (one probe)
half_open --probe ok--> closed;  half_open --probe failed--> open again

The cool-down runs on the monotonic clock; the table keeps the wall-clock time it
ends, for people and for the next start.
"""

import threading
from dataclasses import dataclass

from .clock import SystemClock
from .states import BreakerState
from .store.breakers import load_breakers, save_breaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


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

    def load(self):
        """Read the persisted states (at start)."""
        for task_type, state, failures, wall_until in load_breakers(self.store):
            open_until = self._monotonic(wall_until) if wall_until else 0.0
            self._states[task_type] = _State(BreakerState(state), failures, open_until, probing=False)

    def _monotonic(self, wall):
        return self.clock.monotonic() + (wall - self.clock.now())

    def _wall(self, monotonic):
        return self.clock.now() + (monotonic - self.clock.monotonic())

    def allow(self, task_type):
        """(True, None) to run a retry now, or (False, until) to postpone it (``until`` on the wall clock)."""
        now = self.clock.monotonic()
        with self._lock:
            state = self._states.get(task_type)
            if state is None or state.state == CLOSED:
                return True, None
            if state.state == OPEN and now < state.open_until:
                return False, self._wall(state.open_until)
            if state.probing:
                return False, self._wall(now + min(1.0, self.config.cooldown_seconds))
            state.state, state.probing = HALF_OPEN, True
            return True, None

    def record(self, task_type, ok):
        """Count a retry's outcome; returns "open", "closed" or None when the state changed.

        The row is written under the lock: two pool threads never store their
        snapshots in the reverse order of the changes.
        """
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

    def release(self, task_type):
        """The probe let through did not run (task gone): let the next one probe."""
        with self._lock:
            state = self._states.get(task_type)
            if state is not None:
                state.probing = False

    def open_types(self):
        """{task type: wall-clock end of its cool-down} of the breakers not closed."""
        with self._lock:
            return {t: self._wall(s.open_until) for t, s in self._states.items() if s.state != CLOSED}
