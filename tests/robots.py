"""Fake notification endpoints on 127.0.0.1: DingTalk and WeCom robots, a webhook receiver, an SMTP server.

The robots answer as the real ones do (HTTP 200 with errcode/errmsg, the real codes
and wordings), verify DingTalk's timestamp+sign independently of failured's own
code, and enforce the per-minute limit over a sliding window. Use them as plain
classes (``with RobotServer(...) as robot:``, e.g. from a benchmark) or through the
factory fixtures (``from robots import robot_server``).
"""

import base64
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import socketserver
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field

import pytest

DINGTALK_DOC = "more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"
DINGTALK_MAX_BODY = 20000
WECOM_MAX_MARKDOWN = 4096
WECOM_MAX_TEXT = 2048


def _wecom_hint(code):
    return ("hint: [1700000000000000000000000], from ip: 127.0.0.1, "
            f"more info at https://open.work.weixin.qq.com/devtool/query?e={code}")


# The answers of the real robots, as people have pasted them into bug reports.
DINGTALK = {
    "ok": (0, "ok"),
    "token": (300001, "token is not exist"),
    "sign": (310000, f"sign not match, {DINGTALK_DOC}"),
    "timestamp": (310000, f"invalid timestamp, {DINGTALK_DOC}"),
    "keyword": (310000, f"keywords not in content, {DINGTALK_DOC}"),
    "too_long": (460101, "message too long, exceed 20000 bytes"),
    "json": (40035, "缺少参数 json"),
    "throttled": (130101, "send too fast, exceed {limit} times per minute"),
}
WECOM = {
    "ok": (0, "ok"),
    "key": (93000, f"invalid webhook url, {_wecom_hint(93000)}"),
    "markdown_long": (40058, "markdown.content exceed max length 4096. invalid Request Parameter, "
                             + _wecom_hint(40058)),
    "text_long": (40058, f"text.content exceed max length 2048. invalid Request Parameter, {_wecom_hint(40058)}"),
    "json": (40035, f"invalid Request Parameter, {_wecom_hint(40035)}"),
    "throttled": (45009, f"api freq out of limit, {_wecom_hint(45009)}"),
}
PATHS = {"dingtalk": "/robot/send", "wecom": "/cgi-bin/webhook/send"}


def max_in_window(times, seconds=60.0):
    """The most of ``times`` that fall in any half-open window [t, t + seconds)."""
    times, best, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass
class Arrival:
    """One request the fake accepted."""

    at: float
    payload: object
    query: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    raw: bytes = b""


