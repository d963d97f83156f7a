"""The spec's alert thresholds and health check, evaluated in SQL over a recent window.

A rate with nothing to divide by is "unknown", never a fake 0 % or 100 %.
"""

from dataclasses import asdict, dataclass

from .notify import messages
from .notify.outbox import about_channel, enqueue
from .states import TaskStatus
from .store import aggregates
from .store import outbox as outbox_rows
from .store.members import swap_state

RECOVERABLE_PREFIX = "recoverable_"
UNKNOWN = "unknown"
# A recoverable task's retries are over once it reaches one of these.
ENDED = (TaskStatus.RECOVERED, TaskStatus.EXHAUSTED, TaskStatus.NOTIFIED, TaskStatus.MANUAL, TaskStatus.RESOLVED)
KEYED_BY_CHANNEL = ("notification_delay_minutes",)  # the other checks' keys are task types, or "all"


@dataclass(frozen=True)
class Thresholds:
    failure_rate_percent: float = 20.0  # failures / (failures + successes) per task type
    consecutive_recovery_failures: int = 5  # failed retries in a row, per task type
    notification_delay_minutes: float = 10.0  # longest wait of a notification that could have gone out
    unknown_errors: int = 10  # unknown failures in the window
    recovery_rate_percent: float = 80.0  # health check: recovered / finished recoverable
    recent_failures: int = 50  # health check: failures in the window
    window_minutes: float = 60.0  # the window, and how often one breach may alert again


@dataclass(frozen=True)
class Check:
    name: str
    key: str  # task type, channel or "all"
    value: object  # a number, or "unknown"
    limit: float
    breached: bool

    def to_dict(self):
        return asdict(self)


def percent(part, whole):
    """``part`` of ``whole`` in percent to one decimal, or "unknown" when there is nothing to divide by."""
    return round(100.0 * part / whole, 1) if whole else UNKNOWN


@dataclass(frozen=True)
class Recovery:
    """Recoverable tasks whose retries ended in a period, and how many of them recovered."""

    recovered: int = 0
    finished: int = 0
    retries: int = 0  # the retries the recovered tasks took

    @property
    def rate_percent(self):
        return percent(self.recovered, self.finished)

    def __add__(self, other):
        return Recovery(self.recovered + other.recovered, self.finished + other.finished,
                        self.retries + other.retries)


def recovery_by_category(store, start, end=None):
    """The one definition of the recovery rate, per recoverable category, over ``[start, end)`` (epochs).

    Counted: recoverable tasks that ran at least one retry and whose retries
    ended in the period (by ``finished_at``), recovered or not. A task that
    never ran a retry (``manual``: no handler) is not a failed recovery.
    """
    rows = aggregates.recovery_rows(store, start, end, RECOVERABLE_PREFIX, ENDED)
    return {category: Recovery(recovered, finished, retries or 0) for category, recovered, finished, retries in rows}


def recovery_total(by_category):
    """All categories' recoveries together."""
    return sum(by_category.values(), Recovery())


def recovery_below_target(rate, limits):
    """True when a known recovery rate is under the health-check target ("unknown" never is)."""
    return rate != UNKNOWN and rate < limits.recovery_rate_percent


def evaluate(store, now, limits):
    """Every threshold's current value against its limit."""
    since = now - limits.window_minutes * 60
    checks = []
    failures = aggregates.failures_by_task_type(store, since)
    successes = aggregates.successes_by_task_type(store, since)
    for task_type, failed in sorted(failures.items()):
        ok = successes.get(task_type)
        rate = UNKNOWN if ok is None else percent(failed, failed + ok)
        checks.append(Check("failure_rate_percent", task_type, rate, limits.failure_rate_percent,
                            rate != UNKNOWN and rate > limits.failure_rate_percent))
    for task_type, streak in aggregates.breaker_streaks(store):
        checks.append(Check("consecutive_recovery_failures", task_type, streak, limits.consecutive_recovery_failures,
                            streak >= limits.consecutive_recovery_failures))
    # A repeat held back on purpose by the dedup window is not late: a channel's delay runs from when a
    # notification could first go out, so it measures a channel that cannot deliver (or keep up), not a hold.
    for channel, oldest in outbox_rows.oldest_deliverable(store, now):
        minutes = round((now - oldest) / 60, 1)
        checks.append(Check("notification_delay_minutes", channel or "-", minutes, limits.notification_delay_minutes,
                            minutes > limits.notification_delay_minutes))
    unknown = aggregates.unknown_count(store, since)
    checks.append(Check("unknown_errors", "all", unknown, limits.unknown_errors, unknown > limits.unknown_errors))
    rate = recovery_total(recovery_by_category(store, since)).rate_percent
    checks.append(Check("recovery_rate_percent", "all", rate, limits.recovery_rate_percent,
                        recovery_below_target(rate, limits)))
    recent = sum(failures.values())
    checks.append(Check("recent_failures", "all", recent, limits.recent_failures, recent > limits.recent_failures))
    return checks


def alert_breaches(store, snapshot, now, lang):
    """Queue one admin notification per breached threshold and key, at most once per window."""
    limits = snapshot.thresholds
    alerted = []
    for check in evaluate(store, now, limits):
        if not check.breached:
            continue
        state_key = f"threshold:{check.name}:{check.key}"
        last = store.get_state(state_key)
        if last is not None and now - float(last) < limits.window_minutes * 60:
            continue
        title, body = messages.threshold_message(lang, check, limits.window_minutes)
        with store.transaction():
            if not swap_state(store, state_key, last, f"{now:.3f}", now):
                continue  # another daemon (the lead was moving) alerted this breach just now
            enqueue(store, snapshot, now, "admin", "threshold", title, body, **_subject(check))
        alerted.append(check)
    return alerted


def _subject(check):
    """What a breach's alert is about, as the outbox keeps it: a task type (which routes match on), or a channel."""
    if check.key in ("all", "-"):
        return {}
    if check.name in KEYED_BY_CHANNEL:
        return {"fingerprint": about_channel(check.key)}
    return {"task_type": check.key}
