"""Several daemons on one PostgreSQL database: membership, leadership, shared channels, breakers, reports.

Real PostgreSQL (a schema per test), real OS processes, a real robot on 127.0.0.1 enforcing 20 a minute.
Where time matters the processes share a clock kept in a file (``FileClock``): the test moves it, the
robot reads it too.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import SMALL_PATTERNS, run_cli, set_schema_version, wait_for, write_config
from failured.clock import ManualClock
from failured.breaker import REFRESH_SECONDS as REFRESH
from failured.breaker import Breakers
from failured.config import BreakerConfig, load_config
from failured.intake import record_failure
from failured.members import Membership, SoloMembership, membership_for
from failured.notify.outbox import enqueue
from failured.store import SCHEMA_VERSION, open_store
from failured.store import members as member_rows
from robots import RobotServer
from test_store_postgres import location, pg_unavailable, pg_url  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
TOKEN, SECRET = "robot-token-0123456789abcdef", "SECa1b2c3d4e5f6a7b8c9d0e1f2"

CHILD = """
import os, signal, sys, threading, time
sys.path.insert(0, {repo!r})
from failured.clock import SystemClock
from failured.breaker import REFRESH_SECONDS as REFRESH
from failured.breaker import Breakers
from failured.config import BreakerConfig, load_config
from failured.intake import record_failure
from failured.members import Membership
from failured.notify.dispatcher import Dispatcher
from failured.settings import Settings
from failured.store import open_store


class FileClock:
    # the test's clock, shared by every process (and the robot) through a file
    def __init__(self, path):
        self.path = path

    def now(self):
        with open(self.path) as f:
            return float(f.read())

    monotonic = now

    def sleep(self, seconds):
        time.sleep(seconds)


mode, url, name, clock_path, config_dir, log_dir = sys.argv[1:]
clock = FileClock(clock_path) if clock_path != "-" else SystemClock()
store = open_store(url)
members = Membership(store, clock, name).start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
dispatcher = None
if mode == "notify":
    snapshot = load_config(config_dir, log_dir=log_dir)
    settings = Settings(db=url, log_dir=log_dir)
    dispatcher = Dispatcher(store, settings, clock, lambda: snapshot, members=members).start()
print("ready", flush=True)
while not stop.wait(0.05):
    pass
if dispatcher is not None:
    dispatcher.stop()
