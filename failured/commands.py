"""What the CLI does, as plain functions over settings.

Only the commands that record something new (``report``, ``exec``) may create
the database; every other command refuses a missing one, because a mistyped
``FAILURE_DB`` or another working directory would otherwise give an empty
database that no daemon watches.
"""

import dataclasses
import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from . import labels, lastgood, manual, reports
from .secrets import masked_argv, reporter_secrets
from .clock import SystemClock
from .config import load_config, unreadable_dirs
from .errors import ConfigErrors, FailuredError, InputError, StoreError
from .intake import check_task_type, parse_payload, record_failure
from .store import MissingStoreError, open_store
from .text import shell_word, toml_key


def with_store(settings, function, *args, create=False, **kwargs):
    """Open the configured database, call ``function(store, ...)``, close it.

    A missing database is an error (MissingStoreError, exit 2) unless ``create``;
    a database created here is announced once on stderr, naming its path.
    """
    missing_dirs = _missing_parents(settings.db) if create else []
    store = open_store(settings.db, create=create)
    if store.created:
        _announce_created(settings.db, missing_dirs)
    try:
        return function(store, *args, **kwargs)
    finally:
        store.close()


def operators_labels(settings):
    """The labels the daemon's model learns from, for ``classify`` to answer as the daemon does; none where the
    database is missing or cannot be read now (said on stderr)."""
    try:
        return with_store(settings, lambda store: store.labelled_examples())
    except MissingStoreError:
        return []
    except (StoreError, OSError) as exc:
        print(f"failured: labels not read ({exc}): answering without operators' labels", file=sys.stderr)
        return []


def send_test(settings, channel, message):
    """Send a test ``message`` through ``channel`` as one of the channel's messages this minute: not sent (a
    SendResult saying when to try) while the channel's rate is used up, and recorded for the daemon's window."""
    if channel.rate_per_minute is None:
        return channel.send(message)
    try:
        return with_store(settings, _send_counted, channel, message)
    except MissingStoreError:  # no daemon ever ran on this database: no minute to share
        return channel.send(message)
    except (StoreError, OSError) as exc:
        print(f"failured: the channel's recent sends not read ({exc}): sending anyway", file=sys.stderr)
        return channel.send(message)


def _send_counted(store, channel, message):
    from .notify.channels import SendResult
    from .notify.lane import WINDOW_SECONDS
    from .store import outbox

    now = SystemClock().now()
    since = now - WINDOW_SECONDS
    # One daemon's sends are its sent rows (and earlier tests); several daemons record every send, tests too.
    own = sorted([row.sent_at for row in outbox.sent_since(store, channel.name, since)]
                 + [at for _, at in outbox.test_sends_since(store, channel.name, since)])
    recorded = outbox.sends_since(store, channel.name, since)
    times = own if len(own) >= len(recorded) else recorded
    limit = max(1, int(channel.rate_per_minute))
    if len(times) >= limit:
        wait = max(1.0, times[len(times) - limit] + WINDOW_SECONDS - now)
        return SendResult(False, retry_after=wait, error=(
            f"not sent: channel {channel.name} sent {len(times)} messages within the last minute and takes "
            f"{limit} a minute (a robot sent more blocks for 10 minutes): try again in {wait:.0f} s"))
    outbox.forget_sends(store, channel.name, now - 2 * WINDOW_SECONDS)
    send_id = outbox.record_send(store, channel.name, now)
    result = channel.send(message)
    outbox.send_ended(store, send_id, SystemClock().now())
    return result


def _missing_parents(path):
    """The directories above ``path`` that do not exist yet, outermost first."""
    missing = []
    for parent in Path(path).absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def _announce_created(path, missing_dirs):
    made = f" (and its directory {missing_dirs[0]})" if missing_dirs else ""
    print(f"failured: created a new database at {Path(path).absolute()}{made}: "
          "if a daemon should see this task, check FAILURE_DB", file=sys.stderr)


def report(settings, task_type, error, **fields):
    """Record one failure in the configured database; returns the task id."""
    # Refuse bad input before the database is opened (or created): nothing is written.
    check_task_type(task_type)
    parse_payload(fields.get("payload"))
    return with_store(settings, record_failure, task_type, error, source="cli", create=True,
                      secrets=reporter_secrets(str(settings.config_dir)), **fields)


def recover(settings, task_id, force=False):
    snapshot = load_config(settings.config_dir, settings.lang, model=False)
    return with_store(settings, manual.recover, snapshot, task_id, SystemClock().now(), force)


def requeue(settings, dry_run=False, **filters):
    snapshot = load_config(settings.config_dir, settings.lang, model=False)
    return with_store(settings, manual.requeue, snapshot, SystemClock().now(), dry_run, **filters)


def resolve(settings, task_id, note=None):
    return with_store(settings, manual.resolve, task_id, SystemClock().now(), note)


