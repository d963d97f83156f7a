"""A python handler that appends how long after its report it started (for reaction.py)."""

import os
import time


def run(sent, **_):
    with open(os.environ["BENCH_STAMP_FILE"], "a") as handle:
        handle.write(f"{time.time() - sent}\n")
