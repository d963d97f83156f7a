"""Python handlers run on the retry workers themselves; the retry timer gives up on one past its timeout, records
it as timed out and puts another worker in the stuck one's place. Manual clock: nothing waits for time to pass."""

import sys
import textwrap
import threading
import uuid

import pytest
from conftest import SMALL_PATTERNS, wait_for, write_config

from failured.breaker import Breakers
from failured.config import BreakerConfig, load_config
from failured.engine import Engine
from failured.intake import record_failure
from failured.queue import RetryQueue, Runner
from failured.settings import Settings
from failured.store import Notification, Task, TaskEvent

TIMEOUT = 5


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    """A handler module: ``run(n)`` notes its thread; n == 0 waits for ``gate`` (then ``returned`` is set)."""
    name = f"queue_py_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import threading
        threads = {}
        started, gate, returned = threading.Event(), threading.Event(), threading.Event()
        def run(n, **_):
            threads[n] = threading.current_thread()
            if n == 0:
                started.set()
                gate.wait(30)
                returned.set()
            if n == 2:
                raise ConnectionError("connection timeout")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(name)
    yield sys.modules[name]
    sys.modules[name].gate.set()
    sys.modules.pop(name, None)


@pytest.fixture
def engine(store, clock, tmp_path, pymod):
    handler = f'[task_types.py.handler]\nkind = "python"\ntarget = "{pymod.__name__}:run"\ntimeout = {TIMEOUT}\n'
    snapshot = load_config(write_config(tmp_path / "py-config", SMALL_PATTERNS, handler))
    return Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")


def events(task_id):
    return [e.event for e in TaskEvent.select().where(TaskEvent.task == task_id).order_by(TaskEvent.id)]


def due_now(engine, store, clock, count):
    ids = [record_failure(store, "py", "connection timeout", clock=clock, payload={"n": n}) for n in range(count)]
    queue = RetryQueue()  # no clock: due times are compared as given
    for task_id, _, task_type in engine.handle_new():
        queue.push(task_id, 0.0, task_type)
        Task.update(next_retry_at=0.0).where(Task.id == task_id).execute()
    return ids, queue


def test_a_python_retry_runs_on_the_worker_itself(engine, store, clock, pymod):
    (task_id,), queue = due_now(engine, store, clock, 1)
    pymod.gate.set()
    runner = Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=1).start()
    try:
        assert wait_for(lambda: Task.get_by_id(task_id).status == "recovered")
    finally:
        runner.stop(5)
    assert pymod.threads[0].name.startswith("retry_")


def test_a_python_retry_past_its_timeout_is_given_up_and_its_worker_replaced(engine, store, clock, pymod):
    (stuck, other), queue = due_now(engine, store, clock, 2)
    runner = Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=1).start()
    try:
        assert pymod.started.wait(10)
        worker = pymod.threads[0]
        assert Task.get_by_id(other).status == "scheduled"  # the one worker is taken
        clock.advance(TIMEOUT + 1)
        queue.wake()
        assert wait_for(lambda: "retry_failed" in events(stuck)), "the stuck retry was not given up on"
        failed = TaskEvent.get((TaskEvent.task == stuck) & (TaskEvent.event == "retry_failed"))
        assert failed.error_message == f"timed out after {TIMEOUT}s (thread abandoned)"
        assert wait_for(lambda: Task.get_by_id(other).status == "recovered"), "the next retry found no worker"
        assert pymod.threads[1] is not worker  # a new worker ran it while the first was still stuck
        pymod.gate.set()
        assert pymod.returned.wait(10)
        assert wait_for(lambda: not worker.is_alive()), "the stuck worker did not end when its call returned"
        assert runner._outcomes.take() == []  # and its late outcome was dropped
    finally:
        runner.stop(5)
    assert events(stuck).count("retry_failed") == 1 and "recovered" not in events(stuck)
    assert runner.running_ids() == frozenset()
    assert threading.active_count() < 50


