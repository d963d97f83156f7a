"""kill -9 in the middle of retries: nothing is lost, no task's handler ever overlaps itself."""

import os
import signal
import time

from test_daemon import command_handler, report

HANDLER = """
import os, sys, time
log, task = sys.argv[1], sys.argv[2]
start = time.time()
time.sleep(0.4)
end = time.time()
with open(log, "a") as f:
    f.write(f"{os.getpid()},{task},{start},{end}\\n")
"""


def intervals(log):
    spans = {}
    for line in log.read_text().splitlines():
        pid, task, start, end = line.split(",")
        spans.setdefault(int(task), []).append((float(start), float(end), int(pid)))
    return spans


def test_kill_9_mid_run_then_restart_loses_nothing_and_never_overlaps(daemon_factory, tmp_path):
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    log = tmp_path / "runs.log"
    started_log = tmp_path / "started.log"
    # the handler notes its start too, so an interrupted run (never finished) still shows up
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        "import os, sys, time, runpy\n"
        f"open({str(started_log)!r}, 'a').write(f'{{os.getpid()}},{{sys.argv[2]}},{{time.time()}}\\n')\n"
        f"sys.argv = [{str(script)!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    main = command_handler("slow", wrapper, str(log), "{task_id}", timeout=5)
    daemon = daemon_factory(main, FAILURE_RETRY_CONCURRENCY=4).start()
    ids = [report(daemon, "slow", "connection timeout") for _ in range(12)]
    daemon.wait_for("SELECT count(*) FROM tasks WHERE status='running'", lambda r: r[0][0] >= 3, 10)
    running_pids = [int(line.split(",")[0]) for line in started_log.read_text().splitlines()]
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    # handlers die with the daemon (PR_SET_PDEATHSIG): none outlives it
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(_alive(p) for p in running_pids):
        time.sleep(0.05)
    assert not [p for p in running_pids if _alive(p)]
    interrupted = daemon.query("SELECT count(*) FROM tasks WHERE status='running'")[0][0]
    assert interrupted >= 1

    restarted = daemon_factory(main, FAILURE_RETRY_CONCURRENCY=4).start()
    started = time.monotonic()
    rows = restarted.wait_for(
        "SELECT id, status FROM tasks ORDER BY id",
        lambda r: len(r) == 12 and all(s == "recovered" for _, s in r), 30)
    # interrupted retries re-ran promptly, not after their 40 s lease
    assert time.monotonic() - started < 10
    assert [i for i, _ in rows] == ids
    spans = intervals(log)
    assert set(spans) == set(ids)
    for task_id, runs in spans.items():
        runs.sort()
        for (s1, e1, _), (s2, e2, _) in zip(runs, runs[1:]):
            assert s2 >= e1, f"task {task_id}: handler runs overlap {runs}"
    lost = [r for r in restarted.query("SELECT task_id, event FROM task_events WHERE event='lease_expired'")]
    assert len(lost) == interrupted


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
