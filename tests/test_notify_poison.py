"""One notification a channel cannot deliver never holds back the others; a channel-wide failure still pauses."""

import json
import sys

import pytest
from conftest import SMALL_PATTERNS, write_config
from robots import HookServer, RobotServer

from failured.config import load_config
from failured.notify.channels import (
    DingTalkChannel,
    EmailChannel,
    Message,
    WebhookChannel,
    WeComChannel,
)
from failured.notify.dispatcher import Dispatcher, Lane
from failured.notify.outbox import enqueue
from failured.settings import Settings
from failured.store import Notification

POISON = "evil\n\n**fake**"  # a task type with newlines, as reporters could send before intake refused them
MAIL = """
[channels.mail]
kind = "email"
host = "127.0.0.1"
port = {port}
starttls = false
sender = "failured@example.com"
to = ["ops@example.com"]

[[routes]]
audience = "admin"
channels = ["mail"]
"""
HOOK = """
[channels.hook]
kind = "webhook"
url = "{url}"

[[routes]]
channels = ["hook"]
"""
PYTHON = """
[channels.sms]
kind = "python"
target = "picky_gateway:send"

[[routes]]
channels = ["sms"]
"""
PICKY = """
SENT = []

def send(notification):
    if "evil" in notification["title"]:
        raise ValueError("the gateway cannot encode this text")
    SENT.append(notification["title"])
"""


class WafServer(HookServer):
    """A webhook behind a web application firewall: any body with ``evil`` in it is refused with a 403."""

    def handle(self, path, headers, raw):
        status, body, answer_headers = super().handle(path, headers, raw)
        return (403, b"<html>Request blocked by WAF</html>", {}) if b"evil" in raw else (status, body, answer_headers)


def setup(store, clock, tmp_path, main):
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, main), log_dir=tmp_path / "logs")
    dispatcher = Dispatcher(store, Settings(db=store.path, log_dir=tmp_path / "logs"), clock, lambda: snapshot)
    return snapshot, dispatcher


def lane(dispatcher, name, clock):
    result = Lane(name, dispatcher)
    result._load_history(clock.now())
    return result


def notify(store, snapshot, clock, title, task_type="sync"):
    enqueue(store, snapshot, clock.now(), "admin", "task", title, f"**{title}**\n- body", category="unknown",
            task_type=task_type, fingerprint=f"fp-{title}-{clock.now()}")


def rows(channel):
    return list(Notification.select().where(Notification.channel == channel).order_by(Notification.id))


def admin_log(tmp_path):
    path = tmp_path / "logs" / "admin_alerts.log"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def run_until_ended(channel_lane, clock, channel, rounds=80):
    """Passes of the lane, each after the wait it asked for, until none of the channel's rows is pending."""
    for _ in range(rounds):
        wait = channel_lane.process()
        if not any(row.status == "pending" for row in rows(channel)):
            return
        clock.advance(max(wait, 30.0))
    raise AssertionError([(row.title, row.status, row.attempts) for row in rows(channel)])


# -- the reported case: an email channel and a task type with a newline -----------------------------------


def test_a_newline_in_a_title_no_longer_stops_the_mail_channel(store, clock, tmp_path, smtp_server):
    server = smtp_server()
    snapshot, dispatcher = setup(store, clock, tmp_path, MAIL.format(port=server.port))
    notify(store, snapshot, clock, f"[failured] 未知错误: {POISON} #1", task_type=POISON)
    for i in range(3):
        notify(store, snapshot, clock, f"[failured] 未知错误: sync #{i + 2}")
    lane(dispatcher, "mail", clock).process()
    assert [row.status for row in rows("mail")] == ["sent"] * 4
    subjects = [mail.message["Subject"] for mail in server.messages]
    assert subjects[0] == "[failured] 未知错误: evil **fake** #1" and len(subjects) == 4


def test_a_mail_subject_is_one_line_without_control_characters_and_cut(smtp_server):
    server = smtp_server()
    channel = EmailChannel("mail", "127.0.0.1", "failured@example.com", ["ops@example.com"], port=server.port,
                           starttls=False)
    title = "[failured] a\r\nBcc: victim@example.com\x00\x1b[31m\u202e" + "长" * 400
    assert channel.send(Message(title, "body", "admin", "task", {})).ok
    [mail] = server.messages
    subject = mail.message["Subject"]
    assert subject.startswith("[failured] a Bcc: victim@example.com[31m长") and subject.endswith("…")
    assert len(subject) <= 200 and not any(ord(c) < 32 or c == "\u202e" for c in subject)
    assert mail.message["Bcc"] is None and mail.recipients == ["ops@example.com"]


