"""The HTTP API: in-process over a real store, then end to end against a real daemon subprocess.

Every JSON answer any test receives is validated against failured/openapi.json, so the document stays true.
"""

import http.client
import json
import os
import logging
import re
import socket
import time
from dataclasses import fields as dataclass_fields
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from test_store_postgres import pg_unavailable, pg_url  # noqa: F401 (fixtures)
from conftest import SMALL_PATTERNS, STORES, DaemonProcess, daemon_env, store_location, write_config
from failured.api import MAX_BODY_BYTES, ApiServer, check_exposure, parse_address
from failured.backend import Backend
from failured.clock import SystemClock
from failured.config import load_config
from failured.errors import FailuredError, InputError
from failured.metrics import Metrics
from failured.settings import Settings, load_settings

TOKEN = "test-token-0123456789abcdef"
HANDLERS = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\ntimeout = 10\n'
JSON = {"Content-Type": "application/json"}

SPEC = json.loads(resources.files("failured").joinpath("openapi.json").read_text(encoding="utf-8"))
_SPEC_URI = "urn:failured:openapi"
_REGISTRY = Registry().with_resource(_SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012))
_TEMPLATES = [(re.compile("^" + re.sub(r"\{\w+\}", r"\\d+", template) + "$"), template) for template in SPEC["paths"]]


def _pointer(*parts):
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def validator(pointer):
    return Draft202012Validator({"$ref": f"{_SPEC_URI}#/{pointer}"}, registry=_REGISTRY)


def check_against_openapi(method, path, status, content_type, data):
    """The answer is one the document describes: documented status, and a body matching its schema."""
    template = next((t for pattern, t in _TEMPLATES if pattern.match(path.split("?")[0])), None)
    operation = SPEC["paths"].get(template, {}).get(method.lower())
    if operation is None:  # unknown path or method: the generic error shape
        assert status in (401, 404, 405, 501), (method, path, status)
        validator(_pointer("components", "schemas", "Error")).validate(data)
        return
    assert str(status) in operation["responses"], f"{method} {template} answered {status}, not documented"
    content = operation["responses"][str(status)]["content"]
    if "application/json" in content:
        assert content_type == "application/json"
        validator(_pointer("paths", template, method.lower(), "responses", status, "content",
                           "application/json", "schema")).validate(data)
    else:
        assert content_type.startswith("text/plain")


class Answer:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, headers, raw
        is_json = headers.get("Content-Type", "").startswith("application/json")
        self.data = json.loads(raw) if is_json and raw else None

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


class Client:
    """One keep-alive connection to the API; every answer is checked against the OpenAPI document."""

    def __init__(self, port, token=TOKEN):
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method, path, body=None, token=None, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        all_headers = dict(JSON if body is not None else {})
        token = self.token if token is None else token
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        self.conn.request(method, path, body=body, headers={k: v for k, v in all_headers.items() if v is not None})
        response = self.conn.getresponse()
        answer = Answer(response.status, response.headers, response.read())
        if response.will_close:
            self.conn.close()
        check_against_openapi(method, path, answer.status, answer.headers.get("Content-Type", ""), answer.data)
        return answer

    def report(self, task_type="sync", error="connection timeout", **extra):
        return self.call("POST", "/v1/failures", {"task_type": task_type, "error": error, **extra})

    def close(self):
        self.conn.close()


