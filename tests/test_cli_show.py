"""``failured show``: a readable history, and a task in ``manual`` says why and what to do.

The first ``show`` is a real subprocess; the other commands run in-process (cli_inprocess), as the
test polls ``show`` until the daemon has reloaded its configuration.
"""

import re
import sys

from cli_inprocess import cli_fixture  # noqa: F401 - fixture: a command in-process, a subprocess costs ~0.25 CPU-s a call
from conftest import wait_for


def _event_lines(text):
    return [line for line in text.splitlines() if re.match(r"  \d{4}-\d\d-\d\d", line)]


def test_a_manual_task_says_why_and_what_to_do_and_the_history_stays_in_columns(daemon_factory, tmp_path, cli):
    daemon = daemon_factory().start()
    assert cli("report", "--type", "tracking_update", "--error", "connection timeout", env=daemon.env).returncode == 0
    daemon.wait_for("SELECT status FROM tasks WHERE id = 1", lambda rows: rows == [("manual",)])

    shown = daemon.cli("show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "why manual: its error can recover, but task type 'tracking_update' had no handler" in shown.stdout
    assert "to do: configure [task_types.tracking_update.handler] in failured.toml" in shown.stdout
    assert "failured requeue --type tracking_update --status manual" in shown.stdout
    assert "to do: or, when it was dealt with by hand: failured resolve 1" in shown.stdout
    assert cli("show", "1", "--json", env=daemon.env).stdout.count('"why"') == 1

    (tmp_path / "config" / "failured.toml").write_text(
        f'[task_types.tracking_update.handler]\nkind = "command"\nargv = ["{sys.executable}", "-c", "pass"]\n')
    reloaded = "a handler is configured now: failured recover 1"
    assert wait_for(lambda: reloaded in cli("show", "1", env=daemon.env).stdout, timeout=20)
    assert cli("recover", "1", env=daemon.env).returncode == 0
    daemon.wait_for("SELECT status FROM tasks WHERE id = 1", lambda rows: rows == [("recovered",)])

    lines = _event_lines(cli("show", "1", env=daemon.env).stdout)
    assert any("recover_requested" in line for line in lines)
    # The status column starts at the same place on every line, however long the event name.
    columns = {re.match(r"  \S+  \S+\s+()\S", line).start(1) for line in lines}
    assert len(columns) == 1, "\n".join(lines)


def test_show_and_list_print_a_reporter_s_control_characters_as_escapes(tmp_path):
    """An error carrying ANSI sequences must not clear the operator's screen, retitle the window or hide text."""
    from conftest import run_cli

    env = {"FAILURE_DB": str(tmp_path / "f.db")}
    hostile = "boom \x1b[2J\x1b]0;pwned\x07 hidden\rover \u202eevil"
    assert run_cli("report", "--type", "sync", "--error", hostile, "--ref", "r\x1b[31m", "--payload",
                   '{"order": 7, "note": "\u202eevil"}', env=env, cwd=tmp_path).returncode == 0
    for command in (["show", "1"], ["list"]):
        shown = run_cli(*command, env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout and "\r" not in shown.stdout
        assert "\u202e" not in shown.stdout
        assert "boom \\x1b[2J\\x1b]0;pwned\\x07 hidden" in shown.stdout and "\\u202eevil" in shown.stdout
    assert 'payload: {"order": 7, "note": "\\u202eevil"}' in run_cli("show", "1", env=env, cwd=tmp_path).stdout


def test_after_a_failed_retry_show_gives_the_latest_error_and_still_the_first(daemon_factory, cli):
    code = "import sys; sys.stderr.write('ConnectionResetError: connection reset by peer\\n'); sys.exit(1)"
    main = f'[task_types.sync.handler]\nkind = "command"\nargv = ["{sys.executable}", "-c", "{code}"]\n'
    daemon = daemon_factory(main=main.replace("\\n'", "\\\\n'")).start()
    assert cli("report", "--type", "sync", "--error", "connection timeout", env=daemon.env).returncode == 0
    daemon.wait_for("SELECT count(*) FROM task_events WHERE task_id = 1 AND event = 'retry_failed'",
                    lambda rows: rows[0][0] >= 1)
    shown = cli("show", "1", env=daemon.env).stdout
    assert "error (the latest attempt; the first is on the reported line): exit 1: ConnectionResetError" in shown, shown
    [reported] = [line for line in _event_lines(shown) if " reported " in line]
    assert reported.endswith("new         connection timeout"), shown
    daemon.stop()


def test_the_advice_for_a_celery_task_name_quotes_it_for_toml_and_the_shell():
    from failured.commands import manual_advice

    todo = manual_advice({"id": 4, "task_type": "shop.tasks.sync order"}, handler_now=False)["what_to_do"]
    assert todo[0] == ('configure [task_types."shop.tasks.sync order".handler] in failured.toml, '
                       "then: failured requeue --type 'shop.tasks.sync order' --status manual")


def test_list_prints_the_next_page_s_command_with_the_same_filters_ready_to_paste(tmp_path):
    import shlex

    from conftest import run_cli

    env = {"FAILURE_DB": str(tmp_path / "f.db")}
    for i in range(3):
        assert run_cli("report", "--type", "a b", "--error", f"timed out {i}", env=env, cwd=tmp_path).returncode == 0
    first = run_cli("list", "--type", "a b", "--grep", "timed out", "--limit", "2", env=env, cwd=tmp_path)
    [more] = [line for line in first.stderr.splitlines() if line.startswith("more: ")]
    words = shlex.split(more.removeprefix("more: "))
    assert words == ["failured", "list", "--type", "a b", "--grep", "timed out", "--limit", "2", "--cursor", "2"]
    rest = run_cli(*words[1:], env=env, cwd=tmp_path)
    assert [line.split("\t")[0] for line in rest.stdout.splitlines()] == ["1"]
