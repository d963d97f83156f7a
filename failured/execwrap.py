"""``failured exec -- CMD``: run a command as cron would, and record how it went.

Output passes straight through; stderr is also kept (its tail) as the error.
The argv becomes the task's own handler, so the daemon can retry it.
"""

import collections
import os
import selectors
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


# Forwarded to the command: a stop (TERM, INT), a hang-up of the terminal or ssh session (HUP), QUIT and the
# USR signals a job may use. Unforwarded, each would end exec before the command ends, and its failure unrecorded.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_POLL_SECONDS = 0.05  # how often the command's end is looked for where a pidfd cannot say it


def run_command(argv):
    """Run with stdout inherited and stderr tee'd; returns (exit status, stderr tail, error type) once the command
    ends, even while a process it left in the background still holds its stderr."""
    try:
        child = subprocess.Popen(argv, stderr=subprocess.PIPE)
    except FileNotFoundError:
        return _not_started(EXIT_NOT_FOUND, f"command not found: {argv[0]}", "FileNotFoundError")
    except PermissionError:
        return _not_started(EXIT_NOT_EXECUTABLE, f"permission denied: cannot execute {argv[0]}", "PermissionError")
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731 - stop the child, not just us
    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    tail = _Tail()
    try:
        _tee_until_exit(child, tail)
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    text = tail.text()
    if status < 0:
        return 128 - status, text or f"killed by signal {-status}", f"signal {-status}"
    return status, text or f"exit status {status}", None


class _Tail:
    """The last STDERR_TAIL_BYTES of what the command wrote to stderr."""

    def __init__(self):
        self.chunks, self.size = collections.deque(), 0

    def add(self, chunk):
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) > STDERR_TAIL_BYTES:
            self.size -= len(self.chunks.popleft())

    def text(self):
        return b"".join(self.chunks)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()


def _tee_until_exit(child, tail):
    """Pass the command's stderr on and keep its tail until the command ends (or closes stderr). A process it left
    in the background may hold the pipe for ever: what that one writes later goes on through a forwarder left
    behind, so exec ends with the command and the background process never writes into a closed pipe."""
    fd = child.stderr.fileno()
    os.set_blocking(fd, False)
    ended = _exit_handle(child.pid)
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        if ended is not None:
            selector.register(ended, selectors.EVENT_READ)
        try:
            while True:
                selector.select(None if ended is not None else EXIT_POLL_SECONDS)
                if not _pass_on_available(fd, tail):
                    return  # stderr closed: nothing holds it
                if child.poll() is not None:
                    if _pass_on_available(fd, tail):  # what it wrote before it ended is in the pipe already
                        _leave_forwarder(fd)
                    return
        finally:
            if ended is not None:
                os.close(ended)


def _exit_handle(pid):
    """A descriptor that becomes readable when ``pid`` ends (Linux's pidfd), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _pass_on_available(fd, tail):
    """Read what the pipe holds now and pass it on; False once the pipe is closed at its other end."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        tail.add(chunk)
        _write_stderr(chunk)


def _write_stderr(chunk):
    try:  # a terminal that hung up must not stop exec from recording the command's end
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
    except (OSError, ValueError):
        pass


def _leave_forwarder(fd):
    """Fork a process that copies the rest of the pipe to stderr until every writer closes it, then exits."""
    try:
        pid = os.fork()
    except OSError:
        return  # exec goes on; a background writer may then find the pipe closed
    if pid:
        return
    try:
        os.set_blocking(fd, True)
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        for held in {0, 1} - {fd}:  # only stderr is its business: a pipe reading exec's stdout sees exec end
            os.close(held)
        while chunk := os.read(fd, 65536):
            try:
                os.write(2, chunk)
            except OSError:
                pass  # stderr is gone: keep draining, so the writer never meets a closed pipe
    finally:
        os._exit(0)


def record_outcome(store, argv, task_type, status, error, error_type, *, payload=None, ref=None, timeout=3600.0):
    """Record what ``run_command(argv)`` returned: a success, or a failure whose handler is ``argv`` again;
    returns the failure's task id (None for a success)."""
    if status == 0:
        record_success(store, task_type)
        return None
    return record_failure(store, task_type, error, error_type=error_type, payload=payload, ref=ref,
                          source="exec", handler=handler_for(argv, timeout))
