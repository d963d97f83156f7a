"""``failured run``: the one long-running process and its few threads.

main thread: periodic jobs (scan, analysis, thresholds, housekeeping in slices), signals, heartbeat,
             systemd watchdog
intake:      decides new tasks within INTAKE_TICK_SECONDS of their commit; every ``poll_seconds``
             also queues tasks requeued by the CLI
retry-timer: waits on the heap, claims and records retries in batches; a bounded pool runs them
checkpoint:  SQLite only: copies the WAL into the database file every CHECKPOINT_SECONDS
config:      watchdog observer + debounced reload
"""

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from . import housekeeping, logmask, reports
from .analysis import analysis_report
from .api import ApiServer, listen_address
from .backend import Backend
from .breaker import Breakers
from .clock import SystemClock, iso
from .engine import Engine
from .members import membership_for
from .errors import StoreError, StoreFullError
from .jobs import Schedule, first_delay
from .notify import messages
from .metrics import Metrics
from .modelcache import cache_dir
from .notify.dispatcher import Dispatcher
from .notify.outbox import enqueue
from .thresholds import alert_breaches
from .queue import RetryQueue, Runner
from .report_html import render_html
from .sdnotify import Notifier
from .store import DISK_FLOOR_BYTES, StoreUnavailableError, aggregates, open_store
from .store.members import claim_state, forget_stopped
from .store.state import is_busy, set_state_soon
from .status import CONFIG_WAITING, REPORTS_FAILING
from .watcher import ConfigWatcher

log = logging.getLogger("failured.daemon")

HEARTBEAT_SECONDS = 5.0
START_EXTEND_EVERY = 10.0  # while starting, systemd is asked for three times this more, this often
# The longest the heartbeat waits for SQLite's write lock. Another process can hold it for minutes (a VACUUM):
# the main loop, which pings systemd's watchdog, must not wait out the store's 30 s busy timeout.
HEARTBEAT_LOCK_WAIT_SECONDS = 5.0
LOOP_SECONDS = 0.5  # the main loop's pace
PURGE_PAUSE_SECONDS = 0.05  # between two slices of a purge: the reporters' and the other threads' turn
PURGE_RETRY_SECONDS = 5.0  # after a slice that failed
HOUSEKEEPING_SECONDS = 86400
REJECTION_TOLD = "config_rejected_told"  # daemon_state: the digest of the refused change the admins were told of
LEAD_SCAN_GAP_SECONDS = 60.0  # a lead gained this soon after this daemon's own report needs no report at once
MAX_LISTED_PROBLEMS = 10  # problems of a refused config an admin alert lists, one bullet each
# How often the intake asks SQLite whether another connection committed (PRAGMA data_version:
# no I/O). A report is decided within this of its commit, without any signal from the reporter.
INTAKE_TICK_SECONDS = 0.01
GIL_SWITCH_SECONDS = 0.0005
# SQLite: how often the daemon copies the WAL into the database file (a passive checkpoint, beside the
# writers). Otherwise the commit that finds the WAL full does it, and under a flood that is a reporter's.
CHECKPOINT_SECONDS = 0.05
INTAKE_YIELD_MAX = 0.05  # longest the intake waits, per commit of decisions, for late retries to start
INTAKE_YIELD_STEP = 0.001
# ... and only while the reports it has yet to decide are younger than this: a decision is due within a second
# of its report; the other half is for catching up (bench/flood.py at 8,300-9,000 reports/s: decided p99 0.55-0.62 s).
INTAKE_YIELD_BUDGET = 0.5
THRESHOLD_CHECK_SECONDS = 60
TAKE_BACK_SECONDS = 1.0  # several daemons: how often each looks for the leases of daemons that are gone
DISK_FULL_POLL_SECONDS = 2.0  # while the disk is full, intake looks this often whether space is back
STORE_RETRY_MAX_SECONDS = 5.0  # while PostgreSQL does not answer, intake tries again after 0.5, 1, 2, 4, 5, 5 ... s
SAME_OUTAGE_SECONDS = 10.0  # a thread losing its connection this soon after the database came back: the same outage



class ReportNotWritten(Exception):
    """A report file could not be written (a full disk, a directory gone): said in one line, and by ``status``."""

