"""Daily housekeeping: finished tasks and delivered notifications older than the retention go."""

import logging

from .store.maintenance import purge_finished

log = logging.getLogger("failured.housekeeping")


def purge(store, now, retention_days):
    """Delete what is older than ``retention_days``; returns counts per table."""
    counts = purge_finished(store, now - retention_days * 86400)
    log.info("housekeeping: removed %d tasks and %d notifications older than %d days", counts["tasks"],
             counts["notifications"], retention_days)
    return counts