def raw_exchange(port, data, read_timeout=5):
    """Send bytes as they are; return the status and the JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.headers, json.loads(response.read())


def count_tasks(daemon):
    return daemon.query("SELECT count(*) FROM tasks")[0][0]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- in process: the real Backend over a real store --------------------------------------------

class Harness:
    def __init__(self, store, snapshot):
        self.store, self.snapshot = store, snapshot
        self.wakes = 0
        self.loops = {"intake": True, "retry-timer": True, "dispatcher": True, "config-watcher": True}
        self.metrics = Metrics()
        self.metrics.bind(store, lambda: 0, SystemClock())
        self.servers = []

    def wake(self):
        self.wakes += 1

    def backend(self, backend_class=Backend):
        return backend_class(self.store, load_settings({}), lambda: self.snapshot, wake=self.wake,
                             health=lambda: (all(self.loops.values()), dict(self.loops)),
                             metrics_registry=self.metrics)

    def serve(self, token=TOKEN, backend_class=Backend):
        server = ApiServer("127.0.0.1", 0, self.backend(backend_class), token=token).start()
        self.servers.append(server)
        return server

    def tasks(self):
        return self.store.scalar("SELECT count(*) FROM tasks")


@pytest.fixture
def harness(tmp_path, store):
    snapshot = load_config(write_config(tmp_path / "config", SMALL_PATTERNS, HANDLERS), "en")
    harness = Harness(store, snapshot)
    yield harness
    for server in harness.servers:
        server.stop()


@pytest.fixture
def client(harness):
    client = Client(harness.serve().port)
    yield client
    client.close()


def test_posted_failure_is_stored_classified_and_wakes_the_daemon(client, harness):
    answer = client.report("sync", "connection timeout after 10s", error_type="ConnectTimeout",
                           payload={"order_id": 42}, ref="order-42")
    assert answer.status == 201
    assert answer.data["status"] == "new"
    assert answer.data["classification"]["category"] == "recoverable_network"
    assert harness.wakes == 1
    task = client.call("GET", f"/v1/tasks/{answer.data['task_id']}").data
    assert (task["source"], task["payload"], task["ref"], task["error_type"]) == (
        "http", {"order_id": 42}, "order-42", "ConnectTimeout")
    assert [e["event"] for e in task["events"]] == ["reported"]


def test_optional_fields_may_be_null_or_absent(client):
    answer = client.call("POST", "/v1/failures", {"task_type": "sync", "error": "", "payload": None, "ref": None})
    assert answer.status == 201
    assert answer.data["classification"]["category"] == "unknown"


def test_charset_utf8_is_accepted(client):
    body = json.dumps({"task_type": "同步", "error": "连接超时"}, ensure_ascii=False).encode()
    answer = client.call("POST", "/v1/failures", body, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert answer.status == 201
    assert answer.data["classification"]["category"] == "recoverable_network"


def test_successes_are_counted(client, harness):
    assert client.call("POST", "/v1/successes", {"task_type": "sync", "count": 5}).data == {
        "task_type": "sync", "count": 5}
    assert client.call("POST", "/v1/successes", {"task_type": "sync"}).data["count"] == 1
    assert harness.store.db.execute_sql("SELECT sum(count) FROM success_counts").fetchone()[0] == 6


def test_recover_follows_the_cli_rules(client):
    task_id = client.report().data["task_id"]
    refused = client.call("POST", f"/v1/tasks/{task_id}/recover", {})
    assert refused.status == 409
    assert refused.data == {"error": "conflict",
                            "detail": f"task {task_id} has not been classified yet: the daemon acts on it within a second"}
    forced = client.call("POST", f"/v1/tasks/{task_id}/recover", {"force": True})
    assert forced.status == 200
    assert (forced.data["task_id"], forced.data["status"]) == (task_id, "scheduled")
    # A scheduled task may be retried now without force, and the body is optional.
    assert client.call("POST", f"/v1/tasks/{task_id}/recover").status == 200


def test_recover_without_a_handler_is_refused_even_with_force(client):
    task_id = client.report("no_handler_type").data["task_id"]
    answer = client.call("POST", f"/v1/tasks/{task_id}/recover", {"force": True})
    assert answer.status == 409
    assert "has no handler" in answer.data["detail"]


@pytest.mark.parametrize("method, path", [("GET", "/v1/tasks/999"), ("POST", "/v1/tasks/999/recover"),
                                          ("GET", "/v1/tasks/abc"), ("GET", "/v1/tasks/-1"),
                                          ("GET", "/v1/tasks/99999999999999999999999"), ("GET", "/v1/nothing"),
                                          ("GET", "/v1/tasks/1/"), ("GET", "/ui.php")])
def test_unknown_tasks_and_paths_are_404(client, method, path):
    answer = client.call(method, path)
    assert answer.status == 404
    assert answer.data["error"] == "not_found"


def test_the_daemon_s_root_sends_a_browser_to_the_console(client):
    client.conn.request("GET", "/")
    response = client.conn.getresponse()
    response.read()
    assert response.status == 302 and response.headers["Location"] == "/ui/"


def test_keep_alive_clients_hold_a_few_database_sessions_not_one_each(tmp_path, pg_url):  # noqa: F811 (fixture)
    """A PostgreSQL session is the server's (max_connections): keep-alive clients between their requests
    hold at most SESSION_KEEPERS (8) of them (60 clients held 60 sessions, and reporters were refused)."""
    import psycopg

    from failured.api import SESSION_KEEPERS
    from failured.store import open_store

    store = open_store(pg_url)
    harness = Harness(store, load_config(write_config(tmp_path / "config", SMALL_PATTERNS, HANDLERS), "en"))
    clients = []
    try:
        port = harness.serve().port
        clients = [Client(port) for _ in range(SESSION_KEEPERS + 6)]
        for _ in range(2):
            assert all(c.call("GET", "/v1/tasks?limit=1").status == 200 for c in clients)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            sessions = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (f"failured:{os.getpid()}",)).fetchone()[0]
        assert sessions <= SESSION_KEEPERS + 1  # the test's own, and those the keepers hold
    finally:
        for c in clients:
            c.close()
        for server in harness.servers:
            server.stop()
        store.close()


def test_status_is_the_cli_status(client, harness):
    from failured import status

    client.report()
    answer = client.call("GET", "/v1/status")
    expected = json.loads(json.dumps(status.collect(harness.store, harness.snapshot, SystemClock().now()), default=str))
    assert answer.status == 200
    assert answer.data["tasks"] == expected["tasks"] == {"total": 1, "by_status": {"new": {"-": 1}}}
    assert set(answer.data) == set(expected)


def test_healthz_is_200_when_every_loop_lives_and_503_naming_the_dead(harness):
    client = Client(harness.serve().port, token="")
    assert client.call("GET", "/healthz").data == {"ok": True, "loops": harness.loops}
    harness.loops["dispatcher"] = False
    answer = client.call("GET", "/healthz")
    assert answer.status == 503
    assert answer.data["detail"] == "not alive: dispatcher"
    assert answer.data["error"] == "unhealthy"


def test_metrics_are_prometheus_text_and_need_no_token(harness):
    client = Client(harness.serve().port, token="")
    answer = client.call("GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert b"failured_retry_queue_depth" in answer.raw


def test_openapi_document_is_served(client):
    answer = client.call("GET", "/v1/openapi.json")
    assert answer.data == SPEC


def test_every_v1_path_needs_the_token(harness):
    client = Client(harness.serve().port, token="")
    for method, path in [("POST", "/v1/failures"), ("POST", "/v1/successes"), ("GET", "/v1/tasks/1"),
                         ("POST", "/v1/tasks/1/recover"), ("GET", "/v1/status"), ("GET", "/v1/openapi.json"),
                         ("GET", "/v1/nothing")]:
        answer = client.call(method, path)
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert answer.data["error"] == "unauthorized"
    assert harness.tasks() == 0


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}",
                                           TOKEN, "Bearer ", "Bearer \u00e9"])
def test_wrong_tokens_are_401(harness, authorization):
    client = Client(harness.serve().port, token="")
    answer = client.call("POST", "/v1/failures", {"task_type": "sync", "error": "x"},
                         headers={"Authorization": authorization.encode("utf-8").decode("latin-1")})
    assert answer.status == 401
    assert answer.data == {"error": "unauthorized", "detail": "wrong token"}
    assert harness.tasks() == 0


def test_scheme_is_case_insensitive_and_a_non_ascii_token_works(harness):
    token = "jeton-clé-✓"
    client = Client(harness.serve(token=token).port, token="")
    header = f"bearer {token}".encode("utf-8").decode("latin-1")  # http.client sends latin-1 text as its bytes
    answer = client.call("GET", "/v1/status", headers={"Authorization": header})
    assert answer.status == 200


def test_without_a_token_v1_is_open(harness):
    client = Client(harness.serve(token=None).port, token="")
    assert client.report().status == 201


def _every_operation():
    """(method, path) of each operation the document describes, with task id 1 in its path."""
    return [(method.upper(), template.replace("{task_id}", "1"))
            for template, operations in SPEC["paths"].items() for method in operations]


def test_without_a_token_a_rebound_host_or_a_foreign_origin_is_refused_as_documented(harness):
    client = Client(harness.serve(token=None).port, token="")
    for method, path in _every_operation():  # each answer is checked against the document (Client.call)
        body = {} if method == "POST" else None
        answer = client.call(method, path, body, headers={"Host": "attacker.example:8649"})
        assert (answer.status, answer.data["error"]) == (421, "misdirected_request"), (method, path)
        if path.startswith("/v1/"):
            answer = client.call(method, path, body, headers={"Origin": "http://attacker.example"})
            assert (answer.status, answer.data["error"]) == (403, "forbidden"), (method, path)
    task_id = client.report().data["task_id"]
    form = client.call("POST", f"/v1/tasks/{task_id}/recover", b"",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (form.status, form.data["error"]) == (415, "unsupported_media_type")
    assert harness.tasks() == 1


def test_without_a_token_a_request_target_naming_another_host_is_refused_whatever_host_says(harness):
    import socket

    port = harness.serve(token=None).port
    body = b'{"task_type": "sync", "error": "x"}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"POST http://attacker.example/v1/failures HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 421 and b"attacker.example" in response.read()
    assert harness.tasks() == 0


@pytest.mark.parametrize("task_type, accepted", [
    ("sync", True), (" \t sync \n", True), ("\u2028sync\u2029", True), ("sy nc", True), ("sy\u00a0nc", True),
    ("sy\x00nc", False),  # a C0 control: stored as sy\ufffdnc it was a type no handler's name matched
    ("sy\x1b[2Jnc", False), ("sy\nnc", False), ("sy\tnc", False), ("sy\x85nc", False), ("sy\x9bnc", False),
    ("sy\u2028nc", False), ("sy\u202enc", False), ("sy\u2066nc", False), ("sy\x7fnc", False), (" \n ", False),
])
def test_a_task_type_with_a_control_character_inside_is_refused_as_the_document_says(client, harness, task_type,
                                                                                     accepted):
    failure = {"task_type": task_type, "error": "connection timeout"}
    success = {"task_type": task_type, "count": 1}
    assert acceptable_report(failure) is accepted
    assert validator(_pointer("components", "schemas", "SuccessReport")).is_valid(success) is accepted
    assert client.call("POST", "/v1/failures", failure).status == (201 if accepted else 400)
    assert client.call("POST", "/v1/successes", success).status == (200 if accepted else 400)
    assert harness.tasks() == (1 if accepted else 0)


def test_wrong_method_is_405_with_allow(client):
    for method, path, allow in [("GET", "/v1/failures", "POST"), ("DELETE", "/v1/tasks/1", "GET"),
                                ("PUT", "/v1/successes", "POST"), ("GET", "/v1/tasks/1/recover", "POST"),
                                ("POST", "/healthz", "GET"), ("POST", "/v1/status", "GET")]:
        answer = client.call(method, path, {} if method in ("POST", "PUT") else None)
        assert answer.status == 405, (method, path)
        assert answer.headers["Allow"] == allow
        assert answer.data["error"] == "method_not_allowed"


BAD_BODIES = [
    # (body bytes, field named or None, words in the detail)
    (b"{not json", None, "not valid JSON"),
    (b"", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object, not an array"),
    (b'"text"', None, "not a string"),
    (b"null", None, "not null"),
    (b'{"error": "x"}', "task_type", "field 'task_type' is required"),
    (b'{"task_type": "sync"}', "error", "field 'error' is required"),
    (b'{"task_type": "  ", "error": "x"}', "task_type", "must not be empty"),
    (b'{"task_type": 7, "error": "x"}', "task_type", "field 'task_type' must be a string, not a number"),
    (b'{"task_type": "sync", "error": ["x"]}', "error", "field 'error' must be a string, not an array"),
    (b'{"task_type": "sync", "error": "x", "payload": [1]}', "payload", "field 'payload' must be an object, not an array"),
    (b'{"task_type": "sync", "error": "x", "payload": "{}"}', "payload", "field 'payload' must be an object"),
    (b'{"task_type": "sync", "error": "x", "error_type": 1}', "error_type", "must be a string"),
    (b'{"task_type": "sync", "error": "x", "ref": true}', "ref", "must be a string, not a boolean"),
    (b'{"task_type": "sync", "error": "x", "payload_json": {}}', "payload_json", "unknown field 'payload_json'"),
    (b'{"task_type": "sync", "error": "x", "a": 1, "b": 2}', "a", "unknown fields 'a', 'b'"),
    (b'{"task_type": "sync", "error": "x", "payload": {"v": NaN}}', None, "NaN is not valid JSON"),
    (b'{"task_type": "sync", "error": "x", "payload": {"v": 1e999}}', None, "too large"),
    (b'{"task_type": "sync", "error": "\xff"}', None, "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    (("x" * 201).join([b'{"task_type": "'.decode(), '", "error": "x"}']).encode(), "task_type", "at most 200"),
    (json.dumps({"task_type": "\u00a0" + "x" * 200, "error": "x"}).encode(), "task_type", "at most 200"),
    (json.dumps({"task_type": "\u3000\u2029\x1c", "error": "x"}).encode(), "task_type", "must not be empty"),
]


@pytest.mark.parametrize("body, field, words", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_failure_bodies_are_400_naming_the_problem(client, harness, body, field, words):
    answer = client.call("POST", "/v1/failures", body)
    assert answer.status == 400
    assert answer.data["error"] == "bad_request"
    assert words in answer.data["detail"]
    assert answer.data.get("field") == field
    assert harness.tasks() == 0


@pytest.mark.parametrize("path, body, words", [
    ("/v1/successes", {"task_type": "sync", "count": 0}, "field 'count' must be from 1"),
    ("/v1/successes", {"task_type": "sync", "count": 10**12}, "field 'count' must be from 1"),
    ("/v1/successes", {"task_type": "sync", "count": "3"}, "must be a whole number, not a string"),
    ("/v1/successes", {"task_type": "sync", "count": True}, "must be a whole number, not a boolean"),
    ("/v1/successes", {"task_type": "sync", "count": 1.5}, "must be a whole number, not a number"),
    ("/v1/successes", {"task_type": "sync", "n": 1}, "unknown field 'n'"),
    ("/v1/tasks/1/recover", {"force": "yes"}, "field 'force' must be true or false"),
    ("/v1/tasks/1/recover", {"forced": True}, "unknown field 'forced'"),
    ("/v1/tasks/1/recover", [True], "must be a JSON object"),
])
def test_bad_success_and_recover_bodies_are_400(client, path, body, words):
    answer = client.call("POST", path, body)
    assert answer.status == 400
    assert words in answer.data["detail"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1", "application/jsonx"])
def test_bodies_that_are_not_json_are_415(client, harness, content_type):
    answer = client.call("POST", "/v1/failures", b'{"task_type": "sync", "error": "x"}',
                         headers={"Content-Type": content_type})
    assert answer.status == 415
    assert answer.data["error"] == "unsupported_media_type"
    assert harness.tasks() == 0


def test_oversized_body_is_refused_before_it_is_read(client, harness):
    # Only the headers are sent: had the server waited for the body, this would time out.
    started = time.monotonic()
    status, headers, data = raw_exchange(client.port, (
        "POST /v1/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode())
    assert status == 413
    assert data["error"] == "payload_too_large"
    assert headers["Connection"] == "close"
    assert time.monotonic() - started < 3


def test_oversized_body_sent_in_full_gets_413_and_nothing_is_stored(client, harness):
    body = b'{"task_type": "sync", "error": "' + b"x" * MAX_BODY_BYTES + b'"}'
    answer = client.call("POST", "/v1/failures", body)
    assert answer.status == 413
    assert harness.tasks() == 0
    # Exactly 1 MiB is accepted (error text over 64 KiB is cut, not refused).
    body = b'{"task_type": "sync", "error": "' + b"x" * (MAX_BODY_BYTES - 34) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    assert client.call("POST", "/v1/failures", body).status == 201


def test_missing_or_chunked_length_is_411(client):
    for extra in ("", "Transfer-Encoding: chunked\r\n"):
        status, _, data = raw_exchange(client.port, (
            f"POST /v1/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
        assert (status, data["error"]) == (411, "length_required")


def test_errors_keep_the_connection_alive(client, harness):
    assert client.call("POST", "/v1/failures", b"[]").status == 400
    assert client.call("GET", "/v1/nothing").status == 404
    assert client.call("POST", "/v1/failures", b"{}", headers={"Content-Type": "text/plain"}).status == 415
    assert client.call("GET", "/v1/status", token="wrong").status == 401  # no body to wait for
    sock = client.conn.sock
    assert client.report().status == 201
    assert client.conn.sock is sock  # same connection all along


def test_an_unauthorized_request_with_a_body_is_answered_and_its_connection_closed(client):
    """Its body is never waited for (a client without the token could hold a slot for the body's deadline)."""
    response = client.call("POST", "/v1/failures", {"x": 1}, token="wrong")
    assert (response.status, response.headers["Connection"]) == (401, "close")


def test_garbage_requests_get_json_errors(client):
    with socket.create_connection(("127.0.0.1", client.port), timeout=5) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")  # not even HTTP/1.x: answered in HTTP/1.0, status line and all
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400 and json.loads(response.read())["error"] == "bad_request"
    status, _, data = raw_exchange(client.port, b"GET /v1/status HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")
    assert status == 431 and set(data) == {"error", "detail"}
    status, headers, data = raw_exchange(client.port, b"BREW /v1/failures HTTP/1.1\r\nHost: x\r\n"
                                         b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    assert (status, data["error"], headers["Allow"]) == (405, "method_not_allowed", "POST")


def test_a_query_sent_as_raw_utf8_is_read_as_utf8_in_errors(client):
    """http.server reads the request line as Latin-1: the error named "Ã©" for "é"."""
    status, _, data = raw_exchange(client.port, "GET /v1/tasks?status=café HTTP/1.1\r\nHost: x\r\n"
                                   f"Authorization: Bearer {TOKEN}\r\n\r\n".encode("utf-8"))
    assert status == 400 and "café" in data["detail"], data


def test_an_unexpected_backend_error_is_500_logged_and_the_server_goes_on(harness, caplog):
    class BrokenStatus(Backend):
        def status(self):
            raise RuntimeError("disk on fire")

    client = Client(harness.serve(backend_class=BrokenStatus).port)
    with caplog.at_level(logging.ERROR, logger="failured.api"):
        answer = client.call("GET", "/v1/status")
    assert answer.status == 500
    assert answer.data == {"error": "internal", "detail": "see the daemon log"}
    assert "disk on fire" in caplog.text
    assert client.report().status == 201


def test_access_log_is_debug_only_and_never_shows_the_token(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="failured.api"):
        client.report()
        client.call("GET", "/v1/status", token="a-wrong-secret")
    lines = [r for r in caplog.records if r.name == "failured.api"]
    assert len(lines) == 2 and all(r.levelno == logging.DEBUG for r in lines)
    assert "POST /v1/failures" in lines[0].getMessage() and "201" in lines[0].getMessage()
    assert TOKEN not in caplog.text and "a-wrong-secret" not in caplog.text


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8649", ("127.0.0.1", 8649)), ("[::1]:8649", ("::1", 8649)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    (":8649", ("", 8649)), ("localhost:1", ("localhost", 1)), (" 10.0.0.5:65535 ", ("10.0.0.5", 65535)),
    ("off", None), ("OFF", None), ("", None),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, words", [
    ("x:y", "the port must be a number from 1 to 65535"), ("127.0.0.1:0", "from 1 to 65535"),
    ("127.0.0.1:65536", "from 1 to 65535"), ("127.0.0.1", "not host:port"), ("::1:8649", "not host:port"),
    ("[nothost]:80", "not an IPv6 address"), ("bad host:80", "not a host name"), ("127.0.0.1:８０", "from 1 to"),
])
def test_parse_address_refuses_bad_values_clearly(text, words):
    with pytest.raises(InputError, match=re.escape(words)) as raised:
        parse_address(text)
    assert str(raised.value).startswith(f"FAILURE_HTTP_ADDR={text!r}")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "::ffff:127.0.0.1"])
