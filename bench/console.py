"""The web console with 1,000,000 tasks in the store: milliseconds per page load over HTTP (target < 200 ms).

The database is bench/analysis.py's (a million failures over 7 days, built once in a temporary
file); the console runs in an ApiServer over it as in the daemon, behind a token and a logged-in
session. Each page is loaded REPEAT times; the median and the worst are printed.

``--rows N`` builds a smaller store (a quick look); ``--db PATH`` keeps the built database at PATH and
reuses it on the next run (a database built by an older failured is migrated when it is opened).
"""

import argparse
import http.client
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from common import REPO, emit

import analysis as analysis_bench
from failured.api import ApiServer
from failured.backend import Backend
from failured.config import load_config
from failured.settings import load_settings
from failured.store import open_store

REPEAT = 5
TOKEN = "bench-console-token"
TARGET_MS = 200


def fetch(port, path, cookie=None, form=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = f"failured_session={cookie}"
    connection.request("POST" if form else "GET", path, urlencode(form).encode() if form else None, headers)
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    return answer.status, answer.getheader("Set-Cookie") or "", body


def pages(store):
    newest = store.db.execute_sql("SELECT max(id) FROM tasks").fetchone()[0]
    rare = store.db.execute_sql("SELECT error_message FROM tasks WHERE category = 'unknown' LIMIT 1").fetchone()[0]
    return {
        "overview": "/ui/",
        "tasks": "/ui/tasks",
        "tasks page 2": f"/ui/tasks?cursor={newest - 50}",
        "tasks status=scheduled": "/ui/tasks?status=scheduled",
        "tasks category=unknown": "/ui/tasks?category=unknown",
        "tasks status+category+type": "/ui/tasks?status=notified&category=unrecoverable_data&type=order_sync",
        "tasks since=1h": "/ui/tasks?since=1h",
        "tasks grep (common)": "/ui/tasks?grep=failure+kind",
        "tasks grep (rare)": "/ui/tasks?" + urlencode({"grep": rare[-20:]}),
        "task": f"/ui/tasks/{newest // 2}",
        "unknown (7 days)": "/ui/unknown",
        "workbench preview": "/ui/unknown?" + urlencode({"pattern": "kind alpha", "category": "unrecoverable_data"}),
        "notifications": "/ui/notifications",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=analysis_bench.ROWS, help="tasks in the store (default 1,000,000)")
    parser.add_argument("--db", type=Path, help="keep the database here and reuse it when it exists")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="loads per page (default %(default)s)")
    args = parser.parse_args(argv)
    analysis_bench.ROWS = args.rows
    with tempfile.TemporaryDirectory() as directory:
        path = args.db or Path(directory) / "console.db"
        if not path.exists():
            started = time.perf_counter()
            analysis_bench.build(path, time.time())
            print(f"console: built {args.rows:,} tasks in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        store = open_store(path)  # migrates a database an older failured built
        rows = store.db.execute_sql("SELECT count(*) FROM tasks").fetchone()[0]
        print(f"console: opened {rows:,} tasks in {time.perf_counter() - started:.1f}s")
        settings = load_settings({"FAILURE_CONFIG_DIR": str(REPO / "config")})
        snapshot = load_config(REPO / "config", settings.lang)
        server = ApiServer("127.0.0.1", 0, Backend(store, settings, lambda: snapshot), token=TOKEN).start()
        try:
            _, cookie, _ = fetch(server.port, "/ui/login", form={"token": TOKEN})
            cookie = re.match(r"failured_session=([^;]+)", cookie).group(1)
            figures = {}
            for name, page in pages(store).items():
                timings = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    status, _, _ = fetch(server.port, page, cookie)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert status == 200, (page, status)
                worst = max(timings)
                verdict = "ok" if worst < TARGET_MS else "OVER"
                figures[f"{name} ms"] = (f"median {statistics.median(timings):.0f}, worst {worst:.0f}"
                                         f" (target < {TARGET_MS}: {verdict})")
        finally:
            server.stop()
            store.close()
    emit("console", figures, f"< {TARGET_MS} ms per page with {rows:,} tasks")


if __name__ == "__main__":
    sys.exit(main())
