"""Training the learned fallback in a child process, so that the daemon's memory and GIL stay its own.

Training reads the corpus and builds about 150 MB of working data. Freed in the daemon's own
process, most of that would stay resident (the heap keeps what it once held), and its CPU
would compete with classification for the GIL while a reload trains. A child process
(``python -m failured.training``) reads the categories and labels on stdin, trains, and writes
the packed model on stdout; its memory goes back to the system when it exits. Where the child
cannot run or fails, the parent trains in its own process as before: the model is never lost
for want of a child.
"""

import functools
import logging
import marshal
import subprocess
import sys

from . import model as learner
from .classify import learned_fallback

log = logging.getLogger("failured.model")

CHILD_TIMEOUT = 600  # seconds: training the shipped corpus takes about 15


@functools.lru_cache(maxsize=2)  # as learned_fallback: the model serving and the one a reload builds
def train_apart(category_names, labels=()):
    """``learned_fallback(category_names, labels)``, trained in a child process (or here if it fails)."""
    request = marshal.dumps((sorted(category_names), [tuple(label) for label in labels]))
    try:
        child = subprocess.run([sys.executable, "-m", "failured.training"], input=request, capture_output=True,
                               timeout=CHILD_TIMEOUT, check=False)
        if child.returncode == 0:
            state = marshal.loads(child.stdout)
            del child  # its output, read in pieces, is as large as the model
            trained = None if state is None else learner.TextModel.from_packed_state(state)
            learner.return_freed_memory()
            return trained
        reason = f"exit status {child.returncode}: {child.stderr.decode('utf-8', 'replace').strip()[-300:]}"
    except (OSError, subprocess.SubprocessError, ValueError, EOFError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("training the model in a child process failed (%s); training in this process", reason)
    return learned_fallback(category_names, labels)


def main():
    names, labels = marshal.loads(sys.stdin.buffer.read())
    trained = learned_fallback(frozenset(names), tuple(map(tuple, labels)))
    sys.stdout.buffer.write(marshal.dumps(None if trained is None else trained.packed_state()))


if __name__ == "__main__":
    main()