class Daemon:
    def __init__(self, settings, clock=None, notifier=None):
        self.settings = settings
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier.from_env()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{int(self.clock.now())}"
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()
        self.scheduler = Schedule(self.clock)
        self._purge = None  # the housekeeping purge under way (a slice each main-loop tick), owned by the main loop
        self._purge_next = 0.0  # monotonic time of its next slice
        self._busy_since = None  # monotonic time the database was found busy (another process holds its lock)
        self._next_heartbeat = self._next_watchdog = self._next_take_back = 0.0
        self.waiting_orphans = set()
        self.disk = DiskState()
        self._store_lost_since = None  # monotonic time PostgreSQL stopped answering; intake and heartbeat set it
        self._store_back_at = None  # ... and when it answered again
        self._outage_quiet = False  # this loss is the last outage reaching another thread's connection
        self._checkpoint_thread = None
        self._became_leader = threading.Event()  # set by the membership thread; the main loop runs the jobs at once
        self._reported_at = float("-inf")  # monotonic time of this daemon's last processing report

    # -- start ----------------------------------------------------------------

    def start(self):
        self._started = threading.Event()
        threading.Thread(target=self._extend_start_until_started, name="start-timeout", daemon=True).start()
        try:
            return self._start()
        finally:
            self._started.set()

    def _extend_start_until_started(self):
        """Until the daemon is ready, ask systemd for more time every START_EXTEND_EVERY seconds: training the
        model on a first start or after an upgrade takes half a minute here, more on a slow machine, and the
        unit's TimeoutStartSec (90 s) would kill the start and begin it again, for ever."""
        while not self._started.is_set():
            self.notifier.extend_start(3 * START_EXTEND_EVERY, "starting: loading the configuration and its model")
            self._started.wait(START_EXTEND_EVERY)

    def _start(self):
        s = self.settings
        http_address = listen_address(s)  # a bad address is refused before anything is created
        self.store = open_store(s.db)
        self._take_lock()
        # Several daemons on PostgreSQL: this one's row, heartbeat and locks (leader, channels); alone on SQLite.
        self.members = membership_for(self.store, self.clock, self.owner, on_leadership=self._on_leadership).start()
        self._labels_seen = self.store.label_count()
        self.watcher = ConfigWatcher(s.config_dir, s.lang, on_reload=self._on_reload, on_reject=self._on_reject,
                                     on_restore=self._on_restore, on_wait=self._on_config_wait, keep_last_good=True,
                                     clock=self.clock, log_dir=s.log_dir, labels=self.store.labelled_examples)
        snapshot = self.watcher.current
        if self.watcher.started_on_last_good is not None:  # the directory is broken: the admins hear it at once
            self._on_reject(self.watcher.last_rejected[1], last_good_saved_at=self.watcher.started_on_last_good)
        logmask.use_secrets(lambda: self.watcher.current.secrets + ((s.api_token,) if s.api_token else ()))
        self._record_config(snapshot)
        self._on_config_wait(())  # what an earlier run waited for is gone with it
        self.metrics = Metrics()
        self.engine = Engine(self.store, s, self.clock, lambda: self.watcher.current, self.owner,
                             metrics=self.metrics, members=self.members)
        self.breakers = Breakers(snapshot.breaker, self.store, clock=self.clock)
        self.breakers.load()
        self.queue = RetryQueue(self.clock)
        queued, waiting = self.engine.take_back_leases(orphans_only=True)
        self.waiting_orphans.update(waiting)
        for item in self.engine.scheduled() + queued:
            self.queue.push(*item)
        self.runner = Runner(self.engine, self.queue, self.breakers, self.clock, s.retry_concurrency,
                             enabled=s.recovery_enabled, paused=self.disk.is_full)
        self.runner.start()
        self.dispatcher = Dispatcher(self.store, s, self.clock, lambda: self.watcher.current,
                                     metrics=self.metrics, members=self.members).start()
        self.metrics.bind(self.store, lambda: len(self.queue), self.clock)
        self.metrics.members = self.members
        self.members.listen(self.wake.set)  # PostgreSQL: a reported failure wakes the intake at once
        self.watcher.start()
        self.api = None
        if http_address is not None:
            backend = Backend(self.store, s, lambda: self.watcher.current, wake=self.wake.set,
                              health=self.loops, metrics_registry=self.metrics, clock=self.clock)
            self.api = ApiServer(*http_address, backend, token=s.api_token).start()
            log.info("HTTP API on %s:%d%s", http_address[0] or "*", self.api.port,
                     "" if s.api_token else " (loopback only: no FAILURE_API_TOKEN)")
        self._intake_thread = threading.Thread(target=self._intake_loop, name="intake", daemon=True)
        self._intake_thread.start()
        if self.store.dialect == "sqlite":
            self._checkpoint_thread = threading.Thread(target=self._checkpoint_loop, name="checkpoint", daemon=True)
            self._checkpoint_thread.start()
        self._schedule_jobs()
        self._beat()  # before READY=1: `systemctl start failured && failured status` finds it alive
        log.info("failured running: db %s, config %s (%d categories), %s%s",
                 self.store, s.config_dir, len(snapshot.ruleset.categories), self._status_line(),
                 "" if s.recovery_enabled else ", automatic retries OFF (FAILURE_RECOVERY_ENABLED=false)")
        self._started.set()  # no more time asked for once ready
        self.notifier.ready(self._status_line())
        return self

    def _take_lock(self):
        self.store.take_daemon_lock()

    def _schedule_jobs(self):
        """Each job with a record of its last run (daemon_state) runs when that is an interval ago, at once
        if it is already: restarted every day, the daemon still runs its daily housekeeping."""
        s, now = self.settings, self.clock.now()
        jobs = ((s.scan_interval_minutes * 60, "last_scan", self._guarded, self.scan),
                (s.analysis_interval_hours * 3600, "last_analysis", self._led, self.analyze),
                (HOUSEKEEPING_SECONDS, "last_housekeeping", self._led, self.housekeep))
        for every, marker, runner, job in jobs:
            self.scheduler.every(every, runner, job, first_in=first_delay(self._last_run(marker), now, every))
        self.scheduler.every(THRESHOLD_CHECK_SECONDS, self._led, self.check_thresholds)

    def _last_run(self, marker):
        """When (wall clock) a job last ran, from its daemon_state row; None if never (or unreadable)."""
        try:
            value = self.store.get_state(marker)
            return float(value.split()[0]) if value else None
        except (ValueError, IndexError):
            return None

    def _led(self, job):
        """A job only the leader runs (several daemons on PostgreSQL; alone, this daemon leads)."""
        if self.members.is_leader():
            self._guarded(job)

    def _on_leadership(self, leading):
        if leading:
            self._became_leader.set()

    def _guarded(self, job):
        # One failing job must not stop the loop.
        try:
            job()
        except StoreUnavailableError as exc:  # an outage is logged once, by whoever meets it first
            self._store_lost(exc)
        except StoreFullError as exc:  # the heartbeat says so and alerts once; the job's next slot tries again
            self._disk_full(exc)
            log.warning("scheduled job %s skipped: %s", job.__name__, exc)
        except ReportNotWritten as exc:  # status says so too; one line a slot, not a traceback
            log.error("scheduled job %s: %s; it runs again at its next slot", job.__name__, exc)
        except Exception as exc:
            if not is_busy(exc):
                log.exception("scheduled job %s failed; it runs again at its next slot", job.__name__)
                return
            self._store_busy(exc)  # said once; the jobs wait until the heartbeat gets the lock again
            log.warning("scheduled job %s waits: the database is busy; it runs once the lock is free", job.__name__)

    # -- loops ----------------------------------------------------------------

    def catch_signals(self):
        """SIGTERM/SIGINT stop, SIGHUP reloads. Installed before ``start()``, which takes seconds when the model
        trains: a signal meanwhile is acted on once start-up is done (systemd's reload would kill us otherwise)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def run_forever(self):
        self.catch_signals()
        steps = (self._reload_if_asked, self._run_jobs, self._beat, self._take_back, self._ping_watchdog)
        while not self.stopping.is_set():
            for step in steps:
                self._survive(step)
            self.stopping.wait(PURGE_PAUSE_SECONDS if self._purge is not None else LOOP_SECONDS)
        self.stop()

    def _survive(self, step):
        """The main loop's boundary: no step's error ends the daemon (a busy database is said once)."""
        try:
            step()
        except Exception as exc:
            if is_busy(exc):
                self._store_busy(exc)
            else:
                log.exception("main loop: %s failed; going on", step.__name__)

    def _reload_if_asked(self):
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.notifier.reloading()
            try:
                self.watcher.reload(force=True, why="asked for")
            finally:
                self.notifier.reloaded()

    def _run_jobs(self):
        if self._busy_since is not None:  # each would wait out the busy timeout: they run once the lock goes
            return
        self.scheduler.run_pending(held=lambda: self._busy_since is not None)
        if self._became_leader.is_set():  # the lead moved here: the leader's jobs carry on now
            self._became_leader.clear()
            if self.clock.monotonic() - self._reported_at >= LEAD_SCAN_GAP_SECONDS:  # not twice at a first start
                self._guarded(self.scan)
            self._led(self.check_thresholds)
        if self._purge is not None and self.clock.monotonic() >= self._purge_next:
            self._guarded(self._purge_slice)

    def _beat(self):
        # Timed on the monotonic clock, from the end of the beat: a wall-clock jump must not stall it, and a
        # beat that waited for a busy database leaves the loop a turn before the next.
        if self.clock.monotonic() >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = self.clock.monotonic() + HEARTBEAT_SECONDS

    def _take_back(self):
        if self.members.shared and self.clock.monotonic() >= self._next_take_back:
            self._guarded(self.take_back_from_the_gone)
            self._next_take_back = self.clock.monotonic() + TAKE_BACK_SECONDS

    def _ping_watchdog(self):
        every = self.notifier.watchdog_interval
        if every and self.clock.monotonic() >= self._next_watchdog and self.healthy():
            self.notifier.watchdog()
            self._next_watchdog = self.clock.monotonic() + every

    def _on_stop_signal(self, signum, frame):
        self.stopping.set()

    def _on_reload_signal(self, signum, frame):
        self.reload_requested.set()

    def _intake_loop(self):
        next_sweep = 0.0  # monotonic time of the next full intake_once
        seen = None  # the data_version the last look saw
        while not self.stopping.is_set():
            wait = INTAKE_TICK_SECONDS
            try:
                if self.disk.is_full():
                    self._check_free_space()  # still full: wait, do not fail a write per poll
                version = self.store.data_version()
                if self.clock.monotonic() >= next_sweep or self.wake.is_set():
                    self.wake.clear()
                    self.intake_once()
                    next_sweep = self.clock.monotonic() + self.settings.poll_seconds
                elif version != seen:
                    self.intake_new()
                seen = version
                self._disk_ok()
                self._store_back()
            except StoreFullError as exc:
                self._disk_full(exc)
                wait = DISK_FULL_POLL_SECONDS
                next_sweep = 0.0
            except StoreUnavailableError as exc:
                lost_for = self._store_lost(exc)
                wait = min(STORE_RETRY_MAX_SECONDS, max(self.settings.poll_seconds, lost_for))
                next_sweep = 0.0
                self.wake.wait(wait)
                continue
            except Exception as exc:
                if is_busy(exc):
                    self._store_busy(exc)
                else:
                    log.exception("intake: unexpected error; going on")
                wait = self.settings.poll_seconds
            self.wake.wait(wait)

    def intake_new(self):
        """Decide every new task, batch after batch, queueing each retry as its batch is written."""
        self.engine.drain_new(self.queue.push, between=self._let_late_retries_go)
        if self.engine.notified_since_wake():  # only then: a woken dispatcher queries every lane
            self.dispatcher.wake()

    def intake_once(self):
        """Act on new tasks, and queue scheduled ones the heap does not know (requeued by the CLI)."""
        self.intake_new()
        horizon = self.clock.now() + self.settings.poll_seconds
        for task_id, due, task_type in self.engine.scheduled(due_before=horizon):
            # push() ignores a known id at the same due time and moves one whose due time
            # changed: `recover` on a scheduled task sets it to now, and it runs now.
            self.queue.push(task_id, due, task_type)
        if self.waiting_orphans:
            self._recheck_orphans()

    def _let_late_retries_go(self):
        """Between two decision commits, give way while due retries wait for the retry timer.

        Both threads need the one GIL and the one write lock, and neither has a priority:
        in a flood the classifying intake would take most turns. A retry is due to the
        millisecond; a decision has a second (INTAKE_YIELD_MAX bounds the wait per commit, and
        the intake stops giving way when its oldest waiting report is INTAKE_YIELD_BUDGET old).
        """
        deadline = self.clock.monotonic() + INTAKE_YIELD_MAX
        decided_through = self.engine.decided_through
        if decided_through is not None:  # every report still waiting was recorded after that
            deadline = min(deadline, self.clock.monotonic() + decided_through + INTAKE_YIELD_BUDGET - self.clock.now())
        while self.runner.behind() and self.clock.monotonic() < deadline and not self.stopping.is_set():
            self.stopping.wait(INTAKE_YIELD_STEP)

    def _checkpoint_loop(self):
        """Keep the WAL short, so that no writer's commit (a reporter's, an intake's) runs the checkpoint."""
        failing = False
        while not self.stopping.wait(CHECKPOINT_SECONDS):
            try:
                self.store.checkpoint()
                failing = False
            except Exception as exc:  # a full disk, say: the writers' own checkpoints go on meanwhile
                if not failing:
                    log.warning("WAL checkpoint failed: %s; trying again", exc)
                failing = True
        self.store.db.close()  # this thread's connection

    def _recheck_orphans(self):
        queued, waiting = self.engine.take_back_leases(orphans_only=True)
        self.waiting_orphans = set(waiting)
        for item in queued:
            self.queue.push(*item)

    def loops(self):
        """(healthy, {loop: alive}, facts) for /healthz; the systemd watchdog pings while the loops live."""
        loops = {"intake": self._intake_thread.is_alive(), "retry-timer": self.runner.alive(),
                 "dispatcher": self.dispatcher.alive(), "config-watcher": self.watcher.alive()}
        if self.api is not None:
            loops["http-api"] = self.api.alive()
        full = self.disk.is_full()
        lost = self._store_lost_since is not None
        busy = self._busy_since is not None
        return (all(loops.values()) and not full and not lost and not busy, loops,
                {"disk_full": full, "store_unavailable": lost, "store_busy": busy})

    def healthy(self):
        """The loops are alive (a full disk is unhealthy for /healthz, but no reason for systemd to kill us)."""
        return all(self.loops()[1].values())

    def _heartbeat(self):
        now = self.clock.now()
        try:
            self._check_free_space()
            set_state_soon(self.store, "heartbeat", f"{now:.3f} pid={os.getpid()}", now, HEARTBEAT_LOCK_WAIT_SECONDS)
            self._store_free()
            self._keep_daemon_lock()
            aggregates.compact_counters(self.store)  # PostgreSQL's counter deltas; nothing on SQLite
            self._disk_ok()
            self._retrain_on_new_labels()
        except StoreFullError as exc:
            self._disk_full(exc)
        except StoreUnavailableError as exc:
            self._store_lost(exc)
        except Exception as exc:
            if is_busy(exc):
                self._store_busy(exc)
            elif isinstance(exc, StoreError):
                log.error("heartbeat not written: %s", exc)
            else:
                log.exception("heartbeat: unexpected error; going on")
        self.notifier.status(self._status_line())

    def _keep_daemon_lock(self):
        try:
            if self.store.keep_daemon_lock():
                log.warning("daemon lock on %s taken again: it was lost (the server dropped its session, or its "
                            "lock file was removed)", self.store.path)
        except StoreError as exc:  # not the heartbeat's failure: it was written
            log.error("daemon lock on %s not taken again yet: %s", self.store.path, exc)

    def _retrain_on_new_labels(self):
        """An operator labelled a task (CLI or API): the next snapshot's model learns it."""
        count = self.store.label_count()
        if count != self._labels_seen:
            self._labels_seen = count
            self.watcher.retrain()

    def _check_free_space(self):
        """StoreFullError when the database's filesystem has less than DISK_FLOOR_BYTES free."""
        free = self.store.free_bytes()
        if free is not None and free < DISK_FLOOR_BYTES:
            raise StoreFullError(self.settings.db, f"{free:,} bytes free on its filesystem")

    def _status_line(self):
        if self._busy_since is not None:
            return f"DATABASE BUSY: another process holds its lock; {len(self.queue)} retries waiting"
        if self.disk.is_full():
            return f"DISK FULL: not taking new work ({self.disk.reason}); {len(self.queue)} retries waiting"
        return f"{len(self.queue)} retries pending, {self.runner.running} running"

    def _disk_full(self, exc):
        if self.disk.set_full(str(exc)):
            log.error("%s: new work waits until space returns", exc)
            self.notifier.status(self._status_line())
            self.dispatcher.alert_direct(*messages.disk_full_message(self.settings.lang, str(exc)))

    def _store_lost(self, exc):
        """Say once per outage that the database does not answer; returns for how long it has not (s).

        Each thread has its own connection, so one outage reaches them one after another: a thread that
        meets its dead connection just after another thread's came back is still the same outage."""
        now = self.clock.monotonic()
        if self._store_lost_since is None:
            self._store_lost_since = now
            self._outage_quiet = self._store_back_at is not None and now - self._store_back_at < SAME_OUTAGE_SECONDS
            (log.debug if self._outage_quiet else log.error)("%s; what is held stays held, trying again with backoff",
                                                             exc)
        return now - self._store_lost_since

    def _store_busy(self, exc):
        """Say once that another process holds the database's lock (a VACUUM, say); the jobs wait for it."""
        if self._busy_since is None:
            self._busy_since = self.clock.monotonic()
            log.warning("database %s is busy: another process holds its lock (%s); waiting, the daemon carries on "
                        "when it is free", self.store, exc)
            self.notifier.status(self._status_line())

    def _store_free(self):
        if self._busy_since is not None:
            log.warning("database %s is writable again after %.1fs", self.store,
                        self.clock.monotonic() - self._busy_since)
            self._busy_since = None
            self.queue.wake()

    def _store_back(self):
        if self._store_lost_since is not None:
            now = self.clock.monotonic()
            (log.debug if self._outage_quiet else log.warning)("the database answers again after %.1fs",
                                                               now - self._store_lost_since)
            self._store_lost_since, self._store_back_at = None, now
            self.queue.wake()

    def _disk_ok(self):
        if self.disk.set_ok():
            log.warning("disk space is back: taking new work again")
            self.notifier.status(self._status_line())
            self.queue.wake()
            self.wake.set()

    # -- scheduled jobs --------------------------------------------------------

    def scan(self):
        """Reconcile (unhandled rows, expired leases, scheduled rows missing from the heap), then report."""
        now = self.clock.now()
        handled = self.engine.handle_new(limit=1_000_000)
        taken_back, _ = self.engine.take_back_leases(running_here=self.runner.running_ids())
        missing = [item for item in self.engine.scheduled() if not self.queue.contains(item[0])]
        for item in handled + taken_back + missing:
            self.queue.push(*item)
        if not self.members.is_leader():  # every daemon reconciles its own heap; the leader reports
            return None
        with self._writing_reports(now):
            path, _ = reports.write_processing_report(self.store, self.settings.report_dir, now, self.settings.lang)
        if path is None:  # the lead was moving and the other leader reported these events
            return None
        self.store.set_state("last_scan", f"{now:.3f}", now)
        # where `failured scan` from a shell writes too
        self.store.set_state(reports.WRITTEN_IN_KEY, str(Path(self.settings.report_dir).resolve()), now)
        self._reported_at = self.clock.monotonic()
        log.info("scan: %d new handled, %d leases taken back, %d retries re-queued; report %s",
                 len(handled), len(taken_back), len(missing), path)
        return path

    @contextlib.contextmanager
    def _writing_reports(self, now):
        """Report files that cannot be written (a full disk, a directory gone) are a problem ``status`` shows until
        one is written again: only the log had said so, at every scan."""
        try:
            yield
        except OSError as exc:
            failing = {"at": iso(now), "error": f"{exc.strerror or exc} ({self.settings.report_dir})"}
            self.store.set_state(REPORTS_FAILING, json.dumps(failing), now)
            raise ReportNotWritten(f"report not written: {failing['error']}") from None
        if self.store.get_state(REPORTS_FAILING) is not None:
            self.store.delete_state(REPORTS_FAILING)
            log.info("reports are written again in %s", self.settings.report_dir)

    def take_back_from_the_gone(self):
        """Several daemons: the retries leased to a daemon that died go back to scheduled, due now, and run here
        (or wherever a claim gets them first)."""
        taken_back, _ = self.engine.take_back_leases(running_here=self.runner.running_ids())
        for item in taken_back:
            self.queue.push(*item)

    def analyze(self):
        now = self.clock.now()
        s = self.settings
        slot = int(now // (s.analysis_interval_hours * 3600))
        with self.store.transaction():  # one report per slot, whichever daemon leads when it comes
            if not claim_state(self.store, "analysis_slot", str(slot), now):
                return None
        report = analysis_report(self.store, self.watcher.current, now, s.analysis_days, s.lang)
        with self._writing_reports(now):
            path = reports.write_report(s.report_dir, reports.ANALYSIS, report, now, render_html(report, s.lang))
        self.store.set_state("last_analysis", f"{now:.3f}", now)
        log.info("analysis of slot %d: %d failures over %d days; report %s", slot, report["total_failures"],
                 s.analysis_days, path)
        return path

    def check_thresholds(self):
        """Alert the admins about each breached threshold, once per window."""
        snapshot = self.watcher.current
        now = self.clock.now()
        breaches = alert_breaches(self.store, snapshot, now, self.settings.lang)
        if breaches:
            self.dispatcher.wake()
        return breaches

    def housekeep(self):
        """Old report files and daemons gone a day go now; the store's purge starts, a slice per main-loop tick."""
        now = self.clock.now()
        forget_stopped(self.store, now - 86400)  # daemons gone a day leave `failured status`
        removed = reports.purge_reports(self.settings.report_dir, now, self.settings.report_retention_days)
        log.info("housekeeping: removed %d report files older than %g days (by the time in their names)", removed,
                 self.settings.report_retention_days)
        if self._purge is None:
            self._purge = housekeeping.Purge(self.store, now, self.settings.retention_days, self.clock)
            self._purge_next = 0.0

    def _purge_slice(self):
        try:
            done = self._purge.step()
        except Exception:
            self._purge_next = self.clock.monotonic() + PURGE_RETRY_SECONDS  # not a traceback every tick
            raise
        if done:
            self._purge = None
            now = self.clock.now()
            self.store.set_state("last_housekeeping", f"{now:.3f}", now)

    # -- config callbacks -------------------------------------------------------

    def _record_config(self, snapshot):
        now = self.clock.now()
        cache = cache_dir()  # where its last good copy is kept, for a status run from another environment
        directory = str(Path(self.settings.config_dir).resolve())
        self.members.config = {"digest": snapshot.digest, "dir": directory}  # several daemons: each says its own
        self.store.set_state("config", json.dumps({"dir": directory,
                                                   "cache": str(cache.resolve()) if cache else None,
                                                   "reports": str(Path(self.settings.report_dir).resolve()),
                                                   "files": list(snapshot.files),
                                                   "digest": snapshot.digest, "loaded_at": iso(now)}), now)

    def _on_reload(self, snapshot):
        self.metrics.reloads.labels("applied").inc()
        self._record_config(snapshot)
        self.store.delete_state("config_rejected")  # a good config is active again
        self.store.delete_state(REJECTION_TOLD)  # the next refused change is news again
        self.breakers.config = snapshot.breaker
        self.dispatcher.sync_lanes()
        self.engine.forget_manual_notices(snapshot)

    def _on_restore(self, snapshot):
        self.store.delete_state("config_rejected")  # the refused change was undone: the active config is on disk again
        self.store.delete_state(REJECTION_TOLD)

    def _on_config_wait(self, paths):
        """Files a reload waits to have content again (emptied, a save still being written): ``status`` says so."""
        if paths:
            now = self.clock.now()
            self.store.set_state(CONFIG_WAITING, json.dumps({"files": list(paths), "since": iso(now)}), now)
        else:
            self.store.delete_state(CONFIG_WAITING)

    def _on_reject(self, errors, last_good_saved_at=None):
        """A refused reload; or, with ``last_good_saved_at``, a start on a directory that does not validate,
        running on the last good copy."""
        if last_good_saved_at is None:
            self.metrics.reloads.labels("rejected").inc()
        now = self.clock.now()
        rejected = {"at": iso(now), "errors": [str(e) for e in errors]}
        if last_good_saved_at is not None:
            rejected["last_good_saved_at"] = iso(last_good_saved_at)
        self.store.set_state("config_rejected", json.dumps(rejected, ensure_ascii=False), now)
        lines = "\n".join(f"- {e}" for e in errors)
        zh = self.settings.lang == "zh"
        if last_good_saved_at is None:
            title = ("[failured] 配置重新加载被拒绝，仍使用上一个有效配置" if zh
                     else "[failured] Config reload rejected; the last good config stays active")
        else:
            title = (f"[failured] 启动时配置无效，正在使用 {iso(last_good_saved_at)} 保存的上一个有效配置" if zh
                     else f"[failured] Config invalid at start; running on the last good config, kept at "
                          f"{iso(last_good_saved_at)}")
        told = hashlib.sha256(lines.encode("utf-8", "backslashreplace")).hexdigest()[:16]
        with self.store.transaction():
            # Several daemons read one directory and each refuses the same change: the admins are told once.
            first = claim_state(self.store, REJECTION_TOLD, told, now)
            if first:
                listed = "\n".join(messages.shorten(f"- {e}", 600) for e in errors[:MAX_LISTED_PROBLEMS])
                if len(errors) > MAX_LISTED_PROBLEMS:  # one bullet a problem: a chat renders each on its line
                    listed += f"\n- … {len(errors) - MAX_LISTED_PROBLEMS} more (failured check-config lists them)"
                enqueue(self.store, self.watcher.current, now, "admin", "config", title, f"**{title}**\n\n{listed}")
        log.info("config refused: %s", "the admins are told" if first else "the admins were told of it already")

    # -- stop -----------------------------------------------------------------

    def stop(self):
        log.info("stopping: no new retries; waiting up to %gs for running ones",
                 self.settings.shutdown_grace_seconds)
        self.notifier.stopping()
        self.stopping.set()
        self.wake.set()
        still_running = self.runner.stop(self.settings.shutdown_grace_seconds)
        if still_running:
            released = self.engine.release_own_leases()
            log.warning("stopped %d retries still running after the grace period; rescheduled", len(released))
        if self.api is not None:
            self.api.stop()
        self.dispatcher.stop()
        self.watcher.stop()
        self._intake_thread.join(timeout=5)
        if self._checkpoint_thread is not None:
            self._checkpoint_thread.join(timeout=5)
        self.members.stop()  # the lead and the channels move to the others at once
        try:
            self.store.delete_state("heartbeat")  # `status` says "not running" at once, not in 15 s
        except Exception as exc:  # a busy database too: the daemon stops all the same
            if not (isinstance(exc, StoreError) or is_busy(exc)):
                raise
            log.warning("heartbeat not cleared: %s", exc)
        self.store.close()  # and with it the daemon lock
        log.info("stopped")


class DiskState:
    """Whether the database's disk is full, shared by the intake, heartbeat, runner and /healthz."""

    def __init__(self):
        self._lock = threading.Lock()
        self._full = False
        self.reason = None

    def is_full(self):
        with self._lock:
            return self._full

    def set_full(self, reason):
        """Record a full disk; True when it was not full before (say so once per outage)."""
        with self._lock:
            changed, self._full, self.reason = not self._full, True, reason
            return changed

    def set_ok(self):
        """Record a write that worked; True when the disk was full before."""
        with self._lock:
            changed, self._full, self.reason = self._full, False, None
            return changed


def run(settings):
    """Start the daemon and block until SIGTERM/SIGINT; returns the exit status."""
    # While the intake classifies a flood, every hand-over of a retry between threads waits for
    # the GIL; at the default 5 ms switch interval the retries queue up behind the CPU work.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    daemon = Daemon(settings)
    daemon.catch_signals()
    daemon.start()
    daemon.run_forever()
    return 0

