"""Celery integration, worker side: ``install(app)`` reports failed tasks to failured.

* A task that fails for good (Celery's ``task_failure``: after its own retries are
  used up; ``Retry``, ``Ignore`` and ``Reject`` never get there) is reported with
  task type = the task's name, the exception as Python prints it (its causes first), error type
  = the exception's qualified name, payload = ``{"args", "kwargs", "celery_task_id",
  "queue"}`` made JSON-safe, ref = the Celery task id.
* A run that failured itself started (its message carries ``protocol`` headers) is
  not a new failure: its success or failure is published back through the broker
  to the queue the daemon waits on (see ``celery_handler``); so is a re-run that
  ends in ``Ignore`` (done), ``Reject`` without requeueing, or is revoked (both failures).
* A report costs the task only its hand-off to the local spool; a sender thread of
  each worker process delivers it (``reporter``), and sends what a killed worker left.
* Successful runs are counted and sent in batches (the failure-rate denominator).

Celery is imported here, so this module needs ``pip install 'failured[celery]'``.
"""

import collections
import contextlib
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import socket
import threading
from pathlib import Path

from celery import shared_task, signals, states
from celery.app.task import Context
from celery.exceptions import Ignore, Reject, Retry
from kombu.utils import json as kombu_json

from ..exceptiontext import exception_text, qualified_name, without_markers
from ..errors import InputError
from ..intake import MAX_TASK_TYPE_CHARS, bound_error, check_task_type
from ..settings import load_settings
from ..store import is_url, moved_into
from ..text import clean_text, clipped, printable
from . import protocol
from .reporter import Reporter
from .spool import Spool
from .targets import HttpTarget, StoreTarget

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 64 * 1024  # failured's intake limit
MAX_PAYLOAD_BYTES = 512 * 1024  # well under the API's 1 MiB body limit
MANUAL_TASK = "failured.manual_recovery_task"
# The worker's main process fails a task itself when its child died (WorkerLostError) or outlived its hard time
# limit; the request is then not on the task's stack, so it remembers what it received (bounded: a task that ends
# well is never heard of again there).
REMEMBERED_REQUESTS = 10_000
# Not failures (README): Celery 5.7 sends task_failure for a Reject(requeue=False) all the same (celery#4222).
NOT_FAILURES = (Ignore, Reject, Retry)
MAX_REASON_CHARS = 2000  # of an Ignore's or a Reject's reason in a re-run's answer

_installed = None  # the CeleryIntegration of this process, for manual_recovery_task


