"""The HTTP API under hostile connections: a connection cap, head and body deadlines, ambiguous framing.

Real servers on 127.0.0.1 and real sockets; the daemon test runs a real ``failured run``.
"""

import http.client
import json
import logging
import os
import select
import socket
import threading
import time

import pytest

from conftest import SMALL_PATTERNS, wait_for, write_config
from failured.api import ApiServer
from failured.backend import Backend
from failured.config import load_config
from failured.httplimits import Deadlines, connection_cap
from failured.settings import load_settings

TOKEN = "limits-token-0123456789"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


class HeldStatus(Backend):
    """/v1/status waits until the test lets it go: requests that keep their slot busy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def status(self):
        self.entered.release()
        self.release.wait(30)
        return super().status()


@pytest.fixture
def serve(tmp_path, store):
    snapshot = load_config(write_config(tmp_path / "config", SMALL_PATTERNS), "en")
    servers = []

    def start(max_connections=256, deadlines=Deadlines(), backend_class=Backend):
        backend = backend_class(store, load_settings({}), lambda: snapshot,
                                health=lambda: (True, {"intake": True}))
        server = ApiServer("127.0.0.1", 0, backend, token=TOKEN, max_connections=max_connections,
                           deadlines=deadlines).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if hasattr(server.backend, "release"):
            server.backend.release.set()
        server.stop()


def get(port, path, token=TOKEN, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        conn.close()


def exchange(port, data, timeout=10):
    """Send raw bytes; the status, headers and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.headers, json.loads(response.read())


