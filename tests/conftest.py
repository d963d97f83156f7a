"""Shared fixtures: real stores (SQLite files in tmp_path, PostgreSQL schemas) and real config directories."""

import atexit
import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from failured.clock import ManualClock, to_db_time
from robots import hook_server, robot_server, smtp_server  # noqa: F401 - fixtures for every test file
from failured import shipped
from failured.store import is_url, open_store

REPO = Path(__file__).resolve().parent.parent

SMALL_PATTERNS = """
[[category]]
name = "recoverable_network"
label = "可恢复网络错误"
label_en = "Recoverable network error"
action = "retry"
priority = 30
retry = { delays = [0.05, 0.1, 0.2], max_attempts = 3 }
exception_types = ["ConnectTimeout", "requests.exceptions.ReadTimeout"]
tags = ["NETWORK"]
patterns = ['connection.*timeout', 'connection.*refused', '连接.*超时']
suggestion = "检查网络"
suggestion_en = "Check the network"

[[category]]
name = "unrecoverable_data"
label = "不可恢复数据错误"
label_en = "Unrecoverable data error"
action = "notify_admin"
priority = 10
exception_types = ["JSONDecodeError"]
tags = ["DATA"]
patterns = ['malformed.*json', 'validation.*failed']

[[category]]
name = "unrecoverable_business"
label = "不可恢复业务错误"
label_en = "Unrecoverable business error"
action = "notify_user"
priority = 20
tags = ["BUSINESS"]
patterns = ['not found', '不存在']
suggestion = "检查订单号"
suggestion_en = "Check the order number"
"""


def pytest_xdist_auto_num_workers(config):
    """``pytest -n auto`` (the README's test command): two workers per core.

    Most tests wait on a daemon, a subprocess or a socket rather than compute, so
    twice the cores keeps the cores busy; every test works in its own tmp_path with
    ports the kernel picks, so workers never share a file or a port.
    """
    return 2 * len(os.sched_getaffinity(0))


def pytest_configure(config):
    """Byte-compile the package once, before any worker or ``failured`` process starts.

    The suite starts some 200 Python processes (each ``failured`` command and daemon). An
    editable install is never byte-compiled, and where PYTHONDONTWRITEBYTECODE is set no
    process writes the cache either, so each would compile the whole package again (~0.1 CPU-s
    each). pip byte-compiles a regular install the same way; __pycache__ is ignored by git.
    """
    # The store markers (see STORES), in every process: pytest warns of an unknown marker.
    config.addinivalue_line("markers", "sqlite_only(reason): a test of what only SQLite has; it never runs on "
                                       "PostgreSQL (see STORES)")
    config.addinivalue_line("markers", "sqlite_suffices(reason): a PostgreSQL run would prove nothing more (the "
                                       "subject never touches the store, or its store part runs on PostgreSQL "
                                       "elsewhere); it runs on SQLite only, to keep the suite short")
    config.addinivalue_line("markers", "xfail_on_postgresql(reason): a known defect of failured on PostgreSQL: "
                                       "the test's PostgreSQL run is xfail(strict=True)")
    if hasattr(config, "workerinput"):  # an xdist worker: its controller has done it
        return
    import compileall

    compileall.compile_dir(REPO / "failured", quiet=2)
    _warm_the_model_cache()


def _warm_the_model_cache():
    """Train (or load) the models of the shipped configuration and of SMALL_PATTERNS once, here, before the
    workers start.

    Most tests load one of the two (a model is cached per category set); on a machine whose model cache is
    empty (or stale after a change to the corpus or the model), every worker and daemon would train the same
    model at once instead of reading it from the cache: with about 50,000 corpus messages a training is
    18–21 CPU-seconds, and four daemons training at once on two cores missed a test's 20 s wait for READY.
    """
    from concurrent.futures import ThreadPoolExecutor

    from failured.config import load_config

    with tempfile.TemporaryDirectory() as directory, ThreadPoolExecutor(2) as pool:  # each trains in a child
        list(pool.map(load_config, [REPO / "config", write_config(Path(directory) / "config")]))


# Test files whose single long test must not be the last one a worker starts (run first instead):
# test_schemathesis runs every API operation in one test, ~12 s on one core.
RUN_FIRST = ("test_schemathesis.py",)


