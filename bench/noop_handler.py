"""A no-op python handler that notes how late it started (for retry_timer.py)."""

import time

LATENESS = []


def run(due, **_):
    LATENESS.append(time.time() - due)
