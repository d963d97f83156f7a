"""The channel base: messages, results, masking, ${NAME} resolution; ``Channel.send`` never raises."""

import json
import logging
import os
import urllib.parse
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime

from ...clock import SystemClock
from ...secrets import ENV_REF, MIN_SECRET_CHARS, expand_env, mask  # noqa: F401 - mask is re-exported
from ...text import clipped


log = logging.getLogger(__name__)

TRUNCATED = "\n…(truncated)"
THROTTLED_SECONDS = 60.0
MAX_TEXT_CHARS = 1000  # of an error or answer
# Once a request is sent, its answer is waited for at least this long, whatever the channel's `timeout` (which
# bounds connecting): a robot that posts the message and answers late would otherwise be sent it again.
ANSWER_WAIT_SECONDS = 30.0




@dataclass(frozen=True)
class Message:
    """What the dispatcher hands a channel."""

    title: str  # one line
    body: str  # markdown
    audience: str  # "admin" | "user"
    kind: str  # task | exhausted | manual | breaker | config | threshold | digest | undeliverable | test
    record: dict  # JSON-able fields for the log channel and webhooks (task_id, category, ...)


@dataclass(frozen=True)
class SendResult:
    """One delivery attempt. ``error`` and ``answer`` are masked: they never hold a secret."""

    ok: bool
    retry_after: float | None = None  # throttled: wait at least this long; not a failure
    misconfigured: bool = False  # rejected for security or a bad key: stop until the config changes
    error: str | None = None
    answer: str | None = None  # what the remote end said, for `failured notify-test`
    advice: str | None = None  # misconfigured: what the rejection means and what to fix (no secrets)
    # This message could not be built, or the receiver refuses its content: other messages may still go, so
    # the channel is not paused for it (the lane retries it on its own, then gives it up).
    message_fault: bool = False


UNSET_VARIABLE_ADVICE = ("set the variable in the daemon's environment (the unit's EnvironmentFile, or the shell that "
                         "starts it), then restart the daemon: the environment is read at start")


class _Misconfigured(Exception):
    """The channel cannot be used as configured (e.g. an unset variable); never leaves this module."""


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


# A secret masked in a title or body (markdown): "***" would open bold-italic there; the full-width stars are
# what a reporter's masked text already reads as once made inert.
MARKDOWN_MASK = "＊＊＊"


def masked_message(message, secrets):
    """``message`` with every secret masked in its title, body and record texts (what leaves must not leak)."""
    record = {k: mask(v, secrets) if isinstance(v, str) else v for k, v in message.record.items()}
    return Message(mask(message.title, secrets, MARKDOWN_MASK), mask(message.body, secrets, MARKDOWN_MASK),
                   message.audience, message.kind, record)


def notification_dict(message):
    """The JSON object webhooks and Python channels get: title, body, audience, kind and the record."""
    own = {"title": message.title, "body": message.body, "audience": message.audience, "kind": message.kind}
    return {**own, **{k: v for k, v in message.record.items() if k not in own}}


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
        raise _Misconfigured(f"environment variable {exc.args[0]} is not set", UNSET_VARIABLE_ADVICE) from None
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
    return clipped(text, MAX_TEXT_CHARS)


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


def request_failed(exc, answer_wait):
    """The SendResult of a request that got no answer; one sent but not answered within ``answer_wait`` seconds
    may have arrived, and the error says so (it is sent again: a notification is never dropped on a guess)."""
    import requests

    if isinstance(exc, requests.ReadTimeout):
        return SendResult(False, error=f"sent, but no answer within {answer_wait:g}s: it may have arrived and is "
                                       f"sent again ({type(exc).__name__})")
    return SendResult(False, error=f"{type(exc).__name__}: {exc}")


class Channel:
    """One configured destination. Subclasses implement ``_send``; ``send`` never raises."""

    kind = ""
    default_rate = None  # messages per minute the dispatcher may send; None = unlimited
    fields = ()  # config fields, as attributes holding the values as written
    secret_fields = ()
    answer_wait = ANSWER_WAIT_SECONDS

    def __init__(self, name, *, rate_per_minute=None, timeout=5.0, clock=None):
        self.name = name
        self.rate_per_minute = self.default_rate if rate_per_minute is None else rate_per_minute
        self.timeout = timeout
        self.clock = clock or SystemClock()

    def send(self, message: Message) -> SendResult:
        """Deliver one message; every outcome comes back as a SendResult."""
        secrets = self.secret_values()
        try:
            result = self._send(masked_message(message, secrets))
        except _Misconfigured as exc:
            advice = exc.args[1] if len(exc.args) > 1 else None
            result = SendResult(False, misconfigured=True, error=str(exc.args[0]), advice=advice)
        except Exception as exc:  # a bug here must not stop the dispatcher
            # Raised while building or sending this one message (a header it cannot hold, a text the
            # receiver's library refuses): the message's fault, not a reason to hold back the others.
            result = SendResult(False, error=f"{self.kind} channel crashed: {type(exc).__name__}: {exc}",
                                message_fault=True)
            log.error("channel %s: %s", self.name, mask(result.error, secrets))
        # Mask before cutting: a secret cut in half would no longer be recognised.
        error, answer = (_clip(mask(text, secrets)) for text in (result.error, result.answer))
        return replace(result, error=error, answer=answer)

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

    def unset_variables(self, environ=os.environ):
        """[(field, NAME)] of the ``${NAME}``s this channel uses that ``environ`` does not set."""
        return [(field, name) for field in self.fields for text in _strings(getattr(self, field))
                for name in ENV_REF.findall(text) if name not in environ]

    def _send(self, message):
        raise NotImplementedError

    def http_timeout(self):
        """requests' (connect, read) timeout: ``timeout`` to connect, then at least ANSWER_WAIT_SECONDS for the
        answer."""
        return self.timeout, max(self.timeout, self.answer_wait)

    def _post_json(self, url, payload, headers=None):
        """POST ``payload`` as UTF-8 JSON; the response, or a SendResult when the request failed."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        import requests  # imported here: ~0.1 CPU-s that every `failured` command would pay at start

        try:
            return requests.post(url, data=body, headers=headers, timeout=self.http_timeout(), allow_redirects=False)
        except requests.RequestException as exc:
            return request_failed(exc, self.http_timeout()[1])

    def _robot_answer(self, resp, throttled, rejected, refused=()):
        """Turn a DingTalk or WeCom answer (HTTP 200 with errcode/errmsg) into a SendResult; ``rejected``: {errcode:
        what it means and what to fix} of the answers that pause the channel; ``refused``: the errcodes about
        this message's content."""
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
        return SendResult(False, misconfigured=code in rejected, error=error, answer=text, advice=rejected.get(code),
                          message_fault=code in refused)


