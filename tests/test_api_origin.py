"""Who may call the API and the console: Host names (DNS rebinding), Origins (cross-site posts), request sizes.

Real servers on 127.0.0.1 and real HTTP requests; the Host and Origin headers are what a browser on a
hostile page would send.
"""

import http.client
import json
import logging
import re
from urllib.parse import urlencode

import pytest
from conftest import SMALL_PATTERNS, write_config

from failured.api import ApiServer
from failured.backend import Backend
from failured.config import load_config
from failured.intake import record_failure
from failured.settings import load_settings
from failured.store import Task

TOKEN = "origin-token-0123456789"
HANDLERS = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\ntimeout = 10\n'
FORM = "application/x-www-form-urlencoded"
REBOUND = "attacker.example"


@pytest.fixture
def serve(tmp_path, store):
    config = write_config(tmp_path / "config", SMALL_PATTERNS, HANDLERS)
    settings = load_settings({"FAILURE_CONFIG_DIR": str(config), "FAILURE_LOG_DIR": str(tmp_path / "logs"),
                              "FAILURE_LANG": "en"})
    snapshot = load_config(config, "en")
    servers = []

    def start(token=None, host="127.0.0.1"):
        server = ApiServer(host, 0, Backend(store, settings, lambda: snapshot), token=token).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Answer:
    def __init__(self, response):
        self.status, self.headers, self.raw = response.status, response.headers, response.read()
        is_json = self.headers.get("Content-Type", "").startswith("application/json")
        self.data = json.loads(self.raw) if is_json and self.raw else None
        self.text = self.raw.decode("utf-8")

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