def pytest_collection_modifyitems(items):
    """Move the RUN_FIRST files' tests to the front, in every xdist worker alike; mark the PostgreSQL runs of
    tests marked ``xfail_on_postgresql`` xfail(strict=True).

    worksteal gives each worker a contiguous share of the collection and lets an idle worker take
    the back half of a busy one's queue; a long test in the middle can so start last and leave one
    core working alone at the end. The front of the first share is never taken.
    """
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: the rest keep their order
    for item in items:
        known = item.get_closest_marker("xfail_on_postgresql")
        callspec = getattr(item, "callspec", None)
        if known and callspec and "postgresql" in callspec.params.values():  # db_location's, or a fixture's by STORES
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"on PostgreSQL: {known.args[0]}"))


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """Keep pytest's assertion-rewritten test modules in tests/__pycache__ (ignored by git).

    Where PYTHONDONTWRITEBYTECODE is set, pytest would otherwise rewrite every test module
    again in every xdist worker on every run (~2 CPU-s a worker).
    """
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = saved


# A task type "sync" whose retries always succeed at once (engine-level tests never run it).
SYNC_HANDLER = """
[task_types.sync.handler]
kind = "command"
argv = ["true"]
timeout = 10
"""


@pytest.fixture
def sync_snapshot(tmp_path):
    """The small ruleset plus the "sync" handler, loaded."""
    from failured.config import load_config

    return load_config(write_config(tmp_path / "sync-config", SMALL_PATTERNS, SYNC_HANDLER))


@pytest.fixture
def sync_engine(store, clock, sync_snapshot):
    """An Engine over the real store, the manual clock and ``sync_snapshot``."""
    from failured.engine import Engine
    from failured.settings import Settings

    return Engine(store, Settings(), clock, lambda: sync_snapshot, owner="test:1:0")

def set_schema_version(store, version):
    """Make the open ``store`` say it is at schema ``version`` (in the caller's transaction), as a database
    written by that version would: both stores keep it in ``schema_info``, SQLite in ``user_version`` too."""
    store.execute("UPDATE schema_info SET version = ?", (version,))
    if store.dialect == "sqlite":
        store.db.execute_sql(f"PRAGMA user_version = {int(version)}")


def wait_for(condition, timeout=5.0):
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; returns its last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def write_config(directory, patterns=SMALL_PATTERNS, main=""):
    """A config directory with one pattern file and an optional failured.toml."""
    directory = Path(directory)
    (directory / "patterns").mkdir(parents=True, exist_ok=True)
    (directory / "patterns" / "10-test.toml").write_text(textwrap.dedent(patterns), encoding="utf-8")
    if main:
        (directory / "failured.toml").write_text(textwrap.dedent(main), encoding="utf-8")
    return directory


@pytest.fixture
def config_dir(tmp_path):
    return write_config(tmp_path / "config")


def shipped_config_files():
    """Names, relative to the config directory, of the files failured ships (sorted)."""
    return tuple(shipped.shipped_config_files())


def copy_shipped_config(target):
    """A copy of the configuration failured ships in ``target``, as ``failured init`` writes it.

    Never the checkout's config/ as it stands: a local override such as
    config/patterns/50-local.toml, which the README suggests creating, is not
    shipped and must not change what a test sees (failured.shipped decides).
    """
    shipped.write_shipped_config(target)
    return Path(target)


@functools.lru_cache(maxsize=1)
def shipped_config_copy():
    """One copy of the shipped configuration per test process, for module-level use; treat it as read-only."""
    target = Path(tempfile.mkdtemp(prefix="failured-shipped-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    return copy_shipped_config(target / "config")


@pytest.fixture
def shipped_config(tmp_path):
    """A writable copy of the shipped configuration directory, free of local overrides."""
    return copy_shipped_config(tmp_path / "shipped-config")


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory):
    """A new SQLite store as ``open_store`` creates it, made once per test process.

    Creating the schema costs ~15 ms of CPU and some 400 tests take a store; copying this file
    costs ~2 ms. Tests of creating and migrating a database open their own paths.
    """
    path = tmp_path_factory.mktemp("empty-store") / "failured.db"
    open_store(path).close()
    return path


def _copy_of_the_empty_store(path, empty_store_file):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store_file, path)
    return open_store(path, create=False)


