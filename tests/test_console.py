"""The web console over HTTP, without a browser: login, session cookie, CSRF, CSP, escaping, the workbench."""

import http.client
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest

from conftest import write_config
from failured.api import ApiServer
from failured.backend import Backend
from failured.config import load_config
from failured.web import workbench
from failured.intake import record_failure
from failured.settings import load_settings
from failured.store import Task

TOKEN = "console-token-0123456789"
XSS = "<script>alert(1)</script><img src=x onerror=alert(1)>"


class Client:
    """Plain HTTP/1.1 with one cookie jar slot: answers are (status, headers, text); redirects are not followed."""

    def __init__(self, port):
        self.port, self.cookie = port, None

    def request(self, method, path, form=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = urlencode(form).encode() if form is not None else None
        sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if self.cookie:
            sent["Cookie"] = f"failured_session={self.cookie}"
        connection.request(method, path, body, sent)
        answer = connection.getresponse()
        text = answer.read().decode("utf-8")
        cookie = answer.getheader("Set-Cookie") or ""
        if match := re.match(r"failured_session=([^;]*)", cookie):
            self.cookie = match.group(1) or None
        connection.close()
        return answer.status, answer, text

    def csrf(self, path="/ui/"):
        return re.search(r'name="csrf" value="([^"]+)"', self.request("GET", path)[2]).group(1)


def make_server(tmp_path, store, token=TOKEN, **env):
    config = write_config(tmp_path / "config")
    settings = load_settings({"FAILURE_CONFIG_DIR": str(config), "FAILURE_LOG_DIR": str(tmp_path / "logs"), **env})
    snapshot = load_config(config, settings.lang)
    return ApiServer("127.0.0.1", 0, Backend(store, settings, lambda: snapshot), token=token).start()


@pytest.fixture
def console(tmp_path, store):
    server = make_server(tmp_path, store)
    client = Client(server.port)
    yield client, store, tmp_path / "config"
    server.stop()


def logged_in(client):
    status, answer, _ = client.request("POST", "/ui/login", {"token": TOKEN})
    assert status == 303 and answer.getheader("Location") == "/ui/"
    return client


def test_pages_need_the_token_and_the_cookie_is_httponly_and_strict(console):
    client, _, _ = console
    status, answer, _ = client.request("GET", "/ui/tasks")
    assert status == 303 and answer.getheader("Location") == "/ui/login"
    assert client.request("POST", "/ui/login", {"token": "wrong"})[0] == 401 and client.cookie is None
    status, answer, _ = client.request("POST", "/ui/login", {"token": TOKEN})
    cookie = answer.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert client.request("GET", "/ui/tasks")[0] == 200


def test_every_page_has_a_strict_csp_and_no_inline_script(console):
    client, store, _ = console
    task_id = record_failure(store, "sync", "connection timeout", source="cli")
    logged_in(client)
    for path in ("/ui/", "/ui/tasks", f"/ui/tasks/{task_id}", "/ui/unknown?pattern=timeout", "/ui/notifications"):
        status, answer, text = client.request("GET", path)
        assert status == 200, path
        policy = answer.getheader("Content-Security-Policy")
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
        assert answer.getheader("X-Frame-Options") == "DENY"
        assert re.findall(r"<script[^>]*>", text) == ['<script src="/ui/static/console.js" defer>']
        assert " style=" not in text and "<style" not in text
    status, answer, text = client.request("GET", "/ui/static/console.js")
    assert status == 200 and answer.getheader("Content-Type").startswith("text/javascript")


def test_values_from_a_failure_are_escaped(console):
    client, store, _ = console
    task_id = record_failure(store, XSS, XSS, source="cli", payload='{"x": "</pre><script>alert(2)</script>"}')
    logged_in(client)
    for path in ("/ui/tasks", f"/ui/tasks/{task_id}", f"/ui/tasks?grep={XSS[:8]}"):
        text = client.request("GET", path)[2]
        assert "<img src=x" not in text and "<script>alert" not in text and "&lt;img src=x" in text


def test_times_on_the_task_pages_say_they_are_utc(console):
    client, store, _ = console
    task_id = record_failure(store, "sync", "connection timeout", source="cli")
    logged_in(client)
    for path in ("/ui/tasks", f"/ui/tasks/{task_id}"):
        assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", client.request("GET", path)[2]), path


def test_the_task_list_names_a_category_by_its_label(console):
    client, store, _ = console
    task_id = record_failure(store, "sync", "malformed json", source="cli")
    Task.update(status="notified", category="unrecoverable_data").where(Task.id == task_id).execute()
    logged_in(client)
    page = client.request("GET", "/ui/tasks")[2]
    assert '<td title="unrecoverable_data">不可恢复数据错误</td>' in page


def test_a_post_needs_the_sessions_csrf_token_and_its_own_origin(console):
    client, store, _ = console
    task_id = record_failure(store, "sync", "x", source="cli")
    Task.update(status="notified", category="unrecoverable_data").where(Task.id == task_id).execute()
    logged_in(client)
    assert client.request("POST", f"/ui/tasks/{task_id}/resolve", {"note": "n"})[0] == 403
    assert client.request("POST", f"/ui/tasks/{task_id}/resolve", {"note": "n", "csrf": "forged"})[0] == 403
    csrf = client.csrf()
    assert client.request("POST", f"/ui/tasks/{task_id}/resolve", {"csrf": csrf},
                          {"Origin": "http://evil.example"})[0] == 403
    assert Task.get_by_id(task_id).status == "notified"
    status, answer, _ = client.request("POST", f"/ui/tasks/{task_id}/resolve", {"note": "n", "csrf": csrf})
    assert status == 303 and answer.getheader("Location") == f"/ui/tasks/{task_id}"
    assert Task.get_by_id(task_id).status == "resolved"


def test_without_a_token_a_session_starts_by_itself(tmp_path, store):
    server = make_server(tmp_path, store, token=None, FAILURE_LANG="en")
    try:
        client = Client(server.port)
        status, _, text = client.request("GET", "/ui/")
        assert status == 200 and client.cookie and "Overview" in text
        assert client.request("POST", "/ui/logout", {})[0] == 403  # still no POST without the token
    finally:
        server.stop()


def seed_unknown(store, count=3):
    made = []
    for i in range(count):
        task_id = record_failure(store, "sync", f"frobnicator exploded in bay {i}", source="cli")
        Task.update(status="notified", category="unknown", fingerprint="fp-frob",
                    error_template="frobnicator exploded in bay <num>").where(Task.id == task_id).execute()
        made.append(task_id)
    stolen = record_failure(store, "sync", "frobnicator connection timeout", source="cli")
    Task.update(status="scheduled", category="recoverable_network").where(Task.id == stolen).execute()
    return made, stolen


def test_workbench_previews_and_saves_a_valid_pattern_file(console):
    client, store, config = console
    made, stolen = seed_unknown(store)
    logged_in(client)
    text = client.request("GET", "/ui/unknown?" + urlencode({"pattern": "frobnicator", "category": "unrecoverable_data"}))[2]
    assert re.search(r'id="matched-count">3<', text) and re.search(r'id="stolen-count">1<', text)
    assert "frobnicator exploded in bay &lt;num&gt;" in text  # the template, with its samples
    bad = client.request("GET", "/ui/unknown?" + urlencode({"pattern": "a(?=b)"}))[2]
    assert 'id="bench-problem"' in bad and "RE2" in bad
    csrf = client.csrf()
    status, _, _ = client.request("POST", "/ui/unknown/save", {"csrf": csrf, "pattern": r"frobnicator\s+exploded",
                                                               "category": "unrecoverable_data", "days": "7"})
    assert status == 303
    saved = list((config / "patterns").glob("60-console-*.toml"))
    assert len(saved) == 1
    snapshot = load_config(config, "en")
    assert snapshot.classifier.classify("frobnicator exploded in bay 7", None, "sync").category == "unrecoverable_data"


def test_a_preview_stops_at_its_time_budget_and_says_how_many_it_looked_at(console, monkeypatch):
    """A pattern RE2 matches slowly (".{1000}x.{1000}y": a second on a 60 KB message) cannot hold a request for
    long: what the budget leaves is not looked at, and the page says it checked the newest 0 of 3."""
    client, store, _ = console
    seed_unknown(store)
    logged_in(client)
    monkeypatch.setattr(workbench, "PREVIEW_SECONDS", 0.0)
    text = client.request("GET", "/ui/unknown?" + urlencode({"pattern": "frobnicator", "category": "unrecoverable_data"}))[2]
    assert re.search(r'id="matched-count">0</span> / 0<', text)
    assert "只检查了最近 7 天中最新的 0 条（共 3 条）" in text


def test_workbench_refuses_what_the_loader_would_refuse(console):
    client, store, config = console
    logged_in(client)
    csrf = client.csrf()
    for pattern, category in (("x(?=y)", "unrecoverable_data"), ("fine", "no_such_category"), ("fine", "unknown"),
                              (".", "unrecoverable_data")):  # a catch-all would decide every failure
        client.request("POST", "/ui/unknown/save", {"csrf": csrf, "pattern": pattern, "category": category})
        page = client.request("GET", "/ui/unknown")[2]
        assert 'class="flash bad"' in page, (pattern, category)
        if category == "no_such_category":  # said as it is, naming no file that was never written
            assert "no_such_category&#x27; to write a pattern for" in page
            assert "60-console-" not in page
    assert not list((config / "patterns").glob("60-console-*"))


def test_a_preview_for_a_category_the_configuration_lacks_says_so(console):
    client, _, _ = console
    logged_in(client)
    status, _, page = client.request("GET", "/ui/unknown?" + urlencode({"pattern": "frob", "category": "nope"}))
    assert status == 400 and "nope&#x27; to write a pattern for: choose one of" in page


def test_pattern_writes_can_be_switched_off(tmp_path, store):
    server = make_server(tmp_path, store, FAILURE_CONSOLE_PATTERN_WRITES="false")
    try:
        client = logged_in(Client(server.port))
        page = client.request("GET", "/ui/unknown?pattern=frob")[2]
        assert 'id="save"' not in page
        client.request("POST", "/ui/unknown/save", {"csrf": client.csrf(), "pattern": "frob",
                                                    "category": "unrecoverable_data"})
        assert not list(Path(tmp_path, "config", "patterns").glob("60-console-*"))
    finally:
        server.stop()


@pytest.fixture
def unwritable():
    """``unwritable(directory)``: no process may write into it any more, root included (chattr +i, as chmod
    does not stop root; chmod a-w for anyone else); undone afterwards so the test's directory can go."""
    undo = []

    def make(directory):
        if os.geteuid() != 0:
            directory.chmod(0o555)
            undo.append(lambda: directory.chmod(0o755))
            return
        if not shutil.which("chattr"):
            pytest.skip("no chattr here: nothing else stops root writing into a directory")
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"chattr +i {directory}: {made.stderr.strip()} (a filesystem without the attribute?)")
        undo.append(lambda: subprocess.run(["chattr", "-i", str(directory)], check=True))

    yield make
    for step in undo:
        step()


