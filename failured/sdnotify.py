"""The sd_notify protocol, spoken directly: readiness, status, reload and watchdog pings to systemd."""

import logging
import os
import socket
import time

SEND_TIMEOUT_SECONDS = 0.5

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET``; every call is a no-op outside systemd."""

    def __init__(self, address=None, watchdog_usec=None):
        self.address = address
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ=os.environ):
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        path = environ.get("NOTIFY_SOCKET") or None
        if path and path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace socket
        usec = None
        pid = environ.get("WATCHDOG_PID")
        # The watchdog variables are inherited by children; only the pid systemd named may ping.
        if not pid or _to_int(pid) == os.getpid():
            usec = _to_int(environ.get("WATCHDOG_USEC"))
        return cls(path, usec if usec and usec > 0 else None)

    @property
    def enabled(self):
        return self.address is not None

    @property
    def watchdog_interval(self):
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled advises), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def extend_start(self, seconds, status):
        """Ask systemd for ``seconds`` more to start (TimeoutStartSec runs otherwise), saying what takes them."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}\nSTATUS={status}")

    def ready(self, status=None):
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text):
        self._send(f"STATUS={text}")

    def reloading(self):
        # systemd >= 253 (Type=notify-reload) wants the monotonic timestamp to match the reply.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def reloaded(self):
        self._send("READY=1")

    def stopping(self):
        self._send("STOPPING=1")

    def watchdog(self):
        self._send("WATCHDOG=1")

    def _send(self, message):
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # A receiver that stops reading fills its queue; a blocking send would then
                # hang the main thread (and with it the watchdog and shutdown).
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            # systemd restarting (or a stale socket) must never take the daemon down.
            log.debug("sd_notify %r to %r failed: %s", message.split("\n", 1)[0], self.address, exc)


def _to_int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