def label(settings, task_id, category, note=None):
    """Label a task's category (recorded, course re-decided); returns the task as it is now."""
    snapshot = load_config(settings.config_dir, settings.lang, model=False)  # a label decides, not the model

    def relabel(store):
        from .engine import Engine  # only labelling classifies: other commands skip its imports

        engine = Engine(store, settings, SystemClock(), lambda: snapshot, owner=f"cli:{os.getpid()}")
        return engine.relabel(task_id, category, note)
    return with_store(settings, relabel)


def list_tasks(settings, task_filter):
    """One page of tasks, newest first: (rows, next cursor or None); a category no task can have is refused."""
    from .listing import list_page

    snapshot = None
    if task_filter.categories:
        try:
            snapshot = load_config(settings.config_dir, settings.lang, model=False)
        except FailuredError:  # a broken configuration still lists: the categories stored tasks have are valid
            pass

    def page(store):
        manual.check_categories(task_filter.categories, snapshot, store)
        return list_page(task_filter, SystemClock().now(), store)
    return with_store(settings, page)


def export_labels(settings):
    """The corpus lines of every label."""
    return with_store(settings, labels.export_lines)


def show(settings, task_id):
    """The task and its history; a task in ``manual`` also says why and what to do."""
    data = with_store(settings, lambda store: manual.show(store, task_id))
    if data["status"] == "manual":
        data["advice"] = manual_advice(data, _handler_configured(settings, data["task_type"]))
    return data


def _handler_configured(settings, task_type):
    """Whether the config now names a handler for ``task_type`` (None when the config cannot be read)."""
    try:
        snapshot = load_config(settings.config_dir, settings.lang, model=False)
    except FailuredError:
        return None
    return snapshot.task_type(task_type).handler is not None


def manual_advice(task, handler_now):
    """Why a task waits in ``manual`` and the commands that move it on."""
    task_id, task_type = task["id"], task["task_type"]
    why = (f"its error can recover, but task type {task_type!r} had no handler to retry it with "
           "when its retry was due (at its classification, or later: a handler taken out of the configuration)")
    requeue = f"failured requeue --type {shell_word(task_type)} --status manual"
    if handler_now:
        todo = [f"a handler is configured now: failured recover {task_id}", f"or retry every such task: {requeue}"]
    else:
        todo = [f"configure [task_types.{toml_key(task_type)}.handler] in failured.toml, then: {requeue}",
                f"or, when it was dealt with by hand: failured resolve {task_id} --note '...'"]
    return {"why": why, "what_to_do": todo}


def migrate_store(settings, target_url, source=None, progress=None):
    """Copy the SQLite database (``source``, default FAILURE_DB) into the empty PostgreSQL ``target_url``."""
    from .store.migrate import migrate

    return migrate(source or settings.db, target_url, progress=progress)


def check_config_dir(settings):
    """``failured run`` refuses to start (exit 2) without its config directory, naming where it looked."""
    if not Path(settings.config_dir).is_dir():
        raise InputError(f"no config directory at FAILURE_CONFIG_DIR={settings.config_dir} (working directory "
                         f"{os.getcwd()}): run failured where its config/ is, set FAILURE_CONFIG_DIR, or create one "
                         "with 'failured init DIR'")
    if unreadable := unreadable_dirs(settings.config_dir):  # before anything is created
        raise ConfigErrors(unreadable)


def check_writable_dirs(settings):
    """``failured run`` refuses to start when it cannot write its log or report directory (exit 2)."""
    for variable, directory in (("FAILURE_LOG_DIR", settings.log_dir), ("FAILURE_REPORT_DIR", settings.report_dir)):
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            probe = Path(directory) / f".failured-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"cannot write to {variable}={directory} ({exc.strerror or exc}): "
                             "fix its permissions or point the variable at a writable directory") from None


def describe_handler(handler, task_type=None):
    """One line on how ``task_type``'s retries run (never a secret: no broker URL, no URL query)."""
    if handler is None:
        return None
    if handler.kind == "command":
        return f"command {' '.join(masked_argv(handler.argv))}"  # as `show` gives a task's: no password
    if handler.kind == "http":
        return f"http {handler.method} {handler.url.split('?', 1)[0]}"
    if handler.kind == "celery":
        options = dict(handler.options)  # as the handler sends: the task type's name, the queue it first ran on
        queue = f"queue {options['queue']}" if options.get("queue") else "the queue it first ran on"
        return f"celery {options.get('task') or task_type} ({queue})"
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
        "task_types": {name: describe_handler(t.handler, name) for name, t in snapshot.task_types.items()},
        "retry_overrides": {name: overrides for name, t in snapshot.task_types.items()
                            if (overrides := _retry_overrides(t))},
    }


def _retry_overrides(task_type):
    """A task type's ``[retry]`` and ``[retry_by_category]`` as one line, or None when it has neither."""
    parts = [_retry_words(task_type.retry)] if task_type.retry else []
    parts += [f"{category}: {_retry_words(policy)}" for category, policy in sorted(task_type.retry_by_category.items())]
    return "; ".join(parts) or None