def test_a_config_directory_the_daemon_cannot_write_is_said_up_front_and_a_save_says_why(console, unwritable,
                                                                                        caplog):
    client, store, config = console
    seed_unknown(store)
    logged_in(client)
    csrf = client.csrf()
    patterns = config / "patterns"
    before = sorted(p.name for p in patterns.iterdir())
    unwritable(patterns)
    page = client.request("GET", "/ui/unknown?" + urlencode({"pattern": "frobnicator",
                                                             "category": "unrecoverable_data"}))[2]
    assert 'id="writes-off"' in page and f"cannot write {patterns}: no write access" in page
    assert 'id="save"' not in page and re.search(r'id="matched-count">3<', page)  # previews still work
    with caplog.at_level(logging.INFO, logger="failured"):  # a Save sent from a page loaded before
        status, answer, page = client.request("POST", "/ui/unknown/save", {
            "csrf": csrf, "pattern": r"frobnicator\s+exploded", "category": "unrecoverable_data", "days": "7"})
    assert status == 503 and answer.getheader("Content-Type").startswith("text/html")
    assert re.search(rf"cannot write {re.escape(str(patterns))}/60-console-[^:]+\.toml: "
                     "(Operation not permitted|Permission denied) — the daemon&#x27;s user needs write access to the config directory, or set "
                     "FAILURE_CONSOLE_PATTERN_WRITES=false", page)
    assert 'value="frobnicator\\s+exploded"' in page  # the workbench again, the pattern kept
    assert sorted(p.name for p in patterns.iterdir()) == before
    logged = [r for r in caplog.records if r.name.startswith("failured")]
    assert len(logged) == 1 and logged[0].exc_info is None and "cannot write" in logged[0].getMessage()


