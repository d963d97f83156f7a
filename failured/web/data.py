"""What each console page shows, gathered from the store and the live configuration as plain data."""

import time

from .. import store as store_module
from ..store import aggregates
from ..suggest import suggest
from ..thresholds import RECOVERABLE_PREFIX, Recovery, recovery_total

HOUR, DAY = 3600, 86400
UNKNOWN_TEMPLATES = 20
OTHER_SAMPLES = 1000  # classified messages a suggested pattern must not match


def periods(now, count, seconds, width):
    """The last ``count`` period names (oldest first) as the store groups them: 'YYYY-MM-DD HH' or 'YYYY-MM-DD'."""
    fmt = "%Y-%m-%d %H" if width == 13 else "%Y-%m-%d"
    start = now - now % seconds - (count - 1) * seconds
    return [time.strftime(fmt, time.gmtime(start + i * seconds)) for i in range(count)], start


def failure_series(store, now, count, seconds, width):
    """report_html's daily_failures shape for the last ``count`` hours or days."""
    names, start = periods(now, count, seconds, width)
    found = {}
    for period, category, n in store_module.failures_by_period(start, width, store=store):
        found.setdefault(period, {})[category] = n
    return [{"date": name, "total": sum(found.get(name, {}).values()), "by_category": dict(sorted(found.get(name, {}).items()))}
            for name in names]


def recovery_rate(store, now, days=7):
    """The recovery rate over retries that ended in the last ``days`` (from the hour that began
    ``days`` ago), read from the recovery counters; None when none ended."""
    start_hour = time.strftime("%Y-%m-%d %H", time.gmtime(now - days * DAY))
    rows = aggregates.recoveries_since(store, start_hour, RECOVERABLE_PREFIX)
    by_category = {category: Recovery(recovered, ended, retries or 0) for category, recovered, ended, retries in rows}
    return recovery_total(by_category).rate_percent


def unknown_templates(store, now, days):
    """The most frequent unknown templates of the last ``days``: count, samples and a verified pattern."""
    start = now - days * DAY
    groups = store_module.unknown_groups(start, UNKNOWN_TEMPLATES, store=store)
    if not groups:
        return []
    others = [row[3] for row in store_module.recent_messages(start, False, OTHER_SAMPLES, store=store)]
    found = []
    for fingerprint, count, newest in groups:
        template, samples = store_module.fingerprint_samples(fingerprint, store=store)
        pattern, verified = suggest(template or "", samples, others) if template else (None, False)
        found.append({"fingerprint": fingerprint, "count": count, "newest": newest, "template": template,
                      "samples": samples, "pattern": pattern, "verified": verified})
    return found


def outbox_counts(store):
    """{channel: {status: count}} of the notification outbox."""
    counts = {}
    for name, status, n in store_module.outbox_counts(store):
        counts.setdefault(name or "-", {})[status] = n
    return counts


def outbox(store, channel=None):
    """The outbox counts and its failed and pending rows (newest first)."""
    return outbox_counts(store), store_module.outbox_rows(("failed", "pending"), channel, limit=100, store=store)
