"""Routes choose channels by audience, category and task type; bad routes are config errors."""

import pytest

from conftest import SMALL_PATTERNS, run_cli, write_config
from failured.config import load_config
from failured.errors import ConfigErrors
from failured.notify.routing import Route, channels_for

ROUTES = (
    Route(("ops",), audience="admin"),
    Route(("finance",), task_types=("payment_processing",)),
    Route(("cs",), audience="user", task_types=("order_processing",)),
    Route(("data_team", "ops"), categories=("unrecoverable_data",)),
)


@pytest.mark.parametrize("audience, category, task_type, expected", [
    ("admin", "unrecoverable_config", "sync", ("log", "ops")),
    ("admin", "unrecoverable_config", "payment_processing", ("log", "ops", "finance")),
    ("user", "unrecoverable_business", "payment_processing", ("log", "finance")),
    ("user", "unrecoverable_business", "order_processing", ("log", "cs")),
    ("admin", "unrecoverable_data", "sync", ("log", "ops", "data_team")),
    ("user", "unrecoverable_business", "sync", ("log",)),
])
def test_channels_for(audience, category, task_type, expected):
    assert channels_for(ROUTES, audience, category, task_type) == expected


CHANNEL = '[channels.ops]\nkind = "dingtalk"\naccess_token = "${T}"\n'


@pytest.mark.parametrize("main, key, reason", [
    (CHANNEL + '[[routes]]\nchannels = ["opz"]\n', "routes[0].channels", "no channel named 'opz'"),
    (CHANNEL + '[[routes]]\naudience = "boss"\nchannels = ["ops"]\n', "routes[0].audience", "not an audience"),
    (CHANNEL + '[[routes]]\ncategories = ["nope"]\nchannels = ["ops"]\n', "routes[0].categories", "no category named"),
    (CHANNEL + '[[routes]]\nchannel = ["ops"]\n', "routes[0].channel", "unknown key"),
    ('[channels.log]\nkind = "log"\n', "channels.log", "built in"),
    ('[channels.x]\nkind = "pigeon"\n', "channels.x.kind", ""),
    ('[notify]\ndedup_window_seconds = -1\n', "notify.dedup_window_seconds", "greater than 0"),
    ('[thresholds]\nfailure_rate = 20\n', "thresholds.failure_rate", "unknown key"),
])
def test_bad_notification_config_names_key_and_reason(tmp_path, main, key, reason):
    with pytest.raises(ConfigErrors) as info:
        load_config(write_config(tmp_path / "c", SMALL_PATTERNS, main))
    assert any(e.key == key and reason in e.reason for e in info.value.errors), [str(e) for e in info.value.errors]


def test_shipped_config_validates_and_routes_to_log_only(shipped_config):
    snapshot = load_config(shipped_config)
    assert set(snapshot.channels) == {"log"} and snapshot.routes == ()
    assert snapshot.thresholds.failure_rate_percent == 20


def test_notify_test_prints_the_robots_answer(tmp_path, robot_server):
    robot = robot_server("dingtalk", "tok-0123456789abcdef", "SECabcdef0123456789")
    main = (f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "${{TOK}}"\nsecret = "${{SEC}}"\n')
    config = write_config(tmp_path / "c", SMALL_PATTERNS, main)
    env = {"FAILURE_CONFIG_DIR": str(config), "TOK": "tok-0123456789abcdef", "SEC": "SECabcdef0123456789"}
    good = run_cli("notify-test", "ops", env=env)
    assert good.returncode == 0 and "sent" in good.stdout and '"errcode":0' in good.stdout.replace(" ", "")
    assert len(robot.received) == 1
    bad = run_cli("notify-test", "ops", env={**env, "SEC": "SECwrong-wrong-wrong"})
    assert bad.returncode == 1 and "310000" in bad.stdout and "SECwrong-wrong-wrong" not in bad.stdout + bad.stderr
    missing = run_cli("notify-test", "nope", env=env)
    assert missing.returncode == 2 and "no channel named 'nope'" in missing.stderr
    received = len(robot.received)
    unset = run_cli("notify-test", "ops", env={k: v for k, v in env.items() if k != "SEC"})
    assert unset.returncode == 2 and "uses ${SEC}, which this shell does not set" in unset.stderr
    assert "rejected" not in unset.stdout + unset.stderr and len(robot.received) == received  # nothing sent


def _robot_channel(tmp_path, robot, store):
    main = f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "tok-0123456789abcdef"\n'
    config = write_config(tmp_path / "c", SMALL_PATTERNS, main)
    return config, {"FAILURE_CONFIG_DIR": str(config), "FAILURE_DB": str(store.path)}


def test_notify_test_keeps_to_the_robots_minute_the_daemon_used(tmp_path, robot_server, store):
    """A robot sent more than 20 messages a minute blocks for 10 minutes: a test does not make the 21st."""
    import time

    from failured.store import outbox

    robot = robot_server("dingtalk", "tok-0123456789abcdef")
    config, env = _robot_channel(tmp_path, robot, store)
    snapshot = load_config(config)
    now = time.time()
    with store.transaction():  # the daemon sent 20 within the last minute
        [outbox.insert_pending(store, now, None, "admin", "task", None, "sync", None, f"t{i}", "b", ["ops"])
         for i in range(20)]
    store.execute("UPDATE notifications SET status = 'sent', sent_at = ? WHERE channel = 'ops'", (store.time(now),))
    refused = run_cli("notify-test", "ops", env=env)
    assert refused.returncode == 1 and "NOT sent" in refused.stdout, refused.stdout + refused.stderr
    assert "sent 20 messages within the last minute and takes 20 a minute" in refused.stdout
    assert "try again in" in refused.stdout and robot.received == []
    assert snapshot.channels["ops"].rate_per_minute == 20


def test_a_notify_test_message_counts_in_the_daemons_window(tmp_path, robot_server, store):
    import time

    from failured.clock import ManualClock
    from failured.notify.dispatcher import Dispatcher, Lane
    from failured.settings import Settings

    robot = robot_server("dingtalk", "tok-0123456789abcdef")
    config, env = _robot_channel(tmp_path, robot, store)
    sent = run_cli("notify-test", "ops", env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    snapshot = load_config(config)
    clock = ManualClock(time.time())  # the daemon's wall clock where the command's was
    dispatcher = Dispatcher(store, Settings(db=store.path, log_dir=tmp_path / "logs"), clock, lambda: snapshot)
    lane = Lane("ops", dispatcher)
    lane._load_history(clock.now())
    assert lane._room(snapshot.channels["ops"], dispatcher.monotonic()) == 19
    assert lane._room(snapshot.channels["ops"], dispatcher.monotonic()) == 19  # counted once
