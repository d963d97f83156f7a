"""Handlers against real subprocesses, a real local HTTP server and a real module on sys.path."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from conftest import wait_for
from failured.errors import ConfigError
from failured.handlers import (
    HandlerSpec,
    TaskContext,
    expand_env,
    parse_handler,
    run_handler,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")


def task(payload=None, **kw):
    fields = {"id": 42, "task_type": "tracking_update", "ref": "order-7", "payload": payload or {}, "attempt": 2}
    return TaskContext(**{**fields, **kw})


@pytest.fixture
def script(tmp_path):
    """Write a Python script into tmp_path; return the argv that runs it."""

    def make(body, name="handler.py"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return (sys.executable, str(path))

    return make


def command(argv, **kw):
    return HandlerSpec(kind="command", argv=tuple(argv), **{"timeout": 5.0, **kw})


def gone(pid):
    """True once ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- command ---------------------------------------------------------------


def test_command_exit_zero_is_success_and_reports_pid(script):
    pids = []
    outcome = run_handler(command(script("pass\n")), task(), on_start=pids.append)
    assert outcome.ok and outcome.error is None
    assert pids == [outcome.pid] and outcome.pid > 0
    assert outcome.duration > 0


def test_on_start_receives_the_child_pid(script, tmp_path):
    argv = script(f"import os; open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n")
    pids = []
    run_handler(command(argv), task(), on_start=pids.append)
    assert pids == [int((tmp_path / "pid").read_text())]


def test_command_failure_reports_exit_status_and_stderr_tail(script):
    argv = script("""
        import sys
        print("stdout noise")
        sys.stderr.write("x" * 10000 + "\\nboom: database locked\\n")
        sys.exit(3)
    """)
    outcome = run_handler(command(argv), task())
    assert not outcome.ok
    assert outcome.error.startswith("exit 3: ") and outcome.error.endswith("boom: database locked")
    assert outcome.error_type is None  # the output names no exception type (the status is in the error)
    assert len(outcome.error.encode()) <= 4096


def test_a_command_failure_has_the_type_of_the_exception_its_output_names(script):
    argv = script("""
        import sys
        sys.stderr.write("Traceback (most recent call last):\\n  File \\"job.py\\", line 1, in <module>\\n"
                         "requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api', port=443): Read timed out.\\n")
        sys.exit(1)
    """)
    outcome = run_handler(command(argv), task())
    assert outcome.error_type == "requests.exceptions.ReadTimeout" and outcome.error.startswith("exit 1: Traceback")


