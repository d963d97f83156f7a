"""What keeps the HTTP API from being held open: a cap on connections, deadlines for reading, fields per request.

Each accepted socket is a ``Connection``: a raw reader whose reads share one deadline for what
it is reading now (the next request after an idle keep-alive wait, a request head, a body),
so a client sending one header line every few seconds cannot keep it open. ``Slots`` counts the
open connections. At the cap, a new connection takes the place of the one that has waited
longest without a whole request (idle first, then one still sending its head); when every
slot is serving a request, the new connection gets a short 503 and is closed. A query string or
form is read up to a number of fields (``read_fields``).
"""

import io
import json
import logging
import resource
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from .errors import InputError

log = logging.getLogger("failured.api")

DEFAULT_MAX_CONNECTIONS = 256  # far below the 1,024 descriptors a default systemd service may open

# A connection's phases. Only a connection without a whole request may be reclaimed, idle ones first.
IDLE, HEAD, BUSY = "idle", "head", "busy"
RECLAIMABLE = (IDLE, HEAD)


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed for each phase: waiting for a request, its head (from its first byte), its body."""

    idle: float = 30.0
    head: float = 10.0
    body: float = 5.0  # a 1 MiB body needs 200 KiB/s: any local or LAN client
    write: float = 10.0  # to send an answer to a client that does not read


def connection_cap(wanted, descriptor_limit=None):
    """The connections to allow: ``wanted``, but at most half the process's descriptor limit.

    The other half is for the database, log files, handlers' pipes and the daemon's own sockets.
    """
    if descriptor_limit is None:
        descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptor_limit == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, descriptor_limit // 2))


class Connection(io.RawIOBase):
    """One accepted socket as a readable stream whose reads stop at the deadline of its phase."""

    def __init__(self, sock, slots):
        super().__init__()
        self.sock, self.slots = sock, slots
        self.phase, self.since = IDLE, time.monotonic()
        self.deadline = self.since + slots.deadlines.idle
        self.evicted = False

    def readable(self):
        return True

    def readinto(self, buffer):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the {self.phase} deadline passed")
        self.sock.settimeout(remaining)
        count = self.sock.recv_into(buffer)
        if count and self.phase == IDLE:  # the head's deadline runs from its first byte
            self.slots.enter(self, HEAD)
        return count

    def close(self):
        # The socket belongs to the server, which shuts it down and closes it after the handler.
        super().close()


class Slots:
    """The open connections, at most ``limit``; one lock guards the set and every connection's phase."""

    def __init__(self, limit, deadlines=Deadlines()):
        self.limit, self.deadlines = limit, deadlines
        self._lock = threading.Lock()
        self._open = set()
        self.refused = 0  # connections answered 503 since start
        self._refusals_logged_at = None

    def __len__(self):
        with self._lock:
            return len(self._open)

    def admit(self, sock):
        """A Connection for ``sock`` in a slot, reclaiming one at the cap; None when every slot is busy."""
        connection = Connection(sock, self)
        with self._lock:
            if len(self._open) >= self.limit:
                victim = min((c for c in self._open if c.phase in RECLAIMABLE), default=None,
                             key=lambda c: (RECLAIMABLE.index(c.phase), c.since))
                if victim is None:
                    self.refused += 1
                    return None
                self._evict(victim)
            self._open.add(connection)
        return connection

    def _evict(self, connection):
        self._open.discard(connection)
        connection.evicted = True
        try:  # its thread wakes from recv with end-of-file and ends
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def enter(self, connection, phase):
        """Move ``connection`` into ``phase`` with a fresh deadline; False when it was reclaimed meanwhile."""
        seconds = {IDLE: self.deadlines.idle, HEAD: self.deadlines.head, BUSY: self.deadlines.body}[phase]
        with self._lock:
            if connection.evicted:
                return False
            connection.phase, connection.since = phase, time.monotonic()
            connection.deadline = connection.since + seconds
            return True

    def release(self, connection):
        with self._lock:
            self._open.discard(connection)

    def refuse(self, sock):
        """Answer 503 without waiting for the client (it may not read), then close."""
        body = json.dumps({"error": "busy", "detail": f"{self.limit} connections are open, the most allowed "
                           "(FAILURE_HTTP_MAX_CONNECTIONS): try again shortly"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            sock.setblocking(False)
            sock.send(head + body)
        except OSError:
            pass
        now = time.monotonic()
        if self._refusals_logged_at is None or now - self._refusals_logged_at >= 60:
            # Once a minute at most: a flood of connections must not become a flood of log lines.
            self._refusals_logged_at = now
            log.warning("HTTP API: %d connections open, the most allowed (FAILURE_HTTP_MAX_CONNECTIONS); "
                        "refused %d so far", self.limit, self.refused)


def read_fields(text, limit, what="the query string"):
    """``parse_qs`` of ``text`` as {name: [values]}; more than ``limit`` fields is an InputError saying so."""
    try:
        return parse_qs(text, keep_blank_values=True, max_num_fields=limit)
    except ValueError:  # parse_qs's only complaint without strict parsing: too many fields
        raise InputError(f"{what} has more than {limit} fields: send at most {limit}") from None
