"""Compiling a large pattern set's Hyperscan database in a child process, so the daemon's memory stays its own.

Compiling the shipped patterns takes about 2 s and some 40 MB of working memory, of which about 30 MB
stays resident in the process that compiled it (the heap keeps what it once held): a daemon's first
start, with no compiled database cached yet, kept it for its whole life. A child process (``python -m
failured.compiling``) reads the patterns on stdin, compiles them as ``matcher.compile_database`` does,
and writes the serialized database and the refused patterns on stdout; its memory goes back to the
system when it exits. Where the child cannot run or fails, the parent compiles in its own process as
before. RE2 serves meanwhile either way.
"""

import logging
import marshal
import subprocess
import sys

from .matcher import compile_database, hyperscan

log = logging.getLogger("failured.matcher")

CHILD_TIMEOUT = 600  # seconds: the shipped patterns take about 2, a ruleset ten times larger about 20


def compile_apart(patterns):
    """``compile_database(patterns)``, compiled in a child process (or here if it fails)."""
    try:
        child = subprocess.run([sys.executable, "-m", "failured.compiling"], input=marshal.dumps(list(patterns)),
                               capture_output=True, timeout=CHILD_TIMEOUT, check=False)
        if child.returncode == 0:
            serialized, refused = marshal.loads(child.stdout)
            database = None if serialized is None else hyperscan.loadb(serialized, hyperscan.HS_MODE_BLOCK)
            return database, [tuple(item) for item in refused]
        reason = f"exit status {child.returncode}: {child.stderr.decode('utf-8', 'replace').strip()[-300:]}"
    except (OSError, subprocess.SubprocessError, ValueError, EOFError, TypeError, hyperscan.error) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("compiling the patterns in a child process failed (%s); compiling in this process", reason)
    return compile_database(patterns)


def main():
    database, refused = compile_database(marshal.loads(sys.stdin.buffer.read()))
    sys.stdout.buffer.write(marshal.dumps((None if database is None else hyperscan.dumpb(database), refused)))


if __name__ == "__main__":
    main()
