"""Delivery rules with an injected clock: rate windows, digests, dedup, retries, end states."""

import itertools
import json
import sys

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.config import load_config
from failured.notify.dispatcher import Dispatcher, Lane
from failured.notify.outbox import enqueue
from failured.settings import Settings
from failured.store import Notification

RECORDER = """
SENT = []
FAIL = []

def send(notification):
    if FAIL:
        raise ConnectionError(FAIL[0])
    SENT.append(notification)
"""


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    (tmp_path / "recorder_mod.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import recorder_mod

    recorder_mod.SENT.clear()
    recorder_mod.FAIL.clear()
    yield recorder_mod
    sys.modules.pop("recorder_mod", None)


MAIN = """
[channels.robot]
kind = "python"
target = "recorder_mod:send"
rate_per_minute = 20

[[routes]]
channels = ["robot"]

[notify]
dedup_window_seconds = 600
digest_interval_seconds = 10
"""


@pytest.fixture
def snapshot(tmp_path):
    return load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, MAIN), log_dir=tmp_path / "logs")


@pytest.fixture
def dispatcher(store, clock, snapshot, tmp_path):
    settings = Settings(db=store.path, log_dir=tmp_path / "logs")
    return Dispatcher(store, settings, clock, lambda: snapshot)


def lane(dispatcher, name, clock):
    result = Lane(name, dispatcher)
    result._load_history(clock.now())
    return result


_serial = itertools.count()


def notify(snapshot, clock, n, fingerprint=None, task_type="sync", category="unrecoverable_data"):
    for i in range(n):
        enqueue(snapshot, clock.now(), "admin", "task", f"title {i}", f"body {i}", category=category,
                task_type=task_type, fingerprint=fingerprint or f"fp{next(_serial)}")


def statuses(channel):
    rows = Notification.select(Notification.status).where(Notification.channel == channel)
    counts = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def test_routes_write_one_row_per_channel_log_always(snapshot, clock, store):
    notify(snapshot, clock, 1)
    assert sorted(r.channel for r in Notification.select()) == ["log", "robot"]


def test_log_channel_writes_every_notification_as_a_json_line(dispatcher, snapshot, clock, tmp_path):
    notify(snapshot, clock, 30)
    lane(dispatcher, "log", clock).process()
    lines = (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30 and json.loads(lines[0])["title"] == "title 0"
    assert statuses("log") == {"sent": 30}


def test_within_budget_each_is_sent(dispatcher, snapshot, clock, recorder):
    notify(snapshot, clock, 5)
    lane(dispatcher, "robot", clock).process()
    assert [m["title"] for m in recorder.SENT] == [f"title {i}" for i in range(5)]
    assert statuses("robot") == {"sent": 5}


def test_over_budget_becomes_one_digest_with_counts(dispatcher, snapshot, clock, recorder):
    notify(snapshot, clock, 25)
    lane(dispatcher, "robot", clock).process()
    [digest] = recorder.SENT
    assert digest["kind"] == "digest" and "25" in digest["title"]
    assert "unrecoverable_data: 25" in digest["body"] and "sync: 25" in digest["body"]
    assert statuses("robot") == {"sent": 1, "merged": 25}
    merged_into = {r.merged_into for r in Notification.select().where(Notification.status == "merged")}
    [digest_row] = Notification.select().where(Notification.kind == "digest")
    assert merged_into == {digest_row.id} and digest_row.status == "sent"
    assert f"merged_into = {digest_row.id}" in digest["body"]


def test_never_more_than_the_rate_in_any_sliding_minute(dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    sent_at = []
    for second in range(0, 300, 2):
        notify(snapshot, clock, 3)
        before = len(recorder.SENT)
        robot.process()
        sent_at += [clock.now()] * (len(recorder.SENT) - before)
        clock.advance(2)
    for start in sent_at:
        assert sum(1 for t in sent_at if start <= t < start + 60) <= 20
    robot.process()
    clock.advance(120)
    robot.process()
    assert statuses("robot").get("pending", 0) == 0


def test_same_error_is_sent_once_then_counted(dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    notify(snapshot, clock, 3, fingerprint="same")
    robot.process()
    [first] = recorder.SENT
    assert "×3" in first["title"]
    clock.advance(60)
    notify(snapshot, clock, 4, fingerprint="same")
    robot.process()
    assert len(recorder.SENT) == 1  # held: the same error was sent less than 10 minutes ago
    clock.advance(541)
    robot.process()
    assert len(recorder.SENT) == 2 and "×4" in recorder.SENT[1]["title"]
    assert statuses("robot") == {"sent": 2, "merged": 7}


def test_failed_send_backs_off_and_is_retried(dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    recorder.FAIL.append("gateway down")
    notify(snapshot, clock, 1)
    wait = robot.process()
    row = Notification.get(Notification.channel == "robot")
    assert (row.status, row.attempts, wait) == ("pending", 1, 5.0) and "gateway down" in row.last_error
    recorder.FAIL.clear()
    robot.process()
    assert recorder.SENT == []  # paused: not hammered
    clock.advance(5)
    robot.process()
    assert statuses("robot") == {"sent": 1}


def test_gives_up_after_the_horizon_with_the_reason(dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    recorder.FAIL.append("gateway down")
    notify(snapshot, clock, 1)
    for _ in range(40):
        robot.process()
        clock.advance(3600)
    row = Notification.get(Notification.channel == "robot")
    assert row.status == "failed" and "gateway down" in row.last_error and "gave up after 24 h" in row.last_error


def test_notifications_disabled_are_suppressed_but_logged(store, clock, snapshot, tmp_path, recorder):
    settings = Settings(db=store.path, log_dir=tmp_path / "logs", notification_enabled=False)
    dispatcher = Dispatcher(store, settings, clock, lambda: snapshot)
    notify(snapshot, clock, 2)
    lane(dispatcher, "robot", clock).process()
    lane(dispatcher, "log", clock).process()
    assert statuses("robot") == {"suppressed": 2} and statuses("log") == {"sent": 2}
    assert recorder.SENT == []


def test_rows_of_a_removed_channel_fail_with_the_reason(dispatcher, snapshot, clock):
    notify(snapshot, clock, 1)
    Notification.update(channel="gone").where(Notification.channel == "robot").execute()
    lane(dispatcher, "gone", clock).process()
    row = Notification.get(Notification.channel == "gone")
    assert row.status == "failed" and "no longer configured" in row.last_error


def test_log_files_survive_logrotate_move_and_copytruncate(dispatcher, snapshot, clock, tmp_path):
    import os

    log_lane = lane(dispatcher, "log", clock)
    path = tmp_path / "logs" / "admin_alerts.log"
    notify(snapshot, clock, 1)
    log_lane.process()
    os.rename(path, tmp_path / "logs" / "admin_alerts.log.1")  # logrotate's default: move, then a new file
    notify(snapshot, clock, 1)
    log_lane.process()
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "logs" / "admin_alerts.log.1").read_text().splitlines()) == 1
    path.write_text("")  # copytruncate
    notify(snapshot, clock, 1)
    log_lane.process()
    assert len(path.read_text().splitlines()) == 1 and path.read_text().startswith("{")
