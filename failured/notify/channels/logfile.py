"""The log channel: JSON lines in admin_alerts.log / user_notifications.log, always on."""

import logging


from ... import alertlog

from .base import Channel, SendResult, _Misconfigured, _resolve

log = logging.getLogger(__name__)


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
        log_dir = _resolve(self.log_dir)
        try:
            path = alertlog.append_line(log_dir, message.audience, record, self.clock.now())
        except OSError as exc:  # a full or read-only disk: a failed delivery, retried, not a crash
            where = exc.filename or f"{log_dir}/{alertlog.FILES[message.audience]}"
            return SendResult(False, error=f"cannot write {where}: {exc.strerror or exc}")
        return SendResult(True, answer=f"appended to {path}")