members.stop()
store.close()
print("stopped", flush=True)
"""


class FileClock:
    """A clock in a file: the test moves it (``advance``), every process and the robot read it."""

    def __init__(self, path, start):
        self.path = Path(path)
        self._now = start
        self._lock = threading.Lock()
        self._write()

    def _write(self):
        temp = self.path.with_suffix(".tmp")
        temp.write_text(repr(self._now))
        os.replace(temp, self.path)

    def now(self):
        with self._lock:
            return self._now

    monotonic = now

    def advance(self, seconds):
        with self._lock:
            self._now += seconds
            self._write()


def end_all(procs, timeout):
    """Kill what still runs of ``procs`` and reap them all, their pipes closed."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=timeout)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def daemons(tmp_path, pg_url):  # noqa: F811 (fixtures)
    """Start daemon-like processes on ``pg_url``: ``start(mode, name, clock_path, config_dir)``; all ended after."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    started = []

    def start(mode, name, clock_path="-", config_dir="-", env=None):
        log_dir = tmp_path / f"logs-{name}"
        proc = subprocess.Popen([sys.executable, str(script), mode, pg_url, name, str(clock_path), str(config_dir),
                                 str(log_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        return proc

    yield start
    end_all(started, 10)


@contextlib.contextmanager
def memberships(url, count, clock=None, **options):
    """``count`` memberships on stores of their own, named host:N:0; all stopped and closed after."""
    stores = [open_store(url) for _ in range(count)]
    group = []
    try:
        for n, store in enumerate(stores):
            group.append(Membership(store, clock or ManualClock(), f"host:{n}:0", **options).start())
        yield stores, group
    finally:
        for member in group:
            member.stop()
        for store in stores:
            store.close()


def alive(store):
    return {m["name"]: m for m in member_rows.members(store, 10.0) if m["alive"]}


def leaders(store):
    return [name for name, m in alive(store).items() if m["leader"]]


# -- the schema -------------------------------------------------------------------------

def test_a_version_4_database_gains_the_daemon_tables_and_event_transactions(location):  # noqa: F811
    store = open_store(location)
    record_failure(store, "sync", "boom", clock=ManualClock())
    with store.transaction():
        store.execute("DROP TABLE daemons")
        store.execute("DROP TABLE channel_sends")
        store.execute('DROP INDEX "task_events_xact"')
        store.execute('ALTER TABLE "task_events" DROP COLUMN "xact"')
        set_schema_version(store, 4)
    store.close()
    again = open_store(location)
    assert again.schema_version() == SCHEMA_VERSION >= 5  # forward to whatever version is current
    assert again.scalar("SELECT count(*) FROM daemons") == 0
    record_failure(again, "sync", "boom again", clock=ManualClock())
    old, new = again.rows("SELECT xact FROM task_events ORDER BY id")
    assert old == (None,)  # the report reaches the rows from before by their id
    assert (new[0] is not None) == (again.dialect == "postgresql")
    again.close()


# -- membership and leadership ------------------------------------------------------------

def gone(store, stale_seconds):
    """The daemons not alive now (session ended or heartbeat stale), as anyone reading ``daemons`` sees them."""
    return [m["name"] for m in member_rows.members(store, stale_seconds) if not m["alive"]]


def test_a_daemon_whose_session_the_server_drops_keeps_its_leases_while_it_connects_again(pg_url):  # noqa: F811
    """pg_terminate_backend of a living daemon's membership session: its lock is free for a moment, but its
    retries run on. Its leases stand while it connects again; a daemon that does not come back loses them."""
    from failured.members import LOCK_GRACE_SECONDS

    from failured.clock import SystemClock

    clock = ManualClock()  # a's: how long b has been without its session, as a sees it
    stores = [open_store(pg_url), open_store(pg_url)]
    a = Membership(stores[0], clock, "host:0:0", heartbeat_seconds=0.1).start()
    b = Membership(stores[1], SystemClock(), "host:1:0", heartbeat_seconds=0.1).start()  # its rows stamped as a daemon's
    try:
        assert wait_for(lambda: set(a.living_owners()) == {a.name, b.name}, 10)
        dropped_id = b.member_id
        stores[0].scalar("SELECT pg_terminate_backend(?)", b._connection.info.backend_pid)
        deadline = time.monotonic() + 30
        while b.member_id == dropped_id:  # until it noticed, connected again and registered anew
            assert b.name in a.living_owners() and time.monotonic() < deadline
        for _ in range(20):
            assert b.name in a.living_owners()
        b._stop.set()  # b dies without a word: its thread ends and its session closes
        b._thread.join(10)
        b._close()
        assert wait_for(lambda: b.name not in alive(stores[0]), 10)  # the server has ended its session
        assert b.name in a.living_owners()  # first seen without its session: within the grace
        clock.advance(LOCK_GRACE_SECONDS)
        assert a.living_owners() == [a.name]
    finally:
        a.stop()
        b.stop()
        for store in stores:
            store.close()

def test_sqlite_has_one_daemon_that_leads_and_delivers_everything(tmp_path):
    store = open_store(tmp_path / "failured.db")
    members = membership_for(store, ManualClock(), "host:1:0")
    assert isinstance(members, SoloMembership) and members.is_leader() and members.holds_channel("ops")
    store.close()


def test_a_lease_of_a_daemon_that_never_had_a_row_is_taken_back_at_once(pg_url, sync_snapshot):  # noqa: F811
    """A task running when a SQLite daemon crashed, copied by migrate-store: its owner never joined ``daemons``,
    so nothing will ever say it lives. Its lease is taken back at once, not when it runs out."""
    from failured.engine import Engine
    from failured.settings import Settings

    clock = ManualClock()
    with memberships(pg_url, 1, clock, heartbeat_seconds=0.1) as ([store], [member]):
        crashed = Engine(store, Settings(), clock, lambda: sync_snapshot, owner="old-host:99:0")
        task_id = record_failure(store, "sync", "connection timeout", clock=clock)
        crashed.handle_new()
        clock.advance(1)
        assert crashed.claim(task_id) is not None
        engine = Engine(store, Settings(), clock, lambda: sync_snapshot, owner=member.name, members=member)
        queued, waiting = engine.take_back_leases()
        assert [item[0] for item in queued] == [task_id] and waiting == []


def test_exactly_one_leader_and_the_lead_moves_when_it_stops(pg_url):  # noqa: F811 (fixtures)
    with memberships(pg_url, 3, ManualClock(), heartbeat_seconds=0.1) as (stores, group):
        assert wait_for(lambda: len(leaders(stores[0])) == 1, 10)
        [first] = [m for m in group if m.is_leader()]
        assert sum(m.is_leader() for m in group) == 1
        first.stop()
        assert wait_for(lambda: sum(m.is_leader() for m in group if m is not first) == 1, 10)
        assert first.name not in alive(stores[0])
        assert stores[0].scalar("SELECT count(*) FROM daemons WHERE stopped_at IS NOT NULL") == 1


def test_one_daemon_delivers_a_channel_at_a_time(pg_url):  # noqa: F811 (fixtures)
    with memberships(pg_url, 2) as (_, (a, b)):
        # a lane asks on every pass: a try that failed (a busy server) is tried again on the next
        assert wait_for(lambda: a.holds_channel("ops"), 10) and not b.holds_channel("ops")
        assert wait_for(lambda: b.holds_channel("mail"), 10) and not a.holds_channel("mail")
        a.stop()
        assert wait_for(lambda: b.holds_channel("ops"), 10)


def test_a_daemon_whose_session_the_server_ends_stops_delivering_before_its_next_send(pg_url):  # noqa: F811
    """pg_terminate_backend of the delivering daemon's session frees the channel's lock at once: the other daemon
    may take it within a pass, long before the heartbeat notices. Each send asks first, so only one sends."""
    with memberships(pg_url, 2, heartbeat_seconds=3600) as (stores, (a, b)):  # no heartbeat to notice it
        assert wait_for(lambda: a.holds_channel("ops"), 10) and a.still_holds("ops")
        stores[1].scalar("SELECT pg_terminate_backend(?)", a._connection.info.backend_pid)
        assert wait_for(lambda: b.holds_channel("ops"), 10)
        assert a.holds_channel("ops")  # what a believes until it asks its session
        assert not a.still_holds("ops") and b.still_holds("ops")
        assert not a.holds_channel("ops")  # and it no longer believes it


def test_kill_9_of_the_leader_moves_the_lead_and_marks_its_leases_takeable(daemons, pg_url):  # noqa: F811 (fixtures)
    store = open_store(pg_url)
    procs = {name: daemons("members", name) for name in ("a:1:0", "b:2:0", "c:3:0")}
    assert wait_for(lambda: len(alive(store)) == 3 and len(leaders(store)) == 1, 15)
    [leader] = leaders(store)
    assert gone(store, 10.0) == []
    killed_at = time.monotonic()
    procs[leader].send_signal(signal.SIGKILL)
    procs[leader].wait(timeout=10)
    # its session ended with it (the server's backend notices the closed socket at once): dead well before
    # its heartbeat goes stale
    assert wait_for(lambda: gone(store, 10.0) == [leader], 5)
    assert wait_for(lambda: len(leaders(store)) == 1 and leaders(store) != [leader], 10)
    moved_after = time.monotonic() - killed_at
    assert moved_after < 10  # the issue's bound (heartbeat 1 s: the lead moves at the others' next beat)
    [new] = leaders(store)
    assert new in procs and procs[new].poll() is None
    store.close()


def test_a_frozen_daemon_is_dead_once_its_heartbeat_is_stale(daemons, pg_url):  # noqa: F811 (fixtures)
    store = open_store(pg_url)
    proc = daemons("members", "frozen:1:0")
    assert wait_for(lambda: "frozen:1:0" in alive(store), 10)
    proc.send_signal(signal.SIGSTOP)  # its session (and lock) stay; only the heartbeat says it is gone
    try:
        assert wait_for(lambda: gone(store, 2.0) == ["frozen:1:0"], 15)
        assert "frozen:1:0" in {m["name"] for m in member_rows.members(store, 60.0) if m["alive"]}
    finally:
        proc.send_signal(signal.SIGCONT)
    store.close()


def test_a_shared_fact_is_claimed_by_one_caller_only(location):  # noqa: F811
    stores = [open_store(location) for _ in range(2)]
    claims = []
    for store in stores:
        with store.transaction():
            claims.append(member_rows.claim_state(store, "manual_notified:sync", "1", 1e9))
    assert claims == [True, False]
    with stores[1].transaction():
        assert member_rows.claim_state(stores[1], "analysis_slot", "2026-11-29T18", 1e9)
        assert not member_rows.claim_state(stores[1], "analysis_slot", "2026-11-29T18", 1e9)
        assert member_rows.claim_state(stores[1], "analysis_slot", "2026-11-29T19", 1e9)
    for store in stores:
        store.close()


# -- a notification storm over three daemons ---------------------------------------------------

STORM_CONFIG = """
[channels.ops]
kind = "dingtalk"
url = "{url}"
access_token = "${{DINGTALK_ACCESS_TOKEN}}"
secret = "${{DINGTALK_SECRET}}"

