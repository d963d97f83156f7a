"""Where notifications go: log files, DingTalk and WeCom robots, webhooks, email, Python functions.

``Channel.send`` never raises: every outcome, a crash included, is a SendResult.
Values written as ``${NAME}`` are read from the environment at send time (a rotated
secret needs no restart), and every error or answer is masked before it leaves.
"""

from ...errors import ConfigError
from .base import (MIN_SECRET_CHARS, TRUNCATED, Channel, Message, SendResult, cut_utf8, mask,  # noqa: F401
                   masked_message, notification_dict, secret_values)
from .function import PythonChannel
from .logfile import LogChannel
from .mail import EmailChannel
from .robots import DingTalkChannel, WeComChannel, dingtalk_sign  # noqa: F401
from .webhook import WebhookChannel

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