def default_spool_dir(target=None):
    """The user's spool directory; one of its own for each failured a report goes to (``target``'s identity):
    workers of one user sending to two failureds had taken each other's reports from a shared spool."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    spool = Path(base) / "failured" / "celery-spool"
    return spool if target is None else spool / hashlib.sha256(target.identity().encode()).hexdigest()[:16]


TARGET_FILE = "target"  # in a SQLite store's spool directory: the database's path


def adopt_moved_spools(spool, target):
    """Reports spooled for a SQLite database that migrate-store has since moved into ``target`` (a worker refused
    by the moved file spools them under that file's own directory): delivered from ``spool``, not left forever.
    A SQLite target's spool notes its path so that the one it moved into knows it."""
    if isinstance(target, StoreTarget) and not is_url(target.location):
        with contextlib.suppress(OSError):
            spool.dir.mkdir(parents=True, exist_ok=True)
            (spool.dir / TARGET_FILE).write_text(os.path.abspath(target.location), encoding="utf-8")
        return
    for other in sorted(spool.dir.parent.glob(f"*/{TARGET_FILE}")) if spool.dir.parent.is_dir() else ():
        try:
            moved_to = moved_into(other.read_text(encoding="utf-8"))
        except OSError:
            continue
        if moved_to is not None and moved_to == target.describe() and other.parent != spool.dir:
            count = spool.adopt(other.parent)
            if count:
                log.warning("failured: %d reports spooled for %s, which was moved into %s, are sent there", count,
                            other.read_text(encoding="utf-8"), moved_to)


def install(app, *, api_url=None, token=None, db=None, spool_dir=None, include=None, exclude=None,
            timeout=2.0, flush_interval=5.0, count_successes=True, fsync=False):
    """Report ``app``'s failed tasks to failured; returns the installed integration.

    Where failured is: ``api_url`` (default ``$FAILURE_API_URL``) with ``token``
    (default ``$FAILURE_API_TOKEN``), else the store ``db`` (default ``$FAILURE_DB``,
    for workers on the daemon's machine). ``include``/``exclude``: task names or
    glob patterns (``"shop.tasks.*"``). Reports are handed to ``spool_dir`` (default
    ``$FAILURE_SPOOL_DIR`` or ``~/.local/state/failured/celery-spool``) and sent from
    there by a background thread; ``timeout``: its wait for one answer from failured,
    and the most a warm shutdown spends sending what is left. ``fsync``: make every
    report durable against power loss before the task goes on (costs milliseconds each).
    """
    global _installed
    api_url = api_url or os.environ.get("FAILURE_API_URL")
    if api_url:
        target = HttpTarget(api_url, token if token is not None else os.environ.get("FAILURE_API_TOKEN"), timeout)
    else:
        target = StoreTarget(db or load_settings().db, timeout)
    spool = Spool(spool_dir or os.environ.get("FAILURE_SPOOL_DIR") or default_spool_dir(target), durable=fsync)
    if not (spool_dir or os.environ.get("FAILURE_SPOOL_DIR")):
        adopt_moved_spools(spool, target)
    reporter = Reporter(target, spool, flush_interval=flush_interval)
    integration = CeleryIntegration(app, reporter, TaskFilter(include, exclude), count_successes)
    integration.connect()
    _installed = integration
    return integration


class TaskFilter:
    """Which task names are reported: ``include`` (all when empty) minus ``exclude``."""

    def __init__(self, include=None, exclude=None):
        self.include = tuple(include or ())
        self.exclude = tuple(exclude or ()) + (MANUAL_TASK,)
        self._cache = {}

    def __call__(self, name):
        verdict = self._cache.get(name)
        if verdict is None:
            included = not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)
            verdict = self._cache[name] = included and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
        return verdict