[[routes]]
channels = ["ops"]

[notify]
dedup_window_seconds = 600
digest_interval_seconds = 10
"""


def holder(store, channel):
    return [name for name, m in alive(store).items() if channel in m["runs"].get("channels", [])]


def trickle(store, snapshot, clock, numbers, fingerprint):
    """Report one notification per second of the shared clock."""
    for i in numbers:
        due = clock.now() + 1
        assert wait_for(lambda due=due: clock.now() >= due, 10)
        with store.transaction():
            enqueue(store, snapshot, clock.now(), "admin", "task", f"title {i}", f"body {i}", category="x",
                    task_type="sync", fingerprint=fingerprint(i))


def test_a_storm_over_three_daemons_stays_within_the_robots_minute_and_sends_each_once(daemons, pg_url, tmp_path):  # noqa: F811 (fixtures)
    clock = FileClock(tmp_path / "clock", time.time())
    robot = RobotServer("dingtalk", TOKEN, SECRET, clock=clock.now).start()
    config_dir = write_config(tmp_path / "cfg", SMALL_PATTERNS, STORM_CONFIG.format(url=robot.url))
    snapshot = load_config(config_dir, log_dir=tmp_path / "logs")
    env = {"DINGTALK_ACCESS_TOKEN": TOKEN, "DINGTALK_SECRET": SECRET}
    procs = {name: daemons("notify", name, clock.path, config_dir, env) for name in ("a:1:0", "b:2:0", "c:3:0")}
    store = open_store(pg_url)
    stop_clock = threading.Event()

    def tick():  # the shared clock runs 20x faster than the real one: minutes of robot time in seconds
        while not stop_clock.wait(0.01):
            clock.advance(0.2)

    ticker = threading.Thread(target=tick, daemon=True)
    try:
        assert wait_for(lambda: len(holder(store, "ops")) == 1, 15)
        ticker.start()
        # a storm: a notification a second of robot time (three times the robot's rate), distinct errors
        # and one error over and over
        trickle(store, snapshot, clock, range(120), lambda i: f"fp{i}" if i % 3 else "same")
        assert wait_for(lambda: len(robot.received) >= 5, 60)
        [first] = holder(store, "ops")
        procs[first].send_signal(signal.SIGTERM)  # its channel moves to another daemon mid-storm
        assert procs[first].wait(timeout=20) == 0
        assert wait_for(lambda: holder(store, "ops") not in ([], [first]), 15)
        trickle(store, snapshot, clock, range(120, 160), lambda i: f"fp{i}")  # more after the handover
        assert wait_for(lambda: store.scalar("SELECT count(*) FROM notifications WHERE channel = 'ops' "
                                             "AND status = 'pending'") == 0, 120)
    finally:
        stop_clock.set()
        robot.close()
    counts = dict(store.rows("SELECT status, count(*) FROM notifications WHERE channel = 'ops' GROUP BY status"))
    assert set(counts) <= {"sent", "merged"}, counts
    assert counts["sent"] == len(robot.received)  # each sent row reached the robot once, nothing else did
    assert robot.max_in_any_window(60) <= 20
    assert all(code == 0 for code, _ in robot.answers), [a for a in robot.answers if a[0]]
    assert store.scalar("SELECT count(*) FROM notifications WHERE channel = 'ops' AND kind = 'task'") == 160
    store.close()


# -- breakers shared -------------------------------------------------------------------------

def test_breakers_are_shared_one_says_it_opened_and_one_probes(pg_url):  # noqa: F811 (fixtures)

    clock = ManualClock()
    stores = [open_store(pg_url) for _ in range(2)]
    a, b = (Breakers(BreakerConfig(failures=4, cooldown_seconds=60), store, clock=clock) for store in stores)
    assert a.shared and b.shared
    changes = [a.record("sync", False), b.record("sync", False), a.record("sync", False), b.record("sync", False)]
    assert changes == [None, None, None, "open"]  # four failures between them; the fourth's daemon says so
    clock.advance(REFRESH)
    assert a.allow("sync")[0] is False  # a learns of b's breaker from the table
    clock.advance(60)
    assert [a.allow("sync")[0], b.allow("sync")[0]] == [True, False]  # one probe among both
    assert a.record("sync", True) == "closed"
    clock.advance(REFRESH)
    assert b.allow("sync") == (True, None)
    for store in stores:
        store.close()


def test_a_shared_probe_that_did_not_run_goes_to_the_next_daemon(pg_url):  # noqa: F811 (fixtures)

    clock = ManualClock()
    stores = [open_store(pg_url) for _ in range(2)]
    a, b = (Breakers(BreakerConfig(failures=1, cooldown_seconds=60), store, clock=clock) for store in stores)
    assert a.record("sync", False) == "open"
    clock.advance(61)
    assert a.allow("sync")[0] and not b.allow("sync")[0]
    a.release("sync")
    clock.advance(REFRESH)  # b reads the table again within REFRESH_SECONDS
    assert b.allow("sync")[0]
    for store in stores:
        store.close()




# -- the processing report -----------------------------------------------------------------------

def test_the_processing_report_neither_skips_nor_repeats_an_event_that_commits_out_of_order(pg_url):  # noqa: F811 (fixtures)
    import psycopg

    from failured import reports

    store = open_store(pg_url)
    clock = ManualClock()
    first, second = (record_failure(store, "sync", f"boom {n}", clock=clock) for n in range(2))
    reports.processing_report(store, clock.now(), "en")  # past the 'reported' events
    decide = "INSERT INTO task_events (task_id, at, event, status) VALUES (%s, now(), 'manual', 'manual')"
    slow, fast = psycopg.connect(pg_url), psycopg.connect(pg_url)
    slow.execute(decide, (first,))  # the smaller id, still uncommitted ...
    fast.execute(decide, (second,))
    fast.commit()  # ... while the larger one commits
    seen = [r["task_id"] for r in reports.processing_report(store, clock.now(), "en")["results"]]
    slow.commit()
    seen += [r["task_id"] for r in reports.processing_report(store, clock.now(), "en")["results"]]
    seen += [r["task_id"] for r in reports.processing_report(store, clock.now(), "en")["results"]]
    assert sorted(seen) == [first, second]  # each decision once, the late commit included
    slow.close()
    fast.close()
    store.close()


# -- status and metrics ------------------------------------------------------------------------

def test_status_and_metrics_list_the_daemons_and_the_leader(pg_url):  # noqa: F811 (fixtures)
    from failured import status
    from failured.metrics import Metrics

    with memberships(pg_url, 2) as (stores, group):
        assert wait_for(lambda: sum(m.is_leader() for m in group) == 1, 10)
        group[1].stop()
        listed = status.collect(stores[0], None, time.time())["daemons"]
        assert [(d["name"], d["alive"]) for d in listed] == [("host:0:0", True), ("host:1:0", False)]
        assert wait_for(lambda: group[0].is_leader(), 10)
        text = status.render(status.collect(stores[0], None, time.time()))
        assert "daemon host:0:0: alive, retries, leader" in text and "daemon host:1:0: gone" in text
        lines = text.splitlines()  # each daemon under the daemon line, before the tasks
        at = next(i for i, line in enumerate(lines) if line.startswith("daemon:"))
        assert [line[:9] for line in lines[at + 1:at + 4]] == ["  daemon ", "  daemon ", "tasks: 0"], text
        metrics = Metrics()
        metrics.bind(stores[0], lambda: 0, ManualClock())
        metrics.members = group[0]
        exposed = metrics.exposition()[0].decode()
        assert 'failured_daemon_leader{daemon="host:0:0"} 1.0' in exposed
        assert 'failured_daemons{state="alive"} 1.0' in exposed and 'failured_daemons{state="gone"} 1.0' in exposed


def test_daemons_on_different_configurations_are_a_problem_and_status_checks_the_leaders(pg_url):  # noqa: F811
    """Each daemon handles and routes the tasks it takes by its own files: different files gave 13 tasks "manual"
    and 7 recovered, silently; and status checked the thresholds of whichever daemon reloaded last."""
    from failured import status

    with memberships(pg_url, 2, heartbeat_seconds=0.1) as (stores, group):
        assert wait_for(lambda: sum(m.is_leader() for m in group) == 1, 10)
        leader = next(n for n, m in enumerate(group) if m.is_leader())
        for n, member in enumerate(group):
            member.config = {"digest": "same", "dir": f"/etc/failured-{n}"}
        assert wait_for(lambda: all(d["config"] for d in status.daemons(stores[0])), 10)
        assert not any("different configurations" in p for p in status.collect(stores[0], None, time.time())["problems"])
        group[1].config = {"digest": "other", "dir": "/etc/failured-1"}
        assert wait_for(lambda: any("daemons run different configurations: host:0:0 (/etc/failured-0); host:1:0 "
                                    "(/etc/failured-1)" in p
                                    for p in status.collect(stores[0], None, time.time())["problems"]), 10)
        assert status.leader_config_dir(status.daemons(stores[0])) == f"/etc/failured-{leader}"


def test_a_committed_wake_up_reaches_the_listening_daemon(pg_url):  # noqa: F811 (fixtures)
    stores = [open_store(pg_url) for _ in range(2)]
    members = Membership(stores[0], ManualClock(), "host:0:0").start()
    woken = threading.Event()
    members.listen(woken.set)
    try:
        assert woken.wait(10)  # the listener looks once as it starts
        woken.clear()
        with stores[1].transaction():
            member_rows.wake_daemons(stores[1])
            assert not woken.wait(0.2)  # not before the commit
        assert woken.wait(10)
    finally:
        members.stop()
        for store in stores:
            store.close()


# -- whole daemons (``failured run``) ---------------------------------------------------------------

HANDLER = '''
import fcntl, os, time

def run(key, log, fail_first=False, work=0.05, **_):
    # One run per task at a time, for certain: a second run while the first lives meets its flock.
    lock = open(f"{log}.{key}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(log, "a") as f:
            f.write(f"overlap {os.getpid()} {key}\\n")
        raise RuntimeError("overlap")
    counter = f"{log}.{key}.n"
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    # Written whole or not at all: a kill -9 between truncating the file and writing it would leave it
    # empty, and the next run would fail on it (a handler's own side effects must survive its death).
    with open(f"{counter}.{os.getpid()}", "w") as f:
        f.write(str(n + 1))
    os.replace(f"{counter}.{os.getpid()}", counter)
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {key}\\n")
    time.sleep(work)  # the handler's work
    with open(log, "a") as f:
        f.write(f"end {os.getpid()} {key}\\n")
    lock.close()
    if fail_first and n == 0:
        raise ConnectionError("connection timeout")
'''

# The breaker stays out of it: a fifth failure in a row (three daemons' retries interleave) would postpone
# the rest by its 5-minute cool-down.
FLAKY_MAIN = ('[task_types.flaky.handler]\nkind = "python"\ntarget = "flaky_handler:run"\ntimeout = 30\n\n'
              '[breaker]\nfailures = 1000\n')

wired = pytest.mark.skipif(not hasattr(__import__("failured.daemon").daemon.Daemon, "take_back_from_the_gone"),
                           reason="the daemon is not wired for several daemons yet (see notes/H5.md)")


@pytest.fixture
def run_daemons(tmp_path, pg_url):  # noqa: F811 (fixtures)
    """``failured run`` processes on ``pg_url``: ``start(name, **env)``; each killed at the end."""
    (tmp_path / "flaky_handler.py").write_text(HANDLER)
    config = write_config(tmp_path / "config", SMALL_PATTERNS, FLAKY_MAIN)
    started = []

    def start(name, **env):
        workdir = tmp_path / name
        workdir.mkdir()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
        full_env.update({"FAILURE_DB": pg_url, "FAILURE_CONFIG_DIR": str(config),
                         "FAILURE_LOG_DIR": str(workdir / "logs"), "FAILURE_REPORT_DIR": str(tmp_path / "reports"),
                         "FAILURE_POLL_SECONDS": "0.05", "FAILURE_HTTP_ADDR": "off", "FAILURE_LOG_LEVEL": "INFO",
                         "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
                        **{k: str(v) for k, v in env.items()})
        with open(workdir / "stderr", "ab") as stderr:  # the child keeps its own copy
            proc = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=full_env, cwd=workdir,
                                    stderr=stderr)
        started.append(proc)
        return proc

    yield start
    end_all(started, 30)


def handler_runs(log):
    if not log.exists():
        return []
    return [(what, int(pid), key) for what, pid, key in (line.split() for line in log.read_text().splitlines())]


def unfinished(store, log, tmp_path):
    """What a failed wait shows: every task not recovered, with its events, its handler runs and the daemons' logs."""
    lines = [str(statuses(store))]
    for task_id, key in store.rows("SELECT id, payload FROM tasks WHERE status <> 'recovered'"):
        lines.append(f"task {task_id} {key}")
        lines += [f"  {row}" for row in store.rows(
            "SELECT id, at, event, status, attempt, error_message, detail FROM task_events WHERE task_id = ? ORDER BY id",
            task_id)]
    lines.append(log.read_text() if log.exists() else "no handler log")
    for err in sorted(tmp_path.glob("d*/stderr")):
        lines += [f"== {err}", err.read_text()[-6000:]]
    return "\n".join(lines)


