"""`failured migrate-store`: a SQLite database filled by a real daemon moves into a real PostgreSQL,
and a daemon there carries on with every task's history; half copies and full targets are refused.

PostgreSQL is FAILURE_TEST_POSTGRES_URL (default postgresql://root@127.0.0.1:5432/test); each test
copies into a schema of its own (test_store_postgres's ``pg_url``), dropped after. Without a server
these tests skip and say why.

Around the real `migrate-store` subprocesses, the end-to-end test reports, labels and shows tasks
in-process (cli_inprocess: the same ``failured.cli.main``, without a new interpreter for each of
some twenty calls); the commands themselves are tested as subprocesses in their own files.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from cli_inprocess import cli_fixture  # noqa: F401 - fixture: a command in-process, a subprocess costs ~0.25 CPU-s a call
from conftest import run_cli
from test_store_postgres import PG_URL, pg_unavailable, pg_url  # noqa: F401 (their fixtures, used below)

from failured.intake import record_failure
from failured.store import open_store
from failured.store.migrate import DONE_KEY, copied_models


@pytest.fixture
def target(request):
    """An empty schema of the real PostgreSQL, dropped after (test_store_postgres's ``pg_url``)."""
    return request.getfixturevalue("pg_url")


MAIN = """
[model]
enabled = false  # the store is under test, not the learned fallback

[breaker]
failures = 2
cooldown_seconds = 3600  # stays open across the move

[task_types.sync.handler]
kind = "command"
argv = ["{python}", "-c", "pass"]
timeout = 10

[task_types.flaky.handler]
kind = "command"
argv = ["{python}", "-c", "import sys; sys.exit(1)"]
timeout = 10
"""


def _pg(url, sql, *params):
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(sql, params).fetchall()


def _wait_pg(url, sql, expected, daemon, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _pg(url, sql)
        if found == expected:
            return
        assert daemon.proc.poll() is None, daemon.stderr()
        time.sleep(0.05)
    raise AssertionError(f"{found} != {expected}\n{daemon.stderr()}")


def _report(cli, daemon, task_type, error):
    result = cli("report", "--type", task_type, "--error", error, env=daemon.env)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def _cli_ok(cli, daemon, *args, **env):
    result = cli(*args, env={**daemon.env, **env})
    assert result.returncode == 0, result.stderr
    return result


def _show(cli, daemon, task_id, **env):
    return json.loads(_cli_ok(cli, daemon, "show", str(task_id), "--json", **env).stdout)


def _table_rows(location):
    """{table: every row as a dict, in key order} through the models (times as epochs on both stores).

    A derived counter table is rebuilt on the target, not copied: its rows count nothing when all their
    numbers are 0 (a trigger on the source may have left such rows behind), so those are left out."""
    store = open_store(location, create=False)
    try:
        tables = {}
        for model in copied_models():
            query = model.select().order_by(*model._meta.get_primary_keys()).bind(store.db).dicts()
            rows = [row for row in query if row.get("key") != DONE_KEY]
            if getattr(model._meta, "derived", False):
                rows = [row for row in rows if any(isinstance(v, int) and v for v in row.values())]
            tables[model._meta.table_name] = rows
        return tables
    finally:
        store.close()


@pytest.mark.sqlite_only("the daemon fills the SQLite database that migrate-store moves to PostgreSQL")
def test_a_database_filled_by_the_daemon_moves_to_postgresql_and_the_daemon_carries_on(target, daemon_factory, cli):
    main = MAIN.format(python=sys.executable)
    daemon = daemon_factory(main).start()
    recovered = _report(cli, daemon, "sync", "connection timeout talking to the carrier")
    data_error = _report(cli, daemon, "sync", "malformed json in the payload")
    business = _report(cli, daemon, "sync", "order 7 not found")
    flaky = [_report(cli, daemon, "flaky", f"connection refused by the warehouse {n}") for n in range(2)]
    manual = _report(cli, daemon, "no_handler", "connection timeout to the ERP")
    daemon.wait_for("SELECT status FROM tasks WHERE id = ?", lambda rows: rows == [("recovered",)], 30, recovered)
    daemon.wait_for("SELECT state FROM breakers WHERE task_type = 'flaky'", lambda rows: rows == [("open",)], 30)
    daemon.wait_for("SELECT count(*) FROM tasks WHERE status IN ('new', 'running')", lambda rows: rows == [(0,)], 30)
    _cli_ok(cli, daemon, "label", str(data_error), "unrecoverable_business", "--note", "the order was cancelled")
    _cli_ok(cli, daemon, "resolve", str(business), "--note", "refunded by hand")
    counted = daemon.cli("exec", "--type", "sync", "--", sys.executable, "-c", "pass")  # a success count
    assert counted.returncode == 0, counted.stderr

    refused = daemon.cli("migrate-store", "--to", target)
    assert refused.returncode == 2, refused.stderr
    assert "another failured daemon (pid" in refused.stderr and "stop it" in refused.stderr
    assert _pg(target, "SELECT to_regclass('tasks')") == [(None,)]  # nothing at all was written

    assert daemon.stop() == 0, daemon.stderr()
    ids = [recovered, data_error, business, *flaky, manual]
    before = {task_id: _show(cli, daemon, task_id) for task_id in ids}
    assert before[manual]["status"] == "manual" and before[business]["status"] == "resolved"
    assert all(len(before[task_id]["events"]) >= 2 for task_id in ids)  # histories, not just the reports
    sqlite_rows = _table_rows(daemon.db)
    assert all(sqlite_rows[table] for table in ("notifications", "breakers", "labels", "success_counts",
                                                "daemon_state")), sqlite_rows

    moved = daemon.cli("migrate-store", "--to", target, "--json")
    assert moved.returncode == 0, moved.stderr
    summary = json.loads(moved.stdout)
    assert summary["environment"] == f"FAILURE_DB={target}" and summary["late"] == {}
    derived = {model._meta.table_name for model in copied_models() if getattr(model._meta, "derived", False)}
    assert {table: copied["rows"] for table, copied in summary["tables"].items() if table not in derived} == {
        table: len(rows) for table, rows in sqlite_rows.items() if table not in derived}
    assert all(summary["tables"][table]["how"] == "rebuilt" for table in derived)
    assert _table_rows(target) == sqlite_rows  # every row of every table, ids and times kept
    assert {task_id: _show(cli, daemon, task_id, FAILURE_DB=target) for task_id in ids} == before
    # A reporter still pointed at the SQLite file is refused, saying where the database went (it had written
    # there without a word, and no daemon would ever handle what it wrote).
    stale = daemon.cli("report", "--type", "sync", "--error", "connection timeout into the old file")
    assert stale.returncode == 1 and "was moved into postgresql://" in stale.stderr, stale.stderr
    assert "set FAILURE_DB to that URL" in stale.stderr and "Traceback" not in stale.stderr

    daemon = daemon_factory(main, FAILURE_DB=target).start()
    _cli_ok(cli, daemon, "recover", str(data_error), "--force")
    fresh = _report(cli, daemon, "sync", "connection timeout after the move")
    assert fresh == max(ids) + 1  # the id sequence starts past the copied rows
    _wait_pg(target, f"SELECT id, status FROM tasks WHERE id IN ({data_error}, {fresh}) ORDER BY id",
             [(data_error, "recovered"), (fresh, "recovered")], daemon)
    after = _show(cli, daemon, data_error)
    assert after["events"][:len(before[data_error]["events"])] == before[data_error]["events"]
    assert [e["event"] for e in after["events"][len(before[data_error]["events"]):]][-1] == "recovered"
    assert _pg(target, "SELECT state FROM breakers WHERE task_type = 'flaky'") == [("open",)]
    assert daemon.stop() == 0, daemon.stderr()


def _filled_sqlite(tmp_path, tasks=20):
    path = tmp_path / "data" / "failured.db"
    store = open_store(path)
    for n in range(tasks):
        record_failure(store, "sync", f"connection timeout {n}")
    store.close()
    return str(path)


def test_a_target_that_is_not_empty_is_refused_and_never_doubled(target, tmp_path):
    source = _filled_sqlite(tmp_path)
    first = run_cli("migrate-store", "--to", target, env={"FAILURE_DB": source}, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"FAILURE_DB={target}" in first.stdout
    again = run_cli("migrate-store", "--from", source, "--to", target, cwd=tmp_path)
    assert again.returncode == 2 and f"was moved into {target}" in again.stderr, again.stderr  # copied already
    other = _filled_sqlite(tmp_path / "other")
    into_full = run_cli("migrate-store", "--from", other, "--to", target, cwd=tmp_path)
    assert into_full.returncode == 2, into_full.stderr
    assert "is not empty (" in into_full.stderr and "tasks 20" in into_full.stderr and "TRUNCATE" in into_full.stderr
    assert _pg(target, "SELECT count(*) FROM tasks") == [(20,)]


def test_a_password_is_masked_in_what_migrate_store_prints(tmp_path):
    source = _filled_sqlite(tmp_path, tasks=1)
    result = run_cli("migrate-store", "--to", "postgresql://someone:hunter2secret@127.0.0.1:1/nothing",
                     env={"FAILURE_DB": source}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "postgresql://someone:***@127.0.0.1:1/nothing" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout


@pytest.mark.parametrize("source, to, says", [
    ("db", "/var/lib/failured/other.db", "--to must be a postgresql:// URL"),
    ("db", "postgresql://root@127.0.0.1:5432", "names no database"),
    ("text", "postgresql://root@127.0.0.1:5432/test", "file is not a database"),
    ("missing", "postgresql://root@127.0.0.1:5432/test", "no database at"),
    ("postgresql://someone:hunter2secret@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test",
     "the source must be a SQLite database, not postgresql://someone:***@"),
])
def test_bad_input_is_exit_2_saying_what_and_copies_nothing(tmp_path, source, to, says):
    paths = {"db": _filled_sqlite(tmp_path, tasks=1), "missing": str(tmp_path / "nothing.db"),
             "text": str(tmp_path / "notes.txt")}
    (tmp_path / "notes.txt").write_text("not a database\n")
    result = run_cli("migrate-store", "--to", to, env={"FAILURE_DB": paths.get(source, source)}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "hunter2secret" not in result.stderr
    assert result.stdout == ""


def test_an_interrupted_copy_is_refused_with_how_to_clear_it(target, tmp_path):
    import psycopg

    source = _filled_sqlite(tmp_path)
    open_store(target).close()  # the tables, as migrate-store creates them
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    env["FAILURE_DB"] = source
    # SHARE lets migrate-store read the table (its emptiness check) but holds its COPY: killed there,
    # the copy is half-way through its transaction.
    with psycopg.connect(target) as blocker:
        blocker.execute("LOCK TABLE notifications IN SHARE MODE")
        copying = subprocess.Popen([sys.executable, "-m", "failured", "migrate-store", "--to", target], env=env,
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        application = f"failured:{copying.pid}"
        deadline = time.monotonic() + 30
        while _pg(PG_URL, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                          "AND wait_event_type = 'Lock'", application) != [(1,)]:
            assert copying.poll() is None, copying.communicate()
            assert time.monotonic() < deadline, "migrate-store never reached the locked table"
            time.sleep(0.05)
        copying.send_signal(signal.SIGKILL)
        progress = copying.communicate()[1].decode()
        assert "copying tasks: 20 rows" in progress, progress  # killed after the tasks went over
    deadline = time.monotonic() + 30
    while _pg(PG_URL, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", application) != [(0,)]:
        assert time.monotonic() < deadline, "the killed copy's sessions never ended"
        time.sleep(0.05)
    assert _pg(target, "SELECT count(*) FROM tasks") == [(0,)]  # rolled back whole
    assert _pg(target, "SELECT count(*) FROM daemon_state WHERE key = 'migrate_store'") == [(1,)]

    refused = run_cli("migrate-store", "--to", target, env={"FAILURE_DB": source}, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "holds an unfinished copy" in refused.stderr and "interrupted" in refused.stderr
    clear = re.search(r"with: (psql .*?) -- then", refused.stderr).group(1)
    subprocess.run(clear, shell=True, check=True, capture_output=True)
    done = run_cli("migrate-store", "--to", target, env={"FAILURE_DB": source}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _pg(target, "SELECT count(*), max(id) FROM tasks") == [(20, 20)]


def test_a_worker_that_opened_the_file_before_the_move_is_refused_after_it(target, tmp_path):
    """A Celery worker's reporter keeps its store open: after migrate-store its writes had gone on into the moved
    file, where no daemon reads them. Each write asks first; the refused report stays the worker's to spool."""
    from failured.integrations.targets import DeliveryError, StoreTarget

    source = _filled_sqlite(tmp_path)
    reporter = StoreTarget(source)
    record = {"kind": "failure", "task_type": "sync", "error": "connection refused"}
    assert reporter.send(record)  # opened and written before the move
    moved = run_cli("migrate-store", "--to", target, env={"FAILURE_DB": source}, cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    with pytest.raises(DeliveryError) as refused:
        reporter.send(record)
    assert "was moved into postgresql://" in str(refused.value)
    outcomes, error = reporter.send_many([record])
    assert outcomes == [] and "was moved into" in str(error)
    assert _pg(target, "SELECT count(*) FROM tasks") == [(21,)]  # the copy holds the first write, nothing after


def test_reports_spooled_for_the_moved_file_are_sent_to_where_it_moved(target, tmp_path, monkeypatch):
    """A worker refused by the moved file spools its reports under that file's own spool; restarted with
    FAILURE_DB set to the new URL, it had a spool of its own and the old reports waited forever."""
    from failured.integrations.celery import adopt_moved_spools, default_spool_dir
    from failured.integrations.spool import Spool
    from failured.integrations.targets import StoreTarget

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    source, other = _filled_sqlite(tmp_path), _filled_sqlite(tmp_path / "other")
    spools = {}
    for path in (source, other):  # the workers' start: each SQLite spool notes its file
        spools[path] = Spool(default_spool_dir(StoreTarget(path)))
        adopt_moved_spools(spools[path], StoreTarget(path))
        spools[path].put({"kind": "failure", "task_type": "sync", "error": f"refused while moved ({path})"})
    assert run_cli("migrate-store", "--to", target, env={"FAILURE_DB": source}, cwd=tmp_path).returncode == 0
    moved_to = StoreTarget(target)
    here = Spool(default_spool_dir(moved_to))
    adopt_moved_spools(here, moved_to)  # the worker restarted with FAILURE_DB set to the URL
    [report] = here.pending()
    assert source in Spool.read(report)["error"]
    assert spools[source].pending() == [] and len(spools[other].pending()) == 1  # not moved: not taken
