"""Wall-clock jumps: waiting and lease timing within one run follow the monotonic clock."""

import os
import threading
import time

import pytest
from conftest import SMALL_PATTERNS

from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.queue import RetryQueue, Runner
from failured.store import Task, open_store


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


# -- a real daemon whose wall clock is moved --------------------------------------------------------------------------

# Loaded first by every Python process started with the directory on PYTHONPATH: the wall clock (time.time,
# datetime.now) runs ahead by the seconds in $CLOCK_OFFSET_FILE, read again every 50 ms; monotonic time is untouched.
CLOCK_SHIM = '''
import datetime as _dt, os, time
_file, _real, _cache = os.environ.get("CLOCK_OFFSET_FILE"), time.time, [0.0, -1.0]
def _offset():
    if time.monotonic() - _cache[1] > 0.05:
        try:
            _cache[0] = float(open(_file).read().strip() or 0)
        except (OSError, ValueError):
            pass
        _cache[1] = time.monotonic()
    return _cache[0]
if _file:
    time.time = lambda: _real() + _offset()
    class _Shifted(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.fromtimestamp(time.time(), tz)
    _dt.datetime = _Shifted
'''


class ShiftedClock:
    """The wall clock of the daemons started with ``env``, moved by ``set(seconds)`` (ahead of the real one)."""

    def __init__(self, directory, offset=0.0):
        site = directory / "clock-site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(CLOCK_SHIM)
        self.file = directory / "clock-offset"
        self.set(offset)
        path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        self.env = {"PYTHONPATH": path, "CLOCK_OFFSET_FILE": str(self.file)}

    def set(self, seconds):
        self.file.write_text(repr(float(seconds)))
        self.offset = float(seconds)


SLOW_RETRY = SMALL_PATTERNS.replace("delays = [0.05, 0.1, 0.2]", "delays = [300]")


@pytest.mark.sqlite_suffices("the retry heap's deadlines (the store only stores the due time)")
def test_a_wall_clock_jump_forward_does_not_run_a_pending_retry_early(daemon_factory, tmp_path):
    shifted = ShiftedClock(tmp_path)
    daemon = daemon_factory('[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\ntimeout = 10\n',
                            patterns=SLOW_RETRY, **shifted.env).start()
    store = open_store(daemon.db)
    try:
        task_id = record_failure(store, "sync", "connection timeout")
    finally:
        store.close()
    daemon.wait_for("SELECT status FROM tasks WHERE id=?", lambda r: r[0][0] == "scheduled", 10, task_id)
    jumped_at = time.time() + 3600
    shifted.set(3600)
    # The heartbeat (every 5 s) is written after the jump: the intake has swept the scheduled rows ~100 times.
    daemon.wait_for("SELECT value FROM daemon_state WHERE key='heartbeat'",
                    lambda r: r and float(r[0][0].split()[0]) >= jumped_at, 15)
    assert daemon.query("SELECT status, attempts FROM tasks WHERE id=?", task_id) == [("scheduled", 0)]
