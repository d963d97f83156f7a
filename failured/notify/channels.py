"""Where notifications go: log files, DingTalk and WeCom robots, webhooks, email, Python functions.

``Channel.send`` never raises: every outcome, a crash included, is a SendResult.
Values written as ``${NAME}`` are read from the environment at send time (a rotated
secret needs no restart), and every error or answer is masked before it leaves.
"""

import base64
import hashlib
import hmac
import importlib
import json
import logging
import os
import re
import smtplib
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parsedate_to_datetime

import requests

from .. import alertlog
from ..clock import SystemClock
from ..errors import ConfigError
from ..handlers import ENV_REF, expand_env

log = logging.getLogger(__name__)

DINGTALK_URL = "https://oapi.dingtalk.com/robot/send"
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
DINGTALK_MAX_BODY_BYTES = 20000  # beyond: errcode 460101 "message too long, exceed 20000 bytes"
WECOM_MAX_MARKDOWN_BYTES = 4096  # beyond: errcode 40058 "markdown.content exceed max length 4096"
WECOM_MAX_TEXT_BYTES = 2048
TRUNCATED = "\n…(truncated)"
THROTTLED_SECONDS = 60.0
MAX_TEXT_CHARS = 1000  # of an error or answer
MIN_SECRET_CHARS = 4  # shorter values ("1", "no") would garble the text if masked
DINGTALK_THROTTLED = {130101}  # send too fast, exceed 20 times per minute
DINGTALK_REJECTED = {310000, 300001, 300005, 400013}  # sign/keyword/ip/timestamp; bad or dead token
WECOM_THROTTLED = {45009}  # api freq out of limit
WECOM_REJECTED = {93000}  # invalid webhook url (the key)


_SECRET_PARAM = re.compile(r"(?i)(?<![A-Za-z0-9_])((?:access_token|key|sign|secret|token|password)=)[^&\s'\"<>()]+")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


@dataclass(frozen=True)
class Message:
    """What the dispatcher hands a channel."""

    title: str  # one line
    body: str  # markdown
    audience: str  # "admin" | "user"
    kind: str  # task | exhausted | manual | breaker | config | threshold | digest | test
    record: dict  # JSON-able fields for the log channel and webhooks (task_id, category, ...)


@dataclass(frozen=True)
class SendResult:
    """One delivery attempt. ``error`` and ``answer`` are masked: they never hold a secret."""

    ok: bool
    retry_after: float | None = None  # throttled: wait at least this long; not a failure
    misconfigured: bool = False  # rejected for security or a bad key: stop until the config changes
    error: str | None = None
    answer: str | None = None  # what the remote end said, for `failured notify-test`


class _Misconfigured(Exception):
    """The channel cannot be used as configured (e.g. an unset variable); never leaves this module."""


def mask(text, secrets):
    """``text`` with each secret (at least 4 characters) and each secret-looking query value as ``***``."""
    if not text:
        return text
    variants = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            variants |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, "***")
    return _SECRET_PARAM.sub(r"\1***", text)


def secret_values(channels):
    """Every resolved secret value the channels use, for masking text elsewhere."""
    return list(dict.fromkeys(value for channel in channels for value in channel.secret_values()))


def cut_utf8(text, limit, marker=TRUNCATED):
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its longest prefix that fits followed by ``marker``."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = max(0, limit - len(marker.encode("utf-8")))
    return data[:room].decode("utf-8", "ignore") + marker  # "ignore" drops only a cut last character


