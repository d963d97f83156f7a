"""Breaker rows: each task type's circuit breaker, kept so a restart knows it."""

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
