"""status, scan and analyze from the command line, and the daemon's scheduled reports."""

import json

from cli_inprocess import cli_fixture  # noqa: F401 - fixture: a command in-process, a subprocess costs ~0.45 CPU-s a call
from conftest import run_cli, wait_for
from failured.intake import record_failure
from failured.store import open_store


def report(daemon, task_type, error):
    """Report through the Python API (``failured report`` is proven in test_cli_store)."""
    store = open_store(daemon.db)
    try:
        record_failure(store, task_type, error)
    finally:
        store.close()


def test_status_is_healthy_with_a_live_daemon_and_exit_1_without(daemon_factory, cli):
    daemon = daemon_factory().start()
    report(daemon, "sync", "malformed json")
    daemon.wait_for("SELECT count(*) FROM tasks WHERE status = 'notified'", lambda r: r[0][0] == 1)
    result = cli("status", "--json", env=daemon.env)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["healthy"] and status["daemon"]["alive"]
    assert status["tasks"]["by_status"] == {"notified": {"unrecoverable_data": 1}}
    assert status["config"]["active"]["files"] and status["config"]["last_rejected"] is None
    assert "log" in status["notifications"] or status["notifications"] == {}
    daemon.stop()
    daemon.query("UPDATE daemon_state SET value = '1000.0' WHERE key = 'heartbeat'")
    stale = cli("status", env=daemon.env)
    assert stale.returncode == 1 and "NOT running" in stale.stdout


