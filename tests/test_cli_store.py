"""Which commands may create a database, and what the CLI says when the database cannot be written."""

import os
import sqlite3
import subprocess
import sys
from contextlib import contextmanager

import pytest

from cli_inprocess import cli_fixture  # noqa: F401 - fixture: a command in-process, a subprocess costs ~0.45 CPU-s a call
from conftest import run_cli
from failured.intake import record_failure
from failured.store import open_store

# A SQLite file's life: missing, created with its directory, on a full or a read-only filesystem. (An empty
# PostgreSQL schema: test_store_postgres; an unreachable server: test_store_postgres and test_migrate_store.)
pytestmark = pytest.mark.sqlite_only("what the CLI says of the SQLite file itself")

READ_ONLY_COMMANDS = [("status",), ("status", "--json"), ("show", "1"), ("scan",), ("analyze",),
                      ("recover", "1"), ("resolve", "1"), ("requeue", "--dry-run")]


@pytest.mark.parametrize("args", READ_ONLY_COMMANDS, ids=" ".join)
def test_commands_that_only_read_refuse_a_missing_database_and_create_nothing(tmp_path, config_dir, cli, args):
    db = tmp_path / "typo" / "failured.db"
    result = cli(*args, env={"FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(config_dir),
                                 "FAILURE_REPORT_DIR": str(tmp_path / "reports")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"no database at {db}; is FAILURE_DB right?" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not db.exists() and not db.parent.exists()


def test_report_says_once_that_it_created_a_new_database_and_its_directory(tmp_path):
    db = tmp_path / "new-dir" / "failured.db"
    env = {"FAILURE_DB": str(db)}
    first = run_cli("report", "--type", "t", "--error", "boom", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("created a new database") == 1
    assert str(db) in first.stderr and f"its directory {db.parent}" in first.stderr
    second = run_cli("report", "--type", "t", "--error", "boom", env=env)
    assert second.returncode == 0 and second.stderr == ""
    assert sqlite3.connect(db).execute("SELECT count(*) FROM tasks").fetchone()[0] == 2


def test_exec_says_when_it_created_a_new_database(tmp_path):
    db = tmp_path / "failured.db"
    result = run_cli("exec", "--type", "t", "--", sys.executable, "-c", "raise SystemExit(3)",
                     env={"FAILURE_DB": str(db)})
    assert result.returncode == 3
    assert f"created a new database at {db}" in result.stderr


def test_a_new_database_and_its_wal_take_the_mode_the_umask_allows(tmp_path):
    """Under the unit's UMask=0007 the group (the reporting applications) may write the database: SQLite alone
    made it 0640 whatever the umask, and every report from a member of the group was refused."""
    db = tmp_path / "failured.db"
    script = ("import os, sys; os.umask(0o007); from failured.intake import record_failure; "
              "from failured.store import open_store; store = open_store(sys.argv[1]); "
              "record_failure(store, 't', 'boom'); print(oct(os.stat(sys.argv[1] + '-wal').st_mode & 0o777))")
    result = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert oct(db.stat().st_mode & 0o777) == "0o660" and result.stdout.strip() == "0o660"


def test_exec_keeps_its_commands_status_when_the_database_directory_cannot_be_entered(tmp_path, cli, monkeypatch):
    """A user not (yet) in the service's group: the job's status is exec's, and one line says why nothing was
    recorded (a PermissionError's traceback and exit 1 had told cron the job failed)."""
    from pathlib import Path

    db = tmp_path / "state" / "failured.db"
    real_exists = Path.exists

    def exists(path, *args, **kwargs):  # as root nothing is refused: refuse this one path as the kernel would
        if str(path) == str(db):
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    result = cli("exec", "--type", "t", "--", sys.executable, "-c", "raise SystemExit(5)", env={"FAILURE_DB": db})
    assert result.returncode == 5 and "NOT recorded" in result.stderr and "may not enter its directory" in result.stderr
    assert "Traceback" not in result.stderr
    report = cli("report", "--type", "t", "--error", "boom", env={"FAILURE_DB": db})
    assert report.returncode == 1 and "usermod -aG failured" in report.stderr and "Traceback" not in report.stderr


def test_bad_report_input_creates_no_database(tmp_path):
    db = tmp_path / "failured.db"
    result = run_cli("report", "--type", "t", "--error", "x", "--payload", "[1]", env={"FAILURE_DB": str(db)})
    assert result.returncode == 2 and not db.exists()
    assert "created" not in result.stderr


def first_report(db):
    """A database with one task, as ``failured report`` leaves it (without a process for it)."""
    store = open_store(db)
    try:
        record_failure(store, "t", "first")
    finally:
        store.close()


@contextmanager
def tiny_filesystem(path, size="512k"):
    """A real tmpfs of ``size`` at ``path`` (root only); skips the test where mounting is refused."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory):
    """Write until the filesystem is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_is_one_line_and_exit_1(tmp_path):
    with tiny_filesystem(tmp_path / "mnt") as mnt:
        env = {"FAILURE_DB": str(mnt / "failured.db")}
        first_report(mnt / "failured.db")
        # An open connection keeps the -wal and -shm files, as a running daemon does.
        daemon_like = sqlite3.connect(mnt / "failured.db")
        daemon_like.execute("SELECT count(*) FROM tasks").fetchone()
        _fill(mnt)
        result = run_cli("report", "--type", "t", "--error", "x" * 60000, env=env)
        daemon_like.close()
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("failured: disk full: cannot write "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_read_only_database_is_one_line_and_exit_1(tmp_path):
    with tiny_filesystem(tmp_path / "mnt") as mnt:
        env = {"FAILURE_DB": str(mnt / "failured.db")}
        first_report(mnt / "failured.db")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        result = run_cli("report", "--type", "t", "--error", "second", env=env)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("failured report: ") and str(mnt / "failured.db") in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        status = run_cli("status", env=env)  # it only reads: it shows the store, the read-only problem first
        assert status.returncode == 1 and status.stderr == "", status.stderr
        assert "read-only" in status.stdout and "tasks: 1" in status.stdout, status.stdout
