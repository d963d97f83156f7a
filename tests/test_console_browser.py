"""The web console in a real browser (headless Chromium via Selenium) against a real `failured run`.

Skipped, saying why, where Debian's chromium or chromium-driver (or selenium) is absent. Every wait is
for an element, a row or a page state, with a deadline; never for time to pass. Every page is
screenshotted; with FAILURE_TEST_SCREENSHOTS=docs/screenshots the shots the README shows are refreshed
(a plain run keeps them in its tmp directory and leaves the working tree alone).
"""

import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from failured.clock import to_db_time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
try:
    from selenium import webdriver
    from selenium.common.exceptions import (NoAlertPresentException, StaleElementReferenceException,
                                            TimeoutException, WebDriverException)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
    MISSING = None
except ImportError:
    MISSING = "selenium is not installed (pip install -e .[test])"
if MISSING is None and not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    MISSING = "Chromium or its driver is absent (apt-get install chromium chromium-driver)"
# A browser run costs seconds: the console's pages read the API and store that test_api and test_console run
# on both stores, so the browser drives a SQLite daemon only.
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
              pytest.mark.sqlite_suffices("the console's pages over the API, run on both stores in test_api "
                                          "and test_console")]

TOKEN = "console-browser-token-0123456789"
SHOTS = Path(os.environ["FAILURE_TEST_SCREENSHOTS"]) if os.environ.get("FAILURE_TEST_SCREENSHOTS") else None
# A bound on waits for the daemon, not a pace: a reload after a label retrains the model (a few
# CPU-seconds), which on a loaded 2-core machine can take half a minute.
DEADLINE = 120
HANDLER = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\ntimeout = 10\n'
XSS = "<img src=x onerror=alert(1)>"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def daemon(daemon_factory):
    port = free_port()
    daemon = daemon_factory(HANDLER, FAILURE_HTTP_ADDR=f"127.0.0.1:{port}", FAILURE_API_TOKEN=TOKEN).start()
    daemon.base = f"http://127.0.0.1:{port}"
    return daemon


@pytest.fixture
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or driver
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--lang=zh-CN"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def api(daemon, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(daemon.base + path, data, method=method, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=DEADLINE) as answer:
        return json.loads(answer.read())


def report(daemon, task_type, error):
    return api(daemon, "POST", "/v1/failures", {"task_type": task_type, "error": error})["task_id"]


def wait_status(daemon, task_id, wanted):
    return daemon.wait_for("SELECT status FROM tasks WHERE id = ?", lambda rows: rows and rows[0][0] in wanted,
                           DEADLINE, task_id)


def shot(driver, name, directory=None):
    target = SHOTS or directory or Path(tempfile.gettempdir()) / "failured-console-shots"
    target.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target / f"{name}.png"))


def element(driver, css):
    try:
        return WebDriverWait(driver, DEADLINE).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))
    except TimeoutException:
        raise AssertionError(f"no {css} on {driver.current_url}: {driver.page_source[:3000]}") from None


def submit(driver, button):
    """Click a form's button and wait until the page before is gone: until then its own elements would answer
    any wait (the label's flash for the resolve, the unfiltered rows for the filter)."""
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, DEADLINE).until(lambda _: gone(page))


def gone(element):
    """True once ``element``'s document is no longer the page's: a stale element, or Chrome's own word for it
    ("Node with given id does not belong to the document")."""
    try:
        element.is_enabled()
    except (StaleElementReferenceException, WebDriverException):
        return True
    return False


def press(driver, button):
    """Submit a form that changes something, and see the page it leads to say so."""
    submit(driver, button)
    return element(driver, ".flash.ok")


def no_alert(driver):
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def login(driver, daemon):
    driver.get(daemon.base + "/ui/")
    field = element(driver, "#login input[name=token]")
    shot(driver, "login")
    field.send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    element(driver, "#health")