class CeleryIntegration:
    """The signal receivers of one installed app."""

    def __init__(self, app, reporter, wanted, count_successes=True):
        self.app = app
        self.reporter = reporter
        self.wanted = wanted
        self.count_successes = count_successes
        self.hostname = socket.gethostname()
        self._received = Remembered(REMEMBERED_REQUESTS)  # main process: task id -> (failured headers, queue)
        self._failed_here = Remembered(REMEMBERED_REQUESTS)  # main process: task ids it already reported

    def connect(self):
        # weak=False: the receivers are bound methods of this object, which nothing else keeps.
        signals.task_received.connect(self.on_received, weak=False)
        signals.task_failure.connect(self.on_failure, weak=False)
        signals.task_success.connect(self.on_success, weak=False)
        signals.task_postrun.connect(self.on_postrun, weak=False)
        signals.task_revoked.connect(self.on_revoked, weak=False)
        signals.worker_process_init.connect(self.on_process_start, weak=False)
        signals.worker_ready.connect(self.on_worker_ready, weak=False)
        signals.worker_process_shutdown.connect(self.on_shutdown, weak=False)
        signals.worker_shutdown.connect(self.on_shutdown, weak=False)

    def disconnect(self):
        signals.task_received.disconnect(self.on_received)
        signals.task_failure.disconnect(self.on_failure)
        signals.task_success.disconnect(self.on_success)
        signals.task_postrun.disconnect(self.on_postrun)
        signals.task_revoked.disconnect(self.on_revoked)
        signals.worker_process_init.disconnect(self.on_process_start)
        signals.worker_ready.disconnect(self.on_worker_ready)
        signals.worker_process_shutdown.disconnect(self.on_shutdown)
        signals.worker_shutdown.disconnect(self.on_shutdown)

    def _ours(self, task):
        return task is not None and getattr(task, "app", None) is self.app

    def on_received(self, request=None, **_):
        """The main process: what a task's request says, kept for a failure this process may report itself."""
        try:
            if self._ours(getattr(request, "task", None)):
                self._received.put(request.id, (protocol.failured_headers(Context(request.request_dict)),
                                                (request.delivery_info or {}).get("routing_key")))
        except Exception:
            log.exception("failured: remembering the request of %s failed", getattr(request, "id", "?"))

    def on_failure(self, sender=None, task_id=None, exception=None, args=None, kwargs=None, traceback=None,
                   einfo=None, **_):
        if not self._ours(sender) or isinstance(exception, NOT_FAILURES):
            return  # a re-run's Reject is answered by on_postrun, where its request is at hand
        try:
            on_stack = getattr(sender.request, "id", None) == task_id
            if not on_stack or isinstance(traceback, str):  # the main process fails it: its child died or hung
                if not self._failed_here.first(task_id):
                    return  # a hard time limit fails it twice there: when it strikes, and as the child dies
            if on_stack:
                rerun = protocol.failured_headers(sender.request)
                queue = (getattr(sender.request, "delivery_info", None) or {}).get("routing_key")
            else:
                rerun, queue = self._received.get(task_id) or (None, None)
            error, error_type = error_text(exception, traceback, einfo), qualified_name(type(exception))
            if rerun is not None:  # failured's own retry: answer it, it is not a new failure
                self.reply(rerun, False, error, error_type, task_id)
            elif self.wanted(sender.name):
                self.reporter.report_failure(failure_record(sender.name, task_id, error, error_type, args, kwargs,
                                                            queue))
        except Exception:  # a receiver must never break the worker
            log.exception("failured: reporting the failure of %s %s failed", getattr(sender, "name", "?"), task_id)

    def on_success(self, sender=None, result=None, **_):
        if not self._ours(sender):
            return
        try:
            rerun = protocol.failured_headers(sender.request)
            if rerun is not None:
                self.reply(rerun, True, None, None, sender.request.id)
            elif self.count_successes and self.wanted(sender.name):
                self.reporter.count_success(task_type_for(sender.name))
        except Exception:
            log.exception("failured: recording the success of %s failed", getattr(sender, "name", "?"))

    def on_postrun(self, sender=None, task_id=None, state=None, retval=None, **_):
        """A re-run that ended in Ignore or Reject: neither task_success nor (in this process) task_failure tells
        of it, and the daemon would wait for its answer until it timed out."""
        if state not in (states.IGNORED, states.REJECTED) or not self._ours(sender):
            return
        try:
            rerun = protocol.failured_headers(sender.request)
            if rerun is None:
                return
            if state == states.IGNORED:
                note = f"Celery task {sender.name} ended in Ignore{_reason(retval)}: done, nothing more to retry"
                self.reply(rerun, True, None, None, task_id, note)
            elif not getattr(retval, "requeue", False):  # requeued, it runs again and answers then
                error = (f"[DATA] Celery task {sender.name} rejected its message (Reject, requeue=False)"
                         f"{_reason(getattr(retval, 'reason', None))}: a new run would reject it too")
                self.reply(rerun, False, error, qualified_name(Reject), task_id)
        except Exception:
            log.exception("failured: answering the re-run %s of %s failed", task_id, getattr(sender, "name", "?"))

    def on_revoked(self, sender=None, request=None, terminated=False, signum=None, expired=False, **_):
        """A re-run revoked (by a person, or expired before a worker took it): answered, not waited out."""
        if not self._ours(sender):
            return
        try:
            rerun = protocol.failured_headers(request)
            if rerun is None:
                return
            how = (f"terminated by signal {int(signum)}" if terminated and signum else "terminated" if terminated
                   else "expired before a worker started it" if expired else "before it started")
            error = f"Celery task {sender.name} was revoked in Celery ({how}): stopped on purpose"
            self.reply(rerun, False, error, "celery.exceptions.TaskRevokedError", getattr(request, "id", None))
        except Exception:
            log.exception("failured: answering the revoked re-run of %s failed", getattr(sender, "name", "?"))

    def on_process_start(self, **_):
        # A process that runs tasks (a prefork child, the solo pool's worker): its sender
        # starts now, so what a killed worker left in the spool goes without waiting for a task.
        self.reporter.start()

    def on_worker_ready(self, sender=None, **_):
        # Pools of threads or green threads run tasks in the main process; a prefork
        # parent does not, and starting a thread before it forks more children is unwise.
        pool = getattr(sender, "pool", None)
        if not type(pool).__module__.startswith("celery.concurrency.prefork"):
            self.reporter.start()

    def on_shutdown(self, **_):
        self.reporter.close()

    def reply(self, rerun, ok, error, error_type, celery_task_id, note=None):
        """Publish a re-run's outcome to the reply queue the daemon is waiting on."""
        task_id, attempt, reply_to = rerun
        body = protocol.reply_body(task_id, attempt, ok, error, error_type, celery_task_id, self.hostname, note)
        with self.app.producer_or_acquire() as producer:
            producer.publish(body, exchange="", routing_key=reply_to, serializer="json", retry=True,
                             retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5,
                                           "interval_max": 1})
            _expire_on_redis(producer, reply_to)
        log.info("failured task %s attempt %s: %s", task_id, attempt,
                 note or ("succeeded" if ok else f"failed: {error_type}"))


