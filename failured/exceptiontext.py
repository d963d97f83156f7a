"""An exception as failured stores it: the last frames of its traceback and its error line, and its type's name.

Shared by the Python API (``report_failure(task_type, exc)``) and the Celery integration; imports nothing heavy.
"""

import collections
import linecache
import traceback

TRACEBACK_FRAMES = 8


def qualified_name(cls):
    module = getattr(cls, "__module__", "builtins")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def exception_text(exception, tb):
    """The last frames of traceback ``tb`` (none when None) and the error line, as Python prints them."""
    lines = ["Traceback (most recent call last):\n", *_last_frames(tb)] if tb is not None else []
    lines += traceback.format_exception_only(type(exception), exception)
    return "".join(lines).rstrip()


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
