"""The compiled speed-ups (failured/_speedups.c), where they are built from the source beside them.

An editable install (``pip install -e .``) compiles the extension once; a later ``git pull`` that
changes ``_speedups.c`` leaves that build in place, and its functions may compute what the Python
code no longer does (or lack ones added since). The build records its source's SHA-256
(setup.py): where the source beside the package differs, the compiled code is not used, the Python
code gives the answers (slower), and the log says how to rebuild. A regular install ships no
source: what it built is what it runs.
"""

import hashlib
import logging
from pathlib import Path

log = logging.getLogger("failured")

SOURCE = Path(__file__).with_name("_speedups.c")


def _built_from_this_source(module):
    try:
        source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    except OSError:  # no source shipped: a regular install built what it runs
        return True
    return getattr(module, "source_sha256", None) == source


def _load():
    try:
        from . import _speedups
    except ImportError:  # no C compiler at install: the Python code runs
        return None
    if not _built_from_this_source(_speedups):
        log.warning("failured._speedups was built from another version of failured/_speedups.c and is not used "
                    "(the same answers, slower): rebuild it with 'pip install -e .' (or 'python setup.py "
                    "build_ext --inplace')")
        return None
    return _speedups


speedups = _load()


def compiled(*names):
    """The compiled functions of these names, each None where it is not built (``speedups`` absent or stale)."""
    return tuple(getattr(speedups, name, None) for name in names)
