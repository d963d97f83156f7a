"""Under a flood: batches of decisions, claims and outcomes, the eager write lock, the quick intake.

Real SQLite files and real threads; nothing waits for time to pass except on a signal.
"""

import sqlite3
import struct
import sys
import textwrap
import threading
import uuid

import pytest

from conftest import SYNC_HANDLER as SYNC, wait_for
from failured import handlers
from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured import queue as queue_module
from failured.handlers import HandlerSpec, Outcome, TaskContext, run_handler
from failured.intake import record_failure
from failured.queue import RetryQueue, Runner
from failured.store import DaemonState, Task, TaskEvent, open_store

@pytest.fixture
def engine(sync_engine):
    return sync_engine


def events(task_id):
    return [e.event for e in TaskEvent.select().where(TaskEvent.task == task_id).order_by(TaskEvent.id)]


def report_many(store, clock, count, error="connection timeout"):
    return [record_failure(store, "sync", f"{error} {i}", clock=clock) for i in range(count)]


# -- deciding ------------------------------------------------------------------------------


def test_drain_new_decides_batch_after_batch_until_one_is_short(engine, store, clock):
    ids = report_many(store, clock, 25)
    pushed = []
    assert engine.drain_new(lambda *item: pushed.append(item), batch=10) == 25
    assert sorted(task_id for task_id, _, _ in pushed) == ids
    assert Task.select().where(Task.status == "new").count() == 0
    assert all(events(task_id) == ["reported", "retry_scheduled"] for task_id in ids)


def test_a_task_resolved_while_its_batch_was_classified_is_left_alone(engine, store, clock):
    first, second = report_many(store, clock, 2)
    original = engine._plan

    def plan_then_resolve(task, expected_status, *args):
        plan = original(task, expected_status, *args)
        if task.id == first:  # an operator resolves it between classifying and writing
            Task.update(status="resolved").where(Task.id == first).execute()
        return plan

    engine._plan = plan_then_resolve
    queued = engine.handle_new()
    assert [task_id for task_id, _, _ in queued] == [second]
    assert Task.get_by_id(first).status == "resolved" and events(first) == ["reported"]


