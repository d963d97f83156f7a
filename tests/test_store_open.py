"""Opening a SQLite database that cannot be written, with no daemon running: a full disk and a read-only filesystem
are named as such, and the commands that record nothing new (status, list, show) still read the database.

A real tmpfs (root only: the tests skip, saying why, where mounting is refused), filled or remounted read-only.
"""

import os
import subprocess
import sys

import pytest
from conftest import run_cli
from test_api_store import fill, small_disk  # noqa: F401 - the real tmpfs fixture

from failured.errors import StoreFullError, StoreReadOnlyError
from failured.intake import record_failure
from failured.store import Task, open_store

pytestmark = pytest.mark.sqlite_only("the SQLite file's own filesystem; a PostgreSQL server's disk is the server's")


@pytest.fixture
def db(small_disk):  # noqa: F811 - the fixture imported above
    """A database with one task on the small disk, closed as a daemon stopped cleanly leaves it (no -wal)."""
    path = small_disk / "failured.db"
    store = open_store(path)
    try:
        record_failure(store, "sync", "connection timeout")
    finally:
        store.close()
    assert not os.path.exists(f"{path}-wal")
    return path


@pytest.fixture
def env(db, tmp_path, config_dir):
    return {"FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(config_dir), "FAILURE_LOG_DIR": str(tmp_path / "logs")}


def remount_read_only(mountpoint):
    result = subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot remount read-only: {result.stderr.strip()}")


def test_on_a_full_disk_report_says_disk_full_and_status_list_and_show_still_read(db, env):
    fill(db.parent)
    report = run_cli("report", "--type", "sync", "--error", "connection refused", env=env)
    assert report.returncode == 1
    assert report.stderr.startswith(f"failured: disk full: cannot write {db} ("), report.stderr
    assert "cannot open database" not in report.stderr and len(report.stderr.splitlines()) == 1
    status = run_cli("status", env=env)
    assert status.returncode == 1 and "problem: disk full" in status.stdout, status.stdout + status.stderr
    listed = run_cli("list", env=env)
    assert listed.returncode == 0 and "connection timeout" in listed.stdout, listed.stderr
    shown = run_cli("show", "1", env=env)
    assert shown.returncode == 0 and shown.stdout.startswith("task 1 sync"), shown.stderr


def test_on_a_read_only_filesystem_report_says_read_only_and_status_list_and_show_still_read(db, env):
    remount_read_only(db.parent)
    report = run_cli("report", "--type", "sync", "--error", "connection refused", env=env)
    assert report.returncode == 1
    assert report.stderr.startswith(f"failured report: database {db} is read-only (its filesystem is mounted "
                                    "read-only"), report.stderr
    status = run_cli("status", env=env)
    assert status.returncode == 1 and status.stderr == ""
    assert f"problem: database {db} is read-only" in status.stdout and "tasks: 1" in status.stdout
    listed = run_cli("list", env=env)
    assert listed.returncode == 0 and "connection timeout" in listed.stdout, listed.stderr
    shown = run_cli("show", "1", env=env)
    assert shown.returncode == 0 and shown.stdout.startswith("task 1 sync"), shown.stderr


def test_a_write_through_a_read_only_open_says_why_it_cannot_write(db):
    fill(db.parent)
    store = open_store(db, create=False)
    try:
        assert isinstance(store.read_only, StoreFullError)
        assert Task.select().count() == 1
        with pytest.raises(StoreFullError, match="disk full: cannot write"), store.transaction():
            store.set_state("x", "y", 0.0)
    finally:
        store.close()


def test_a_writer_is_refused_at_open_and_never_opened_read_only(db):
    remount_read_only(db.parent)
    with pytest.raises(StoreReadOnlyError, match="its filesystem is mounted read-only"):
        open_store(db, create=True)


def test_a_read_only_open_reads_the_commits_a_crashed_daemon_left_in_the_wal(db):
    # Opened "immutable", SQLite would read the database file alone and miss them.
    writer = subprocess.run([sys.executable, "-c", f"""
import os, sqlite3
connection = sqlite3.connect({str(db)!r})
connection.execute("PRAGMA wal_autocheckpoint = 0")
connection.execute("UPDATE tasks SET ref = 'only-in-the-wal'")
connection.commit()
os._exit(0)  # killed: nothing checkpointed, the WAL stays
"""], capture_output=True, text=True, timeout=30)
    assert writer.returncode == 0, writer.stderr
    assert os.path.getsize(f"{db}-wal") > 0
    remount_read_only(db.parent)
    store = open_store(db, create=False)
    try:
        assert [task.ref for task in Task.select()] == ["only-in-the-wal"]
    finally:
        store.close()
