"""Listing tasks: the store query, `failured list`, GET /v1/tasks, and the API's bulk requeue and resolve."""

import json
import urllib.error
import urllib.request

import pytest

from cli_inprocess import cli_fixture  # noqa: F401 - fixture: a command in-process, a subprocess costs ~0.25 CPU-s a call
from conftest import run_cli, write_config
from failured.api import ApiServer
from failured.backend import Backend
from failured.clock import ManualClock
from failured.config import load_config
from failured.errors import InputError
from failured.intake import record_failure
from failured.listing import build_filter, list_page
from failured.manual import REQUEUE_PAGE
from failured.settings import load_settings
from failured.store import Task, like_literal

HANDLER = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\ntimeout = 5\n'
TOKEN = "list-test-token-0123456789"


def add(store, task_type, error, status="notified", category="unrecoverable_data", created=None):
    task_id = record_failure(store, task_type, error, source="cli")
    fields = {"status": status, "category": category}
    if created is not None:
        fields["created_at"] = created
    Task.update(**fields).where(Task.id == task_id).execute()
    return task_id


def ids(rows):
    return [row["id"] for row in rows]


@pytest.fixture
def seeded(store):
    made = {
        "a": add(store, "sync", "connection timeout to db", "scheduled", "recoverable_network"),
        "b": add(store, "mail", "100% of quota_used", "notified", "unrecoverable_data"),
        "c": add(store, "sync", "100 of quotaXused", "exhausted", "recoverable_network"),
        "d": add(store, "mail", "weird", "notified", "unknown"),
    }
    return store, made


def test_list_is_newest_first_and_filters_combine(seeded):
    store, made = seeded
    rows, cursor = list_page(build_filter(), now=0)
    assert ids(rows) == sorted(made.values(), reverse=True) and cursor is None
    rows, _ = list_page(build_filter(statuses=["notified"], task_types=["mail"]), now=0)
    assert ids(rows) == [made["d"], made["b"]]
    rows, _ = list_page(build_filter(categories=["recoverable_network"], statuses=["scheduled", "exhausted"]), now=0)
    assert ids(rows) == [made["c"], made["a"]]


def test_grep_is_a_literal_substring_with_wildcards_escaped(seeded):
    store, made = seeded
    assert ids(list_page(build_filter(grep="100%"), now=0)[0]) == [made["b"]]
    assert ids(list_page(build_filter(grep="quota_"), now=0)[0]) == [made["b"]]  # "_" is not "any character"
    assert ids(list_page(build_filter(grep="TIMEOUT"), now=0)[0]) == [made["a"]]
    assert list_page(build_filter(grep="(a+)+$"), now=0)[0] == []  # no regex: nothing to blow up
    assert list_page(build_filter(grep="\x00"), now=0)[0] == []  # a NUL once ended the LIKE pattern: everything
    assert like_literal("a\\b%_") == "%a\\\\b\\%\\_%"


def test_cursor_pages_are_stable_while_tasks_arrive(store):
    first = [add(store, "sync", f"error {i}") for i in range(5)]
    page, cursor = list_page(build_filter(limit=2), now=0)
    assert ids(page) == first[:-3:-1] and cursor == str(first[3])
    add(store, "sync", "a newer one")  # must not shift the next page
    page, cursor = list_page(build_filter(limit=2, cursor=cursor), now=0)
    assert ids(page) == [first[2], first[1]]
    page, cursor = list_page(build_filter(limit=2, cursor=cursor), now=0)
    assert ids(page) == [first[0]] and cursor is None


def test_since_counts_back_from_now(store):
    clock = ManualClock()
    old = add(store, "sync", "old", created=clock.now() - 3 * 3600)
    new = add(store, "sync", "new", created=clock.now() - 60)
    assert ids(list_page(build_filter(since="2h"), clock.now())[0]) == [new]
    assert ids(list_page(build_filter(since="4h"), clock.now())[0]) == [new, old]


