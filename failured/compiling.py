"""Compiling a large pattern set's Hyperscan database in a child process, so the daemon's memory stays its own.

Compiling the shipped patterns takes about 2 s and some 40 MB of working memory, of which about 30 MB
stays resident in the process that compiled it (the heap keeps what it once held): a daemon's first
start, with no compiled database cached yet, kept it for its whole life. A child process (``python -m
failured.compiling``, see apart.py) compiles the patterns as ``matcher.compile_database`` does and answers
with the serialized database and the refused patterns; its memory goes back to the system when it exits.
Where the child cannot run or fails, the parent compiles in its own process as before. RE2 serves meanwhile
either way.
"""

import logging

from .apart import ChildFailed, run_apart, serve_apart
from .matcher import compile_database, hyperscan

log = logging.getLogger("failured.matcher")

CHILD_TIMEOUT = 600  # seconds: the shipped patterns take about 2, a ruleset ten times larger about 20


def compile_apart(patterns):
    """``compile_database(patterns)``, compiled in a child process (or here if it fails)."""
    try:
        serialized, refused = run_apart("failured.compiling", list(patterns), CHILD_TIMEOUT)
        database = None if serialized is None else hyperscan.loadb(serialized, hyperscan.HS_MODE_BLOCK)
        return database, [tuple(item) for item in refused]
    except ChildFailed as failed:
        reason = failed
    except (ValueError, TypeError, hyperscan.error) as exc:  # an answer that is no database
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("compiling the patterns in a child process failed (%s); compiling in this process", reason)
    return compile_database(patterns)


def _compile(patterns):
    database, refused = compile_database(patterns)
    return None if database is None else hyperscan.dumpb(database), refused


if __name__ == "__main__":
    serve_apart(_compile)
