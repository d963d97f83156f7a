"""A Python function as a channel (the spec's custom channels: SMS gateways and the like)."""

import importlib
import logging
import re
import threading

from .base import Channel, SendResult, notification_dict



log = logging.getLogger(__name__)


_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


class PythonChannel(Channel):
    """Calls ``module:function(notification_dict)``, e.g. an SMS gateway; raising means failed.

    An OSError (ConnectionError, TimeoutError, ...) or a timeout says the gateway is unreachable: the
    channel pauses. Any other exception is about this notification: it is retried alone, the others go on.
    """

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
            result["result"] = SendResult(False, error=f"{type(exc).__name__}: {exc}",
                                          message_fault=not isinstance(exc, OSError))


