"""``failured status`` is unhealthy while a channel cannot deliver or a rejected reload stands;
``failured run`` refuses directories it cannot write."""

import json
import time

import pytest

from cli_inprocess import cli_fixture  # noqa: F401 - fixture: status in-process, a subprocess costs ~0.45 CPU-s a call
from conftest import run_cli
from failured.store import open_store


_MEMBERS = {}  # FAILURE_DB -> (store, Membership): a daemon's row and lock on PostgreSQL, ended with the test


@pytest.fixture
def env(db_location, config_dir):
    store = open_store(db_location)
    store.close()
    yield {"FAILURE_DB": db_location, "FAILURE_CONFIG_DIR": str(config_dir)}
    if db_location in _MEMBERS:
        store, member = _MEMBERS.pop(db_location)
        member.stop()
        store.close()


def _set(env, key, value):
    store = open_store(env["FAILURE_DB"], create=False)
    try:
        if value is None:
            store.delete_state(key)
        else:
            store.set_state(key, value, time.time())
    finally:
        store.close()


def _beat(env):
    """A live daemon, as ``status`` sees one: a fresh heartbeat; on PostgreSQL, a daemon's row whose lock is held."""
    _set(env, "heartbeat", f"{time.time():.3f} pid=1")
    location = env["FAILURE_DB"]
    if location.startswith("postgresql") and location not in _MEMBERS:
        from failured.clock import SystemClock
        from failured.members import Membership

        store = open_store(location, create=False)
        _MEMBERS[location] = (store, Membership(store, SystemClock(), "host:1:0").start())


def test_a_live_daemon_with_nothing_wrong_is_healthy(env, cli):
    _beat(env)
    result = cli("status", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failured: healthy" in result.stdout and "daemon: alive" in result.stdout


def test_a_channel_that_cannot_deliver_is_unhealthy_until_it_delivers_again(env, cli):
    _beat(env)
    _set(env, "channel:log", json.dumps({"ok": False, "at": "2026-01-02T03:04:05Z",
                                         "error": "OSError: [Errno 30] Read-only file system"}))
    result = cli("status", env=env)
    assert result.returncode == 1
    assert "problem: channel log cannot deliver since 2026-01-02T03:04:05Z: OSError: [Errno 30]" in result.stdout
    assert "channel log: NOT delivering" in result.stdout
    data = json.loads(cli("status", "--json", env=env).stdout)
    assert not data["healthy"] and data["notifications"]["log"]["delivering"] is False
    _set(env, "channel:log", json.dumps({"ok": True, "at": "2026-01-02T03:05:00Z", "error": None}))
    assert cli("status", env=env).returncode == 0


def test_a_rejected_reload_is_unhealthy_until_a_good_config_is_applied(env, cli):
    _beat(env)
    _set(env, "config_rejected", json.dumps({"at": "2026-01-02T03:04:05Z",
                                             "errors": ["patterns/50-bad.toml: category \"x\".action: unknown action"]}))
    result = cli("status", env=env)
    assert result.returncode == 1
    assert "problem: config reload rejected at 2026-01-02T03:04:05Z: patterns/50-bad.toml" in result.stdout
    _set(env, "config_rejected", None)  # the daemon deletes it when a good config is applied
    assert cli("status", env=env).returncode == 0


def test_no_heartbeat_after_a_clean_stop_means_not_running(env, cli):
    _beat(env)
    assert "daemon: alive" in cli("status", env=env).stdout
    _set(env, "heartbeat", None)  # a clean stop deletes it, and marks its daemon row stopped (PostgreSQL)
    if env["FAILURE_DB"] in _MEMBERS:
        _MEMBERS[env["FAILURE_DB"]][1].stop()
    result = cli("status", env=env)
    assert result.returncode == 1
    assert "alive" not in result.stdout and "daemon: NOT running (no heartbeat" in result.stdout
    assert "problem: daemon not running" in result.stdout


@pytest.mark.parametrize("variable", ["FAILURE_LOG_DIR", "FAILURE_REPORT_DIR"])
def test_run_refuses_a_log_or_report_directory_it_cannot_write(tmp_path, config_dir, variable):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {"FAILURE_DB": str(tmp_path / "failured.db"), "FAILURE_CONFIG_DIR": str(config_dir),
           "FAILURE_LOG_DIR": str(tmp_path / "logs"), "FAILURE_REPORT_DIR": str(tmp_path / "reports"),
           "FAILURE_HTTP_ADDR": "off", variable: str(blocker / "sub")}
    result = run_cli("run", env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"cannot write to {variable}={blocker / 'sub'}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "failured.db").exists()


def test_a_real_daemon_stopped_cleanly_is_not_running_at_once(daemon_factory):
    daemon = daemon_factory().start()
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'heartbeat'", lambda rows: rows[0][0] == 1)
    assert "daemon: alive" in daemon.cli("status").stdout
    assert daemon.stop() == 0
    result = daemon.cli("status")
    assert result.returncode == 1 and "daemon: NOT running (no heartbeat" in result.stdout, result.stdout
