"""DingTalk and WeCom group robots: signing, limits, and what their answers mean."""

import base64
import hashlib
import hmac
import json
import logging
import re
import urllib.parse
from dataclasses import replace

from ..inert import one_line
from .base import Channel, SendResult, _host, _resolve, _tail, cut_utf8

log = logging.getLogger(__name__)

DINGTALK_URL = "https://oapi.dingtalk.com/robot/send"
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
DINGTALK_MAX_BODY_BYTES = 20000  # beyond: errcode 460101 "message too long, exceed 20000 bytes"
WECOM_MAX_MARKDOWN_BYTES = 4096  # beyond: errcode 40058 "markdown.content exceed max length 4096"
WECOM_MAX_TEXT_BYTES = 2048
DINGTALK_THROTTLED = {130101}  # send too fast, exceed 20 times per minute
_DINGTALK_TOKEN = ("DingTalk refuses the robot's access_token (wrong, or the robot was removed): "
                   "fix the channel's access_token in the config")
# What each rejection means and what to fix: said by `failured status` while the channel is paused.
DINGTALK_REJECTED = {
    310000: ("DingTalk's security check failed (signature, timestamp, keyword or IP whitelist): fix the channel's "
             "secret or keyword in the config, or the robot's security settings"),
    300001: _DINGTALK_TOKEN, 300005: _DINGTALK_TOKEN, 400013: _DINGTALK_TOKEN,
}
# DingTalk's 310000 "invalid timestamp": the signed timestamp is over an hour from DingTalk's time.
CLOCK_ADVICE = ("this server's clock is more than an hour off DingTalk's: set it right (timedatectl, chrony); "
                "the notifications wait and go out by themselves once it is")
WECOM_THROTTLED = {45009}  # api freq out of limit
WECOM_REJECTED = {93000: ("WeCom refuses the webhook key (wrong, or the robot was removed): "
                          "fix the channel's key in the config")}
# Answers about one message's content, not the robot: that message is retried alone, the others go on.
DINGTALK_MESSAGE_REFUSED = {460101, 40035}  # message too long; "缺少参数 json" (a body it could not read)
WECOM_MESSAGE_REFUSED = {40058, 40035}  # content exceeds max length; invalid request parameter


def robot_markdown(message):
    """(title on one line, markdown text with the title in it) of what a robot shows.

    failured writes no HTML into its messages, so a ``<`` in one (a ``<font>`` tag, a ``<@userid>``
    mention, from text that did not pass through ``messages``: a row queued by an older version, an error
    quoted in an alert) is someone else's: it is shown as ``＜``, never rendered, and pings nobody."""
    title = one_line(message.title)
    text = message.body if message.title in message.body else f"**{title}**\n\n{message.body}"
    return title, text.replace("<", "＜")


def dingtalk_sign(secret, timestamp_ms):
    """DingTalk's robot signature: base64 HMAC-SHA256 of ``"{timestamp}\\n{secret}"`` keyed by the secret."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode("ascii")


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
        result = self._robot_answer(resp, DINGTALK_THROTTLED, DINGTALK_REJECTED, DINGTALK_MESSAGE_REFUSED)
        if result.misconfigured and "timestamp" in (result.error or ""):
            # Not the config: this server's clock. Retried on the backoff, it goes out once the clock is right.
            return replace(result, misconfigured=False, advice=None, error=f"{result.error} ({CLOCK_ADVICE})")
        return result

    def payload(self, message):
        """The robot's JSON: markdown with the keyword and @mobiles in the text, cut to 20000 bytes."""
        mobiles = _resolve(list(self.at_mobiles))
        keyword = _resolve(self.keyword) if self.keyword else ""
        title, core = robot_markdown(message)
        # DingTalk pings only mobiles that are both in atMobiles and written as @mobile in the text.
        # A reporter's longer number (@138000000001) holds "@13800000000" but pings no one: only a whole one counts.
        pings = " ".join(f"@{m}" for m in mobiles if not re.search(rf"@{re.escape(m)}(?!\d)", core))
        limit = len(core.encode("utf-8"))
        while True:
            text = cut_utf8(core, limit)
            if keyword and keyword not in text:
                text = f"{keyword} {text}"
            text += f"\n\n{pings}" if pings else ""
            payload = {"msgtype": "markdown", "markdown": {"title": title, "text": text},
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
        result = self._robot_answer(self._post_json(url, markdown), WECOM_THROTTLED, WECOM_REJECTED,
                                    WECOM_MESSAGE_REFUSED)
        if not result.ok or mention is None:
            return result
        second = self._robot_answer(self._post_json(url, mention), WECOM_THROTTLED, WECOM_REJECTED)
        if second.ok:
            return result
        # The notification itself went out; sending it again would duplicate it. A throttled mention pauses the lane.
        return SendResult(True, error=f"sent, but the @mention message failed: {second.error}", answer=result.answer,
                          retry_after=second.retry_after)

    def payloads(self, message):
        """(markdown message, text message with mentions or None)."""
        users = "".join(f"<@{u}>" for u in _resolve(list(self.mentioned_list)))  # markdown's own @userid syntax
        users = f"\n{users}" if users else ""
        title, core = robot_markdown(message)
        content = cut_utf8(core, WECOM_MAX_MARKDOWN_BYTES - len(users.encode("utf-8"))) + users
        markdown = {"msgtype": "markdown", "markdown": {"content": content}}
        if not self.mentioned_mobile_list:
            return markdown, None
        text = {"content": cut_utf8(title, WECOM_MAX_TEXT_BYTES),
                "mentioned_mobile_list": _resolve(list(self.mentioned_mobile_list))}  # fmt: skip
        return markdown, {"msgtype": "text", "text": text}


