"""What the CLI (and later the HTTP API) does, as plain functions over settings."""

import sys
from pathlib import Path

from . import manual, reports
from .clock import SystemClock
from .config import load_config
from .errors import ConfigErrors, FailuredError
from .intake import record_failure
from .store import open_store


def with_store(settings, function, *args, **kwargs):
    """Open the configured database, call ``function(store, ...)``, close it."""
    store = open_store(settings.db)
    try:
        return function(store, *args, **kwargs)
    finally:
        store.close()


def report(settings, task_type, error, **fields):
    """Record one failure in the configured database; returns the task id."""
    return with_store(settings, record_failure, task_type, error, source="cli", **fields)


def recover(settings, task_id, force=False):
    snapshot = load_config(settings.config_dir, settings.lang)
    return with_store(settings, manual.recover, snapshot, task_id, SystemClock().now(), force)


def requeue(settings, dry_run=False, **filters):
    snapshot = load_config(settings.config_dir, settings.lang)
    return with_store(settings, manual.requeue, snapshot, SystemClock().now(), dry_run, **filters)


def resolve(settings, task_id, note=None):
    return with_store(settings, manual.resolve, task_id, SystemClock().now(), note)


def show(settings, task_id):
    return with_store(settings, lambda store: manual.show(task_id))


def describe_handler(handler):
    if handler is None:
        return None
    if handler.kind == "command":
        return f"command {' '.join(handler.argv)}"
    if handler.kind == "http":
        return f"http {handler.method} {handler.url.split('?', 1)[0]}"
    return f"python {handler.target}"


def config_summary(snapshot):
    """Counts per category and the handlers per task type, for check-config and status."""
    categories = []
    for category in (*snapshot.ruleset.categories, snapshot.ruleset.unknown):
        retry = category.retry
        categories.append({
            "name": category.name, "label": category.label, "action": category.action,
            "priority": category.priority, "patterns": len(category.patterns),
            "exception_types": len(category.exception_types), "tags": len(category.tags),
            "retry": (f"{'/'.join(f'{d:g}' for d in retry.delays)}s max {retry.max_attempts or 'default'}"
                      if retry else None),
        })
    return {
        "files": list(snapshot.files),
        "digest": snapshot.digest,
        "categories": categories,
        "task_types": {name: describe_handler(t.handler) for name, t in snapshot.task_types.items()},
    }


def shipped_config_dir():
    """The starter config: the checkout's config/, or the copy pip installed under share/."""
    for candidate in (Path(__file__).resolve().parent.parent / "config",
                      Path(sys.prefix) / "share" / "failured" / "config"):
        if (candidate / "patterns").is_dir():
            return candidate
    raise FailuredError("the shipped config directory was not installed: reinstall failured")


def scan_report(settings):
    """Write a processing report of what was handled since the previous one; returns (path, report)."""
    def write(store):
        now = SystemClock().now()
        report = reports.processing_report(store, now, settings.lang)
        return reports.write_report(settings.report_dir, reports.PROCESSING, report, now), report
    return with_store(settings, write)


def analyze(settings, days, write=False):
    """The analysis report over ``days``; written as JSON and HTML when asked. Returns (path or None, report)."""
    from .analysis import analysis_report
    from .report_html import render_html

    snapshot = load_config(settings.config_dir, settings.lang, settings.log_dir)

    def run(store):
        now = SystemClock().now()
        report = analysis_report(store, snapshot, now, days, settings.lang)
        path = None
        if write:
            path = reports.write_report(settings.report_dir, reports.ANALYSIS, report, now,
                                        render_html(report, settings.lang))
            store.set_state("last_analysis", f"{now:.3f}", now)
        return path, report
    return with_store(settings, run)


def status(settings):
    """``failured status`` data; a broken config still gives a status (without thresholds)."""
    from . import status as status_module

    try:
        snapshot = load_config(settings.config_dir, settings.lang, settings.log_dir)
    except ConfigErrors:
        snapshot = None
    return with_store(settings, lambda store: status_module.collect(store, snapshot, SystemClock().now()))