def wait_page_state(driver, url, css, predicate):
    """Load ``url`` until the element ``css`` satisfies ``predicate`` (the daemon acts in its own time)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        driver.get(url)
        found = element(driver, css)
        if predicate(found):
            return found
        assert time.monotonic() < deadline, f"{url}: {css} never matched; last {found.get_attribute('outerHTML')}"
        time.sleep(0.2)  # poll interval, not a wait for time to pass


def test_console_end_to_end(daemon, browser):
    driver = browser
    data_error = report(daemon, "sync", "validation failed for order 42")
    # No rule knows them, and the model takes them for a programming error (0.74 in this 3-category config): sure
    # enough to overrule a pattern, but not the firm one the workbench saves below.
    unknown = [report(daemon, "sync", f"unexpected: frobnicator exploded in bay {i}") for i in range(3)]
    hostile = report(daemon, "mail", XSS)
    for task_id in (data_error, hostile, *unknown):
        wait_status(daemon, task_id, ("notified",))

    login(driver, daemon)
    assert "/ui/" in driver.current_url and no_alert(driver)
    element(driver, "svg.chart")
    shot(driver, "overview")

    # list and filter
    driver.get(daemon.base + "/ui/tasks")
    rows = driver.find_elements(By.CSS_SELECTOR, "#task-table tbody tr")
    assert {int(r.get_attribute("data-task-id")) for r in rows} >= {data_error, hostile, *unknown}
    grep = driver.find_element(By.CSS_SELECTOR, "#filters input[name=grep]")
    grep.send_keys("frobnicator")
    submit(driver, driver.find_element(By.CSS_SELECTOR, "#filters button"))
    element(driver, "#task-table")
    shown = [int(r.get_attribute("data-task-id")) for r in driver.find_elements(By.CSS_SELECTOR, "#task-table tbody tr")]
    assert shown == sorted(unknown, reverse=True)
    shot(driver, "tasks")

    # a hostile error text is text, never markup
    driver.get(f"{daemon.base}/ui/tasks/{hostile}")
    assert element(driver, "#error-text").text == XSS
    assert not driver.find_elements(By.CSS_SELECTOR, "main img") and no_alert(driver)

    # open a task, press recover (forced: it was notified) and see it run
    driver.get(f"{daemon.base}/ui/tasks/{data_error}")
    element(driver, "#recover-form input[name=force]").click()
    press(driver, driver.find_element(By.ID, "recover"))
    wait_status(daemon, data_error, ("recovered",))
    wait_page_state(driver, f"{daemon.base}/ui/tasks/{data_error}", "#facts",
                    lambda facts: facts.get_attribute("data-status") == "recovered")
    assert "recover_requested" in driver.find_element(By.ID, "events").text
    shot(driver, "task")

    # the workbench on the seeded unknown errors: preview, save, and the reload classifies them
    driver.get(daemon.base + "/ui/unknown")
    element(driver, "#templates")
    pattern = element(driver, "#pattern")
    pattern.send_keys(r"frobnicator\s+exploded")
    Select(driver.find_element(By.ID, "category")).select_by_value("unrecoverable_business")
    submit(driver, driver.find_element(By.ID, "preview"))  # not the live preview of a half-typed pattern
    assert element(driver, "#matched-count").text == "3"
    assert driver.find_element(By.ID, "stolen-count").text == "0"
    shot(driver, "unknown")
    press(driver, driver.find_element(By.ID, "save"))
    saved = list((Path(daemon.env["FAILURE_CONFIG_DIR"]) / "patterns").glob("60-console-*.toml"))
    assert len(saved) == 1
    deadline = time.monotonic() + DEADLINE
    while api(daemon, "POST", "/v1/failures", {"task_type": "sync", "error": "unexpected: frobnicator exploded in bay 9"}
              )["classification"]["category"] != "unrecoverable_business":
        assert time.monotonic() < deadline, "the saved pattern was never loaded"
        time.sleep(0.2)
    result = api(daemon, "POST", "/v1/tasks/requeue", {"category": "unknown", "dry_run": True})
    assert {t["task_id"] for t in result["requeued"]} >= set(unknown)

    # label, then resolve
    driver.get(f"{daemon.base}/ui/tasks/{hostile}")
    Select(element(driver, "#label-form select[name=category]")).select_by_value("unrecoverable_business")
    press(driver, driver.find_element(By.ID, "label"))
    assert daemon.query("SELECT category FROM labels WHERE task_id = ?", hostile) == [("unrecoverable_business",)]
    element(driver, "#resolve-form input[name=note]").send_keys("handled by hand")
    press(driver, driver.find_element(By.ID, "resolve"))
    assert daemon.query("SELECT status, note FROM tasks WHERE id = ?", hostile) == [("resolved", "handled by hand")]

    # notifications: a failed row, sent again
    daemon.query("INSERT INTO notifications (created_at, audience, kind, title, body, status, channel, attempts, "
                 "last_error) VALUES (?, 'admin', 'task', 'hello', 'body', 'failed', 'log', 5, "
                 "'HTTP 500 from the robot')", to_db_time(time.time()))  # a time either store reads
    row_id = daemon.query("SELECT max(id) FROM notifications WHERE status = 'failed'")[0][0]
    driver.get(daemon.base + "/ui/notifications")
    row = element(driver, f'tr[data-notification-id="{row_id}"]')
    assert "HTTP 500 from the robot" in row.text
    shot(driver, "notifications")
    press(driver, row.find_element(By.CSS_SELECTOR, "button.resend"))
    daemon.wait_for("SELECT status FROM notifications WHERE id = ?", lambda r: r[0][0] in ("pending", "sent"),
                    DEADLINE, row_id)

    # a phone-width view of the task list
    driver.set_window_size(390, 844)
    driver.get(daemon.base + "/ui/tasks")
    element(driver, "#task-table")
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 400
    shot(driver, "tasks-phone")


def test_a_post_without_the_csrf_token_is_refused(daemon, browser):
    task_id = report(daemon, "sync", "validation failed")
    wait_status(daemon, task_id, ("notified",))
    login(browser, daemon)
    cookie = browser.get_cookie("failured_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    request = urllib.request.Request(f"{daemon.base}/ui/tasks/{task_id}/resolve", data=b"note=x", method="POST",
                                     headers={"Cookie": f"failured_session={cookie['value']}",
                                              "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=DEADLINE)
    assert refused.value.code == 403
    assert daemon.query("SELECT status FROM tasks WHERE id = ?", task_id) == [("notified",)]
