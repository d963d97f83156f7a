"""Opening a SQLite database: commands that only read never wait for a writer's lock, and a database of an
older schema is migrated only where that is safe, and says so."""

import fcntl
import sqlite3
from contextlib import contextmanager

import pytest

from cli_inprocess import cli_fixture  # noqa: F401 - fixture: a command in-process
from conftest import run_cli
from failured.intake import record_failure
from failured.store import SCHEMA_VERSION, open_store

pytestmark = pytest.mark.sqlite_only("SQLite's write lock and PRAGMA user_version")

READERS = [("status",), ("list",), ("show", "1")]


def answered(result):
    """Exit 0, or status's 1 (unhealthy: no daemon runs here), with its answer on stdout."""
    return result.returncode in (0, 1) and result.stdout and "locked" not in result.stderr


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "data" / "failured.db"
    store = open_store(path)
    record_failure(store, "sync", "connection timeout")
    store.close()
    return path


@pytest.fixture
def env(db, tmp_path, config_dir):
    return {"FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(config_dir), "FAILURE_LOG_DIR": str(tmp_path / "logs")}


@contextmanager
def write_lock_held(path):
    """Another process's BEGIN IMMEDIATE (as `sqlite3 failured.db` with "BEGIN IMMEDIATE;" would hold it)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("COMMIT")
        connection.close()


def make_schema_1(path):
    """The database as failured 1 left it: no labels table, the old index, user_version 1."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("DROP TABLE labels")
    connection.execute('DROP INDEX "tasks_finished_at_category_status_attempts_created_at"')
    connection.execute("PRAGMA user_version = 1")
    connection.close()


def user_version(path):
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA user_version").fetchone()[0]
    finally:
        connection.close()


@contextmanager
def daemon_lock_held(path):
    """The lock a running daemon holds on failured.db.lock (an older daemon's, here)."""
    with open(f"{path}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_commands_that_only_read_answer_while_another_process_holds_the_write_lock(db, env, cli, args):
    with write_lock_held(db):
        result = cli(*args, env=env)  # before: 30 s of busy timeout, then "database is locked"
    assert answered(result), result.stderr


def test_status_answers_in_a_real_process_while_the_write_lock_is_held(db, env):
    with write_lock_held(db):
        result = run_cli("status", env=env, timeout=20)
    assert answered(result), result.stderr


def test_a_writer_migrates_an_old_database_and_says_so_once(db, env):
    make_schema_1(db)
    first = run_cli("report", "--type", "sync", "--error", "boom", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(f"migrated database {db} from schema 1 to {SCHEMA_VERSION}") == 1, first.stderr
    assert user_version(db) == SCHEMA_VERSION
    again = run_cli("report", "--type", "sync", "--error", "boom", env=env)
    assert again.returncode == 0 and "migrated" not in again.stderr, again.stderr


def test_the_migration_is_logged(db, caplog):
    make_schema_1(db)
    with caplog.at_level("INFO", logger="failured.store"):
        open_store(db).close()
    assert [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()] == [
        f"migrated database {db} from schema 1 to {SCHEMA_VERSION}"]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_a_command_that_only_reads_refuses_an_old_database_under_a_running_daemon(db, env, cli, args):
    make_schema_1(db)
    with daemon_lock_held(db):
        result = cli(*args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"database {db} has schema version 1, older than this failured ({SCHEMA_VERSION})" in lines[0]
    assert "upgrade and restart the daemon first" in lines[0]
    assert user_version(db) == 1  # nothing written: the old daemon and its reporters go on


def test_a_command_that_only_reads_migrates_an_old_database_no_daemon_uses(db, env):
    make_schema_1(db)
    result = run_cli("status", env=env)
    assert answered(result), result.stderr
    assert f"migrated database {db} from schema 1 to {SCHEMA_VERSION}" in result.stderr
    assert user_version(db) == SCHEMA_VERSION


def test_an_open_of_a_current_database_takes_no_write_lock(db):
    with write_lock_held(db):
        store = open_store(db, create=False)
        assert store.schema_version() == SCHEMA_VERSION
        store.close()