class _Served:
    """A server in a thread, usable as ``with Server(...) as server:``."""

    _server = None

    def _stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class _HttpFake(_Served):
    """A ThreadingHTTPServer in a thread that can go down (refuse, 502, hang) and come back on its port."""

    def __init__(self):
        self.port = 0
        self.mode = "up"
        self.answer_delay = 0.0
        self._server = None
        self._release = threading.Event()

    def start(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fake.mode == "hang":
                    fake._release.wait(10)
                if fake.answer_delay:  # a robot that posts the message, then answers late
                    status, body, headers = fake.handle(self.path, dict(self.headers), raw)
                    time.sleep(fake.answer_delay)
                    return self._reply(status, body, "application/json", headers)
                if fake.mode in ("502", "hang"):
                    return self._reply(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                status, body, headers = fake.handle(self.path, dict(self.headers), raw)
                self._reply(status, body, "application/json", headers)

            def _reply(self, status, body, content_type, headers=None):
                body = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a timeout test): nothing to tell it
                    pass

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def down(self, mode="refuse"):
        """Simulate an outage: "refuse" connections, answer "502", or "hang" without answering (up to 10 s)."""
        if mode not in ("refuse", "502", "hang"):
            raise ValueError(mode)
        self.mode = mode
        self._release.clear()
        if mode == "refuse":
            self._stop()

    def up(self):
        self._release.set()
        if self.mode == "refuse":
            self.start()  # same port: SO_REUSEADDR is on
        self.mode = "up"

    def close(self):
        self._release.set()
        self._stop()

    def handle(self, path, headers, raw):
        raise NotImplementedError


class RobotServer(_HttpFake):
    """A DingTalk or WeCom group robot.

    ``received`` holds the accepted messages (Arrival), ``answers`` every (errcode, errmsg) given.
    """

    def __init__(self, kind="dingtalk", token_or_key="robot-token-0123456789abcdef", secret=None, keyword=None,
                 limit_per_minute=20, clock=time.time, max_skew=3600.0):  # fmt: skip
        super().__init__()
        if kind not in PATHS:
            raise ValueError(kind)
        self.kind, self.token, self.secret, self.keyword = kind, token_or_key, secret, keyword
        self.limit, self.clock, self.max_skew = limit_per_minute, clock, max_skew
        self.received = []
        self.answers = []
        self._lock = threading.Lock()

    @property
    def url(self):
        """The robot's URL without the token/key (the channel's ``url`` setting)."""
        return f"http://127.0.0.1:{self.port}{PATHS[self.kind]}"

    def max_in_any_window(self, seconds=60.0):
        return max_in_window([a.at for a in self.received], seconds)

    def handle(self, path, headers, raw):
        target = urllib.parse.urlsplit(path)
        if target.path != PATHS[self.kind]:
            return 404, {"errcode": 404, "errmsg": "请求的URI地址不存在"}, {}
        query = {k: v[0] for k, v in urllib.parse.parse_qs(target.query, keep_blank_values=True).items()}
        check = self._dingtalk if self.kind == "dingtalk" else self._wecom
        with self._lock:  # one at a time, so the window count cannot race
            code, msg = check(query, headers, raw)
            self.answers.append((code, msg))
        return 200, {"errcode": code, "errmsg": msg}, {}

    def _admit(self, now, payload, query, headers, raw, throttled):
        if sum(1 for a in self.received if a.at > now - 60) >= self.limit:
            code, msg = throttled
            return code, msg.format(limit=self.limit)
        self.received.append(Arrival(now, payload, query, headers, raw))
        return 0, "ok"

    def _dingtalk(self, query, headers, raw):
        now = self.clock()
        if query.get("access_token") != self.token:
            return DINGTALK["token"]
        if self.secret is not None:
            timestamp = query.get("timestamp", "")
            if not timestamp.isdigit() or abs(now * 1000 - int(timestamp)) > self.max_skew * 1000:
                return DINGTALK["timestamp"]
            digest = hmac.new(self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(query.get("sign", "").encode(), base64.b64encode(digest)):
                return DINGTALK["sign"]
        if len(raw) > DINGTALK_MAX_BODY:
            return DINGTALK["too_long"]
        try:
            payload = json.loads(raw)
            if payload["msgtype"] == "markdown":
                content = payload["markdown"]["title"] + payload["markdown"]["text"]
            else:
                content = payload[payload["msgtype"]]["content"]
        except (ValueError, KeyError, TypeError):
            return DINGTALK["json"]
        if self.keyword and self.keyword not in content:
            return DINGTALK["keyword"]
        return self._admit(now, payload, query, headers, raw, DINGTALK["throttled"])

    def _wecom(self, query, headers, raw):
        now = self.clock()
        if query.get("key") != self.token:
            return WECOM["key"]
        try:
            payload = json.loads(raw)
            kind = payload["msgtype"]
            content = payload[kind]["content"]
        except (ValueError, KeyError, TypeError):
            return WECOM["json"]
        limit = {"markdown": WECOM_MAX_MARKDOWN, "text": WECOM_MAX_TEXT}.get(kind)
        if limit is None or not isinstance(content, str):
            return WECOM["json"]
        if len(content.encode("utf-8")) > limit:
            return WECOM[f"{kind}_long"]
        return self._admit(now, payload, query, headers, raw, WECOM["throttled"])


class HookServer(_HttpFake):
    """A generic webhook receiver: records each request, answers ``answer_with(...)`` (default 200 "ok")."""

    def __init__(self, path="/hook", clock=time.time):
        super().__init__()
        self.path, self.clock = path, clock
        self.received = []
        self._answers = deque()
        self._default = (200, b"ok", {})

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"

    def answer_with(self, status, body=b"", headers=None, times=None):
        """Answer the next ``times`` requests (every request if None) with this status, body and headers."""
        answer = (status, body.encode() if isinstance(body, str) else body, headers or {})
        if times is None:
            self._default = answer
        else:
            self._answers.extend([answer] * times)

    def handle(self, path, headers, raw):
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        self.received.append(Arrival(self.clock(), payload, {}, headers, raw))
        return self._answers.popleft() if self._answers else self._default

    @staticmethod
    def signature_ok(secret, arrival):
        """What a receiver does: recompute the HMAC of "{timestamp}.{raw body}", compare in constant time,
        and refuse a timestamp more than 5 minutes off (a replayed request)."""
        timestamp = arrival.headers.get("X-Failured-Timestamp", "")
        if not timestamp.isdigit() or abs(arrival.at - int(timestamp)) > 300:
            return False
        signed = timestamp.encode() + b"." + arrival.raw
        expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(arrival.headers.get("X-Failured-Signature", ""), expected)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _address(arg):
    """The address in ``FROM:<a@b> BODY=8BITMIME`` or ``TO:<a@b>``."""
    return arg.partition(":")[2].strip().partition(">")[0].lstrip("<")


@dataclass
class Mail:
    sender: str
    recipients: list
    data: bytes

    @property
    def message(self):
        return email.message_from_bytes(self.data, policy=email.policy.default)


class SmtpServer(_Served):
    """Enough SMTP for smtplib: EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS.

    ``users`` ({name: password}) requires AUTH; ``refuse`` is a set of rejected recipients;
    ``echo_credentials`` makes a failed AUTH answer quote them (to test masking).
    """

    def __init__(self, users=None, refuse=(), echo_credentials=False):
        self.users, self.refuse, self.echo_credentials = dict(users or {}), set(refuse), echo_credentials
        self.messages = []
        self._server = None

    @property
    def port(self):
        return self._server.server_address[1]

    def start(self):
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line):
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self):
                self.reply("220 fake.smtp ESMTP ready")
                authed, sender, recipients = not fake.users, None, []
                for raw in self.rfile:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    verb, _, arg = line.partition(" ")
                    verb = verb.upper()
                    if verb == "EHLO":
                        self.wfile.write(b"250-fake.smtp\r\n250-8BITMIME\r\n")
                        self.reply("250 AUTH PLAIN" if fake.users else "250 HELP")
                    elif verb == "HELO":
                        self.reply("250 fake.smtp")
                    elif verb == "AUTH":
                        authed = fake._auth(arg)
                        self.reply("235 2.7.0 Authentication successful" if authed else fake._auth_failed(arg))
                    elif verb == "MAIL":
                        sender, recipients = _address(arg), []
                        self.reply("250 2.1.0 OK" if authed else "530 5.7.0 Authentication required")
                    elif verb == "RCPT":
                        rcpt = _address(arg)
                        if rcpt in fake.refuse:
                            self.reply(f"550 5.1.1 <{rcpt}>: no such user")
                        else:
                            recipients.append(rcpt)
                            self.reply("250 2.1.5 OK")
                    elif verb == "DATA":
                        if not recipients:
                            self.reply("503 5.5.1 No valid recipients")
                            continue
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        fake.messages.append(Mail(sender, recipients, self._data()))
                        self.reply(f"250 2.0.0 Ok: queued as {len(fake.messages)}")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 2.0.0 OK")
                    elif verb == "QUIT":
                        self.reply("221 2.0.0 Bye")
                        return
                    else:
                        self.reply(f"502 5.5.2 {verb} not implemented")

            def _data(self):
                lines = []
                for raw in self.rfile:
                    if raw in (b".\r\n", b".\n"):
                        break
                    lines.append(raw[1:] if raw.startswith(b"..") else raw)  # dot-unstuffing
                return b"".join(lines).replace(b"\r\n", b"\n")  # stored as a local mailbox would

        self._server = _TcpServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def _credentials(self, arg):
        mechanism, _, blob = arg.partition(" ")
        try:
            _, user, password = base64.b64decode(blob).decode().split("\0")
        except ValueError:
            return None, None
        return (user, password) if mechanism.upper() == "PLAIN" else (None, None)

    def _auth(self, arg):
        user, password = self._credentials(arg)
        return user is not None and self.users.get(user) == password

    def _auth_failed(self, arg):
        user, password = self._credentials(arg)
        quoted = f" for {user}:{password}" if self.echo_credentials else ""
        return f"535 5.7.8 Authentication credentials invalid{quoted}"

    def close(self):
        self._stop()


def _servers(cls):
    """Yield a factory of started ``cls`` servers; close every one it made afterwards."""
    made = []

    def make(*args, **kwargs):
        server = cls(*args, **kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def robot_server():
    """``robot_server(kind="dingtalk"|"wecom", token_or_key=..., secret=None, keyword=None,
    limit_per_minute=20, clock=time.time)`` -> a started RobotServer, closed after the test."""
    yield from _servers(RobotServer)


@pytest.fixture
def hook_server():
    yield from _servers(HookServer)


@pytest.fixture
def smtp_server():
    yield from _servers(SmtpServer)