def _reason(reason):
    """``": reason"`` for a reason given (an Ignore's or a Reject's), else nothing."""
    text = clipped(clean_text(str(reason)), MAX_REASON_CHARS) if reason is not None else ""
    return f": {text}" if text else ""


def _expire_on_redis(producer, reply_to):
    """On Redis a queue is a key that lives until read: an answer that came after the daemon stopped waiting (a
    timeout, a daemon killed) stayed for ever, one key each. RabbitMQ drops such a queue itself (x-expires)."""
    if producer.connection.transport.driver_type != "redis":
        return
    try:
        producer.channel.client.expire(reply_to, protocol.REPLY_TTL_SECONDS)
    except Exception as exc:  # the answer is out; a key left behind is the lesser harm
        log.warning("failured reply %s: expiry not set: %s", reply_to, exc)


def error_text(exception, tb=None, einfo=None):
    """The exception as Python prints it (its causes first; the last frames of each), within the intake limit, as text
    the store holds (undecodable bytes a ``surrogateescape`` kept become U+FFFD, as intake would make them)."""
    if isinstance(tb, str):  # formatted already (with Python's ^^^ lines): the main process failed the task
        text = without_markers(tb).rstrip()
    else:
        if tb is None and einfo is not None:
            tb = getattr(einfo, "tb", None)
        text = exception_text(exception, tb)
    return bound_error(clean_text(text), MAX_ERROR_BYTES)


def failure_record(task_name, celery_task_id, error, error_type, args, kwargs, queue):
    payload = {"args": json_safe(list(args or ())), "kwargs": json_safe(dict(kwargs or {})),
               "celery_task_id": _text(celery_task_id), "queue": _text(queue)}
    task_type = task_type_for(task_name)
    if task_type != task_name:  # the name a retry sends
        payload[protocol.CELERY_TASK] = task_name
    if len(protocol.json_bytes(payload)) > MAX_PAYLOAD_BYTES:  # in bytes as sent: a Chinese character is 3
        payload["args"] = protocol.marked_repr(payload["args"])
        payload["kwargs"] = protocol.marked_repr(payload["kwargs"])
    return {"kind": "failure", "task_type": task_type, "error": error, "error_type": error_type,
            "payload": payload, "ref": celery_task_id}


TASK_TYPE_HASH_CHARS = 8


