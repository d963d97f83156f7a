"""Daily housekeeping: finished tasks, ended notifications and success tallies older than the retention go,
a slice at a time, so that the daemon's main loop (heartbeat, watchdog, stop requests) goes on in between.

800,000 old tasks with 2.2 million events took 72 s to delete: in one go, systemd's watchdog would have
killed the daemon half-way.
"""

import logging

from .clock import SystemClock
from .store.maintenance import BATCH, PURGED, purge_batch

log = logging.getLogger("failured.housekeeping")

SLICE_SECONDS = 0.5  # the longest one ``Purge.step`` deletes for (plus one batch)


class Purge:
    """One housekeeping pass over the store, in slices: ``step()`` until it returns True."""

    def __init__(self, store, now, retention_days, clock, batch=BATCH):
        self.store, self.clock, self.batch = store, clock, batch
        self.retention_days = retention_days
        self.cutoff = now - retention_days * 86400
        self.counts = dict.fromkeys(PURGED, 0)
        self.slices = 0
        self._left = list(PURGED)  # the tables not done yet, the one being purged first

    @property
    def done(self):
        return not self._left

    def step(self, budget=SLICE_SECONDS):
        """Delete batch after batch for about ``budget`` seconds (at least one batch); True once all is done."""
        deadline = self.clock.monotonic() + budget
        self.slices += 1
        while self._left:
            deleted = purge_batch(self.store, self._left[0], self.cutoff, self.batch)
            self.counts[self._left[0]] += deleted
            if deleted < self.batch:
                self._left.pop(0)
            if self.clock.monotonic() >= deadline:
                break
        if self.done:
            log.info("housekeeping: removed %d tasks, %d notifications and %d hourly success counts older than "
                     "%d days (%d slices)", self.counts["tasks"], self.counts["notifications"],
                     self.counts["success_counts"], self.retention_days, self.slices)
        return self.done


def purge(store, now, retention_days, clock=None):
    """Delete what is older than ``retention_days`` in one go (no daemon loop to give way to); returns counts
    per table."""
    whole = Purge(store, now, retention_days, clock or SystemClock())
    while not whole.step():
        pass
    return whole.counts
