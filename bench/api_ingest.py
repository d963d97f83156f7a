"""Failures accepted per second by POST /v1/failures: 8 keep-alive clients against a real daemon subprocess.

``--store postgresql`` (or BENCH_STORE=postgresql) runs the daemon on a fresh schema of
FAILURE_TEST_POSTGRES_URL (dropped after).
"""

import contextlib
import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, emit, percentile
from pgschema import fresh_schema, store_kind

CLIENTS = 8
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
TOKEN = "bench-token-" + "0" * 32
ERRORS = [  # a realistic mix: the daemon classifies each one as it arrives
    "HTTPSConnectionPool(host='api.kuaidi100.com', port=443): Read timed out. (read timeout=10)",
    "psycopg2.OperationalError: FATAL: sorry, too many clients already",
    "订单{n}不存在",
    "json.decoder.JSONDecodeError: Expecting value: line 1 column {n} (char 0)",
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port, deadline):
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the daemon's API did not come up")


def client(port, number, stop_at, latencies, errors):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    i = 0
    while time.monotonic() < stop_at:
        i += 1
        body = json.dumps({"task_type": f"bench_{number % 4}", "error": ERRORS[i % len(ERRORS)].format(n=i),
                           "payload": {"client": number, "i": i}, "ref": f"c{number}-{i}"})
        start = time.perf_counter()
        try:
            conn.request("POST", "/v1/failures", body, headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 201
        except OSError:
            conn.close()
            ok = False
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(i)
    conn.close()


def count_tasks(db):
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db) as con:
            return con.execute("SELECT count(*), count(*) FILTER (WHERE status <> 'new') FROM tasks").fetchone()
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*), sum(status != 'new') FROM tasks").fetchone()
    finally:
        con.close()


def main(kind):
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as stack:
        directory = Path(directory)
        db = stack.enter_context(fresh_schema()) if kind == "postgresql" else directory / "b.db"
        shutil.copytree(REPO / "config", directory / "config")
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")},
               "FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(directory / "config"),
               "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_REPORT_DIR": str(directory / "reports"),
               "FAILURE_LOG_LEVEL": "WARNING", "FAILURE_HTTP_ADDR": f"127.0.0.1:{port}",
               "FAILURE_API_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
        daemon = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=directory)
        try:
            wait_healthy(port, time.monotonic() + 20)
            print(f"api_ingest ({kind}): {CLIENTS} keep-alive clients posting failures for {SECONDS:g} s")
            latencies, errors = [], []
            start = time.monotonic()
            threads = [threading.Thread(target=client, args=(port, n, start + SECONDS, latencies, errors))
                       for n in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - start
            alive = daemon.poll() is None
        finally:
            daemon.terminate()
            daemon.wait(30)
        stored, handled = count_tasks(db)
    ms = [x * 1000 for x in latencies]
    name = "api_ingest" + ("_postgres" if kind == "postgresql" else "")
    emit(name, {"accepted/s": round(len(latencies) / elapsed), "accepted": len(latencies),
                "errors": len(errors), "stored": stored, "classified before the stop": handled,
                "p50 ms": round(percentile(ms, 0.5), 2), "p99 ms": round(percentile(ms, 0.99), 2),
                "daemon alive at the end": alive}, ">= 1,000 accepted/s, 0 errors")


if __name__ == "__main__":
    main(store_kind())