def statuses(store):
    return dict(store.rows("SELECT status, count(*) FROM tasks GROUP BY status"))


def events(store):
    return dict(store.rows("SELECT event, count(*) FROM task_events GROUP BY event"))


@wired
def test_three_daemons_finish_every_task_never_overlap_and_share_the_retries(run_daemons, pg_url, tmp_path):  # noqa: F811 (fixtures)
    log = tmp_path / "runs.log"
    store = open_store(pg_url)
    # an analysis slot every 1.8 s: several pass while the retries run
    procs = [run_daemons(f"d{n}", FAILURE_RETRY_CONCURRENCY=4, FAILURE_ANALYSIS_INTERVAL_HOURS=0.0005)
             for n in range(3)]
    assert wait_for(lambda: len(alive(store)) == 3 and len(leaders(store)) == 1, 60), member_rows.members(store, 10)
    count = 2000
    for n in range(count):  # each run holds its task 10 ms: long enough for an overlap to show
        record_failure(store, "flaky", "connection timeout", payload={"key": str(n), "log": str(log),
                                                                      "fail_first": n % 3 == 0, "work": 0.01})
    assert wait_for(lambda: statuses(store).get("recovered") == count, 240), (statuses(store), events(store))
    runs = handler_runs(log)
    assert not [run for run in runs if run[0] == "overlap"]
    assert {key for what, _, key in runs if what == "end"} == {str(n) for n in range(count)}
    by_daemon = {}
    for what, pid, _ in runs:
        if what == "start":
            by_daemon[pid] = by_daemon.get(pid, 0) + 1
    assert set(by_daemon) == {proc.pid for proc in procs}, by_daemon  # every daemon ran retries
    assert sum(by_daemon.values()) == count + len(range(0, count, 3))  # each failing first runs once more, nothing twice
    assert wait_for(lambda: len(analysis_slots(tmp_path)) >= 2, 30)
    slots = analysis_slots(tmp_path)
    assert len(slots) == len(set(slots)), slots  # one analysis report per slot, whichever daemon led
    store.close()