def test_a_daemon_is_alive_to_status_as_soon_as_it_says_ready(daemon_factory, cli):
    # systemd's start returns at READY=1: `systemctl start failured && failured status` must not say unhealthy
    daemon = daemon_factory().start()
    assert daemon.query("SELECT count(*) FROM daemon_state WHERE key = 'heartbeat'")[0][0] == 1
    result = cli("status", "--json", env=daemon.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert daemon.stop() == 0


def test_status_shows_a_rejected_reload_and_why(daemon_factory, tmp_path, cli):
    daemon = daemon_factory().start()
    (tmp_path / "config" / "patterns" / "50-bad.toml").write_text(
        '[[category]]\nname = "x"\naction = "nope"\npriority = 1\npatterns = ["(unclosed"]\n')
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'config_rejected'", lambda r: r[0][0] == 1)
    status = json.loads(cli("status", "--json", env=daemon.env).stdout)
    assert any("unknown action 'nope'" in error for error in status["config"]["last_rejected"]["errors"])
    rows = daemon.wait_for("SELECT title, body FROM notifications WHERE kind = 'config'", lambda r: len(r) >= 1)
    assert "配置" in rows[0][0]
    bullets = [line for line in rows[0][1].splitlines() if line.startswith("- ")]
    assert len(bullets) == 2, rows[0][1]  # one bullet a problem: a chat shows each on its own line


def test_undoing_a_refused_change_makes_status_healthy_again(daemon_factory, tmp_path, cli):
    daemon = daemon_factory().start()
    bad = tmp_path / "config" / "patterns" / "50-bad.toml"
    bad.write_text('[[category]]\nname = "x"\naction = "nope"\npriority = 1\n')
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'config_rejected'", lambda r: r[0][0] == 1)
    assert cli("status", env=daemon.env).returncode == 1
    bad.unlink()  # the usual fix: take the bad change back
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'config_rejected'", lambda r: r[0][0] == 0)
    status = cli("status", "--json", env=daemon.env)
    assert status.returncode == 0 and json.loads(status.stdout)["config"]["last_rejected"] is None, status.stdout


def test_status_says_a_reload_waits_for_an_emptied_file_and_is_healthy_once_it_has_content(daemon_factory, tmp_path,
                                                                                               cli):
    daemon = daemon_factory().start()
    path = next((tmp_path / "config" / "patterns").glob("*.toml"))
    content = path.read_text(encoding="utf-8")
    path.write_text("", encoding="utf-8")  # `>` emptied it, and the rest of the save never came
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'config_waiting'", lambda r: r[0][0] == 1)
    waiting = cli("status", env=daemon.env)
    assert waiting.returncode == 1 and "config reload waits since" in waiting.stdout
    assert f"{path} emptied (a save still being written?)" in waiting.stdout
    path.write_text(content + "\n# saved again\n", encoding="utf-8")
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'config_waiting'", lambda r: r[0][0] == 0)
    assert cli("status", env=daemon.env).returncode == 0


def test_status_exit_1_when_a_threshold_is_breached(daemon_factory):
    daemon = daemon_factory().start()
    store = open_store(daemon.db)
    for i in range(12):  # through the Python API: twelve CLI processes cost seconds of CPU
        record_failure(store, "sync", f"assertion failed in step {i}")
    store.close()
    daemon.wait_for("SELECT count(*) FROM tasks WHERE category = 'unknown'", lambda r: r[0][0] == 12)
    result = daemon.cli("status")
    assert result.returncode == 1 and "threshold breached: unknown_errors (all task types) = 12 (limit 10" in result.stdout
    # From a shell (cron, a monitor) that names no config directory: the daemon's own is checked.
    elsewhere = {k: v for k, v in daemon.env.items() if k != "FAILURE_CONFIG_DIR"}
    (daemon.workdir / "elsewhere").mkdir()
    result = run_cli("status", env=elsewhere, cwd=daemon.workdir / "elsewhere")
    assert result.returncode == 1 and "threshold breached: unknown_errors (all task types) = 12 (limit 10" in result.stdout
    # An edit the daemon refuses: it runs on its last good configuration, whose thresholds still count.
    (daemon.workdir / "config" / "patterns" / "50-local.toml").write_text("[[category]]\npatterns = ['x'\n")
    daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'config_rejected'", lambda r: r[0][0] == 1)
    result = daemon.cli("status")
    assert result.returncode == 1 and "threshold breached: unknown_errors (all task types) = 12 (limit 10" in result.stdout
    assert "thresholds not checked" not in result.stdout
    # From a shell that knows nothing of the daemon's cache (the unit's CacheDirectory=): the one it recorded.
    result = run_cli("status", env={**elsewhere, "FAILURE_MODEL_CACHE": "off"}, cwd=daemon.workdir / "elsewhere")
    assert result.returncode == 1 and "threshold breached: unknown_errors (all task types) = 12 (limit 10" in result.stdout


def test_status_that_can_read_no_configuration_says_its_thresholds_were_not_checked(tmp_path):
    nowhere = {"FAILURE_DB": str(tmp_path / "f.db"), "FAILURE_CONFIG_DIR": str(tmp_path / "no-such-config")}
    assert run_cli("report", "--type", "sync", "--error", "x", env=nowhere, cwd=tmp_path).returncode == 0
    result = run_cli("status", env=nowhere, cwd=tmp_path)
    assert result.returncode == 1
    assert f"problem: thresholds not checked: the configuration at {tmp_path / 'no-such-config'} cannot be read" \
        in result.stdout


def test_daemon_writes_processing_and_analysis_reports_on_schedule(daemon_factory, tmp_path):
    daemon = daemon_factory(FAILURE_SCAN_INTERVAL_MINUTES="0.01", FAILURE_ANALYSIS_INTERVAL_HOURS="0.0003").start()
    report(daemon, "sync", "订单不存在")
    assert wait_for(lambda: "housekeeping: removed 0 report files older than 30 days" in daemon.stderr(), 15)

    def analysis_with_the_task():
        # A slot may pass before the task is reported, or before it is classified ("unclassified"): wait for
        # one that covers it decided.
        for path in sorted((tmp_path / "reports" / "failure_analysis").glob("*.json")):
            try:
                distribution = json.loads(path.read_text())["category_distribution"]
            except ValueError:
                continue  # being written
            if distribution and "unclassified" not in distribution and path.with_suffix(".html").exists():
                return path
        return None

    assert wait_for(analysis_with_the_task, timeout=20), daemon.stderr()
    assert json.loads(analysis_with_the_task().read_text())["category_distribution"] == {"unrecoverable_business": 1}

    def processing_results():
        paths = sorted((tmp_path / "reports" / "failure_processing").glob("*.json"))
        try:
            return [(r["task_id"], r["action_taken"]) for p in paths for r in json.loads(p.read_text())["results"]]
        except ValueError:
            return []  # a report being written

    assert wait_for(processing_results, timeout=20), daemon.stderr()
    assert processing_results() == [(1, "notify_user")]


def test_scan_and_analyze_commands(tmp_path, config_dir, db_location):
    env = {"FAILURE_DB": db_location, "FAILURE_CONFIG_DIR": str(config_dir),
           "FAILURE_REPORT_DIR": str(tmp_path / "reports")}
    store = open_store(env["FAILURE_DB"])
    record_failure(store, "t", "x")
    store.close()
    scan = run_cli("scan", "--json", env=env)
    assert scan.returncode == 0 and json.loads(scan.stdout)["message"] == "失败任务处理完成"
    assert list((tmp_path / "reports" / "failure_processing").glob("failure_processing_*.json"))
    analyze = run_cli("analyze", "--days", "3", "--json", env=env)
    assert json.loads(analyze.stdout)["analysis_period"] == "3天"
    written = run_cli("analyze", "--write", env={**env, "FAILURE_LANG": "en"})
    assert written.returncode == 0 and "7 days" in written.stdout
    assert list((tmp_path / "reports" / "failure_analysis").glob("*.html"))
    bad = run_cli("analyze", "--days", "0", env=env)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr


def test_a_daemon_that_cannot_write_its_heartbeat_is_alive_while_it_holds_the_lock(sqlite_store, tmp_path):
    """A full disk stops the heartbeat, not the daemon: ``status`` must not send the operator to restart it."""
    from failured.status import daemon_status, problems

    sqlite_store.set_state("heartbeat", "1000.0 pid=1", 1000.0)  # its last heartbeat, long ago
    daemon = open_store(sqlite_store.path)  # the daemon's own connection and lock
    daemon.take_daemon_lock()
    try:
        running = daemon_status(sqlite_store, 2000.0)
        assert running["alive"] and running["heartbeat_stale"]
        [problem] = problems(running, {}, {"last_rejected": None}, [])
        assert problem.startswith("daemon running but not writing: last heartbeat 1970-01-01T00:16:40Z")
        assert "if none does, it is hung: restart it" in problem  # nothing else explains it: a hung daemon
        full, stale = problems(running, {}, {"last_rejected": None}, [], free=0)
        assert full.startswith("disk full") and "see the problem above: restarting it will not help" in stale
    finally:
        daemon.close()
    gone = daemon_status(sqlite_store, 2000.0)  # the lock went with it: now it is not running
    assert not gone["alive"] and not gone["heartbeat_stale"]


def test_analyze_says_when_it_has_no_pattern_to_suggest_rather_than_none():
    from failured.cli import _suggested

    assert _suggested({"suggested_pattern": "disk\\s+quota"}) == "disk\\s+quota"
    shown = _suggested({"suggested_pattern": None})
    assert "None" not in shown and "write one by hand" in shown


def test_scan_from_a_shell_without_a_report_directory_writes_where_the_daemon_does(daemon_factory):
    """From an operator's shell that sets only FAILURE_DB and FAILURE_CONFIG_DIR the report had gone under the
    working directory, and the events it covered were missing from the daemon's reports."""
    daemon = daemon_factory().start()
    report(daemon, "sync", "malformed json")
    daemon.wait_for("SELECT count(*) FROM tasks WHERE status = 'notified'", lambda r: r[0][0] == 1)
    assert daemon.stop() == 0
    shell = {k: v for k, v in daemon.env.items() if k != "FAILURE_REPORT_DIR"}
    (daemon.workdir / "elsewhere").mkdir()
    result = run_cli("scan", env=shell, cwd=daemon.workdir / "elsewhere")
    assert result.returncode == 0, result.stderr
    assert list((daemon.workdir / "reports" / "failure_processing").glob("*.json"))
    assert not (daemon.workdir / "elsewhere" / "reports").exists()
    # Several daemons load the configuration, each with its own directory; the one that reports is the leader.
    other = daemon.workdir / "other-daemon"
    from failured import reports
    from failured.store import open_store
    store = open_store(daemon.env["FAILURE_DB"], create=False)
    try:
        store.set_state("config", json.dumps({"active": {"reports": str(other)}}), 0.0)  # the last to load
        assert store.get_state(reports.WRITTEN_IN_KEY) == str(daemon.workdir / "reports")
    finally:
        store.close()
    assert run_cli("scan", env=shell, cwd=daemon.workdir / "elsewhere").returncode == 0
    assert len(list((daemon.workdir / "reports" / "failure_processing").glob("*.json"))) >= 2 and not other.exists()


def test_a_first_start_writes_one_processing_report_not_two(daemon_factory, tmp_path):
    """At a first start the scheduled scan reports, and the lead this daemon gains at once had reported again in
    the same second: two empty reports, ``…_181936.json`` and ``…_181936_2.json``."""
    daemon = daemon_factory().start()
    reports = tmp_path / "reports" / "failure_processing"
    assert wait_for(lambda: list(reports.glob("*.json")), 30), daemon.stderr()
    report(daemon, "sync", "订单不存在")  # handled on a later pass of the loop than both scans would be
    daemon.wait_for("SELECT status FROM tasks", lambda rows: rows and rows[0][0] == "notified")
    assert len(list(reports.glob("*.json"))) == 1, daemon.stderr()


def test_a_next_retry_held_by_its_types_open_breaker_says_until_when():
    from failured.status import render

    status = {"healthy": True, "problems": [], "daemon": {"alive": True, "heartbeat": "x", "heartbeat_stale": False,
                                                          "heartbeat_age_seconds": 1.0, "last_scan": None, "last_analysis": None},
              "tasks": {"total": 1, "by_status": {"scheduled": {"recoverable_network": 1}}},
              "next_retries": [{"task_id": 12, "task_type": "slow", "category": "recoverable_network",
                                "due": "2026-12-03T07:33:41Z"}],
              "breakers_open": [{"task_type": "slow", "state": "open", "consecutive_failures": 5,
                                 "open_until": "2026-12-03T07:34:42Z"}],
              "notifications": {}, "config": {"active": None, "last_rejected": None, "waiting": None},
              "thresholds_breached": []}
    assert ("next retry: task 12 slow at 2026-12-03T07:33:41Z (its type's breaker holds it until "
            "2026-12-03T07:34:42Z)") in render(status)
