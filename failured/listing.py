"""Which tasks to list: one filter shared by ``failured list``, ``GET /v1/tasks`` and the console.

The order is newest first by id (stable while tasks arrive), and a page's cursor is
the last id it showed: the next page is everything older, whatever was added since.
"""

import re
from dataclasses import dataclass

from . import store as store_module
from .classify import error_summary
from .errors import InputError
from .manual import parse_duration
from .states import TaskStatus
from .text import clean_text
from .store import LIST_ERROR_CHARS, LIST_LIMIT_MAX, LIST_TAIL_CHARS, MAX_GREP_CHARS

_CUT_SOURCE = re.compile(r"\A(?:    [^\n]*\n)+")  # indented lines first in a traceback's cut tail

STATUSES = tuple(TaskStatus)
DEFAULT_LIMIT = 50
MAX_NAME_CHARS = 200
MAX_VALUES = 20  # of one repeatable filter
MAX_SINCE_SECONDS = 100 * 365 * 86400  # beyond it a time is out of the platform's range


@dataclass(frozen=True)
class TaskFilter:
    """A checked listing request; ``since`` is seconds back from now, ``cursor`` the id to list below."""

    statuses: tuple = ()
    categories: tuple = ()
    task_types: tuple = ()
    since: float | None = None
    grep: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: int | None = None


def build_filter(statuses=(), categories=(), task_types=(), since=None, grep=None, limit=None, cursor=None):
    """A TaskFilter from people's words ('2h', '50', an opaque cursor); InputError naming what is wrong."""
    statuses = _names("status", statuses)
    for status in statuses:
        if status not in STATUSES:
            raise InputError(f"status {status[:40]!r} is not a task status: use {', '.join(STATUSES)}")
    if grep is not None and len(grep) > MAX_GREP_CHARS:
        raise InputError(f"grep text is {len(grep)} characters: at most {MAX_GREP_CHARS}")
    if grep is not None:
        grep = clean_text(grep)  # as the stored texts are cleaned (a NUL is U+FFFD there): a NUL ended LIKE's pattern
    return TaskFilter(statuses, _names("category", categories), _names("type", task_types),
                      since_seconds(since), grep or None, _limit(limit),
                      _cursor(cursor))


def since_seconds(text):
    """'2h' -> 7200.0 (None stays None); longer than a hundred years is a hundred years (everything)."""
    if text is None:
        return None
    return min(parse_duration(text), MAX_SINCE_SECONDS)


def _names(what, values):
    values = tuple(values or ())
    if len(values) > MAX_VALUES:
        raise InputError(f"at most {MAX_VALUES} values of {what}")
    for value in values:
        if len(value) > MAX_NAME_CHARS:
            raise InputError(f"{what} value is {len(value)} characters: at most {MAX_NAME_CHARS}")
        if not value:  # "?status=" filters nothing: say so rather than list everything
            raise InputError(f"{what} is given empty: give a value, or leave {what} out to list every {what}")
    return tuple(dict.fromkeys(values))


def _limit(value):
    if value is None:
        return DEFAULT_LIMIT
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= LIST_LIMIT_MAX:
        raise InputError(f"limit {text[:40]!r} must be a whole number from 1 to {LIST_LIMIT_MAX}")
    return int(text)


def _cursor(value):
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise InputError(f"cursor {text[:40]!r} is not one this server gave: pass next_cursor as it came")
    return int(text)


def list_page(task_filter, now, store=None):
    """(rows as plain dicts, next cursor or None) for one page of ``store`` (default: the one opened last)."""
    f = task_filter
    rows = store_module.list_tasks(f.statuses, f.categories, f.task_types,
                                   None if f.since is None else now - f.since, f.grep, f.cursor, f.limit + 1,
                                   store=store)
    more = len(rows) > f.limit
    rows = [_with_summary(row) for row in rows[:f.limit]]
    return rows, (str(rows[-1]["id"]) if more else None)


def _with_summary(row):
    """The row with its ``error`` as one reads it first (a traceback's exception line, not its first frames),
    from the error's head and tail."""
    head, tail = row["error"], row.pop("error_tail")
    if len(tail) < LIST_TAIL_CHARS:
        text = tail  # the whole error
    else:  # the tail's lines whole, less a frame's source lines whose File line the cut took
        text = f"{head}\n{_CUT_SOURCE.sub('', tail.partition(chr(10))[2])}"
    summary = error_summary(text)  # the text itself when it holds no traceback: then the head, as it was
    row["error"] = head if summary is text else summary[:LIST_ERROR_CHARS]
    return row
