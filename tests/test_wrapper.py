"""A caught error reported inside a program's own words (``Task … failed: <error>``) is read as the error inside
them where nothing decides the whole message; a programming error's own ``…: …`` stays unknown."""

from pathlib import Path

import pytest

from failured import classify
from failured.config import load_config
from failured.wrapper import MAX_PREFIX, wrapped_error

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.parametrize(("text", "inner"), [
    ("job processing error: Received response from server: NOTAUTH", "Received response from server: NOTAUTH"),
    ("❌ Error syncing sync_leases: 无法访问服务器接口", "无法访问服务器接口"),
    ("同步订单失败：设备已被绑定", "设备已被绑定"),
    ('Handling "App\\Message\\SyncOrderMessage" failed: 2 handlers failed. First failure is: 元宝不足',
     "2 handlers failed. First failure is: 元宝不足"),
    ("Unable to flush stats: ERR_BLANK\n  at stats.flush (stats.js:3)", "ERR_BLANK\n  at stats.flush (stats.js:3)"),
])
def test_the_error_after_a_prefix_that_speaks_of_a_failure_is_read(text, inner):
    assert wrapped_error(text) == inner


@pytest.mark.parametrize("text", [
    "order 12: 余额不足",  # the words before the colon name no failure
    "sync failed:",  # nothing after it
    "sync failed: ",
    "sync failed\nreason: disk full",  # the colon is not on the first line
    "x" * MAX_PREFIX + " failed: disk full",  # too far in for a wrapper's own words
    "connection refused",
])
def test_no_wrapper_is_read_where_there_is_none(text):
    assert wrapped_error(text) is None


def test_a_megabyte_without_a_colon_is_looked_at_no_further_than_its_prefix():
    assert wrapped_error("failed " * 200_000) is None


@pytest.fixture(scope="module")
def classifier():
    return load_config(CONFIG).classifier


# (wrapped error, category): wrappers of job runners and applications around errors of sources failured was not
# written from (a blind set's messages inside tests/data/wrappers.tsv's wrappers).
WRAPPED = [
    ("Failed to add repeatable job for next iteration: empty redis host", "unrecoverable_config"),
    ("Dequeue error: 订单号已执行", "unrecoverable_business"),
    ("job failed: Illegal Argument.", "unrecoverable_data"),
]


@pytest.mark.parametrize(("message", "category"), WRAPPED)
def test_a_wrapped_error_gets_the_category_of_the_error_inside(classifier, monkeypatch, message, category):
    inside = classifier.classify_uncached(message)
    assert inside.category == category
    assert inside.message == message  # what is shown and stored is the message as it came
    monkeypatch.setattr(classify, "WRAPPERS_READ", 0)
    assert classifier.classify_uncached(message).category == "unknown"  # read whole, nothing decides it


@pytest.mark.parametrize("message", [
    "job failed: panic: runtime error: invalid memory address or nil pointer dereference",
    "Task handler raised error: NullPointerException",
    "同步订单失败：TypeError: Cannot read properties of undefined (reading 'id')",
])
def test_a_programming_error_inside_a_wrapper_stays_unknown(classifier, message):
    assert classifier.classify_uncached(message).category == "unknown"


def test_a_message_that_opens_with_an_exception_type_is_not_read_past_its_colon(classifier, monkeypatch):
    """``ValueError: …`` is the error itself, not a wrapper: what follows its colon is never read alone."""
    read = []
    monkeypatch.setattr(classify, "wrapped_error", lambda text: read.append(text))
    classifier.classify_uncached("ValueError: failed: something odd happened here")
    assert read == []
