"""``failured exec``: output passes through, failures are recorded with the argv as their handler."""

import json
import sys

import pytest

from conftest import query, run_cli
from test_daemon import final_status


def env_for(db_location):
    return {"FAILURE_DB": db_location}


def test_failing_command_is_recorded_and_its_status_passed_on(db_location):
    code = "import sys; print('to stdout'); sys.stderr.write('disk space exhausted on /data\\n'); sys.exit(3)"
    result = run_cli("exec", "--type", "nightly", "--ref", "job-1", "--", sys.executable, "-c", code,
                     env=env_for(db_location))
    assert result.returncode == 3
    assert "to stdout" in result.stdout and "disk space exhausted" in result.stderr
    [row] = query(db_location, "SELECT task_type, ref, source, error_message, handler FROM tasks")
    assert row[:4] == ("nightly", "job-1", "exec", "disk space exhausted on /data")
    handler = json.loads(row[4])
    assert handler["argv"][0] == sys.executable and handler["cwd"]


@pytest.mark.sqlite_suffices("the handler's argv as exec writes it")
def test_literal_braces_in_the_argv_stay_literal_in_the_handler(db_location):
    run_cli("exec", "--type", "t", "--", sys.executable, "-c", "import sys; sys.exit(1)", "{x}",
            env=env_for(db_location))
    handler = json.loads(query(db_location, "SELECT handler FROM tasks")[0][0])
    assert handler["argv"][-1] == "{{x}}"


@pytest.mark.sqlite_suffices("what show prints of an exec task's argv")
def test_credentials_on_the_command_line_are_stored_to_retry_but_shown_masked(db_location):
    argv = [sys.executable, "-c", "import sys; sys.exit(1)", "--password", "hunter22", "PGPASSWORD=pw-9f2k",
            "--url=https://u:s3cr3t@db/x", "--note", "hunter22 again"]
    run_cli("exec", "--type", "t", "--", *argv, env=env_for(db_location))
    [(task_id, stored)] = query(db_location, "SELECT id, handler FROM tasks")
    assert json.loads(stored)["argv"] == argv  # a retry runs the command as it was given
    shown = run_cli("show", "--json", str(task_id), env=env_for(db_location))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["handler"]["argv"][3:] == [
        "--password", "***", "PGPASSWORD=***", "--url=https://u:***@db/x", "--note", "*** again"]
    assert "hunter22" not in shown.stdout and "s3cr3t" not in shown.stdout and "pw-9f2k" not in shown.stdout
    text = run_cli("show", str(task_id), env=env_for(db_location)).stdout  # the text says the command too, masked
    assert "handler: " in text and "--password '***' 'PGPASSWORD=***'" in text and "hunter22" not in text


def test_success_is_counted_for_the_failure_rate(db_location):
    result = run_cli("exec", "--type", "nightly", "--", sys.executable, "-c", "pass", env=env_for(db_location))
    assert result.returncode == 0
    assert query(db_location, "SELECT count(*) FROM tasks") == [(0,)]
    assert query(db_location, "SELECT sum(count) FROM success_counts WHERE task_type='nightly'") == [(1,)]


@pytest.mark.sqlite_suffices("exec's exit status and message")
def test_command_not_found_exits_127_and_is_recorded(db_location):
    result = run_cli("exec", "--type", "t", "--", "/no/such/cmd-xyz", env=env_for(db_location))
    assert result.returncode == 127
    assert "failured exec: command not found: /no/such/cmd-xyz" in result.stderr  # not only "exited 127"
    assert query(db_location, "SELECT error_message FROM tasks") == [("command not found: /no/such/cmd-xyz",)]


def test_bad_payload_is_refused_before_running_anything(tmp_path):
    marker = tmp_path / "ran"
    result = run_cli("exec", "--type", "t", "--payload", "[1]", "--", sys.executable, "-c",
                     f"open({str(marker)!r}, 'w')", env=env_for(str(tmp_path / "db.sqlite")))
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


@pytest.mark.sqlite_suffices("a database that cannot be opened")
@pytest.mark.parametrize("command, status", [("exit 0", 0), ("echo boom >&2; exit 3", 3)])
def test_the_job_runs_and_ends_with_its_own_status_when_failured_cannot_record_it(tmp_path, command, status):
    """A cron job must not be skipped, or fail, because failured's database has a problem."""
    marker = tmp_path / "ran"
    env = {"FAILURE_DB": "/proc/no-such-dir/failured.db"}  # cannot be created, even by root
    result = run_cli("exec", "--type", "nightly", "--", "sh", "-c", f"touch {marker}; {command}", env=env,
                     cwd=tmp_path)
    assert marker.exists() and result.returncode == status, result.stderr
    what = "success" if status == 0 else "failure"
    assert f"exited {status}; its {what} was NOT recorded: " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.sqlite_suffices("exec's own process handling")
def test_exec_ends_with_its_command_while_a_background_process_holds_stderr(tmp_path):
    """``sleep 600 &`` keeps the stderr pipe open: exec records and exits when the command ends, and what the
    background process writes later still reaches exec's stderr."""
    import os
    import signal
    import subprocess

    from conftest import wait_for

    go, err = tmp_path / "go", tmp_path / "stderr.txt"
    script = (f"(while [ ! -e {go} ]; do sleep 0.05; done; echo later-from-background >&2) & echo $! > {tmp_path}/bg; "
              "echo 'Connection refused' >&2; exit 1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    with open(err, "wb") as stderr:
        done = subprocess.run([sys.executable, "-m", "failured", "exec", "--type", "bg", "--", "sh", "-c", script],
                              env={**env, "FAILURE_DB": str(tmp_path / "f.db")}, stderr=stderr, timeout=60)
    try:
        assert done.returncode == 1
        assert query(str(tmp_path / "f.db"), "SELECT error_message FROM tasks") == [("Connection refused",)]
        go.touch()
        assert wait_for(lambda: "later-from-background" in err.read_text(), timeout=30), err.read_text()
    finally:
        go.touch()
        try:
            os.kill(int((tmp_path / "bg").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.sqlite_suffices("exec's own process handling")
def test_a_hang_up_reaches_the_command_and_its_end_is_recorded(tmp_path):
    import os
    import signal
    import subprocess

    from conftest import wait_for

    ready = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(600)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    proc = subprocess.Popen([sys.executable, "-m", "failured", "exec", "--type", "hup", "--", sys.executable, "-c",
                             code], env={**env, "FAILURE_DB": str(tmp_path / "f.db")}, stderr=subprocess.PIPE)
    try:
        assert wait_for(ready.exists, timeout=30)
        proc.send_signal(signal.SIGHUP)  # the ssh session that ran it closed
        assert proc.wait(timeout=60) == 128 + signal.SIGHUP
        assert query(str(tmp_path / "f.db"), "SELECT error_type FROM tasks") == [("signal 1",)]
    finally:
        proc.kill()
