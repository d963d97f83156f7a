"""Celery round trip: failing Celery tasks reported by the integration and retried through the broker.

A real ``celery worker`` (threads pool) and a real ``failured run`` with its HTTP API.
Phase 1: N tasks fail once and succeed when failured re-runs them; measured: first
failure -> last ``recovered``, failures handed off per second on the worker side and
delivered per second into failured, and the integration's own time per failing task
(its task_failure receiver, which is all a failing task pays). Phase 2: failured
stopped, M more failures go to the spool; the same overhead, spooling.

    .venv/bin/python bench/celery_roundtrip.py [--tasks 2000] [--broker redis://127.0.0.1:6379/0]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import REPO, emit, percentile

from failured.integrations.spool import Spool

WORKER_APP = '''
import collections, json, os, time
from celery import Celery, signals
from failured.integrations import celery as failured_celery, protocol
from failured.integrations.spool import Spool

app = Celery("bench", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(task_default_queue=os.environ["BENCH_QUEUE"], worker_prefetch_multiplier=4)
TIMES = []  # (end, seconds, CPU seconds) per failing task: the integration's receiver, timed from outside
_original = failured_celery.CeleryIntegration.on_failure


def timed_on_failure(self, *args, **kwargs):
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        return _original(self, *args, **kwargs)
    finally:
        end, cpu_end = time.perf_counter(), time.thread_time()
        if protocol.failured_headers(kwargs["sender"].request) is None:
            TIMES.append((time.time(), end - started, cpu_end - cpu))


failured_celery.CeleryIntegration.on_failure = timed_on_failure
_put = Spool.put
HANDED = collections.Counter()  # ".slot" or ".json": how each report was handed off


def counted_put(self, record):
    path = _put(self, record)
    HANDED[path.suffix] += 1
    return path


Spool.put = counted_put
failured_celery.install(app, include=["bench.*"], timeout=2.0, flush_interval=0.5)


@signals.worker_shutdown.connect
def dump(**_):
    with open(os.environ["BENCH_TIMES"], "w") as f:
        json.dump({"times": TIMES, "handed": HANDED}, f)


@app.task(name="bench.flaky", bind=True)
def flaky(self, i):
    if protocol.failured_headers(self.request) is None:
        raise ConnectionRefusedError(111, "Connection refused")
    return i
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def query(db, sql):
    import sqlite3

    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def start_daemon(directory, env):
    proc = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=directory,
                            stderr=open(directory / "daemon.err", "ab"))
    port = env["FAILURE_HTTP_ADDR"].rsplit(":", 1)[1]
    try:
        wait(lambda: _answers(int(port)) or proc.poll() is not None, 120, "failured's API")
    finally:
        if proc.poll() is not None or not _answers(int(port)):
            proc.kill()
            raise SystemExit("failured did not start:\n" + (directory / "daemon.err").read_text()[-3000:])
    return proc


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run(directory, tasks, down_tasks, broker, pool, concurrency):
    import celery

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    (directory / "benchapp.py").write_text(WORKER_APP)
    config = directory / "config"
    shutil.copytree(REPO / "config" / "patterns", config / "patterns")
    (config / "failured.toml").write_text(
        '[task_types."bench.flaky".handler]\nkind = "celery"\nbroker = "${CELERY_BROKER_URL}"\ntimeout = 60\n'
        '[task_types."bench.flaky".retry]\ndelays = [0]\nmax_attempts = 3\n')
    port = free_port()
    db = directory / "bench.db"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    daemon_env = {**base, "FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(config),
                  "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_REPORT_DIR": str(directory / "reports"),
                  "FAILURE_LOG_LEVEL": "WARNING", "FAILURE_HTTP_ADDR": f"127.0.0.1:{port}",
                  "FAILURE_RETRY_CONCURRENCY": "16", "FAILURE_NOTIFICATION_ENABLED": "false",
                  "CELERY_BROKER_URL": broker}
    times_file = directory / "times.json"
    worker_env = {**base, "CELERY_BROKER_URL": broker, "BENCH_QUEUE": queue, "BENCH_TIMES": str(times_file),
                  "FAILURE_API_URL": f"http://127.0.0.1:{port}", "FAILURE_SPOOL_DIR": str(directory / "spool"),
                  "PYTHONPATH": os.pathsep.join([str(directory), str(REPO)])}
    daemon = start_daemon(directory, daemon_env)
    worker_log = directory / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "benchapp", "worker", f"--pool={pool}",
                               f"--concurrency={concurrency}", "--loglevel=WARNING", "-Q", queue, "--without-gossip",
                               "--without-mingle", "--without-heartbeat", "--logfile", str(worker_log)],
                              cwd=directory, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sender = celery.Celery("sender", broker=broker, set_as_current=False)
    try:
        with sender.producer_or_acquire() as producer:
            for i in range(tasks):
                sender.send_task("bench.flaky", args=[i], queue=queue, producer=producer)
        final = "('recovered', 'notified', 'exhausted', 'manual', 'resolved')"
        wait(lambda: query(db, f"SELECT COUNT(*) FROM tasks WHERE status IN {final}")[0][0] >= tasks
             if db.exists() else False, 1800, f"{tasks} tasks in a final state")
        recovered = query(db, "SELECT COUNT(*) FROM tasks WHERE status = 'recovered'")[0][0]
        first, last_in = query(db, "SELECT MIN(created_at), MAX(created_at) FROM tasks")[0]
        last = query(db, "SELECT MAX(at) FROM task_events WHERE event = 'recovered'")[0][0]
        daemon.terminate()
        daemon.wait(60)
        with sender.producer_or_acquire() as producer:
            for i in range(down_tasks):
                sender.send_task("bench.flaky", args=[tasks + i], queue=queue, producer=producer)
        spool = directory / "spool"
        wait(lambda: len(Spool(spool).pending()) >= down_tasks, 600, "the spooled reports")
    finally:
        worker.terminate()
        worker.wait(120)
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(60)
        with sender.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    dumped = json.loads(times_file.read_text())
    times = dumped["times"]
    up, down = times[:tasks], times[tasks:]
    return {"recovered": recovered, "first": first, "last_in": last_in, "last": last,
            "handed": dumped["handed"]}, up, down


def seconds_between(first, last):
    from failured.clock import from_db_time

    return from_db_time(last) - from_db_time(first)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--down-tasks", type=int, default=500)
    parser.add_argument("--pool", default="threads", help="the worker's pool: threads or solo")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        db, up, down = run(Path(directory), args.tasks, args.down_tasks, args.broker, args.pool, args.concurrency)
    handed = sorted(end for end, *_ in up)
    span = (handed[-1] - handed[0]) or float("nan")
    in_span = seconds_between(db["first"], db["last_in"]) or float("nan")

    def ms(times, fraction, column=1):
        return round(percentile([t[column] for t in times], fraction) * 1000, 2)

    emit("celery_roundtrip", {
        "tasks": args.tasks,
        "worker pool": args.pool if args.pool == "solo" else f"{args.pool} x{args.concurrency}",
        "recovered": db["recovered"],
        "first failure -> last recovered (s)": round(seconds_between(db["first"], db["last"]), 2),
        "failures handed off/s (worker)": round((len(handed) - 1) / span, 1),
        "failures delivered/s (into failured)": round((args.tasks - 1) / in_span, 1),
        "overhead p50, failured up (ms; target <= 2)": ms(up, 0.5),
        "overhead p95, failured up (ms)": ms(up, 0.95),
        "overhead p50, spooling (ms; target <= 5)": ms(down, 0.5),
        "overhead p95, spooling (ms)": ms(down, 0.95),
        "handed off into a ready slot (%)": round(100 * db["handed"].get(".slot", 0) / max(1, sum(db["handed"].values())), 1),
        # The receiver's own CPU time: what the tail of the wall time is not (a loaded machine's scheduling).
        "overhead CPU p50/p95, up (ms)": f"{ms(up, 0.5, 2)} / {ms(up, 0.95, 2)}",
        "overhead CPU p50/p95, spooling (ms)": f"{ms(down, 0.5, 2)} / {ms(down, 0.95, 2)}",
    }, "overhead <= 2 ms p50 with failured up, <= 5 ms spooling")


if __name__ == "__main__":
    main()