def _retry_words(policy):
    words = [f"{'/'.join(f'{d:g}' for d in policy['delays'])}s"] if "delays" in policy else []
    words += [f"max {policy['max_attempts']}"] if "max_attempts" in policy else []
    words += [f"jitter {policy['jitter']:g}"] if "jitter" in policy else []
    return " ".join(words)


def scan_report(settings):
    """Write a processing report of what was handled since the previous one; returns (path, report). Without
    FAILURE_REPORT_DIR it goes where the daemon writes its own (recorded at each load): from an operator's shell
    it had gone under the working directory, and the events it covered were then missing from the daemon's."""
    def write(store):
        reporting = _with_daemon_reports(store, settings)
        now = SystemClock().now()
        for _ in range(3):  # None: a daemon reported up to here meanwhile; the next one starts where it ended
            with _report_dir_errors(reporting, " (the next report covers what this one would have)"):
                path, report = reports.write_processing_report(store, reporting.report_dir, now, settings.lang)
            if report is not None:
                break
        else:
            raise FailuredError("the processing report moved three times while this one was made: a daemon "
                                "is writing it now; see its report directory, or try again")
        store.set_state("last_scan", f"{now:.3f}", now)  # as the daemon's scan: `failured status` shows it
        return path, report
    return with_store(settings, write)


def _with_daemon_reports(store, settings):
    """``settings`` with the daemon's report directory, where FAILURE_REPORT_DIR is not set and a daemon recorded
    one: the one that wrote the last processing report (several daemons: the leader), else the last to load its
    configuration."""
    from . import status as status_module

    recorded = (store.get_state(reports.WRITTEN_IN_KEY)
                or (status_module.config_status(store)["active"] or {}).get("reports"))
    if "FAILURE_REPORT_DIR" in settings.given or not recorded:
        return settings
    return dataclasses.replace(settings, report_dir=Path(recorded))


@contextmanager
def _report_dir_errors(settings, kept=""):
    """A report directory that cannot be written is a clear error, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        advice = ("free space on its filesystem" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
                  "set FAILURE_REPORT_DIR to a directory failured may create or write")
        raise FailuredError(f"cannot write the report under {settings.report_dir}: {exc.strerror or exc}{where}; "
                            f"{advice}{kept}") from None


def analyze(settings, days, write=False):
    """The analysis report over ``days``; written as JSON and HTML when asked. Returns (path or None, report)."""
    from .analysis import analysis_report
    from .report_html import render_html

    snapshot = load_config(settings.config_dir, settings.lang, settings.log_dir, model=False)

    def run(store):
        now = SystemClock().now()
        report = analysis_report(store, snapshot, now, days, settings.lang)
        path = None
        if write:
            reporting = _with_daemon_reports(store, settings)
            with _report_dir_errors(reporting):
                path = reports.write_report(reporting.report_dir, reports.ANALYSIS, report, now,
                                            render_html(report, settings.lang))
            store.set_state("last_analysis", f"{now:.3f}", now)
        return path, report
    return with_store(settings, run)


def status(settings):
    """``failured status`` data, its thresholds evaluated on the daemon's own configuration (the directory it
    recorded), else on ``FAILURE_CONFIG_DIR``'s; where neither can be read, the status says so among its problems
    rather than calling a system healthy whose thresholds it did not check."""
    from . import status as status_module

    def collect(store):
        active = status_module.config_status(store)["active"] or {}
        # Several daemons: the leader's directory (it checks the thresholds), not the last one to reload.
        members = status_module.daemons(store)
        snapshot, unread = _readable_config([status_module.leader_config_dir(members), active.get("dir"),
                                             settings.config_dir], settings, active.get("cache"))
        data = status_module.collect(store, snapshot, SystemClock().now(), members)
        if unread:
            data["problems"].append(f"thresholds not checked: {unread}")
            data["healthy"] = False
        return data
    return with_store(settings, collect)


def _readable_config(directories, settings, cache=None):
    """(the first of ``directories`` that loads, None) or (None, why the last one did not). A directory whose
    files are refused counts as its last good copy (lastgood.py), in the daemon's ``cache`` directory: the daemon
    runs on that meanwhile, and its thresholds are the ones in force (an edit being fixed had hidden every
    breach)."""
    why = None
    for directory in dict.fromkeys(d for d in directories if d):
        try:
            return load_config(directory, settings.lang, settings.log_dir, model=False), None
        except ConfigErrors as exc:
            why = f"the configuration at {directory} cannot be read ({exc.errors[0]})"
            last_good = _last_good_config(directory, settings, cache)
            if last_good is not None:
                return last_good, None
    return None, why


def _last_good_config(directory, settings, cache=None):
    """The last good copy of ``directory``'s configuration (in the daemon's cache, ``cache``, else this process's),
    or None where none is kept or it does not load."""
    with lastgood.restored(directory, cache) as found:
        if found is None:
            return None
        try:
            return load_config(found[0], settings.lang, settings.log_dir, model=False)
        except ConfigErrors:
            return None
