"""Recording failures and successes: the one way tasks enter the store."""

import json
import logging
import os
import re
import threading
from pathlib import Path

from .clock import SystemClock
from .errors import InputError
from .exceptiontext import exception_text, qualified_name
from .integrations.protocol import marked_repr
from .settings import load_settings
from .secrets import masked, reporter_secrets
from .store import open_store
from .store import tasks as rows
from .text import CONTROL_CHARACTERS, clean_text

MAX_ERROR_BYTES = 64 * 1024
MAX_TASK_TYPE_CHARS = 200
MAX_NAME_BYTES = 1024  # error_type and ref: a class name, a reference; longer ones are cut in the middle like the error
MAX_PAYLOAD_BYTES = 1024 * 1024  # as JSON, the HTTP API's body limit: a retry's arguments, not its data
SOURCES = ("python", "cli", "exec", "http")

log = logging.getLogger(__name__)
_default_stores = {}
_default_lock = threading.Lock()
_reporting = {}  # what the reporting settings were read from -> those settings (one entry)


# A text longer than this (the API takes at most a megabyte) is masked only where the cut keeps it, and
# MASK_REACH characters past each side: a secret or a credential's shape (``password=…``) that reaches into
# what the cut keeps lies whole within that. A credential given only in the part cut away is not looked for
# in the rest.
MAX_MASKED_CHARS = 1024 * 1024
MASK_REACH = 16 * 1024