def test_a_since_longer_than_a_century_means_every_task(store):
    """It was an OverflowError's traceback: now every task, as a century would list."""
    record_failure(store, "sync", "boom")
    assert len(list_page(build_filter(since="9999999999999999d"), ManualClock().now())[0]) == 1


@pytest.mark.parametrize("arguments", [
    {"statuses": ["bogus"]}, {"since": "two hours"}, {"limit": "0"}, {"limit": "501"}, {"cursor": "abc"},
    {"cursor": "1" * 19}, {"grep": "x" * 201},
])
def test_bad_filters_are_input_errors(arguments):
    with pytest.raises(InputError):
        build_filter(**arguments)


# A traceback of a task that failed in the courier's client: its first 300 characters are frames.
TRACEBACK = ("Traceback (most recent call last):\n"
             + "".join(f'  File "/srv/venv/lib/python3.11/site-packages/courier/client_{i}.py", line {100 + i}, in '
                       f"call_{i}\n    return self.session.request(method, url, timeout=self.timeout)\n"
                       for i in range(8))
             + "requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api.courier.example', port=443): "
               "Read timed out. (read timeout=10)")


@pytest.mark.parametrize("error, shown", [
    (TRACEBACK, "requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api.courier.example', port=443): "
                "Read timed out. (read timeout=10)"),
    ("Traceback (most recent call last):\n  File \"t.py\", line 3, in run\n    x()\nKeyError: 'order_id'",
     "KeyError: 'order_id'"),
    ("connection timeout " * 30, ("connection timeout " * 30)[:300]),  # no traceback: the head, as before
    # a Celery traceback whose tail is cut inside a frame: its source line is no part of the error
    (TRACEBACK.replace("requests.exceptions.ReadTimeout", "\n".join(
        ['  File "/srv/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task',
         "    R = retval = fun(*args, **kwargs)",
         '  File "/srv/venv/lib/python3.11/site-packages/celery/app/trace.py", line 736, in __protected_call__',
         "    return self.run(*args, **kwargs)", "TimeoutError"]), 1).replace(
        "TimeoutError: HTTPSConnectionPool(host='api.courier.example', port=443): Read timed out. (read timeout=10)",
        "TimeoutError: timed out connecting to api.courier.example:443"),
     "TimeoutError: timed out connecting to api.courier.example:443"),
    # an exception whose words run long (an HTTP body quoted): its line, not its first 20 characters
    (TRACEBACK.split("requests.")[0] + "RuntimeError: upstream refused the order: HTTP 400 " + "{\"code\": 1}" * 60,
     ("RuntimeError: upstream refused the order: HTTP 400 " + "{\"code\": 1}" * 60)[:300]),
    # ... after 200 frames, the tail holding no frame's end
    ("Traceback (most recent call last):\n" + '  File "/srv/app/m.py", line 1, in f\n    g()\n' * 200
     + "ValueError: " + "bad row " * 100, ("ValueError: " + "bad row " * 100)[:300]),
])
def test_a_listed_error_is_what_one_reads_first_a_traceback_s_exception_not_its_frames(store, error, shown):
    add(store, "sync", error)
    [row], _ = list_page(build_filter(), now=0)
    assert row["error"] == shown and "error_tail" not in row


# -- the command line --------------------------------------------------------------