@functools.lru_cache(maxsize=1024)
def task_type_for(task_name):
    """The task type a Celery task is recorded under: its name, unless failured would refuse it or change it
    (over MAX_TASK_TYPE_CHARS characters, a control character, white space around it; Celery takes them all).
    Then it is the name with each control character written as an escape, cut to fit, and ``#`` with
    TASK_TYPE_HASH_CHARS hex digits of the name's hash: a type of its own, recorded rather than refused."""
    try:
        if check_task_type(task_name) == task_name:
            return task_name
    except InputError:
        pass
    digest = hashlib.sha256(task_name.encode("utf-8", "surrogatepass")).hexdigest()[:TASK_TYPE_HASH_CHARS]
    shown = printable(clean_text(task_name).strip()).replace("\n", "\\n").replace("\t", "\\t")
    task_type = f"{shown[:MAX_TASK_TYPE_CHARS - TASK_TYPE_HASH_CHARS - 1]}#{digest}"
    log.warning("failured: Celery task %s is no task type failured takes; recorded as task type %s",
                printable(repr(task_name))[:300], task_type)
    return task_type


class Remembered:
    """A bounded map, oldest forgotten first, shared by the threads of one process."""

    def __init__(self, size):
        self.size, self._items, self._lock = size, collections.OrderedDict(), threading.Lock()

    def put(self, key, value):
        with self._lock:
            self._put(key, value)

    def first(self, key):
        """Remember ``key``; True only for the first caller (the check and the mark are one step)."""
        with self._lock:
            if key in self._items:
                return False
            self._put(key, True)
            return True

    def _put(self, key, value):
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, key):
        with self._lock:
            return self._items.get(key)


def _text(value):
    return clean_text(value) if isinstance(value, str) else value


def _utf8(text):
    """Whether ``text`` has a UTF-8 form (no lone surrogate): only such text can be stored as itself."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def json_safe(value):
    """``value`` as JSON data. A value kombu's JSON carries (a datetime, a Decimal, a UUID, bytes, ...) is kept
    in kombu's own form, ``{"__type__": ..., "__value__": ...}``, which a worker's kombu reads back as that value
    when failured sends the task again. What else JSON cannot hold faithfully becomes
    ``{"__failured_repr__": repr}``: a text with a lone surrogate too (a store would refuse it, and losing the
    report to it is worse)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return value if _utf8(value) else protocol.marked_repr(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else protocol.marked_repr(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) and _utf8(k) for k in value):
        return {k: json_safe(v) for k, v in value.items()}
    return _kombu_form(value) or protocol.marked_repr(value)


def _kombu_form(value):
    """``value`` in kombu's ``{"__type__", "__value__"}`` form, when kombu reads that back as the same value (of
    the same type) and it is text a store holds; else None."""
    try:
        text = kombu_json.dumps(value)
        back = kombu_json.loads(text)
        form = json.loads(text)
        if (type(back) is type(value) and back == value and isinstance(form, dict)
                and form.keys() == {"__type__", "__value__"} and _utf8(json.dumps(form, ensure_ascii=False))):
            return form
    except Exception:  # not kombu's either (TypeError), or a value that does not compare (a NaN Decimal)
        pass
    return None




@shared_task(name=MANUAL_TASK)
def manual_recovery_task(task_id, force_retry=False):
    """Retry failured task ``task_id`` now: ``failured recover ID [--force]`` as a Celery task.

    Through the API when ``install`` was given one, else through the store (``FAILURE_DB``), which needs the
    daemon's config directory too (``FAILURE_CONFIG_DIR``: which task types have a handler). A refusal (recovered,
    unrecoverable, out of attempts without ``force_retry``) raises ``RefusedError`` with the reason.
    """
    target = _installed.reporter.target if _installed is not None else None
    if isinstance(target, HttpTarget):
        return target.recover(task_id, force_retry)
    # Only needed here; imported late because it pulls in the whole config machinery.
    from .. import manual
    from ..clock import SystemClock
    from ..config import load_config

    settings = load_settings()
    if not isinstance(target, StoreTarget):
        target = StoreTarget(settings.db, timeout=30.0)
    snapshot = load_config(settings.config_dir, settings.lang, model=False)
    task = manual.recover(target.open(), snapshot, int(task_id), SystemClock().now(), bool(force_retry))
    return {"task_id": task.id, "task_type": task.task_type, "status": task.status, "category": task.category,
            "attempts": task.attempts, "next_retry_at": task.next_retry_at}