def dingtalk_sign(secret, timestamp_ms):
    """DingTalk's robot signature: base64 HMAC-SHA256 of ``"{timestamp}\\n{secret}"`` keyed by the secret."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode("ascii")


def notification_dict(message):
    """The JSON object webhooks and Python channels get: title, body, audience, kind and the record."""
    own = {"title": message.title, "body": message.body, "audience": message.audience, "kind": message.kind}
    return {**own, **{k: v for k, v in message.record.items() if k not in own}}


def _with_title(message):
    """Robots show only the text: make sure the title is in it."""
    return message.body if message.title in message.body else f"**{message.title}**\n\n{message.body}"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        yield from (v for v in value if isinstance(v, str))
    elif isinstance(value, dict):
        yield from (v for v in value.values() if isinstance(v, str))


def _resolve(value):
    """``value`` with ``${NAME}`` filled in from the environment (strings, lists and tables of strings)."""
    try:
        if isinstance(value, str):
            return expand_env(value)
        if isinstance(value, (list, tuple)):
            return [expand_env(v) for v in value]
        if isinstance(value, dict):
            return {k: expand_env(v) for k, v in value.items()}
    except KeyError as exc:
        raise _Misconfigured(f"environment variable {exc.args[0]} is not set") from None
    return value


def _shown(value):
    """A non-secret value for describe(): resolved when possible, else as written."""
    try:
        return expand_env(value)
    except KeyError:
        return value


def _tail(value):
    """A secret for describe(): only its last 4 characters, and only when it is long."""
    try:
        resolved = expand_env(value)
    except KeyError:
        return f"{value} (unset)"  # the variable's name, never a value
    return f"…{resolved[-4:]}" if len(resolved) >= 16 else "…"


def _clip(text):
    return text if text is None or len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _host(url):
    parts = urllib.parse.urlsplit(_shown(url))
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def _retry_after(header, now):
    """Seconds from a Retry-After header (seconds or an HTTP date); THROTTLED_SECONDS if absent or unreadable."""
    if not header:
        return THROTTLED_SECONDS
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - now)
    except (TypeError, ValueError):
        return THROTTLED_SECONDS


class Channel:
    """One configured destination. Subclasses implement ``_send``; ``send`` never raises."""

    kind = ""
    default_rate = None  # messages per minute the dispatcher may send; None = unlimited
    fields = ()  # config fields, as attributes holding the values as written
    secret_fields = ()

    def __init__(self, name, *, rate_per_minute=None, timeout=5.0, clock=None):
        self.name = name
        self.rate_per_minute = self.default_rate if rate_per_minute is None else rate_per_minute
        self.timeout = timeout
        self.clock = clock or SystemClock()

    def send(self, message: Message) -> SendResult:
        """Deliver one message; every outcome comes back as a SendResult."""
        secrets = self.secret_values()
        try:
            result = self._send(message)
        except _Misconfigured as exc:
            result = SendResult(False, misconfigured=True, error=str(exc))
        except Exception as exc:  # a bug here must not stop the dispatcher
            result = SendResult(False, error=f"{self.kind} channel crashed: {type(exc).__name__}: {exc}")
            log.error("channel %s: %s", self.name, mask(result.error, secrets))
        # Mask before cutting: a secret cut in half would no longer be recognised.
        error, answer = (_clip(mask(text, secrets)) for text in (result.error, result.answer))
        return SendResult(result.ok, result.retry_after, result.misconfigured, error, answer)

    def describe(self) -> str:
        """A one-line description without secrets."""
        return self.kind

    def secret_values(self):
        """Resolved values of the secret fields and of every ``${NAME}`` this channel uses."""
        found = []
        for field in self.fields:
            for text in _strings(getattr(self, field)):
                found += [os.environ[n] for n in ENV_REF.findall(text) if os.environ.get(n)]
                if field in self.secret_fields:
                    found.append(_shown(text))
        return [s for s in dict.fromkeys(found) if len(s) >= MIN_SECRET_CHARS and not ENV_REF.search(s)]

    def _send(self, message):
        raise NotImplementedError

    def _post_json(self, url, payload, headers=None):
        """POST ``payload`` as UTF-8 JSON; the response, or a SendResult when the request failed."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        try:
            return requests.post(url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return SendResult(False, error=f"{type(exc).__name__}: {exc}")

    def _robot_answer(self, resp, throttled, rejected):
        """Turn a DingTalk or WeCom answer (HTTP 200 with errcode/errmsg) into a SendResult."""
        if isinstance(resp, SendResult):
            return resp
        text = resp.text.strip()
        if resp.status_code == 429:
            return SendResult(False, retry_after=_retry_after(resp.headers.get("Retry-After"), self.clock.now()),
                              error=f"HTTP 429: {text}", answer=text)  # fmt: skip
        if resp.status_code != 200:
            return SendResult(False, error=f"HTTP {resp.status_code}: {text}", answer=text)
        try:
            answer = resp.json()
            code = int(answer["errcode"])
        except (ValueError, TypeError, KeyError):
            return SendResult(False, error=f"unexpected answer: {text}", answer=text)
        if code == 0:
            return SendResult(True, answer=text)
        error = f"{self.kind} errcode {code}: {answer.get('errmsg', '')}"
        if code in throttled:
            return SendResult(False, retry_after=THROTTLED_SECONDS, error=error, answer=text)
        return SendResult(False, misconfigured=code in rejected, error=error, answer=text)


class LogChannel(Channel):
    """JSON lines in ``admin_alerts.log`` or ``user_notifications.log``; always on."""

    kind = "log"
    fields = ("log_dir",)

    def __init__(self, name, log_dir=None, **kw):
        super().__init__(name, **kw)
        self.log_dir = log_dir  # the dispatcher sets the daemon's log dir when the config has none

    @classmethod
    def parse(cls, name, t, log_dir=None, **kw):
        return cls(name, log_dir=t.string("dir") or log_dir, **kw)

    def describe(self):
        return f"log files in {self.log_dir}"

    def _send(self, message):
        if self.log_dir is None:
            raise _Misconfigured("no log directory")
        if message.audience not in alertlog.FILES:
            return SendResult(False, error=f"unknown audience {message.audience!r}")
        record = {k: v for k, v in message.record.items() if k != "time"}
        record.update(kind=message.kind, audience=message.audience, title=message.title, body=message.body)
        path = alertlog.append_line(_resolve(self.log_dir), message.audience, record, self.clock.now())
        return SendResult(True, answer=f"appended to {path}")


class DingTalkChannel(Channel):
    """A DingTalk group robot: signed markdown with @mobiles; 20 messages a minute."""

    kind = "dingtalk"
    default_rate = 20
    fields = ("access_token", "secret", "keyword", "at_mobiles", "url")
    secret_fields = ("access_token", "secret")

    def __init__(self, name, access_token, secret=None, keyword=None, at_mobiles=(), at_all=False,
                 url=DINGTALK_URL, **kw):  # fmt: skip
        super().__init__(name, **kw)
        self.access_token, self.secret, self.keyword = access_token, secret, keyword
        self.at_mobiles, self.at_all, self.url = tuple(at_mobiles), at_all, url

    @classmethod
    def parse(cls, name, t, **kw):
        return cls(name, t.string("access_token", required=True), t.string("secret"), t.string("keyword"),
                   t.strings("at_mobiles"), t.boolean("at_all", False), t.url("url", DINGTALK_URL), **kw)  # fmt: skip

    def describe(self):
        extra = [", signed"] if self.secret else []
        extra += [f", keyword {self.keyword}"] if self.keyword else []
        extra += [f", @{len(self.at_mobiles)} mobiles"] if self.at_mobiles else []
        extra += [", @all"] if self.at_all else []
        return f"dingtalk robot {_tail(self.access_token)} at {_host(self.url)}" + "".join(extra)

    def _send(self, message):
        params = {"access_token": _resolve(self.access_token)}
        if self.secret:
            timestamp = str(round(self.clock.now() * 1000))
            params.update(timestamp=timestamp, sign=dingtalk_sign(_resolve(self.secret), timestamp))
        url = _resolve(self.url)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)  # quote_plus, as DingTalk's sample
        resp = self._post_json(url, self.payload(message))
        return self._robot_answer(resp, DINGTALK_THROTTLED, DINGTALK_REJECTED)

    def payload(self, message):
        """The robot's JSON: markdown with the keyword and @mobiles in the text, cut to 20000 bytes."""
        mobiles = _resolve(list(self.at_mobiles))
        keyword = _resolve(self.keyword) if self.keyword else ""
        core = _with_title(message)
        # DingTalk pings only mobiles that are both in atMobiles and written as @mobile in the text.
        pings = " ".join(f"@{m}" for m in mobiles if f"@{m}" not in core)
        limit = len(core.encode("utf-8"))
        while True:
            text = cut_utf8(core, limit)
            if keyword and keyword not in text:
                text = f"{keyword} {text}"
            text += f"\n\n{pings}" if pings else ""
            payload = {"msgtype": "markdown", "markdown": {"title": message.title, "text": text},
                       "at": {"atMobiles": mobiles, "isAtAll": self.at_all}}  # fmt: skip
            over = len(json.dumps(payload, ensure_ascii=False).encode("utf-8")) - DINGTALK_MAX_BODY_BYTES
            if over <= 0 or limit <= 0:
                return payload
            limit -= over + 16  # JSON escapes make a byte of text up to two in the body


