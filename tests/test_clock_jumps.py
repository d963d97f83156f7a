"""Wall-clock jumps: waiting and lease timing within one run follow the monotonic clock."""

import threading

import pytest

from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.queue import RetryQueue, Runner
from failured.store import Task



@pytest.fixture
def engine(sync_engine):
    return sync_engine


def test_a_retry_runs_when_the_heap_says_due_even_after_the_wall_clock_went_back(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    queue = RetryQueue(clock)
    for item in engine.handle_new():
        queue.push(*item)
    clock.jump(-40)
    clock.advance(1)
    [(popped, due, _)] = queue.pop_due(clock.monotonic(), 10)
    claimed = engine.claim(popped, expected_due=due)
    assert claimed is not None and Task.get_by_id(task_id).status == "running"


def test_a_live_retry_is_not_taken_back_when_the_wall_clock_jumps_forward(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    assert engine.claim(task_id) is not None
    clock.jump(3600)  # its lease looks an hour expired on the wall clock
    taken, _ = engine.take_back_leases(running_here=frozenset({task_id}))
    assert taken == [] and Task.get_by_id(task_id).status == "running"
    taken, _ = engine.take_back_leases()  # not running here (crashed pool thread): taken back
    assert [t for t, _, _ in taken] == [task_id]


def test_the_runner_waits_on_the_monotonic_clock(engine, store, clock):
    """With a manual clock the runner's waits return at once; a backward jump must not hold a due retry."""
    queue = RetryQueue(clock)
    breakers = Breakers(BreakerConfig(), persist=False, clock=clock)
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    for item in engine.handle_new():
        queue.push(*item)
    clock.jump(-40)
    clock.advance(1)
    done = threading.Event()
    original = engine.settle

    def settle(results, items):
        answer = original([(claimed, Outcome(ok=True)) for claimed, _ in results], items)
        if results:
            done.set()
        return answer

    engine.settle = settle
    runner = Runner(engine, queue, breakers, clock, concurrency=1).start()
    try:
        assert done.wait(60), "the due retry never ran"
    finally:
        runner.stop(5)
    assert Task.get_by_id(task_id).status == "recovered"
