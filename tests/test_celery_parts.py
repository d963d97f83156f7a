"""The Celery integration's parts without a broker: spool, reporter, targets, payloads, handler config."""

import json
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("celery", reason="Celery is not installed: pip install -e '.[test]'")

from failured.errors import ConfigError, InputError, RefusedError  # noqa: E402
from failured.handlers import HandlerSpec, TaskContext, parse_handler, run_handler  # noqa: E402
from failured.integrations import protocol  # noqa: E402
from failured.integrations.celery_handler import call_arguments  # noqa: E402
from failured.integrations.reporter import Reporter  # noqa: E402
from failured.integrations.spool import SENT, SLOT_BYTES, Spool  # noqa: E402
from failured.integrations.targets import DeliveryError, HttpTarget, StoreTarget  # noqa: E402
from failured.store import open_store  # noqa: E402
from conftest import REPO, wait_for  # noqa: E402
from test_store_postgres import pg_unavailable, pg_url  # noqa: E402,F401 (fixtures: a schema of its own)


@pytest.fixture
def integration():
    """failured.integrations.celery, imported only by the tests that use it: it loads Celery's app
    machinery (~0.1 CPU-s), which every xdist worker paid when it was imported at collection."""
    from failured.integrations import celery

    return celery


def failure(n):
    return {"kind": "failure", "task_type": "shop.sync", "error": f"boom {n}", "error_type": "ValueError",
            "payload": {"args": [n], "kwargs": {}, "celery_task_id": f"c-{n}", "queue": "celery"}, "ref": f"c-{n}"}


def each(deliver):
    """A spool ``deliver`` for batches from one that takes a record at a time and raises to refuse it."""
    def deliver_many(records):
        outcomes = []
        for record in records:
            try:
                deliver(record)
            except DeliveryError as exc:
                return outcomes, exc
            outcomes.append(SENT)
        return outcomes, None
    return deliver_many


def refs(db):
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT ref FROM tasks ORDER BY id")]
    finally:
        con.close()


# -- spool ---------------------------------------------------------------------------------

def test_spool_drains_oldest_first_and_stops_at_the_first_failure(tmp_path):
    spool = Spool(tmp_path / "spool")
    for n in range(5):
        spool.put(failure(n))
    assert not list((tmp_path / "spool").glob(".*.tmp"))  # written by rename: no half files
    got = []

    def deliver(record):
        if len(got) == 3:
            raise DeliveryError("down")
        got.append(record["ref"])

    sent, error = spool.drain(each(deliver), batch=2)
    assert (sent, got, str(error)) == (3, ["c-0", "c-1", "c-2"], "down")
    assert [Spool.read(p)["ref"] for p in spool.pending()] == ["c-3", "c-4"]


def test_spool_sets_aside_a_record_that_is_not_json(tmp_path):
    spool = Spool(tmp_path)
    (tmp_path / "00000000000000000001-1-000001.json").write_text("{half")
    spool.put(failure(1))
    got = []
    assert spool.drain(each(lambda r: got.append(r["ref"]))) == (1, None)
    assert got == ["c-1"] and len(list(tmp_path.glob("*.bad"))) == 1


def test_files_a_killed_writer_left_are_published_when_whole_and_removed_when_torn_or_unused(tmp_path):
    spool = Spool(tmp_path)
    (tmp_path / ".00000000000000000001-999999999-000001.tmp").write_text(json.dumps(failure(1)))
    (tmp_path / ".00000000000000000002-999999999-000002.tmp").write_text('{"kind": "fail')
    (tmp_path / ".00000000000000000003-1-000003.tmp").write_text(json.dumps(failure(3)))
    for name in (".00000000000000000001-999999999-000001.tmp", ".00000000000000000002-999999999-000002.tmp"):
        os.utime(tmp_path / name, (1_000_000, 1_000_000))  # long ago; the third is being written now
    unused = tmp_path / "00000000000000000004-999999999-000004.slot"  # a dead worker's slots
    unused.write_bytes(bytes(SLOT_BYTES))
    used = tmp_path / "00000000000000000009-999999999-000005.slot"  # made at 9, handed a report at 0
    data = json.dumps(failure(5)).encode()
    used.write_bytes(len(data).to_bytes(8, "little") + (0).to_bytes(8, "little") + data)
    for path in (unused, used):
        os.utime(path, (1_000_000, 1_000_000))
    assert spool.salvage() == (1, 2)
    assert [Spool.read(p)["ref"] for p in spool.pending()] == ["c-5", "c-1"]  # by the time in the slot's header
    assert (tmp_path / ".00000000000000000003-1-000003.tmp").exists() and not unused.exists()


