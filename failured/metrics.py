"""Prometheus metrics: counters the daemon bumps as things happen, gauges read at scrape time.

Names follow Prometheus conventions: the ``failured_`` prefix, ``_total`` for
counters, seconds for times. Gauges that mirror the database (backlog, open
breakers) are collected on scrape, so they are true even after a restart.
Task types come from reporters, so at most MAX_TASK_TYPE_LABELS of them get a
label of their own; the rest are counted as ``other``.
"""

import threading

from .store import aggregates

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600)
MAX_TASK_TYPE_LABELS = 100
OTHER = "other"


class Metrics:
    """One registry per daemon (tests build their own)."""

    def __init__(self):
        # Imported here: a CLI call that never counts anything does not pay for prometheus_client.
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # *_created series only confuse a small server's dashboards
        self.registry = CollectorRegistry()
        r = self.registry
        self.failures = Counter("failured_failures_total", "Failures classified, by category and task type",
                                ["category", "task_type"], registry=r)
        self.unknown = Counter("failured_unknown_classifications_total", "Failures no pattern matched", registry=r)
        self.retries = Counter("failured_retries_total", "Retries run, by outcome (recovered, failed)",
                               ["outcome"], registry=r)
        self.recoveries = Counter("failured_recoveries_total", "Tasks recovered by a retry, by category",
                                  ["category"], registry=r)
        self.lateness = Histogram("failured_retry_lateness_seconds", "How late a retry started after its due time",
                                  buckets=LATENESS_BUCKETS, registry=r)
        self.notifications = Counter("failured_notifications_total", "Notification rows ended, by channel and state",
                                     ["channel", "state"], registry=r)
        self.notify_latency = Histogram("failured_notification_latency_seconds",
                                        "From a notification's creation to its delivery, by channel", ["channel"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.reloads = Counter("failured_config_reloads_total", "Config reloads, by result (applied, rejected)",
                               ["result"], registry=r)
        self.queue_depth = lambda: 0  # set by the daemon: retries waiting in the heap
        self.members = None  # set by the daemon: its Membership (several daemons on PostgreSQL)
        self._store = None
        self._clock = None
        self.task_types = TaskTypeLabels()
        # (metric, label values) -> its series: ``labels()`` takes a lock and checks its values each call,
        # and a flood counts per task. A series is never removed; the keys are bounded as the series are.
        self._series = {}
        r.register(_StoreCollector(self))

    def bind(self, store, queue_depth, clock):
        self._store, self.queue_depth, self._clock = store, queue_depth, clock
        self.task_types.seed(most_reported_task_types(store, MAX_TASK_TYPE_LABELS))

    def classified(self, category, task_type):
        self._series_of(self.failures, category, self.task_types.label(task_type)).inc()
        if category == "unknown":
            self.unknown.inc()

    def retry_ended(self, recovered):
        self._series_of(self.retries, "recovered" if recovered else "failed").inc()

    def recovered(self, category):
        self._series_of(self.recoveries, category or "unknown").inc()

    def _series_of(self, metric, *values):
        """``metric.labels(*values)``, kept (threads may both look one up: they get the same series)."""
        series = self._series.get((metric, values))
        if series is None:
            series = self._series[metric, values] = metric.labels(*values)
        return series

    def exposition(self):
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TaskTypeLabels:
    """Which task types get a label of their own: the first ``limit`` seen, the rest ``other``.

    A label once given is kept for the daemon's life, so every counter series only grows.
    Request and engine threads ask at once: the set has one lock.
    """

    def __init__(self, limit=MAX_TASK_TYPE_LABELS):
        self.limit = limit
        self._lock = threading.Lock()
        self._named = set()

    def seed(self, task_types):
        for task_type in task_types:
            self.label(task_type)

    def label(self, task_type):
        with self._lock:
            if task_type in self._named:
                return task_type
            if len(self._named) < self.limit and task_type != OTHER:
                self._named.add(task_type)
                return task_type
            return OTHER


def most_reported_task_types(store, limit):
    """The task types with the most tasks in the database: they keep their labels across a restart."""
    return aggregates.most_reported_task_types(store, limit)


class _StoreCollector:
    """Gauges read from the database at scrape time."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("failured_retry_queue_depth", "Retries waiting in the heap")
        depth.add_metric([], self.metrics.queue_depth())
        yield depth
        store = self.metrics._store
        if store is None:
            return
        backlog = GaugeMetricFamily("failured_notification_backlog", "Pending notification rows, by channel",
                                    labels=["channel"])
        oldest = GaugeMetricFamily("failured_notification_oldest_pending_seconds",
                                   "Age of the oldest pending notification, by channel", labels=["channel"])
        now = self.metrics._clock.now()
        for channel, count, first in aggregates.pending_notifications(store):
            backlog.add_metric([channel or "-"], count)
            oldest.add_metric([channel or "-"], max(0.0, now - first))
        yield backlog
        yield oldest
        breakers = GaugeMetricFamily("failured_breakers_open", "Task types whose circuit breaker is not closed")
        breakers.add_metric([], aggregates.breakers_open_count(store))
        yield breakers
        yield from _daemon_gauges(self.metrics.members)


def _daemon_gauges(members):
    """This daemon's lead, and the daemons sharing the database as the table says (PostgreSQL only)."""
    from prometheus_client.core import GaugeMetricFamily

    if members is None or not members.shared:
        return
    leader = GaugeMetricFamily("failured_daemon_leader", "1 when this daemon runs the scheduled jobs",
                               labels=["daemon"])
    leader.add_metric([members.name], 1 if members.is_leader() else 0)
    yield leader
    alive = GaugeMetricFamily("failured_daemons", "Daemons sharing the database, by state (alive, gone)",
                              labels=["state"])
    listed = members.members()
    alive.add_metric(["alive"], sum(1 for m in listed if m["alive"]))
    alive.add_metric(["gone"], sum(1 for m in listed if not m["alive"]))
    yield alive