# -- a receiver that always refuses one body ---------------------------------------------------------------


@pytest.fixture
def waf():
    made = []

    def make():
        made.append(WafServer().start())
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_a_body_a_waf_refuses_is_retried_alone_while_the_others_go(store, clock, tmp_path, waf):
    hook = waf()
    snapshot, dispatcher = setup(store, clock, tmp_path, HOOK.format(url=hook.url))
    hook_lane, start = lane(dispatcher, "hook", clock), clock.now()
    notify(store, snapshot, clock, "[failured] evil #1")
    for i in range(3):
        notify(store, snapshot, clock, f"[failured] fine #{i + 2}")
    hook_lane.process()
    poison, *others = rows("hook")
    assert [row.status for row in others] == ["sent"] * 3
    assert (poison.status, poison.attempts) == ("pending", 1) and "403" in poison.last_error
    clock.advance(1)
    notify(store, snapshot, clock, "[failured] fine #5")  # arrives while the refused one waits for its retry
    hook_lane.process()
    assert rows("hook")[-1].status == "sent"
    run_until_ended(hook_lane, clock, "hook")
    poison = rows("hook")[0]
    assert poison.status == "failed" and "403" in poison.last_error and poison.attempts >= 3
    assert clock.now() - start < 3600  # given up in minutes, not after the 24 h horizon


def test_the_admins_hear_once_when_a_refused_notification_is_given_up(store, clock, tmp_path, waf):
    hook = waf()
    snapshot, dispatcher = setup(store, clock, tmp_path, HOOK.format(url=hook.url))
    notify(store, snapshot, clock, "[failured] evil #1")
    notify(store, snapshot, clock, "[failured] fine #2")  # the channel works: the refusal is the message's
    hook_lane = lane(dispatcher, "hook", clock)
    run_until_ended(hook_lane, clock, "hook")
    lane(dispatcher, "log", clock).process()
    alerts = [line for line in admin_log(tmp_path) if line["kind"] == "undeliverable"]
    assert len(alerts) == 1
    [alert] = alerts
    assert alert["channel"] == "hook" and f"#{rows('hook')[0].id}" in alert["title"] and "403" in alert["body"]
    # its own row on the hook channel carries "evil" too and is refused; that one ends without a second alert
    hook_lane.process()
    notify(store, snapshot, clock, "[failured] fine #3")
    run_until_ended(hook_lane, clock, "hook")
    lane(dispatcher, "log", clock).process()
    assert len([line for line in admin_log(tmp_path) if line["kind"] == "undeliverable"]) == 1
    assert [row.status for row in rows("hook") if "evil" in row.body or row.kind == "undeliverable"] == ["failed"] * 2


def test_a_refused_notification_is_given_up_after_a_restart_without_waiting_for_a_new_message(store, clock,
                                                                                             tmp_path, waf):
    hook = waf()
    snapshot, dispatcher = setup(store, clock, tmp_path, HOOK.format(url=hook.url))
    notify(store, snapshot, clock, "[failured] evil #1")
    notify(store, snapshot, clock, "[failured] fine #2")  # the channel takes it: the refusal is the message's
    before_restart = lane(dispatcher, "hook", clock)
    before_restart.process()
    assert [row.status for row in rows("hook")] == ["pending", "sent"]
    after_restart = lane(dispatcher, "hook", clock)  # a new daemon: nothing in memory, no new message
    run_until_ended(after_restart, clock, "hook")
    assert rows("hook")[0].status == "failed"


def test_the_same_refusal_of_every_message_loses_none_of_them(store, clock, tmp_path, hook_server):
    """A receiver that refuses everything with a 403 (a revoked token, an address allow-list) is down, not a
    channel of bad messages: its rows wait, and go out when it takes them again."""
    hook = hook_server()
    hook.answer_with(403, "Forbidden: token revoked")
    snapshot, dispatcher = setup(store, clock, tmp_path, HOOK.format(url=hook.url))
    for i in range(3):
        notify(store, snapshot, clock, f"[failured] fine #{i + 1}")
    hook_lane = lane(dispatcher, "hook", clock)
    for _ in range(40):  # far past MESSAGE_ATTEMPTS tries each
        clock.advance(max(hook_lane.process(), 30.0))
    assert {row.status for row in rows("hook")} == {"pending"}
    assert min(row.attempts for row in rows("hook")) >= 8
    hook.answer_with(200, "ok")
    run_until_ended(hook_lane, clock, "hook")
    assert [row.status for row in rows("hook")] == ["sent"] * 3