def _put_one(spool, n):
    spool.put(failure(n))


def test_put_copies_into_a_slot_made_ahead_and_a_forked_child_never_takes_its_parents(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare(3)
    slots = set(tmp_path.glob("*.slot"))
    assert len(slots) == 3 and spool.pending() == []  # empty slots are not reports
    child = multiprocessing.get_context("fork").Process(target=_put_one, args=(spool, 1))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    [child_file] = tmp_path.glob("*.json")  # the child wrote a file of its own
    used = spool.put(failure(2))
    assert used in slots and spool.pending() == [child_file, used]  # oldest first
    assert [Spool.read(p)["ref"] for p in spool.pending()] == ["c-1", "c-2"]
    spool.put({"kind": "failure", "task_type": "t", "error": "x" * SLOT_BYTES})  # too big for a slot: a file
    assert len(list(tmp_path.glob("*.json"))) == 2
    spool.discard_slots()
    assert set(tmp_path.glob("*.slot")) == {used}


def test_a_slot_handed_a_report_is_drained_like_a_file_and_an_unused_one_is_left_alone(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare(2)
    spool.put(failure(1))
    got = []
    assert spool.drain(each(lambda r: got.append(r["ref"]))) == (1, None)
    assert got == ["c-1"] and len(list(tmp_path.glob("*.slot"))) == 1  # the used slot is removed


def _drain_into(spool_dir, out_path):
    def deliver(record):
        with open(out_path, "a") as f:
            f.write(record["ref"] + "\n")

    Spool(spool_dir).drain(each(deliver), batch=7)


def test_two_processes_draining_one_spool_send_each_record_once(tmp_path):
    spool = Spool(tmp_path / "spool")
    for n in range(100):
        spool.put(failure(n))
    out = tmp_path / "sent.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_drain_into, args=(tmp_path / "spool", out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = out.read_text().splitlines()
    assert sorted(lines) == sorted(f"c-{n}" for n in range(100)) and spool.is_empty()


# -- reporter and targets ----------------------------------------------------------------

@pytest.fixture
def reporters():
    """Make Reporters that are closed (their sender threads stopped) when the test ends."""
    made = []

    def make(target, spool, **kwargs):
        reporter = Reporter(target, spool, **kwargs)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close(timeout=1)


def test_reports_spool_while_the_store_is_missing_and_arrive_once_in_order_later(tmp_path, reporters):
    db = tmp_path / "data" / "failured.db"
    spool = Spool(tmp_path / "spool")
    reporter = reporters(StoreTarget(db, timeout=0.5), spool, flush_interval=0.2)
    assert [reporter.report_failure(failure(n)) for n in range(3)] == ["spooled"] * 3
    open_store(db).close()  # the daemon created the database: the background flush delivers
    assert wait_for(lambda: spool.is_empty(), 60)
    assert refs(db) == ["c-0", "c-1", "c-2"]
    reporter.report_failure(failure(3))
    assert wait_for(lambda: refs(db) == ["c-0", "c-1", "c-2", "c-3"], 60)


def test_a_locked_store_never_holds_the_worker_and_the_report_goes_once_it_is_free(tmp_path, reporters):
    db = tmp_path / "failured.db"
    open_store(db).close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    spool = Spool(tmp_path / "spool")
    reporter = reporters(StoreTarget(db, timeout=0.3), spool, flush_interval=0.2)
    assert reporter.report_failure(failure(1)) == "spooled"  # returned without waiting for the lock
    assert wait_for(lambda: reporter._retry_at > 0, 30)  # the sender tried, gave up after 0.3 s, backs off
    assert len(spool.pending()) == 1
    blocker.execute("ROLLBACK")
    assert wait_for(lambda: spool.is_empty(), 60)
    assert refs(db) == ["c-1"]


def test_the_sender_delivers_handed_off_reports_from_many_threads_each_once_and_each_threads_in_order(
        tmp_path, reporters):
    db = tmp_path / "failured.db"
    open_store(db).close()
    spool = Spool(tmp_path / "spool")
    reporter = reporters(StoreTarget(db), spool, flush_interval=0.2)

    def worker_thread(t):
        for n in range(50):
            assert reporter.report_failure(failure(f"{t}-{n:02d}")) == "spooled"

    threads = [threading.Thread(target=worker_thread, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_for(lambda: len(refs(db)) >= 200 and spool.is_empty(), 60)
    got = refs(db)
    assert sorted(got) == sorted(f"c-{t}-{n:02d}" for t in range(4) for n in range(50))  # none lost or doubled
    for t in range(4):
        assert [r for r in got if r.startswith(f"c-{t}-")] == [f"c-{t}-{n:02d}" for n in range(50)]


class SilentServer:
    """Accepts TCP connections into the backlog and never answers: an HTTP request to it hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


HAND_OFF_THEN_WAIT = """
import sys, time
from failured.integrations.reporter import Reporter
from failured.integrations.spool import Spool
from failured.integrations.targets import HttpTarget
spool = Spool(sys.argv[2], durable=sys.argv[3] == "durable")
reporter = Reporter(HttpTarget(sys.argv[1], timeout=120), spool, flush_interval=3600)
reporter.start()
deadline = time.monotonic() + 60
while not spool.durable and not spool._slots and time.monotonic() < deadline:
    time.sleep(0.01)  # the sender has made its slots
record = {"kind": "failure", "task_type": "shop.sync", "error": "boom", "error_type": "ValueError",
          "payload": {"args": [1], "kwargs": {}}, "ref": "c-killed"}
print(reporter.report_failure(record), flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("durable, kind", [(False, ".slot"), (True, ".json")])
def test_a_worker_killed_right_after_the_hand_off_loses_nothing_the_next_one_sends_it_once(
        tmp_path, reporters, durable, kind):
    server = SilentServer()  # the report is on its way (its request hangs) when the worker dies
    spool_dir = tmp_path / "spool"
    child = subprocess.Popen([sys.executable, "-c", HAND_OFF_THEN_WAIT, server.url, str(spool_dir),
                              "durable" if durable else "fast"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "spooled"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        server.close()
    [handed] = Spool(spool_dir).pending()
    assert handed.suffix == kind  # a slot (or, durable, a file fsynced before the task went on)
    db = tmp_path / "failured.db"
    open_store(db).close()
    reporters(StoreTarget(db), Spool(spool_dir), flush_interval=3600).start()  # the next worker starts
    assert wait_for(lambda: Spool(spool_dir).is_empty() and refs(db) == ["c-killed"], 60)
    assert refs(db) == ["c-killed"]


def test_close_sends_what_is_left_and_with_failured_down_keeps_it_for_the_next_worker(tmp_path):
    spool = Spool(tmp_path / "spool")
    down = Reporter(HttpTarget("http://127.0.0.1:9", timeout=0.5), spool, flush_interval=3600)
    for n in range(3):
        down.report_failure(failure(n))
    down.count_success("shop.sync")
    down.close(timeout=1)
    kept = sorted(Spool.read(p).get("ref", "count") for p in spool.pending())
    assert kept == ["c-0", "c-1", "c-2", "count"]
    db = tmp_path / "failured.db"
    open_store(db).close()
    up = Reporter(StoreTarget(db), spool, flush_interval=3600)
    up.report_failure(failure(3))
    up.close(timeout=30)
    assert refs(db) == ["c-0", "c-1", "c-2", "c-3"] and spool.is_empty()


def test_a_spool_that_cannot_be_written_falls_back_to_sending_at_once(tmp_path, reporters):
    db = tmp_path / "failured.db"
    open_store(db).close()
    (tmp_path / "not-a-dir").write_text("")
    reporter = reporters(StoreTarget(db), Spool(tmp_path / "not-a-dir" / "spool"), flush_interval=3600)
    assert reporter.report_failure(failure(1)) == "sent"
    assert refs(db) == ["c-1"]


def test_a_damaged_spool_file_is_set_aside_and_the_ones_behind_it_still_go(tmp_path):
    db = tmp_path / "failured.db"
    open_store(db).close()
    spool = Spool(tmp_path / "spool")
    spool.put({"kind": "failure", "task_type": "shop.sync"})  # no error text
    spool.put(failure(1))
    reporter = Reporter(StoreTarget(db), spool, flush_interval=3600)
    assert reporter.flush() == 1
    assert refs(db) == ["c-1"] and len(list((tmp_path / "spool").glob("*.rejected"))) == 1


def test_successes_are_counted_in_memory_and_sent_as_one_count(tmp_path):
    db = tmp_path / "failured.db"
    open_store(db).close()
    reporter = Reporter(StoreTarget(db), Spool(tmp_path / "spool"), flush_interval=3600)
    for _ in range(1000):
        reporter.count_success("shop.sync")
    reporter.flush()
    con = sqlite3.connect(db)
    assert con.execute("SELECT task_type, SUM(count) FROM success_counts GROUP BY task_type").fetchall() == \
        [("shop.sync", 1000)]


def test_successes_counted_while_failured_is_down_are_spooled_not_dropped(tmp_path):
    reporter = Reporter(HttpTarget("http://127.0.0.1:9", timeout=0.5), Spool(tmp_path / "s"), flush_interval=3600)
    reporter.count_success("shop.sync")
    reporter.count_success("shop.sync")
    reporter.flush()
    [path] = Spool(tmp_path / "s").pending()
    assert Spool.read(path) == {"kind": "success", "task_type": "shop.sync", "count": 2}


def test_a_store_target_on_postgresql_writes_there_and_never_shows_the_password(request):
    url = request.getfixturevalue("pg_url")  # a schema of its own (test_store_postgres), or a skip saying why
    open_store(url).close()  # the daemon creates the database; the target never does
    target = StoreTarget(url)
    assert target.send_many([failure(1), failure(2)]) == ([SENT, SENT], None)
    assert isinstance(target.send(failure(3)), int)
    store = open_store(url, create=False)
    try:
        assert [ref for (ref,) in store.rows("SELECT ref FROM tasks ORDER BY id")] == ["c-1", "c-2", "c-3"]
    finally:
        store.close()
    hidden = StoreTarget("postgresql://someone:hunter2secret@127.0.0.1:1/nothing", timeout=0.5)
    assert hidden.describe() == "postgresql://someone:***@127.0.0.1:1/nothing"
    with pytest.raises(DeliveryError) as caught:
        hidden.send(failure(4))
    assert "hunter2secret" not in str(caught.value) and "someone:***@" in str(caught.value)


class FailuredStub:
    """A real HTTP server on 127.0.0.1 standing in for failured's API: answers ``statuses`` in turn
    (then 201), records what it got, and closes the connection after each answer when ``close_each``."""

    def __init__(self, statuses=(), close_each=False):
        stub = self
        self.statuses, self.close_each, self.got = list(statuses), close_each, []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.got.append((self.path, self.headers.get("Authorization"), body))
                status = stub.statuses.pop(0) if stub.statuses else 201
                answer = json.dumps({"task_id": len(stub.got)} if status < 300 else {"detail": f"no ({status})"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                if stub.close_each:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    made = []

    def make(*args, **kwargs):
        made.append(FailuredStub(*args, **kwargs))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


def test_the_http_target_sends_a_batch_sets_aside_what_is_refused_and_stops_at_an_outage(stub_factory):
    stub = stub_factory(statuses=[201, 400, 201, 503])
    target = HttpTarget(stub.url, token="s3cret-token", timeout=5)
    outcomes, error = target.send_many([failure(1), failure(2), {"kind": "success", "task_type": "shop.sync",
                                                                 "count": 3}, failure(4), failure(5)])
    assert outcomes == [SENT, "rejected", SENT] and not error.permanent and "HTTP 503" in str(error)
    assert "s3cret-token" not in str(error)
    assert [path for path, _, _ in stub.got] == ["/v1/failures"] * 2 + ["/v1/successes", "/v1/failures"]
    assert {auth for _, auth, _ in stub.got} == {"Bearer s3cret-token"}
    assert stub.got[0][2] == {k: v for k, v in failure(1).items() if k != "kind"}
    assert stub.got[2][2] == {"task_type": "shop.sync", "count": 3}


def test_the_http_target_reconnects_when_failured_closes_the_connection(stub_factory):
    stub = stub_factory(close_each=True)
    target = HttpTarget(stub.url, timeout=5)
    assert target.send_many([failure(n) for n in range(3)]) == ([SENT] * 3, None)
    assert [body["ref"] for _, _, body in stub.got] == ["c-0", "c-1", "c-2"]


def test_workers_sending_to_two_failureds_keep_a_spool_each(tmp_path, monkeypatch, integration):
    """Workers of one user, two apps, two failureds: a shared default spool had let one's sender take the other's
    reports to the wrong database. The same failured, however named, keeps one spool."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    first = integration.default_spool_dir(StoreTarget(tmp_path / "a" / "failured.db"))
    second = integration.default_spool_dir(StoreTarget(tmp_path / "b" / "failured.db"))
    api = integration.default_spool_dir(HttpTarget("http://127.0.0.1:8649"))
    assert len({first, second, api}) == 3
    assert all(path.parent == tmp_path / "failured" / "celery-spool" for path in (first, second, api))
    monkeypatch.chdir(tmp_path)
    assert integration.default_spool_dir(StoreTarget("a/failured.db")) == first  # relative, the same file
    postgres = integration.default_spool_dir(StoreTarget("postgresql://app:s3cret@db/failured"))
    assert "s3cret" not in str(postgres)


def test_an_api_url_that_is_not_http_is_refused_saying_so():
    with pytest.raises(InputError, match="is not http://HOST:PORT"):
        HttpTarget("127.0.0.1:8080")


# -- what a failure report holds -----------------------------------------------------------

def test_payload_values_json_cannot_hold_are_kept_as_marked_reprs(integration):
    value = {"order": 7, "price": 1.5, "when": object.__new__(type("Stamp", (), {"__repr__": lambda s: "Stamp()"})),
             "nan": float("nan"), "ids": (1, 2), "by_int": {1: "a"}}
    assert integration.json_safe(value) == {
        "order": 7, "price": 1.5, "when": {protocol.REPR_MARK: "Stamp()"}, "nan": {protocol.REPR_MARK: "nan"},
        "ids": [1, 2], "by_int": {protocol.REPR_MARK: "{1: 'a'}"}}


def test_values_kombus_json_carries_are_kept_in_its_form_and_read_back_as_themselves(integration):
    import datetime
    import decimal
    import uuid

    from kombu.utils import json as kombu_json

    values = [datetime.datetime(2024, 3, 18, 14, 2, tzinfo=datetime.timezone.utc), datetime.date(2024, 3, 18),
              datetime.time(14, 2), decimal.Decimal("19.90"), uuid.uuid4(), b"raw", b"\xff"]
    kept = integration.json_safe(values)
    assert kept[0] == {"__type__": "datetime", "__value__": "2024-03-18T14:02:00+00:00"}
    args, _ = call_arguments({"args": json.loads(json.dumps(kept)), "kwargs": {}})  # as stored, then re-sent
    assert kombu_json.loads(kombu_json.dumps(args)) == values  # what the worker's kombu gives the task
    assert integration.json_safe(decimal.Decimal("NaN")) == {protocol.REPR_MARK: "Decimal('NaN')"}  # not equal to itself


def test_text_without_a_utf8_form_never_stops_a_report(integration, tmp_path):
    undecodable = b"\xff\xfe".decode("utf-8", "surrogateescape")  # as os.fsdecode or a log file read so gives it
    error = integration.error_text(ValueError("bad bytes: " + undecodable))
    assert error == "ValueError: bad bytes: \ufffd\ufffd"
    record = integration.failure_record("t.x", "c-1", error, "ValueError", ["a" + undecodable],
                                        {"k": 1, undecodable: 2}, "celery")
    assert record["payload"]["args"] == [{protocol.REPR_MARK: "'a\\udcff\\udcfe'"}]
    assert record["payload"]["kwargs"] == {protocol.REPR_MARK: "{'k': 1, '\\udcff\\udcfe': 2}"}
    store = open_store(tmp_path / "f.db")
    assert StoreTarget(tmp_path / "f.db").send_many([record]) == ([SENT], None)  # taken, not set aside
    assert store.db.execute_sql("SELECT error_message FROM tasks").fetchone()[0].endswith("\ufffd\ufffd")


def _fails_deep(depth):
    if depth == 0:
        raise ConnectionRefusedError(111, "Connection refused")
    _fails_deep(depth - 1)


def test_error_text_is_the_last_frames_and_the_error_line_within_the_intake_limit(integration):
    try:
        _fails_deep(30)
    except ConnectionRefusedError as exc:
        text = integration.error_text(exc, exc.__traceback__)
        error_type = integration.qualified_name(type(exc))
    assert text.startswith("Traceback (most recent call last):")
    assert 'File "' in text and "in test_error_text" not in text  # the last frames only
    assert text.endswith("ConnectionRefusedError: [Errno 111] Connection refused")
    assert error_type == "ConnectionRefusedError"
    huge = ValueError("x" * 200_000)
    assert len(integration.error_text(huge).encode()) <= integration.MAX_ERROR_BYTES


def test_a_task_name_failured_would_refuse_becomes_a_task_type_of_its_own(integration):
    from failured.intake import check_task_type

    assert integration.task_type_for("shop.tasks.sync") == "shop.tasks.sync"
    long, escape = "shop." + "x" * 300, "shop.\x1b[2Jsync\n"
    for name in (long, escape, " shop.sync", "shop." + "x" * 300 + "y"):
        task_type = integration.task_type_for(name)
        assert check_task_type(task_type) == task_type and len(task_type) <= 200
    assert integration.task_type_for(escape) == "shop.\\x1b[2Jsync#" + integration.task_type_for(escape)[-8:]
    assert integration.task_type_for(long) != integration.task_type_for(long + "y")  # the hash tells them apart
    record = integration.failure_record(escape, "c-1", "boom", "ValueError", [1], {}, "celery")
    assert record["task_type"] != escape and record["payload"]["celery_task"] == escape


def test_include_and_exclude_take_names_and_globs_and_never_report_the_recovery_task(integration):
    wanted = integration.TaskFilter(include=["shop.*"], exclude=["shop.tasks.noisy"])
    assert wanted("shop.tasks.sync") and not wanted("shop.tasks.noisy") and not wanted("other.task")
    assert not integration.TaskFilter()(integration.MANUAL_TASK)


# -- the celery handler kind ---------------------------------------------------------------

def test_a_celery_handler_is_parsed_with_its_options():
    spec = parse_handler({"kind": "celery", "broker": "${CELERY_BROKER_URL}", "task": "shop.sync",
                          "queue": "retries", "countdown": 1, "timeout": 30}, "failured.toml", "h")
    assert spec.kind == "celery" and spec.timeout == 30
    assert dict(spec.options) == {"broker": "${CELERY_BROKER_URL}", "task": "shop.sync", "queue": "retries",
                                  "countdown": 1.0}


@pytest.mark.parametrize("table, key", [
    ({"kind": "celery"}, "h.broker"),
    ({"kind": "celery", "broker": "redis://x", "countdown": 60, "timeout": 60}, "h.countdown"),
    ({"kind": "celery", "broker": "redis://x", "argv": ["x"]}, "h.argv"),
    ({"kind": "celery", "broker": "redis://x", "task": ""}, "h.task"),
])
def test_a_bad_celery_handler_is_refused_naming_the_key(table, key):
    with pytest.raises(ConfigError) as caught:
        parse_handler(table, "failured.toml", "h")
    assert caught.value.key == key


def test_stored_payloads_become_the_call_arguments():
    assert call_arguments({"args": [1, "a"], "kwargs": {"b": 2}, "celery_task_id": "x", "queue": "q"}) == \
        ([1, "a"], {"b": 2})
    assert call_arguments({"order_id": 42}) == ([], {"order_id": 42})  # reported some other way: kwargs
    with pytest.raises(ValueError, match=r"^\[DATA\] payload args\[1\] was kept only as its repr"):
        call_arguments({"args": [1, {protocol.REPR_MARK: "<obj>"}], "kwargs": {}})
    # arguments too large to report: the whole list became one marked repr, and the reason says that
    with pytest.raises(ValueError, match=r"^\[DATA\] payload args was kept only as its repr when reported .not JSON, or too large"):
        call_arguments({"args": {protocol.REPR_MARK: "['x...']"}, "kwargs": {protocol.REPR_MARK: "{}"}})


def _spec(broker, timeout=2.0):
    return HandlerSpec(kind="celery", timeout=timeout, options=(("broker", broker), ("countdown", 0.0)))


def _context():
    return TaskContext(id=1, task_type="shop.sync", ref="c-1", payload={"args": [1], "kwargs": {}}, attempt=1)


def test_a_celery_retry_with_an_unset_broker_variable_fails_saying_which(monkeypatch):
    monkeypatch.delenv("NO_SUCH_BROKER_VAR", raising=False)
    outcome = run_handler(_spec("${NO_SUCH_BROKER_VAR}"), _context())
    assert not outcome.ok and "NO_SUCH_BROKER_VAR" in outcome.error


@pytest.mark.parametrize("environment_broker", [None, "amqp://guest:guest@127.0.0.1:5672//"])
def test_a_celery_retry_with_the_broker_down_fails_without_showing_the_password(monkeypatch, environment_broker):
    """The handler's broker, even where the daemon's environment names another (Celery reads CELERY_BROKER_URL
    before the broker it is given)."""
    if environment_broker:
        monkeypatch.setenv("CELERY_BROKER_URL", environment_broker)
    outcome = run_handler(_spec("redis://:s3cr3t-pass@127.0.0.1:9/0"), _context())
    assert not outcome.ok and "s3cr3t-pass" not in outcome.error and "127.0.0.1:9" in outcome.error, outcome.error


def test_a_payload_that_cannot_be_sent_again_fails_as_a_data_error_without_sending():
    context = TaskContext(1, "shop.sync", None, {"args": [{protocol.REPR_MARK: "<obj>"}], "kwargs": {}}, 1)
    outcome = run_handler(_spec("redis://127.0.0.1:9/0"), context)
    assert not outcome.ok and outcome.error_type == "ValueError" and "not JSON" in outcome.error
    from failured.config import load_config

    shipped = load_config(REPO / "config").classifier  # what the daemon makes of that attempt: stop, tell the admins
    assert shipped.classify(outcome.error, outcome.error_type).category == "unrecoverable_data"


# -- manual_recovery_task --------------------------------------------------------------------

def test_manual_recovery_task_does_what_recover_does(tmp_path, monkeypatch, integration):
    from conftest import write_config
    from failured.intake import record_failure

    config = write_config(tmp_path / "config", main='[task_types.t.handler]\nkind = "command"\nargv = ["true"]\n')
    db = tmp_path / "failured.db"
    store = open_store(db)
    task_id = record_failure(store, "t", "boom")
    store.db.execute_sql("UPDATE tasks SET status = 'exhausted', attempts = 3, max_attempts = 3 WHERE id = ?",
                         (task_id,))
    store.close()
    monkeypatch.setenv("FAILURE_DB", str(db))
    monkeypatch.setenv("FAILURE_CONFIG_DIR", str(config))
    monkeypatch.setattr(integration, "_installed", None)
    with pytest.raises(RefusedError, match="used all 3 of its retries"):
        integration.manual_recovery_task(task_id)
    result = integration.manual_recovery_task(task_id=task_id, force_retry=True)
    assert result["status"] == "scheduled" and result["task_id"] == task_id


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def _rebuilt_by_celery(exc):
    """``exc`` as a Celery client gets it back from a JSON result, and as a prefork child hands it over (pickle)."""
    import pickle

    from celery import Celery

    backend = Celery("results", set_as_current=False).backend
    return backend.exception_to_python(json.loads(json.dumps(backend.prepare_exception(exc)))), \
        pickle.loads(pickle.dumps(exc))


def test_failured_errors_come_back_from_celery_with_their_messages_and_types():
    from failured.errors import ConfigErrors, StoreFullError, TaskNotFound, UnknownCategory

    errors = [ConfigErrors([ConfigError("/etc/failured", None, "no config directory here"),
                            ConfigError("/etc/failured/failured.toml", "retry.delays", "is empty")]),
              ConfigError("/etc/failured/x.toml", "k", "bad"), TaskNotFound(5), RefusedError("task 5 is recovered"),
              StoreFullError("/var/lib/failured/failured.db"), UnknownCategory("netwrk", ["network", "data"]),
              DeliveryError("http://failured: HTTP 400: no", permanent=True), InputError("bad input")]
    for exc in errors:
        for again in _rebuilt_by_celery(exc):
            assert (type(again), str(again)) == (type(exc), str(exc))
    from_json, from_pickle = _rebuilt_by_celery(errors[0])
    assert [e.key for e in from_pickle.errors] == [None, "retry.delays"]  # pickle keeps the errors themselves
    assert from_json.errors == [str(e) for e in errors[0].errors]
    assert str(ConfigErrors("one message\nas text")) == "one message\nas text"  # not one error per character
