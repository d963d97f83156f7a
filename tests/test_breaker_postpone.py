"""A retry the open breaker holds back is postponed once, to the cool-down's end: the retry timer claims retries
up to CLAIM_HORIZON_SECONDS early, and those early claims must not postpone it again by the sliver left.
Manual clock; the runner's steps are taken by the test, so nothing waits for time to pass."""

import pytest

from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured.intake import record_failure
from failured.queue import CLAIM_HORIZON_SECONDS, RetryQueue, Runner
from failured.store import Task, TaskEvent

COOLDOWN = 5.0


@pytest.fixture
def engine(sync_engine):
    return sync_engine


def postponements(task_id):
    """The delays of the task's ``postponed`` events, rounded to the millisecond."""
    query = TaskEvent.select().where(TaskEvent.task == task_id, TaskEvent.event == "postponed").order_by(TaskEvent.id)
    return [round(event.delay_seconds, 3) for event in query]


def test_a_retry_claimed_ahead_that_starts_at_the_cooldown_end_is_the_probe(store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=COOLDOWN), store, clock=clock)
    assert breakers.record("sync", False) == "open"
    end, monotonic_end = clock.now() + COOLDOWN, clock.monotonic() + COOLDOWN
    clock.advance(COOLDOWN - CLAIM_HORIZON_SECONDS)
    assert breakers.allow("sync", starts=monotonic_end - 0.01) == (False, end)  # to the end, not by 10 ms
    assert breakers.allow("sync") == (False, end)  # starting now
    assert breakers.allow("sync", starts=monotonic_end) == (True, None)
    assert breakers.allow("sync", starts=monotonic_end)[0] is False  # one probe at a time


def test_a_retry_landing_microseconds_short_of_the_cooldown_end_is_the_probe(store, clock):
    # the end goes out on the wall clock and comes back on the monotonic one: two readings of two clocks
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=COOLDOWN), store, clock=clock)
    breakers.record("sync", False)
    monotonic_end = clock.monotonic() + COOLDOWN
    assert breakers.allow("sync", starts=monotonic_end - 0.00002) == (True, None)


def test_the_open_breaker_postpones_a_due_retry_once_and_its_early_claims_write_nothing(engine, store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=COOLDOWN), store, clock=clock)
    queue = RetryQueue(clock)
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    for item in engine.handle_new():
        queue.push(*item)
    breakers.record("sync", False)  # another retry of the type failed: open for COOLDOWN seconds
    end = clock.now() + COOLDOWN
    runner = Runner(engine, queue, breakers, clock, concurrency=1)
    try:
        clock.advance(1)  # the retry is due (SMALL_PATTERNS: in 0.05 s)
        runner._step()
        assert postponements(task_id) == [COOLDOWN - 1]
        assert Task.get_by_id(task_id).next_retry_at == pytest.approx(end)
        clock.advance(COOLDOWN - 1 - CLAIM_HORIZON_SECONDS)  # the timer may claim it from now on
        for _ in range(int(CLAIM_HORIZON_SECONDS * 1000)):
            runner._step()
            clock.advance(0.001)
        assert postponements(task_id) == [COOLDOWN - 1]
        assert TaskEvent.select().where(TaskEvent.task == task_id, TaskEvent.event == "retry_started").count() == 1
    finally:
        runner.stop(5)


def test_a_retry_another_daemon_postponed_already_is_postponed_once(engine, store, clock):
    """Several daemons each see the shared breaker open and each postponed the retry: one event a daemon,
    each to its own reading of the cool-down's end, milliseconds apart."""
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    until = clock.now() + COOLDOWN
    assert engine.postpone(task_id, until, "breaker open")  # the first daemon
    assert engine.postpone(task_id, until + 0.003, "breaker open")  # the second: still scheduled, nothing written
    assert postponements(task_id) == [COOLDOWN]
    assert Task.get_by_id(task_id).next_retry_at == pytest.approx(until)
    assert engine.postpone(task_id, until + COOLDOWN, "breaker open")  # opened again later: postponed again
    assert len(postponements(task_id)) == 2


def test_claims_that_fail_with_no_outcome_to_record_are_logged_and_stay_on_the_heap(engine, store, clock, caplog,
                                                                                   monkeypatch):
    """A claim batch the store refuses (a lease past the year 9999 did) had gone back to the heap in silence, at
    every step, for ever: it is said once, and the retries stay due."""
    breakers = Breakers(BreakerConfig(), store, clock=clock)
    queue = RetryQueue(clock)
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    for item in engine.handle_new():
        queue.push(*item)

    def refused(results, claims):
        raise ValueError("year 33715 is out of range")

    monkeypatch.setattr(engine, "settle", refused)
    monkeypatch.setattr("failured.queue.SETTLE_AGAIN_SECONDS", 0)
    runner = Runner(engine, queue, breakers, clock, concurrency=1)
    try:
        clock.advance(1)
        with caplog.at_level("ERROR", logger="failured.queue"):
            runner._step()
            runner._step()
        said = [r for r in caplog.records if "due retries not claimed" in r.getMessage()]
        assert len(said) == 1 and "year 33715" in caplog.text
        assert queue.contains(task_id)
    finally:
        runner.stop(5)