@pytest.fixture
def sqlite_store(tmp_path, empty_store_file):
    """A real SQLite store at tmp_path/data/failured.db: a copy of ``empty_store_file``, opened. For what only
    SQLite has (PRAGMAs, its file, its write lock); everything else takes ``store``."""
    store = _copy_of_the_empty_store(tmp_path / "data" / "failured.db", empty_store_file)
    yield store
    store.close()


# -- the stores a test runs on ---------------------------------------------------------------------------------------
# Every test that takes ``store``, ``db_location`` or ``daemon_factory`` runs on SQLite, and on PostgreSQL too where
# FAILURE_TEST_POSTGRES_URL is set (in a schema of its own, dropped after); its id names the store ([sqlite],
# [postgresql]). A test of what only SQLite has is marked ``@pytest.mark.sqlite_only("why, in one line")``, also where
# it opens a SQLite file of its own (``pytest -m sqlite_only --collect-only`` lists them all). A daemon test whose
# subject does not touch the store (the HTTP server's start, the config watcher, sd_notify), or whose store part runs
# on PostgreSQL in another test, is marked ``sqlite_suffices("why")``: it runs on SQLite only too, as a PostgreSQL run
# costs seconds and would prove nothing more.
STORES = ["sqlite", "postgresql"] if os.environ.get("FAILURE_TEST_POSTGRES_URL") else ["sqlite"]


def pytest_generate_tests(metafunc):
    """Parametrize ``db_location`` by store. A test that takes ``pg_url`` names its PostgreSQL itself (and passes it
    as FAILURE_DB where it starts a daemon): it runs once."""
    if "db_location" not in metafunc.fixturenames or "pg_url" in metafunc.fixturenames:
        return
    definition = metafunc.definition
    sqlite_only = definition.get_closest_marker("sqlite_only") or definition.get_closest_marker("sqlite_suffices")
    metafunc.parametrize("db_location", ["sqlite"] if sqlite_only else STORES, indirect=True)


@contextlib.contextmanager
def store_location(kind, directory):
    """Where a test's database lives (FAILURE_DB): ``directory``/data/failured.db for "sqlite" (not created here),
    the URL of a fresh PostgreSQL schema for "postgresql" (dropped on leaving; the test skips where no server
    answers)."""
    if kind == "sqlite":
        yield str(Path(directory) / "data" / "failured.db")
        return
    from test_store_postgres import fresh_schema_url

    with fresh_schema_url() as url:
        yield url


@pytest.fixture
def db_location(request, tmp_path):
    """The test's FAILURE_DB, on the store its id names (see ``pytest_generate_tests``)."""
    with store_location(getattr(request, "param", "sqlite"), tmp_path) as location:
        yield location


@pytest.fixture
def store(db_location, empty_store_file):
    """The test's store, opened: SQLite (a copy of ``empty_store_file``) or PostgreSQL, as its id says."""
    if is_url(db_location):
        store = open_store(db_location)
    else:
        store = _copy_of_the_empty_store(db_location, empty_store_file)
    yield store
    store.close()


class Database:
    """Plain SQL on a test's database, a SQLite file or a PostgreSQL URL alike: ``?`` placeholders, and times read
    back as SQLite's text on both (to_db_time), so that a test compares and parses them alike."""

    def __init__(self, location):
        self.location = str(location)
        self._postgresql = None  # one connection, kept: tests poll

    def query(self, sql, *params):
        """The rows of ``sql`` (none for a statement that returns none), committed."""
        if not is_url(self.location):
            return self._sqlite(sql, params)
        if self._postgresql is None:
            import psycopg

            self._postgresql = psycopg.connect(self.location, autocommit=True)
        cursor = self._postgresql.execute(sql.replace("%", "%%").replace("?", "%s"), params)
        rows = cursor.fetchall() if cursor.description else []
        return [tuple(_as_sqlite_reads_it(value) for value in row) for row in rows]

    def _sqlite(self, sql, params):
        con = sqlite3.connect(self.location, timeout=30)
        try:
            rows = con.execute(sql, params).fetchall()
            con.commit()
            return rows
        finally:
            con.close()

    def tables(self):
        """The names of the store's tables (none where there is no SQLite file yet)."""
        if is_url(self.location):
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        elif Path(self.location).exists():
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1"
        else:
            return []
        return [name for (name,) in self.query(sql)]

    def close(self):
        if self._postgresql is not None:
            self._postgresql.close()
            self._postgresql = None