def test_failured_list_prints_rows_and_json(tmp_path, store, cli):
    """The first listing is a real subprocess; the other options run in-process (cli_inprocess)."""
    env = {"FAILURE_DB": str(store.path), "FAILURE_CONFIG_DIR": str(write_config(tmp_path / "config"))}
    first = add(store, "sync", "connection timeout 1", "scheduled", "recoverable_network")
    second = add(store, "mail", "bad <b>json</b>", "notified", "unrecoverable_data")
    result = run_cli("list", "--status", "notified", "--status", "scheduled", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == [second, first]
    result = cli("list", "--type", "sync", "--grep", "timeout", "--json", "--limit", "1", env=env)
    data = json.loads(result.stdout)
    assert [t["id"] for t in data["tasks"]] == [first] and data["next_cursor"] is None
    result = cli("list", "--limit", "1", "--json", env=env)
    assert json.loads(result.stdout)["next_cursor"] == str(second)
    result = cli("list", "--status", "nope", env=env)
    assert result.returncode == 2 and "not a task status" in result.stderr
    add(store, "sync", TRACEBACK)
    result = cli("list", "--limit", "1", env=env)
    assert "\trequests.exceptions.ReadTimeout: HTTPSConnectionPool(" in result.stdout, result.stdout


# -- the HTTP API ------------------------------------------------------------------

@pytest.fixture
def api(tmp_path, store):
    snapshot = load_config(write_config(tmp_path / "config", main=HANDLER), "en")
    backend = Backend(store, load_settings({}), lambda: snapshot)
    server = ApiServer("127.0.0.1", 0, backend, token=TOKEN).start()
    yield f"http://127.0.0.1:{server.port}", store
    server.stop()


def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_get_tasks_filters_and_pages(api):
    base, store = api
    made = [add(store, "sync", f"connection timeout {i}", "notified", "recoverable_network") for i in range(3)]
    other = add(store, "mail", "not found", "manual", "unrecoverable_business")
    status, page = call(f"{base}/v1/tasks?status=notified&limit=2")
    assert status == 200 and [t["id"] for t in page["tasks"]] == made[:0:-1] and page["next_cursor"]
    status, page = call(f"{base}/v1/tasks?status=notified&limit=2&cursor={page['next_cursor']}")
    assert [t["id"] for t in page["tasks"]] == [made[0]] and page["next_cursor"] is None
    status, page = call(f"{base}/v1/tasks?category=unrecoverable_business&category=recoverable_network&type=mail")
    assert [t["id"] for t in page["tasks"]] == [other]
    status, page = call(f"{base}/v1/tasks?grep=timeout%202")
    assert [t["id"] for t in page["tasks"]] == [made[2]]


@pytest.mark.parametrize("query, field", [("colour=red", "colour"), ("since=1h&since=2h", "since"),
                                          ("limit=x", None), ("status=bogus", None), ("status=", None),
                                          ("category=2&category=", None)])
def test_get_tasks_refuses_bad_queries(api, query, field):
    status, error = call(f"{api[0]}/v1/tasks?{query}")
    assert status == 400 and error["error"] == "bad_request" and error.get("field") == field


def test_requeue_dry_run_changes_nothing_then_requeues(api):
    base, store = api
    task = add(store, "sync", "invalid api key", "notified", "unrecoverable_data")
    no_handler = add(store, "mail", "invalid api key", "notified", "unrecoverable_data")
    status, result = call(f"{base}/v1/tasks/requeue", {"category": "unrecoverable_data", "dry_run": True})
    assert status == 200 and result["dry_run"] is True
    assert [t["task_id"] for t in result["requeued"]] == [task]
    assert [t["task_id"] for t in result["skipped"]] == [no_handler]
    assert Task.get_by_id(task).status == "notified"
    status, result = call(f"{base}/v1/tasks/requeue", {"category": "unrecoverable_data", "since": "1h"})
    assert status == 200 and [t["task_id"] for t in result["requeued"]] == [task]
    assert Task.get_by_id(task).status == "scheduled"
    assert call(f"{base}/v1/tasks/requeue", {"status": ["running"]})[0] == 400
    assert call(f"{base}/v1/tasks/requeue", {"status": "notified"})[0] == 400


def test_resolve_a_list_reports_each_refusal(api):
    base, store = api
    open_one = add(store, "sync", "x", "notified")
    done = add(store, "sync", "y", "resolved")
    status, result = call(f"{base}/v1/tasks/resolve", {"task_ids": [open_one, done, 999999], "note": "by hand"})
    assert status == 200
    assert [t["task_id"] for t in result["resolved"]] == [open_one]
    assert {r["task_id"] for r in result["refused"]} == {done, 999999}
    assert Task.get_by_id(open_one).status == "resolved" and Task.get_by_id(open_one).note == "by hand"
    assert call(f"{base}/v1/tasks/resolve", {"task_ids": []})[0] == 400
    assert call(f"{base}/v1/tasks/resolve", {"task_ids": ["1"]})[0] == 400


def test_requeue_answers_a_page_at_a_time_and_its_cursor_leads_to_the_next(api):
    base, store = api
    made = [add(store, "sync", f"invalid api key {i}", "notified", "unrecoverable_data") for i in range(5)]
    filters = {"category": "unrecoverable_data", "dry_run": True}
    status, page = call(f"{base}/v1/tasks/requeue", {**filters, "limit": 2})
    assert status == 200 and [t["task_id"] for t in page["requeued"]] == made[:2] and page["next_cursor"]
    status, page = call(f"{base}/v1/tasks/requeue", {**filters, "limit": 2, "cursor": page["next_cursor"]})
    assert [t["task_id"] for t in page["requeued"]] == made[2:4]
    status, page = call(f"{base}/v1/tasks/requeue", {**filters, "limit": 2, "cursor": page["next_cursor"]})
    assert [t["task_id"] for t in page["requeued"]] == made[4:] and page["next_cursor"] is None
    status, page = call(f"{base}/v1/tasks/requeue", {"category": "unrecoverable_data", "limit": 3})
    assert [t["task_id"] for t in page["requeued"]] == made[:3] and page["next_cursor"] == str(made[2])
    assert [Task.get_by_id(i).status for i in made] == ["scheduled"] * 3 + ["notified"] * 2
    status, page = call(f"{base}/v1/tasks/requeue", {"category": "unrecoverable_data"})  # default: up to 1000
    assert [t["task_id"] for t in page["requeued"]] == made[3:] and page["next_cursor"] is None


@pytest.mark.parametrize("fields, field, words", [
    ({"limit": 1001}, "limit", "from 1 to 1000: page through more matches with cursor"),
    ({"limit": 0}, "limit", "from 1 to 1000"), ({"limit": "5"}, "limit", "must be a whole number"),
    ({"cursor": "abc"}, "cursor", "is not one this server gave"), ({"cursor": 5}, "cursor", "must be a string"),
])
def test_requeue_refuses_a_page_over_1000_or_a_cursor_it_did_not_give(api, fields, field, words):
    base, store = api
    task = add(store, "sync", "invalid api key", "notified", "unrecoverable_data")
    status, error = call(f"{base}/v1/tasks/requeue", fields)
    assert (status, error["error"], error.get("field")) == (400, "bad_request", field) and words in error["detail"]
    assert Task.get_by_id(task).status == "notified"


def test_cli_requeue_works_through_every_page_and_prints_the_total(tmp_path, store, cli):
    config = write_config(tmp_path / "config", main=HANDLER)
    env = {"FAILURE_DB": str(store.path), "FAILURE_CONFIG_DIR": str(config)}
    made = [add(store, "sync", f"invalid api key {i}", "notified", "unrecoverable_data")
            for i in range(REQUEUE_PAGE + 2)]
    dry = cli("requeue", "--category", "unrecoverable_data", "--dry-run", env=env)
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1] == f"{len(made)} task(s) would requeue, 0 skipped"
    result = cli("requeue", "--category", "unrecoverable_data", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert [t["task_id"] for t in json.loads(result.stdout)["requeued"]] == made
    assert {Task.get_by_id(i).status for i in made} == {"scheduled"}


def test_resolving_a_recovered_task_is_refused_over_the_api_and_the_cli(api, tmp_path, cli):
    base, store = api
    recovered = add(store, "sync", "connection timeout", "recovered", "recoverable_network")
    status, result = call(f"{base}/v1/tasks/resolve", {"task_ids": [recovered]})
    assert status == 200 and result["resolved"] == []
    assert result["refused"] == [{"task_id": recovered, "reason": f"task {recovered} is already recovered: "
                                  "a retry finished it, there is nothing to resolve"}]
    refused = cli("resolve", str(recovered), env={"FAILURE_DB": str(store.path)})
    assert refused.returncode == 1 and f"task {recovered} is already recovered" in refused.stderr
    assert Task.get_by_id(recovered).status == "recovered"  # the analysis still counts it as a recovery


# -- a category or status that matches nothing by a typo ----------------------------

def test_cli_refuses_a_category_no_task_can_have_and_a_status_requeue_cannot_take(tmp_path, store, cli):
    config = write_config(tmp_path / "config", main=HANDLER)
    env = {"FAILURE_DB": str(store.path), "FAILURE_CONFIG_DIR": str(config)}
    add(store, "sync", "invalid api key", "notified", "unrecoverable_data")
    result = run_cli("requeue", "--category", "unrecoverable_dta", "--since", "2h", "--dry-run", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [("failured requeue: no category 'unrecoverable_dta': use one of "
                                           "unrecoverable_data, unrecoverable_business, recoverable_network, unknown")]
    result = cli("list", "--category", "unrecoverable_dta", env=env)
    assert result.returncode == 2 and "no category 'unrecoverable_dta': use one of unrecoverable_data" in result.stderr
    for status in ("bogus", "running"):
        result = cli("requeue", "--status", status, "--dry-run", env=env)
        assert result.returncode == 2 and result.stderr.splitlines() == [
            f"failured requeue: status '{status}' cannot be requeued: use notified, exhausted, manual, resolved"]


def test_cli_keeps_filtering_by_a_category_only_older_tasks_have(tmp_path, store, cli):
    config = write_config(tmp_path / "config", main=HANDLER)
    env = {"FAILURE_DB": str(store.path), "FAILURE_CONFIG_DIR": str(config)}
    retired = add(store, "sync", "old error", "notified", "retired_category")  # its category left the config since
    add(store, "sync", "new error", "notified", "unrecoverable_data")
    result = cli("list", "--category", "retired_category", "--json", env=env)
    assert result.returncode == 0 and [t["id"] for t in json.loads(result.stdout)["tasks"]] == [retired]
    result = cli("requeue", "--category", "retired_category", "--dry-run", "--json", env=env)
    assert result.returncode == 0 and [t["task_id"] for t in json.loads(result.stdout)["requeued"]] == [retired]
    assert "retired_category" in cli("list", "--category", "typo", env=env).stderr  # named among the valid ones
    (config / "failured.toml").write_text("not_a_key = 1\n")  # a broken configuration still lists
    result = cli("list", "--category", "retired_category", "--json", env=env)
    assert result.returncode == 0 and [t["id"] for t in json.loads(result.stdout)["tasks"]] == [retired]


def test_get_tasks_and_requeue_refuse_a_category_no_task_can_have(api):
    base, store = api
    retired = add(store, "sync", "old error", "notified", "retired_category")
    for status, error in (call(f"{base}/v1/tasks?category=recoverable_network&category=unrecoverable_dta"),
                          call(f"{base}/v1/tasks/requeue", {"category": "unrecoverable_dta", "dry_run": True})):
        assert status == 409 and error["error"] == "unknown_category"  # as a label's: schema-valid, not known
        assert error["detail"] == ("no category 'unrecoverable_dta': use one of unrecoverable_data, "
                                   "unrecoverable_business, recoverable_network, unknown, retired_category")
    status, page = call(f"{base}/v1/tasks?category=retired_category")
    assert status == 200 and [t["id"] for t in page["tasks"]] == [retired]
    status, result = call(f"{base}/v1/tasks/requeue", {"category": "retired_category", "dry_run": True})
    assert status == 200 and [t["task_id"] for t in result["requeued"]] == [retired]
    status, page = call(f"{base}/v1/tasks?category=unrecoverable_business")  # configured, no task yet: just empty
    assert status == 200 and page["tasks"] == []
