"""How a retry runs: a command, an HTTP request or a Python function, turned into an Outcome.

``run_handler`` never raises: every failure (bad template, missing variable,
spawn error, timeout, HTTP status, exception) comes back as ``Outcome(ok=False)``.
"""

import ctypes
import importlib
import json
import logging
import os
import queue
import re
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from .classify import exception_type_in
from .errors import ConfigError, StoreError
from .text import clean_text
from .secrets import ENV_REF, expand_env

# The longest a handler may run: a retry's lease lasts twice that (policy.lease_seconds), and the database keeps
# times to the year 9999. A timeout of 1e12 seconds made every claim of a batch fail, so one task stopped every
# retry; refused in configuration and by ``exec --timeout``.
MAX_HANDLER_TIMEOUT = 7 * 86400

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 4096
MAX_BODY_CHARS = 500
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_FIELDS = {
    "command": ("kind", "argv", "cwd", "env", "timeout"),
    "http": ("kind", "method", "url", "headers", "timeout"),
    "python": ("kind", "target", "timeout"),
    "celery": ("kind", "broker", "task", "queue", "countdown", "timeout"),  # failured/integrations/celery_handler.py
}
_TASK_FIELDS = ("task_id", "ref", "task_type", "attempt")
_PAYLOAD_FIELD = re.compile(r"payload\[([^\[\]]+)\]\Z")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