def test_a_category_filter_no_task_can_have_shows_why_not_an_empty_list(console):
    client, store, _ = console
    record_failure(store, "sync", "x", source="cli")
    logged_in(client)
    status, _, page = client.request("GET", "/ui/tasks?category=unrecoverable_dta")
    assert status == 400 and 'id="no-tasks"' not in page
    assert "no category &#x27;unrecoverable_dta&#x27;: use one of unrecoverable_data" in page
    assert client.request("GET", "/ui/tasks?category=unrecoverable_data")[0] == 200


def test_the_chinese_console_names_states_and_categories_in_chinese(console):
    client, store, _ = console
    task_id = record_failure(store, "sync", "x", source="cli")
    store.execute("UPDATE tasks SET status = 'notified', category = 'unrecoverable_data' WHERE id = ?", (task_id,))
    logged_in(client)
    page = client.request("GET", f"/ui/tasks/{task_id}")[2]
    assert '<dd id="task-2">已通知</dd>' in page and "不可恢复数据错误 (unrecoverable_data)" in page
    assert ">error_type<" not in page
    listing = client.request("GET", "/ui/tasks")[2]
    assert 'value="notified"> 已通知</label>' in listing and '">已通知</td>' in listing


def test_a_filter_it_cannot_read_is_said_on_the_tasks_page_with_the_form_as_typed(console):
    client, store, _ = console
    logged_in(client)
    status, _, page = client.request("GET", "/ui/tasks?since=2x&type=sync")
    assert status == 400 and 'id="filter-error"' in page and "2x" in page
    assert 'id="filters"' in page and 'name="since" value="2x"' in page and 'name="type" value="sync"' in page
    assert '<a href="/ui/tasks" class="on">' in page  # the tab it is on, not the overview


