"""The SQLite WAL after a flood: back under its limit at the daemon's next checkpoint, not ~1 GB for the daemon's life.

A reader holding its snapshot through a burst of writes keeps every checkpoint from restarting the WAL, as a
report or a `failured list` does during a flood: the WAL grows past the limit, as it did in production.
"""

import os
import sqlite3

import pytest

from failured.store import open_store
from failured.store.database import JOURNAL_SIZE_LIMIT_BYTES

pytestmark = pytest.mark.sqlite_only("SQLite's WAL file")

BLOB = 1024 * 1024


def wal_size(path):
    return os.path.getsize(f"{path}-wal")


def burst(store, megabytes):
    for i in range(megabytes):
        with store.transaction():
            store.execute("INSERT OR REPLACE INTO daemon_state (key, value, updated_at) VALUES (?, ?, ?)",
                          (f"burst-{i % 8}", "x" * BLOB, store.time(0)))


@pytest.fixture
def grown(tmp_path):
    """A store whose WAL a long reader let grow past the limit; the reader has gone since."""
    path = tmp_path / "failured.db"
    store = open_store(path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tasks").fetchone()  # its snapshot pins the WAL's start
    burst(store, JOURNAL_SIZE_LIMIT_BYTES // BLOB + 16)
    reader.execute("COMMIT")
    reader.close()
    assert wal_size(path) > JOURNAL_SIZE_LIMIT_BYTES
    yield store
    store.close()


def test_a_checkpoint_after_a_burst_brings_the_wal_back_under_its_limit(grown):
    grown.checkpoint()  # the daemon's, from its checkpoint thread
    assert wal_size(grown.path) <= JOURNAL_SIZE_LIMIT_BYTES


def test_the_wal_stays_under_its_limit_as_writes_go_on_after_the_checkpoint(grown):
    grown.checkpoint()
    burst(grown, 4)
    grown.checkpoint()
    assert wal_size(grown.path) <= JOURNAL_SIZE_LIMIT_BYTES


def test_a_checkpoint_beside_a_reader_still_in_the_wal_returns_without_waiting_for_it(grown):
    reader = sqlite3.connect(grown.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM daemon_state").fetchone()
    burst(grown, 2)  # frames the reader's snapshot does not see: the WAL cannot restart under it
    try:
        grown.checkpoint()  # returns at once (no busy wait): the next one truncates
        with grown.transaction():  # and a writer is not held up
            grown.set_state("after", "1", 0)
    finally:
        reader.execute("COMMIT")
        reader.close()
    grown.checkpoint()
    assert wal_size(grown.path) <= JOURNAL_SIZE_LIMIT_BYTES
