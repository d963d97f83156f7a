"""Shared fixtures: real SQLite files and real config directories in tmp_path."""

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from failured.clock import ManualClock
from robots import hook_server, robot_server, smtp_server  # noqa: F401 - fixtures for every test file
from failured import shipped
from failured.store import open_store

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
    if hasattr(config, "workerinput"):  # an xdist worker: its controller has done it
        return
    import compileall

    compileall.compile_dir(REPO / "failured", quiet=2)
    _warm_the_model_cache()


def _warm_the_model_cache():
    """Train (or load) the shipped configuration's model once, here, before the workers start.

    Most tests load the shipped configuration; on a machine whose model cache is empty (or
    stale after a change to the corpus or the model), every worker and daemon would train
    the same model at once (a few CPU-seconds each) instead of reading it from the cache.
    """
    from failured.config import load_config

    load_config(REPO / "config")


# Test files whose single long test must not be the last one a worker starts (run first instead):
# test_schemathesis runs every API operation in one test, ~12 s on one core.
RUN_FIRST = ("test_schemathesis.py",)


def pytest_collection_modifyitems(items):
    """Move the RUN_FIRST files' tests to the front, in every xdist worker alike.

    worksteal gives each worker a contiguous share of the collection and lets an idle worker take
    the back half of a busy one's queue; a long test in the middle can so start last and leave one
    core working alone at the end. The front of the first share is never taken.
    """
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: the rest keep their order


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


@pytest.fixture
def sqlite_store(tmp_path, empty_store_file):
    """A real SQLite store at tmp_path/data/failured.db: a copy of ``empty_store_file``, opened. For what only
    SQLite has (PRAGMAs, its file, its write lock); everything else takes ``store``."""
    path = tmp_path / "data" / "failured.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store_file, path)
    store = open_store(path, create=False)
    yield store
    store.close()


# Every test that takes ``store`` runs on SQLite, and on PostgreSQL too where FAILURE_TEST_POSTGRES_URL is set
# (in a schema of its own, dropped after).
STORES = ["sqlite", "postgresql"] if os.environ.get("FAILURE_TEST_POSTGRES_URL") else ["sqlite"]


@pytest.fixture(params=STORES)
def store(request):
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_store")
        return
    from test_store_postgres import fresh_schema_url

    with fresh_schema_url() as url:
        store = open_store(url)
        yield store
        store.close()


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
        import sqlite3

        con = sqlite3.connect(self.db, timeout=30)
        try:
            rows = con.execute(sql, params).fetchall()
            con.commit()
            return rows
        finally:
            con.close()

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
        self._closed = True


def _dump_threads(pid, path):
    """Where a daemon that would not stop is stuck (py-spy, when installed), for the failure report."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(spy).exists():
        with open(path, "ab") as out:
            subprocess.run([spy, "dump", "--pid", str(pid)], stdout=out, stderr=out, timeout=30)


@pytest.fixture
def daemon_factory(tmp_path):
    """Build daemons over one work dir: ``daemon_factory(main_toml, **env)``."""
    made = []

    def make(main="", patterns=SMALL_PATTERNS, **env):
        config = write_config(tmp_path / "config", patterns, main)
        base = {
            "FAILURE_DB": str(tmp_path / "data" / "failured.db"),
            "FAILURE_CONFIG_DIR": str(config),
            "FAILURE_LOG_DIR": str(tmp_path / "logs"),
            "FAILURE_REPORT_DIR": str(tmp_path / "reports"),
            "FAILURE_POLL_SECONDS": "0.05",
            "FAILURE_LOG_LEVEL": "INFO",
            "FAILURE_HTTP_ADDR": "off",  # tests that use the API pick a free port
        }
        base.update({k: str(v) for k, v in env.items()})
        daemon = DaemonProcess(tmp_path, base)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
