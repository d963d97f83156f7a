"""Pure policy: delays, limits, overrides and the next step, as tables."""

import random

import pytest

from failured.config import TaskTypeConfig
from failured.policy import (EXHAUSTED, MANUAL, NOTIFY_ADMIN, NOTIFY_USER, RETRY, decide, effective_policy,
                             lease_seconds, retry_delay)
from failured.handlers import MAX_HANDLER_TIMEOUT
from failured.rules import MAX_RETRY_DELAY, Category, RetryPolicy

NETWORK = Category("recoverable_network", "网络", "net", "retry", 10,
                   retry=RetryPolicy((30, 60, 120, 240), 5))
SYSTEM = Category("recoverable_system", "系统", "sys", "retry", 20, retry=RetryPolicy((300, 600, 1200), 3))
TEMPORARY = Category("recoverable_temporary", "临时", "tmp", "retry", 30, retry=RetryPolicy((180, 360, 720), 3))
DATA = Category("unrecoverable_data", "数据", "data", "notify_admin", 40)
BUSINESS = Category("unrecoverable_business", "业务", "biz", "notify_user", 50)


@pytest.mark.parametrize("category, expected", [
    (NETWORK, [30, 60, 120, 240, 480]),
    (SYSTEM, [300, 600, 1200]),
    (TEMPORARY, [180, 360, 720]),
])
def test_seed_schedules(category, expected):
    policy = effective_policy(category)
    assert [retry_delay(policy, n) for n in range(1, policy.max_attempts + 1)] == expected


def test_past_the_list_the_last_delay_doubles():
    policy = RetryPolicy((1.5, 2.5), 10)
    assert [retry_delay(policy, n) for n in range(1, 6)] == [1.5, 2.5, 5.0, 10.0, 20.0]


def test_doubling_stops_at_the_longest_delay_a_retry_may_wait():
    """``recover --force`` can raise a task's limit into the thousands: its delays stay within what the database
    stores (a delay of 1e12 seconds stopped all intake)."""
    policy = RetryPolicy((3600,), 10_000)
    assert [retry_delay(policy, n) for n in (14, 15, 100, 10_000)] == [3600 * 2 ** 13, MAX_RETRY_DELAY,
                                                                        MAX_RETRY_DELAY, MAX_RETRY_DELAY]


def test_jitter_stays_within_its_fraction():
    policy = RetryPolicy((100,), 3, jitter=0.2)
    rng = random.Random(7)
    delays = [retry_delay(policy, 1, rng) for _ in range(500)]
    assert 80 <= min(delays) < 90 and 110 < max(delays) <= 120


def test_default_max_attempts_applies_when_category_names_none():
    category = Category("c", "c", "c", "retry", 1, retry=RetryPolicy((5,), None))
    assert effective_policy(category, None, default_max_attempts=7).max_attempts == 7


def test_task_type_overrides_all_categories_then_one():
    special = TaskTypeConfig("special_task", retry={"delays": (10.0, 20.0), "max_attempts": 4},
                             retry_by_category={"recoverable_system": {"max_attempts": 9}})
    assert effective_policy(NETWORK, special) == RetryPolicy((10.0, 20.0), 4)
    assert effective_policy(SYSTEM, special) == RetryPolicy((10.0, 20.0), 9)


@pytest.mark.parametrize("category, attempts, has_handler, task_limit, action, attempt, delay", [
    (NETWORK, 0, True, None, RETRY, 1, 30),
    (NETWORK, 3, True, None, RETRY, 4, 240),
    (NETWORK, 4, True, None, RETRY, 5, 480),
    (NETWORK, 5, True, None, EXHAUSTED, 5, 0),
    (NETWORK, 5, True, 6, RETRY, 6, 960),  # recover --force raised this task's limit
    (NETWORK, 0, False, None, MANUAL, 0, 0),
    (NETWORK, 5, False, None, EXHAUSTED, 5, 0),
    (DATA, 0, True, None, NOTIFY_ADMIN, 0, 0),
    (DATA, 2, True, None, NOTIFY_ADMIN, 0, 0),  # a retry whose error turned into a data error stops
    (BUSINESS, 0, True, None, NOTIFY_USER, 0, 0),
])
def test_decide(category, attempts, has_handler, task_limit, action, attempt, delay):
    decision = decide(category, effective_policy(category), attempts, has_handler, task_limit)
    assert (decision.action, decision.attempt, decision.delay) == (action, attempt, delay)


def test_lease_outlives_the_handler_timeout_twice():
    assert lease_seconds(60) == 150


def test_a_timeout_stored_before_it_was_refused_leases_for_the_longest_timeout():
    assert lease_seconds(1e12) == lease_seconds(MAX_HANDLER_TIMEOUT) == 2 * 7 * 86400 + 30
