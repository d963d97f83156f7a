"""Notifications under faults: a full or read-only log disk on a real tmpfs, channel health in daemon_state."""

import json
import os
import subprocess

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.alertlog import append_line
from failured.clock import iso
from failured.config import load_config
from failured.notify.dispatcher import Dispatcher, Lane
from failured.notify.outbox import enqueue
from failured.settings import Settings
from failured.store import DaemonState, Notification

TOKEN = "robot-token-0123456789abcdef"


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size, read_only=False)`` -> a directory on a fresh tmpfs of that size, unmounted afterwards."""
    mounted = []

    def make(size="64k", read_only=False):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root); a full or read-only disk cannot be faked")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def lane(dispatcher, name, clock):
    result = Lane(name, dispatcher)
    result._load_history(clock.now())
    return result


def health(store, name):
    value = store.get_state(f"channel:{name}")
    return json.loads(value) if value else None


def health_written_at(name):
    return DaemonState.get(DaemonState.key == f"channel:{name}").updated_at


def notify(store, snapshot, clock, n, prefix="fp"):
    for i in range(n):
        enqueue(store, snapshot, clock.now(), "admin", "task", f"title {i}", f"body {i}", category="unrecoverable_data",
                task_type="sync", fingerprint=f"{prefix}{clock.now()}-{i}")


def make_dispatcher(store, clock, tmp_path, log_dir, main=""):
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, main), log_dir=log_dir)
    return snapshot, Dispatcher(store, Settings(db=store.path, log_dir=log_dir), clock, lambda: snapshot)


# -- log lines are whole or absent ------------------------------------------------------------------------


def test_a_full_disk_never_leaves_half_a_log_line(small_fs):
    disk = small_fs("64k")
    (disk / "filler").write_bytes(b"x" * 60 * 1024)  # 15 of 16 pages: the log gets one page, 2 lines and a bit
    written = 0
    with pytest.raises(OSError):
        for i in range(50):
            append_line(disk, "admin", {"kind": "test", "n": i, "text": "y" * 1500}, 1_700_000_000)
            written += 1
    data = (disk / "admin_alerts.log").read_bytes()
    assert written >= 1 and data.endswith(b"\n")
    assert [json.loads(line)["n"] for line in data.splitlines()] == list(range(written))
    (disk / "filler").unlink()
    append_line(disk, "admin", {"kind": "test", "n": written}, 1_700_000_000)  # space again: carries on
    assert json.loads((disk / "admin_alerts.log").read_bytes().splitlines()[-1])["n"] == written


def test_a_line_torn_by_a_crash_does_not_swallow_the_next(tmp_path):
    path = tmp_path / "admin_alerts.log"
    path.write_bytes(b'{"kind": "whole"}\n{"kind": "to')  # a crash mid-line (an older version)
    append_line(tmp_path, "admin", {"kind": "next"}, 1_700_000_000)
    assert json.loads(path.read_bytes().splitlines()[-1])["kind"] == "next"


def test_log_channel_on_a_full_disk_is_retried_and_reported(store, clock, tmp_path, small_fs):
    disk = small_fs("64k")
    (disk / "filler").write_bytes(b"x" * (64 * 1024 - 100))
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, disk)
    log_lane = lane(dispatcher, "log", clock)
    enqueue(store, snapshot, clock.now(), "admin", "task", "t", "b" * 8000, category="unrecoverable_data",
            task_type="sync", fingerprint="big")
    assert log_lane.process() == 5.0  # failed, backs off: no "log channel crashed" traceback
    row = Notification.get(Notification.channel == "log")
    assert row.status == "pending" and "No space left" in row.last_error
    assert health(store, "log")["ok"] is False
    (disk / "filler").unlink()
    clock.advance(5)
    log_lane.process()
    assert Notification.get(Notification.channel == "log").status == "sent"
    assert json.loads((disk / "admin_alerts.log").read_text(encoding="utf-8"))["title"] == "t"
    assert health(store, "log")["ok"] is True


# -- channel health ---------------------------------------------------------------------------------------


def test_log_channel_on_a_read_only_log_dir_is_unhealthy_until_it_writes_again(store, clock, tmp_path, small_fs):
    disk = small_fs("1m", read_only=True)
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, disk)
    log_lane = lane(dispatcher, "log", clock)
    notify(store, snapshot, clock, 1)
    log_lane.process()
    state = health(store, "log")
    assert state["ok"] is False and "Read-only file system" in state["error"] and state["at"].endswith("Z")
    remount(disk, "rw")
    clock.advance(5)
    log_lane.process()
    assert health(store, "log") == {"ok": True, "error": None, "at": iso(clock.now())}


def test_robot_health_is_written_when_the_outcome_changes_not_per_message(store, clock, tmp_path, robot_server):
    robot = robot_server("dingtalk", TOKEN, clock=clock.now)
    main = (f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "{TOKEN}"\n\n'
            '[[routes]]\nchannels = ["ops"]\n')
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, tmp_path / "logs", main)
    ops = lane(dispatcher, "ops", clock)
    notify(store, snapshot, clock, 2)
    ops.process()
    assert health(store, "ops")["ok"] is True
    first = health_written_at("ops")
    clock.advance(1)
    notify(store, snapshot, clock, 3)
    ops.process()
    assert health_written_at("ops") == first  # still fine: nothing written
    robot.down("502")
    clock.advance(60)
    notify(store, snapshot, clock, 1)
    ops.process()
    down = health(store, "ops")
    assert down["ok"] is False and "HTTP 502" in down["error"]
    failed_at = health_written_at("ops")
    clock.advance(5)
    ops.process()  # fails again, the same way
    assert health_written_at("ops") == failed_at
    robot.up()
    clock.advance(10)
    ops.process()
    assert health(store, "ops")["ok"] is True and len(robot.received) == 6


def test_a_removed_channel_keeps_its_health_while_its_rows_wait_then_drops_it(store, clock, tmp_path, robot_server):
    robot = robot_server("dingtalk", TOKEN, clock=clock.now)
    main = (f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "{TOKEN}"\n\n'
            '[[routes]]\nchannels = ["ops"]\n')
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, tmp_path / "logs", main)
    robot.down("502")
    notify(store, snapshot, clock, 1)
    lane(dispatcher, "ops", clock).process()
    assert health(store, "ops")["ok"] is False
    without = load_config(write_config(tmp_path / "cfg2", SMALL_PATTERNS), log_dir=tmp_path / "logs")
    dispatcher.config = lambda: without
    gone = lane(dispatcher, "ops", clock)
    gone.process()
    assert health(store, "ops")["ok"] is False  # its row waits for it: status goes on listing it
    clock.advance(25 * 3600)
    gone.process()  # the row expires at the retry horizon, and nothing is left to wait
    assert health(store, "ops") is None


# -- a full database disk ---------------------------------------------------------------------------------


def fill(disk):
    """Fill the filesystem to the last byte; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_message_sent_while_the_database_is_full_is_not_sent_again(tmp_path, clock, small_fs, hook_server):
    from failured.store import open_store

    disk = small_fs("4m")
    store = open_store(disk / "failured.db")
    try:
        hook = hook_server()
        main = f'[channels.hook]\nkind = "webhook"\nurl = "{hook.url}"\n\n[[routes]]\nchannels = ["hook"]\n'
        snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, tmp_path / "logs", main)
        hook_lane = lane(dispatcher, "hook", clock)
        notify(store, snapshot, clock, 1)
        filler = fill(disk)
        assert hook_lane._pass() == 5.0  # sent, but "sent" could not be written
        assert len(hook.received) == 1
        hook_lane._pass()
        assert len(hook.received) == 1  # not sent again while the disk stays full
        filler.unlink()
        hook_lane._pass()
        assert len(hook.received) == 1 and Notification.get(Notification.channel == "hook").status == "sent"
    finally:
        store.close()