def test_send_again_puts_a_failed_notification_back_to_pending(console):
    client, store, _ = console
    store.db.execute_sql("INSERT INTO notifications (created_at, audience, kind, title, body, status, channel, "
                         "attempts, last_error) VALUES ('2026-01-01 00:00:00.000', 'admin', 'task', 't', 'b', "
                         "'failed', 'ops', 5, 'HTTP 500')")
    logged_in(client)
    page = client.request("GET", "/ui/notifications")[2]
    assert "HTTP 500" in page
    assert client.request("POST", "/ui/notifications/1/resend", {"csrf": client.csrf()})[0] == 303
    assert store.db.execute_sql("SELECT status, attempts FROM notifications").fetchall() == [("pending", 0)]
    assert client.request("POST", "/ui/notifications/1/resend", {"csrf": client.csrf()})[0] == 303  # pending now
    page = client.request("GET", "/ui/notifications")[2]
    assert "only a notification that failed can be sent again" in page or "只有发送失败的通知才能重新发送" in page


def test_a_label_says_the_category_chosen_even_when_the_task_keeps_its_course(console):
    client, store, _ = console
    task_id = record_failure(store, "sync", "x", source="cli")
    store.execute("UPDATE tasks SET status = 'resolved', category = 'unrecoverable_data' WHERE id = ?", (task_id,))
    logged_in(client)
    status, _, _ = client.request("POST", f"/ui/tasks/{task_id}/label",
                                  {"csrf": client.csrf(), "category": "recoverable_network"})
    page = client.request("GET", f"/ui/tasks/{task_id}")[2]
    assert status == 303 and ("已标注为 可恢复网络错误 (recoverable_network)" in page
                              or "Labelled Recoverable network error (recoverable_network)" in page)


def test_a_long_traceback_comes_after_the_classification_and_actions_and_only_once(console):
    client, store, _ = console
    frames = '  File "/srv/app/m.py", line 1, in f\n    g()\n' * 200
    task_id = record_failure(store, "sync", f"Traceback (most recent call last):\n{frames}ValueError: bad row",
                             source="cli")
    logged_in(client)
    page = client.request("GET", f"/ui/tasks/{task_id}")[2]
    assert page.index('id="label-form"') < page.index('id="error-text"')
    assert 200 <= page.count('line 1, in f') < 210  # the error's box holds it whole; the reported event a clip


def test_the_label_form_starts_with_no_category_chosen(console):
    """A click on Label without a choice must not teach the model the category the task has now."""
    client, store, _ = console
    task_id = record_failure(store, "sync", "frobnicator exploded", source="cli")
    logged_in(client)
    page = client.request("GET", f"/ui/tasks/{task_id}")[2]
    form = page[page.index('id="label-form"'):]
    form = form[:form.index("</form>")]
    assert '<option value="" selected disabled>' in form and form.count("selected") == 1
    assert '<select name="category" required>' in form
    status, _, _ = client.request("POST", f"/ui/tasks/{task_id}/label", {"csrf": client.csrf(), "category": ""})
    page = client.request("GET", f"/ui/tasks/{task_id}")[2]
    assert "choose the task&#x27;s right category" in page
    assert store.db.execute_sql("SELECT count(*) FROM labels").fetchone() == (0,)


def test_a_finished_task_offers_no_resolve(console):
    """A recovered or resolved task is finished: Resolve would only be refused (and a recovered task resolved
    would count as not recovered in the analysis)."""
    client, store, _ = console
    task_id = record_failure(store, "sync", "x", source="cli")
    logged_in(client)
    for status, offered in (("notified", True), ("recovered", False), ("resolved", False)):
        Task.update(status=status).where(Task.id == task_id).execute()
        page = client.request("GET", f"/ui/tasks/{task_id}")[2]
        assert ('id="resolve-form"' in page) is offered, status
        assert 'id="label-form"' in page
