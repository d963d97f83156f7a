"""The spec's alert thresholds over a known history, with an injected clock."""

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.config import load_config
from failured.engine import Engine
from failured.handlers import Outcome
from failured.intake import record_failure, record_success
from failured.settings import Settings
from failured.store import Notification
from failured.thresholds import Thresholds, alert_breaches, evaluate

# A message the shipped corpus's model keeps unknown whatever the test's category set: a programming error
# (a bare "the moon" gives a small category set's model too little to say unknown with).
PROGRAMMING_ERROR = "java.lang.NullPointerException at Moon.orbit(Moon.java:12)"

HANDLER = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\n'


@pytest.fixture
def snapshot(tmp_path):
    return load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER))


def by_name(checks):
    return {(c.name, c.key): c for c in checks}


def test_failure_rate_per_task_type_and_unknown_without_successes(store, clock):
    for _ in range(3):
        record_failure(store, "sync", "x", clock=clock)
    record_success(store, "sync", 7, clock=clock)
    record_failure(store, "never_succeeds", "x", clock=clock)
    checks = by_name(evaluate(store, clock.now(), Thresholds()))
    assert checks[("failure_rate_percent", "sync")].value == 30.0
    assert checks[("failure_rate_percent", "sync")].breached
    assert checks[("failure_rate_percent", "never_succeeds")].value == "unknown"
    assert not checks[("failure_rate_percent", "never_succeeds")].breached


def test_counts_only_the_window(store, clock):
    for _ in range(60):
        record_failure(store, "sync", "x", clock=clock)
    clock.advance(3601)
    record_failure(store, "sync", "the moon", clock=clock)
    checks = by_name(evaluate(store, clock.now(), Thresholds()))
    assert checks[("recent_failures", "all")].value == 1


def test_unknown_recent_and_recovery_rate(store, clock, snapshot):
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="t")
    for i in range(12):
        record_failure(store, "sync", f"{PROGRAMMING_ERROR} {i}", clock=clock)
    ids = [record_failure(store, "sync", "connection timeout", clock=clock) for _ in range(5)]
    engine.handle_new()
    for task_id in ids:
        for attempt in range(3):
            clock.advance(1)
            claimed = engine.claim(task_id)
            if claimed is None:
                break
            engine.finish(claimed, Outcome(task_id == ids[0], None if task_id == ids[0] else "connection timeout"))
    checks = by_name(evaluate(store, clock.now(), Thresholds(recent_failures=10)))
    assert checks[("unknown_errors", "all")].value == 12 and checks[("unknown_errors", "all")].breached
    assert checks[("recent_failures", "all")].breached
    assert checks[("recovery_rate_percent", "all")].value == 20.0
    assert checks[("recovery_rate_percent", "all")].breached


def test_recovery_rate_is_unknown_when_nothing_finished(store, clock):
    checks = by_name(evaluate(store, clock.now(), Thresholds()))
    assert checks[("recovery_rate_percent", "all")].value == "unknown"
    assert not checks[("recovery_rate_percent", "all")].breached


def test_notification_delay_per_channel(store, clock, snapshot):
    from failured.notify.outbox import enqueue

    enqueue(store, snapshot, clock.now(), "admin", "task", "t", "b")
    clock.advance(11 * 60)
    checks = by_name(evaluate(store, clock.now(), Thresholds()))
    assert checks[("notification_delay_minutes", "log")].value == 11.0
    assert checks[("notification_delay_minutes", "log")].breached


def test_a_channel_delay_alert_names_the_channel_not_a_task_type(store, clock, tmp_path):
    import json

    from failured.notify.dispatcher import Dispatcher, Lane
    from failured.notify.outbox import enqueue

    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS), log_dir=tmp_path / "logs")
    enqueue(store, snapshot, clock.now(), "admin", "task", "t", "b")
    clock.advance(11 * 60)
    assert [c.name for c in alert_breaches(store, snapshot, clock.now(), "en")] == ["notification_delay_minutes"]
    [row] = Notification.select().where(Notification.kind == "threshold")
    assert row.task_type is None  # a channel is no task type: routes by task type must not match it
    dispatcher = Dispatcher(store, Settings(log_dir=tmp_path / "logs"), clock, lambda: snapshot)
    Lane("log", dispatcher).process()
    lines = [json.loads(line) for line in (tmp_path / "logs" / "admin_alerts.log").read_text().splitlines()]
    [alert] = [line for line in lines if line["kind"] == "threshold"]
    assert alert["channel"] == "log" and alert["task_type"] is None and "channel log" in alert["title"]


def test_each_breach_alerts_once_per_window(store, clock, snapshot):
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="t")
    for i in range(11):
        record_failure(store, "sync", f"{PROGRAMMING_ERROR} {i}", clock=clock)
    engine.handle_new()
    first = alert_breaches(store, snapshot, clock.now(), "en")
    assert [c.name for c in first] == ["unknown_errors"]
    [row] = Notification.select().where(Notification.kind == "threshold")
    assert row.audience == "admin" and "unknown errors = 11 (limit 10)" in row.title
    clock.advance(600)
    assert alert_breaches(store, snapshot, clock.now(), "en") == []
    clock.advance(3000)
    Notification.update(status="sent").execute()  # delivered meanwhile: no delay alert
    record_failure(store, "sync", f"{PROGRAMMING_ERROR} again", clock=clock)
    for i in range(11):
        record_failure(store, "sync", f"{PROGRAMMING_ERROR} {i}", clock=clock)
    engine.handle_new()
    assert [c.name for c in alert_breaches(store, snapshot, clock.now(), "zh")] == ["unknown_errors"]


def test_two_leaders_at_once_alert_a_breach_once(store, clock, snapshot, monkeypatch):
    """The instant the lead moves, two daemons may check the thresholds together: one alert between them."""
    from failured import thresholds

    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="t")
    for i in range(11):
        record_failure(store, "sync", f"{PROGRAMMING_ERROR} {i}", clock=clock)
    engine.handle_new()
    enqueue, others = thresholds.enqueue, []
    real_swap = thresholds.swap_state

    def swap_after_the_other(store_, key, expected, value, now):
        if not others:
            others.append(None)
            assert real_swap(store_, key, expected, value, now)  # the other leader's alert wins the swap
            enqueue(store_, snapshot, now, "admin", "threshold", "other", "other")
        return real_swap(store_, key, expected, value, now)

    monkeypatch.setattr(thresholds, "swap_state", swap_after_the_other)
    assert alert_breaches(store, snapshot, clock.now(), "en") == []  # lost the swap: no second alert
    assert Notification.select().where(Notification.kind == "threshold").count() == 1


def test_a_floor_alert_says_the_value_fell_below_it_and_a_ceiling_alert_that_it_was_passed():
    from failured.notify.messages import threshold_message
    from failured.thresholds import Check

    floor = Check("recovery_rate_percent", "all", 0.0, 80, True)
    ceiling = Check("unknown_errors", "all", 39, 10, True)
    assert threshold_message("zh", floor, 60) == (
        "[failured] 告警阈值：自动恢复成功率 % = 0.0（下限 80）",
        "**[failured] 告警阈值：自动恢复成功率 % = 0.0（下限 80）**\n\n最近 60 分钟内低于下限；同一告警每个窗口只发送一次。")
    assert "(at least 80 expected)" in threshold_message("en", floor, 60)[0]
    assert "Below its floor" in threshold_message("en", floor, 60)[1]
    assert "（阈值 10）" in threshold_message("zh", ceiling, 60)[0] and "超过阈值" in threshold_message("zh", ceiling, 60)[1]
