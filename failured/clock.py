"""Time, passed in: the real clock for the daemon, a manual one for tests and benchmarks.

``now()`` is the wall clock, for what is stored and shown. ``monotonic()`` never
jumps: waiting, rate windows and lease timing within one run use it, so setting
the system clock back or forward neither stalls nor hurries the daemon.
"""

import threading
import time
from datetime import datetime, timezone


class SystemClock:
    """Wall-clock UTC seconds since the epoch."""

    def now(self):
        return time.time()

    def monotonic(self):
        return time.monotonic()

    def sleep(self, seconds):
        time.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly.

    ``advance`` moves both clocks (time passes); ``jump`` moves only the wall
    clock, as an administrator or NTP setting the system time would.
    """

    def __init__(self, start=1_700_000_000.0):
        self._now = float(start)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self):
        with self._lock:
            return self._now

    def monotonic(self):
        with self._lock:
            return self._mono

    def advance(self, seconds):
        with self._lock:
            self._now += seconds
            self._mono += seconds
            return self._now

    def jump(self, seconds):
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds):
        self.advance(max(0.0, seconds))


class JumpingClock(SystemClock):
    """The real clocks, with the wall clock set ``offset`` seconds off (tests of clock jumps)."""

    def __init__(self, offset=0.0):
        self.offset = offset

    def now(self):
        return time.time() + self.offset


def to_db_time(epoch):
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS.mmm' UTC, SQLite's own datetime text form."""
    if epoch is None:
        return None
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def from_db_time(text):
    """The inverse of :func:`to_db_time`; ``None`` stays ``None``.

    ``fromisoformat`` (C) first: ``strptime`` cost more than the rest of loading a task. A
    value edited by hand that it refuses goes through the strict parser, which says what is wrong.
    """
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
        return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


def iso(epoch):
    """Epoch seconds -> ISO 8601 UTC with seconds, for reports and JSON output."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
