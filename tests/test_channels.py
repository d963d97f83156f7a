"""Notification channels against fake DingTalk/WeCom robots, a webhook receiver and an SMTP server on 127.0.0.1."""

import json
import socket
import textwrap
import urllib.parse

import pytest
from robots import DINGTALK_DOC, HookServer

from failured.clock import ManualClock
from failured.errors import ConfigError
from failured.notify.channels import (
    TRUNCATED,
    Channel,
    DingTalkChannel,
    EmailChannel,
    LogChannel,
    Message,
    PythonChannel,
    SendResult,
    WebhookChannel,
    WeComChannel,
    dingtalk_sign,
    mask,
    parse_channel,
    secret_values,
)

TOKEN = "dt-token-5f0c2a9e7b1d4c3a8e6f"
SECRET = "SEC0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
KEY = "693a91f6-7aaa-4bc4-97a0-0ec2sifa5aaa"


def make(kind, clock=None, **fields):
    return parse_channel("test", {"kind": kind, **fields}, "failured.toml", "channels.test", clock=clock)


def message(title="[failured] 不可恢复数据错误: order_sync #7", body=None, audience="admin", **record):
    body = body if body is not None else f"**{title}**\n- 分类: 不可恢复数据错误\n- 错误: malformed json"
    return Message(title, body, audience, "task", {"task_id": 7, "category": "unrecoverable_data", **record})


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("DINGTALK_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("DINGTALK_SECRET", SECRET)
    monkeypatch.setenv("WECOM_KEY", KEY)
    return monkeypatch


def assert_no_secret(result, *secrets):
    for text in (result.error or "", result.answer or ""):
        for secret in secrets:
            assert secret not in text
            assert urllib.parse.quote_plus(secret) not in text


# DingTalk


def test_dingtalk_signature_matches_a_published_example():
    # The dingding crate's test vector for DingTalk's algorithm (docs.rs/crate/dingding, src/signature.rs).
    assert urllib.parse.quote_plus(dingtalk_sign("secret", "1700000000000")) == (
        "OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"
    )


def test_dingtalk_signed_markdown_is_accepted_with_at_fields_as_sent(env, robot_server):
    robot = robot_server("dingtalk", token_or_key=TOKEN, secret=SECRET)
    channel = make("dingtalk", access_token="${DINGTALK_ACCESS_TOKEN}", secret="${DINGTALK_SECRET}",
                   at_mobiles=["13800000001"], url=robot.url)  # fmt: skip
    sent = message()
    result = channel.send(sent)
    assert result == SendResult(True, answer='{"errcode": 0, "errmsg": "ok"}')
    [arrival] = robot.received
    assert arrival.payload["msgtype"] == "markdown"
    assert arrival.payload["markdown"]["title"] == sent.title
    assert arrival.payload["markdown"]["text"] == sent.body + "\n\n@13800000001"
    assert arrival.payload["at"] == {"atMobiles": ["13800000001"], "isAtAll": False}
    assert arrival.query["access_token"] == TOKEN and arrival.query["timestamp"].isdigit()


def test_a_reporters_longer_number_does_not_take_the_place_of_a_configured_ping(env, robot_server):
    robot = robot_server("dingtalk", token_or_key=TOKEN, secret=SECRET)
    channel = make("dingtalk", access_token=TOKEN, secret=SECRET, at_mobiles=["13800000001"], url=robot.url)
    sent = message(body="**t**\n- 错误: Invalid API key for account @138000000012")
    assert channel.send(sent).ok
    assert robot.received[0].payload["markdown"]["text"].endswith("\n\n@13800000001")


def test_dingtalk_wrong_secret_is_misconfigured(env, robot_server):
    robot = robot_server("dingtalk", token_or_key=TOKEN, secret="SEC-the-robot-has-another-one")
    result = make("dingtalk", access_token=TOKEN, secret=SECRET, url=robot.url).send(message())
    assert not result.ok and result.misconfigured and result.retry_after is None
    assert result.error.startswith("dingtalk errcode 310000: sign not match")
    assert robot.received == []
    assert_no_secret(result, TOKEN, SECRET)


def test_dingtalk_timestamp_over_an_hour_old_is_this_servers_clock_and_retried_not_a_paused_config(env, robot_server):
    clock, dingtalk_ahead = ManualClock(), [3601.0]
    robot = robot_server("dingtalk", token_or_key=TOKEN, secret=SECRET, clock=lambda: clock.now() + dingtalk_ahead[0])
    channel = make("dingtalk", clock=clock, access_token=TOKEN, secret=SECRET, url=robot.url)
    result = channel.send(message())
    assert not result.ok and not result.misconfigured and not result.message_fault
    assert "310000: invalid timestamp" in result.error and "this server's clock is more than an hour off" in result.error
    dingtalk_ahead[0] = 0.0  # the clock set right: the same channel, unchanged, sends
    assert channel.send(message()).ok


def test_dingtalk_unknown_token_is_misconfigured(env, robot_server):
    robot = robot_server("dingtalk", token_or_key="another-token-entirely")
    result = make("dingtalk", access_token=TOKEN, url=robot.url).send(message())
    assert result.misconfigured and result.error == "dingtalk errcode 300001: token is not exist"


def test_dingtalk_keyword_is_prepended_only_when_missing(env, robot_server):
    robot = robot_server("dingtalk", token_or_key=TOKEN, keyword="告警")
    assert make("dingtalk", access_token=TOKEN, url=robot.url).send(message()).misconfigured  # robot refuses
    channel = make("dingtalk", access_token=TOKEN, keyword="告警", url=robot.url)
    assert channel.send(message()).ok
    assert channel.send(message(title="[failured] 告警: 熔断")).ok
    first, second = (a.payload["markdown"]["text"] for a in robot.received)
    assert first.startswith("告警 **[failured] 不可恢复数据错误")
    assert second.startswith("**[failured] 告警: 熔断**")
    assert robot.answers[0] == (310000, f"keywords not in content, {DINGTALK_DOC}")


def test_dingtalk_21st_message_within_a_minute_is_throttled_not_failed(env, robot_server):
    clock = ManualClock()
    robot = robot_server("dingtalk", token_or_key=TOKEN, secret=SECRET, clock=clock.now)
    channel = make("dingtalk", clock=clock, access_token=TOKEN, secret=SECRET, url=robot.url)
    assert channel.rate_per_minute == 20
    for _ in range(20):
        assert channel.send(message()).ok
        clock.advance(1)
    throttled = channel.send(message())
    assert (throttled.ok, throttled.retry_after, throttled.misconfigured) == (False, 60, False)
    assert "130101: send too fast" in throttled.error
    clock.advance(41)  # the first message is now a minute old
    assert channel.send(message()).ok
    assert len(robot.received) == 21 and robot.max_in_any_window(60) == 20


def test_dingtalk_text_is_cut_to_fit_the_20000_byte_body(env, robot_server):
    robot = robot_server("dingtalk", token_or_key=TOKEN)
    body = f"**{message().title}**\n" + "数据校验失败，" * 2000  # 42 000 bytes
    assert make("dingtalk", access_token=TOKEN, url=robot.url).send(message(body=body)).ok
    [arrival] = robot.received
    text = arrival.payload["markdown"]["text"]
    assert len(arrival.raw) <= 20000 and len(arrival.raw) > 19000
    assert text.endswith(TRUNCATED) and body.startswith(text[: -len(TRUNCATED)])


# WeCom


def test_wecom_markdown_is_cut_at_4096_bytes_on_a_character_boundary(env, robot_server):
    robot = robot_server("wecom", token_or_key=KEY)
    body = f"**{message().title}**\n" + "".join(f"- 任务 #{i} 订单号不存在\n" for i in range(400))
    assert len(body.encode()) > 4096
    result = make("wecom", key="${WECOM_KEY}", url=robot.url).send(message(body=body))
    assert result.ok
    content = robot.received[0].payload["markdown"]["content"]
    size = len(content.encode("utf-8"))
    assert 4096 - 3 <= size <= 4096  # at most one 3-byte character short of the limit
    assert content.endswith(TRUNCATED) and body.startswith(content[: -len(TRUNCATED)])


def test_wecom_mobiles_are_mentioned_in_a_second_text_message(env, robot_server):
    robot = robot_server("wecom", token_or_key=KEY)
    channel = make("wecom", key=KEY, mentioned_mobile_list=["13800001111"], mentioned_list=["wangqing"], url=robot.url)
    assert channel.rate_per_minute == 10  # each notification costs the robot two messages
    sent = message()
    assert channel.send(sent).ok
    markdown, text = (a.payload for a in robot.received)
    assert markdown == {"msgtype": "markdown", "markdown": {"content": sent.body + "\n<@wangqing>"}}
    assert text == {"msgtype": "text", "text": {"content": sent.title, "mentioned_mobile_list": ["13800001111"]}}


def test_wecom_45009_is_throttled_not_failed(env, robot_server):
    robot = robot_server("wecom", token_or_key=KEY, limit_per_minute=2)
    channel = make("wecom", key=KEY, url=robot.url)
    assert channel.send(message()).ok and channel.send(message()).ok
    result = channel.send(message())
    assert (result.ok, result.retry_after, result.misconfigured) == (False, 60, False)
    assert result.error.startswith("wecom errcode 45009: api freq out of limit")


def test_wecom_wrong_key_is_misconfigured(env, robot_server):
    robot = robot_server("wecom", token_or_key="the-robot-key-is-different")
    result = make("wecom", key="${WECOM_KEY}", url=robot.url).send(message())
    assert result.misconfigured and result.error.startswith("wecom errcode 93000: invalid webhook url")
    assert_no_secret(result, KEY)


# Outages and masking


@pytest.mark.parametrize("kind", ["dingtalk", "wecom"])
@pytest.mark.parametrize("outage", ["refuse", "502", "hang"])
def test_outage_is_a_retryable_failure_without_secrets(env, robot_server, kind, outage):
    robot = robot_server(kind, token_or_key=TOKEN, secret=SECRET if kind == "dingtalk" else None)
    fields = {"access_token": TOKEN, "secret": SECRET} if kind == "dingtalk" else {"key": TOKEN}
    channel = make(kind, url=robot.url, timeout=0.5, **fields)
    channel.answer_wait = 0.5  # a hung robot is given up on within the test's patience, not after 30 s
    robot.down(outage)
    result = channel.send(message())
    assert (result.ok, result.misconfigured, result.retry_after) == (False, False, None)
    assert result.error and (outage != "502" or result.error.startswith("HTTP 502"))
    assert_no_secret(result, TOKEN, SECRET)
    assert "sign=" not in result.error or "sign=***" in result.error
    robot.up()
    assert channel.send(message()).ok


@pytest.mark.parametrize("kind", ["dingtalk", "wecom"])
def test_a_robot_that_answers_after_the_connect_timeout_is_sent_the_message_once(env, robot_server, kind):
    robot = robot_server(kind, token_or_key=TOKEN)
    robot.answer_delay = 1.0  # posted at once, answered a second later: five times the channel's timeout
    fields = {"access_token": TOKEN} if kind == "dingtalk" else {"key": TOKEN}
    result = make(kind, url=robot.url, timeout=0.2, **fields).send(message())
    assert result.ok, result.error
    assert len(robot.received) == 1


def test_a_request_sent_but_never_answered_says_it_may_have_arrived(env, robot_server):
    robot = robot_server("wecom", token_or_key=TOKEN)
    robot.answer_delay = 2.0
    channel = make("wecom", key=TOKEN, url=robot.url, timeout=0.2)
    channel.answer_wait = 0.3
    result = channel.send(message())
    assert not result.ok and not result.message_fault
    assert result.error == "sent, but no answer within 0.3s: it may have arrived and is sent again (ReadTimeout)"
    assert_no_secret(result, TOKEN)


def test_unset_variable_is_misconfigured_and_named(robot_server, monkeypatch):
    monkeypatch.delenv("DINGTALK_SECRET", raising=False)
    monkeypatch.setenv("DINGTALK_ACCESS_TOKEN", TOKEN)
    robot = robot_server("dingtalk", token_or_key=TOKEN)
    channel = make("dingtalk", access_token="${DINGTALK_ACCESS_TOKEN}", secret="${DINGTALK_SECRET}", url=robot.url)
    result = channel.send(message())
    assert (result.ok, result.misconfigured, result.error) == (
        False, True, "environment variable DINGTALK_SECRET is not set")
    assert "set the variable in the daemon's environment" in result.advice and "restart" in result.advice
    assert robot.received == []


def test_describe_and_errors_never_show_secrets(env, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-password-42")
    channels = [
        make("dingtalk", access_token="${DINGTALK_ACCESS_TOKEN}", secret="${DINGTALK_SECRET}", keyword="告警"),
        make("wecom", key="${WECOM_KEY}"),
        make("webhook", url="https://hooks.example/services/T0001/B0001/Xa9kQ2mZ7pL4rT8vN1cW3eYb", secret="${DINGTALK_SECRET}",
             headers={"Authorization": "Bearer ${WECOM_KEY}"}),
        make("email", host="smtp.example.com", sender="f@example.com", to=["ops@example.com"], username="alerts",
             password="${SMTP_PASSWORD}"),
    ]  # fmt: skip
    descriptions = [c.describe() for c in channels]
    assert descriptions[0] == "dingtalk robot …8e6f at https://oapi.dingtalk.com, signed, keyword 告警"
    assert descriptions[1] == "wecom robot …5aaa at https://qyapi.weixin.qq.com"
    assert descriptions[2] == "webhook https://hooks.example, signed"
    assert descriptions[3] == "email via smtp.example.com:587 to ops@example.com"
    values = secret_values(channels)
    for secret in (TOKEN, SECRET, KEY, "smtp-password-42", "Bearer " + KEY, "Xa9kQ2mZ7pL4rT8vN1cW3eYb"):
        assert secret in values
        assert all(secret not in d for d in descriptions)
    leaked = f"POST /robot/send?access_token=other&timestamp=1&sign=a%2Bb%3D failed: {SECRET} {urllib.parse.quote_plus(KEY)}"
    assert mask(leaked, values) == "POST /robot/send?access_token=***&timestamp=1&sign=*** failed: *** ***"


def test_a_hook_url_masks_its_token_not_its_plain_path():
    plain = make("webhook", url="https://hooks.example.com/failured?channel=ops")
    assert plain.secret_values() == []  # else "/failured" went masked in every stored error and file name
    error = "cannot open /var/lib/failured/spool: config/failured.toml"
    assert mask(error, plain.secret_values()) == error
    discord = "https://discord.com/api/webhooks/1234567890123456789/AbCdEfGhIjKlMnOpQrStUvWxYz012345-_abc"
    feishu = "https://open.feishu.cn/open-apis/bot/v2/hook/2f1e7c2a-9b3d-4e5f-8a6b-1c2d3e4f5a6b"
    assert make("webhook", url=discord).secret_values() == ["AbCdEfGhIjKlMnOpQrStUvWxYz012345-_abc"]
    assert make("webhook", url=feishu).secret_values() == ["2f1e7c2a-9b3d-4e5f-8a6b-1c2d3e4f5a6b"]
    assert make("webhook", url="https://in.example/hook?token=abc1&x=1&monkey=kept").secret_values() == ["abc1"]


def test_a_crashing_channel_returns_a_masked_result(env):
    class Broken(DingTalkChannel):
        def _send(self, message):
            raise RuntimeError(f"bug while holding {TOKEN}")

    result = Broken("broken", access_token="${DINGTALK_ACCESS_TOKEN}").send(message())
    assert result == SendResult(False, error="dingtalk channel crashed: RuntimeError: bug while holding ***",
                                message_fault=True)  # raised for this message: the others may still go


def test_errors_are_masked_before_they_are_cut(env, hook_server):
    hook = hook_server()
    hook.answer_with(500, "x" * 985 + KEY)  # the key straddles the cut
    result = make("webhook", url=hook.url, headers={"X-Key": "${WECOM_KEY}"}).send(message())
    assert result.error == "HTTP 500: " + "x" * 985 + "***"


def test_a_channel_never_sends_its_own_secrets(env, hook_server, robot_server):
    robot = robot_server("dingtalk", TOKEN, SECRET)
    leaky = message(body=f"handler printed DINGTALK_SECRET={SECRET} and {TOKEN}", task_ref=SECRET)
    assert make("dingtalk", url=robot.url, access_token="${DINGTALK_ACCESS_TOKEN}", secret="${DINGTALK_SECRET}").send(
        leaky).ok
    hook = hook_server()
    assert make("webhook", url=hook.url, secret="${DINGTALK_SECRET}").send(leaky).ok
    assert SECRET.encode() not in robot.received[0].raw and TOKEN.encode() not in robot.received[0].raw
    assert SECRET.encode() not in hook.received[0].raw and b"***" in hook.received[0].raw
    # (another channel's secrets are masked by the dispatcher, which knows them all)


# Webhook


def test_webhook_signature_is_verifiable_by_the_receiver(env, hook_server):
    clock = ManualClock()
    hook = hook_server(clock=clock.now)
    channel = make("webhook", clock=clock, url=hook.url, secret="${DINGTALK_SECRET}", headers={"X-Env": "prod"})
    assert channel.send(message(ref="order-7")).ok
    [arrival] = hook.received
    assert arrival.payload == {"title": message().title, "body": message().body, "audience": "admin",
                               "kind": "task", "task_id": 7, "category": "unrecoverable_data", "ref": "order-7"}  # fmt: skip
    assert HookServer.signature_ok(SECRET, arrival)
    assert arrival.headers["X-Failured-Timestamp"] == str(int(clock.now())) and arrival.headers["X-Env"] == "prod"
    clock.advance(600)
    replayed = type(arrival)(clock.now(), arrival.payload, arrival.query, arrival.headers, arrival.raw)
    assert not HookServer.signature_ok(SECRET, replayed)  # the signed timestamp is stale
    arrival.raw = arrival.raw.replace(b'"admin"', b'"user"')
    assert not HookServer.signature_ok(SECRET, arrival)


def test_webhook_429_is_throttled_and_errors_are_masked(env, hook_server):
    hook = hook_server()
    channel = make("webhook", url=hook.url, headers={"Authorization": "Bearer ${WECOM_KEY}"})
    hook.answer_with(429, "slow down", {"Retry-After": "30"}, times=1)
    hook.answer_with(429, "slow down", times=1)
    assert channel.send(message()).retry_after == 30
    assert channel.send(message()).retry_after == 60
    hook.answer_with(500, f"token Bearer {KEY} rejected")
    result = channel.send(message())
    assert result == SendResult(False, error="HTTP 500: token *** rejected", answer="token *** rejected")


# Email


def test_email_is_delivered_to_a_real_smtp_server(smtp_server):
    server = smtp_server()
    channel = make("email", host="127.0.0.1", port=server.port, starttls=False, sender="failured@example.com",
                   to=["ops@example.com", "dev@example.com"], timeout=5)  # fmt: skip
    sent = message()
    result = channel.send(sent)
    assert result == SendResult(True, answer="accepted for 2 of 2 recipients")
    [mail] = server.messages
    assert mail.sender == "failured@example.com" and mail.recipients == ["ops@example.com", "dev@example.com"]
    assert mail.message["Subject"] == sent.title
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message.get_content().rstrip("\n") == sent.body


def test_email_bad_password_is_misconfigured_and_masked(smtp_server, monkeypatch):
    server = smtp_server(users={"alerts": "right-password"}, echo_credentials=True)
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-password")
    fields = {"host": "127.0.0.1", "port": server.port, "starttls": False, "sender": "f@example.com",
              "to": ["ops@example.com"], "username": "alerts", "password": "${SMTP_PASSWORD}"}  # fmt: skip
    result = make("email", **fields).send(message())
    assert result.misconfigured and "SMTPAuthenticationError" in result.error
    assert "wrong-password" not in result.error and "alerts:***" in result.error
    monkeypatch.setenv("SMTP_PASSWORD", "right-password")
    assert make("email", **fields).send(message()).ok and len(server.messages) == 1


def test_email_server_down_is_retryable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there
    channel = make("email", host="127.0.0.1", port=port, starttls=False, sender="f@example.com", to=["o@example.com"])
    result = channel.send(message())
    assert (result.ok, result.misconfigured) == (False, False) and "ConnectionRefusedError" in result.error


# Python and log


@pytest.fixture
def alerts_module(tmp_path, monkeypatch):
    (tmp_path / "myalerts.py").write_text(textwrap.dedent("""
        import time
        sent = []
        def send_sms(notification):
            sent.append(notification)
            return "queued"
        def broken(notification):
            raise ValueError("gateway said no")
        def slow(notification):
            time.sleep(5)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import myalerts

    yield myalerts
    monkeypatch.delitem(__import__("sys").modules, "myalerts")


def test_python_channel_calls_the_function_with_the_notification(alerts_module):
    result = make("python", target="myalerts:send_sms").send(message())
    assert result == SendResult(True, answer="'queued'")
    assert alerts_module.sent == [{"title": message().title, "body": message().body, "audience": "admin",
                                   "kind": "task", "task_id": 7, "category": "unrecoverable_data"}]  # fmt: skip


def test_python_channel_exception_timeout_and_import_error_are_failures(alerts_module):
    assert make("python", target="myalerts:broken").send(message()) == SendResult(
        False, error="ValueError: gateway said no", message_fault=True
    )
    slow = make("python", target="myalerts:slow", timeout=0.2).send(message())
    assert slow == SendResult(False, error="timed out after 0.2s (thread abandoned)")
    missing = make("python", target="myalerts:nothing_here").send(message())
    assert missing.misconfigured and missing.error.startswith("cannot import myalerts:nothing_here: AttributeError")


def test_log_channel_writes_json_lines_to_the_audience_file(tmp_path):
    clock = ManualClock(1_700_000_000)
    channel = parse_channel("log", {"kind": "log"}, "failured.toml", "channels.log", log_dir=tmp_path, clock=clock)
    assert channel.rate_per_minute is None
    assert channel.send(message()).ok
    assert channel.send(message(title="订单不存在", body="请检查订单号", audience="user")).ok
    [admin] = (tmp_path / "admin_alerts.log").read_text(encoding="utf-8").splitlines()
    [user] = (tmp_path / "user_notifications.log").read_text(encoding="utf-8").splitlines()
    assert json.loads(admin) == {"time": "2023-11-14T22:13:20Z", "task_id": 7, "category": "unrecoverable_data",
                                 "kind": "task", "audience": "admin", "title": message().title, "body": message().body}  # fmt: skip
    assert json.loads(user)["title"] == "订单不存在" and "订单不存在" in user  # readable, not \u-escaped


# Configuration


def test_parse_channel_builds_each_kind_with_its_defaults(tmp_path):
    table = {
        "ops_log": ({"kind": "log", "dir": str(tmp_path)}, LogChannel, None),
        "ding": ({"kind": "dingtalk", "access_token": "${T}"}, DingTalkChannel, 20),
        "wecom": ({"kind": "wecom", "key": "${K}", "rate_per_minute": 5}, WeComChannel, 5),
        "hook": ({"kind": "webhook", "url": "https://hooks.example/x", "timeout": 2}, WebhookChannel, 60),
        "mail": ({"kind": "email", "host": "smtp.example.com", "sender": "a@example.com", "to": ["b@example.com"]},
                 EmailChannel, 60),
        "sms": ({"kind": "python", "target": "myapp.alerts:send_sms"}, PythonChannel, None),
    }  # fmt: skip
    for name, (fields, cls, rate) in table.items():
        channel = parse_channel(name, fields, "failured.toml", f"channels.{name}")
        assert (type(channel), channel.name, channel.kind, channel.rate_per_minute) == (cls, name, fields["kind"], rate)
        assert isinstance(channel, Channel)
    hook = parse_channel("hook", table["hook"][0], "f", "channels.hook")
    mail = parse_channel("mail", {**table["mail"][0], "ssl": True}, "f", "channels.mail")
    assert (hook.timeout, mail.timeout, mail.port, mail.starttls) == (2.0, 10.0, 465, False)


@pytest.mark.parametrize(
    ("fields", "key", "reason"),
    [
        ({"kind": "dingtalk", "access_token": "t", "acces_token": "t"}, "channels.x.acces_token", "unknown key for a dingtalk channel"),
        ({"kind": "dingtalk"}, "channels.x.access_token", "missing"),
        ({"kind": "wecom"}, "channels.x.key", "missing"),
        ({"kind": "sms"}, "channels.x.kind", "is 'sms'; set kind = one of \"log\""),
        ({}, "channels.x.kind", "missing; set kind"),
        ({"kind": "dingtalk", "access_token": "t", "rate_per_minute": 0}, "channels.x.rate_per_minute", "positive number"),
        ({"kind": "wecom", "key": "k", "rate_per_minute": -3}, "channels.x.rate_per_minute", "positive number"),
        ({"kind": "webhook", "url": "https://h/x", "timeout": "5"}, "channels.x.timeout", "positive number"),
        ({"kind": "dingtalk", "access_token": "t", "at_mobiles": "138"}, "channels.x.at_mobiles", "list of strings"),
        ({"kind": "dingtalk", "access_token": "t", "at_all": "yes"}, "channels.x.at_all", "true or false"),
        ({"kind": "webhook", "url": "ftp://h/x"}, "channels.x.url", "http(s) URL"),
        ({"kind": "webhook", "url": "https://h", "headers": {"A": 1}}, "channels.x.headers", "table of strings"),
        ({"kind": "email", "host": "h", "sender": "s@x"}, "channels.x.to", "missing or empty"),
        ({"kind": "email", "host": "h", "sender": "s@x", "to": ["t@x"], "port": 70000}, "channels.x.port", "up to 65535"),
        ({"kind": "email", "host": "h", "sender": "s@x", "to": ["t@x"], "ssl": True, "starttls": True},
         "channels.x.starttls", "cannot be combined"),
        ({"kind": "python", "target": "myapp.alerts.send_sms"}, "channels.x.target", "note the colon"),
        ({"kind": "log", "timeout": 3}, "channels.x.timeout", "unknown key for a log channel"),
    ],
)  # fmt: skip
def test_parse_channel_names_the_key_and_the_reason(fields, key, reason):
    with pytest.raises(ConfigError) as caught:
        parse_channel("x", fields, "config/failured.toml", "channels.x")
    assert caught.value.key == key and reason in caught.value.reason
    assert str(caught.value).startswith(f"config/failured.toml: {key}: ")
