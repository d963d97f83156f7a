"""One channel's delivery lane: a thread that sends its outbox rows, never over the channel's rate.

Per pass: hand over direct alerts (they need no database); expire rows past the
retry horizon; hold repeats of an error already sent within the dedup window;
group same-error rows into one "×N" message; and when more is waiting than the
channel's budget allows, merge everything waiting into one digest — a chat
group wants one summary of a storm, not 20 messages a minute of it. During a
storm (up to a minute after its last over-budget digest) held repeats ride
with the next digest instead of waiting out the dedup window.

A failed send pauses the channel (it is down, throttled or rejects us) unless
the channel says the failure is this message's alone (``message_fault``: it
could not be built, or the receiver refuses its content): then that row waits
on its own backoff, the lane goes on with the next, and after
MESSAGE_ATTEMPTS tries the row fails and the admins hear, once the channel
has taken another message since its first refusal (the same refusal of every
message is the channel's: its rows wait on their backoffs).

Time: what is stored (``sent_at``, ``next_attempt_at``) is wall-clock; every
wait the lane keeps in memory (rate window, pauses, digest interval, dedup
memory, storm) runs on the monotonic clock, so a wall-clock jump neither
stalls nor rushes delivery.
"""

import bisect
import logging
import queue
import threading
from collections import deque

from ..errors import StoreError, StoreFullError
from ..store import StoreUnavailableError, outbox
from ..store.state import is_busy
from . import messages
from .channels import mask
from .health import ChannelHealth
from .outbox import FAILED, SENT, SUPPRESSED, UNDELIVERABLE_KIND
from .routing import LOG_CHANNEL

log = logging.getLogger("failured.notify")

WINDOW_SECONDS = 60.0
BATCH = 2000
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 600.0  # the first: [notify] retry_backoff_seconds overrides it
# A notification refused on its own (SendResult.message_fault) is tried this often in all, on its own
# backoff (5 s … about 10 minutes), then fails and the admins hear: waiting 24 h would change nothing.
MESSAGE_ATTEMPTS = 8
IDLE_SECONDS = 0.5
STORE_RETRY_SECONDS = 5.0  # the database cannot be written (disk full): look again this often
JUMP_SECONDS = 2.0  # a wall clock that moved this much more (or less) than the monotonic one jumped
NEVER = float("-inf")
TAKEOVER_PAUSE_SECONDS = 3.0  # members.LOCK_GRACE_SECONDS: the time a dropped daemon takes to come back


def backoff(attempts, first=BACKOFF_FIRST):
    """Seconds before the next try after ``attempts`` failed sends: ``first`` (5), 10, 20 … capped at 10 minutes."""
    return min(BACKOFF_MAX, first * 2 ** max(0, attempts - 1))


def _only_this_message(result):
    """Whether a failed send was this message's fault alone (a throttle or a rejection is the channel's)."""
    return result.message_fault and not result.retry_after and not result.misconfigured


REPEATABLE_KINDS = ("task", "exhausted")  # the notices the dedup window holds and "×N" messages count


def hold_key(row):
    """What makes two task notices "the same error" (None for other rows): see ``same_error``."""
    return same_error(row) if row.fingerprint and row.kind in REPEATABLE_KINDS else None


def same_error(row):
    """Fingerprint, task type, category and audience. One fingerprint may be decided two ways (the model, a
    label): a user's business error is never sent to the admins as a configuration error's "×N"."""
    return (row.fingerprint, row.task_type, row.category, row.audience)