@pytest.fixture
def picky_gateway(tmp_path, monkeypatch):
    (tmp_path / "picky_gateway.py").write_text(PICKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import picky_gateway

    yield picky_gateway
    sys.modules.pop("picky_gateway", None)


def test_a_python_target_that_raises_on_one_message_does_not_hold_back_the_rest(store, clock, tmp_path,
                                                                                 picky_gateway):
    snapshot, dispatcher = setup(store, clock, tmp_path, PYTHON)
    notify(store, snapshot, clock, "[failured] evil #1")
    notify(store, snapshot, clock, "[failured] fine #2")
    sms = lane(dispatcher, "sms", clock)
    sms.process()
    assert picky_gateway.SENT == ["[failured] fine #2"]
    run_until_ended(sms, clock, "sms")
    assert [(row.kind, row.status) for row in rows("sms")] == [("task", "failed"), ("task", "sent"),
                                                               ("undeliverable", "sent")]
    assert picky_gateway.SENT[-1].startswith(f"[failured] 通道 sms 无法发送通知 #{rows('sms')[0].id}")


# -- channel-wide failures still pause the channel ---------------------------------------------------------


@pytest.mark.parametrize("answer", [(502, "Bad Gateway"), (503, "down for maintenance"), (401, "bad token")])
def test_a_channel_wide_answer_pauses_the_channel_as_before(store, clock, tmp_path, hook_server, answer):
    hook = hook_server()
    hook.answer_with(*answer)
    snapshot, dispatcher = setup(store, clock, tmp_path, HOOK.format(url=hook.url))
    for i in range(3):
        notify(store, snapshot, clock, f"[failured] fine #{i + 1}")
    assert lane(dispatcher, "hook", clock).process() == 5.0
    assert len(hook.received) == 1  # the others were not tried: a down server is not hammered once per row
    assert [row.attempts for row in rows("hook")] == [1, 0, 0]


def test_a_refused_connection_pauses_the_channel_as_before(store, clock, tmp_path, hook_server):
    hook = hook_server()
    snapshot, dispatcher = setup(store, clock, tmp_path, HOOK.format(url=hook.url))
    hook.down("refuse")
    for i in range(3):
        notify(store, snapshot, clock, f"[failured] fine #{i + 1}")
    hook_lane = lane(dispatcher, "hook", clock)
    assert hook_lane.process() == 5.0
    assert [row.attempts for row in rows("hook")] == [1, 0, 0]
    hook.up()
    clock.advance(5)
    hook_lane.process()
    assert [row.status for row in rows("hook")] == ["sent"] * 3


# -- whose fault a failed send is, as each channel tells it -------------------------------------------------


@pytest.mark.parametrize("status, alone", [(400, True), (403, True), (413, True), (422, True), (401, False),
                                           (404, False), (500, False), (502, False)])
def test_a_webhook_answer_says_whether_only_this_body_was_refused(hook_server, status, alone):
    hook = hook_server()
    hook.answer_with(status, "no")
    result = WebhookChannel("hook", hook.url).send(Message("t", "b", "admin", "task", {}))
    assert (result.ok, result.message_fault, result.misconfigured) == (False, alone, False)


class AnsweringRobot(RobotServer):
    """A robot that answers every message with one errcode."""

    def __init__(self, kind, code):
        super().__init__(kind)
        self.code = code

    def handle(self, path, headers, raw):
        return 200, {"errcode": self.code, "errmsg": "as told"}, {}


@pytest.mark.parametrize("kind, code, alone", [("dingtalk", 460101, True), ("dingtalk", 40035, True),
                                               ("dingtalk", 310000, False), ("dingtalk", 130101, False),
                                               ("wecom", 40058, True), ("wecom", 93000, False),
                                               ("wecom", 45009, False)])
def test_a_robot_errcode_about_the_content_refuses_only_this_message(kind, code, alone):
    with AnsweringRobot(kind, code) as robot:
        channel = (DingTalkChannel("r", "robot-token-0123456789abcdef", url=robot.url) if kind == "dingtalk"
                   else WeComChannel("r", "693a91f6-7aaa-4bc4-97a0-0ec2sifa5aaa", url=robot.url))
        result = channel.send(Message("t", "b", "admin", "task", {}))
    assert (result.ok, result.message_fault) == (False, alone)
