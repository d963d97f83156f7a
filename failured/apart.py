"""Work done in a child process (``python -m failured.<module>``), so that its memory goes back to the system.

Training the model and compiling the patterns' Hyperscan database each build tens of MB of working data;
freed in the daemon's own process, much of it would stay resident (the heap keeps what it once held). The
parent writes its request on the child's stdin and reads the answer on its stdout, both marshalled; where
the child cannot run or fails, the caller does the work itself, as it did before.
"""

import marshal
import subprocess
import sys


class ChildFailed(Exception):
    """The child could not run or failed; the message says why."""


def run_apart(module, request, timeout):
    """The answer of ``python -m module`` to ``request``; ChildFailed when there is none."""
    try:
        child = subprocess.run([sys.executable, "-m", module], input=marshal.dumps(request), capture_output=True,
                               timeout=timeout, check=False)
        if child.returncode == 0:
            return marshal.loads(child.stdout)
        reason = f"exit status {child.returncode}: {child.stderr.decode('utf-8', 'replace').strip()[-300:]}"
    except (OSError, subprocess.SubprocessError, ValueError, EOFError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    raise ChildFailed(reason)


def serve_apart(answer):
    """The child's side: ``answer(request)`` for the request on stdin, written to stdout."""
    sys.stdout.buffer.write(marshal.dumps(answer(marshal.loads(sys.stdin.buffer.read()))))