def test_loopback_needs_no_token(host):
    check_exposure(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.5", "example.com"])
def test_other_addresses_need_a_token(host):
    check_exposure(host, TOKEN)
    with pytest.raises(InputError, match="is not loopback and FAILURE_API_TOKEN is not set: set a token"):
        check_exposure(host, None, 8649)
    with pytest.raises(InputError, match="FAILURE_API_TOKEN has 15 characters: a token that guards a network "
                                         "address needs at least 16"):
        check_exposure(host, "x" * 15, 8649)
    check_exposure(host, "x" * 16)


def test_a_short_token_is_fine_on_loopback():
    check_exposure("127.0.0.1", "abc")


def test_a_taken_port_is_a_clear_error(harness):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FailuredError, match=f"cannot listen on 127.0.0.1:{port} .FAILURE_HTTP_ADDR.: "
                                                "Address already in use"):
            ApiServer("127.0.0.1", port, harness.backend()).start()


def test_ipv6_loopback_is_served(harness):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = ApiServer("::1", 0, harness.backend(), token=None).start()
    harness.servers.append(server)
    conn = http.client.HTTPConnection("::1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200


# -- end to end: a real daemon subprocess ----------------------------------------------------

wired = pytest.mark.skipif("http_addr" not in {f.name for f in dataclass_fields(Settings)},
                           reason="the daemon does not know FAILURE_HTTP_ADDR yet")


@pytest.fixture(scope="module", params=STORES)
def daemon(request, tmp_path_factory):
    """One daemon for the module on each store; FAILURE_POLL_SECONDS=30 so only a wake-up can explain a quick
    reaction."""
    if "http_addr" not in {f.name for f in dataclass_fields(Settings)}:
        pytest.skip("the daemon does not know FAILURE_HTTP_ADDR yet")
    workdir = tmp_path_factory.mktemp("api-daemon")
    config = write_config(workdir / "config", SMALL_PATTERNS, HANDLERS)
    port = free_port()
    with store_location(request.param, workdir) as db:
        process = DaemonProcess(workdir, daemon_env(workdir, db, config, FAILURE_POLL_SECONDS=30,
                                                    FAILURE_HTTP_ADDR=f"127.0.0.1:{port}",
                                                    FAILURE_API_TOKEN=TOKEN)).start()
        process.port = port
        yield process
        process.close()


@pytest.fixture
def remote(daemon):
    client = Client(daemon.port)
    yield client
    client.close()
    assert daemon.proc.poll() is None, daemon.stderr()


def wait_status(client, task_id, predicate, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.call("GET", f"/v1/tasks/{task_id}").data
        if predicate(task["status"]):
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} still {task['status']}")


@wired
def test_daemon_acts_on_a_posted_failure_at_once(remote):
    started = time.monotonic()
    task_id = remote.report("sync", "validation failed: bad id").data["task_id"]
    task = wait_status(remote, task_id, lambda s: s != "new", timeout=5)
    assert time.monotonic() - started < 5  # the poll interval is 30 s: only the API's wake-up explains this
    assert task["status"] == "notified"
    assert task["category"] == "unrecoverable_data"


@wired
def test_daemon_recovers_on_request_with_the_cli_rules(remote):
    task_id = remote.report("sync", "validation failed: bad id").data["task_id"]
    wait_status(remote, task_id, lambda s: s == "notified")
    refused = remote.call("POST", f"/v1/tasks/{task_id}/recover", {"force": False})
    assert refused.status == 409
    assert "unrecoverable error (unrecoverable_data)" in refused.data["detail"]
    assert remote.call("POST", f"/v1/tasks/{task_id}/recover", {"force": True}).status == 200
    task = wait_status(remote, task_id, lambda s: s == "recovered")  # the handler is `true`
    assert [e["event"] for e in task["events"]][-1] != "reported"


@wired
def test_daemon_serves_successes_status_health_metrics_and_openapi(remote, daemon):
    assert remote.call("POST", "/v1/successes", {"task_type": "sync", "count": 2}).status == 200
    status = remote.call("GET", "/v1/status").data
    assert status["daemon"]["alive"] is True
    cli = json.loads(daemon.cli("status", "--json").stdout)
    assert status["tasks"] == cli["tasks"] and set(status) == set(cli)
    health = remote.call("GET", "/healthz")
    assert (health.status, health.data["ok"]) == (200, True)
    assert set(health.data["loops"]) >= {"intake", "retry-timer", "dispatcher", "config-watcher"}
    metrics = remote.call("GET", "/metrics", token="")
    assert metrics.status == 200 and b"failured_failures_total" in metrics.raw
    assert remote.call("GET", "/v1/openapi.json").data == SPEC


@wired
def test_daemon_error_answers(remote, daemon):
    before = count_tasks(daemon)
    cases = [
        (remote.call("POST", "/v1/failures", b'{"task_type": "sync", "error": "' + b"x" * MAX_BODY_BYTES + b'"}'),
         413, "payload_too_large"),
        (remote.call("POST", "/v1/failures", b"{}", headers={"Content-Type": "text/plain"}), 415,
         "unsupported_media_type"),
        (remote.call("POST", "/v1/failures", b"{oops"), 400, "bad_request"),
        (remote.call("POST", "/v1/failures", b"[]"), 400, "bad_request"),
        (remote.call("POST", "/v1/failures", {"error": "x"}), 400, "bad_request"),
        (remote.call("POST", "/v1/failures", {"task_type": "sync", "error": "x", "payload": 3}), 400, "bad_request"),
        (remote.call("POST", "/v1/failures", {"task_type": "sync", "error": "x", "pay_load": {}}), 400,
         "bad_request"),
        (remote.call("GET", "/v1/tasks/987654"), 404, "not_found"),
        (remote.call("POST", "/v1/tasks/987654/recover"), 404, "not_found"),
        (remote.call("GET", "/v1/failures"), 405, "method_not_allowed"),
        (remote.call("POST", "/v1/failures", {"task_type": "sync", "error": "x"}, token=""), 401, "unauthorized"),
        (remote.call("POST", "/v1/failures", {"task_type": "sync", "error": "x"}, token="nope"), 401,
         "unauthorized"),
    ]
    assert [(a.status, a.data["error"]) for a, _, _ in cases] == [(s, e) for _, s, e in cases]
    assert count_tasks(daemon) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
# Near misses: the real field names with values of any type, some fields missing, sometimes one extra.
near_misses = st.dictionaries(
    st.sampled_from(["task_type", "error", "error_type", "payload", "ref", "Task_Type", "count", ""]),
    st.text(max_size=20) | json_values, max_size=6)
# Reports with the required fields, and optional ones of any type: some valid, most not.
reports = st.fixed_dictionaries({"task_type": st.text(max_size=20), "error": st.text(max_size=20)}, optional={
    name: st.text(max_size=20) | json_values for name in ("error_type", "payload", "ref", "refs")})
_REPORT_SCHEMA = validator(_pointer("components", "schemas", "FailureReport"))


def acceptable_report(value):
    return _REPORT_SCHEMA.is_valid(value)  # the document alone says what is accepted


@wired
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | near_misses | reports)
def test_fuzz_json_bodies_are_4xx_and_store_nothing(remote, daemon, body):
    before = count_tasks(daemon)
    answer = remote.call("POST", "/v1/failures", json.dumps(body).encode())
    event(f"answered {answer.status}")
    if acceptable_report(body):  # what the document allows is accepted, and nothing else
        assert answer.status == 201, answer
        assert count_tasks(daemon) == before + 1
    else:
        assert answer.status == 400, (body, answer)
        assert count_tasks(daemon) == before
    assert daemon.proc.poll() is None


