"""Delivery rules with an injected clock: rate windows, digests, dedup, retries, end states."""

import dataclasses
import itertools
import json
import sys
import threading

import pytest

from conftest import SMALL_PATTERNS, wait_for, write_config
from failured.config import load_config
from failured.notify.channels import PythonChannel
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


def notify(store, snapshot, clock, n, fingerprint=None, task_type="sync", category="unrecoverable_data"):
    for i in range(n):
        enqueue(store, snapshot, clock.now(), "admin", "task", f"title {i}", f"body {i}", category=category,
                task_type=task_type, fingerprint=fingerprint or f"fp{next(_serial)}")


def statuses(channel):
    rows = Notification.select(Notification.status).where(Notification.channel == channel)
    counts = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def test_routes_write_one_row_per_channel_log_always(snapshot, clock, store):
    notify(store, snapshot, clock, 1)
    assert sorted(r.channel for r in Notification.select()) == ["log", "robot"]


def test_log_channel_writes_every_notification_as_a_json_line(store, dispatcher, snapshot, clock, tmp_path):
    notify(store, snapshot, clock, 30)
    lane(dispatcher, "log", clock).process()
    lines = (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30 and json.loads(lines[0])["title"] == "title 0"
    assert statuses("log") == {"sent": 30}


def test_within_budget_each_is_sent(store, dispatcher, snapshot, clock, recorder):
    notify(store, snapshot, clock, 5)
    lane(dispatcher, "robot", clock).process()
    assert [m["title"] for m in recorder.SENT] == [f"title {i}" for i in range(5)]
    assert statuses("robot") == {"sent": 5}


def test_over_budget_becomes_one_digest_with_counts(store, dispatcher, snapshot, clock, recorder):
    notify(store, snapshot, clock, 25)
    lane(dispatcher, "robot", clock).process()
    [digest] = recorder.SENT
    assert digest["kind"] == "digest" and "25" in digest["title"]
    assert "- 不可恢复数据错误: 25" in digest["body"] and "sync: 25" in digest["body"]  # the category by its label
    assert statuses("robot") == {"sent": 1, "merged": 25}
    merged_into = {r.merged_into for r in Notification.select().where(Notification.status == "merged")}
    [digest_row] = Notification.select().where(Notification.kind == "digest")
    assert merged_into == {digest_row.id} and digest_row.status == "sent"
    assert f"merged_into = {digest_row.id}" in digest["body"]


def test_a_digest_the_channel_could_not_send_is_carried_whole_by_the_next(store, dispatcher, snapshot, clock,
                                                                          recorder):
    """During an outage a digest is built at every interval and the one before stays unsent: the next one counts
    what that one stood for, not "1", and its query lists every notification (a 10-minute outage had sent
    "479 notifications" for 6,723)."""
    robot = lane(dispatcher, "robot", clock)
    recorder.FAIL.append("gateway down")
    for _ in range(5):  # five digest intervals of the outage, 25 notifications each
        notify(store, snapshot, clock, 25)
        robot.process()
        clock.advance(60)
    recorder.FAIL.clear()
    clock.advance(600)
    robot.process()
    [digest] = recorder.SENT
    assert "125" in digest["title"] and "- 不可恢复数据错误: 125" in digest["body"] and "sync: 125" in digest["body"]
    [sent] = Notification.select().where(Notification.channel == "robot", Notification.status == "sent")
    task_rows = Notification.select().where(Notification.channel == "robot", Notification.kind == "task")
    assert {row.merged_into for row in task_rows} == {sent.id}  # the digest's query lists all 125


def test_alerts_in_a_digest_are_named_by_their_titles_before_the_counts(store, dispatcher, snapshot, clock, recorder):
    notify(store, snapshot, clock, 25)
    enqueue(store, snapshot, clock.now(), "admin", "breaker", "Breaker open: order_sync failed 5 retries in a row",
            "body", task_type="order_sync")
    enqueue(store, snapshot, clock.now(), "admin", "config", "Config reload rejected", "body")
    lane(dispatcher, "robot", clock).process()
    [digest] = recorder.SENT
    body = digest["body"]
    assert "- Breaker open: order_sync failed 5 retries in a row" in body and "- Config reload rejected" in body
    assert body.index("Config reload rejected") < body.index("不可恢复数据错误: 25")
    assert "- -:" not in body  # an alert is no category's count


def test_never_more_than_the_rate_in_any_sliding_minute(store, dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    sent_at = []
    for second in range(0, 300, 2):
        notify(store, snapshot, clock, 3)
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


def test_same_error_is_sent_once_then_counted(store, dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    notify(store, snapshot, clock, 3, fingerprint="same")
    robot.process()
    [first] = recorder.SENT
    assert "×3" in first["title"]
    assert first["title"].endswith(" — 同类错误 ×3（10 分钟内）"), first["title"]
    clock.advance(60)
    notify(store, snapshot, clock, 4, fingerprint="same")
    robot.process()
    assert len(recorder.SENT) == 1  # held: the same error was sent less than 10 minutes ago
    clock.advance(541)
    robot.process()
    assert len(recorder.SENT) == 2 and "×4" in recorder.SENT[1]["title"]
    assert statuses("robot") == {"sent": 2, "merged": 7}


def test_one_fingerprint_decided_two_ways_is_two_errors_not_one_repeat(store, dispatcher, snapshot, clock, recorder):
    """Tasks of one fingerprint the model decided differently: a business error is never counted into a
    configuration error's "×N" (nor held by its dedup window)."""
    robot = lane(dispatcher, "robot", clock)
    notify(store, snapshot, clock, 3, fingerprint="same", category="unrecoverable_config")
    notify(store, snapshot, clock, 2, fingerprint="same", category="unrecoverable_business")
    robot.process()
    titles = sorted(message["title"] for message in recorder.SENT)
    assert len(titles) == 2 and any("×3" in t for t in titles) and any("×2" in t for t in titles), titles


def test_a_repeat_counted_across_passes_names_the_other_tasks(store, dispatcher, snapshot, clock, recorder,
                                                               monkeypatch):
    """A storm larger than one pass reads (BATCH rows) counts a repeat from every waiting row: those rows' tasks
    are named too (read with only their ids and times, the message had said "×2298" naming one order)."""
    from failured.intake import record_failure
    from failured.notify import lane as lane_module
    from failured.store import Task

    monkeypatch.setattr(lane_module, "BATCH", 3)
    tasks = [Task.get_by_id(record_failure(store, "sync", f"订单{i}不存在")) for i in range(5)]
    for task in tasks:
        enqueue(store, snapshot, clock.now(), "admin", "task", "订单不存在", "body", task=task,
                category="unrecoverable_business", fingerprint="same")
    lane(dispatcher, "robot", clock).process()
    [first] = recorder.SENT
    assert "×5" in first["title"]
    assert f"#{tasks[1].id}, #{tasks[2].id}, #{tasks[3].id}, #{tasks[4].id}" in first["body"], first["body"]


def test_failed_send_backs_off_and_is_retried(store, dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    recorder.FAIL.append("gateway down")
    notify(store, snapshot, clock, 1)
    wait = robot.process()
    row = Notification.get(Notification.channel == "robot")
    assert (row.status, row.attempts, wait) == ("pending", 1, 5.0) and "gateway down" in row.last_error
    recorder.FAIL.clear()
    robot.process()
    assert recorder.SENT == []  # paused: not hammered
    clock.advance(5)
    robot.process()
    assert statuses("robot") == {"sent": 1}


def test_gives_up_after_the_horizon_with_the_reason(store, dispatcher, snapshot, clock, recorder):
    robot = lane(dispatcher, "robot", clock)
    recorder.FAIL.append("gateway down")
    notify(store, snapshot, clock, 1)
    for _ in range(40):
        robot.process()
        clock.advance(3600)
    row = Notification.get(Notification.channel == "robot")
    assert row.status == "failed" and "gateway down" in row.last_error and "gave up after 24 h" in row.last_error


def test_notifications_disabled_are_suppressed_but_logged(store, clock, snapshot, tmp_path, recorder):
    settings = Settings(db=store.path, log_dir=tmp_path / "logs", notification_enabled=False)
    dispatcher = Dispatcher(store, settings, clock, lambda: snapshot)
    notify(store, snapshot, clock, 2)
    lane(dispatcher, "robot", clock).process()
    lane(dispatcher, "log", clock).process()
    assert statuses("robot") == {"suppressed": 2} and statuses("log") == {"sent": 2}
    assert recorder.SENT == []


def test_rows_of_a_channel_taken_out_of_the_config_wait_for_it_and_the_admins_hear_once(store, dispatcher, snapshot,
                                                                                         clock, tmp_path):
    alerts = []
    dispatcher.alert_direct = lambda title, body: alerts.append(title)
    notify(store, snapshot, clock, 2)
    Notification.update(channel="gone").where(Notification.channel == "robot").execute()  # renamed by an edit
    gone = lane(dispatcher, "gone", clock)
    gone.process()
    gone.process()
    assert statuses("gone") == {"pending": 2}  # a rename taken back (or a channel gone for a moment) loses nothing
    assert alerts == ["[failured] Channel gone is no longer configured: 2 notifications wait for it"] or \
        alerts == ["[failured] 通道 gone 已不在配置中：2 条通知等待它恢复"]
    for _ in range(30):  # until the retry horizon: then they fail, saying why
        gone.process()
        clock.advance(3600)
    row = Notification.get(Notification.channel == "gone")
    assert row.status == "failed" and "not delivered within 24 h" in row.last_error


def test_log_files_survive_logrotate_move_and_copytruncate(store, dispatcher, snapshot, clock, tmp_path):
    import os

    log_lane = lane(dispatcher, "log", clock)
    path = tmp_path / "logs" / "admin_alerts.log"
    notify(store, snapshot, clock, 1)
    log_lane.process()
    os.rename(path, tmp_path / "logs" / "admin_alerts.log.1")  # logrotate's default: move, then a new file
    notify(store, snapshot, clock, 1)
    log_lane.process()
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "logs" / "admin_alerts.log.1").read_text().splitlines()) == 1
    path.write_text("")  # copytruncate
    notify(store, snapshot, clock, 1)
    log_lane.process()
    assert len(path.read_text().splitlines()) == 1 and path.read_text().startswith("{")


# -- storms, the monotonic clock, masking, direct alerts, threads ---------------------------------------

ROBOT_TOKEN = "robot-token-0123456789abcdef"
STORM_CONFIG = """
[channels.ops]
kind = "dingtalk"
url = "{url}"
access_token = "{token}"

[[routes]]
channels = ["ops"]

[notify]
dedup_window_seconds = 600
digest_interval_seconds = 10
"""


def pending(channel):
    return statuses(channel).get("pending", 0)


def test_a_storm_after_a_few_failures_settles_within_a_minute(store, clock, tmp_path, robot_server):
    robot = robot_server("dingtalk", ROBOT_TOKEN, clock=clock.now)
    main = STORM_CONFIG.format(url=robot.url, token=ROBOT_TOKEN)
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, main), log_dir=tmp_path / "logs")
    dispatcher = Dispatcher(store, Settings(db=store.path, log_dir=tmp_path / "logs"), clock, lambda: snapshot)
    ops = lane(dispatcher, "ops", clock)
    early = [f"early{i}" for i in range(5)]
    for fingerprint in early:
        notify(store, snapshot, clock, 1, fingerprint=fingerprint)
    ops.process()
    assert len(robot.received) == 5  # within budget: one by one, and remembered for the dedup window
    for _ in range(20):  # a 40 s storm: new errors, and repeats of the five just sent
        clock.advance(2)
        notify(store, snapshot, clock, 30)
        for fingerprint in early:
            notify(store, snapshot, clock, 1, fingerprint=fingerprint)
        ops.process()
    storm_end = clock.now()
    while pending("ops") and clock.now() - storm_end < 120:
        clock.advance(1)
        ops.process()
    assert pending("ops") == 0 and clock.now() - storm_end < 60
    assert statuses("ops") == {"sent": len(robot.received), "merged": 700}
    assert robot.max_in_any_window(60) <= 20 and all(code == 0 for code, _ in robot.answers)
    carriers = {row.merged_into for row in Notification.select().where(Notification.status == "merged")}
    assert {Notification.get_by_id(i).status for i in carriers} == {"sent"}


