"""Handler kind ``celery``, daemon side: a retry re-sends the Celery task through the broker.

The task is sent by name (``send_task``) with the stored args and kwargs and the
``protocol`` headers; the worker's integration publishes the outcome to a reply
queue of this attempt's own, which this thread waits on. No answer within
``timeout`` is a failed attempt that says so. Nothing here needs a result backend.
"""

import importlib.util
import logging
import socket
import threading
import time

from ..errors import ConfigError
from ..handlers import RUNS_ELSEWHERE, Outcome, expand_env
from . import protocol

FIELDS = ("kind", "broker", "task", "queue", "countdown", "timeout")
log = logging.getLogger("failured.handlers")
REPLY_QUEUE_GRACE = 60  # RabbitMQ drops a reply queue this long after its wait is over (x-expires)

_apps = {}  # broker URL -> Celery app used for sending; guarded by _apps_lock
_apps_lock = threading.Lock()


def parse_celery(table, path, key):
    """The ``celery`` fields of a handler table -> HandlerSpec fields (``options``)."""
    if importlib.util.find_spec("celery") is None:
        raise ConfigError(path, f"{key}.kind", "kind = \"celery\" needs Celery: pip install 'failured[celery]'")
    broker = table.get("broker")
    if not isinstance(broker, str) or not broker.strip():
        raise ConfigError(path, f"{key}.broker", 'missing; set broker = "${CELERY_BROKER_URL}" (or a broker URL)')
    options = [("broker", broker)]
    for name in ("task", "queue"):
        value = table.get(name)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(path, f"{key}.{name}", "must be a non-empty string")
            options.append((name, value))
    countdown = table.get("countdown", 0)
    timeout = table.get("timeout", 60.0)
    if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or not 0 <= countdown < timeout:
        raise ConfigError(path, f"{key}.countdown", f"must be a number of seconds from 0 to under timeout ({timeout:g}): "
                          "the wait for the answer includes it")
    options.append(("countdown", float(countdown)))
    return {"options": tuple(options)}


def call_arguments(payload):
    """(args, kwargs) from a stored payload: the integration's ``{"args", "kwargs", ...}``, else kwargs = payload.

    A ValueError says why it cannot be sent again; its text leads with the ``[DATA]`` tag, so the attempt is a
    data error (no more retries: the next would fail the same way) whatever the wording's patterns say.
    """
    if "args" in payload or "kwargs" in payload:
        args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
    else:
        args, kwargs = [], dict(payload)
    where = _repr_marked(args, "args") or _repr_marked(kwargs, "kwargs")
    if where:
        raise ValueError(f"[DATA] payload {where} was kept only as its repr when reported (not JSON, or too large): "
                         "the task cannot be sent again as it ran; re-run it by hand")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("[DATA] payload args must be a list and kwargs an object")
    return args, kwargs


def _repr_marked(value, where):
    if isinstance(value, dict):
        if protocol.REPR_MARK in value:
            return where
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _repr_marked(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def _app_for(broker):
    with _apps_lock:
        # Imported under the lock: celery swaps in a lazy module while it imports, and a second
        # retry thread importing at that moment got "cannot import name 'Celery'" (seen under load).
        from celery import Celery  # optional dependency: only a configured celery handler needs it

        app = _apps.get(broker)
        if app is None:
            app = Celery("failured-retries", broker=broker, set_as_current=False)
            # Celery reads CELERY_BROKER_URL from the environment before its own broker setting: the handler's
            # broker must win (the daemon's environment may name another), for publishing and for the replies.
            app.conf.broker_read_url = app.conf.broker_write_url = broker
            app.conf.broker_connection_timeout = 4
            app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                                  "interval_max": 1}
            _apps[broker] = app
        return app


def run_celery(spec, task, on_start=None):
    """One retry through Celery; returns an Outcome (the caller turns exceptions into one too). ``on_start`` is
    told RUNS_ELSEWHERE before the task is sent: the daemon cannot stop it, so a stop or a takeover waits for its
    lease rather than send it again beside it."""
    options = dict(spec.options)
    try:
        broker = expand_env(options["broker"])
    except KeyError as exc:
        return Outcome(False, f"broker: environment variable {exc.args[0]!r} is not set", "KeyError")
    try:
        args, kwargs = call_arguments(task.payload)
    except ValueError as exc:
        return Outcome(False, str(exc), "ValueError")
    reported = "args" in task.payload  # by the integration: it names the queue, and a name not the task type
    name = options.get("task") or (task.payload.get(protocol.CELERY_TASK) if reported else None) or task.task_type
    # The queue the task first ran on, unless the handler names one.
    queue = options.get("queue") or (task.payload.get("queue") if reported else None)
    try:
        return _send_and_wait(_app_for(broker), spec, task, name, queue, args, kwargs,
                              options.get("countdown") or None, on_start)
    except Exception as exc:  # broker down, refused login, ...: a failed attempt, retried as usual
        from kombu.utils.url import maybe_sanitize_url

        text = str(exc).replace(broker, maybe_sanitize_url(broker))
        return Outcome(False, f"celery broker {maybe_sanitize_url(broker)}: {type(exc).__name__}: {text}",
                       type(exc).__name__)


def _note_runs_elsewhere(on_start, task):
    if on_start is None:
        return
    try:
        on_start(RUNS_ELSEWHERE)
    except Exception:  # the lease then ends as a command handler's would: logged, the retry goes on
        log.exception("task %s: the retry's lease not marked as running in a worker", task.id)


def _send_and_wait(app, spec, task, name, queue, args, kwargs, countdown, on_start=None):
    from kombu import Consumer, Queue

    reply_to = protocol.reply_queue_name(task.id, task.attempt)
    answers = []
    deadline = time.monotonic() + spec.timeout
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=spec.timeout)
        reply_queue = Queue(reply_to, durable=False, expires=spec.timeout + REPLY_QUEUE_GRACE)
        # The reply queue exists before the task is sent: an answer cannot come too early.
        with Consumer(conn, [reply_queue], callbacks=[lambda body, message: answers.append(body)],
                      accept=["json"], no_ack=True):
            _note_runs_elsewhere(on_start, task)
            # A message no worker took within the wait is dropped (expires): it never starts beside the next
            # attempt. (The task's own time_limit, not ours, bounds a run: the app knows its work.)
            sent = app.send_task(name, args=args, kwargs=kwargs, queue=queue, countdown=countdown,
                                 expires=spec.timeout,
                                 headers=protocol.headers(task.id, task.attempt, reply_to))
            while not answers and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                except socket.timeout:
                    pass
        try:
            reply_queue.bind(conn.default_channel).delete()
        except Exception:  # already gone, or the broker went away: RabbitMQ expires it anyway
            pass
    if not answers:
        return Outcome(False, f"no answer from Celery task {name} (celery id {sent.id}, queue {queue or 'default'}) "
                              f"within {spec.timeout:g}s: timed out (no worker took it, it still runs, or its worker "
                              "died; workers must call failured.integrations.celery.install(app))", "TimeoutError")
    answer = answers[0]
    if answer.get("ok"):
        if answer.get("note"):
            log.info("task %s %s: %s", task.id, task.task_type, answer["note"])
        return Outcome(True)
    return Outcome(False, answer.get("error") or f"Celery task {name} failed", answer.get("error_type"))
