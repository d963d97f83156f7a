"""``failured exec -- CMD``: run a command as cron would, and record how it went.

Output passes straight through; stderr is also kept (its tail) as the error.
The argv becomes the task's own handler, so the daemon can retry it.
"""

import collections
import os
import signal
import subprocess
import sys

from .intake import record_failure, record_success

STDERR_TAIL_BYTES = 4096
EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126


def _escape_braces(argument):
    # The handler fills {placeholders}; a literal brace in the user's argv must stay literal.
    return argument.replace("{", "{{").replace("}", "}}")


def handler_for(argv, timeout):
    return {"kind": "command", "argv": [_escape_braces(a) for a in argv], "cwd": os.getcwd(), "timeout": timeout}


def _not_started(status, reason, error_type):
    print(f"failured exec: {reason}", file=sys.stderr)  # as a shell would say it: the exit status alone does not
    return status, reason, error_type


def run_command(argv):
    """Run with stdout inherited and stderr tee'd; returns (exit status, stderr tail, error type)."""
    try:
        child = subprocess.Popen(argv, stderr=subprocess.PIPE)
    except FileNotFoundError:
        return _not_started(EXIT_NOT_FOUND, f"command not found: {argv[0]}", "FileNotFoundError")
    except PermissionError:
        return _not_started(EXIT_NOT_EXECUTABLE, f"permission denied: cannot execute {argv[0]}", "PermissionError")
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731 - stop the child, not just us
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    tail = collections.deque()
    size = 0
    try:
        for chunk in iter(lambda: child.stderr.read1(65536), b""):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail.append(chunk)
            size += len(chunk)
            while size - len(tail[0]) > STDERR_TAIL_BYTES:
                size -= len(tail.popleft())
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    text = b"".join(tail)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
    if status < 0:
        return 128 - status, text or f"killed by signal {-status}", f"signal {-status}"
    return status, text or f"exit status {status}", None


def record_outcome(store, argv, task_type, status, error, error_type, *, payload=None, ref=None, timeout=3600.0):
    """Record what ``run_command(argv)`` returned: a success, or a failure whose handler is ``argv`` again;
    returns the failure's task id (None for a success)."""
    if status == 0:
        record_success(store, task_type)
        return None
    return record_failure(store, task_type, error, error_type=error_type, payload=payload, ref=ref,
                          source="exec", handler=handler_for(argv, timeout))