def test_a_long_output_is_cut_at_a_line_start_after_a_marker_and_no_output_is_the_status_alone(script):
    argv = script("""
        import sys
        for i in range(3000):
            print(f"line {i} of a loud handler")
        sys.exit(3)
    """)
    outcome = run_handler(command(argv), task())
    assert outcome.error.startswith("exit 3: …\nline ") and outcome.error.endswith("line 2999 of a loud handler")
    killed = run_handler(command(script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")), task())
    assert killed.error == "signal 9"


def test_command_failure_without_stderr_uses_stdout(script):
    outcome = run_handler(command(script("print('only on stdout'); raise SystemExit(1)\n")), task())
    assert outcome.error == "exit 1: only on stdout"


def test_placeholders_are_substituted_per_argument(script, tmp_path):
    argv = script(f"import json, sys; open({str(tmp_path / 'args')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    nasty = "a b; rm -rf / && echo $(id) `x` | cat > out"
    templates = ["--order={payload[order_id]}", "{payload[note]}", "{task_id}/{attempt}", "{ref}", "{task_type}",
                 "{payload[n]}", "{{literal}}"]  # fmt: skip
    outcome = run_handler(command(argv + tuple(templates)), task({"order_id": "A-1", "note": nasty, "n": 5}))
    assert outcome.ok, outcome.error
    assert json.loads((tmp_path / "args").read_text()) == [
        "--order=A-1", nasty, "42/2", "order-7", "tracking_update", "5", "{literal}"]  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_missing_payload_key_is_an_outcome_error(script):
    argv = script("pass\n") + ("--order", "{payload[order_id]}")
    outcome = run_handler(command(argv), task({"other": 1}))
    assert (outcome.ok, outcome.error) == (False, "[CONFIG] argv[3]: payload has no key 'order_id'")


@pytest.mark.parametrize("template", ["{payload.__class__}", "{payload[a].__class__}", "{task_id!r}", "{0}", "{}",
                                      "{task_id:>99999}", "{__import__}", "unbalanced {"])  # fmt: skip
def test_attribute_access_and_other_placeholders_are_rejected(script, template):
    outcome = run_handler(command(script("pass\n") + (template,)), task({"a": "x"}))
    assert not outcome.ok and outcome.error.startswith("[CONFIG] argv[2]: ")
    assert outcome.error_type == "ValueError"


@linux_only
def test_timeout_kills_the_whole_process_group(script, tmp_path):
    pidfile = tmp_path / "pids"
    argv = script(f"""
        import os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{grandchild.pid}}")
        time.sleep(30)
    """)
    started = time.monotonic()
    outcome = run_handler(command(argv, timeout=1.0), task())
    assert (outcome.ok, outcome.error, outcome.error_type) == (False, "timed out after 1s", "TimeoutExpired")
    assert time.monotonic() - started < 3
    child, grandchild = map(int, pidfile.read_text().split())
    assert child == outcome.pid
    assert wait_for(lambda: gone(child) and gone(grandchild))


@linux_only
def test_child_dies_when_the_daemon_is_killed(script, tmp_path):
    sleeper = script("import time; time.sleep(30)\n", name="sleeper.py")
    pidfile = tmp_path / "pid"
    daemon = script(f"""
        from failured.handlers import HandlerSpec, TaskContext, run_handler
        spec = HandlerSpec(kind="command", argv={sleeper!r}, timeout=30)
        def record(pid):
            open({str(pidfile)!r}, "w").write(str(pid))
        run_handler(spec, TaskContext(1, "t", None, {{}}, 1), on_start=record)
    """, name="daemon.py")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(daemon, env=env)
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=5)
        child = int(pidfile.read_text())
        assert not gone(child)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: gone(child))
    finally:
        proc.kill()
        proc.wait()


def test_command_not_found_names_the_command():
    outcome = run_handler(command(["no-such-command-xyz", "arg"]), task())
    assert not outcome.ok and outcome.error_type == "FileNotFoundError"
    assert outcome.error.startswith("[CONFIG] cannot run 'no-such-command-xyz'")


def test_command_not_executable(tmp_path):
    path = tmp_path / "not-executable"
    path.write_text("#!/bin/sh\n")
    outcome = run_handler(command([str(path)]), task())
    assert outcome.error_type == "PermissionError" and str(path) in outcome.error


def test_bad_cwd_is_an_outcome_error(script, tmp_path):
    missing = str(tmp_path / "missing-dir")
    outcome = run_handler(command(script("pass\n"), cwd=missing), task())
    assert not outcome.ok and outcome.error_type == "FileNotFoundError"
    assert f"in cwd {missing!r}" in outcome.error


def test_env_values_are_expanded_from_the_environment(script, tmp_path, monkeypatch):
    monkeypatch.setenv("FH_SECRET", "hunter2")
    argv = script(f"import os; open({str(tmp_path / 'env')!r}, 'w').write(os.environ['TOKEN'] + os.environ['PATH'])\n")
    outcome = run_handler(command(argv, env=(("TOKEN", "t=${FH_SECRET};"),)), task())
    assert outcome.ok, outcome.error
    assert (tmp_path / "env").read_text() == "t=hunter2;" + os.environ["PATH"]


def test_missing_env_variable_is_named_without_values(script, monkeypatch):
    monkeypatch.setenv("FH_SET", "visible-value")
    monkeypatch.delenv("FH_UNSET", raising=False)
    spec = command(script("pass\n"), env=(("TOKEN", "${FH_SET}${FH_UNSET}"),))
    outcome = run_handler(spec, task())
    assert outcome.error == "[CONFIG] env TOKEN: environment variable 'FH_UNSET' is not set"


def test_expand_env(monkeypatch):
    monkeypatch.setenv("FH_A", "1")
    monkeypatch.delenv("FH_NONE", raising=False)
    assert expand_env("Bearer ${FH_A}-$FH_A-${FH_A}") == "Bearer 1-$FH_A-1"
    with pytest.raises(KeyError) as info:
        expand_env("${FH_NONE}")
    assert info.value.args == ("FH_NONE",)


# --- http ------------------------------------------------------------------


@pytest.fixture
def server():
    """A local HTTP server: /ok answers 200, /fail 503 echoing path and headers, /slow sleeps."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path.startswith("/slow"):
                time.sleep(2)
            status, text = (200, "fine") if self.path.startswith("/ok") else (503, f"down {self.path} {self.headers}")
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.seen = seen
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def http_spec(url, **kw):
    return HandlerSpec(kind="http", url=url, **{"timeout": 5.0, **kw})


def test_http_2xx_is_success_and_sends_the_task_as_json(server, monkeypatch):
    monkeypatch.setenv("FH_TOKEN", "tok-123")
    spec = http_spec(server.base + "/ok", headers=(("Authorization", "Bearer ${FH_TOKEN}"),))
    outcome = run_handler(spec, task({"order_id": "A-1"}))
    assert outcome.ok, outcome.error
    [request] = server.seen
    assert request["headers"]["Authorization"] == "Bearer tok-123"
    assert request["body"] == {"task_id": 42, "task_type": "tracking_update", "ref": "order-7",
                               "payload": {"order_id": "A-1"}, "attempt": 2}  # fmt: skip


def test_http_503_reports_status_and_body_excerpt(server):
    outcome = run_handler(http_spec(server.base + "/fail/" + "p" * 1000), task())
    assert not outcome.ok and outcome.error_type == "HTTP 503"
    assert outcome.error.startswith("HTTP 503: down /fail/ppp")
    assert len(outcome.error) <= len("HTTP 503: ") + 500


def test_http_error_text_never_holds_query_string_or_header_values(server, monkeypatch):
    monkeypatch.setenv("FH_TOKEN", "tok-secret-456")
    spec = http_spec(server.base + "/fail?api_key=s3cr3t-key", headers=(("X-Api-Token", "${FH_TOKEN}"),))
    outcome = run_handler(spec, task())
    assert outcome.error_type == "HTTP 503" and "?***" in outcome.error
    assert "s3cr3t-key" not in outcome.error and "tok-secret-456" not in outcome.error


def test_http_connection_refused(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = run_handler(http_spec(f"http://127.0.0.1:{port}/retry?key=s3cr3t-key"), task())
    assert not outcome.ok and outcome.error_type == "ConnectionError"
    assert "s3cr3t-key" not in outcome.error and "?***" in outcome.error


def test_http_read_timeout(server):
    outcome = run_handler(http_spec(server.base + "/slow", timeout=0.3), task())
    assert (outcome.ok, outcome.error_type) == (False, "ReadTimeout")


def test_http_missing_header_variable(monkeypatch):
    monkeypatch.delenv("FH_UNSET", raising=False)
    outcome = run_handler(http_spec("http://127.0.0.1:9/", headers=(("Authorization", "${FH_UNSET}"),)), task())
    assert outcome.error == "[CONFIG] header Authorization: environment variable 'FH_UNSET' is not set"


# --- python ----------------------------------------------------------------


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    """A fresh module on sys.path; returns its name."""
    name = f"fh_mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import time
        calls = []
        class Throttled(Exception):
            pass
        def ok(order_id, note=""):
            calls.append((order_id, note))
        def bad_value(**payload):
            raise ValueError("order " + payload["order_id"] + " is unknown")
        def throttled(**payload):
            raise Throttled("slow down")
        def hangs(**payload):
            time.sleep(2)
        def exits(**payload):
            raise SystemExit(4)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def py_spec(target, **kw):
    return HandlerSpec(kind="python", target=target, **{"timeout": 5.0, **kw})


def test_python_function_is_called_with_the_payload(pymod):
    outcome = run_handler(py_spec(f"{pymod}:ok"), task({"order_id": "A-1", "note": "n"}))
    assert outcome.ok, outcome.error
    assert sys.modules[pymod].calls == [("A-1", "n")]


def test_python_exception_gives_text_and_type(pymod):
    outcome = run_handler(py_spec(f"{pymod}:bad_value"), task({"order_id": "A-1"}))
    assert (outcome.ok, outcome.error, outcome.error_type) == (False, "order A-1 is unknown", "ValueError")
    outcome = run_handler(py_spec(f"{pymod}:throttled"), task())
    assert (outcome.error, outcome.error_type) == ("slow down", f"{pymod}.Throttled")


def test_python_system_exit_is_an_outcome(pymod):
    outcome = run_handler(py_spec(f"{pymod}:exits"), task())
    assert (outcome.ok, outcome.error, outcome.error_type) == (False, "4", "SystemExit")


def test_python_import_failure(pymod):
    outcome = run_handler(py_spec("fh_no_such_module:run"), task())
    assert outcome.error.startswith("cannot import 'fh_no_such_module:run': ModuleNotFoundError: ")
    assert outcome.error_type == "ModuleNotFoundError"
    outcome = run_handler(py_spec(f"{pymod}:missing"), task())
    assert outcome.error.startswith(f"cannot import '{pymod}:missing': AttributeError: ")


def test_python_timeout_abandons_the_call(pymod):
    outcome = run_handler(py_spec(f"{pymod}:hangs", timeout=0.2), task())
    assert (outcome.ok, outcome.error_type) == (False, "TimeoutExpired")
    assert outcome.duration < 1


def test_unknown_kind_is_an_outcome_error():
    outcome = run_handler(HandlerSpec(kind="shell"), task())
    assert (outcome.ok, outcome.error) == (False, "[CONFIG] unknown handler kind 'shell'")


# --- parse_handler ---------------------------------------------------------

KEY = "task_types.tracking_update.handler"


def test_parse_handler_builds_specs():
    spec = parse_handler({"kind": "command", "argv": ["python3", "x.py", "{payload[order_id]}"], "timeout": 30,
                          "cwd": "/srv", "env": {"TOKEN": "${T}"}}, "f.toml", KEY)  # fmt: skip
    assert spec == HandlerSpec(kind="command", argv=("python3", "x.py", "{payload[order_id]}"), cwd="/srv",
                               env=(("TOKEN", "${T}"),), timeout=30.0)  # fmt: skip
    spec = parse_handler({"kind": "http", "url": "https://app/retry", "method": "put",
                          "headers": {"Authorization": "Bearer ${T}"}}, "f.toml", KEY)  # fmt: skip
    assert (spec.method, spec.headers, spec.timeout) == ("PUT", (("Authorization", "Bearer ${T}"),), 60.0)
    assert parse_handler({"kind": "python", "target": "app.retry:run"}, "f.toml", KEY).target == "app.retry:run"


@pytest.mark.parametrize("table, field, reason", [
    ({"argv": ["x"]}, "kind", "missing; set kind ="),
    ({"kind": "shell", "argv": ["x"]}, "kind", "is 'shell'; set kind ="),
    ({"kind": "command", "argv": ["x"], "timout": 5}, "timout", "unknown key for a command handler; allowed:"),
    ({"kind": "python", "target": "a:b", "url": "http://x"}, "url", "unknown key for a python handler"),
    ({"kind": "command"}, "argv", "missing or empty; set argv = ["),
    ({"kind": "command", "argv": []}, "argv", "missing or empty"),
    ({"kind": "command", "argv": "python3 retry.py"}, "argv", 'is a string; it must be a list of the program and its arguments: argv = ["python3", "retry.py"]'),
    ({"kind": "command", "argv": ["x", 3]}, "argv[1]", "must be a string; quote it"),
    ({"kind": "command", "argv": ["x", "{payload.__class__}"]}, "argv[1]", "unsupported placeholder {payload.__class__}"),
    ({"kind": "command", "argv": ["x", "{attempt!r}"]}, "argv[1]", "may not have a conversion or format spec"),
    ({"kind": "command", "argv": ["x"], "cwd": 5}, "cwd", "must be a directory path string"),
    ({"kind": "command", "argv": ["x"], "env": ["A=1"]}, "env", "must be a table of strings"),
    ({"kind": "command", "argv": ["x"], "env": {"A": 1}}, "env.A", "must be a string; quote it"),
    ({"kind": "command", "argv": ["x"], "timeout": 0}, "timeout", "must be a number of seconds above 0 and at most"),
    # a lease past the year 9999 made every claim of a batch fail: one task stopped every retry
    ({"kind": "command", "argv": ["x"], "timeout": 1e12}, "timeout", "at most 604800 (7 days)"),
    ({"kind": "command", "argv": ["x"], "timeout": -1.5}, "timeout", "must be a number of seconds above 0"),
    ({"kind": "command", "argv": ["x"], "timeout": "60"}, "timeout", "must be a number of seconds above 0"),
    ({"kind": "command", "argv": ["x"], "timeout": True}, "timeout", "must be a number of seconds above 0"),
    ({"kind": "http"}, "url", "missing or not http(s); set url ="),
    ({"kind": "http", "url": "ftp://x"}, "url", "missing or not http(s)"),
    ({"kind": "http", "url": "http://x", "method": "BREW"}, "method", "must be one of GET, POST"),
    ({"kind": "http", "url": "http://x", "headers": {"A": 1}}, "headers.A", "must be a string"),
    ({"kind": "python"}, "target", 'missing; set target = "package.module:function" (note the colon)'),
    ({"kind": "python", "target": "app.retry.run"}, "target", "is 'app.retry.run'; set target = "),
    ({"kind": "python", "target": "app:"}, "target", "package.module:function"),
])  # fmt: skip
def test_parse_handler_rejects_bad_input(table, field, reason):
    with pytest.raises(ConfigError) as info:
        parse_handler(table, "config/failured.toml", KEY)
    assert info.value.path == "config/failured.toml"
    assert info.value.key == f"{KEY}.{field}"
    assert reason in info.value.reason


def test_parse_handler_rejects_a_non_table():
    with pytest.raises(ConfigError) as info:
        parse_handler("python3 x.py", "f.toml", KEY)
    assert info.value.key == KEY and "must be a table" in info.value.reason


def test_a_handler_that_cannot_start_is_a_configuration_error_not_retried_as_a_system_one(tmp_path):
    """`exec` from a home directory the daemon's user may not enter: `cannot run 'sh' in cwd …: Permission denied`
    was read as a system error by its words and retried for half an hour."""
    from pathlib import Path

    from failured.config import load_config

    spec = parse_handler({"kind": "command", "argv": ["sh", "-c", "true"], "cwd": str(tmp_path / "gone")},
                         "config/failured.toml", KEY)
    outcome = run_handler(spec, task())
    assert outcome.error.startswith("[CONFIG] cannot run 'sh' in cwd")
    classifier = load_config(Path(__file__).resolve().parent.parent / "config", model=False).classifier
    assert classifier.classify(outcome.error, outcome.error_type).category == "unrecoverable_config"
