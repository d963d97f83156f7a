"""Training the learned fallback in a child process, so that the daemon's memory and GIL stay its own.

Training reads the corpus and builds about 150 MB of working data. Freed in the daemon's own
process, most of that would stay resident (the heap keeps what it once held), and its CPU
would compete with classification for the GIL while a reload trains. A child process
(``python -m failured.training``, see apart.py) reads the categories and labels, trains, and answers
with the packed model; its memory goes back to the system when it exits. Where the child
cannot run or fails, the parent trains in its own process as before: the model is never lost
for want of a child.
"""

import functools
import logging

from . import model as learner
from .apart import ChildFailed, run_apart, serve_apart
from .classify import learned_fallback

log = logging.getLogger("failured.model")

CHILD_TIMEOUT = 600  # seconds: training the shipped corpus takes about 15


@functools.lru_cache(maxsize=2)  # as learned_fallback: the model serving and the one a reload builds
def train_apart(category_names, labels=()):
    """``learned_fallback(category_names, labels)``, trained in a child process (or here if it fails)."""
    try:
        state = run_apart("failured.training", (sorted(category_names), [tuple(label) for label in labels]),
                          CHILD_TIMEOUT)
    except ChildFailed as failed:
        log.warning("training the model in a child process failed (%s); training in this process", failed)
        return learned_fallback(category_names, labels)
    trained = None if state is None else learner.TextModel.from_packed_state(state)
    learner.return_freed_memory()  # the child's answer, read in pieces, was as large as the model
    return trained


def _train(request):
    names, labels = request
    trained = learned_fallback(frozenset(names), tuple(map(tuple, labels)))
    return None if trained is None else trained.packed_state()


if __name__ == "__main__":
    serve_apart(_train)