def closed_by_server(sock, timeout):
    """True once the server has closed ``sock`` (end of file or reset), within ``timeout`` seconds."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return False
    try:
        while sock.recv(65536):
            pass  # an answer before the close is fine; keep reading to the end
    except ConnectionResetError:
        pass
    return True


def test_a_new_connection_beyond_the_cap_of_busy_ones_gets_503_at_once(serve):
    server = serve(max_connections=3, backend_class=HeldStatus)
    held = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        held.append(conn)
    for _ in range(3):
        assert server.backend.entered.acquire(timeout=10)  # every slot is serving a request now
    started = time.monotonic()
    status, headers, data = get(server.port, "/healthz", token=None)
    assert (status, data["error"], headers["Retry-After"]) == (503, "busy", "1")
    assert "FAILURE_HTTP_MAX_CONNECTIONS" in data["detail"]
    assert time.monotonic() - started < 5
    server.backend.release.set()
    assert [conn.getresponse().status for conn in held] == [200, 200, 200]
    # A client reads its answer a moment before the server's thread marks the connection idle (reclaimable):
    # a new connection may meet that moment and be refused once.
    assert wait_for(lambda: get(server.port, "/healthz", token=None)[0] == 200, 10)


def test_healthz_answers_while_300_idle_connections_are_open_and_the_server_keeps_at_most_its_cap(serve):
    server = serve(max_connections=8)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]
    try:
        status, _, data = get(server.port, "/healthz", token=None, timeout=10)
        assert (status, data["ok"]) == (200, True)
        assert len(server._server.slots) <= 8
        # The newest idle connections still work: a request on one is answered.
        idle[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(idle[-1])
        response.begin()
        assert response.status == 200
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("authorization", ["", "Authorization: Bearer wrong\r\n"])
def test_clients_without_the_token_that_never_send_their_body_cannot_hold_every_slot(serve, authorization):
    """An unauthorized request's body is never waited for: its 401 goes out at once, and the connection, answered,
    is one the cap may take back (300 such connections had kept /healthz answering 503 with no token at all)."""
    server = serve(max_connections=8)
    head = (f"POST /v1/failures HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Content-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n{{").encode()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(40)]
    try:
        for sock in held:
            sock.sendall(head)
        for sock in held[-8:]:  # the newest keep their slots until the cap takes them: each was answered 401
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 401
        status, _, data = get(server.port, "/healthz", token=None, timeout=10)
        assert (status, data["ok"]) == (200, True)
    finally:
        for sock in held:
            sock.close()


def test_a_head_sent_one_line_at_a_time_is_cut_off_at_the_head_deadline(serve):
    server = serve(deadlines=Deadlines(head=1.0))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        # One header line every 0.2 s: each alone would satisfy a per-read timeout forever.
        while not closed and time.monotonic() - started < 10:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = closed_by_server(sock, 0.2)
        assert closed
        assert time.monotonic() - started < 5
    assert get(server.port, "/healthz", token=None)[0] == 200


def test_a_connection_that_never_sends_is_closed_at_the_idle_deadline(serve):
    server = serve(deadlines=Deadlines(idle=0.5))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        assert closed_by_server(sock, 10)
        assert time.monotonic() - started < 5


def test_a_body_shorter_than_its_content_length_is_400_after_the_body_deadline_without_traceback(serve, caplog):
    server = serve(deadlines=Deadlines(body=0.5))
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="failured"):
        status, headers, data = exchange(server.port, (
            "POST /v1/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{AUTH}Content-Length: 100\r\n\r\n" + '{"task_type": "sync"').encode())
    assert (status, data["error"]) == (400, "bad_request")
    assert "did not arrive within 0.5 s" in data["detail"]
    assert headers["Connection"] == "close"
    assert time.monotonic() - started < 5
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_body_that_ends_early_is_400_at_once(serve):
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(("POST /v1/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"{AUTH}Content-Length: 100\r\n\r\n" + '{"task_type": "sync"').encode())
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = json.loads(response.read())
    assert response.status == 400 and "the body ended after 20 of 100 bytes" in data["detail"]


def test_two_different_content_lengths_are_400_and_close_the_connection(serve, store):
    server = serve()
    body = b'{"task_type": "sync", "error": "x"}'
    status, headers, data = exchange(server.port, (
        f"POST /v1/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{AUTH}"
        f"Content-Length: {len(body)}\r\nContent-Length: 5\r\n\r\n").encode() + body)
    assert (status, data["error"], headers["Connection"]) == (400, "bad_request", "close")
    assert "different Content-Length headers" in data["detail"]
    status, _, _ = exchange(server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                         "Content-Length: 1\r\n\r\n".encode())
    assert status == 400
    assert store.db.execute_sql("SELECT count(*) FROM tasks").fetchone()[0] == 0
    # The same length twice is one length (RFC 9112 allows it).
    status, _, _ = exchange(server.port, (
        f"POST /v1/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{AUTH}"
        f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    assert status == 201


@pytest.mark.parametrize("twice", ["Host: x\r\nHost: evil.example\r\n",
                                   f"Host: x\r\n{AUTH}Authorization: Bearer other\r\n",
                                   "Host: x\r\nOrigin: http://127.0.0.1\r\nOrigin: http://evil.example\r\n",
                                   "Host: x\r\nContent-Type: text/plain\r\n"])
def test_two_different_values_of_a_header_a_check_reads_are_400(serve, store, twice):
    """The first value had won silently: a check and a proxy in front of failured could read different ones."""
    server = serve()
    body = b'{"task_type": "sync", "error": "x"}'
    auth = "" if "Authorization" in twice else AUTH
    status, headers, data = exchange(server.port, (
        f"POST /v1/failures HTTP/1.1\r\n{twice}{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    assert (status, data["error"], headers["Connection"]) == (400, "bad_request", "close")
    assert "different" in data["detail"] and store.db.execute_sql("SELECT count(*) FROM tasks").fetchone()[0] == 0


@pytest.mark.parametrize("method, path, allow", [("TRACE", "/v1/failures", "POST"), ("TRACE", "/healthz", "GET"),
                                                 ("BREW", "/v1/status", "GET"), ("CONNECT", "/metrics", "GET"),
                                                 ("PROPFIND", "/v1/tasks/1", "GET")])
def test_trace_and_unknown_methods_are_405_with_allow(serve, method, path, allow):
    server = serve()
    status, headers, data = exchange(server.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())
    assert (status, data["error"], headers["Allow"]) == (405, "method_not_allowed", allow)


@pytest.mark.parametrize("wanted, limit, expected", [(256, 1024, 256), (256, 300, 150), (10, 8, 4), (5, 1, 1)])
def test_the_cap_stays_below_half_the_descriptor_limit(wanted, limit, expected):
    assert connection_cap(wanted, limit) == expected


@pytest.mark.sqlite_suffices("the HTTP server's connection cap")
def test_the_daemon_answers_healthz_and_decides_tasks_while_300_connections_are_open(daemon_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = daemon_factory(FAILURE_HTTP_ADDR=f"127.0.0.1:{port}", FAILURE_API_TOKEN=TOKEN,
                            FAILURE_HTTP_MAX_CONNECTIONS=16).start()
    baseline = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(300)]
    try:
        status, _, health = get(port, "/healthz", token=None)
        assert (status, health["ok"]) == (200, True) and all(health["loops"].values())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/failures", body=json.dumps({"task_type": "sync", "error": "validation failed"}),
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        task_id = json.loads(conn.getresponse().read())["task_id"]
        conn.close()
        daemon.wait_for("SELECT status FROM tasks WHERE id = ?", lambda rows: rows and rows[0][0] != "new", 15,
                        task_id)
        # The daemon holds at most its cap of connections (plus a few being closed), not 300.
        assert len(os.listdir(f"/proc/{daemon.proc.pid}/fd")) <= baseline + 16 + 8
    finally:
        for sock in idle:
            sock.close()
    assert daemon.proc.poll() is None
    assert "Too many open files" not in daemon.stderr()


def _post_failure(port, body, host="x", target="/v1/failures", version="HTTP/1.1"):
    body = body.encode() if isinstance(body, str) else body
    return exchange(port, (f"POST {target} {version}\r\nHost: {host}\r\nContent-Type: application/json\r\n{AUTH}"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body)


def test_a_key_given_twice_is_400_naming_it(serve, store):
    status, _, data = _post_failure(serve().port, '{"task_type": "a", "task_type": "b", "error": "x"}')
    assert (status, data["error"]) == (400, "bad_request") and "key 'task_type' is given twice" in data["detail"]
    assert store.db.execute_sql("SELECT count(*) FROM tasks").fetchone()[0] == 0


def test_a_lone_surrogate_in_the_error_is_stored_as_a_replacement_character_and_in_a_payload_refused(serve, store):
    server = serve()
    status, _, data = _post_failure(server.port, '{"task_type": "js\\ud800", "error": "x\\udc00y", "ref": "r\\ud83d"}')
    assert status == 201, data
    assert store.db.execute_sql("SELECT task_type, error_message, ref FROM tasks").fetchall() == [
        ("js\ufffd", "x\ufffdy", "r\ufffd")]
    status, _, data = _post_failure(server.port, '{"task_type": "js", "error": "x", "payload": {"a": "\\ud800"}}')
    assert status == 400 and "lone surrogate" in data["detail"]


@pytest.mark.parametrize("request_line", ["GET /healthz\r\n\r\n", "GET /healthz HTTP/0.9\r\n\r\n",
                                          "POST /v1/failures HTTP/0.9\r\nContent-Length: 2\r\n\r\n{}",
                                          "GET /healthz HTTP/2.0\r\n\r\n"])
def test_a_version_before_http_1_0_or_after_1_1_gets_a_505_with_a_status_line(serve, store, request_line):
    status, _, data = exchange(serve().port, request_line.encode())
    assert status == 505 and data["error"] == "http_version_not_supported"
    assert store.db.execute_sql("SELECT count(*) FROM tasks").fetchone()[0] == 0


def test_a_number_too_long_to_read_is_refused_in_json_s_words(serve, store):
    status, _, data = _post_failure(serve().port, '{"task_type": "a", "error": "x", "payload": {"n": ' + "9" * 5000 + "}}")
    assert status == 400 and "a number of 5,000 digits is too long: send it as a string" in data["detail"]
    assert "sys." not in data["detail"]
