"""A flood: failures pour in while their retries fall due — failured against huey's SqliteHuey.

Each of N tasks failed and is to be retried once, 2 s later, with a no-op that
succeeds; 4 workers each; the daemon (or huey consumer) already runs and one
producer process reports as fast as it can. Then failured alone with 50,000,
and both again with ``kill -9`` of the daemon/consumer one second into the
retries and an immediate restart.

    .venv/bin/python bench/flood.py              # all of it (huey: pip install -e '.[bench]')
    .venv/bin/python bench/flood.py --compare    # the 20,000 side by side only
    .venv/bin/python bench/flood.py --quick      # failured at 20,000 only
    .venv/bin/python bench/flood.py --kill       # failured at 20,000 with kill -9 and a restart only
    .venv/bin/python bench/flood.py --quick --rate 5000   # the producer paced (runs comparable on a busy machine)

This file is also the handler module both sides import (``flood:run``, ``flood.huey``):
each run of a no-op appends "n start end" to FLOOD_MARKS, so runs can be counted.
FLOOD_PROFILE=FILE records the first 30 s of each failured daemon with py-spy (raw stacks; FLOOD_PROFILE_GIL=1:
only the thread holding the GIL; FLOOD_PROFILE_GIL=native: every thread on a CPU, with C frames).

Lateness is the handler's own start against the due time the decision wrote; "finished,
then run again" counts runs that began after the task was recorded as recovered.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RETRY_DELAY = 2.0
WORKERS = 4
KILL_AFTER = 1.0  # seconds into the retries
LATE_AFTER_INTAKE = 0.5  # retries due this long after the last report count as "no intake"
RATE = None  # --rate N: the producer reports at most N a second (the same load run after run); None: flat out

_marks_fd = None


def _mark(n, started):
    """Append one line per finished run (O_APPEND: whole lines from many threads)."""
    global _marks_fd
    if _marks_fd is None:
        _marks_fd = os.open(os.environ["FLOOD_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_marks_fd, f"{n} {started:.6f} {time.time():.6f}\n".encode())


def run(n, **_):
    """failured's python handler: the no-op retry that succeeds."""
    _mark(n, time.time())


huey = None
if os.environ.get("FLOOD_HUEY_DB"):  # imported by huey_consumer
    from huey import SqliteHuey

    huey = SqliteHuey("flood", filename=os.environ["FLOOD_HUEY_DB"])

    @huey.task()
    def retry(n, due):
        started = time.time()
        _mark(n, started)
        with open(os.environ["FLOOD_MARKS"] + ".late", "a") as handle:
            handle.write(f"{started - due:.6f}\n")


# -- the shared parts ------------------------------------------------------------

sys.path.insert(0, str(HERE))
from common import REPO, emit, percentile  # noqa: E402


def read_marks(path):
    """{n: [start, ...]} of every run that finished."""
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            n, started, _ = line.split()
            runs.setdefault(int(n), []).append(float(started))
    return runs


def ms(value):
    return round(value * 1000, 1)


def spawn(argv, env, cwd, log):
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition, timeout, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


class Killer:
    """kill -9 the process once the first retry has run for KILL_AFTER s, and start it again at once."""

    def __init__(self, start, first_due_at):
        self._start = start
        self.proc = start()
        self.kill_at = first_due_at + KILL_AFTER
        self.killed = False

    def tick(self, now):
        if not self.killed and now >= self.kill_at:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.killed = True
            self.proc = self._start()


# -- failured -----------------------------------------------------------------------

def failured_env(directory):
    config = directory / "config"
    shutil.copytree(REPO / "config" / "patterns", config / "patterns")
    (config / "patterns" / "99-flood.toml").write_text(
        f'[[category]]\nname = "recoverable_network"\nretry = {{ delays = [{RETRY_DELAY}], max_attempts = 1, '
        f'jitter = 0 }}\n', encoding="utf-8")
    (config / "failured.toml").write_text(
        '[breaker]\nfailures = 1000000\n\n[task_types.flood.handler]\nkind = "python"\ntarget = "flood:run"\n'
        'timeout = 10\n', encoding="utf-8")
    return {**os.environ, "FAILURE_DB": str(directory / "f.db"), "FAILURE_CONFIG_DIR": str(config),
            "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_REPORT_DIR": str(directory / "reports"),
            "FAILURE_LOG_LEVEL": "WARNING", "FAILURE_HTTP_ADDR": "off",
            "FAILURE_RETRY_CONCURRENCY": str(WORKERS), "FLOOD_MARKS": str(directory / "marks"),
            "PYTHONPATH": f"{HERE}:{REPO}"}


