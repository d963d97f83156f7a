"""Circuit breaker per task type: stop retry storms, postpone (never drop), probe, resume.

closed --N failures in a row--> open --cool-down over--> half_open (one probe)
half_open --probe ok--> closed;  half_open --probe failed--> open again
"""

import threading
from dataclasses import dataclass

from .store import Breaker

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class _State:
    state: str = CLOSED
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class Breakers:
    """In-memory state for speed, mirrored to the ``breakers`` table so a restart keeps it."""

    def __init__(self, config, persist=True):
        self.config = config  # config.BreakerConfig; replaced on reload
        self.persist = persist
        self._states = {}
        self._lock = threading.Lock()

    def load(self):
        """Read the persisted states (at start)."""
        for row in Breaker.select():
            self._states[row.task_type] = _State(row.state, row.consecutive_failures, row.open_until or 0.0,
                                                 probing=False)

    def allow(self, task_type, now):
        """(True, None) to run a retry now, or (False, until) to postpone it."""
        with self._lock:
            state = self._states.get(task_type)
            if state is None or state.state == CLOSED:
                return True, None
            if state.state == OPEN and now < state.open_until:
                return False, state.open_until
            if state.probing:
                return False, now + min(1.0, self.config.cooldown_seconds)
            state.state, state.probing = HALF_OPEN, True
            return True, None

    def record(self, task_type, ok, now):
        """Count a retry's outcome; returns "open", "closed" or None when the state changed."""
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
            snapshot = (state.state, state.failures, state.open_until)
        if self.persist:
            Breaker.replace(task_type=task_type, state=snapshot[0], consecutive_failures=snapshot[1],
                            open_until=snapshot[2] or None, updated_at=now).execute()
        return changed

    def release(self, task_type):
        """The probe let through did not run (task gone): let the next one probe."""
        with self._lock:
            state = self._states.get(task_type)
            if state is not None:
                state.probing = False

    def open_types(self, now):
        with self._lock:
            return {t: s.open_until for t, s in self._states.items() if s.state != CLOSED}
