"""Delivers the outbox: one lane (thread) per channel, never over its rate, nothing dropped.

The dispatcher owns the set of lanes (started for every configured channel and
for channels with pending rows since removed), builds the messages lanes send
(every known secret masked), merges rows into "×N" repeats and digests, and
alerts the admins about rejected channels — or, when the database cannot be
written, directly through the admin channels (``alert_direct``).
"""

import logging
import threading
import time

from ..alertlog import append_line
from ..clock import SystemClock
from ..members import SoloMembership
from ..metrics import Metrics
from ..secrets import known_secrets
from ..store import outbox as outbox_rows
from . import messages
from .channels import Message, masked_message, secret_values
from .health import DEFAULT_ADVICE
from .lane import Lane
from .outbox import FAILED, MERGED, UNDELIVERABLE_KIND, about_channel, enqueue, notice_fields
from .routing import channels_for

log = logging.getLogger("failured.notify")

DIRECT_KIND = "alert"


def monotonic_source(clock):
    """The clock's monotonic seconds: its own ``monotonic()`` when it has one; the system's for the
    system clock; a manual clock's ``now`` otherwise (it only moves when a test moves it)."""
    own = getattr(clock, "monotonic", None)
    if own is not None:
        return own
    return time.monotonic if isinstance(clock, SystemClock) else clock.now


def _late_since(row):
    """Since when ``row`` could have gone out (as ``outbox.oldest_deliverable`` counts): its creation once it was
    tried, else the end of the hold or slot it waited for. A row merging others carries the earliest, so an outage
    that merges digest into digest still shows how late the first notification is."""
    return row.created_at if row.last_error else row.next_attempt_at