def analysis_slots(tmp_path):
    """The analysis slots reported, from every daemon's log."""
    return [int(line.split("analysis of slot ")[1].split(":")[0])
            for log in tmp_path.glob("d*/stderr") for line in log.read_text().splitlines()
            if "analysis of slot " in line]


@wired
def test_status_says_at_once_that_the_only_daemon_was_killed(run_daemons, pg_url, tmp_path):  # noqa: F811 (fixtures)
    # The shared heartbeat it last wrote looks fresh for 15 s more; its own row (its lock) goes at once.
    store = open_store(pg_url)
    proc = run_daemons("d0")
    assert wait_for(lambda: len(alive(store)) == 1, 60), alive(store)
    env = {"FAILURE_DB": pg_url, "FAILURE_CONFIG_DIR": str(tmp_path / "config")}
    assert wait_for(lambda: run_cli("status", env=env).returncode == 0, 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    shown = run_cli("status", env=env)
    assert shown.returncode == 1 and "not running" in shown.stdout + shown.stderr, shown.stdout
    assert "gone" in shown.stdout
    store.close()


@wired
@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_kill_9_of_a_daemon_mid_retries_loses_nothing_and_the_jobs_go_on(run_daemons, pg_url, tmp_path, victim):  # noqa: F811 (fixtures)
    log = tmp_path / "runs.log"
    store = open_store(pg_url)
    procs = {}
    for n in range(3):
        proc = run_daemons(f"d{n}", FAILURE_RETRY_CONCURRENCY=4)
        procs[proc.pid] = proc
    assert wait_for(lambda: len(alive(store)) == 3 and len(leaders(store)) == 1, 60), alive(store)
    [leader] = leaders(store)
    target = leader if victim == "leader" else sorted(set(alive(store)) - {leader})[0]
    count = 60
    for n in range(count):
        record_failure(store, "flaky", "connection timeout", payload={"key": str(n), "log": str(log), "work": 1.0})
    # the victim holds retries in the middle of their run
    assert wait_for(lambda: store.scalar("SELECT count(*) FROM tasks WHERE status = 'running' AND lease_owner = ?",
                                         target) >= 2, 60)
    killed_at = time.time()
    procs[int(target.split(":")[1])].send_signal(signal.SIGKILL)
    procs[int(target.split(":")[1])].wait(timeout=10)
    if victim == "leader":
        assert wait_for(lambda: len(leaders(store)) == 1 and leaders(store) != [leader], 10)
        # the new leader's scan runs at once (its processing report)
        assert wait_for(lambda: float((store.get_state("last_scan") or "0").split()[0]) > killed_at, 30)
    else:
        assert leaders(store) == [leader]  # the lead stays where it was
    # the dead daemon's leases come back and every task ends
    assert wait_for(lambda: statuses(store).get("recovered") == count, 240), unfinished(store, log, tmp_path)
    assert store.scalar("SELECT count(*) FROM task_events WHERE event = 'lease_expired'") >= 2
    runs = handler_runs(log)
    assert not [run for run in runs if run[0] == "overlap"]
    store.close()

@wired
def test_sessions_the_server_drops_under_three_daemons_neither_stop_nor_double_their_retries(run_daemons, pg_url,
                                                                                               tmp_path):  # noqa: F811
    """Every session of three daemons ends mid-retries (a failover, pg_terminate_backend): each daemon connects
    again, records what its retries did, goes on claiming, and no retry runs twice or beside another."""
    import psycopg

    log = tmp_path / "runs.log"
    store = open_store(pg_url)
    procs = [run_daemons(f"d{n}", FAILURE_RETRY_CONCURRENCY=4) for n in range(3)]
    started = [tmp_path / f"d{n}" / "stderr" for n in range(3)]  # a drop during start-up ends the start (exit 1)
    assert wait_for(lambda: all("failured running" in err.read_text() for err in started), 60)
    count = 24
    for n in range(count):
        record_failure(store, "flaky", "connection timeout", payload={"key": str(n), "log": str(log), "work": 1.0})
    assert wait_for(lambda: store.scalar("SELECT count(*) FROM tasks WHERE status = 'running'") >= 6, 60)
    sessions = [f"{kind}:{proc.pid}" for proc in procs
                for kind in ("failured", "failured-members", "failured-listen", "failured-lock")]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = ANY(%s)", (sessions,)).fetchone()[0]
    assert ended >= 9  # each daemon's own, membership, wake-up and lock sessions at least
    assert wait_for(lambda: statuses(store).get("recovered") == count, 240), unfinished(store, log, tmp_path)
    runs = handler_runs(log)
    assert not [run for run in runs if run[0] == "overlap"], runs
    assert sorted(key for what, _, key in runs if what == "start") == sorted(str(n) for n in range(count))  # once each
    assert all(proc.poll() is None for proc in procs), unfinished(store, log, tmp_path)
    store.close()


def test_a_change_every_daemon_refuses_is_told_to_the_admins_once(run_daemons, pg_url, tmp_path):  # noqa: F811
    store = open_store(pg_url)
    for n in range(2):
        run_daemons(f"d{n}")
    logs = [tmp_path / f"d{n}" / "stderr" for n in range(2)]
    assert wait_for(lambda: all("failured running" in log.read_text() for log in logs), 60)  # watching
    (tmp_path / "config" / "patterns" / "95-bad.toml").write_text('[[category]]\nname = "unrecoverable_confg"\n')
    assert wait_for(lambda: all("config refused: " in log.read_text() for log in logs), 30), [
        log.read_text() for log in logs]
    said = "".join(log.read_text() for log in logs)
    assert said.count("config refused: the admins are told") == 1  # each daemon refused it; one told the admins
    assert said.count("config refused: the admins were told of it already") == 1
    told = store.execute("SELECT count(*) FROM notifications WHERE kind = 'config' AND channel = 'log'").fetchone()[0]
    assert told == 1
    store.close()
