"""A one-error storm with an injected clock: thousands of the same error in a minute, against a real local robot."""

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.config import load_config
from failured.notify.dispatcher import Dispatcher, Lane
from failured.notify.outbox import enqueue
from failured.settings import Settings
from failured.store import Notification
from failured.thresholds import Thresholds, evaluate
from test_dispatcher import ROBOT_TOKEN as TOKEN, STORM_CONFIG

STORM = 5000  # more than a pass reads at once (lane.BATCH), as the operator's storm was
WINDOW = 600  # STORM_CONFIG's dedup window: the shipped one, equal to the shipped notification delay threshold


@pytest.fixture
def ops(store, clock, tmp_path, robot_server):
    """(robot, the ops channel's lane, snapshot): a DingTalk robot on the test's clock and the lane that feeds it."""
    robot = robot_server("dingtalk", TOKEN, clock=clock.now)
    main = STORM_CONFIG.format(url=robot.url, token=TOKEN)
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, main), log_dir=tmp_path / "logs")
    dispatcher = Dispatcher(store, Settings(db=store.path, log_dir=tmp_path / "logs"), clock, lambda: snapshot)
    lane = Lane("ops", dispatcher)
    lane._load_history(clock.now())
    return robot, lane, snapshot


def same_error(store, snapshot, clock, count):
    with store.transaction():
        for i in range(count):
            enqueue(store, snapshot, clock.now(), "admin", "task", "[failured] 数据错误: sync", f"body {i}",
                    category="unrecoverable_data", task_type="sync", fingerprint="fp-storm")


def pending(channel="ops"):
    return Notification.select().where(Notification.channel == channel, Notification.status == "pending").count()


def storm_of_one_error(store, clock, snapshot, lane):
    """The first one goes out at once; the other STORM - 1 come over the next minute and are held."""
    same_error(store, snapshot, clock, 1)
    lane.process()
    per_step, extra = divmod(STORM - 1, 60)
    for step in range(60):
        clock.advance(1)
        same_error(store, snapshot, clock, per_step + (step < extra))
        lane.process()


def test_a_one_error_storm_goes_out_as_one_message_with_the_true_count_at_the_window_end(store, clock, ops):
    robot, lane, snapshot = ops
    start = clock.now()
    storm_of_one_error(store, clock, snapshot, lane)
    assert len(robot.received) == 1 and pending() == STORM - 1
    clock.advance(start + WINDOW - clock.now())
    lane.process()
    while clock.now() - start < 2 * WINDOW:  # nothing is held back for another window
        clock.advance(5)
        lane.process()
    assert pending() == 0
    assert len(robot.received) == 2, [a.payload["markdown"]["title"] for a in robot.received]
    repeat = robot.received[1]
    assert repeat.at == start + WINDOW and f"×{STORM - 1}" in repeat.payload["markdown"]["title"]


def test_repeats_held_on_purpose_are_not_a_notification_delay(store, clock, ops):
    _, lane, snapshot = ops
    storm_of_one_error(store, clock, snapshot, lane)
    clock.advance(WINDOW - 70)  # 9.5 minutes after the first repeats were held
    lane.process()
    checks = {c.key: c for c in evaluate(store, clock.now(), Thresholds(notification_delay_minutes=5))
              if c.name == "notification_delay_minutes"}
    assert pending() == STORM - 1 and "ops" not in checks
    assert checks["log"].breached  # the log channel's rows (its lane never ran) are late: they could have gone


def test_a_released_repeat_that_cannot_go_out_is_late_from_its_release(store, clock, ops):
    robot, lane, snapshot = ops
    storm_of_one_error(store, clock, snapshot, lane)
    robot.down("refuse")
    clock.advance(WINDOW)
    lane.process()  # the window ended: the repeat is released, and the robot cannot be reached
    clock.advance(6 * 60)
    [delay] = [c for c in evaluate(store, clock.now(), Thresholds(notification_delay_minutes=5))
               if c.name == "notification_delay_minutes" and c.key == "ops"]
    # released at start + WINDOW (the storm's first message plus the window), looked at a minute later, then 6 more
    assert delay.breached and delay.value == 7.0


def test_an_outage_that_merges_digest_into_digest_still_shows_how_late_the_first_notification_is(store, clock, ops):
    robot, lane, snapshot = ops
    robot.down("refuse")
    start = clock.now()
    for minute in range(12):  # a storm of different errors through a twelve-minute outage: digest after digest
        with store.transaction():
            for i in range(30):
                enqueue(store, snapshot, clock.now(), "admin", "task", f"[failured] e{minute}-{i}", "b",
                        category="unrecoverable_data", task_type="sync", fingerprint=f"fp-{minute}-{i}")
        for _ in range(6):
            lane.process()
            clock.advance(10)
    digests = Notification.select().where(Notification.channel == "ops", Notification.kind == "digest")
    assert digests.count() > 1 and robot.received == []
    [delay] = [c for c in evaluate(store, clock.now(), Thresholds(notification_delay_minutes=10))
               if c.name == "notification_delay_minutes" and c.key == "ops"]
    assert delay.breached and delay.value == (clock.now() - start) / 60