@dataclass(frozen=True)
class HandlerSpec:
    """A validated handler from ``config/failured.toml`` (or from ``failured exec``)."""

    kind: str
    argv: tuple = ()
    cwd: str | None = None
    env: tuple = ()
    method: str = "POST"
    url: str = ""
    headers: tuple = ()
    target: str = ""
    timeout: float = 60.0
    options: tuple = ()  # (name, value) pairs of kinds defined elsewhere (celery: broker, task, queue, countdown)


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets to know about the task it retries."""

    id: int
    task_type: str
    ref: str | None
    payload: dict
    attempt: int


@dataclass(frozen=True)
class Outcome:
    """The result of one retry; ``error`` is at most MAX_ERROR_BYTES (its tail)."""

    ok: bool
    error: str | None = None
    error_type: str | None = None
    duration: float = 0.0
    pid: int | None = None


def unset_variables(spec, environ=os.environ):
    """[(field, NAME)] of the ``${NAME}``s a handler uses that are not set in ``environ``."""
    fields = [(f"env.{name}", value) for name, value in spec.env]
    fields += [(f"headers.{name}", value) for name, value in spec.headers]
    fields += [("url", spec.url)] + [(f"{name}", value) for name, value in spec.options if isinstance(value, str)]
    return [(field, name) for field, value in fields for name in ENV_REF.findall(value or "")
            if name not in environ]


class _Unusable(Exception):
    """``(error, error_type)``: the handler cannot even start; never leaves this module."""


# The tag (config/patterns/10-config.toml) an unusable handler's error starts with: a program not found, a working
# directory the daemon's user may not enter (an `exec` from a home directory), an unset variable, a payload key
# the argv names. Classified by its words, `cannot run 'sh' in cwd …: Permission denied` had been a system error,
# retried for half an hour.
UNUSABLE_TAG = "[CONFIG]"


def parse_handler(table: dict, path, key: str) -> HandlerSpec:
    """Validate one ``[...handler]`` TOML table; raise ConfigError naming ``key.<field>``."""
    if not isinstance(table, dict):
        raise ConfigError(path, key, "must be a table with kind = \"command\", \"http\" or \"python\"")
    kind = table.get("kind")
    if kind not in _FIELDS:
        got = "missing" if kind is None else f"is {kind!r}"
        raise ConfigError(path, f"{key}.kind", f"{got}; set kind = \"command\", \"http\" or \"python\"")
    for name in table:
        if name not in _FIELDS[kind]:
            allowed = ", ".join(_FIELDS[kind])
            raise ConfigError(path, f"{key}.{name}", f"unknown key for a {kind} handler; allowed: {allowed}")
    timeout = table.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_HANDLER_TIMEOUT:
        raise ConfigError(path, f"{key}.timeout", f"must be a number of seconds above 0 and at most "
                                                   f"{MAX_HANDLER_TIMEOUT} (7 days), e.g. timeout = 60")
    fields = {"kind": kind, "timeout": float(timeout)}
    parse = {"command": _parse_command, "http": _parse_http, "python": _parse_python, "celery": _parse_celery}[kind]
    fields.update(parse(table, path, key))
    return HandlerSpec(**fields)


def _parse_command(table, path, key):
    argv = table.get("argv")
    if isinstance(argv, str):  # no shell splits it: which words are the program's is the operator's to say
        words = ", ".join(f'"{word}"' for word in argv.split()) or '"program"'
        raise ConfigError(path, f"{key}.argv", f"is a string; it must be a list of the program and its arguments: "
                                               f"argv = [{words}]")
    if not isinstance(argv, list) or not argv:
        raise ConfigError(path, f"{key}.argv", 'missing or empty; set argv = ["program", "arg", ...]')
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise ConfigError(path, f"{key}.argv[{i}]", "must be a string; quote it")
        try:
            list(_placeholders(arg))
        except ValueError as exc:
            raise ConfigError(path, f"{key}.argv[{i}]", str(exc)) from None
    cwd = table.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(path, f"{key}.cwd", "must be a directory path string")
    env = _string_table(table.get("env", {}), path, f"{key}.env")
    return {"argv": tuple(argv), "cwd": cwd, "env": env}


def _parse_http(table, path, key):
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(path, f"{key}.url", 'missing or not http(s); set url = "https://host/path"')
    method = table.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise ConfigError(path, f"{key}.method", f"must be one of {', '.join(HTTP_METHODS)}")
    headers = _string_table(table.get("headers", {}), path, f"{key}.headers")
    return {"url": url, "method": method.upper(), "headers": headers}


def _parse_python(table, path, key):
    target = table.get("target")
    if not isinstance(target, str) or not _TARGET.match(target):
        got = "missing" if target is None else f"is {target!r}"
        raise ConfigError(path, f"{key}.target", f'{got}; set target = "package.module:function" (note the colon)')
    return {"target": target}


def _string_table(value, path, key):
    if not isinstance(value, dict):
        raise ConfigError(path, key, 'must be a table of strings, e.g. { NAME = "value" }')
    for name, item in value.items():
        if not isinstance(item, str):
            raise ConfigError(path, f"{key}.{name}", "must be a string; quote it")
    return tuple(value.items())


def run_handler(spec: HandlerSpec, task: TaskContext, *, on_start=None) -> Outcome:
    """Run one retry of ``task`` with ``spec``; never raises."""
    started = time.monotonic()
    runner = {"command": _run_command, "http": _run_http, "python": _run_python, "celery": _run_celery}.get(spec.kind)
    try:
        if runner is None:
            raise _Unusable(f"unknown handler kind {spec.kind!r}", "ValueError")
        outcome = runner(spec, task, on_start)
    except _Unusable as exc:  # as configured, the handler cannot run: no retry will do better until it changes
        error, error_type = exc.args
        outcome = Outcome(False, f"{UNUSABLE_TAG} {error}", error_type)
    except Exception as exc:  # a bug here must not kill the executor thread
        log.exception("task %s: handler %s crashed", task.id, spec.kind)
        outcome = Outcome(False, f"handler crashed: {exc!r}", type(exc).__name__)
    error = None if outcome.error is None else _tail(outcome.error, MAX_ERROR_BYTES)
    return Outcome(outcome.ok, error, outcome.error_type, time.monotonic() - started, outcome.pid)


def _placeholders(template):
    """Yield (literal, field) pairs; field is a task field name, ("payload", key) or None.

    Parsed ourselves rather than with str.format_map so that ``{payload.__class__}``
    and friends can never reach attribute or index lookups on real objects.
    """
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            yield literal, None
        elif spec or conversion:
            raise ValueError(f"placeholder {{{field}}} may not have a conversion or format spec")
        elif field in _TASK_FIELDS:
            yield literal, field
        elif match := _PAYLOAD_FIELD.match(field):
            yield literal, ("payload", match.group(1))
        else:
            raise ValueError(
                f"unsupported placeholder {{{field}}}; use {{payload[KEY]}}, {{task_id}}, {{ref}}, "
                "{task_type} or {attempt} (write {{ and }} for literal braces)"
            )


def _render(where, template, task):
    """One argument with its placeholders filled in; non-string payload values as JSON."""
    values = {"task_id": task.id, "ref": task.ref or "", "task_type": task.task_type, "attempt": task.attempt}
    out = []
    try:
        for literal, field in _placeholders(template):
            if isinstance(field, tuple) and field[1] not in task.payload:
                raise _Unusable(f"{where}: payload has no key {field[1]!r}", "KeyError")
            value = task.payload[field[1]] if isinstance(field, tuple) else values.get(field, "")
            out += [literal, value if isinstance(value, str) else json.dumps(value)]
    except ValueError as exc:
        raise _Unusable(f"{where}: {exc}", "ValueError") from None
    return "".join(out)


# What a command handler inherits from the daemon: enough to find programs and speak the
# locale, never the daemon's secrets (robot keys, API token). Anything else is named in `env`.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
                 "LC_MESSAGES", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def _command_argv_env(spec, task):
    argv = [_render(f"argv[{i}]", template, task) for i, template in enumerate(spec.argv)]
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    for name, value in spec.env:
        try:
            env[name] = expand_env(value)
        except KeyError as exc:  # name the variable, never the values
            raise _Unusable(f"env {name}: environment variable {exc.args[0]!r} is not set", "KeyError") from None
    if not argv:
        raise _Unusable("argv is empty", "ValueError")
    return argv, env


try:  # looked up once here: the forked child should do as little as possible
    _PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid):
    # A daemon killed with -9 cannot clean up; without this its handler keeps running
    # while the restarted daemon re-runs the same task, so the work happens twice.
    # PDEATHSIG fires when the spawning *thread* exits: fine, run_handler waits in it.
    # (preexec_fn is discouraged with threads; this one only makes two syscalls.)
    def preexec():
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the daemon died before prctl took effect
                os._exit(1)

    return preexec


def _run_command(spec, task, on_start):
    argv, env = _command_argv_env(spec, task)
    # Output goes to files, not pipes: memory stays bounded, and a grandchild that
    # keeps the descriptors open cannot make us wait past the child's exit.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            where = f" in cwd {spec.cwd!r}" if spec.cwd else ""
            raise _Unusable(f"cannot run {argv[0]!r}{where}: {exc}", type(exc).__name__) from None
        try:
            if on_start is not None:
                on_start(proc.pid)
        except StoreError as exc:  # the database is away (the store says so once): the handler runs on
            log.warning("task %s: handler pid %s not recorded (%s); it runs on", task.id, proc.pid, exc)
        except Exception:  # the child already runs; failing to record its pid must not orphan it
            log.exception("task %s: on_start(%s) failed; handler keeps running", task.id, proc.pid)
        try:
            code = proc.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            # The child leads its own session, so its pid is the process group id: killing
            # the group also takes the grandchildren a script started. Not reaped yet, so
            # the id cannot have been reused.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Outcome(False, f"timed out after {spec.timeout:g}s", "TimeoutExpired", pid=proc.pid)
        if code == 0:
            return Outcome(True, pid=proc.pid)
        status = f"exit {code}" if code > 0 else f"signal {-code}"
        output = _file_tail(err) or _file_tail(out)
        # The type is the exception the output names (a traceback's last line), as for a reported error; the
        # status stays in the message, where the rules read it (exit 137, signal 9).
        return Outcome(False, f"{status}: {output}" if output else status, exception_type_in(output), pid=proc.pid)


def _file_tail(f):
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - MAX_ERROR_BYTES))
    return _tail(clean_text(f.read()).strip(), MAX_ERROR_BYTES - 32)


def _tail(text, limit):
    """The last ``limit`` bytes of ``text``; when cut, from the first whole line in them, after a "…" line."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    kept = data[-limit:].decode("utf-8", "ignore")
    line_start = kept.find("\n") + 1
    return "…\n" + (kept[line_start:] if 0 < line_start < len(kept) else kept)