class SteppingClock:
    """Wall and monotonic seconds that move together, except when someone sets the wall clock (a jump)."""

    def __init__(self):
        self.wall, self.mono = 1_700_000_000.0, 5_000.0

    def now(self):
        return self.wall

    def monotonic(self):
        return self.mono

    def advance(self, seconds):
        self.wall += seconds
        self.mono += seconds

    def jump(self, seconds):
        self.wall += seconds


@pytest.fixture
def stepping(store, snapshot, tmp_path):
    clock = SteppingClock()
    settings = Settings(db=store.path, log_dir=tmp_path / "logs")
    return clock, Dispatcher(store, settings, clock, lambda: snapshot)


def test_a_backoff_is_not_stretched_by_the_wall_clock_going_back(store, stepping, snapshot, recorder):
    clock, dispatcher = stepping
    robot = lane(dispatcher, "robot", clock)
    recorder.FAIL.append("gateway down")
    notify(store, snapshot, clock, 1)
    assert robot.process() == 5.0
    recorder.FAIL.clear()
    clock.jump(-40)  # NTP steps the clock back
    clock.advance(5)
    robot.process()
    assert statuses("robot") == {"sent": 1}


def test_a_wall_jump_forward_does_not_release_held_repeats_early(store, stepping, snapshot, recorder):
    clock, dispatcher = stepping
    robot = lane(dispatcher, "robot", clock)
    notify(store, snapshot, clock, 1, fingerprint="same")
    robot.process()
    clock.advance(60)
    notify(store, snapshot, clock, 2, fingerprint="same")
    robot.process()
    assert len(recorder.SENT) == 1  # held for the dedup window
    clock.jump(3600)
    clock.advance(10)
    robot.process()
    assert len(recorder.SENT) == 1  # 70 s of real time passed, not an hour
    clock.advance(531)
    robot.process()
    assert len(recorder.SENT) == 2 and "×2" in recorder.SENT[1]["title"]


