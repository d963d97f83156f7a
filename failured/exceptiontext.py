"""An exception as failured stores it: the last frames of its traceback and its error line, and its type's name.

Shared by the Python API (``report_failure(task_type, exc)``) and the Celery integration; imports nothing heavy.
"""

import collections
import linecache
import re
import traceback

TRACEBACK_FRAMES = 8  # of each exception in a chain
CHAINED = 10  # exceptions of a chain shown at most (the last ones: the one raised and its nearest causes)
CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
# Python 3.11's position markers under a frame's source line ("    ^^^^^^", "    ~~~~^^^^~~"): noise to a reader
# of a stored error, and words to the classifier.
_MARKER_LINE = re.compile(r"^[ \t]*[\^~]+[ \t]*\n?", re.MULTILINE)


def qualified_name(cls):
    module = getattr(cls, "__module__", "builtins")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def exception_text(exception, tb):
    """The exception as Python prints it, its causes and contexts first, each with the last frames of its
    traceback (``tb`` for ``exception`` itself; none when None) and its error line."""
    parts, seen = [], set()
    while True:
        parts.append(_one(exception, tb))
        seen.add(id(exception))
        earlier, link = _earlier(exception)
        if earlier is None or id(earlier) in seen or len(seen) == CHAINED:
            return "".join(reversed(parts)).rstrip()
        parts.append(link)
        exception, tb = earlier, earlier.__traceback__


def _earlier(exception):
    """(the exception ``exception`` was raised from or while handling, the line between them), or (None, None)."""
    if exception.__cause__ is not None:
        return exception.__cause__, CAUSE
    if exception.__context__ is not None and not exception.__suppress_context__:
        return exception.__context__, CONTEXT
    return None, None


def without_markers(text):
    """A traceback Python formatted (Celery's for a task its worker failed itself) without the ``^^^`` lines."""
    return _MARKER_LINE.sub("", text)


def _one(exception, tb):
    lines = ["Traceback (most recent call last):\n", *_last_frames(tb)] if tb is not None else []
    lines += traceback.format_exception_only(type(exception), exception)
    return "".join(lines)


def _last_frames(tb):
    # Formatted here rather than by traceback.format_exception, which works out the ^^^
    # markers of every frame (the whole stack, not just the last ones): that was most of
    # what a report cost the failing task. The text is Python's, without those markers.
    frames = collections.deque(maxlen=TRACEBACK_FRAMES)
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    lines = []
    for frame, lineno in frames:
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
        source = linecache.getline(code.co_filename, lineno or 0, frame.f_globals).strip()
        if source:
            lines.append(f"    {source}\n")
    return lines
