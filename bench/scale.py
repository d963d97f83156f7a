"""Several daemons on one PostgreSQL: retries per second with 1, 2 and 3 daemons, and the failover times.

Handler-bound work: every retry's handler sleeps 50 ms (a python handler; 4 at once per daemon, the
default FAILURE_RETRY_CONCURRENCY). For each count of daemons a fresh schema gets TASKS failures that
each need one retry; the figure is retries recovered per second, from the first to the last recovery.

Failover (3 daemons, 12 retries of 3 s each: room to spare): kill -9 the leader while it runs
some; the times from the kill to the next scheduled job run in a new leader (its scan), to the dead
leader's leases taken back, and to the first re-run of one of them, with the defaults (heartbeat 1 s,
take-back check 1 s).

    .venv/bin/python bench/scale.py [TASKS]       (FAILURE_TEST_POSTGRES_URL, default the local test database)
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit
from pgschema import fresh_schema

from failured.intake import record_failure
from failured.store import members as member_rows
from failured.store import open_store

HANDLER = """
import time

def run(seconds=0.05, **_):
    time.sleep(seconds)
"""
PATTERNS = """
[[category]]
name = "recoverable_network"
label = "net"
action = "retry"
priority = 30
retry = { delays = [0.01], max_attempts = 3 }
patterns = ['connection.*timeout']
"""
MAIN = '[task_types.bench.handler]\nkind = "python"\ntarget = "scale_handler:run"\ntimeout = 30\n'


def start_daemons(url, workdir, count):
    procs = []
    for n in range(count):
        home = Path(workdir) / f"d{n}-{time.monotonic_ns()}"
        home.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
        env.update(FAILURE_DB=url, FAILURE_CONFIG_DIR=str(Path(workdir) / "config"), FAILURE_LOG_DIR=str(home / "logs"),
                   FAILURE_REPORT_DIR=str(home / "reports"), FAILURE_HTTP_ADDR="off", FAILURE_LOG_LEVEL="WARNING",
                   PYTHONPATH=os.pathsep.join([str(workdir), str(REPO)]))
        with open(home / "stderr", "wb") as stderr:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=home, stderr=stderr))
    return procs


def wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def alive(store):
    return [m for m in member_rows.members(store, 10.0) if m["alive"]]


def stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)


def throughput(workdir, daemons, tasks):
    """Retries recovered per second with ``daemons`` daemons."""
    with fresh_schema("scale") as url:
        store = open_store(url)
        procs = start_daemons(url, workdir, daemons)
        try:
            wait(lambda: len(alive(store)) == daemons, 60, "the daemons")
            for _ in range(tasks):
                record_failure(store, "bench", "connection timeout")
            wait(lambda: store.scalar("SELECT count(*) FROM tasks WHERE status = 'recovered'") == tasks, 600,
                 "every retry")
            span = store.scalar(f"SELECT {store.seconds_between('min(finished_at)', 'max(finished_at)')} FROM tasks")
            return round(tasks / max(span, 1e-9), 1)
        finally:
            stop(procs)
            store.close()


def failover(workdir):
    """Seconds from the kill to: the new leader's scan, the leases taken back, the first re-run of one."""
    with fresh_schema("scale") as url:
        store = open_store(url)
        procs = start_daemons(url, workdir, 3)
        try:
            wait(lambda: len(alive(store)) == 3 and any(m["leader"] for m in alive(store)), 60, "the daemons")
            [leader] = [m for m in alive(store) if m["leader"]]
            for _ in range(12):
                record_failure(store, "bench", "connection timeout", payload={"seconds": 3.0})
            leased = wait(lambda: [i for (i,) in store.rows("SELECT id FROM tasks WHERE status = 'running' "
                                                            "AND lease_owner = ?", leader["name"])], 60, "leases")
            killed, killed_wall = time.monotonic(), time.time()
            [proc] = [p for p in procs if p.pid == leader["pid"]]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            marks = "(" + ", ".join("?" * len(leased)) + ")"
            scan = taken = rerun = None
            while scan is None or taken is None or rerun is None:
                now = time.monotonic()
                if taken is None and store.scalar(f"SELECT count(*) FROM task_events WHERE event = 'lease_expired' "
                                                  f"AND task_id IN {marks}", *leased):
                    taken = now - killed
                if scan is None and float((store.get_state("last_scan") or "0").split()[0]) > killed_wall:
                    scan = now - killed
                if rerun is None and store.scalar(f"SELECT count(*) FROM task_events WHERE event = 'retry_started' "
                                                  f"AND task_id IN {marks} AND at > ?", *leased,
                                                  store.time(killed_wall)):
                    rerun = now - killed
                if now - killed > 120:
                    raise SystemExit("no failover within 120 s")
                time.sleep(0.01)
            return round(scan, 2), round(taken, 2), round(rerun, 2)
        finally:
            stop(procs)
            store.close()


def main():
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "scale_handler.py").write_text(HANDLER)
        config = Path(workdir) / "config"
        (config / "patterns").mkdir(parents=True)
        (config / "patterns" / "10-bench.toml").write_text(PATTERNS)
        (config / "failured.toml").write_text(MAIN)
        rates = {n: throughput(workdir, n, tasks) for n in (1, 2, 3)}
        scan, taken, rerun = failover(workdir)
    emit("scale", {"retries_per_second_1_daemon": rates[1], "retries_per_second_2_daemons": rates[2],
                   "retries_per_second_3_daemons": rates[3], "speedup_3_over_1": round(rates[3] / rates[1], 2),
                   "failover_to_next_scan_seconds": scan, "failover_to_leases_taken_back_seconds": taken,
                   "failover_to_first_rerun_seconds": rerun,
                   "tasks": tasks, "load": Path("/proc/loadavg").read_text().split()[0]},
         "3 daemons >= 2.5x one; failover <= 10 s")


if __name__ == "__main__":
    main()
