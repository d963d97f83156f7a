"""Housekeeping's purge: what it keeps, and how it goes a slice at a time."""

import pytest

from failured.clock import ManualClock
from failured.housekeeping import Purge, purge
from failured.intake import record_failure
from failured.store.tasks import add_successes

DAY = 86400


def old_tasks(store, clock, statuses):
    ids = [record_failure(store, "sync", "malformed json", clock=clock) for _ in statuses]
    with store.transaction():
        for task_id, status in zip(ids, statuses):
            store.execute("UPDATE tasks SET status = ?, category = 'unrecoverable_data', finished_at = ? "
                          "WHERE id = ?", (status, store.time(clock.now()), task_id))
    return ids


def left(store):
    return [tuple(row) for row in store.rows("SELECT id, status FROM tasks ORDER BY id")]


def test_manual_tasks_are_kept_however_old(store, clock):
    _, manual, _ = old_tasks(store, clock, ["notified", "manual", "resolved"])
    clock.advance(100 * DAY)
    assert purge(store, clock.now(), 90)["tasks"] == 2
    assert left(store) == [(manual, "manual")]


def test_success_counts_older_than_the_retention_go(store, clock):
    with store.transaction():
        add_successes(store, "sync", 3, clock.now())
        add_successes(store, "sync", 4, clock.now() + 99 * DAY)
    clock.advance(100 * DAY)
    assert purge(store, clock.now(), 90)["success_counts"] == 1
    assert store.rows("SELECT count FROM success_counts") == [(4,)]


def test_a_purge_goes_batch_by_batch_with_no_time_to_spare(store, clock):
    ids = old_tasks(store, clock, ["recovered"] * 5)
    clock.advance(100 * DAY)
    whole = Purge(store, clock.now(), 90, clock, batch=2)
    steps = []
    while not whole.step(budget=0):
        steps.append(len(left(store)))
    assert steps[:3] == [3, 1, 0] and whole.counts["tasks"] == 5 and not left(store)
    assert len(ids) == 5


class SlowClock(ManualClock):
    """A clock on which every look at the monotonic time takes 0.2 s (a slow disk's deletes)."""

    def monotonic(self):
        self.advance(0.2)
        return super().monotonic()


def test_a_slice_stops_when_its_time_is_up(store):
    clock = SlowClock(start=1_700_000_000 - 100 * DAY)
    old_tasks(store, clock, ["recovered"] * 10)
    clock.advance(100 * DAY)
    whole = Purge(store, clock.now(), 90, clock, batch=1)
    assert whole.step(budget=0.5) is False
    assert whole.counts["tasks"] == 3  # 0.2 s a batch: the third ends past the half second
    assert len(left(store)) == 7


@pytest.mark.parametrize("statuses", [["new"], ["scheduled"], ["running"]])
def test_open_tasks_are_never_purged(store, clock, statuses):
    ids = old_tasks(store, clock, statuses)
    clock.advance(400 * DAY)
    purge(store, clock.now(), 90)
    assert [task_id for task_id, _ in left(store)] == ids
