"""Pure recovery policy: which retry policy applies, how long to wait, what happens next.

Nothing here touches the database or the clock; every function is a table test.
"""

import random
from dataclasses import dataclass

from .handlers import MAX_HANDLER_TIMEOUT
from .rules import MAX_RETRY_DELAY, RetryPolicy
from .states import DecisionAction

# What the engine does with a task after a (re)classification.
RETRY, NOTIFY_ADMIN, NOTIFY_USER, EXHAUSTED, MANUAL = (DecisionAction.RETRY, DecisionAction.NOTIFY_ADMIN,
                                                      DecisionAction.NOTIFY_USER, DecisionAction.EXHAUSTED,
                                                      DecisionAction.MANUAL)


# A computed delay (the last one doubling past the list) stops at the longest a configured one may be
# (MAX_RETRY_DELAY, rules.py).
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class Decision:
    action: str  # RETRY | NOTIFY_ADMIN | NOTIFY_USER | EXHAUSTED | MANUAL
    attempt: int = 0  # the retry number this schedules (1-based), or the attempts used
    delay: float = 0.0  # seconds until that retry
    limit: int = 0  # the attempt limit that applied


def effective_policy(category, task_type_config=None, default_max_attempts=3):
    """The category's policy, overridden by the task type's (all categories, then this one)."""
    settings = {}
    if category.retry is not None:
        settings = {"delays": category.retry.delays, "max_attempts": category.retry.max_attempts,
                    "jitter": category.retry.jitter}
    if task_type_config is not None:
        settings.update(task_type_config.retry)
        settings.update(task_type_config.retry_by_category.get(category.name, {}))
    if not settings.get("delays"):
        return None
    if settings.get("max_attempts") is None:
        settings["max_attempts"] = default_max_attempts
    return RetryPolicy(**settings)


def retry_delay(policy, attempt, rng=random):
    """Seconds before retry number ``attempt`` (1-based); past the list the last delay doubles."""
    delays = policy.delays
    if attempt <= len(delays):
        delay = delays[attempt - 1]
    else:
        delay = delays[-1] * 2 ** min(attempt - len(delays), _MAX_DOUBLINGS)
    if policy.jitter:
        delay *= 1 + rng.uniform(-policy.jitter, policy.jitter)
    return min(max(0.0, delay), MAX_RETRY_DELAY)


def decide(category, policy, attempts_done, has_handler, task_limit=None, rng=random):
    """Next step for a task whose latest error is in ``category``.

    ``attempts_done`` counts retries already run; ``task_limit`` is a per-task
    limit raised by ``recover --force`` (the larger limit wins), which the engine
    passes only while the task's error stays in the category it was set for.
    """
    if category.action != RETRY or policy is None:
        return Decision(NOTIFY_USER if category.action == NOTIFY_USER else NOTIFY_ADMIN)
    limit = max(policy.max_attempts, task_limit or 0)
    if attempts_done >= limit:
        return Decision(EXHAUSTED, attempt=attempts_done, limit=limit)
    if not has_handler:
        return Decision(MANUAL, limit=limit)
    attempt = attempts_done + 1
    return Decision(RETRY, attempt=attempt, delay=retry_delay(policy, attempt, rng), limit=limit)


def lease_seconds(handler_timeout):
    """How long a claimed retry may run before the scan takes it back.

    Twice the handler's timeout: the handler is killed at its timeout, so a
    lease that still runs out means the daemon died, not a slow handler. A timeout
    past ``MAX_HANDLER_TIMEOUT`` (stored before it was refused) counts as that.
    """
    return 2 * min(handler_timeout, MAX_HANDLER_TIMEOUT) + 30
