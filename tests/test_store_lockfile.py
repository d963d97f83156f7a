"""`failured run` where the daemon lock file cannot be written: one line that says why, no traceback.

Real processes: a daemon run as ``nobody`` beside a lock file root left behind, and a daemon started on a
read-only filesystem (a real tmpfs, remounted) under a database a crashed daemon left its WAL in.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import write_config
from failured.intake import record_failure
from failured.store import open_store
from test_api_store import small_disk  # noqa: F401 - the real tmpfs fixture
from test_store_open import remount_read_only

pytestmark = pytest.mark.sqlite_only("the SQLite database's lock file beside it")


def run_daemon(env, user=None, timeout=60):
    """``failured run`` that is expected to refuse at start: (exit status, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    full_env.update(env, FAILURE_HTTP_ADDR="off")
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    result = subprocess.run([*prefix, sys.executable, "-m", "failured", "run"], env=full_env, capture_output=True,
                            text=True, timeout=timeout, cwd=env["FAILURE_LOG_DIR"])
    return result.returncode, result.stderr


def assert_one_line_refusal(code, stderr, *says):
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "failured run:" in line]
    assert len(lines) == 1, stderr
    for words in says:
        assert words in lines[0], stderr


@pytest.fixture
def shared_dir():
    """A directory everyone may write (the daemon runs as nobody), outside root's private tmp_path."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run a daemon as another user")
    path = Path(tempfile.mkdtemp(prefix="failured-lockfile-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_lock_file_root_left_is_named_when_the_daemon_cannot_open_it(shared_dir):
    db = shared_dir / "failured.db"
    store = open_store(db)
    store.close()
    db.chmod(0o666)
    lock = Path(f"{db}.lock")
    lock.write_text("")
    lock.chmod(0o644)  # root's: `sudo failured run` once left it so
    config = write_config(shared_dir / "config")
    logs = shared_dir / "logs"
    logs.mkdir(mode=0o777)
    logs.chmod(0o777)
    for path in (config, *config.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o644)
    env = {"FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(config), "FAILURE_LOG_DIR": str(logs),
           "FAILURE_REPORT_DIR": str(shared_dir / "reports"), "FAILURE_MODEL_CACHE": "off",
           "HOME": str(shared_dir)}
    code, stderr = run_daemon(env, user=65534)  # nobody
    assert_one_line_refusal(code, stderr, f"database {db} is read-only", f"lock file {lock}", "permission denied")


def test_a_read_only_filesystem_is_named_when_the_daemon_cannot_create_its_lock_file(small_disk, tmp_path):  # noqa: F811
    db = small_disk / "failured.db"
    store = open_store(db)
    record_failure(store, "sync", "connection timeout")
    store.close()
    # A daemon killed mid-write leaves its WAL and shared memory beside the database.
    crashed = subprocess.run([sys.executable, "-c", f"""
import os, sqlite3
connection = sqlite3.connect({str(db)!r})
connection.execute("PRAGMA wal_autocheckpoint = 0")
connection.execute("UPDATE tasks SET ref = 'in-the-wal'")
connection.commit()
os._exit(0)
"""], capture_output=True, text=True, timeout=30)
    assert crashed.returncode == 0, crashed.stderr
    remount_read_only(small_disk)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(write_config(tmp_path / "config")),
           "FAILURE_LOG_DIR": str(logs), "FAILURE_REPORT_DIR": str(tmp_path / "reports")}
    code, stderr = run_daemon(env)
    assert_one_line_refusal(code, stderr, f"database {db} is read-only", "read-only")


def test_one_daemon_lock_whatever_path_names_the_database_and_a_removed_lock_file_is_taken_again(tmp_path):
    from failured.errors import StoreError

    real = tmp_path / "f.db"
    open_store(real, create=True).close()
    (tmp_path / "link.db").symlink_to(real)
    first = open_store(real)
    first.take_daemon_lock()
    through_link = open_store(tmp_path / "link.db")
    try:
        with pytest.raises(StoreError, match="another failured daemon"):
            through_link.take_daemon_lock()
        assert first.keep_daemon_lock() is False  # held: nothing to do
        Path(f"{real}.lock").unlink()  # "a stale lock" cleared by hand while the daemon runs
        assert first.keep_daemon_lock() is True  # the next heartbeat takes it again
        with pytest.raises(StoreError, match="another failured daemon"):
            through_link.take_daemon_lock()
        assert through_link.daemon_lock_held() is True
    finally:
        through_link.close()
        first.close()