def send(port, method, path, body=None, headers=None, host=None):
    """One request on its own connection; ``host`` replaces the Host header http.client would send."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        all_headers = {**({"Host": host} if host is not None else {}), **(headers or {})}
        if body is not None:
            all_headers["Content-Length"] = str(len(body))
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        return Answer(conn.getresponse())
    finally:
        conn.close()


def scheduled_task(store):
    """A task that recover would retry at once: scheduled, of a type with a handler."""
    task_id = record_failure(store, "sync", "connection timeout", source="cli")
    Task.update(status="scheduled", category="recoverable_network").where(Task.id == task_id).execute()
    return task_id


def events(store, task_id):
    return [row[0] for row in store.rows("SELECT event FROM task_events WHERE task_id = ? ORDER BY id", task_id)]


# -- DNS rebinding: without a token, only loopback names are served ---------------------------------

@pytest.mark.parametrize("method, path", [("GET", "/v1/tasks?limit=1"), ("GET", "/v1/status"), ("GET", "/ui/"),
                                          ("POST", "/v1/tasks/1/recover"), ("GET", "/healthz")])
def test_without_a_token_a_rebound_host_name_is_421_naming_it(serve, store, method, path):
    record_failure(store, "sync", "secret payload inside", source="cli", payload='{"card": "4111-1111-1111-1111"}')
    server = serve()
    answer = send(server.port, method, path, b"" if method == "POST" else None, host=f"{REBOUND}:{server.port}")
    assert answer.status == 421, answer
    assert answer.data["error"] == "misdirected_request"
    assert f"'{REBOUND}:{server.port}'" in answer.data["detail"] and "FAILURE_API_TOKEN" in answer.data["detail"]
    assert "Set-Cookie" not in answer.headers  # no console session for the rebound page
    assert b"4111-1111" not in answer.raw and b"secret payload" not in answer.raw


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost", "127.8.9.10:{port}",
                                  "[::1]:{port}", "[::ffff:127.0.0.1]", None])
def test_without_a_token_loopback_names_are_served(serve, host):
    server = serve()
    answer = send(server.port, "GET", "/v1/tasks?limit=1", host=host and host.format(port=server.port))
    assert answer.status == 200, answer


@pytest.mark.parametrize("host", ["localhost.attacker.example", "127.0.0.1.nip.io", "127.1", "", "[::1", "a:b:c"])
def test_without_a_token_names_that_only_look_local_are_refused(serve, host):
    server = serve()
    assert send(server.port, "GET", "/v1/tasks?limit=1", host=host).status == 421


def test_the_bound_address_is_served_by_its_own_name(serve):
    server = serve(host="localhost")
    assert send(server.port, "GET", "/v1/status", host=f"localhost:{server.port}").status == 200


def test_with_a_token_any_host_name_is_served_and_the_token_is_what_counts(serve):
    server = serve(token=TOKEN)
    host = f"failured.example.com:{server.port}"  # behind a reverse proxy
    assert send(server.port, "GET", "/v1/status", host=host).status == 401
    answer = send(server.port, "GET", "/v1/status", host=host, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 200


# -- the console: no session for a rebound page, and its Origin checked against the allowed names ----

def console_session(port):
    """(cookie, csrf) of a console session started by itself (no token)."""
    answer = send(port, "GET", "/ui/")
    cookie = re.match(r"failured_session=([^;]+)", answer.headers["Set-Cookie"]).group(1)
    csrf = re.search(r'name="csrf" value="([^"]+)"', answer.text).group(1)
    return cookie, csrf


def notified_task(store):
    task_id = record_failure(store, "sync", "x", source="cli")
    Task.update(status="notified", category="unrecoverable_data").where(Task.id == task_id).execute()
    return task_id


def test_a_rebound_page_cannot_resolve_a_task_through_the_console(serve, store):
    server = serve()
    task_id = notified_task(store)
    cookie, csrf = console_session(server.port)
    form = urlencode({"csrf": csrf, "note": "n"}).encode()
    headers = {"Content-Type": FORM, "Cookie": f"failured_session={cookie}"}
    for host, origin in [(f"{REBOUND}:{server.port}", f"http://{REBOUND}:{server.port}"),  # Origin == Host
                         (f"127.0.0.1:{server.port}", f"http://{REBOUND}:{server.port}"),
                         (f"127.0.0.1:{server.port}", "http://localhost:3000"),  # another local site
                         (f"127.0.0.1:{server.port}", "null")]:
        answer = send(server.port, "POST", f"/ui/tasks/{task_id}/resolve", form, {**headers, "Origin": origin},
                      host=host)
        assert answer.status in (403, 421), (host, origin, answer)
    assert Task.get_by_id(task_id).status == "notified"
    own = send(server.port, "POST", f"/ui/tasks/{task_id}/resolve", form,
               {**headers, "Origin": f"http://127.0.0.1:{server.port}"}, host=f"127.0.0.1:{server.port}")
    assert own.status == 303
    assert Task.get_by_id(task_id).status == "resolved"


# -- cross-site form posts to /v1 -------------------------------------------------------------------

@pytest.mark.parametrize("headers, status", [
    ({"Content-Type": FORM}, 415),  # a form posted from anywhere, with no Origin (an old browser)
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Origin": "http://evil.example"}, 403),
    ({"Content-Type": FORM, "Origin": "http://evil.example"}, 403),
    ({"Content-Type": "application/json", "Origin": "null"}, 403),
])
def test_a_cross_site_form_post_does_not_retry_a_task(serve, store, headers, status):
    server = serve()
    task_id = scheduled_task(store)
    answer = send(server.port, "POST", f"/v1/tasks/{task_id}/recover", b"", headers)
    assert answer.status == status, answer
    assert answer.data["error"] == {403: "forbidden", 415: "unsupported_media_type"}[status]
    assert events(store, task_id) == ["reported"]


def test_recover_without_a_body_or_a_type_still_works_as_the_readme_shows(serve, store):
    server = serve()
    task_id = scheduled_task(store)
    assert send(server.port, "POST", f"/v1/tasks/{task_id}/recover", b"").status == 200  # curl -X POST
    assert send(server.port, "POST", f"/v1/tasks/{task_id}/recover").status == 200  # no Content-Length at all
    same_origin = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{server.port}"}
    assert send(server.port, "POST", f"/v1/tasks/{task_id}/recover", b"{}", same_origin).status == 200
    assert events(store, task_id) == ["reported"] + ["recover_requested"] * 3


def test_with_a_token_an_empty_form_body_is_415_too(serve, store):
    server = serve(token=TOKEN)
    task_id = scheduled_task(store)
    answer = send(server.port, "POST", f"/v1/tasks/{task_id}/recover", b"",
                  {"Content-Type": FORM, "Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 415
    assert events(store, task_id) == ["reported"]


# -- too many query or form fields: 400, not 500 and a traceback --------------------------------------

def test_too_many_query_fields_on_the_api_are_400_without_traceback(serve, caplog):
    server = serve()
    with caplog.at_level(logging.ERROR):
        answer = send(server.port, "GET", "/v1/tasks?" + "&".join(["status=notified"] * 201))
    assert answer.status == 400, answer
    assert answer.data["error"] == "bad_request" and "more than 200" in answer.data["detail"]
    assert not caplog.records
    assert send(server.port, "GET", "/v1/tasks?" + "&".join(["limit=5"] * 200)).data["detail"] == (
        "parameter 'limit' is given 200 times: give it once")  # 200 fields are read, and judged


def test_too_many_fields_on_console_pages_and_forms_are_400_without_traceback(serve, caplog):
    server = serve(token=TOKEN)
    login = urlencode({f"f{i}": "1" for i in range(60)}).encode()
    with caplog.at_level(logging.ERROR):
        refused_login = send(server.port, "POST", "/ui/login", login, {"Content-Type": FORM})
        answer = send(server.port, "POST", "/ui/login", urlencode({"token": TOKEN}).encode(), {"Content-Type": FORM})
        cookie = re.match(r"failured_session=([^;]+)", answer.headers["Set-Cookie"]).group(1)
        page = send(server.port, "GET", "/ui/tasks?" + "&".join(["status=notified"] * 101),
                    headers={"Cookie": f"failured_session={cookie}"})
    assert refused_login.status == 400 and "more than 50" in refused_login.text, refused_login
    assert "Set-Cookie" not in refused_login.headers
    assert page.status == 400 and "more than 100" in page.text, page
    assert page.headers["Content-Type"].startswith("text/html")
    assert not caplog.records
