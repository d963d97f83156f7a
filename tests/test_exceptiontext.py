"""How an exception becomes a stored error: as Python prints it, its chain included, without the ^^^ lines."""

import re
import traceback

from failured.exceptiontext import exception_text, without_markers
from failured.intake import record_failure
from failured.store import Task, open_store


def _sync_step():
    try:
        {}["order-1"]
    except KeyError:
        raise RuntimeError("sync step failed") from ConnectionResetError(104, "Connection reset by peer")


def _retry_once():
    try:
        _sync_step()
    except RuntimeError:
        return int("abc")


def _python_prints(exc):
    printed = "".join(traceback.format_exception(exc))
    return re.sub(r"^ *[\^~]+\n", "", printed, flags=re.MULTILINE).rstrip()


def test_a_chained_exception_is_stored_as_python_prints_it_causes_first():
    try:
        _retry_once()
    except ValueError as exc:
        text = exception_text(exc, exc.__traceback__)
        printed = _python_prints(exc)
    assert text == printed  # the suppressed KeyError context is left out, as Python leaves it out
    assert text.startswith("ConnectionResetError: [Errno 104] Connection reset by peer\n\n"
                           "The above exception was the direct cause of the following exception:")
    assert "During handling of the above exception, another exception occurred:" in text
    assert text.endswith("ValueError: invalid literal for int() with base 10: 'abc'")


def test_a_chain_that_loops_or_runs_long_ends():
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert exception_text(first, None) == ("ValueError: b\n\nDuring handling of the above exception, another "
                                           "exception occurred:\n\nValueError: a")
    exc = None
    for n in range(100):
        new = KeyError(n)
        new.__cause__ = exc
        exc = new
    assert exception_text(exc, None).count("KeyError") == 10  # the last ones: the raised one and its nearest causes


def test_the_markers_of_a_traceback_python_formatted_are_taken_out():
    try:
        _retry_once()
    except ValueError as exc:
        printed, expected = "".join(traceback.format_exception(exc)), _python_prints(exc)
    assert "^^^" in printed
    assert without_markers(printed).rstrip() == expected


def test_report_failure_of_a_chained_exception_stores_its_cause(tmp_path):
    store = open_store(tmp_path / "f.db")
    try:
        _sync_step()
    except RuntimeError as exc:
        task = Task.get_by_id(record_failure(store, "sync", exc))
    assert task.error_type == "RuntimeError"
    assert task.error_message.startswith("ConnectionResetError: [Errno 104] Connection reset by peer")
    assert task.error_message.endswith("RuntimeError: sync step failed")