class WeComChannel(Channel):
    """A WeCom (企业微信) group robot: markdown up to 4096 bytes; 20 messages a minute.

    Markdown cannot @ by mobile, so with ``mentioned_mobile_list`` each notification
    is followed by a text message carrying the title and the mentions; that costs
    two robot messages, so the rate the dispatcher may use is halved.
    """

    kind = "wecom"
    default_rate = 20
    fields = ("key", "mentioned_mobile_list", "mentioned_list", "url")
    secret_fields = ("key",)

    def __init__(self, name, key, mentioned_mobile_list=(), mentioned_list=(), url=WECOM_URL, **kw):
        super().__init__(name, **kw)
        self.key, self.url = key, url
        self.mentioned_mobile_list, self.mentioned_list = tuple(mentioned_mobile_list), tuple(mentioned_list)
        if self.mentioned_mobile_list and self.rate_per_minute:
            self.rate_per_minute = max(1, self.rate_per_minute // 2)

    @classmethod
    def parse(cls, name, t, **kw):
        return cls(name, t.string("key", required=True), t.strings("mentioned_mobile_list"),
                   t.strings("mentioned_list"), t.url("url", WECOM_URL), **kw)  # fmt: skip

    def describe(self):
        mentions = len(self.mentioned_mobile_list) + len(self.mentioned_list)
        return f"wecom robot {_tail(self.key)} at {_host(self.url)}" + (f", @{mentions} mentions" if mentions else "")

    def _send(self, message):
        url = _resolve(self.url)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"key": _resolve(self.key)})
        markdown, mention = self.payloads(message)
        result = self._robot_answer(self._post_json(url, markdown), WECOM_THROTTLED, WECOM_REJECTED)
        if not result.ok or mention is None:
            return result
        second = self._robot_answer(self._post_json(url, mention), WECOM_THROTTLED, WECOM_REJECTED)
        if second.ok:
            return result
        # The notification itself went out; sending it again would duplicate it.
        return SendResult(True, error=f"sent, but the @mention message failed: {second.error}", answer=result.answer)

    def payloads(self, message):
        """(markdown message, text message with mentions or None)."""
        users = "".join(f"<@{u}>" for u in _resolve(list(self.mentioned_list)))  # markdown's own @userid syntax
        users = f"\n{users}" if users else ""
        content = cut_utf8(_with_title(message), WECOM_MAX_MARKDOWN_BYTES - len(users.encode("utf-8"))) + users
        markdown = {"msgtype": "markdown", "markdown": {"content": content}}
        if not self.mentioned_mobile_list:
            return markdown, None
        text = {"content": cut_utf8(message.title, WECOM_MAX_TEXT_BYTES),
                "mentioned_mobile_list": _resolve(list(self.mentioned_mobile_list))}  # fmt: skip
        return markdown, {"msgtype": "text", "text": text}


