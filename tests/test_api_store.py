"""The HTTP API when the database cannot be written: a real full tmpfs (507) and a read-only database (503).

Also: what the API says a failure is classified as is what the daemon decides from the stored row.
"""

import http.client
import json
import logging
import subprocess
import uuid

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.api import ApiServer
from failured.backend import Backend
from failured.config import load_config
from failured.intake import MAX_ERROR_BYTES
from failured.settings import load_settings
from failured.store import open_store

TOKEN = "store-token-0123456789"


def post(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/failures", body=json.dumps(body),
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (needs root and mount(8)); skipped, saying why, where mounting is refused."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", f"failured-test-{uuid.uuid4().hex[:8]}",
                                 str(mountpoint)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount(8) here: cannot make a small filesystem")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {result.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def fill(directory):
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: nothing left over for close() to fail on
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def api_over(tmp_path):
    servers, stores = [], []

    def start(store):
        snapshot = load_config(write_config(tmp_path / "config", SMALL_PATTERNS), "en")
        server = ApiServer("127.0.0.1", 0, Backend(store, load_settings({}), lambda: snapshot), token=TOKEN).start()
        servers.append(server)
        stores.append(store)
        return server

    yield start
    for server in servers:
        server.stop()
    for store in stores:
        store.close()


@pytest.mark.sqlite_only("a full filesystem under the SQLite file")
def test_a_full_disk_is_507_disk_full_in_one_line_and_writes_resume_when_space_returns(small_disk, api_over, caplog):
    store = open_store(small_disk / "failured.db")
    server = api_over(store)
    assert post(server.port, {"task_type": "sync", "error": "before"})[0] == 201
    filler = fill(small_disk)
    answers = []
    with caplog.at_level(logging.DEBUG, logger="failured"):
        for n in range(100):  # free pages inside the files may take a few reports first
            status, data = post(server.port, {"task_type": "sync", "error": f"{n} " + "x" * 30_000})
            answers.append((status, data))
            if status != 201:
                break
    status, data = answers[-1]
    assert (status, data["error"]) == (507, "disk_full"), answers[-1]
    assert data["detail"].startswith("disk full: cannot write") and "\n" not in data["detail"]
    assert {s for s, _ in answers} <= {201, 507}
    assert "Traceback" not in caplog.text
    stored = store.db.execute_sql("SELECT count(*) FROM tasks").fetchone()[0]
    assert stored == 1 + sum(1 for s, _ in answers if s == 201)  # a 507 stored nothing
    filler.unlink()
    assert post(server.port, {"task_type": "sync", "error": "after"})[0] == 201


@pytest.mark.sqlite_only("SQLite's query_only PRAGMA makes the database read-only")
def test_a_read_only_database_is_503_unavailable_naming_it(tmp_path, api_over, caplog):
    store = open_store(tmp_path / "data" / "failured.db")
    # SQLite's own read-only mode for every connection the request threads open (root ignores file modes).
    store.db._pragmas = [*store.db._pragmas, ("query_only", 1)]
    store.close()
    server = api_over(store)
    with caplog.at_level(logging.DEBUG, logger="failured"):
        status, data = post(server.port, {"task_type": "sync", "error": "x"})
    assert (status, data["error"]) == (503, "unavailable")
    assert "read-only" in data["detail"] and str(store.path) in data["detail"]
    assert "Traceback" not in caplog.text


def test_the_answer_classifies_the_stored_text_not_the_raw_request(tmp_path, store, api_over):
    server = api_over(store)
    # Only the middle of this error matches a pattern, and the middle is what the 64 KiB cut removes.
    error = "x" * MAX_ERROR_BYTES + " connection refused " + "y" * MAX_ERROR_BYTES
    status, data = post(server.port, {"task_type": "sync", "error": error})
    assert status == 201
    snapshot = load_config(tmp_path / "config", "en")
    stored = store.scalar("SELECT error_message FROM tasks WHERE id = ?", data["task_id"])
    assert "connection refused" not in stored
    assert data["classification"] == snapshot.classifier.classify(stored, None, "sync").to_dict()
    assert data["classification"]["matched_by"] in ("model", "none")  # no rule saw "connection refused"