@wired
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_fuzz_byte_bodies_are_4xx_and_store_nothing(remote, daemon, body, content_type):
    before = count_tasks(daemon)
    answer = remote.call("POST", "/v1/failures", body, headers={"Content-Type": content_type})
    assert 400 <= answer.status < 500, answer
    assert count_tasks(daemon) == before
    assert remote.call("GET", "/healthz").status == 200


@wired
@pytest.mark.sqlite_suffices("refused before the store is opened")
@pytest.mark.parametrize("address, error", [("0.0.0.0:{port}", "is not loopback and FAILURE_API_TOKEN is not set"),
                                            ("bogus", "'bogus' is not host:port"),
                                            ("127.0.0.1:99999", "the port must be a number from 1 to 65535")])
def test_daemon_refuses_a_bad_or_public_address_before_it_creates_anything(daemon_factory, address, error):
    daemon = daemon_factory(FAILURE_HTTP_ADDR=address.format(port=free_port()))
    result = daemon.cli("run", timeout=30)
    assert result.returncode == 2
    assert error in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not Path(daemon.db).exists()  # a failed start leaves nothing behind


@wired
@pytest.mark.sqlite_suffices("the HTTP server's start")
def test_daemon_exits_clearly_when_its_port_is_taken(daemon_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = daemon_factory(FAILURE_HTTP_ADDR=f"127.0.0.1:{port}")
        result = daemon.cli("run", timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (FAILURE_HTTP_ADDR): Address already in use" in result.stderr
    assert not Path(daemon.db).exists()  # found before anything is created (the database had been, and its lock)


@wired
@pytest.mark.sqlite_suffices("the HTTP server's start (reports through the API are test_api's module daemon's)")
def test_daemon_without_a_token_serves_loopback_and_says_so(daemon_factory):
    port = free_port()
    daemon = daemon_factory(FAILURE_HTTP_ADDR=f"127.0.0.1:{port}").start()
    assert Client(port, token="").report().status == 201
    assert "no FAILURE_API_TOKEN" in daemon.stderr()


@wired
@pytest.mark.sqlite_suffices("the HTTP server's start")
def test_daemon_with_http_off_starts_no_server(daemon_factory):
    daemon = daemon_factory(FAILURE_HTTP_ADDR="off").start()
    daemon.stop()
    assert "HTTP API" not in daemon.stderr()


def test_a_celery_report_of_chinese_arguments_within_the_limit_is_taken_not_refused_as_too_large(harness):
    """The integration's HTTP target sends UTF-8 as itself: escaped, 600 KB of Chinese is 1.2 MB and was a 413."""
    from failured.integrations.targets import HttpTarget

    note = "订单备注" * 50_000  # 600,000 bytes as UTF-8
    server = harness.serve()
    target = HttpTarget(f"http://127.0.0.1:{server.port}", token=TOKEN, timeout=30)
    record = {"kind": "failure", "task_type": "shop.sync", "error": "ConnectionError: 连接超时", "ref": "c-1",
              "payload": {"args": [note], "kwargs": {}, "celery_task_id": "c-1", "queue": "celery"}}
    assert len(json.dumps(record["payload"]).encode()) > MAX_BODY_BYTES  # as it was sent before
    task_id = target.send(record)
    assert json.loads(harness.store.scalar("SELECT payload FROM tasks WHERE id = ?", task_id))["args"] == [note]