class WebhookChannel(Channel):
    """A generic JSON POST, signed with ``X-Failured-Signature: sha256=<hex HMAC of the body>``."""

    kind = "webhook"
    default_rate = 60
    fields = ("url", "secret", "headers")
    secret_fields = ("secret", "headers")

    def __init__(self, name, url, secret=None, headers=None, **kw):
        super().__init__(name, **kw)
        self.url, self.secret, self.headers = url, secret, dict(headers or {})

    @classmethod
    def parse(cls, name, t, **kw):
        return cls(name, t.url("url", required=True), t.string("secret"), t.table("headers"), **kw)

    def describe(self):
        return f"webhook {_host(self.url)}" + (", signed" if self.secret else "")

    def secret_values(self):
        found = super().secret_values()
        path = urllib.parse.urlsplit(_shown(self.url))  # some hooks carry their token in the path
        return found + [p for p in (path.path, path.query) if len(p) >= 8]

    def _send(self, message):
        body = json.dumps(notification_dict(message), ensure_ascii=False, default=str).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", **_resolve(self.headers)}
        if self.secret:
            signature = hmac.new(_resolve(self.secret).encode("utf-8"), body, hashlib.sha256).hexdigest()
            headers.update({"X-Failured-Signature": f"sha256={signature}",
                            "X-Failured-Timestamp": str(int(self.clock.now()))})  # fmt: skip
        try:
            resp = requests.post(_resolve(self.url), data=body, headers=headers, timeout=self.timeout,
                                 allow_redirects=False)  # fmt: skip
        except requests.RequestException as exc:
            return SendResult(False, error=f"{type(exc).__name__}: {exc}")
        text = resp.text.strip()
        if 200 <= resp.status_code < 300:
            return SendResult(True, answer=f"HTTP {resp.status_code}: {text}".strip())
        retry = _retry_after(resp.headers.get("Retry-After"), self.clock.now()) if resp.status_code == 429 else None
        return SendResult(False, retry_after=retry, error=f"HTTP {resp.status_code}: {text}", answer=text)


