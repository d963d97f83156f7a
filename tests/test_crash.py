"""kill -9 in the middle of retries: nothing is lost, no task's handler ever overlaps itself."""

import os
import signal

import pytest

from conftest import wait_for
from failured.intake import record_failure
from failured.store import open_store
from test_daemon import command_handler

# Each run holds an exclusive flock on its task's lock file for its whole life
# (the kernel drops it when the process dies, kill -9 included), so a second
# run of the same task while the first lives is seen for certain, at any speed.
# Runs wait on the barrier file: until it exists, a started run stays running.
HANDLER = """
import fcntl, os, sys, time
barrier, log, task = sys.argv[1], sys.argv[2], sys.argv[3]
lock = open(f"{log}.{task}.lock", "w")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(log, "a") as f:
        f.write(f"overlap {os.getpid()} {task}\\n")
    sys.exit(1)
with open(log, "a") as f:
    f.write(f"start {os.getpid()} {task}\\n")
while not os.path.exists(barrier):
    time.sleep(0.02)
time.sleep(0.2)  # stay alive a moment, so that a second run started too early would meet the lock
with open(log, "a") as f:
    f.write(f"end {os.getpid()} {task}\\n")
"""

CONCURRENCY = 4


def runs(log):
    """(what, pid, task id) for every line the handler runs wrote."""
    if not log.exists():
        return []
    return [(what, int(pid), int(task)) for what, pid, task in (line.split() for line in log.read_text().splitlines())]


@pytest.fixture
def barrier(tmp_path):
    """The file the handler runs wait for; made at the end whatever happened, so that a failed test leaves no
    run (and no daemon's stop) waiting on it."""
    path = tmp_path / "barrier"
    yield path
    path.touch()


def test_kill_9_mid_run_then_restart_loses_nothing_and_never_overlaps(daemon_factory, tmp_path, barrier):
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    log = tmp_path / "runs.log"
    # a timeout far above any wait here: no run is cut short, and the lease (2 x 60 + 30 s) cannot run out
    main = command_handler("slow", script, str(barrier), str(log), "{task_id}", timeout=60)
    daemon = daemon_factory(main, FAILURE_RETRY_CONCURRENCY=CONCURRENCY).start()
    store = open_store(daemon.db)
    ids = [record_failure(store, "slow", "connection timeout") for _ in range(12)]
    store.close()

    # every retry slot holds a run waiting on the barrier: they are running, whatever the machine's speed
    assert wait_for(lambda: len(runs(log)) >= CONCURRENCY, 30), runs(log)
    held = runs(log)
    assert [what for what, _, _ in held] == ["start"] * CONCURRENCY
    leases = dict(daemon.query("SELECT id, lease_until FROM tasks WHERE status='running'"))
    assert sorted(leases) == sorted(task for _, _, task in held)

    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    # handlers die with the daemon (PR_SET_PDEATHSIG): none outlives it
    pids = [pid for _, pid, _ in held]
    assert wait_for(lambda: not any(_alive(p) for p in pids), 10), [p for p in pids if _alive(p)]
    assert daemon.query("SELECT count(*) FROM tasks WHERE status='running'")[0][0] == CONCURRENCY

    barrier.touch()
    restarted = daemon_factory(main, FAILURE_RETRY_CONCURRENCY=CONCURRENCY).start()
    rows = restarted.wait_for(
        "SELECT id, status FROM tasks ORDER BY id",
        lambda r: len(r) == 12 and all(s == "recovered" for _, s in r), 60)
    assert [i for i, _ in rows] == ids
    assert not [line for line in runs(log) if line[0] == "overlap"]
    assert {task for what, _, task in runs(log) if what == "end"} == set(ids)
    # the interrupted runs were taken back at start, before their leases ran out
    taken_back = restarted.query("SELECT task_id, at FROM task_events WHERE event='lease_expired'")
    assert sorted(task for task, _ in taken_back) == sorted(leases)
    assert all(at < leases[task] for task, at in taken_back), (taken_back, leases)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False
