"""Delivers the outbox: one lane (thread) per channel, never over its rate, nothing dropped.

Per lane and pass: expire rows past the retry horizon; hold repeats of an
error already sent within the dedup window; group same-error rows into one
"×N" message; and when more is waiting than the channel's budget allows,
merge everything waiting into one digest — a chat group wants one summary of
a storm, not 20 messages a minute of it.
"""

import logging
import threading
from collections import deque

from ..alertlog import append_line
from ..metrics import Metrics
from ..store import Notification
from . import messages
from .channels import Message, mask, secret_values
from .outbox import FAILED, MERGED, PENDING, SENT, SUPPRESSED
from .routing import LOG_CHANNEL

log = logging.getLogger("failured.notify")

WINDOW_SECONDS = 60.0
BATCH = 2000
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 600.0
IDLE_SECONDS = 0.5


def backoff(attempts):
    """Seconds before the next try after ``attempts`` failed sends: 5, 10, 20 … capped at 10 minutes."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1))


def _update(ids, **fields):
    ids = list(ids)
    for start in range(0, len(ids), 500):
        Notification.update(**fields).where(Notification.id.in_(ids[start:start + 500])).execute()


class Lane:
    """Delivery state of one channel: its sliding 60 s window, pauses, dedup memory."""

    def __init__(self, name, dispatcher):
        self.name = name
        self.dispatcher = dispatcher
        self.sent_times = deque()
        self.recent = {}  # (fingerprint, task_type) -> when it was last sent
        self.paused_until = 0.0
        self.misconfigured = None  # (channel object, reason) until the config changes
        self.last_digest = 0.0
        self.wake = threading.Event()
        self.thread = None
        self.stopping = False

    # -- the loop ---------------------------------------------------------------

    def start(self, now):
        self._load_history(now)
        self.thread = threading.Thread(target=self._loop, name=f"notify-{self.name}", daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping:
            try:
                delay = self.process()
            except Exception:
                log.exception("channel %s: unexpected error in delivery; going on", self.name)
                delay = 1.0
            self.wake.wait(min(delay, IDLE_SECONDS))
            self.wake.clear()

    def _load_history(self, now):
        window = self.dispatcher.config().notify.dedup_window_seconds
        for row in (Notification.select(Notification.sent_at, Notification.fingerprint, Notification.task_type)
                    .where(Notification.channel == self.name, Notification.status == SENT,
                           Notification.sent_at >= now - max(window, WINDOW_SECONDS))
                    .order_by(Notification.sent_at)):
            if row.sent_at >= now - WINDOW_SECONDS:
                self.sent_times.append(row.sent_at)
            if row.fingerprint:
                self.recent[(row.fingerprint, row.task_type)] = row.sent_at

    def process(self):
        """One pass; returns seconds until this lane has something to do again."""
        d = self.dispatcher
        snapshot = d.config()
        now = d.clock.now()
        channel = snapshot.channels.get(self.name)
        if channel is None:
            self._fail_all(f"channel {self.name!r} is no longer configured")
            return IDLE_SECONDS
        self._expire(now, snapshot.notify.max_retry_hours * 3600)
        if not d.settings.notification_enabled and self.name != LOG_CHANNEL:
            self._suppress_all()
            return IDLE_SECONDS
        if self.misconfigured and self.misconfigured[0] is channel:
            return IDLE_SECONDS
        self.misconfigured = None
        if now < self.paused_until:
            return self.paused_until - now
        rows = self._due_rows(now, BATCH)
        if not rows:
            return IDLE_SECONDS
        if channel.rate_per_minute is None:
            return self._send_each(channel, [[row] for row in rows], now)
        groups = self._hold_repeats(rows, now, snapshot.notify.dedup_window_seconds)
        return self._send_within_budget(channel, groups, now, snapshot)

    def _due_rows(self, now, limit=None):
        query = (Notification.select().where(Notification.channel == self.name, Notification.status == PENDING,
                                             Notification.next_attempt_at <= now).order_by(Notification.id))
        return list(query.limit(limit) if limit else query)

    # -- shaping ------------------------------------------------------------

    def _hold_repeats(self, rows, now, window):
        """Group rows by error; postpone errors already sent within the dedup window."""
        groups, held = {}, {}
        for row in rows:
            key = (row.fingerprint, row.task_type) if row.fingerprint and row.kind in ("task", "exhausted") else row.id
            last = self.recent.get(key) if isinstance(key, tuple) else None
            if last is not None and now - last < window:
                held.setdefault(last + window, []).append(row.id)
                continue
            groups.setdefault(key, []).append(row)
        for until, ids in held.items():
            _update(ids, next_attempt_at=until)
        return list(groups.values())

    def _send_within_budget(self, channel, groups, now, snapshot):
        while self.sent_times and self.sent_times[0] <= now - WINDOW_SECONDS:
            self.sent_times.popleft()
        available = max(1, int(channel.rate_per_minute)) - len(self.sent_times)
        if available <= 0:
            return self.sent_times[0] + WINDOW_SECONDS - now
        if len(groups) <= available:
            return self._send_each(channel, groups, now)
        interval = snapshot.notify.digest_interval_seconds
        if now - self.last_digest < interval:
            return self.last_digest + interval - now
        self.last_digest = now
        rows = self._due_rows(now)  # everything waiting, not just this pass's batch
        digest = self.dispatcher.make_digest(self.name, rows, now, snapshot)
        return self._send_each(channel, [[digest]], now, stands_for=rows)

    # -- sending ------------------------------------------------------------

    def _send_each(self, channel, groups, now, stands_for=None):
        """Send one message per group (a group of same-error rows becomes one "×N" message).

        ``stands_for``: the rows a digest replaces, for the latency figures.
        """
        sent, covered = [], []
        for group in groups:
            row = group[0] if len(group) == 1 else self.dispatcher.make_repeat(self.name, group, now)
            result = channel.send(self.dispatcher.message_for(row))
            now = self.dispatcher.clock.now()
            if not result.ok:
                self._sent(sent, covered, now)
                return self._failed_send(channel, row, result, now)
            sent.append(row.id)
            covered.extend(stands_for or group)
            self._remember(channel, row, now)
        self._sent(sent, covered, now)
        return 0.0

    def _sent(self, ids, covered, now):
        if not ids:
            return
        _update(ids, status=SENT, sent_at=now)
        metrics = self.dispatcher.metrics
        metrics.notifications.labels(self.name, SENT).inc(len(ids))
        for row in covered:  # from each notification's creation to the message that carried it
            metrics.notify_latency.labels(self.name).observe(max(0.0, now - row.created_at))

    def _remember(self, channel, row, now):
        if channel.rate_per_minute is not None:
            self.sent_times.append(now)
        if row.fingerprint:
            self.recent[(row.fingerprint, row.task_type)] = now

    def _failed_send(self, channel, row, result, now):
        d = self.dispatcher
        error = mask(result.error or "send failed", d.secrets())
        if result.retry_after:
            # Throttled by the robot itself: wait it out, this is not the row's failure.
            self.paused_until = now + result.retry_after
            _update([row.id], next_attempt_at=self.paused_until, last_error=error)
            log.warning("channel %s: throttled, waiting %gs: %s", self.name, result.retry_after, error)
            return result.retry_after
        if result.misconfigured:
            self.misconfigured = (channel, error)
            _update([row.id], last_error=error)
            d.alert_misconfigured(self.name, channel, error, now)
            return IDLE_SECONDS
        attempts = row.attempts + 1
        wait = backoff(attempts)
        self.paused_until = now + wait  # a down server is not hammered once per row
        _update([row.id], attempts=attempts, next_attempt_at=now + wait, last_error=error)
        log.warning("channel %s: notification %s not sent (try %d, next in %gs): %s",
                    self.name, row.id, attempts, wait, error)
        return wait

    # -- end states -----------------------------------------------------------

    def _expire(self, now, horizon):
        failed = self.dispatcher.metrics.notifications.labels(self.name, FAILED)
        stale = (Notification.update(status=FAILED, last_error=Notification.last_error.concat(
                    f" (gave up after {horizon / 3600:g} h)"))
                 .where(Notification.channel == self.name, Notification.status == PENDING,
                        Notification.created_at < now - horizon, Notification.last_error.is_null(False)))
        failed.inc(stale.execute())
        failed.inc(Notification.update(status=FAILED, last_error=f"not delivered within {horizon / 3600:g} h")
                   .where(Notification.channel == self.name, Notification.status == PENDING,
                          Notification.created_at < now - horizon).execute())

    def _suppress_all(self):
        count = Notification.update(status=SUPPRESSED, last_error="FAILURE_NOTIFICATION_ENABLED=false").where(
            Notification.channel == self.name, Notification.status == PENDING).execute()
        self.dispatcher.metrics.notifications.labels(self.name, SUPPRESSED).inc(count)

    def _fail_all(self, reason):
        count = Notification.update(status=FAILED, last_error=reason).where(
            Notification.channel == self.name, Notification.status == PENDING).execute()
        self.dispatcher.metrics.notifications.labels(self.name, FAILED).inc(count)


class Dispatcher:
    """Starts a lane per configured channel (and for rows of channels since removed)."""

    def __init__(self, store, settings, clock, config, metrics=None):
        self.store = store
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.clock = clock
        self.config = config
        self.lanes = {}
        self._alerted = set()

    def start(self):
        self.sync_lanes()
        return self

    def sync_lanes(self):
        """Lanes for every configured channel and every channel with pending rows."""
        names = set(self.config().channels)
        names |= {row.channel for row in Notification.select(Notification.channel).distinct()
                  .where(Notification.status == PENDING) if row.channel}
        now = self.clock.now()
        for name in sorted(names - set(self.lanes)):
            lane = self.lanes[name] = Lane(name, self)
            lane.start(now)

    def wake(self):
        for lane in list(self.lanes.values()):
            lane.wake.set()

    def alive(self):
        return all(lane.thread.is_alive() for lane in self.lanes.values())

    def stop(self):
        for lane in self.lanes.values():
            lane.stopping = True
            lane.wake.set()
        for lane in self.lanes.values():
            lane.thread.join(timeout=10)

    def secrets(self):
        return secret_values(self.config().channels.values())

    def message_for(self, row):
        record = {"notification_id": row.id, "task_id": row.task_id, "category": row.category,
                  "task_type": row.task_type, "fingerprint": row.fingerprint}
        return Message(title=row.title, body=row.body, audience=row.audience, kind=row.kind, record=record)

    def make_repeat(self, channel_name, rows, now):
        """One "same error ×N" row standing for ``rows``, which become merged into it."""
        window = self.config().notify.dedup_window_seconds
        return self._merge(channel_name, rows, now, "repeat", rows[0].fingerprint,
                           lambda row_id: messages.repeat_message(self.settings.lang, rows, window))

    def make_digest(self, channel_name, rows, now, snapshot):
        """One digest row standing for everything waiting on this channel."""
        return self._merge(channel_name, rows, now, "digest", None, lambda row_id: messages.digest_message(
            self.settings.lang, rows, snapshot.notify.digest_entries, str(self.settings.db), row_id))

    def _merge(self, channel_name, rows, now, kind, fingerprint, text):
        first = rows[0]
        same = kind == "repeat"
        with self.store.transaction():
            row_id = Notification.insert(
                created_at=now, audience=first.audience, kind=kind, category=first.category if same else None,
                task_type=first.task_type if same else None, fingerprint=fingerprint, title="", body="",
                status=PENDING, channel=channel_name, next_attempt_at=now).execute()
            title, body = text(row_id)
            Notification.update(title=title, body=body).where(Notification.id == row_id).execute()
            _update([row.id for row in rows], status=MERGED, merged_into=row_id)
        self.metrics.notifications.labels(channel_name, MERGED).inc(len(rows))
        return Notification.get_by_id(row_id)

    def alert_misconfigured(self, name, channel, error, now):
        key = (name, id(channel))
        if key in self._alerted:
            return
        self._alerted.add(key)
        log.error("channel %s (%s) rejected our messages and is paused until its config changes: %s",
                  name, channel.describe(), error)
        append_line(self.settings.log_dir, "admin", {
            "kind": "channel_misconfigured", "channel": name, "describe": channel.describe(), "error": error,
            "message": f"channel {name} is paused until its configuration changes",
        }, now)