class Lane:
    """Delivery state of one channel. Everything here belongs to the lane's own thread, except:
    ``wake`` and ``stopping`` (set by the dispatcher) and ``direct`` (a thread-safe queue)."""

    def __init__(self, name, dispatcher):
        self.name = name
        self.dispatcher = dispatcher
        self.sent_times = deque()  # monotonic times of sends within the last minute
        self.recent = {}  # hold_key -> monotonic time it was last sent
        self.paused_until = NEVER
        self.misconfigured = None  # (channel object, reason) until the config changes
        self.last_digest = NEVER
        self.storm_until = NEVER
        self.unrecorded = {}  # row id -> wall time: sent, but the database could not be told (disk full)
        self.health = ChannelHealth(dispatcher.store, name)
        self.direct = queue.SimpleQueue()  # Messages from Dispatcher.alert_direct
        self.wake = threading.Event()
        self.thread = None
        self.stopping = False
        self._offset = None  # wall minus monotonic at the last pass, to notice wall-clock jumps
        self._last_pass = None  # wall time of the last pass
        self._store_full = False
        self._holding = False  # whether this daemon delivered the channel at the last pass
        self._sends_pruned = NEVER  # wall time channel_sends was last pruned
        self._deliveries = 0  # messages the channel took since the daemon started
        self._refused_after = {}  # row id -> deliveries when the channel first refused it on its own
        self._unconfigured_said = False  # whether the admins heard that the channel left the configuration
        self._started_at = NEVER  # monotonic time the lane's thread started
        self._tests_seen = {}  # channel_sends id -> wall time of notify-test messages already in sent_times

    # -- the loop ---------------------------------------------------------------

    def start(self, now):
        self._started_at = self.dispatcher.monotonic()
        self._load_history(now)
        self.thread = threading.Thread(target=self._loop, name=f"notify-{self.name}", daemon=True)
        self.thread.start()

    def alive(self):
        return self.thread is not None and self.thread.is_alive()

    def hand(self, message):
        """Queue a message that has no outbox row (see Dispatcher.alert_direct); sent on the next pass."""
        self.direct.put(message)
        self.wake.set()

    def _loop(self):
        while not self.stopping:
            delay = self._pass()
            self.wake.wait(min(delay, IDLE_SECONDS))
            self.wake.clear()

    def _pass(self):
        """One guarded pass: nothing a pass raises stops the lane."""
        try:
            delay = self.process()
            self._store_full = False
            return delay
        except StoreFullError as exc:
            if not self._store_full:  # said once per episode, not once per pass
                log.error("channel %s: %s; delivery waits for space", self.name, exc)
            self._store_full = True
            return STORE_RETRY_SECONDS
        except StoreUnavailableError as exc:
            if not self._store_full:  # the daemon says it once; a lane only notes that it waits
                log.warning("channel %s: delivery waits for the database (%s)", self.name, exc)
            self._store_full = True
            return STORE_RETRY_SECONDS
        except Exception as exc:
            if is_busy(exc):  # another process holds the database's lock (a VACUUM): the daemon says so too
                if not self._store_full:
                    log.warning("channel %s: delivery waits for the database's lock", self.name)
                self._store_full = True
                return STORE_RETRY_SECONDS
            log.exception("channel %s: unexpected error in delivery; going on", self.name)
            return 1.0

    def _load_history(self, now):
        """Rebuild the rate window, dedup memory, storm and health from what an earlier run stored."""
        d = self.dispatcher
        self.health.load()
        mono = d.monotonic()
        window = d.config().notify.dedup_window_seconds
        shared = d.members.shared
        if shared:  # the window is every daemon's sends, written before each went out (notify-test's too)
            self.sent_times.extend(mono - (now - at) for at in outbox.sends_since(d.store, self.name,
                                                                                  now - WINDOW_SECONDS))
            self._tests_seen = dict(outbox.test_sends_since(d.store, self.name, now - WINDOW_SECONDS))
        for row in outbox.sent_since(d.store, self.name, now - max(window, WINDOW_SECONDS)):
            at = mono - (now - row.sent_at)  # the same moment on the monotonic clock
            if row.sent_at >= now - WINDOW_SECONDS:
                if not shared:
                    self.sent_times.append(at)
                if row.kind == "digest":
                    self.last_digest, self.storm_until = at, at + WINDOW_SECONDS
            if row.fingerprint:
                self.recent[same_error(row)] = at

    def _delivering(self, now):
        """Whether this daemon delivers the channel now. Several daemons on one database take turns by a lock
        (``members``); the one that takes it over starts from what the database says the channel did."""
        members = self.dispatcher.members
        holds = members.holds_channel(self.name)
        if holds and not self._holding and members.shared:
            self._take_over(now)
        self._holding = holds
        return holds

    def _take_over(self, now):
        """Forget what this lane knew and read the channel's recent past: sends (any daemon's, a crashed one's
        too), repeats, digests."""
        self.sent_times.clear()
        self.recent.clear()
        self.last_digest = self.storm_until = NEVER
        self._offset = self._last_pass = None
        self._load_history(now)
        # A daemon whose session the server ended may have sent rows it could not mark yet: it marks them as soon
        # as it reaches the database again, before this lane reads what is due. Not at start (nothing to wait
        # for that a start would not wait for anyway), nor for the log channel (a line twice harms no one).
        mono = self.dispatcher.monotonic()
        if self.name != LOG_CHANNEL and mono - self._started_at > TAKEOVER_PAUSE_SECONDS:
            self.paused_until = mono + TAKEOVER_PAUSE_SECONDS
        log.info("channel %s: delivered by this daemon from now on", self.name)

    def process(self):
        """One pass; returns seconds until this lane has something to do again."""
        d = self.dispatcher
        snapshot = d.config()
        channel = snapshot.channels.get(self.name)
        self._send_direct(channel)
        if self.unrecorded:
            self._record_unrecorded()
        now, mono = d.clock.now(), d.monotonic()
        if not self._delivering(now):
            return IDLE_SECONDS
        self._follow_wall_jump(now, mono)
        self._expire(now, snapshot.notify.max_retry_hours * 3600)
        if channel is None:
            return self._wait_for_channel(snapshot.notify.max_retry_hours)
        self._unconfigured_said = False
        if not d.settings.notification_enabled and self.name != LOG_CHANNEL:
            self._suppress_all()
            return IDLE_SECONDS
        if self.misconfigured and self.misconfigured[0] is channel:
            return IDLE_SECONDS
        self.misconfigured = None
        if mono < self.paused_until:
            return self.paused_until - mono
        rows = self._due_rows(now, BATCH)
        if not rows:
            return IDLE_SECONDS
        if channel.rate_per_minute is None:
            return self._send_each(channel, [[row] for row in rows])
        return self._shape(channel, rows, now, mono, snapshot)

    def _due_rows(self, now, limit=None):
        return outbox.due_rows(self.dispatcher.store, self.name, now, limit)

    def _waiting_rows(self):
        """Every pending row of this channel, held repeats included: what a digest stands for."""
        return outbox.waiting_rows(self.dispatcher.store, self.name)

    def _write(self, ids, **fields):
        """Update rows by id in one transaction (a full disk comes out as StoreFullError)."""
        with self.dispatcher.store.transaction():
            outbox.update_rows(self.dispatcher.store, ids, **fields)

    # -- shaping ------------------------------------------------------------

    def _shape(self, channel, rows, now, mono, snapshot):
        """Send within the budget: one by one (same errors as "×N"), or everything waiting as one digest."""
        notify = snapshot.notify
        groups, held = self._hold_repeats(rows, mono, notify.dedup_window_seconds)
        room = self._room(channel, mono)
        storm = mono < self.storm_until
        slot = self.last_digest + notify.digest_interval_seconds
        if len(groups) <= room and not (storm and held):
            self._postpone(held, now, mono, None)
            if len(rows) >= BATCH:  # the pass read only part of what waits: a repeat's count must be whole
                groups = self._whole(groups)
            return self._send_each(channel, groups) if groups else IDLE_SECONDS
        if room <= 0 or mono < slot:
            self._postpone(held, now, mono, slot if storm else None)
            window_wait = self.sent_times[0] + WINDOW_SECONDS - mono if room <= 0 else 0.0
            return max(slot - mono, window_wait)
        if len(groups) > room:
            self.storm_until = mono + WINDOW_SECONDS
        self.last_digest = mono
        waiting = self._waiting_rows()  # everything waiting, held repeats too, not just this pass's batch
        digest = self.dispatcher.make_digest(self.name, waiting, now, snapshot)
        return self._send_each(channel, [[digest]], stands_for=waiting)

    def _hold_repeats(self, rows, mono, window):
        """(groups of same-error rows, {release time: rows held}) for errors sent within the dedup window."""
        groups, held = {}, {}
        for row in rows:
            key = hold_key(row)
            last = self.recent.get(key) if key else None
            if last is not None and mono - last < window:
                held.setdefault(last + window, []).append(row.id)
                continue
            groups.setdefault(key or row.id, []).append(row)
        return list(groups.values()), held

    def _whole(self, groups):
        """Each same-error group with every row of that error waiting, not only those this pass read (BATCH):
        a storm's repeats go out as one message with their true count, none held for another window."""
        store = self.dispatcher.store
        return [(outbox.waiting_repeats(store, self.name, hold_key(group[0]), REPEATABLE_KINDS) or group)
                if hold_key(group[0]) else group for group in groups]

    def _postpone(self, held, now, mono, slot):
        """Hold rows until their dedup window ends, or in a storm only until the next digest ``slot``."""
        for until, ids in held.items():
            until = until if slot is None else min(until, slot)
            self._write(ids, next_attempt_at=now + max(0.0, until - mono))

    def _room(self, channel, mono):
        """How many messages the channel's rate allows right now."""
        self._count_test_sends(mono)
        while self.sent_times and self.sent_times[0] <= mono - WINDOW_SECONDS:
            self.sent_times.popleft()
        return max(1, int(channel.rate_per_minute)) - len(self.sent_times)

    def _count_test_sends(self, mono):
        """``failured notify-test``'s messages (the command records each) join the rate window once seen: the robot
        counts them too, and a robot sent over its 20 a minute blocks for 10 minutes."""
        now = self.dispatcher.clock.now()
        try:
            tests = outbox.test_sends_since(self.dispatcher.store, self.name, now - WINDOW_SECONDS)
        except Exception as exc:  # a direct alert goes out when the database cannot be read too (it is why it exists)
            log.debug("channel %s: notify-test messages not read: %s", self.name, exc)
            return
        seen = {}
        for send_id, at in tests:
            seen[send_id] = at
            if send_id not in self._tests_seen:
                bisect.insort(self.sent_times, mono - (now - at))
        self._tests_seen = seen

    # -- sending ------------------------------------------------------------

    def _send_each(self, channel, groups, stands_for=None):
        """Send one message per group (a group of same-error rows becomes one "×N" message).

        ``stands_for``: the rows a digest replaces, for the latency figures.
        """
        d = self.dispatcher
        sent, covered = [], []
        now = d.clock.now()
        for group in groups:
            send_id = None
            try:
                row = group[0] if len(group) == 1 else d.make_repeat(self.name, group, now)
                if channel.rate_per_minute is not None and d.members.shared:
                    send_id = self._record_send(row, now)
            except StoreError:
                self._sent(sent, covered, now)  # what already went out must not go out again
                raise
            if not d.members.still_holds(self.name):  # another daemon delivers the channel now
                self._holding = False
                self._sent(sent, covered, now)
                return IDLE_SECONDS
            result = channel.send(d.message_for(row))
            now, mono = d.clock.now(), d.monotonic()
            if send_id is not None:
                self._send_ended(send_id, now)
            if not result.ok and _only_this_message(result):
                self._sent(sent, covered, now)  # recorded first: what went out must not go out again
                sent, covered = [], []
                self._set_aside(channel, row, result, now, mono)
                continue
            if not result.ok:
                self._sent(sent, covered, now)
                return self._failed_send(channel, row, result, now, mono)
            if result.error:  # sent, but part of it was not (WeCom's @mention message): said, not dropped silently
                self._note_partly_sent(row, result.error)
            sent.append(row.id)
            covered.extend(stands_for or group)
            self._remember(channel, row, mono)
            self._deliveries += 1
            self._refused_after.pop(row.id, None)
            self.health.record(True, None, now, mono)
            if result.retry_after:  # sent, but the robot throttles its follow-up: the next would be refused too
                self.paused_until = mono + result.retry_after
                break
        self._sent(sent, covered, now)
        return max(0.0, self.paused_until - self.dispatcher.monotonic())

    def _note_partly_sent(self, row, error):
        error = mask(error, self.dispatcher.secrets())
        log.warning("channel %s: notification %s %s", self.name, row.id, error)
        try:
            self._write([row.id], last_error=error)
        except Exception as exc:  # the log line stays; never a reason to lose the fact that it was sent
            log.debug("channel %s: note on notification %s not recorded: %s", self.name, row.id, exc)

    def _sent(self, ids, covered, now):
        if not ids:
            return
        try:
            self._write(ids, status=SENT, sent_at=now)
        except Exception:
            # Sent, but not recorded (a full disk, a lost session): remember it, or the next pass would send it again.
            self.unrecorded.update((row_id, now) for row_id in ids)
            raise
        metrics = self.dispatcher.metrics
        metrics.notifications.labels(self.name, SENT).inc(len(ids))
        for row in covered:  # from each notification's creation to the message that carried it
            metrics.notify_latency.labels(self.name).observe(max(0.0, now - row.created_at))

    def _record_unrecorded(self):
        """Mark as sent what was sent while the disk was full; raises StoreFullError while it still is."""
        by_time = {}
        for row_id, at in self.unrecorded.items():
            by_time.setdefault(at, []).append(row_id)
        for at, ids in by_time.items():
            self._write(ids, status=SENT, sent_at=at)
            for row_id in ids:
                del self.unrecorded[row_id]
            self.dispatcher.metrics.notifications.labels(self.name, SENT).inc(len(ids))

    def _record_send(self, row, now):
        """Write the send into the shared window before it goes out (a crash after the send still counts it);
        returns the record's id."""
        store = self.dispatcher.store
        send_id = outbox.record_send(store, self.name, now, row.id)
        if now - self._sends_pruned >= WINDOW_SECONDS:
            outbox.forget_sends(store, self.name, now - 2 * WINDOW_SECONDS)
            self._sends_pruned = now
        return send_id

    def _send_ended(self, send_id, now):
        """Move the record to the send's end (the robot counted it in between): the window errs on the safe side."""
        try:
            outbox.send_ended(self.dispatcher.store, send_id, now)
        except Exception as exc:  # the start time stays (a lost session too): never a reason to send anything again
            log.debug("channel %s: send end not recorded: %s", self.name, exc)

    def _remember(self, channel, row, mono):
        if channel.rate_per_minute is not None:
            self.sent_times.append(mono)
        if row.fingerprint:  # a task notice, or the "×N" message standing for several
            self.recent[same_error(row)] = mono

    def _set_aside(self, channel, row, result, now, mono):
        """The channel refused this one message: retry it alone on its own backoff while the channel goes on
        with the others; after MESSAGE_ATTEMPTS tries it fails and the admins hear (Dispatcher.give_up)."""
        d = self.dispatcher
        error = mask(result.error or "send failed", d.secrets())
        if channel.rate_per_minute is not None:
            self.sent_times.append(mono)  # the receiver counted the request, refused or not
        attempts = row.attempts + 1
        refused_after = self._refused_after.setdefault(row.id, self._first_refusal_baseline(row))
        self.health.record(False, error, now, mono)
        if attempts >= MESSAGE_ATTEMPTS and (self._deliveries > refused_after or row.kind == UNDELIVERABLE_KIND):
            self._refused_after.pop(row.id, None)
            d.give_up(self.name, channel, row, error, attempts, now)
            return
        # Not given up while nothing else got through since its first refusal: the same refusal of every
        # message (a revoked token answered 403, a gateway that raises on every call) is the channel's, and
        # its rows wait, each on its own backoff, as they would behind a paused channel. A notice that a
        # message was given up carries that message's text: it ends as its message did.
        wait = backoff(attempts, d.config().notify.retry_backoff_seconds)
        self._write([row.id], attempts=attempts, next_attempt_at=now + wait, last_error=error)
        log.warning("channel %s: notification %s refused on its own (try %d of %d, next in %gs); the others go on: "
                    "%s", self.name, row.id, attempts, MESSAGE_ATTEMPTS, wait, error)

    def _first_refusal_baseline(self, row):
        """The deliveries count the channel had when it first refused ``row``: now, unless it was refused before this
        daemon started; then one less if the channel took a message since the row was made (the database says so
        across a restart, which would otherwise wait for a new message before giving it up)."""
        if row.attempts and outbox.sent_any_since(self.dispatcher.store, self.name, row.created_at):
            return self._deliveries - 1
        return self._deliveries

    def _failed_send(self, channel, row, result, now, mono):
        """The channel failed as a whole (down, 5xx, throttled, rejected): it pauses, this row first when
        it resumes."""
        d = self.dispatcher
        error = mask(result.error or "send failed", d.secrets())
        if result.retry_after:
            # Throttled by the robot itself: wait it out; neither the row's failure nor the channel's.
            self.paused_until = mono + result.retry_after
            self._write([row.id], next_attempt_at=now + result.retry_after, last_error=error)
            log.warning("channel %s: throttled, waiting %gs: %s", self.name, result.retry_after, error)
            return result.retry_after
        if result.misconfigured:
            self.misconfigured = (channel, error)
            self.health.pause(error, result.advice, now, mono)
            self._write([row.id], last_error=error)
            d.alert_misconfigured(self.name, channel, error, now, result.advice)
            return IDLE_SECONDS
        self.health.record(False, error, now, mono)
        attempts = row.attempts + 1
        wait = backoff(attempts, d.config().notify.retry_backoff_seconds)
        self.paused_until = mono + wait  # a down server is not hammered once per row
        self._write([row.id], attempts=attempts, next_attempt_at=now + wait, last_error=error)
        log.warning("channel %s: notification %s not sent (try %d, next in %gs): %s",
                    self.name, row.id, attempts, wait, error)
        return wait

    def _send_direct(self, channel):
        """Send the direct alerts waiting in memory, within the rate; no database involved."""
        d = self.dispatcher
        while not self.direct.empty():
            if channel is None or (self.misconfigured and self.misconfigured[0] is channel):
                self.direct.get_nowait()  # this channel cannot deliver: the other admin channels carry it
                continue
            mono = d.monotonic()
            if channel.rate_per_minute is not None and self._room(channel, mono) <= 0:
                return  # stays queued until the window has room
            message = self.direct.get_nowait()
            result = channel.send(message)
            if channel.rate_per_minute is not None:
                self.sent_times.append(d.monotonic())
            if result.ok:
                log.info("channel %s: direct alert sent: %s", self.name, message.title)
            else:
                log.error("channel %s: direct alert not sent: %s", self.name, mask(result.error, d.secrets()))
            self.health.record(result.ok, mask(result.error, d.secrets()), d.clock.now(), d.monotonic())

    # -- wall-clock jumps -------------------------------------------------------

    def _follow_wall_jump(self, now, mono):
        """Move the rows this lane postponed by as much as the wall clock jumped, so their wait stays the same.

        Rows written after the jump (by intake) already carry the new wall time and stay as they are.
        """
        offset, before, last_pass = now - mono, self._offset, self._last_pass
        self._offset, self._last_pass = offset, now
        if before is None or abs(offset - before) < JUMP_SECONDS:
            return
        jump = offset - before
        moved = {}  # rows that were postponed (in the future) at the last pass
        for row_id, due in outbox.postponed_rows(self.dispatcher.store, self.name, last_pass, last_pass):
            moved.setdefault(due + jump, []).append(row_id)
        for when, ids in moved.items():
            self._write(ids, next_attempt_at=when)
        log.warning("channel %s: the wall clock jumped %+.0fs; %d postponed notifications keep their wait",
                    self.name, jump, sum(len(ids) for ids in moved.values()))

    # -- end states -----------------------------------------------------------

    def _expire(self, now, horizon):
        failed = self.dispatcher.metrics.notifications.labels(self.name, FAILED)
        store = self.dispatcher.store
        with store.transaction():
            count = outbox.expire_pending(store, self.name, now - horizon, f" (gave up after {horizon / 3600:g} h)",
                                          f"not delivered within {horizon / 3600:g} h")
        failed.inc(count)

    def _suppress_all(self):
        store = self.dispatcher.store
        with store.transaction():
            count = outbox.end_pending(store, self.name, SUPPRESSED, "FAILURE_NOTIFICATION_ENABLED=false")
        self.dispatcher.metrics.notifications.labels(self.name, SUPPRESSED).inc(count)

    def _wait_for_channel(self, hours):
        """The channel was taken out of the configuration (renamed, or gone for a moment): its rows wait for it, as
        for a channel that is down, until the retry horizon; the admins hear once per absence."""
        waiting = outbox.pending_count(self.dispatcher.store, self.name)
        if not waiting:
            self.health.forget()
        elif not self._unconfigured_said:
            self._unconfigured_said = True
            log.warning("channel %s is no longer configured: %d notifications wait for it (up to %g h)", self.name,
                        waiting, hours)
            self.dispatcher.alert_direct(*messages.unconfigured_message(self.dispatcher.settings.lang, self.name,
                                                                        waiting, hours))
        return IDLE_SECONDS
