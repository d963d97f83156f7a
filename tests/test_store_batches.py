"""The retry timer's batches on SQLite: a batch of claims or outcomes is one statement, not a statement per row,
and it changes exactly what the one-row statements would (each row still its own conditional update)."""

import pytest

from failured.handlers import Outcome
from failured.intake import record_failure
from failured.store import Task, TaskEvent
from failured.store import tasks as rows


@pytest.fixture
def engine(sync_engine):
    return sync_engine


def events(task_id):
    return [e.event for e in TaskEvent.select().where(TaskEvent.task == task_id).order_by(TaskEvent.id)]


def scheduled(engine, store, clock, count):
    ids = [record_failure(store, "sync", f"connection timeout {i}", clock=clock) for i in range(count)]
    due = {task_id: at for task_id, at, _ in engine.handle_new(limit=count)}
    clock.advance(3600)
    return ids, due


@pytest.fixture
def no_row_by_row(store, monkeypatch):
    """On SQLite, fail any executemany: a batch must be one statement."""
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL batches are one statement of their own (unnest)")

    def refuse(text, params):
        raise AssertionError(f"a statement per row: {text[:60]}")

    monkeypatch.setattr(store, "executemany", refuse)


def test_a_batch_larger_than_a_statement_is_claimed_and_recovered_once_each(engine, store, clock, no_row_by_row):
    count = rows.ROWS_PER_STATEMENT * 2 + 7
    ids, due = scheduled(engine, store, clock, count)
    claimed = engine.claim_due([(task_id, due[task_id]) for task_id in ids])
    assert sorted(item.task.id for item in claimed) == ids
    assert all(item.attempt == 1 for item in claimed)
    assert {task.attempts for task in Task.select()} == {1}
    assert engine.finish_all([(item, Outcome(True)) for item in claimed]) == [None] * count
    assert {task.status for task in Task.select()} == {"recovered"}
    assert all(events(task_id) == ["reported", "retry_scheduled", "retry_started", "recovered"] for task_id in ids)


def test_rows_that_moved_are_left_out_of_a_batch_and_the_rest_applied(engine, store, clock):
    ids, due = scheduled(engine, store, clock, 6)
    moved, rescheduled = ids[1], ids[4]
    Task.update(status="resolved").where(Task.id == moved).execute()
    claimed = engine.claim_due([(task_id, due[task_id] - (5 if task_id == rescheduled else 0)) for task_id in ids])
    assert sorted(item.task.id for item in claimed) == [i for i in ids if i not in (moved, rescheduled)]
    assert Task.get_by_id(rescheduled).status == "scheduled" and events(rescheduled)[-1] == "retry_scheduled"
    assert Task.get_by_id(moved).status == "resolved" and events(moved)[-1] == "retry_scheduled"
    taken = claimed[0].task.id  # its lease taken back and given to another daemon meanwhile
    Task.update(lease_owner="elsewhere:1:0").where(Task.id == taken).execute()
    engine.finish_all([(item, Outcome(True)) for item in claimed])
    assert Task.get_by_id(taken).status == "running" and events(taken)[-1] == "retry_started"
    others = [item.task.id for item in claimed[1:]]
    assert all(Task.get_by_id(task_id).status == "recovered" and events(task_id)[-1] == "recovered"
               for task_id in others)


def test_a_claim_counts_the_attempt_the_row_was_read_with(engine, store, clock):
    ids, due = scheduled(engine, store, clock, 3)
    Task.update(attempts=2).where(Task.id == ids[0]).execute()  # two retries already ran
    claimed = {item.task.id: item for item in engine.claim_due([(task_id, due[task_id]) for task_id in ids])}
    assert [claimed[task_id].attempt for task_id in ids] == [3, 1, 1]
    assert [Task.get_by_id(task_id).attempts for task_id in ids] == [3, 1, 1]
    assert TaskEvent.get((TaskEvent.task == ids[0]) & (TaskEvent.event == "retry_started")).attempt == 3
