"""A hostile reporter against a real ``failured run``: pathological, deeply nested, NUL-filled, non-UTF-8 and
secret-bearing error texts posted concurrently with normal reports. Normal work must not wait for them.
"""

import http.client
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from conftest import SMALL_PATTERNS, STORES, DaemonProcess, daemon_env, store_location, write_config
from test_hostile import assert_no_secret_in

SECRET = "hostile-secret-token-5b2f0c9e4d71"  # the daemon's FAILURE_API_TOKEN: a secret it knows
DEEP_JSON = '{"a":' + "[" * 20_000 + "]" * 20_000 + "}"  # 40 KB, nested 20,001 deep
HOSTILE = [
    ("pathological", "a-" * 32_768),  # 64 KiB that made the fingerprint's regexes quadratic
    ("deep_json", DEEP_JSON),
    ("nul_bytes", "connection\x00 timeout \x00\x00 at \x00" * 200),
    ("secret", f"upstream said: invalid token {SECRET} (Authorization: Bearer {SECRET})"),
    ("invalid_utf8", b'{"task_type": "hostile", "error": "\xff\xfe bad \xc3"}'),  # raw bytes: not JSON text
]
REQUESTS, NORMAL_EVERY = 200, 2  # 200 requests, every second one normal
DECIDE_WITHIN_SECONDS = 2.0


def db_time(text):
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/failures", body=data,
                     headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def request_body(n):
    if n % NORMAL_EVERY == 0:
        return "normal", {"task_type": "normal", "error": f"malformed json in order {n}"}
    kind, error = HOSTILE[(n // NORMAL_EVERY) % len(HOSTILE)]
    return kind, error if isinstance(error, bytes) else {"task_type": f"hostile_{kind}", "error": error}


@pytest.fixture(scope="module", params=STORES)
def attacked(request, tmp_path_factory):
    """One daemon on each store, 200 concurrent requests; yields (daemon, [(kind, status, data)])."""
    workdir = tmp_path_factory.mktemp("hostile")
    with store_location(request.param, workdir) as db:
        yield from _attack(workdir, db)


def _attack(workdir, db):
    port = free_port()
    daemon = DaemonProcess(workdir, daemon_env(workdir, db, write_config(workdir / "config", SMALL_PATTERNS),
                                               FAILURE_HTTP_ADDR=f"127.0.0.1:{port}",
                                               FAILURE_API_TOKEN=SECRET)).start()
    daemon.port = port
    lock, answers = threading.Lock(), []

    def send(n):
        kind, body = request_body(n)
        status, data = post(port, body)
        with lock:
            answers.append((kind, status, data))

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(REQUESTS)))
        yield daemon, answers
    finally:
        daemon.close()


def test_every_report_is_answered_without_a_server_error(attacked):
    daemon, answers = attacked
    assert len(answers) == REQUESTS
    for kind, status, data in answers:
        assert status == (400 if kind == "invalid_utf8" else 201), (kind, status, data)
    assert daemon.proc.poll() is None, daemon.stderr()


def test_every_normal_task_is_decided_within_2_s_of_its_report(attacked):
    daemon, answers = attacked
    normal = sorted(data["task_id"] for kind, status, data in answers if kind == "normal")
    assert len(normal) == REQUESTS // NORMAL_EVERY
    marks = ",".join("?" * len(normal))
    daemon.wait_for(f"SELECT count(*) FROM tasks WHERE status != 'new' AND id IN ({marks})",
                    lambda rows: rows[0][0] == len(normal), 120, *normal)
    rows = daemon.query(
        "SELECT task_id, min(CASE WHEN event = 'reported' THEN at END), min(CASE WHEN event != 'reported' THEN at END)"
        f" FROM task_events WHERE task_id IN ({marks}) GROUP BY task_id", *normal)
    waits = {task_id: db_time(decided) - db_time(reported) for task_id, reported, decided in rows}
    slow = {task_id: round(wait, 2) for task_id, wait in waits.items() if wait > DECIDE_WITHIN_SECONDS}
    assert len(waits) == len(normal) and not slow, f"normal tasks decided late: {slow}"


def test_hostile_tasks_are_decided_too_and_the_daemon_stays_healthy(attacked):
    daemon, answers = attacked
    stored = sorted(data["task_id"] for kind, status, data in answers if status == 201)
    marks = ",".join("?" * len(stored))
    daemon.wait_for(f"SELECT count(*) FROM tasks WHERE status != 'new' AND id IN ({marks})",
                    lambda rows: rows[0][0] == len(stored), 180, *stored)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request("GET", "/healthz")
    health = json.loads(conn.getresponse().read())
    assert health["ok"] is True, health
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.stderr()


def test_a_deeply_nested_json_error_is_201_and_the_task_is_decided(attacked):
    daemon, _ = attacked
    status, data = post(daemon.port, {"task_type": "deep", "error": DEEP_JSON})
    assert status == 201 and data["classification"] is not None
    daemon.wait_for("SELECT status FROM tasks WHERE id = ?", lambda rows: rows and rows[0][0] != "new", 60,
                    data["task_id"])


def test_no_secret_is_stored(attacked):
    daemon, _ = attacked
    assert_no_secret_in(daemon.db, SECRET)
    for log_file in (daemon.workdir / "logs").glob("*"):
        assert SECRET not in log_file.read_text(errors="replace"), log_file
