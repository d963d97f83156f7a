"""The daemon's batches on SQLite: a batch of decisions, claims or outcomes is one statement (per piece), not a
statement per row, and it changes exactly what the one-row statements would (each row still its own conditional
update)."""

import pytest

from failured.engine import DECIDE_PER_TRANSACTION
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.store import Task, TaskEvent, aggregates
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


@pytest.fixture
def updates(store, monkeypatch):
    """The UPDATE statements of tasks the store runs, counted."""
    run = []
    execute = store.execute

    def counting(text, params=()):
        if text.startswith("UPDATE tasks"):
            run.append(text)
        return execute(text, params)

    monkeypatch.setattr(store, "execute", counting)
    return run


def test_a_batch_of_decisions_is_a_few_statements_and_schedules_each_task_once(engine, store, clock, updates):
    count = DECIDE_PER_TRANSACTION * 2 + 3
    ids = [record_failure(store, "sync", f"connection timeout {i}", clock=clock) for i in range(count)]
    queued = engine.handle_new(limit=count)
    assert sorted(task_id for task_id, _, _ in queued) == ids
    assert {task.status for task in Task.select()} == {"scheduled"}
    assert all(events(task_id) == ["reported", "retry_scheduled"] for task_id in ids)
    assert aggregates.counter_drift(store) == []
    assert {status: n for status, _, n in aggregates.tasks_by_status(store)} == {"scheduled": count}
    if store.dialect == "sqlite":  # a statement per piece of a power of two rows (50: 32 + 16 + 2) a transaction
        assert len(updates) == sum(n.bit_count() for n in (DECIDE_PER_TRANSACTION, DECIDE_PER_TRANSACTION, 3))


def test_a_task_that_moved_before_its_decision_was_written_is_left_alone_and_the_rest_written(
        engine, store, clock, monkeypatch):
    ids = [record_failure(store, "sync", f"connection timeout {i}", clock=clock) for i in range(5)]
    load = rows.load_new_tasks

    def resolved_meanwhile(*args, **kwargs):
        tasks = load(*args, **kwargs)
        Task.update(status="resolved").where(Task.id == ids[2]).execute()  # by hand, while the batch is classified
        return tasks

    monkeypatch.setattr(rows, "load_new_tasks", resolved_meanwhile)
    queued = engine.handle_new(limit=5)
    assert sorted(task_id for task_id, _, _ in queued) == [ids[0], ids[1], ids[3], ids[4]]
    assert Task.get_by_id(ids[2]).status == "resolved" and events(ids[2]) == ["reported"]
    assert all(Task.get_by_id(i).status == "scheduled" and events(i) == ["reported", "retry_scheduled"]
               for i in ids if i != ids[2])
    assert aggregates.counter_drift(store) == []


def test_a_batch_of_decisions_whose_statement_fails_is_written_row_by_row(engine, store, clock, monkeypatch):
    ids = [record_failure(store, "sync", f"connection timeout {i}", clock=clock) for i in range(5)]
    text = rows._updates_text

    def failing_after_its_first_piece(columns, count):  # the first piece applies, the next fails
        return text(columns, count) if count == 4 else "UPDATE tasks SET no_such_column = 1"

    monkeypatch.setattr(rows, "_updates_text", failing_after_its_first_piece)
    assert sorted(task_id for task_id, _, _ in engine.handle_new(limit=5)) == ids
    assert all(events(task_id) == ["reported", "retry_scheduled"] for task_id in ids)
    assert {task.status for task in Task.select()} == {"scheduled"}
    assert aggregates.counter_drift(store) == []


def test_a_decision_the_database_refuses_is_set_aside_and_the_others_written(engine, store, clock):
    if store.dialect != "sqlite":
        pytest.skip("SQLite's own error path: PostgreSQL's error ends the transaction and the batch is tried again")
    ids = [record_failure(store, "sync", f"connection timeout {i}", clock=clock) for i in range(5)]
    store.db.execute_sql(f"CREATE TRIGGER refuse_one BEFORE UPDATE OF status ON tasks WHEN NEW.id = {ids[2]}"
                         " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
    queued = engine.handle_new(limit=5)
    assert sorted(task_id for task_id, _, _ in queued) == [ids[0], ids[1], ids[3], ids[4]]
    assert Task.get_by_id(ids[2]).status == "new" and events(ids[2]) == ["reported"]
    assert engine.handle_new(limit=5) == []  # set aside: not tried again and again, nor blocking the others
    assert aggregates.counter_drift(store) == []