def test_the_rate_window_is_not_stretched_by_the_wall_clock_going_back(store, stepping, snapshot, recorder):
    clock, dispatcher = stepping
    robot = lane(dispatcher, "robot", clock)
    notify(store, snapshot, clock, 20)
    robot.process()
    assert len(recorder.SENT) == 20
    clock.jump(-300)
    clock.advance(61)
    notify(store, snapshot, clock, 1)
    robot.process()
    assert len(recorder.SENT) == 21


def test_every_known_secret_is_masked_in_what_a_robot_receives(store, clock, tmp_path, robot_server, monkeypatch):
    secret, api_token = "SECa1b2c3d4e5f6a7b8c9d0e1f2", "api-token-7f3e9a1c5b2d"
    monkeypatch.setenv("DINGTALK_SECRET", secret)
    monkeypatch.setenv("DINGTALK_ACCESS_TOKEN", ROBOT_TOKEN)
    robot = robot_server("dingtalk", ROBOT_TOKEN, secret)
    main = (f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "${{DINGTALK_ACCESS_TOKEN}}"\n'
            'secret = "${DINGTALK_SECRET}"\n\n[[routes]]\nchannels = ["ops"]\n')
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, main), log_dir=tmp_path / "logs")
    settings = Settings(db=store.path, log_dir=tmp_path / "logs", api_token=api_token)
    dispatcher = Dispatcher(store, settings, clock, lambda: snapshot)
    leak = f"handler said: secret={secret} token {api_token} robot {ROBOT_TOKEN}"
    enqueue(store, snapshot, clock.now(), "admin", "task", f"title {api_token}", leak, category="unrecoverable_data",
            task_type="sync", fingerprint="leak")
    lane(dispatcher, "ops", clock).process()
    lane(dispatcher, "log", clock).process()
    [arrival] = robot.received
    sent = arrival.raw.decode("utf-8") + (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8")
    for value in (secret, api_token, ROBOT_TOKEN):
        assert value not in sent
    # masked as full-width stars: ASCII "***" would open bold-italic in the robot's markdown
    text = arrival.payload["markdown"]["text"]
    assert text.endswith("handler said: secret=＊＊＊ token ＊＊＊ robot ＊＊＊") and "***" not in text


def test_alert_direct_reaches_the_admin_channels_without_outbox_rows(dispatcher, recorder, tmp_path):
    dispatcher.start()
    try:
        assert sorted(dispatcher.alert_direct("[failured] disk full", "cannot write the database")) == ["log", "robot"]
        assert dispatcher.alert_direct("[failured] disk full", "again") == []  # once per dedup window
        assert wait_for(lambda: [m["title"] for m in recorder.SENT] == ["[failured] disk full"])
        log_file = tmp_path / "logs" / "admin_alerts.log"
        assert wait_for(lambda: log_file.exists() and "disk full" in log_file.read_text(encoding="utf-8"))
        assert Notification.select().count() == 0
    finally:
        dispatcher.stop()


def test_alert_direct_never_raises(dispatcher):
    dispatcher.config = lambda: 1 / 0  # a broken snapshot provider
    assert dispatcher.alert_direct("t", "b") == []


def test_a_rejected_channel_is_alerted_once_when_lanes_race(dispatcher, snapshot, clock, tmp_path):
    channel = snapshot.channels["robot"]
    barrier = threading.Barrier(8)

    def alert():
        barrier.wait()
        dispatcher.alert_misconfigured("robot", channel, "errcode 310000", clock.now())

    threads = [threading.Thread(target=alert) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1


def test_a_rejected_channel_alert_line_has_the_documented_format(dispatcher, snapshot, clock, tmp_path):
    channel = snapshot.channels["robot"]
    dispatcher.alert_misconfigured("robot", channel, "dingtalk errcode 310000: sign not match", clock.now())
    [line] = (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8").splitlines()
    alert = json.loads(line)
    assert {"time", "kind", "audience", "title", "body"} <= set(alert)
    assert (alert["kind"], alert["audience"], alert["channel"]) == ("channel_misconfigured", "admin", "robot")
    assert "robot" in alert["title"] and "310000" in alert["body"]
    assert "- 请修改配置中该通道的设置" in alert["body"] and alert["advice"] == "请修改配置中该通道的设置"  # Chinese, as the rest


def test_a_paused_channels_advice_is_in_the_alerts_language():
    from failured.notify.channels.robots import DINGTALK_REJECTED
    from failured.notify.messages import paused_message

    advice = DINGTALK_REJECTED[310000]
    _, chinese = paused_message("zh", "ops", "dingtalk robot", "errcode 310000", advice)
    _, english = paused_message("en", "ops", "dingtalk robot", "errcode 310000", advice)
    assert "钉钉安全校验未通过" in chinese and advice not in chinese
    assert advice in english
    assert paused_message("zh", "ops", "x", "e", "an advice no table knows")[1].count("an advice no table knows") == 1


def _with_extra_channels(snapshot, count):
    extra = {f"extra{i}": PythonChannel(f"extra{i}", "recorder_mod:send") for i in range(count)}
    return dataclasses.replace(snapshot, channels={**snapshot.channels, **extra})


def _hammer(errors, stop, work):
    def run():
        try:
            while not stop.is_set():
                work()
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a thread raised
            errors.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_lanes_reloaded_while_alive_and_wake_iterate(dispatcher, snapshot, recorder):
    current = [snapshot]
    dispatcher.config = lambda: current[0]
    dispatcher.start()
    errors, stop = [], threading.Event()
    readers = [_hammer(errors, stop, dispatcher.alive), _hammer(errors, stop, dispatcher.wake)]
    try:
        for count in range(1, 80):
            current[0] = _with_extra_channels(snapshot, count)
            dispatcher.sync_lanes()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        dispatcher.stop()
    assert errors == [] and len(dispatcher.lanes) == 81


def test_stop_while_lanes_are_reloaded_leaves_no_lane_running(dispatcher, snapshot, recorder):
    current = [snapshot]
    dispatcher.config = lambda: current[0]
    dispatcher.start()
    errors, stop, counter = [], threading.Event(), itertools.count(1)

    def reload():
        count = next(counter)
        if count > 300:  # bounded: the test ends even if stop() itself fails
            stop.set()
        current[0] = _with_extra_channels(snapshot, count)
        dispatcher.sync_lanes()

    reloader = _hammer(errors, stop, reload)
    try:
        assert wait_for(lambda: len(dispatcher.lanes) > 20)
        dispatcher.stop()
    finally:
        stop.set()
        reloader.join()
    assert errors == []
    assert wait_for(lambda: not any(lane.alive() for lane in dispatcher.lanes.values()), 15)


@pytest.mark.parametrize("window, zh, en", [(20, "同类错误 ×2（20 秒内）", "Same error ×2 (within 20 s)"),
                                            (600, "同类错误 ×2（10 分钟内）", "Same error ×2 (within 10 min)"),
                                            (90, "同类错误 ×2（90 秒内）", "Same error ×2 (within 90 s)")])
def test_a_repeat_says_its_window_as_people_write_it(window, zh, en):
    from types import SimpleNamespace

    from failured.notify.messages import repeat_message

    rows = [SimpleNamespace(title="t", body="**t**\n- b", task_id=n) for n in (1, 2)]  # two rows of the same error
    assert repeat_message("zh", rows, window)[0] == f"t — {zh}" and repeat_message("en", rows, window)[0] == f"t — {en}"
    assert repeat_message("en", rows, window)[1] == f"**t — {en}**\n- b\n- {en}\n- Also in: #2"  # its title once
