"""Config reloads, retries and notifications at once: no exception in any thread, every task settles."""

from conftest import wait_for
from failured.intake import record_failure
from failured.store import open_store

FLAKY = """
[task_types.sync.handler]
kind = "command"
argv = ["bash", "-c", "exit $((RANDOM % 2))"]  # fails half the time; a shell, not a Python, per attempt
timeout = 30

[breaker]
failures = 1000  # flaky on purpose: the breaker must not postpone retries past the test

[notify]
dedup_window_seconds = 1  # repeats are summed up within a second, not held for ten minutes

[[routes]]
channels = ["{channel}"]
"""


def channels(url, count):
    return "".join(f'\n[channels.hook{i}]\nkind = "webhook"\nurl = "{url}"\n' for i in range(count))


def test_reloads_retries_and_notifications_together_raise_nothing(daemon_factory, hook_server, tmp_path):
    hook = hook_server()
    daemon = daemon_factory(FLAKY.replace("{channel}", "hook0") + channels(hook.url, 1)).start()
    store = open_store(daemon.db)
    main = tmp_path / "config" / "failured.toml"
    try:
        for round_ in range(20):
            # each rewrite adds or removes webhook lanes while the dispatcher iterates them
            count = 1 + round_ % 4
            main.write_text(FLAKY.replace("{channel}", "hook0") + channels(hook.url, count), encoding="utf-8")
            for i in range(10):
                error = "connection timeout" if i % 2 else f"validation failed: field f{round_}_{i} is required"
                record_failure(store, "sync", error)
            daemon.wait_for("SELECT count(*) FROM tasks WHERE status = 'new'", lambda r: r[0][0] == 0, timeout=60)
        daemon.wait_for("SELECT count(*) FROM tasks WHERE status IN ('new', 'scheduled', 'running')",
                        lambda r: r[0][0] == 0, timeout=120)
        try:
            daemon.wait_for("SELECT count(*) FROM notifications WHERE status = 'pending'", lambda r: r[0][0] == 0,
                            timeout=120)
        except AssertionError:
            raise AssertionError(daemon.query("SELECT channel, kind, status, attempts, next_attempt_at, last_error, "
                                              "count(*) FROM notifications GROUP BY 1, 2, 3, 4, 5, 6"))
        assert daemon.proc.poll() is None
        # The watcher debounces: on a quick machine every rewrite may fall within one window, and the reload of
        # the last one comes after the tasks have settled.
        assert wait_for(lambda: "reloaded" in daemon.stderr(), timeout=30)
    finally:
        store.close()
        daemon.stop()
    stderr = daemon.stderr()
    assert "Traceback" not in stderr, stderr[-3000:]