def bound_error(text, limit=MAX_ERROR_BYTES, cut_before=0):
    """Cut text over ``limit`` UTF-8 bytes, keeping head and tail (a traceback's last line matters);
    ``cut_before``: bytes of its middle already cut (``stored_text``). A lone surrogate (undecodable bytes a
    ``surrogateescape`` decoding kept) becomes U+FFFD: UTF-8 has no form for it, and a report must never fail on it."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        text = clean_text(text)
        data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    keep = (limit - 64) // 2
    marker = f"\n…[failured: {len(data) - 2 * keep + cut_before} bytes cut]…\n"
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[-keep:].decode("utf-8", "ignore")
    return head + marker + tail


# Inside a task type (surrounding white space is stripped): a task type is printed in logs, terminals and chat
# messages, where these forge lines, move the cursor or reorder what the reader sees.
_CONTROL_CHARACTER = re.compile(f"[{CONTROL_CHARACTERS}]")


def check_task_type(task_type):
    """The task type without surrounding whitespace (``str.isspace``).

    Refused when it has no other character, holds a control character, or is over MAX_TASK_TYPE_CHARS as
    given (so the HTTP API's schema, maxLength 200 and its patterns, says the same).
    """
    given = clean_text(task_type if task_type is not None else "")
    if len(given) > MAX_TASK_TYPE_CHARS:
        raise InputError(f"task type is {len(given)} characters long: at most {MAX_TASK_TYPE_CHARS}")
    cleaned = given.strip()
    if not cleaned:
        raise InputError("task type is empty: give the kind of task that failed, e.g. --type tracking_update")
    # Looked for in the text as given: clean_text makes a NUL U+FFFD (one character for one), which had been
    # stored as a type no handler's name matched.
    control = _CONTROL_CHARACTER.search(task_type.strip() if isinstance(task_type, str) else cleaned)
    if control:
        raise InputError(f"task type has a control character (U+{ord(control.group()):04X} at character "
                         f"{control.start() + 1}): a task type is one line of printable text, e.g. tracking_update")
    return cleaned


def parse_payload(payload):
    """A dict, a JSON object text, or None -> JSON text (or None). Anything else is an InputError."""
    if payload is None:
        return None
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload, parse_int=json_int)
        except ValueError as exc:
            raise InputError(f"payload is not valid JSON ({exc}): give a JSON object such as '{{\"order_id\": 1}}'") from None
        except RecursionError:
            raise InputError(_NESTED_TOO_DEEPLY) from None
    if not isinstance(payload, dict):
        raise InputError(f"payload must be a JSON object, not {type(payload).__name__}: wrap it in one, e.g. "
                         "{\"value\": ...} (a dict from Python)")
    try:
        # NaN and Infinity are no JSON: stored, they made every answer that shows the task invalid JSON.
        # A value JSON cannot hold (a set, an object) is kept as its repr, marked as such: never passed as a string
        # a retry would take for the value.
        text = json.dumps(payload, ensure_ascii=False, default=marked_repr, allow_nan=False)
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("payload holds a lone surrogate (\\ud800-\\udfff), which is not text: send valid "
                         "UTF-8") from None
    except (ValueError, TypeError) as exc:  # circular references, NaN or Infinity; a key that is not text
        advice = (" (JSON has no NaN or Infinity: send null or a string)"
                  if isinstance(exc, ValueError) and "float" in str(exc) else "")
        raise InputError(f"payload cannot be stored as JSON: {exc}{advice}") from None
    except RecursionError:
        raise InputError(_NESTED_TOO_DEEPLY) from None
    size = len(data)
    if size > MAX_PAYLOAD_BYTES:
        raise InputError(f"payload is {size:,} bytes as JSON, more than the {MAX_PAYLOAD_BYTES:,} a task may carry: "
                         "keep large data elsewhere and pass its id or path")
    return text


MAX_INT_DIGITS = 4300  # Python's own limit on converting digits to an int


def json_int(text):
    """A JSON integer; one too long to read is refused in JSON's words, not Python's."""
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(text):,} digits is too long: send it as a string")
    return int(text)


_NESTED_TOO_DEEPLY = "payload is nested too deeply to store: give a flatter JSON object (a retry's arguments)"


def bound_name(text, secrets):
    """An error type or a reference as stored: cleaned, secrets masked, cut in the middle over MAX_NAME_BYTES."""
    return stored_text(text, secrets, MAX_NAME_BYTES)


def stored_text(text, secrets, limit=MAX_ERROR_BYTES):
    """``bound_error(masked(clean_text(text), secrets), limit)``, in time bounded by MAX_MASKED_CHARS rather
    than by the text: past it, only the head and tail the cut keeps, and MASK_REACH characters past each, are
    cleaned and masked (a 100 MB error took 15 CPU-s to mask whole before it was cut)."""
    reach = limit + MASK_REACH  # characters: at least as many as the bytes the cut keeps
    if len(text) <= max(MAX_MASKED_CHARS, 2 * reach):
        return bound_error(masked(clean_text(text), secrets), limit)
    cut = len(text[reach:-reach].encode("utf-8", "surrogatepass"))
    return bound_error(masked(clean_text(text[:reach] + text[-reach:]), secrets), limit, cut)


def record_failure(store, task_type, error, *, error_type=None, payload=None, ref=None,
                   source="python", handler=None, clock=None, secrets=()):
    """Write one task row and its first event in one transaction; returns the task id.

    ``secrets`` are masked in the error, the error type and the reference before they are stored (the
    daemon masks the error again with every secret it knows when it decides the task). The payload is
    stored as given: a retry needs it as it was.
    """
    secrets = (*secrets, *store.secrets)  # the reporter's own database password, even where no daemon knows it
    task_type = masked(check_task_type(task_type), secrets)
    if source not in SOURCES:
        raise InputError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    error, error_type = _error_given(error, error_type)
    for name, value in (("error_type", error_type), ("ref", ref)):
        if value is not None and not isinstance(value, (str, bytes)):
            raise InputError(f"{name} must be text, not {type(value).__name__}: pass str({name})")
    message = stored_text(error, secrets)
    error_type = bound_name(error_type, secrets).strip() or None if error_type is not None else None
    ref = bound_name(ref, secrets) if ref is not None else None
    payload_json = parse_payload(payload)
    handler_json = json.dumps(handler) if handler is not None else None
    now = (clock or SystemClock()).now()
    return rows.insert_task(store, task_type, ref, source, error_type, message, payload_json, handler_json, now)


def _error_given(error, error_type):
    """(error text, error type): an exception given as the error (``report_failure("sync", exc)`` in an ``except``
    block) is its traceback's last frames and error line, its type its qualified name unless one was given."""
    if isinstance(error, BaseException):
        name = error_type if error_type is not None else qualified_name(type(error))
        return exception_text(error, error.__traceback__), name
    if not isinstance(error, (str, bytes)):
        raise InputError(f"error must be text or an exception, not {type(error).__name__}: pass str(error) or the "
                         "exception itself")
    return error, error_type


def record_success(store, task_type, count=1, *, clock=None):
    """Add ``count`` successful runs of ``task_type`` to this hour's tally."""
    task_type = check_task_type(task_type)
    if not isinstance(count, int) or count < 1:
        raise InputError(f"success count must be a whole number >= 1, not {count!r}")
    now = (clock or SystemClock()).now()
    with store.transaction():
        rows.add_successes(store, task_type, count, now)


def default_store(settings=None):
    """The store named by the environment (FAILURE_DB), opened once per process."""
    path = (settings or load_settings()).db
    with _default_lock:
        store = _default_stores.get(path)
        if store is None:
            store = _default_stores[path] = open_store(path)
            if store.created:  # an application started in another directory: its reports would go unseen
                log.warning("failured: created a new database at %s: if a daemon should see these tasks, "
                            "check FAILURE_DB", Path(path).absolute())
        return store


def report_failure(task_type, error, *, error_type=None, payload=None, ref=None, source="python"):
    """Record a failed task in the database named by FAILURE_DB; returns its id.

    The running daemon classifies and acts on it within about a second.
    """
    settings, secrets = _reporting_settings()
    return record_failure(default_store(settings), task_type, error, error_type=error_type, payload=payload, ref=ref,
                          source=source, secrets=secrets)


def _reporting_settings():
    """(settings, secrets to mask) of this process, parsed again only when what a report uses of them may
    have changed: FAILURE_DB, FAILURE_CONFIG_DIR, the working directory or its ``.env`` (parsing every
    variable from the whole environment cost a quarter of a report)."""
    try:
        dotenv = os.stat(".env")
        dotenv = (dotenv.st_mtime_ns, dotenv.st_size, dotenv.st_ino)
    except OSError:
        dotenv = None
    key = (os.environ.get("FAILURE_DB"), os.environ.get("FAILURE_CONFIG_DIR"), os.getcwd(), dotenv)
    found = _reporting.get(key)
    if found is None:
        settings = load_settings()
        found = (settings, reporter_secrets(str(settings.config_dir)))
        _reporting.clear()
        _reporting[key] = found
    return found


def report_success(task_type, count=1):
    """Record successful runs of a task type (the failure-rate threshold's denominator)."""
    record_success(default_store(_reporting_settings()[0]), task_type, count)
