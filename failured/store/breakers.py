"""Breaker rows: each task type's circuit breaker, kept so a restart knows it."""

from ..states import BreakerState
from .schema import Breaker, epoch


def load_breakers(store):
    """[(task type, state, consecutive failures, open until epoch or None)]."""
    return [(t, s, n, epoch(u)) for t, s, n, u in store.rows(
        "SELECT task_type, state, consecutive_failures, open_until FROM breakers ORDER BY task_type")]


def save_breaker(store, task_type, state, failures, open_until, now):
    """Insert or replace one task type's breaker row."""
    (Breaker.insert(task_type=task_type, state=state, consecutive_failures=failures, open_until=open_until,
                    updated_at=now).bind(store.db)
     .on_conflict(conflict_target=[Breaker.task_type],
                  update={Breaker.state: state, Breaker.consecutive_failures: failures,
                          Breaker.open_until: store.time(open_until) if open_until is not None else None,
                          Breaker.updated_at: store.time(now)})
     .execute())


# -- shared by several daemons (PostgreSQL): every change decided under the row's lock ------------------

def lock_breaker(store, task_type, now):
    """(state, consecutive failures, open until epoch or None) of a task type's breaker, its row locked until the
    caller's transaction ends (created closed when missing): two daemons never decide from the same state."""
    store.execute("INSERT INTO breakers (task_type, state, consecutive_failures, updated_at) VALUES (?, ?, 0, ?) "
                  "ON CONFLICT (task_type) DO NOTHING", (task_type, BreakerState.CLOSED, store.time(now)))
    state, failures, until = store.rows("SELECT state, consecutive_failures, open_until FROM breakers "
                                        "WHERE task_type = ? FOR UPDATE", task_type)[0]
    return state, failures, epoch(until)


def claim_probe(store, task_type, now, abandoned_before):
    """Half-open the breaker for this daemon's probe when its cool-down is over (or an earlier probe's daemon
    went silent before ``abandoned_before``); True for the one daemon that got it."""
    with store.transaction():
        return store.execute(
            "UPDATE breakers SET state = ?, updated_at = ? WHERE task_type = ? AND "
            "((state = ? AND open_until <= ?) OR (state = ? AND updated_at < ?))",
            (BreakerState.HALF_OPEN, store.time(now), task_type, BreakerState.OPEN, store.time(now),
             BreakerState.HALF_OPEN, store.time(abandoned_before))).rowcount == 1


def give_probe_back(store, task_type, now):
    """The probe did not run: open, with the cool-down over, so the next retry (any daemon's) probes."""
    with store.transaction():
        store.execute("UPDATE breakers SET state = ?, open_until = ?, updated_at = ? WHERE task_type = ? AND state = ?",
                      (BreakerState.OPEN, store.time(now), store.time(now), task_type, BreakerState.HALF_OPEN))
