"""Prometheus metrics from real engine and dispatcher work, read back through the text exposition."""

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SMALL_PATTERNS, write_config
from failured.config import load_config
from failured.engine import Engine
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.metrics import MAX_TASK_TYPE_LABELS, Metrics
from failured.notify.dispatcher import Dispatcher, Lane
from failured.settings import Settings

HANDLER = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\n'


@pytest.fixture
def scraped(store, clock, tmp_path):
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER), log_dir=tmp_path / "logs")
    metrics = Metrics()
    metrics.bind(store, lambda: 7, clock)
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="m", metrics=metrics)
    ok = record_failure(store, "sync", "connection timeout", clock=clock)
    bad = record_failure(store, "sync", "connection timeout", clock=clock)
    record_failure(store, "sync", "java.lang.NullPointerException at Moon.orbit(Moon.java:12)", clock=clock)  # unknown
    record_failure(store, "receipt", "malformed json", clock=clock)
    engine.handle_new()
    clock.advance(0.3)
    engine.finish(engine.claim(ok), Outcome(True))
    engine.finish(engine.claim(bad), Outcome(False, "connection timeout"))
    dispatcher = Dispatcher(store, Settings(log_dir=tmp_path / "logs"), clock, lambda: snapshot, metrics=metrics)
    lane = Lane("log", dispatcher)
    lane._load_history(clock.now())
    clock.advance(2)
    lane.process()
    body, content_type = metrics.exposition()
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, content_type, body.decode()


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_counters_follow_what_happened(scraped):
    samples, content_type, _ = scraped
    assert content_type.startswith("text/plain")
    assert value(samples, "failured_failures_total", category="recoverable_network", task_type="sync") == 2
    assert value(samples, "failured_failures_total", category="unrecoverable_data", task_type="receipt") == 1
    assert value(samples, "failured_unknown_classifications_total") == 1
    assert value(samples, "failured_retries_total", outcome="recovered") == 1
    assert value(samples, "failured_retries_total", outcome="failed") == 1
    assert value(samples, "failured_recoveries_total", category="recoverable_network") == 1
    assert value(samples, "failured_retry_lateness_seconds_count") == 2
    assert value(samples, "failured_retry_lateness_seconds_sum") == pytest.approx(2 * 0.25)
    assert value(samples, "failured_retry_queue_depth") == 7
    assert value(samples, "failured_notifications_total", channel="log", state="sent") == 2
    assert value(samples, "failured_notification_latency_seconds_count", channel="log") == 2
    assert value(samples, "failured_breakers_open") == 0


def test_names_follow_prometheus_conventions(scraped):
    _, _, text = scraped
    names = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    assert names and all(name.startswith("failured_") for name, _ in names)
    for name, kind in names:
        if kind == "counter":
            assert not name.endswith("_total_total")
        if "latency" in name or "lateness" in name or "seconds" in name:
            assert name.endswith("_seconds"), name


def test_task_type_labels_are_bounded_and_the_rest_count_as_other(store, clock, tmp_path):
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER), log_dir=tmp_path / "logs")
    metrics = Metrics()
    metrics.bind(store, lambda: 0, clock)
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="m", metrics=metrics)
    extra = 150
    for n in range(MAX_TASK_TYPE_LABELS + extra):
        record_failure(store, f"type_{n:04d}", "malformed json", clock=clock)
    while engine.handle_new():
        pass
    body, _ = metrics.exposition()
    failures = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples
                if s.name == "failured_failures_total"]
    labels = {s.labels["task_type"] for s in failures}
    assert len(labels) == MAX_TASK_TYPE_LABELS + 1 and "other" in labels
    assert sum(s.value for s in failures if s.labels["task_type"] == "other") == extra
    assert sum(s.value for s in failures) == MAX_TASK_TYPE_LABELS + extra
    assert len(body) < 40_000


def test_a_restarted_daemon_keeps_labels_for_its_most_reported_task_types(store, clock):
    for n in range(MAX_TASK_TYPE_LABELS + 20):
        record_failure(store, f"rare_{n:04d}", "x", clock=clock)
    for _ in range(3):
        record_failure(store, "zz_frequent", "x", clock=clock)
    metrics = Metrics()
    metrics.bind(store, lambda: 0, clock)  # as the daemon does at start
    metrics.classified("unknown", "zz_frequent")
    metrics.classified("unknown", "never_seen_before")
    body = metrics.exposition()[0].decode()
    assert 'task_type="zz_frequent"' in body
    assert 'task_type="never_seen_before"' not in body and 'task_type="other"' in body
