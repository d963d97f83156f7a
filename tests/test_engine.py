"""The life cycle in a real SQLite file with an injected clock: no sleeps."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import SMALL_PATTERNS, SYNC_HANDLER, wait_for, write_config
from failured.config import load_config
from failured.engine import Engine, handler_alive
from failured.errors import RefusedError
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.manual import recover, requeue, resolve
from failured.metrics import Metrics
from failured.settings import Settings
from failured.store import Notification, Task, TaskEvent

HANDLER = SYNC_HANDLER


@pytest.fixture
def snapshot(sync_snapshot):
    return sync_snapshot


@pytest.fixture
def engine(store, clock, snapshot):
    return Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")


def events(task_id):
    return [e.event for e in TaskEvent.select().where(TaskEvent.task == task_id).order_by(TaskEvent.id)]


def test_recoverable_task_is_scheduled_by_its_policy(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    [(queued_id, due, task_type)] = engine.handle_new()
    assert (queued_id, task_type) == (task_id, "sync") and due == pytest.approx(clock.now() + 0.05)
    task = Task.get_by_id(task_id)
    assert (task.status, task.category, task.matched_by, task.max_attempts) == ("scheduled", "recoverable_network", "pattern", 3)
    assert events(task_id) == ["reported", "retry_scheduled"]


def test_claim_only_when_due_and_only_once(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    assert engine.claim(task_id) is None  # not due yet
    clock.advance(0.05)
    claimed = engine.claim(task_id)
    assert claimed is not None and claimed.attempt == 1
    assert engine.claim(task_id) is None  # running: nobody runs it twice
    task = Task.get_by_id(task_id)
    assert task.status == "running" and task.lease_owner == "test:1:0"
    assert task.lease_until == pytest.approx(clock.now() + 2 * 10 + 30)


def run_retry(engine, clock, task_id, outcome):
    clock.advance(100)
    claimed = engine.claim(task_id)
    assert claimed is not None
    return engine.finish(claimed, outcome)


def test_fails_twice_then_recovers_on_attempt_three(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    assert run_retry(engine, clock, task_id, Outcome(False, "connection timeout again")) == pytest.approx(clock.now() + 0.1)
    assert run_retry(engine, clock, task_id, Outcome(False, "connection refused")) == pytest.approx(clock.now() + 0.2)
    assert run_retry(engine, clock, task_id, Outcome(True)) is None
    task = Task.get_by_id(task_id)
    assert (task.status, task.attempts) == ("recovered", 3)
    assert events(task_id)[-2:] == ["retry_started", "recovered"]


def test_error_turning_into_a_data_error_stops_retrying_and_tells_admins(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    assert run_retry(engine, clock, task_id, Outcome(False, "malformed json in response")) is None
    task = Task.get_by_id(task_id)
    assert (task.status, task.category, task.error_message) == ("notified", "unrecoverable_data", "malformed json in response")
    [note] = Notification.select()
    assert (note.audience, note.kind, note.task_id, note.status) == ("admin", "task", task_id, "pending")
    assert "failured show" in note.body


TWO_RETRY_CATEGORIES = SMALL_PATTERNS + """
[[category]]
name = "recoverable_temporary"
label = "可恢复临时错误"
action = "retry"
priority = 40
retry = { delays = [0.05], max_attempts = 2 }
patterns = ['connection reset']
"""


def test_an_error_that_moves_to_a_category_with_fewer_attempts_takes_its_limit(store, clock, tmp_path):
    """Network allows 3 attempts, temporary 2: the network limit recorded on the task does not carry over."""
    snapshot = load_config(write_config(tmp_path / "cfg", TWO_RETRY_CATEGORIES, "[model]\nenabled = false\n" + HANDLER))
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(task_id).max_attempts == 3
    run_retry(engine, clock, task_id, Outcome(False, "connection reset by peer"))
    assert (Task.get_by_id(task_id).status, Task.get_by_id(task_id).max_attempts) == ("scheduled", 2)
    run_retry(engine, clock, task_id, Outcome(False, "connection reset by peer"))
    task = Task.get_by_id(task_id)
    assert (task.status, task.category, task.attempts, task.max_attempts) == ("exhausted", "recoverable_temporary", 2, 2)


def test_attempts_used_up_is_exhausted_with_an_admin_notice(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    for _ in range(3):
        run_retry(engine, clock, task_id, Outcome(False, "connection timeout"))
    task = Task.get_by_id(task_id)
    assert (task.status, task.attempts) == ("exhausted", 3)
    [note] = Notification.select()
    assert (note.audience, note.kind) == ("admin", "exhausted") and "3/3" in note.body
    # not the category's "retried automatically": what to do now that it is not
    assert "检查网络" not in note.body and f"failured recover {task_id} --force" in note.body


def test_business_error_goes_to_users_with_the_suggestion(engine, store, clock):
    record_failure(store, "sync", "订单不存在", clock=clock)
    engine.handle_new()
    [note] = Notification.select()
    assert note.audience == "user" and "检查订单号" in note.body and "failured show" not in note.body


def test_unknown_goes_to_admins(engine, store, clock):
    task_id = record_failure(store, "sync", "AttributeError: 'NoneType' object has no attribute 'id'", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(task_id).category == "unknown"
    assert Notification.get().audience == "admin"


def test_no_handler_is_manual_with_one_notice_per_task_type(engine, store, clock, snapshot):
    ids = [record_failure(store, "nohandler", "connection timeout", clock=clock) for _ in range(3)]
    engine.handle_new()
    assert {Task.get_by_id(i).status for i in ids} == {"manual"}
    assert [n.kind for n in Notification.select()] == ["manual"]
    body = Notification.get().body  # the first task, and how to find the others
    assert f"#{ids[0]}" in body and "connection timeout" in body
    assert f"failured show {ids[0]}" in body and "failured list --status manual --type nohandler" in body
    engine.forget_manual_notices(load_config(write_config(
        snapshot.files[0].rsplit("/", 1)[0], SMALL_PATTERNS, HANDLER.replace("sync", "nohandler"))))
    record_failure(store, "nohandler", "connection timeout", clock=clock)
    # a handler appeared and went again: the next manual task alerts once more
    engine.handle_new()
    assert [n.kind for n in Notification.select()] == ["manual", "manual"]


def test_a_due_retry_whose_handler_was_taken_out_of_the_config_waits_in_manual(store, clock, tmp_path, snapshot):
    current = [snapshot]
    config = write_config(tmp_path / "config", SMALL_PATTERNS, HANDLER)
    engine = Engine(store, Settings(config_dir=config), clock, lambda: current[0], owner="test:1:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    assert Task.get_by_id(task_id).status == "scheduled"
    main = (config / "failured.toml").read_text()
    (config / "failured.toml").unlink()  # the handler's table deleted, and the daemon reloaded
    current[0] = load_config(config)
    clock.advance(100)
    (config / "failured.toml").write_text(main)  # put back: while that waits for its reload, the task waits too
    assert engine.claim(task_id) is None and Task.get_by_id(task_id).status == "scheduled"
    (config / "failured.toml").unlink()  # gone for good: the active configuration is the directory's
    assert engine.claim(task_id) is None
    task = Task.get_by_id(task_id)
    assert (task.status, task.attempts) == ("manual", 0)
    assert events(task_id)[-1] == "manual"
    assert [n.kind for n in Notification.select()] == ["manual"]
    assert engine.claim(task_id) is None and events(task_id).count("manual") == 1  # once, not once a pass


def test_expired_lease_goes_back_to_scheduled(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    engine.claim(task_id)
    assert engine.take_back_leases() == ([], [])
    clock.advance(51)
    queued, _ = engine.take_back_leases()
    assert [q[0] for q in queued] == [task_id]
    assert Task.get_by_id(task_id).status == "scheduled"
    assert "lease_expired" in events(task_id)


def test_orphans_of_a_dead_daemon_are_taken_back_at_once_unless_their_handler_lives(engine, store, clock, snapshot):
    dead = Engine(store, Settings(), clock, lambda: snapshot, owner="dead:2:0")
    a = record_failure(store, "sync", "connection timeout", clock=clock)
    b = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    dead.claim(a)
    dead.claim(b)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)  # as handlers
    try:
        dead.record_pid(b, sleeper.pid)
        queued, waiting = engine.take_back_leases(orphans_only=True)
        assert [q[0] for q in queued] == [a] and waiting == [b]
    finally:
        sleeper.kill()
        sleeper.wait()
    queued, waiting = engine.take_back_leases(orphans_only=True)
    assert [q[0] for q in queued] == [b] and waiting == []


def _claimed_by_a_dead_daemon_whose_handler_left(engine, store, clock, snapshot, seconds):
    """(the dead daemon's engine, its task, the handler it started): the handler's own process is gone, and a
    ``sleep seconds`` it started lives on in its process group."""
    dead = Engine(store, Settings(), clock, lambda: snapshot, owner="dead:2:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    dead.claim(task_id)
    handler = subprocess.Popen(["sh", "-c", f"sleep {seconds} & exit 0"], start_new_session=True)  # as handlers start
    assert handler.wait(30) == 0
    return dead, task_id, handler


def test_an_orphan_waits_while_a_process_its_handler_started_still_runs(engine, store, clock, snapshot):
    """The handler's own process died with its daemon, but ``sh -c 'work &'`` left work running in its
    process group: the task must not run again beside it."""
    dead, task_id, handler = _claimed_by_a_dead_daemon_whose_handler_left(engine, store, clock, snapshot, 30)
    try:
        dead.record_pid(task_id, handler.pid)
        assert engine.take_back_leases(orphans_only=True) == ([], [task_id])
    finally:
        os.killpg(handler.pid, signal.SIGKILL)
    assert wait_for(lambda: engine.take_back_leases(orphans_only=True)[0])  # once the group is gone
    assert Task.get_by_id(task_id).status == "scheduled"


def test_a_retry_running_in_a_celery_worker_is_never_sent_again_beside_itself(engine, store, clock, snapshot):
    """The daemon cannot stop a task a Celery worker runs: a daemon's death or stop leaves it running, so the task
    waits for its lease (twice the handler's timeout and 30 s) before it is sent again."""
    from failured.handlers import RUNS_ELSEWHERE

    dead = Engine(store, Settings(), clock, lambda: snapshot, owner="dead:2:0")
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    dead.claim(task_id)
    dead.record_pid(task_id, RUNS_ELSEWHERE)  # as the celery handler does before it sends the task
    lease_until = Task.get_by_id(task_id).lease_until
    assert engine.take_back_leases(orphans_only=True) == ([], [task_id])  # its daemon died: it waits all the same
    clock.advance(lease_until - clock.now() + 1)
    assert [q[0] for q in engine.take_back_leases(orphans_only=True)[0]] == [task_id]
    # A daemon that stops while its Celery retry runs puts the task back due when the lease ends, not now.
    engine.claim(task_id)
    engine.record_pid(task_id, RUNS_ELSEWHERE)
    lease_until = Task.get_by_id(task_id).lease_until
    assert engine.release_own_leases() == [task_id]
    task = Task.get_by_id(task_id)
    assert (task.status, task.next_retry_at) == ("scheduled", lease_until)
    assert "its Celery task may still run" in TaskEvent.select().order_by(TaskEvent.id.desc()).first().detail


def test_a_success_after_its_lease_was_taken_back_is_neither_recorded_nor_counted(store, clock, snapshot):
    metrics = Metrics()
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="test:1:0", metrics=metrics)
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    clock.advance(1)
    claimed = engine.claim(task_id)
    clock.advance(51)
    assert [q[0] for q in engine.take_back_leases()[0]] == [task_id]  # its lease ran out: another run may take it
    assert engine.finish(claimed, Outcome(True)) is None
    assert Task.get_by_id(task_id).status == "scheduled" and "recovered" not in events(task_id)
    assert metrics.registry.get_sample_value("failured_recoveries_total", {"category": "recoverable_network"}) is None
    assert metrics.registry.get_sample_value("failured_retries_total", {"outcome": "recovered"}) is None


def test_recover_refuses_with_reasons_and_force_overrides(engine, store, clock, snapshot):
    data = record_failure(store, "sync", "malformed json", clock=clock)
    engine.handle_new()
    with pytest.raises(RefusedError, match="unrecoverable error .*use --force"):
        recover(store, snapshot, data, clock.now())
    task = recover(store, snapshot, data, clock.now(), force=True)
    assert task.status == "scheduled" and task.next_retry_at == clock.now()
    no_handler = record_failure(store, "nohandler", "malformed json", clock=clock)
    engine.handle_new()
    with pytest.raises(RefusedError, match=r"has no handler: configure one in failured.toml under "
                                           r"\[task_types.nohandler.handler\]"):
        recover(store, snapshot, no_handler, clock.now(), force=True)
    resolve(store, no_handler, clock.now())
    with pytest.raises(RefusedError, match=f"task {no_handler} was resolved by hand"):  # over, handler or not
        recover(store, snapshot, no_handler, clock.now())


def test_forced_retry_of_an_exhausted_task_runs_once_more(engine, store, clock, snapshot):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    for _ in range(3):
        run_retry(engine, clock, task_id, Outcome(False, "connection timeout"))
    with pytest.raises(RefusedError, match="used all 3 of its retries"):
        recover(store, snapshot, task_id, clock.now())
    recover(store, snapshot, task_id, clock.now(), force=True)
    [requested] = TaskEvent.select().where(TaskEvent.task == task_id, TaskEvent.event == "recover_requested")
    assert requested.attempt == 4  # the attempt it schedules, as a retry_scheduled event names it
    run_retry(engine, clock, task_id, Outcome(False, "connection timeout"))
    assert Task.get_by_id(task_id).status == "exhausted" and Task.get_by_id(task_id).attempts == 4


def test_requeue_dry_run_lists_and_real_run_schedules(engine, store, clock, snapshot):
    ids = [record_failure(store, "sync", "malformed json", clock=clock) for _ in range(2)]
    other = record_failure(store, "sync", "订单不存在", clock=clock)
    engine.handle_new()
    listed, _ = requeue(store, snapshot, clock.now(), dry_run=True, category="unrecoverable_data")
    assert [t.id for t in listed] == ids and Task.get_by_id(ids[0]).status == "notified"
    done, _ = requeue(store, snapshot, clock.now(), category="unrecoverable_data")
    assert {Task.get_by_id(i).status for i in ids} == {"scheduled"}
    assert Task.get_by_id(other).status == "notified"


def test_resolve_closes_and_a_resolved_task_is_not_moved_by_the_daemon(engine, store, clock):
    task_id = record_failure(store, "sync", "connection timeout", clock=clock)
    engine.handle_new()
    resolve(store, task_id, clock.now(), note="fixed by hand")
    clock.advance(10)
    assert engine.claim(task_id) is None
    task = Task.get_by_id(task_id)
    assert (task.status, task.note) == ("resolved", "fixed by hand")


def test_messages_are_chinese_by_default_and_english_with_failure_lang_en(store, clock, tmp_path):
    snapshot_en = load_config(write_config(tmp_path / "en", SMALL_PATTERNS, HANDLER), "en")
    engine_en = Engine(store, Settings(lang="en"), clock, lambda: snapshot_en, owner="en")
    task_id = record_failure(store, "sync", "订单不存在", ref="order-9", clock=clock)
    engine_en.handle_new()
    note = Notification.get(Notification.task == task_id)
    assert note.title == f"[failured] Unrecoverable business error: sync #{task_id}"
    for words in ("Category: Unrecoverable business error", "Task: #%d (ref order-9)" % task_id,
                  "Suggestion: Check the order number", "Error: 订单不存在"):
        assert words in note.body
    zh = Engine(store, Settings(), clock, lambda: load_config(tmp_path / "en"), owner="zh")
    zh_id = record_failure(store, "sync", "malformed json", clock=clock)
    zh.handle_new()
    body = Notification.get(Notification.task == zh_id).body
    assert "分类: 不可恢复数据错误" in body and f"查看: `failured show {zh_id}`" in body


def test_a_handler_group_that_outlives_its_lease_is_killed_before_the_task_runs_again(engine, store, clock, snapshot):
    """``kill -9`` of the daemon reached the handler's own process only: a process it started lived on past the
    timeout. Once the lease ends, the task runs again, and never beside that one."""
    dead, task_id, handler = _claimed_by_a_dead_daemon_whose_handler_left(engine, store, clock, snapshot, 600)
    try:
        dead.record_pid(task_id, handler.pid)
        assert engine.take_back_leases(orphans_only=True) == ([], [task_id])
        clock.advance(3600)  # far past the lease
        queued, waiting = engine.take_back_leases(orphans_only=True)
        assert [q[0] for q in queued] == [task_id] and waiting == []
        assert wait_for(lambda: not handler_alive(handler.pid), timeout=30)
    finally:
        try:
            os.killpg(handler.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