def _as_sqlite_reads_it(value):
    return to_db_time(value.timestamp()) if isinstance(value, datetime) else value


def query(location, sql, *params):
    """``Database(location).query(sql, *params)``, closed after."""
    database = Database(location)
    try:
        return database.query(sql, *params)
    finally:
        database.close()


@pytest.fixture
def clock():
    return ManualClock()


def run_cli(*args, env=None, cwd=None, input=None, timeout=60):
    """Run the real ``failured`` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "failured", *args], env=full_env, cwd=cwd,
                          input=input, capture_output=True, text=True, timeout=timeout)


class DaemonProcess:
    """A real ``failured run`` subprocess with its own database, config and NOTIFY_SOCKET."""

    def __init__(self, workdir, env):
        import socket

        self.workdir = Path(workdir)
        self.env = env
        self.db = env["FAILURE_DB"]
        self.database = Database(self.db)
        self.notify_path = str(self.workdir / f"notify-{os.getpid()}-{id(self)}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.messages = []
        self._closed = False
        import threading

        threading.Thread(target=self._drain, daemon=True).start()
        self.proc = None
        self.stderr_path = self.workdir / "daemon.stderr"

    def start(self, ready_timeout=20):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
        full_env.update(self.env, NOTIFY_SOCKET=self.notify_path)
        self._stderr = open(self.stderr_path, "ab")
        self.messages.clear()  # a restart waits for its own READY=1, not the last run's
        self.proc = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=full_env,
                                     cwd=self.workdir, stderr=self._stderr)
        self.wait_message("READY=1", ready_timeout)
        return self

    def _drain(self):
        # Read datagrams as they come, as systemd does: a full queue would block the daemon.
        self.notify.settimeout(0.2)
        while not self._closed:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except OSError:
                continue

    def wait_message(self, text, timeout=10):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.3)  # the last datagrams may still be on their way to the reader
                if any(text in m for m in self.messages):
                    return True
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} from the daemon within {timeout}s; got {self.messages}")

    def stderr(self):
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def cli(self, *args, **kwargs):
        return run_cli(*args, env=self.env, cwd=self.workdir, **kwargs)

    def query(self, sql, *params):
        """The rows of ``sql`` on the daemon's database, SQLite or PostgreSQL (see ``Database``)."""
        return self.database.query(sql, *params)

    def wait_for(self, sql, predicate, timeout=15, *params):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query(sql, *params)
            if predicate(rows):
                return rows
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting on {sql!r}: last {rows}\n{self.stderr()}")

    def stop(self, sig=None, timeout=30):
        import signal as signals

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig or signals.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _dump_threads(self.proc.pid, self.stderr_path)
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_stderr", None):
            self._stderr.close()
        return self.proc.returncode if self.proc else None

    def close(self):
        self.stop()
        self.database.close()
        self._closed = True


def _dump_threads(pid, path):
    """Where a daemon that would not stop is stuck (py-spy, when installed), for the failure report."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(spy).exists():
        with open(path, "ab") as out:
            subprocess.run([spy, "dump", "--pid", str(pid)], stdout=out, stderr=out, timeout=30)


def daemon_env(workdir, db, config, **env):
    """A daemon's environment over ``workdir`` and database ``db`` (a path or a URL); ``env`` adds or overrides."""
    base = {
        "FAILURE_DB": str(db),
        "FAILURE_CONFIG_DIR": str(config),
        "FAILURE_LOG_DIR": str(workdir / "logs"),
        "FAILURE_REPORT_DIR": str(workdir / "reports"),
        "FAILURE_POLL_SECONDS": "0.05",
        "FAILURE_LOG_LEVEL": "INFO",
        "FAILURE_HTTP_ADDR": "off",  # tests that use the API pick a free port
    }
    base.update({k: str(v) for k, v in env.items()})
    return base


@pytest.fixture
def daemon_factory(tmp_path, db_location):
    """Build daemons over one work dir and the test's database: ``daemon_factory(main_toml, **env)``."""
    made = []

    def make(main="", patterns=SMALL_PATTERNS, **env):
        config = write_config(tmp_path / "config", patterns, main)
        daemon = DaemonProcess(tmp_path, daemon_env(tmp_path, db_location, config, **env))
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