class Dispatcher:
    """Starts a lane per configured channel (and for rows of channels since removed)."""

    def __init__(self, store, settings, clock, config, metrics=None, members=None):
        self.store = store
        # Which daemon delivers which channel (several daemons on PostgreSQL); alone, this one delivers all.
        self.members = members or SoloMembership()
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic_source(clock)
        self.config = config
        # Shared between the watcher (sync_lanes), the main thread (alive, stop, alert_direct),
        # intake (wake) and the lane threads (alerts): every access below goes through _lock.
        self._lock = threading.Lock()
        self._lanes = {}
        self._stopped = False
        self._alerted = {}  # channel name -> the channel object already alerted about as misconfigured
        self._direct_sent = {}  # direct alert title -> monotonic time it was last handed to the lanes

    @property
    def lanes(self):
        """A copy of {channel name: Lane}: safe to iterate while lanes are added."""
        with self._lock:
            return dict(self._lanes)

    def start(self):
        self.sync_lanes()
        return self

    def sync_lanes(self):
        """Lanes for every configured channel and every channel with pending rows."""
        names = set(self.config().channels)
        names |= outbox_rows.channels_with_pending(self.store)
        now = self.clock.now()
        with self._lock:
            if self._stopped:  # a reload racing the stop must not start lanes nobody joins
                return
            for name in sorted(names - set(self._lanes)):
                lane = Lane(name, self)
                lane.start(now)  # started before it is visible: alive() never sees a lane without a thread
                self._lanes[name] = lane

    def wake(self):
        for lane in self.lanes.values():
            lane.wake.set()

    def alive(self):
        return all(lane.alive() for lane in self.lanes.values())

    def stop(self):
        with self._lock:
            self._stopped = True
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stopping = True
            lane.wake.set()
        for lane in lanes:
            lane.thread.join(timeout=10)

    def secrets(self):
        """Every secret value known now: the config's, the channels' (resolved now) and the API token."""
        snapshot = self.config()
        # The channels' values are resolved again: a rotated secret is masked from its first use.
        return list(dict.fromkeys([*known_secrets(snapshot, self.settings), *secret_values(snapshot.channels.values())]))

    def message_for(self, row):
        """The Message a channel sends for an outbox row, with every known secret masked."""
        return self.masked(Message(title=row.title, body=row.body, audience=row.audience, kind=row.kind,
                                   record=notice_fields(row)))

    def masked(self, message):
        return masked_message(message, self.secrets())

    def make_repeat(self, channel_name, rows, now):
        """One "same error ×N" row standing for ``rows``, which become merged into it."""
        window = self.config().notify.dedup_window_seconds
        return self._merge(channel_name, rows, now, "repeat", rows[0].fingerprint,
                           lambda row_id: messages.repeat_message(self.settings.lang, rows, window))

    def make_digest(self, channel_name, rows, now, snapshot):
        """One digest row standing for everything waiting on this channel.

        An unsent digest or "×N" row among them (the channel could not send it) is not one notification: the
        rows it stands for are counted, and merged into the new digest directly, so that its query lists every
        one. During a ten-minute outage each digest had swallowed the one before: "479 notifications" stood
        for 6,723 and a configuration alert."""
        lang = self.settings.lang

        def label(name):  # a category taken out of the configuration keeps its name
            category = snapshot.ruleset.category(name)
            return category.label_in(lang) if category is not None else name

        with self.store.transaction():
            carried, containers = outbox_rows.merged_under(
                self.store, [row.id for row in rows if row.kind in outbox_rows.MERGING_KINDS])
            leaves = [row for row in rows if row.kind not in outbox_rows.MERGING_KINDS] + carried
            return self._merge(channel_name, rows, now, "digest", None, lambda row_id: messages.digest_message(
                lang, leaves or rows, snapshot.notify.digest_entries, str(self.store), row_id, label),
                also=[row.id for row in carried] + containers)

    def _merge(self, channel_name, merged, now, kind, fingerprint, text, also=()):
        """A ``kind`` row standing for ``merged`` (and ``also``, ids of rows merged before into one of them)."""
        first = merged[0]
        same = kind == "repeat"
        with self.store.transaction():
            row = outbox_rows.merge_rows(self.store, [row.id for row in merged] + list(also), now, channel_name,
                                         first.audience, kind, first.category if same else None,
                                         first.task_type if same else None, fingerprint, text,
                                         min([now] + [_late_since(row) for row in merged]))
        self.metrics.notifications.labels(channel_name, MERGED).inc(len(merged))
        return row

    def alert_misconfigured(self, name, channel, error, now, advice=None):
        """Tell the admins once per channel configuration that a channel cannot send as configured (the receiver
        refused its credentials, or a variable it names is not set).

        A line of ``admin_alerts.log`` in the log channel's format (kind, audience, title, body), written
        directly: the channel's own rows wait, and the alert must not depend on any channel."""
        with self._lock:  # lanes call this concurrently; exactly one alert per (name, channel object)
            if self._alerted.get(name) is channel:
                return
            self._alerted[name] = channel  # the object itself, not id(): a freed id can be reused
        advice = advice or DEFAULT_ADVICE
        log.error("channel %s (%s) is paused until its config changes: %s; %s",
                  name, channel.describe(), error, advice)
        title, body = messages.paused_message(self.settings.lang, name, channel.describe(), error, advice)
        try:
            append_line(self.settings.log_dir, "admin", {
                "kind": "channel_misconfigured", "audience": "admin", "title": title, "body": body,
                "channel": name, "describe": channel.describe(), "error": error,
                "advice": messages.advice_in(self.settings.lang, advice),
                "message": f"channel {name} is paused until its configuration changes",
            }, now)
        except OSError as exc:
            log.error("cannot write the admin alert log: %s", exc)

    def give_up(self, name, channel, row, error, attempts, now):
        """``row`` was refused by channel ``name`` on its own ``attempts`` times: it fails, and in the same
        transaction one admin notice says so (through the admin routes and the log channel). Never for such
        a notice itself: it could be refused the same way, and each would beget the next."""
        snapshot = self.config()
        reason = f"{error} (refused on its own {attempts} times; the channel went on with the others)"
        with self.store.transaction():
            outbox_rows.update_rows(self.store, [row.id], status=FAILED, attempts=attempts, last_error=reason)
            if row.kind != UNDELIVERABLE_KIND:
                title, body = messages.undeliverable_message(self.settings.lang, name, channel.describe(), row, error,
                                                             attempts)
                enqueue(self.store, snapshot, now, "admin", UNDELIVERABLE_KIND, title, body,
                        fingerprint=about_channel(name))
        self.metrics.notifications.labels(name, FAILED).inc()
        log.error("channel %s: notification %s given up after %d tries (refused on its own): %s", name, row.id,
                  attempts, error)
        self.wake()

    def alert_direct(self, title, body, kind=DIRECT_KIND):
        """Alert the admins without writing the database (for when it cannot be written: disk full).

        Hands one message to the lane of every channel the routes give the admins (``log``
        included); each lane sends it on its next pass within its rate, skipping a channel
        that rejected our messages. The same title is handed over once per dedup window.
        Never raises; returns the names of the channels it was handed to.
        """
        try:
            snapshot = self.config()
            mono = self.monotonic()
            with self._lock:
                last = self._direct_sent.get(title)
                if last is not None and mono - last < snapshot.notify.dedup_window_seconds:
                    return []
                self._direct_sent[title] = mono
                lanes = dict(self._lanes)
            message = self.masked(Message(title, body, "admin", kind, {}))
            names = [name for name in channels_for(snapshot.routes, "admin") if name in lanes]
            for name in names:
                lanes[name].hand(message)
            return names
        except Exception:  # the caller is already handling a failure: never add one
            log.exception("direct alert %r not handed to the channels", title)
            return []
