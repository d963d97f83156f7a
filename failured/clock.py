"""Time, passed in: the real clock for the daemon, a manual one for tests and benchmarks."""

import threading
import time
from datetime import datetime, timezone


class SystemClock:
    """Wall-clock UTC seconds since the epoch."""

    def now(self):
        return time.time()

    def sleep(self, seconds):
        time.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly."""

    def __init__(self, start=1_700_000_000.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self):
        with self._lock:
            return self._now

    def advance(self, seconds):
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds):
        self.advance(max(0.0, seconds))


def to_db_time(epoch):
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS.mmm' UTC, SQLite's own datetime text form."""
    if epoch is None:
        return None
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def from_db_time(text):
    """The inverse of :func:`to_db_time`; ``None`` stays ``None``."""
    if text is None:
        return None
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


def iso(epoch):
    """Epoch seconds -> ISO 8601 UTC with seconds, for reports and JSON output."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