def test_an_outcome_the_database_did_not_take_is_recorded_later_not_run_again(engine, store, clock, pymod, monkeypatch):
    """The store stops answering as a retry ends (PostgreSQL dropped the session): the outcome waits in the
    timer and is written once the store answers. Dropped, the retry that worked would run again at lease end."""
    from failured.store.database import StoreUnavailableError

    (task_id,), queue = due_now(engine, store, clock, 1)
    pymod.gate.set()
    settle, refused = engine.settle, []

    def settle_after_one_refusal(results, items):
        if results and not refused:
            refused.append([claimed.task.id for claimed, _ in results])
            raise StoreUnavailableError("server closed the connection unexpectedly")
        return settle(results, items)

    monkeypatch.setattr(engine, "settle", settle_after_one_refusal)
    runner = Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=1).start()
    try:
        assert wait_for(lambda: Task.get_by_id(task_id).status == "recovered")
    finally:
        runner.stop(5)
    assert refused == [[task_id]] and list(pymod.threads) == [0]  # refused once, run once
    assert events(task_id).count("recovered") == 1 and runner.running_ids() == frozenset()


def test_due_retries_wait_on_the_heap_while_the_breakers_cannot_be_read(engine, store, clock, pymod, monkeypatch):
    from failured.store.database import StoreUnavailableError

    (task_id,), queue = due_now(engine, store, clock, 1)
    pymod.gate.set()
    breakers = Breakers(BreakerConfig(), persist=False, clock=clock)
    allow, refused = breakers.allow, []

    def allow_after_one_refusal(task_type, starts=None):
        if not refused:
            refused.append(task_type)
            raise StoreUnavailableError("server closed the connection unexpectedly")
        return allow(task_type, starts)

    monkeypatch.setattr(breakers, "allow", allow_after_one_refusal)
    runner = Runner(engine, queue, breakers, clock, concurrency=1).start()
    try:
        assert wait_for(lambda: Task.get_by_id(task_id).status == "recovered")  # not lost from the heap
    finally:
        runner.stop(5)
    assert refused == ["py"] and runner.running_ids() == frozenset()


def test_a_failure_not_decided_while_the_database_was_away_is_decided_later_and_once(engine, store, clock, pymod,
                                                                                    monkeypatch):
    """The successes and claims were written, then the database went away while a failed retry was decided:
    what was written stays written, the failure alone is decided again later, once."""
    from failured.store.database import StoreUnavailableError

    (first, second, failing), queue = due_now(engine, store, clock, 3)
    pymod.gate.set()
    retry_failed, refused = engine._retry_failed, []

    def away_once(claimed, outcome):
        if not refused:
            refused.append(claimed.task.id)
            raise StoreUnavailableError("server closed the connection unexpectedly")
        return retry_failed(claimed, outcome)

    monkeypatch.setattr(engine, "_retry_failed", away_once)
    runner = Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=1).start()
    try:
        assert wait_for(lambda: events(failing).count("retry_failed") == 1)
        assert wait_for(lambda: Task.get_by_id(first).status == Task.get_by_id(second).status == "recovered")
    finally:
        runner.stop(5)
    assert refused == [failing] and events(failing).count("retry_failed") == 1
    assert [events(task_id).count("recovered") for task_id in (first, second)] == [1, 1]


def test_a_breaker_that_opens_names_the_failure_that_tipped_it(engine, store, clock, pymod):
    """The admins read what failed, not only that something did (a breaker re-opened every cool-down had said
    only "Task: #14")."""
    queue = RetryQueue()
    record_failure(store, "py", "connection timeout", clock=clock, payload={"n": 2})  # its handler raises again
    for task_id, _, task_type in engine.handle_new():
        queue.push(task_id, 0.0, task_type)
        Task.update(next_retry_at=0.0).where(Task.id == task_id).execute()
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60), persist=False, clock=clock)
    runner = Runner(engine, queue, breakers, clock, concurrency=1).start()
    try:
        assert wait_for(lambda: Notification.select().where(Notification.kind == "breaker").count() >= 1)
    finally:
        runner.stop(5)
    body = Notification.select().where(Notification.kind == "breaker").first().body
    assert "- 错误: connection timeout" in body, body
