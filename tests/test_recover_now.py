"""`recover` on a scheduled task runs it now, not at its old due time (the daemon's heap follows the table)."""

import sys

from conftest import SMALL_PATTERNS

SLOW_SCHEDULE = SMALL_PATTERNS.replace("retry = { delays = [0.05, 0.1, 0.2], max_attempts = 3 }",
                                       "retry = { delays = [3600], max_attempts = 3 }")
HANDLER = f"""
[task_types.sync.handler]
kind = "command"
argv = ["{sys.executable}", "-c", "pass"]
timeout = 30
"""


def test_recover_on_a_scheduled_task_runs_it_now(daemon_factory):
    daemon = daemon_factory(HANDLER, patterns=SLOW_SCHEDULE).start()
    try:
        assert daemon.cli("report", "--type", "sync", "--error", "connection timeout").returncode == 0
        daemon.wait_for("SELECT status FROM tasks", lambda r: r and r[0][0] == "scheduled")
        result = daemon.cli("recover", "1")
        assert result.returncode == 0, result.stderr
        # Due in an hour before: only a heap that follows the table runs it within this deadline.
        daemon.wait_for("SELECT status FROM tasks", lambda r: r[0][0] == "recovered", timeout=60)
    finally:
        daemon.stop()
