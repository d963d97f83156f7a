"""A full disk under the database: reporters get one line, the daemon stays up, says so, and resumes by itself."""

import json

import pytest

from test_api_store import fill, small_disk  # noqa: F401 - the real tmpfs fixture


@pytest.mark.sqlite_only("a full disk under the SQLite file; a PostgreSQL server's disk is the server's to watch")
def test_daemon_survives_a_full_disk_says_so_and_resumes_when_space_returns(daemon_factory, small_disk, tmp_path):
    daemon = daemon_factory(FAILURE_DB=str(small_disk / "failured.db")).start()
    try:
        assert daemon.cli("report", "--type", "sync", "--error", "connection timeout").returncode == 0
        daemon.wait_for("SELECT count(*) FROM tasks WHERE status != 'new'", lambda r: r[0][0] == 1)
        filler = fill(small_disk)
        # A report may still fit in WAL pages the daemon's checkpoints freed; the next checkpoint cannot
        # grow the database file, and then the WAL cannot be reused and must grow: a report fails.
        recorded = 1
        for _ in range(50):
            result = daemon.cli("report", "--type", "sync", "--error", "connection timeout " + "x" * 60000)
            if result.returncode != 0:
                break
            recorded += 1
        assert result.returncode == 1, result.stderr
        assert "disk full" in result.stderr and "Traceback" not in result.stderr
        daemon.wait_message("DISK FULL", timeout=60)
        alerts = tmp_path / "logs" / "admin_alerts.log"
        from conftest import wait_for
        assert wait_for(lambda: alerts.exists() and "磁盘已满" in alerts.read_text(encoding="utf-8"), timeout=60)
        for line in alerts.read_text(encoding="utf-8").splitlines():
            json.loads(line)  # whole lines only
        assert daemon.proc.poll() is None
        status = daemon.cli("status")
        assert status.returncode == 1 and "problem: disk full" in status.stdout, status.stdout + status.stderr
        filler.unlink()
        assert wait_for(lambda: any("retries pending" in m for m in daemon.messages[-3:]), timeout=60)
        assert daemon.cli("report", "--type", "sync", "--error", "connection refused").returncode == 0
        daemon.wait_for("SELECT count(*) FROM tasks WHERE status != 'new'", lambda r: r[0][0] == recorded + 1,
                        timeout=60)
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0


def test_reports_that_cannot_be_written_are_a_problem_in_status_and_leave_no_partial_files(daemon_factory,
                                                                                           small_disk):
    """A full report directory: status says so (only the log had, at every scan), no empty temporary file is left
    behind, and once space returns the next report covers the tasks the failed ones missed."""
    from conftest import wait_for

    filler = fill(small_disk)
    daemon = daemon_factory(FAILURE_REPORT_DIR=str(small_disk), FAILURE_SCAN_INTERVAL_MINUTES="0.01").start()
    try:
        assert daemon.cli("report", "--type", "sync", "--error", "connection timeout").returncode == 0
        daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'reports_failing'", lambda r: r[0][0] == 1)
        status = daemon.cli("status")
        assert status.returncode == 1 and "problem: report files not written since" in status.stdout, status.stdout
        assert "No space left on device" in status.stdout
        assert "report not written: No space left on device" in daemon.stderr()  # one line a slot
        assert "Traceback" not in daemon.stderr()
        assert [p.name for p in small_disk.rglob("*") if p.is_file() and p != filler] == []
        filler.unlink()
        daemon.wait_for("SELECT count(*) FROM daemon_state WHERE key = 'reports_failing'", lambda r: r[0][0] == 0)
        written = list(small_disk.rglob("failure_processing_*.json"))
        assert wait_for(lambda: any(json.loads(p.read_text())["total_processed"] for p in written), 10)
    finally:
        daemon.stop()


def test_scan_from_a_shell_on_a_full_report_disk_says_to_free_space_and_names_no_none():
    import errno

    import pytest

    from failured.commands import _report_dir_errors
    from failured.errors import FailuredError
    from failured.settings import Settings

    with pytest.raises(FailuredError) as info, _report_dir_errors(Settings(report_dir="/srv/reports")):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value) == ("cannot write the report under /srv/reports: No space left on device; "
                               "free space on its filesystem")