def _run_http(spec, task, on_start):
    headers = {}
    for name, value in spec.headers:
        try:
            headers[name] = expand_env(value)
        except KeyError as exc:
            raise _Unusable(f"header {name}: environment variable {exc.args[0]!r} is not set", "KeyError") from None
    body = {"task_id": task.id, "task_type": task.task_type, "ref": task.ref, "payload": task.payload,
            "attempt": task.attempt}  # fmt: skip
    query = spec.url.partition("?")[2]
    # Short values ("1", "no") would garble the text if masked; secrets are longer.
    secrets = [v for v in (*headers.values(), query) if len(v) >= 4]
    import requests  # imported here: ~0.1 CPU-s that every process that runs no HTTP handler would pay at start

    try:
        with requests.request(spec.method, spec.url, json=body, headers=headers, timeout=spec.timeout,
                              stream=True) as resp:  # fmt: skip
            status = resp.status_code
            if 200 <= status < 300:
                return Outcome(True)
            excerpt = clean_text(next(resp.iter_content(4 * MAX_BODY_CHARS), b""))
    except requests.RequestException as exc:
        return Outcome(False, _mask(str(exc), secrets), type(exc).__name__)
    excerpt = _mask(excerpt, secrets)[:MAX_BODY_CHARS].strip()  # mask first: a cut secret still leaks
    return Outcome(False, f"HTTP {status}: {excerpt}", f"HTTP {status}")