def test_a_notify_decision_in_a_batch_still_writes_its_notification(engine, store, clock):
    retried = record_failure(store, "sync", "connection timeout", clock=clock)
    told = record_failure(store, "sync", "validation failed: order_id", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(retried).status == "scheduled"
    assert Task.get_by_id(told).status == "notified"
    assert engine.notified_since_wake() and not engine.notified_since_wake()


# -- claiming and finishing in batches -----------------------------------------------------


def test_claim_due_claims_only_the_due_and_each_once(engine, store, clock):
    ids = report_many(store, clock, 3)
    queued = {task_id: due for task_id, due, _ in engine.handle_new()}
    clock.advance(3600)
    stale = ids[2]
    claimed = engine.claim_due([(ids[0], queued[ids[0]]), (ids[1], None), (stale, queued[stale] - 5)])
    assert sorted(item.task.id for item in claimed) == ids[:2]
    assert all(item.attempt == 1 and item.task.status == "running" for item in claimed)
    assert Task.get_by_id(stale).status == "scheduled"  # the heap's due time was not the table's
    assert engine.claim_due([(ids[0], queued[ids[0]])]) == []  # running: nobody claims it twice
    assert events(ids[0]) == ["reported", "retry_scheduled", "retry_started"]


def test_a_claim_checks_the_handler_and_leases_by_it_whether_or_not_it_reads_the_row_first(engine, store, clock):
    own_handler = {"argv": ["true"], "timeout": 5}  # as `failured exec` reports
    typed = record_failure(store, "sync", "connection timeout", clock=clock)  # the task type's handler (timeout 10)
    own = record_failure(store, "no_such_type", "connection timeout", clock=clock, handler=own_handler)
    orphan = record_failure(store, "no_such_type", "connection timeout", clock=clock, handler=own_handler)
    queued = {task_id: due for task_id, due, _ in engine.handle_new()}
    assert set(queued) == {typed, own, orphan}
    Task.update(handler=None).where(Task.id == orphan).execute()  # its handler gone: nothing to run it with
    clock.advance(3600)
    now = clock.now()
    claimed = {item.task.id: item for item in engine.claim_due([(task_id, due) for task_id, due in queued.items()])}
    assert sorted(claimed) == sorted([typed, own])
    assert Task.get_by_id(orphan).status == "scheduled"
    assert claimed[typed].handler.argv == ("true",) and claimed[own].handler.timeout == 5
    assert all(item.attempt == 1 and item.task.attempts == 1 and item.task.status == "running" for item in claimed.values())
    assert Task.get_by_id(typed).lease_until == pytest.approx(now + 2 * 10 + 30, abs=0.01)
    assert Task.get_by_id(own).lease_until == pytest.approx(now + 2 * 5 + 30, abs=0.01)
    assert events(typed)[-1] == events(own)[-1] == "retry_started"
    assert TaskEvent.get((TaskEvent.task == typed) & (TaskEvent.event == "retry_started")).attempt == 1


def test_finish_all_records_successes_together_and_decides_each_failure(engine, store, clock):
    ids = report_many(store, clock, 3)
    engine.handle_new()
    clock.advance(3600)
    claimed = engine.claim_due([(task_id, None) for task_id in ids])
    outcomes = [Outcome(True, duration=0.1), Outcome(True), Outcome(False, "connection timeout again")]
    dues = engine.finish_all(list(zip(claimed, outcomes)))
    statuses = {item.task.id: Task.get_by_id(item.task.id).status for item in claimed}
    assert [statuses[item.task.id] for item in claimed] == ["recovered", "recovered", "scheduled"]
    assert dues[:2] == [None, None] and dues[2] is not None
    assert events(claimed[2].task.id)[-2:] == ["retry_failed", "retry_scheduled"]


# -- the runner ------------------------------------------------------------------------------


class CountingHandlers:
    """Stands in for run_handler: counts how many run at once and per task."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.runs = {}

    def __call__(self, spec, context, on_start=None):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.runs[context.id] = self.runs.get(context.id, 0) + 1
        with self.lock:
            self.now -= 1
        return Outcome(True)


def test_the_runner_runs_a_flood_of_due_retries_once_each_within_its_pool(engine, store, clock, monkeypatch):
    counting = CountingHandlers()
    monkeypatch.setattr("failured.queue.run_handler", counting)
    ids = report_many(store, clock, 60)
    queue = RetryQueue()  # no clock: due times are compared as given
    for task_id, due, task_type in engine.handle_new():
        queue.push(task_id, 0.0, task_type)
        Task.update(next_retry_at=0.0).where(Task.id == task_id).execute()
    runner = Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=3)
    runner.start()
    try:
        all_recovered = lambda: Task.select().where(Task.status == "recovered").count() == len(ids)  # noqa: E731
        assert wait_for(all_recovered, 60), "not every retry was recorded"
    finally:
        runner.stop(5)
    assert counting.runs == {task_id: 1 for task_id in ids}
    assert counting.most <= 3
    assert runner.running_ids() == frozenset()


def test_quick_handlers_are_claimed_ahead_of_their_workers_and_slow_ones_are_not(engine, clock):
    runner = Runner(engine, RetryQueue(), Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=4)
    assert runner.claim_limit == 4  # nothing known of the handlers yet
    runner._keep_pace([(None, Outcome(True, duration=0.0001))] * 20)
    assert runner.claim_limit == 4 + queue_module.CLAIM_AHEAD_MAX
    runner._keep_pace([(None, Outcome(True, duration=30.0))])  # one slow outcome: claim as workers free up
    assert runner.claim_limit == 4


def test_a_flood_of_quick_retries_is_claimed_many_to_a_transaction(engine, store, clock, monkeypatch):
    counting = CountingHandlers()
    monkeypatch.setattr("failured.queue.run_handler", counting)
    ids = report_many(store, clock, 200)
    queue = RetryQueue()
    for task_id, due, task_type in engine.handle_new():
        queue.push(task_id, 0.0, task_type)
        Task.update(next_retry_at=0.0).where(Task.id == task_id).execute()
    claims = []
    settle = engine.settle
    monkeypatch.setattr(engine, "settle", lambda results, items: (claims.append(len(items)), settle(results, items))[1])
    runner = Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=2)
    runner._keep_pace([(None, Outcome(True, duration=0.0001))])  # quick handlers, as measured
    runner.start()
    try:
        assert wait_for(lambda: Task.select().where(Task.status == "recovered").count() == len(ids), 60), \
            "not every retry was recorded"
    finally:
        runner.stop(5)
    assert counting.runs == {task_id: 1 for task_id in ids} and counting.most <= 2
    assert max(claims) > 2  # beyond the two workers, in one transaction
    assert all(events(task_id) == ["reported", "retry_scheduled", "retry_started", "recovered"] for task_id in ids)


def held_retry(engine, store, clock, monkeypatch, concurrency):
    """One due retry whose handler runs until ``release`` is set: (task id, queue, runner, started, release, runs)."""
    started, release = threading.Event(), threading.Event()
    runs = []

    def slow(spec, context, on_start=None):
        runs.append(context.id)
        started.set()
        release.wait(30)
        return Outcome(True)

    monkeypatch.setattr("failured.queue.run_handler", slow)
    task_id = report_many(store, clock, 1)[0]
    queue = RetryQueue()
    engine.handle_new()
    Task.update(next_retry_at=0.0).where(Task.id == task_id).execute()
    queue.push(task_id, 0.0, "sync")
    breakers = Breakers(BreakerConfig(), persist=False, clock=clock)
    runner = Runner(engine, queue, breakers, clock, concurrency=concurrency).start()
    return task_id, queue, runner, started, release, runs


def test_stop_records_the_outcome_of_a_retry_still_running(engine, store, clock, monkeypatch):
    task_id, _, runner, started, release, _ = held_retry(engine, store, clock, monkeypatch, concurrency=1)
    assert started.wait(30)
    threading.Timer(0.05, release.set).start()
    assert runner.stop(30) == 0
    assert Task.get_by_id(task_id).status == "recovered"


def test_a_running_retry_pushed_again_is_neither_claimed_again_nor_forgotten(engine, store, clock, monkeypatch):
    task_id, queue, runner, started, release, runs = held_retry(engine, store, clock, monkeypatch, concurrency=2)
    try:
        assert started.wait(30)
        queue.push(task_id, 0.0, "sync")  # the intake's sweep read it as scheduled while it was being claimed
        queue.wake()
        assert wait_for(lambda: len(queue) == 0, 30)  # the timer took the stale entry
        assert runner.running_ids() == frozenset({task_id}) and runner.running == 1  # and still knows it runs
    finally:
        release.set()
        runner.stop(30)
    assert runs == [task_id] and Task.get_by_id(task_id).status == "recovered"


def test_a_wake_before_the_wait_is_not_lost():
    queue = RetryQueue()
    queue.wake()  # e.g. a retry finished while the timer was busy
    done = threading.Event()
    threading.Thread(target=lambda: (queue.wait_until_due(lambda: 0.0, 3600), done.set()), daemon=True).start()
    assert done.wait(30)


# -- the eager write lock ---------------------------------------------------------------------


def test_eager_transaction_gets_the_lock_as_soon_as_another_connection_lets_go(sqlite_store):
    other = sqlite3.connect(sqlite_store.path, isolation_level=None, timeout=30)
    other.execute("BEGIN IMMEDIATE")
    wrote = threading.Event()

    def write():
        with sqlite_store.eager_transaction():
            sqlite_store.set_state("k", "v", 0.0)  # nested: a savepoint inside the eager transaction
        wrote.set()

    threading.Thread(target=write, daemon=True).start()
    assert not wrote.wait(0.2)  # blocked while the other holds the lock
    other.execute("COMMIT")
    assert wrote.wait(30)
    assert DaemonState.get_by_id("k").value == "v"
    assert sqlite_store.db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 30_000  # restored
    other.close()


def test_a_checkpoint_copies_the_wal_into_the_database_file_beside_a_writer(sqlite_store):
    for n in range(50):
        sqlite_store.set_state(f"k{n}", "v", 0.0)
    writer = sqlite3.connect(sqlite_store.path, isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")  # a writer in the middle of its transaction: PASSIVE neither waits nor fails
    assert sqlite_store.checkpoint() > 0
    writer.execute("COMMIT")
    writer.close()
    checked = sqlite3.connect(sqlite_store.path, isolation_level=None)
    busy, pages, copied = checked.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    checked.close()
    assert busy == 0 and pages == copied  # nothing the earlier checkpoint had left


def wal_pages(db):
    """(pages in the WAL, pages of it copied into the database file), from the WAL index (the -shm file):
    mxFrame of its header, nBackfill of its checkpoint information, in native byte order."""
    with open(f"{db}-shm", "rb") as shm:
        data = shm.read(100)
    return struct.unpack_from("=I", data, 16)[0], struct.unpack_from("=I", data, 96)[0]


def wal_copied(db):
    pages, copied = wal_pages(db)
    return copied == pages


@pytest.mark.sqlite_only("the checkpoint copies SQLite's WAL; PostgreSQL's server checkpoints its own")
def test_the_daemon_checkpoints_the_wal_itself(daemon_factory):
    daemon = daemon_factory(SYNC, FAILURE_POLL_SECONDS="3600").start()
    try:
        daemon.wait_for("SELECT 1 FROM daemon_state WHERE key = 'heartbeat'", bool)
        store = open_store(daemon.db)
        store.db.execute_sql("PRAGMA wal_autocheckpoint = 0")  # this writer never checkpoints
        ids = [record_failure(store, "sync", f"validation failed: sku {n}") for n in range(20)]
        store.close()
        daemon.wait_for(f"SELECT count(*) FROM tasks WHERE status != 'new' AND id <= {max(ids)}",
                        lambda rows: rows[0][0] == len(ids), 30)
        # Far below the 4,000 pages at which a writer checkpoints: only the daemon's thread copies them.
        assert wait_for(lambda: wal_copied(daemon.db), 30), wal_pages(daemon.db)
    finally:
        daemon.close()


def test_eager_transaction_rolls_back_on_error(store):
    with pytest.raises(RuntimeError):
        with store.eager_transaction():
            store.set_state("gone", "1", 0.0)
            raise RuntimeError("boom")
    assert DaemonState.get_or_none(DaemonState.key == "gone") is None
    with store.eager_transaction():  # and the connection is usable again
        store.set_state("kept", "1", 0.0)
    assert DaemonState.get_by_id("kept").value == "1"


# -- python handlers -----------------------------------------------------------------------------


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    name = f"flood_mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import threading
        names = []
        gate = threading.Event()
        def note(**payload):
            names.append(threading.current_thread().name)
        def hangs(**payload):
            gate.wait(30)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules[name].gate.set()
    sys.modules.pop(name, None)


def context():
    return TaskContext(id=1, task_type="t", ref=None, payload={}, attempt=1)


def test_python_handlers_reuse_their_threads(pymod):
    spec = HandlerSpec(kind="python", target=f"{pymod}:note", timeout=30)
    for _ in range(5):
        assert run_handler(spec, context()).ok
    names = sys.modules[pymod].names
    assert len(names) == 5 and len(set(names)) == 1


def test_a_python_handler_that_times_out_does_not_hold_up_the_next(pymod):
    hung = run_handler(HandlerSpec(kind="python", target=f"{pymod}:hangs", timeout=0.1), context())
    assert (hung.ok, hung.error_type) == (False, "TimeoutExpired")
    assert run_handler(HandlerSpec(kind="python", target=f"{pymod}:note", timeout=30), context()).ok
    assert handlers._PYTHON_CALLS._started >= 2  # the hung thread was left; another served


# -- the daemon's intake ---------------------------------------------------------------------------


def test_the_daemon_decides_a_report_without_waiting_for_its_poll(daemon_factory, tmp_path):
    # A poll of an hour: only the commit itself (PRAGMA data_version) can wake the intake.
    daemon = daemon_factory(SYNC, FAILURE_POLL_SECONDS="3600").start()
    try:
        daemon.wait_for("SELECT 1 FROM daemon_state WHERE key = 'heartbeat'", bool)
        store = open_store(daemon.db)
        task_id = record_failure(store, "sync", "validation failed: sku")
        store.close()
        rows = daemon.wait_for("SELECT status FROM tasks WHERE id = ?", lambda r: r and r[0][0] != "new", 30, task_id)
        assert rows[0][0] == "notified"
    finally:
        daemon.close()
