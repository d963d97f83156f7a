"""``failured exec``: output passes through, failures are recorded with the argv as their handler."""

import json
import sqlite3
import sys

from conftest import run_cli
from test_daemon import final_status


def env_for(tmp_path):
    return {"FAILURE_DB": str(tmp_path / "db.sqlite")}


def test_failing_command_is_recorded_and_its_status_passed_on(tmp_path):
    code = "import sys; print('to stdout'); sys.stderr.write('disk space exhausted on /data\\n'); sys.exit(3)"
    result = run_cli("exec", "--type", "nightly", "--ref", "job-1", "--", sys.executable, "-c", code,
                     env=env_for(tmp_path))
    assert result.returncode == 3
    assert "to stdout" in result.stdout and "disk space exhausted" in result.stderr
    row = sqlite3.connect(tmp_path / "db.sqlite").execute(
        "SELECT task_type, ref, source, error_message, handler FROM tasks").fetchone()
    assert row[:4] == ("nightly", "job-1", "exec", "disk space exhausted on /data")
    handler = json.loads(row[4])
    assert handler["argv"][0] == sys.executable and handler["cwd"]


def test_literal_braces_in_the_argv_stay_literal_in_the_handler(tmp_path):
    run_cli("exec", "--type", "t", "--", sys.executable, "-c", "import sys; sys.exit(1)", "{x}", env=env_for(tmp_path))
    handler = json.loads(sqlite3.connect(tmp_path / "db.sqlite").execute("SELECT handler FROM tasks").fetchone()[0])
    assert handler["argv"][-1] == "{{x}}"


def test_success_is_counted_for_the_failure_rate(tmp_path):
    result = run_cli("exec", "--type", "nightly", "--", sys.executable, "-c", "pass", env=env_for(tmp_path))
    assert result.returncode == 0
    con = sqlite3.connect(tmp_path / "db.sqlite")
    assert con.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    assert con.execute("SELECT sum(count) FROM success_counts WHERE task_type='nightly'").fetchone()[0] == 1


def test_command_not_found_exits_127_and_is_recorded(tmp_path):
    result = run_cli("exec", "--type", "t", "--", "/no/such/cmd-xyz", env=env_for(tmp_path))
    assert result.returncode == 127
    error = sqlite3.connect(tmp_path / "db.sqlite").execute("SELECT error_message FROM tasks").fetchone()[0]
    assert error == "command not found: /no/such/cmd-xyz"


def test_bad_payload_is_refused_before_running_anything(tmp_path):
    marker = tmp_path / "ran"
    result = run_cli("exec", "--type", "t", "--payload", "[1]", "--", sys.executable, "-c",
                     f"open({str(marker)!r}, 'w')", env=env_for(tmp_path))
    assert result.returncode == 2 and "payload must be a JSON object" in result.stderr
    assert not marker.exists()


def test_the_daemon_retries_an_exec_task_with_its_own_argv(daemon_factory, tmp_path):
    daemon = daemon_factory()
    counter = tmp_path / "count"
    code = (f"import os, sys\np = {str(counter)!r}\nn = int(open(p).read()) if os.path.exists(p) else 0\n"
            "open(p, 'w').write(str(n + 1))\nif not n:\n    sys.exit('connection timeout')\n")
    result = daemon.cli("exec", "--type", "cron_job", "--", sys.executable, "-c", code)
    assert result.returncode == 1
    daemon.start()
    status, attempts, _, _ = final_status(daemon, 1)
    assert (status, attempts) == ("recovered", 1)