class EmailChannel(Channel):
    """Plain-text mail over SMTP (STARTTLS or implicit TLS; login only with a username)."""

    kind = "email"
    default_rate = 60
    fields = ("host", "username", "password", "sender", "to")
    secret_fields = ("password",)

    def __init__(self, name, host, sender, to, port=None, starttls=True, use_ssl=False, username=None,
                 password=None, **kw):  # fmt: skip
        kw.setdefault("timeout", 10.0)
        super().__init__(name, **kw)
        self.host, self.sender, self.to = host, sender, tuple(to)
        self.port = port or (465 if use_ssl else 587 if starttls else 25)
        self.starttls, self.use_ssl, self.username, self.password = starttls, use_ssl, username, password

    @classmethod
    def parse(cls, name, t, **kw):
        use_ssl, starttls = t.boolean("ssl", False), t.boolean("starttls", True)
        if use_ssl and "starttls" in t.values:
            t.fail("starttls", "cannot be combined with ssl = true (implicit TLS); remove one of them")
        to = t.strings("to")
        if not to:
            t.fail("to", 'missing or empty; set to = ["ops@example.com"]')
        return cls(name, t.string("host", required=True), t.string("sender", required=True), to,
                   t.number("port", None, integer=True, high=65535), starttls and not use_ssl, use_ssl,
                   t.string("username"), t.string("password"), **kw)  # fmt: skip

    def describe(self):
        return f"email via {_shown(self.host)}:{self.port} to {', '.join(_shown(a) for a in self.to)}"

    def _send(self, message):
        host, sender, to = _resolve(self.host), _resolve(self.sender), _resolve(list(self.to))
        mail = EmailMessage()
        mail["Subject"], mail["From"], mail["To"] = message.title, sender, ", ".join(to)
        mail["Date"], mail["Message-ID"] = formatdate(self.clock.now(), usegmt=True), make_msgid(domain="failured")
        mail.set_content(message.body, charset="utf-8")
        username = _resolve(self.username) if self.username else None
        password = _resolve(self.password) if self.password else ""
        try:
            context = ssl.create_default_context()  # verifies the certificate; smtplib's default does not
            connect = smtplib.SMTP_SSL(host, self.port, timeout=self.timeout, context=context) if self.use_ssl \
                else smtplib.SMTP(host, self.port, timeout=self.timeout)
            with connect as smtp:
                if self.starttls:
                    smtp.starttls(context=context)
                if username:
                    smtp.login(username, password)
                refused = smtp.send_message(mail)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError, smtplib.SMTPSenderRefused,
                smtplib.SMTPRecipientsRefused) as exc:  # fmt: skip
            return SendResult(False, misconfigured=True, error=f"{type(exc).__name__}: {exc}")
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(False, error=f"{type(exc).__name__}: {exc}")
        answer = f"accepted for {len(to) - len(refused)} of {len(to)} recipients"
        return SendResult(True, answer=answer + (f"; refused: {', '.join(refused)}" if refused else ""))


class PythonChannel(Channel):
    """Calls ``module:function(notification_dict)``, e.g. an SMS gateway; raising means failed."""

    kind = "python"
    fields = ("target",)

    def __init__(self, name, target, **kw):
        kw.setdefault("timeout", 10.0)
        super().__init__(name, **kw)
        self.target = target

    @classmethod
    def parse(cls, name, t, **kw):
        target = t.string("target", required=True)
        if not _TARGET.match(target):
            t.fail("target", f'is {target!r}; set target = "package.module:function" (note the colon)')
        return cls(name, target, **kw)

    def describe(self):
        return f"python {self.target}"

    def _send(self, message):
        # In a thread so that a hanging function cannot stall the dispatcher; after the
        # timeout the thread is abandoned (it may still finish) and the send counts as failed.
        result = {}
        worker = threading.Thread(target=self._call, args=(notification_dict(message), result),
                                  name=f"channel-{self.name}", daemon=True)  # fmt: skip
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return SendResult(False, error=f"timed out after {self.timeout:g}s (thread abandoned)")
        return result["result"]

    def _call(self, notification, result):
        # BaseException: a SystemExit from user code must become a result, not a silent thread death.
        try:
            module_name, _, func_name = self.target.partition(":")
            func = getattr(importlib.import_module(module_name), func_name)
        except BaseException as exc:
            result["result"] = SendResult(False, misconfigured=True,
                                          error=f"cannot import {self.target}: {type(exc).__name__}: {exc}")
            return
        try:
            answer = func(notification)
            result["result"] = SendResult(True, answer=None if answer is None else repr(answer))
        except BaseException as exc:
            result["result"] = SendResult(False, error=f"{type(exc).__name__}: {exc}")


