"""A generic JSON webhook, optionally HMAC-signed (Feishu or Slack bridges, in-house tools)."""

import hashlib
import hmac
import json
import logging
import re
import urllib.parse

from ...secrets import MIN_SECRET_CHARS
from .base import Channel, SendResult, _host, _resolve, _retry_after, _shown, notification_dict, request_failed

log = logging.getLogger(__name__)

# 4xx answers about who we are or where we post (credentials, a wrong URL), not what: the channel's, so it
# pauses. Any other 4xx refuses this body (400, 413, 422, or a WAF's 403 for one text): retried alone.
# A receiver that refuses a bad token with 403 (not 401) is told apart only by its words, so it is taken
# as the body's: each notification then fails after its tries and the admins hear; none stays silent.
CHANNEL_4XX = {401, 404, 405, 407, 408, 410, 421, 426}


# A query parameter of these names carries a credential whatever its value looks like.
_SECRET_PARAMETER = re.compile(r"(?i)(?:\A|[_-]|api)(?:token|key|secret|sign|signature|sig|auth|password|code)\Z")


def url_tokens(url):
    """The parts of a hook's URL that carry its credential (Slack's, Discord's, Feishu's tokens live in the path).

    Only parts that read as a token: a whole path would also mask ``/failured`` or ``/api/alerts`` wherever
    they occur, in stored errors and file names."""
    parts = urllib.parse.urlsplit(url)
    found = [segment for segment in parts.path.split("/") if _token_like(segment)]
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _token_like(value) or (_SECRET_PARAMETER.search(name) and len(value) >= MIN_SECRET_CHARS):
            found.append(value)
    return found


def _token_like(part):
    """Long and mixing letters with digits (a key, a UUID), or long enough to be random letters."""
    if len(part) >= 24:
        return True
    return len(part) >= 16 and any(c.isdigit() for c in part) and any(c.isalpha() for c in part)


class WebhookChannel(Channel):
    """A generic JSON POST, signed with ``X-Failured-Signature: sha256=<hex HMAC of "{timestamp}.{body}">``."""

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
        return super().secret_values() + url_tokens(_shown(self.url))

    def _send(self, message):
        body = json.dumps(notification_dict(message), ensure_ascii=False, default=str).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", **_resolve(self.headers)}
        if self.secret:
            # The timestamp is signed with the body, so a captured request cannot be replayed later.
            timestamp = str(int(self.clock.now()))
            signed = timestamp.encode("ascii") + b"." + body
            signature = hmac.new(_resolve(self.secret).encode("utf-8"), signed, hashlib.sha256).hexdigest()
            headers.update({"X-Failured-Signature": f"sha256={signature}", "X-Failured-Timestamp": timestamp})
        import requests  # imported here: ~0.1 CPU-s that every `failured` command would pay at start

        try:
            resp = requests.post(_resolve(self.url), data=body, headers=headers, timeout=self.http_timeout(),
                                 allow_redirects=False)  # fmt: skip
        except requests.RequestException as exc:
            return request_failed(exc, self.http_timeout()[1])
        text = resp.text.strip()
        if 200 <= resp.status_code < 300:
            return SendResult(True, answer=f"HTTP {resp.status_code}: {text}".strip())
        if resp.status_code == 429:
            retry = _retry_after(resp.headers.get("Retry-After"), self.clock.now())
            return SendResult(False, retry_after=retry, error=f"HTTP 429: {text}", answer=text)
        about_body = 400 <= resp.status_code < 500 and resp.status_code not in CHANNEL_4XX
        return SendResult(False, error=f"HTTP {resp.status_code}: {text}", answer=text, message_fault=about_body)


