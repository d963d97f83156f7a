"""``failured show``: a readable history, and a task in ``manual`` says why and what to do."""

import re
import sys

from conftest import wait_for


def _event_lines(text):
    return [line for line in text.splitlines() if re.match(r"  \d{4}-\d\d-\d\d", line)]


def test_a_manual_task_says_why_and_what_to_do_and_the_history_stays_in_columns(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    daemon.cli("report", "--type", "tracking_update", "--error", "connection timeout")
    daemon.wait_for("SELECT status FROM tasks WHERE id = 1", lambda rows: rows == [("manual",)])

    shown = daemon.cli("show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "why manual: its error can recover, but task type 'tracking_update' had no handler" in shown.stdout
    assert "to do: configure [task_types.tracking_update.handler] in failured.toml" in shown.stdout
    assert "failured requeue --type tracking_update --status manual" in shown.stdout
    assert "to do: or, when it was dealt with by hand: failured resolve 1" in shown.stdout
    assert daemon.cli("show", "1", "--json").stdout.count('"why"') == 1

    (tmp_path / "config" / "failured.toml").write_text(
        f'[task_types.tracking_update.handler]\nkind = "command"\nargv = ["{sys.executable}", "-c", "pass"]\n')
    assert wait_for(lambda: "a handler is configured now: failured recover 1" in daemon.cli("show", "1").stdout,
                    timeout=20)
    assert daemon.cli("recover", "1").returncode == 0
    daemon.wait_for("SELECT status FROM tasks WHERE id = 1", lambda rows: rows == [("recovered",)])

    lines = _event_lines(daemon.cli("show", "1").stdout)
    assert any("recover_requested" in line for line in lines)
    # The status column starts at the same place on every line, however long the event name.
    columns = {re.match(r"  \S+  \S+\s+()\S", line).start(1) for line in lines}
    assert len(columns) == 1, "\n".join(lines)