def test_a_channel_that_delivers_from_its_start_is_not_said_to_deliver_again(store, clock, tmp_path, robot_server,
                                                                            caplog):
    robot = robot_server("dingtalk", TOKEN, clock=clock.now)
    main = (f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "{TOKEN}"\n\n'
            '[[routes]]\nchannels = ["ops"]\n')
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, tmp_path / "logs", main)
    caplog.set_level("INFO", logger="failured.notify")
    ops = lane(dispatcher, "ops", clock)
    notify(store, snapshot, clock, 1)
    ops.process()
    assert health(store, "ops")["ok"] is True and "delivering again" not in caplog.text
    robot.down("502")
    clock.advance(1)
    notify(store, snapshot, clock, 1)
    ops.process()
    robot.up()
    clock.advance(5)
    ops.process()
    assert caplog.text.count("channel ops: delivering again") == 1  # after a recorded failure, it is news


def test_a_channel_paused_after_an_outage_says_paused_why_and_what_to_do(store, clock, tmp_path, robot_server):
    from failured.status import collect, render

    robot = robot_server("dingtalk", TOKEN, keyword="告警", clock=clock.now)
    main = (f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "{TOKEN}"\n{{keyword}}\n'
            '[[routes]]\nchannels = ["ops"]\n')
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, tmp_path / "logs", main.format(keyword=""))
    ops = lane(dispatcher, "ops", clock)

    def channel_problems():
        status = collect(store, snapshot, clock.now())
        return [p for p in status["problems"] if p.startswith("channel ops")], render(status)

    robot.down("refuse")
    notify(store, snapshot, clock, 1)
    ops.process()
    [problem], _ = channel_problems()
    assert "ConnectionError" in problem
    robot.up()
    clock.advance(5)  # the backoff, well within a minute of the first failure
    ops.process()  # the robot answers now: 310000, the keyword is missing
    [problem], shown = channel_problems()
    assert "paused until its config changes" in problem and "errcode 310000" in problem
    assert "keyword" in problem and "fix the channel's secret or keyword in the config" in problem
    assert "ConnectionError" not in problem and f"problem: {problem}" in shown
    assert problem.startswith("channel ops since ") and "cannot deliver" not in problem
    assert health(store, "ops")["paused"] is True
    fixed = load_config(write_config(tmp_path / "cfg2", SMALL_PATTERNS, main.format(keyword='keyword = "告警"')),
                        log_dir=tmp_path / "logs")
    dispatcher.config = lambda: fixed  # a config change lifts the pause
    ops.process()
    problems, shown = channel_problems()
    assert problems == [] and len(robot.received) == 1
    # delivering again with nothing waiting: the old error is history (JSON), not a line of the status
    [line] = [line for line in shown.splitlines() if line.startswith("channel ops:")]
    assert line == "channel ops: delivering, 0 pending", line


def test_a_wecom_mention_the_robot_throttles_is_logged_on_the_row_and_pauses_the_lane(store, clock, tmp_path,
                                                                                      robot_server, caplog):
    robot = robot_server("wecom", TOKEN, clock=clock.now, limit_per_minute=1)  # the markdown fills the minute
    main = (f'[channels.ops]\nkind = "wecom"\nurl = "{robot.url}"\nkey = "{TOKEN}"\n'
            'mentioned_mobile_list = ["13800001111"]\n\n[[routes]]\nchannels = ["ops"]\n')
    snapshot, dispatcher = make_dispatcher(store, clock, tmp_path, tmp_path / "logs", main)
    ops = lane(dispatcher, "ops", clock)
    notify(store, snapshot, clock, 2)
    assert ops.process() > 0  # paused: the robot said "too fast"
    first, second = Notification.select().where(Notification.channel == "ops").order_by(Notification.id)
    assert first.status == "sent" and "@mention message failed: wecom errcode 45009" in first.last_error
    assert second.status == "pending" and [a.payload["msgtype"] for a in robot.received] == ["markdown"]
    assert any(f"notification {first.id} sent, but the @mention message failed" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text