_CLASSES = {c.kind: c for c in (LogChannel, DingTalkChannel, WeComChannel, WebhookChannel, EmailChannel,
                                PythonChannel)}  # fmt: skip
_TOML_FIELDS = {
    "log": ("dir",),
    "dingtalk": ("access_token", "secret", "keyword", "at_mobiles", "at_all", "url", "timeout"),
    "wecom": ("key", "mentioned_mobile_list", "mentioned_list", "url", "timeout"),
    "webhook": ("url", "secret", "headers", "timeout"),
    "email": ("host", "port", "starttls", "ssl", "username", "password", "sender", "to", "timeout"),
    "python": ("target", "timeout"),
}


_EXAMPLES = {"port": 587, "timeout": 5, "rate_per_minute": 20}


class _Table:
    """Typed reads from one channel table; each failure is a ConfigError naming ``key.<field>``."""

    def __init__(self, table, path, key):
        self.values, self.path, self.key = table, path, key

    def fail(self, field, reason):
        raise ConfigError(self.path, f"{self.key}.{field}", reason)

    def string(self, field, default=None, required=False):
        value = self.values.get(field, default)
        if required and value is None:
            self.fail(field, f'missing; set {field} = "..." (or "${{ENV_VAR}}")')
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(field, "must be a non-empty string; quote it")
        return value

    def strings(self, field):
        value = self.values.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(field, f'must be a list of strings, e.g. {field} = ["..."]')
        return value

    def table(self, field):
        value = self.values.get(field, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.fail(field, 'must be a table of strings, e.g. { Authorization = "Bearer ${TOKEN}" }')
        return value

    def boolean(self, field, default):
        value = self.values.get(field, default)
        if not isinstance(value, bool):
            self.fail(field, "must be true or false (no quotes)")
        return value

    def number(self, field, default, integer=False, high=None):
        value = self.values.get(field, default)
        if value is None:
            return None
        kind = "integer" if integer else "number"
        wrong = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
        if wrong or not 0 < value < float("inf") or (high is not None and value > high):
            limit = f" up to {high}" if high else ""
            self.fail(field, f"must be a positive {kind}{limit}, e.g. {field} = {_EXAMPLES.get(field, 20)}")
        return value

    def url(self, field, default=None, required=False):
        value = self.string(field, default, required)
        if value is not None and not value.startswith(("http://", "https://", "${")):
            self.fail(field, 'must be an http(s) URL, e.g. url = "https://host/path"')
        return value


def parse_channel(name: str, table: dict, path, key: str, *, log_dir=None, clock=None) -> Channel:
    """Validate one ``[channels.<name>]`` table into a Channel; raise ConfigError naming ``key.<field>``."""
    kinds = ", ".join(f'"{k}"' for k in _CLASSES)
    if not isinstance(table, dict):
        raise ConfigError(path, key, f"must be a table with kind = one of {kinds}")
    kind = table.get("kind")
    if kind not in _CLASSES:
        got = "missing" if kind is None else f"is {kind!r}"
        raise ConfigError(path, f"{key}.kind", f"{got}; set kind = one of {kinds}")
    allowed = ("kind", "rate_per_minute", *_TOML_FIELDS[kind])
    for field in table:
        if field not in allowed:
            reason = f"unknown key for a {kind} channel; allowed: {', '.join(allowed)}"
            raise ConfigError(path, f"{key}.{field}", reason)
    t = _Table(table, path, key)
    kw = {"rate_per_minute": t.number("rate_per_minute", None), "clock": clock}
    if "timeout" in _TOML_FIELDS[kind] and "timeout" in table:
        kw["timeout"] = float(t.number("timeout", None))
    if kind == "log":
        kw["log_dir"] = log_dir
    return _CLASSES[kind].parse(name, t, **kw)
