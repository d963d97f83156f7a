"""10,000 unrecoverable failures within 10 s through a real daemon to a fake DingTalk robot.

Prints the most messages the robot got in any 60 s window, the first message's
latency, the p99 latency from a failure to its notice being sent (or merged
into a sent digest), and how many notification rows ended in each state.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit, percentile

sys.path.insert(0, str(REPO / "tests"))

from robots import RobotServer  # noqa: E402
from failured.clock import from_db_time  # noqa: E402
from failured.intake import record_failure  # noqa: E402
from failured.store import open_store  # noqa: E402

FAILURES = 10_000
SECONDS = 10.0
TOKEN, SECRET = "bench-token-0123456789", "SECbench0123456789abcdef"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform"]


def distinct_error(i):
    """A storm of different errors (words, not numbers, so each has its own fingerprint): digests do the work."""
    words = [WORDS[(i // 21 ** n) % 21] for n in range(4)]
    return f"validation failed: field {'_'.join(words)} is required"


def make_config(directory, robot_url):
    shutil.copytree(REPO / "config" / "patterns", directory / "patterns")
    (directory / "failured.toml").write_text(
        f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot_url}"\naccess_token = "${{DINGTALK_ACCESS_TOKEN}}"\n'
        'secret = "${DINGTALK_SECRET}"\n\n[[routes]]\nchannels = ["ops"]\n', encoding="utf-8")


def wait_until_final(db, deadline):
    con = sqlite3.connect(db, timeout=30)
    while time.time() < deadline:
        pending = con.execute("SELECT (SELECT count(*) FROM tasks WHERE status = 'new'),"
                              " (SELECT count(*) FROM notifications WHERE status = 'pending')").fetchone()
        if pending == (0, 0):
            break
        time.sleep(0.5)
    return con


def latencies(con):
    rows = con.execute("""
        SELECT t.created_at, coalesce(n.sent_at, d.sent_at)
        FROM notifications n JOIN tasks t ON t.id = n.task_id
        LEFT JOIN notifications d ON d.id = n.merged_into
        WHERE n.channel = 'ops' AND n.status IN ('sent', 'merged')""").fetchall()
    return [(from_db_time(sent) - from_db_time(created)) * 1000 for created, sent in rows if sent]


def main():
    with tempfile.TemporaryDirectory() as directory, RobotServer("dingtalk", TOKEN, SECRET) as robot:
        directory = Path(directory)
        make_config(directory / "config", robot.url)
        db = directory / "burst.db"
        env = {**os.environ, "FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(directory / "config"),
               "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_LOG_LEVEL": "WARNING",
               "DINGTALK_ACCESS_TOKEN": TOKEN, "DINGTALK_SECRET": SECRET}
        daemon = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=directory)
        try:
            store = open_store(db)
            time.sleep(2)
            print(f"notify_burst: {FAILURES:,} unrecoverable failures within {SECONDS:g}s -> one DingTalk robot (20/min)")
            first = time.time()
            for i in range(FAILURES):
                record_failure(store, "tracking_update", distinct_error(i))
                lag = first + SECONDS * (i + 1) / FAILURES - time.time()
                if lag > 0:
                    time.sleep(lag)
            con = wait_until_final(db, time.time() + 300)
            states = dict(con.execute("SELECT status, count(*) FROM notifications WHERE channel = 'ops' GROUP BY status"))
            delays = latencies(con)
        finally:
            daemon.terminate()
            daemon.wait(30)
        figures = {
            "max messages in any 60 s": robot.max_in_any_window(60),
            "robot messages": len(robot.received),
            "first message latency s": round(robot.received[0].at - first, 2) if robot.received else None,
            "p50 failure->notice s": round(percentile(delays, 0.5) / 1000, 2),
            "p99 failure->notice s": round(percentile(delays, 0.99) / 1000, 2),
            "rows by state": states,
        }
    emit("notify_burst", figures, "<= 20 per 60 s window, first message <= 5 s, every row sent or merged")


if __name__ == "__main__":
    main()
