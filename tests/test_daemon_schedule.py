"""The daemon's periodic jobs: timed on the monotonic clock, and due by when each last ran (kept in the store)."""

import time
from datetime import UTC, datetime, timedelta

import pytest
import schedule as schedule_library
from conftest import wait_for
from test_clock_jumps import ShiftedClock

from failured.clock import ManualClock
from failured.jobs import Schedule, first_delay
from failured.intake import record_failure
from failured.store import open_store
from failured.store.tasks import add_successes

DAY = 86400


@pytest.mark.parametrize("last_run, now, every, delay", [
    (None, 1000, 3600, 0),  # never ran: at once
    (1000 - 7200, 1000, 3600, 0),  # overdue: at once
    (1000 - 600, 1000, 3600, 3000),  # ran 10 min ago: the rest of its hour
    (1000 + 3600, 1000, 3600, 3600),  # ran "in the future" (the clock went back since): one interval, no more
])
def test_first_delay(last_run, now, every, delay):
    assert first_delay(last_run, now, every) == delay


class LibraryClock:
    """Stands in for the ``datetime`` module the ``schedule`` library reads its clock from: a naive local time
    that follows a ManualClock's wall clock."""

    def __init__(self, clock):
        outer = self

        class _DateTime(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.fromtimestamp(outer.clock.now(), tz)

        self.clock, self.datetime, self.timedelta = clock, _DateTime, timedelta


@pytest.mark.parametrize("jump", [-3600, 3600])
def test_jobs_keep_their_pace_when_the_wall_clock_jumps_an_hour(monkeypatch, jump):
    clock, ran = ManualClock(), []
    monkeypatch.setattr(schedule_library, "datetime", LibraryClock(clock))
    jobs = Schedule(clock)
    jobs.every(15, ran.append, "scan", first_in=0)
    jobs.every(60, ran.append, "thresholds")
    jobs.run_pending()
    clock.jump(jump)
    for _ in range(4):
        clock.advance(15)
        jobs.run_pending()
    assert ran == ["scan"] * 5 + ["thresholds"]


def test_a_jump_while_a_job_runs_moves_the_others_and_leaves_that_one_as_the_library_timed_it(monkeypatch):
    clock = ManualClock()
    monkeypatch.setattr(schedule_library, "datetime", LibraryClock(clock))
    ran = []

    def slow_job_during_which_the_clock_goes_back():
        ran.append(("slow", clock.monotonic()))
        clock.advance(5)
        clock.jump(-3600)

    jobs = Schedule(clock)
    jobs.every(600, slow_job_during_which_the_clock_goes_back, first_in=0)
    jobs.every(60, lambda: ran.append(("quick", clock.monotonic())), first_in=30)
    start = clock.monotonic()
    for _ in range(2 * 700):
        jobs.run_pending()
        clock.advance(0.5)
    slow = [at - start for name, at in ran if name == "slow"]
    quick = [at - start for name, at in ran if name == "quick"]
    assert slow == [0, 605.0]  # once, then an interval after it ended: not again at once, not an hour late
    assert quick[:2] == [30.0, 90.0]


def test_a_busy_database_holds_the_round_and_a_job_it_cut_short_runs_as_soon_as_it_is_free(monkeypatch):
    clock = ManualClock()
    monkeypatch.setattr(schedule_library, "datetime", LibraryClock(clock))
    busy, ran = [False], []

    def meets_the_lock(name):
        ran.append(name)
        busy[0] = name == "scan" and ran.count("scan") == 1  # the first scan waited out the lock

    jobs = Schedule(clock)
    for name in ("scan", "analysis", "housekeeping"):
        jobs.every(86400, meets_the_lock, name, first_in=0)
    jobs.run_pending(held=lambda: busy[0])
    assert ran == ["scan"]  # the others were not started behind the lock
    clock.advance(1)
    jobs.run_pending(held=lambda: busy[0])
    assert ran == ["scan"]
    busy[0] = False
    clock.advance(1)
    jobs.run_pending(held=lambda: busy[0])
    assert sorted(ran) == ["analysis", "housekeeping", "scan", "scan"]  # none waits a day for its next slot


def scans(daemon):
    return daemon.stderr().count(" new handled, ")  # the scan's log line


# 2024-11-03 05:59:50 UTC is 01:59:50 EDT; ten seconds later New York's local time is 01:00:00 EST.
BEFORE_FALL_BACK = datetime(2024, 11, 3, 5, 59, 50, tzinfo=UTC).timestamp()


@pytest.mark.sqlite_suffices("the scheduler's timing (the store only records the scans)")
@pytest.mark.parametrize("move", ["clock set back an hour", "autumn fall-back in New York"])
def test_scans_go_on_after_the_local_clock_went_back(daemon_factory, tmp_path, move):
    shifted = ShiftedClock(tmp_path)
    env = dict(shifted.env, FAILURE_SCAN_INTERVAL_MINUTES="0.04")  # every 2.4 s
    if move == "autumn fall-back in New York":
        shifted.set(BEFORE_FALL_BACK - time.time())
        env["TZ"] = "America/New_York"
    daemon = daemon_factory(**env).start()
    assert wait_for(lambda: scans(daemon) >= 1, 10), daemon.stderr()
    if move == "clock set back an hour":
        shifted.set(-3600)
    else:  # the naive local time goes back an hour by itself
        assert wait_for(lambda: time.time() + shifted.offset > BEFORE_FALL_BACK + 11, 20)
    seen = scans(daemon)
    assert wait_for(lambda: scans(daemon) >= seen + 2, 15), daemon.stderr()


def _age(store, task_id, status, finished_at):
    with store.transaction():
        store.execute("UPDATE tasks SET status = ?, category = 'unrecoverable_data', finished_at = ? WHERE id = ?",
                      (status, store.time(finished_at), task_id))


def test_overdue_housekeeping_and_analysis_run_soon_after_a_restart(daemon_factory, tmp_path):
    """Restarted more often than once a day, the daemon used to wait a full day for its housekeeping, every time."""
    daemon = daemon_factory()
    now, old = time.time(), time.time() - 100 * DAY
    store = open_store(daemon.db)
    try:
        finished = record_failure(store, "sync", "malformed json", clock=ManualClock(old))
        waiting = record_failure(store, "sync", "no handler for this", clock=ManualClock(old))
        _age(store, finished, "notified", old)
        _age(store, waiting, "manual", old)  # an operator's to-do: kept however old
        with store.transaction():
            add_successes(store, "sync", 3, old)
            add_successes(store, "sync", 5, now)
        store.set_state("last_housekeeping", f"{now - 2 * DAY:.3f}", now)
        store.set_state("last_analysis", f"{now - 7 * 3600:.3f}", now)  # the interval is 6 hours
    finally:
        store.close()
    daemon.start()
    daemon.wait_for("SELECT value FROM daemon_state WHERE key = 'last_housekeeping'",
                    lambda r: r and float(r[0][0]) >= now, 15)
    assert daemon.query("SELECT id, status FROM tasks ORDER BY id") == [(waiting, "manual")]
    assert daemon.query("SELECT count FROM success_counts") == [(5,)]
    assert "housekeeping: removed 1 tasks, 0 notifications and 1 hourly success counts" in daemon.stderr()
    assert wait_for(lambda: list((tmp_path / "reports" / "failure_analysis").glob("*.json")), 15)