def _mask(text, secrets):
    """Hide header values and query strings: error text ends up in the database and in alerts."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"\?[^\s'\"()<>]*=[^\s'\"()<>]*", "?***", text)


def _run_python(spec, task, on_start):
    # The timeout is enforced by running the function in another thread and giving up on
    # it: a thread cannot be killed, so after a timeout it is abandoned (and may still
    # finish its work later), but the executor slot is freed and the retry counts as failed.
    # Importing happens in that thread too, since module code can hang as well.
    outcome = _PYTHON_CALLS.call(spec.target, task.payload, spec.timeout)
    return python_timed_out(spec, task) if outcome is None else outcome


def run_python_here(spec, task):
    """``run_handler`` of a python handler in the calling thread, without its timeout: the caller gives up on
    it (see queue.Runner), saving the hand-over to a thread of ours and back (18 µs of a 21 µs no-op call)."""
    started = time.monotonic()
    result = {}
    _call_target(spec.target, task.payload, result)
    outcome = result["outcome"]
    error = None if outcome.error is None else _tail(outcome.error, MAX_ERROR_BYTES)
    return Outcome(outcome.ok, error, outcome.error_type, time.monotonic() - started)


def python_timed_out(spec, task):
    """The Outcome of a python handler given up on after its timeout (its thread left to finish alone)."""
    log.warning("task %s: python handler %s abandoned after %gs", task.id, spec.target, spec.timeout)
    return Outcome(False, f"timed out after {spec.timeout:g}s (thread abandoned)", "TimeoutExpired", spec.timeout)


class _PythonCalls:
    """Long-lived threads that run python handlers: a call goes to an idle one, and a thread is
    started only when none is idle (a thread per call cost ~10 % of a flood of retries).

    A call that times out leaves its thread behind; it rejoins the idle ones when the call
    ends. Past MAX_IDLE idle threads, a finishing thread ends instead.
    """

    MAX_IDLE = 16

    def __init__(self):
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _idle and _started
        self._idle = 0  # threads waiting for a job, less those already promised one
        self._started = 0

    def call(self, target, payload, timeout):
        """The Outcome of ``target(**payload)``, or None when it did not end within ``timeout`` s."""
        result, done = {}, threading.Event()
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._started += 1
                threading.Thread(target=self._serve, name=f"python-handler-{self._started}", daemon=True).start()
        self._jobs.put((target, payload, result, done))
        return result["outcome"] if done.wait(timeout) else None

    def _serve(self):
        while True:
            target, payload, result, done = self._jobs.get()
            _call_target(target, payload, result)
            with self._lock:
                if self._idle >= self.MAX_IDLE:
                    done.set()
                    return
                self._idle += 1
            done.set()


_PYTHON_CALLS = _PythonCalls()


def _parse_celery(table, path, key):
    from .integrations.celery_handler import parse_celery  # Celery is optional: only loaded when configured

    return parse_celery(table, path, key)


# The handler pid of a retry that runs where no one here can see or stop it (a Celery worker): only its lease,
# which the handler's timeout bounds, says when it is surely over.
RUNS_ELSEWHERE = -1


def _run_celery(spec, task, on_start):
    from .integrations.celery_handler import run_celery

    return run_celery(spec, task, on_start)


def _call_target(target, payload, result):
    # BaseException: a SystemExit from handler code must become an Outcome, not a silent thread death.
    try:
        module_name, _, func_name = target.partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
    except BaseException as exc:
        name = type(exc).__name__
        result["outcome"] = Outcome(False, f"cannot import {target!r}: {name}: {exc}", name)
        return
    try:
        func(**payload)
        result["outcome"] = Outcome(True)
    except BaseException as exc:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        result["outcome"] = Outcome(False, str(exc) or name, name)
