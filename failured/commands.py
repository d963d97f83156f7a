"""What the CLI (and later the HTTP API) does, as plain functions over settings."""

import sys
from pathlib import Path

from .errors import FailuredError
from .intake import record_failure
from .store import open_store


def report(settings, task_type, error, **fields):
    """Record one failure in the configured database; returns the task id."""
    store = open_store(settings.db)
    try:
        return record_failure(store, task_type, error, source="cli", **fields)
    finally:
        store.close()


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