def start_failured(env, directory, log):
    proc = spawn([sys.executable, "-m", "failured", "run"], env, directory, log)
    if os.environ.get("FLOOD_PROFILE"):  # py-spy record of the daemon's first 30 s, to FLOOD_PROFILE
        # --gil: the GIL's holder; --native: every thread on a CPU, down to SQLite's C (where the CPU goes); --idle: all
        mode = {"1": "--gil", "native": "--native"}.get(os.environ.get("FLOOD_PROFILE_GIL", ""), "--idle")
        spawn([str(Path(sys.executable).with_name("py-spy")), "record", "-r", "100", "--threads", mode, "-f", "raw",
               "-d", "30", "-o", os.environ["FLOOD_PROFILE"], "-p", str(proc.pid)], env, directory, log)
    db = Path(env["FAILURE_DB"])

    def ready():
        if proc.poll() is not None:
            log.flush()
            raise SystemExit(f"failured run exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
        try:
            con = sqlite3.connect(db, timeout=5)
            try:
                return con.execute("SELECT 1 FROM daemon_state WHERE key = 'heartbeat'").fetchone() is not None
            finally:
                con.close()
        except sqlite3.Error:
            return False

    wait_for(ready, 60)
    return proc


def failured_counts(db):
    con = sqlite3.connect(db, timeout=30)
    try:
        return dict(con.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
    finally:
        con.close()


def failured_timeline(db):
    """Per task, from its events: recorded, decided (retry scheduled), due, started, recovered."""
    con = sqlite3.connect(db, timeout=30)
    epoch = "(julianday({}) - 2440587.5) * 86400.0"
    try:
        rows = con.execute(f"""
            SELECT t.id, {epoch.format('t.created_at')},
                   (SELECT {epoch.format('e.at')} FROM task_events e WHERE e.task_id = t.id
                     AND e.event = 'retry_scheduled' ORDER BY e.id LIMIT 1),
                   (SELECT e.delay_seconds FROM task_events e WHERE e.task_id = t.id
                     AND e.event = 'retry_scheduled' ORDER BY e.id LIMIT 1),
                   (SELECT {epoch.format('e.at')} FROM task_events e WHERE e.task_id = t.id
                     AND e.event = 'retry_started' ORDER BY e.id LIMIT 1),
                   (SELECT {epoch.format('max(e.at)')} FROM task_events e WHERE e.task_id = t.id
                     AND e.event = 'recovered'),
                   (SELECT {epoch.format('min(e.at)')} FROM task_events e WHERE e.task_id = t.id
                     AND e.event = 'recovered'),
                   json_extract(t.payload, '$.n')
            FROM tasks t""").fetchall()
    finally:
        con.close()
    return rows


def flood_failured(count, directory, kill=False):
    """Report ``count`` failures from this process while the daemon runs; the figures."""
    from failured.intake import report_failure

    directory.mkdir()
    env = failured_env(directory)
    marks = Path(env["FLOOD_MARKS"])
    with open(directory / "daemon.log", "w") as log:
        killer = Killer(lambda: start_failured(env, directory, log), float("inf"))
        os.environ.update({k: env[k] for k in ("FAILURE_DB", "FAILURE_CONFIG_DIR")})
        try:
            first = time.time()
            cpu = time.process_time()
            killer.kill_at = first + RETRY_DELAY + KILL_AFTER
            for i in range(count):
                report_failure("flood", f"ConnectionError: connection timeout to api.example.com ({i})",
                               error_type="ConnectTimeout", payload={"n": i})
                if kill and not i % 200:
                    killer.tick(time.time())
                if RATE and not i % 100:  # --rate: at most RATE reports a second
                    time.sleep(max(0.0, first + i / RATE - time.time()))
            last = time.time()
            cpu = time.process_time() - cpu
            done = lambda: (kill and killer.tick(time.time())) or failured_counts(env["FAILURE_DB"]).get(
                "recovered", 0) >= count
            wait_for(done, 120 + count / 100, every=0.1)
            daemon_cpu = cpu_seconds(killer.proc.pid)
        finally:
            stop(killer.proc)
    figures = failured_figures(count, env["FAILURE_DB"], marks, first, last, killer.killed)
    figures["CPU ms per task: reporter / daemon"] = f"{cpu / count * 1000:.3f} / {daemon_cpu / count * 1000:.3f}"
    return figures


def failured_figures(count, db, marks, first, last, killed):
    rows = failured_timeline(db)
    decided = [d - c for _, c, d, *_ in rows if d is not None]
    runs = read_marks(marks)
    late = [(min(runs[n]) - (d + delay), d + delay) for _, _, d, delay, *_, n in rows
            if d is not None and n in runs]
    done_at = [r for *_, r, _, _ in rows if r is not None]
    counts = failured_counts(db)
    # A run that began after the task was recorded as recovered: a finished task retried again.
    # (The stamps are ms; a run that began in the same ms as that commit is not counted.)
    again = sum(1 for *_, recovered, n in rows if recovered is not None
                and any(start > recovered + 0.001 for start in runs.get(n, ())))
    figures = {
        "intake reports/s": round(count / (last - first)),
        "decided after recorded p50 ms": ms(percentile(decided, 0.5)),
        "decided after recorded p99 ms": ms(percentile(decided, 0.99)),
        "decided after recorded max ms": ms(max(decided, default=float("nan"))),
        "lateness during intake p50/p99 ms": _late(late, lambda due: due <= last),
        "lateness after intake p50/p99 ms": _late(late, lambda due: due > last + LATE_AFTER_INTAKE),
        "first failure -> last retry done s": round(max(done_at, default=float("nan")) - first, 2),
        "recovered": counts.get("recovered", 0),
        "lost": count - sum(1 for n in range(count) if n in runs),
        "run twice": sum(1 for starts in runs.values() if len(starts) > 1),
        "finished, then run again": again,
    }
    if killed:
        figures["killed"] = 1
    return figures


def _late(late, which):
    values = [lateness for lateness, due in late if which(due)]
    if not values:
        return "-"
    return f"{ms(percentile(values, 0.5))} / {ms(percentile(values, 0.99))} ({len(values)})"


# -- huey --------------------------------------------------------------------------------

def start_huey(env, directory, log):
    consumer = Path(sys.executable).with_name("huey_consumer")
    argv = [str(consumer) if consumer.exists() else "huey_consumer", "flood.huey", "-w", str(WORKERS), "-k", "thread",
            "-l", str(directory / "huey.log"), "-q"]
    proc = spawn(argv, env, directory, log)
    time.sleep(1.0)  # huey has no readiness signal; its consumer starts in well under a second
    return proc


def flood_huey(count, directory, kill=False):
    directory.mkdir()
    env = {**os.environ, "FLOOD_HUEY_DB": str(directory / "h.db"), "FLOOD_MARKS": str(directory / "marks"),
           "PYTHONPATH": f"{HERE}:{REPO}"}
    os.environ.update({k: env[k] for k in ("FLOOD_HUEY_DB", "FLOOD_MARKS")})
    import importlib
    import flood as module  # the consumer's module, with huey bound to this run's file
    importlib.reload(module)
    marks = Path(env["FLOOD_MARKS"])
    with open(directory / "consumer.log", "w") as log:
        killer = Killer(lambda: start_huey(env, directory, log), float("inf"))
        try:
            first = time.time()
            killer.kill_at = first + RETRY_DELAY + KILL_AFTER
            for i in range(count):
                module.retry.schedule(args=(i, time.time() + RETRY_DELAY), delay=RETRY_DELAY)
                if kill and not i % 200:
                    killer.tick(time.time())
            last = time.time()

            def done():
                if kill:
                    killer.tick(time.time())
                return len(read_marks(marks)) >= count

            wait_for(done, 120 + count / 100, every=0.25)
            if kill:  # nothing more comes: what is missing now is lost
                wait_for(lambda: False, 5)
        finally:
            stop(killer.proc)
    runs = read_marks(marks)
    late_path = Path(str(marks) + ".late")
    late = [float(x) for x in late_path.read_text().split()] if late_path.exists() else []
    finished = [float(line.split()[2]) for line in marks.read_text().splitlines()] if marks.exists() else []
    figures = {
        "intake reports/s": round(count / (last - first)),
        "lateness p50/p99 ms": f"{ms(percentile(late, 0.5))} / {ms(percentile(late, 0.99))}",
        "first failure -> last retry done s": round(max(finished, default=float("nan")) - first, 2),
        "lost": count - len(runs),
        "run twice": sum(1 for starts in runs.values() if len(starts) > 1),
    }
    return figures


# -- main ----------------------------------------------------------------------------------

def show(title, figures):
    print(title)
    for key, value in figures.items():
        print(f"  {key:<36} {value}")
    sys.stdout.flush()


def main(argv):
    global RATE
    if "--rate" in argv:
        RATE = float(argv[argv.index("--rate") + 1])
    quick = "--quick" in argv
    compare = "--compare" in argv  # the 20,000 side by side only
    if "--kill" in argv:
        with tempfile.TemporaryDirectory() as directory:
            killed = flood_failured(20_000, Path(directory) / "f20k", kill=True)
        show(f"failured, 20,000, kill -9 {KILL_AFTER:g}s into the retries, restarted at once", killed)
        return
    have_huey = not quick
    if have_huey:
        try:
            import huey as _  # noqa: F401
        except ImportError:
            print("huey is not installed (pip install -e '.[bench]'): failured only")
            have_huey = False
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        print(f"flood: N failed tasks, each retried once after {RETRY_DELAY:g}s by a no-op, {WORKERS} workers, "
              "one producer process, daemon/consumer already running")
        ours = flood_failured(20_000, directory / "f20")
        show("failured, 20,000", ours)
        figures = {f"failured {k}": v for k, v in ours.items()}
        if have_huey:
            theirs = flood_huey(20_000, directory / "h20")
            show("huey SqliteHuey, 20,000", theirs)
            figures.update({f"huey {k}": v for k, v in theirs.items()})
            figures["intake ratio failured/huey"] = round(ours["intake reports/s"] / theirs["intake reports/s"], 2)
            figures["done ratio failured/huey"] = round(ours["first failure -> last retry done s"]
                                                        / theirs["first failure -> last retry done s"], 3)
        if not quick and not compare:
            big = flood_failured(50_000, directory / "f50")
            show("failured, 50,000", big)
            figures.update({f"failured 50k {k}": v for k, v in big.items()})
            killed = flood_failured(20_000, directory / "f20k", kill=True)
            show(f"failured, 20,000, kill -9 {KILL_AFTER:g}s into the retries, restarted at once", killed)
            figures.update({f"failured kill -9 {k}": v for k, v in killed.items()
                            if k in ("lost", "run twice", "finished, then run again", "recovered",
                                     "first failure -> last retry done s")})
            if have_huey:
                theirs_killed = flood_huey(20_000, directory / "h20k", kill=True)
                show(f"huey, 20,000, kill -9 {KILL_AFTER:g}s into the retries, restarted at once", theirs_killed)
                figures.update({f"huey kill -9 {k}": v for k, v in theirs_killed.items() if k in ("lost", "run twice")})
    print()
    emit("flood", figures, "intake >= huey and >= 3,000/s; decided <= 1 s after recorded; lateness p99 <= 100 ms "
         "in the flood (<= 50 ms without intake); done <= 0.25x huey; kill -9: 0 lost, 0 finished run again")


if __name__ == "__main__":
    main(sys.argv[1:])
