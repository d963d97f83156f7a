"""The HTTP API inside the daemon: a small JSON router over a Backend, on the standard library's threading server.

/v1/ needs ``Authorization: Bearer $FAILURE_API_TOKEN`` when a token is set. Without one the server
only listens on loopback, answers only to loopback names (DNS rebinding) and refuses /v1 requests from
other web pages (web.hosts). /healthz and /metrics need no token: health checks and Prometheus
scrapers on the host use them, and they show loop states and counters, never task data.
"""

import hmac
import importlib.resources
import io
import ipaddress
import json
import logging
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

from .errors import (FailuredError, InputError, RefusedError, StoreError, StoreFullError, TaskNotFound,
                     UnknownCategory)
from .httplimits import BUSY, DEFAULT_MAX_CONNECTIONS, IDLE, Deadlines, Slots, connection_cap, read_fields
from .intake import MAX_TASK_TYPE_CHARS, check_task_type, json_int
from .listing import build_filter, since_seconds
from .text import without_surrogates
from .manual import REQUEUE_PAGE, REQUEUE_STATUSES, check_categories
from .web import Console
from .web.hosts import Hosts, is_loopback

log = logging.getLogger("failured.api")

MAX_BODY_BYTES = 1024 * 1024
MAX_SUCCESS_COUNT = 1_000_000_000  # far above any real batch, far below SQLite's integer limit
SINGLE_HEADERS = ("Host", "Authorization", "Origin", "Content-Type")  # headers the checks read: one value each
LINGER_SECONDS, LINGER_BYTES = 2.0, 16 * MAX_BODY_BYTES  # draining a refused body before closing
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[^:]*)$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

FAILURE_FIELDS = {"task_type": str, "error": str, "error_type": str, "payload": dict, "ref": str}
SUCCESS_FIELDS = {"task_type": str, "count": int}
RECOVER_FIELDS = {"force": bool}
LABEL_FIELDS = {"category": str, "note": str}
MAX_NOTE_CHARS = 2000
# Connections whose threads keep their database session between requests; any other ends it after each request.
# On PostgreSQL a session is the server's (max_connections 100 by default): 60 keep-alive clients held 60.
SESSION_KEEPERS = 8
_TYPE_NAMES = {str: "a string", dict: "an object", int: "a whole number", bool: "true or false", list: "an array"}
MAX_QUERY_FIELDS = 200
LIST_PARAMETERS = {"status": True, "category": True, "type": True, "since": False, "grep": False, "limit": False,
                   "cursor": False}  # name -> repeatable
REQUEUE_FIELDS = {"status": list, "category": str, "type": str, "since": str, "dry_run": bool, "limit": int,
                  "cursor": str}
RESOLVE_FIELDS = {"task_ids": list, "note": str}
MAX_RESOLVE_IDS = 1000


class ApiError(Exception):
    """An HTTP error answer: status, a short code and what to do about it."""

    def __init__(self, status, code, detail, field=None, headers=()):
        super().__init__(detail)
        self.status, self.code, self.detail, self.field, self.headers = status, code, detail, field, headers


def parse_address(text, name="FAILURE_HTTP_ADDR"):
    """'127.0.0.1:8649', '[::1]:8649', ':8649' (every IPv4 interface) -> (host, port); 'off' or '' -> None."""
    value = (text or "").strip()
    if value.lower() in ("", "off"):
        return None
    match = _ADDRESS.match(value)
    if not match:
        raise InputError(f"{name}={text!r} is not host:port: use e.g. 127.0.0.1:8649, [::1]:8649 or off")
    port = match.group("port")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InputError(f"{name}={text!r}: the port must be a number from 1 to 65535")
    host = match.group("v6") if match.group("v6") is not None else match.group("host")
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InputError(f"{name}={text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif host and not _HOSTNAME.match(host):
        raise InputError(f"{name}={text!r}: {host!r} is not a host name or IPv4 address")
    return host, int(port)


def listen_address(settings):
    """The API's (host, port), or None when off; refuses (InputError) a bad address, or a non-loopback one without a
    token."""
    address = parse_address(settings.http_addr)
    if address is not None:
        check_exposure(address[0], settings.api_token, address[1])
    return address


def check_free(address):
    """Refuse (FailuredError) an address something else listens on, before anything is created (the database,
    the lock file and the directories had been made before the API found its port taken). The API's own bind
    says the same if the port is taken in between."""
    if address is None or address[1] == 0:
        return
    host, port = address
    server_class = _Server6 if ":" in host else _Server
    try:
        probe = socket.socket(server_class.address_family, socket.SOCK_STREAM)
    except OSError:
        return  # no such address family here: the API's own bind says so
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise FailuredError(_cannot_listen(host, port, exc)) from None


def _cannot_listen(host, port, exc):
    return (f"cannot listen on {host or '*'}:{port} (FAILURE_HTTP_ADDR): {exc.strerror or exc}: stop what uses it, "
            "or set FAILURE_HTTP_ADDR to another address or off")


MIN_EXPOSED_TOKEN_CHARS = 16  # a token guessable in a few million tries must not guard a network address


def check_exposure(host, token, port=None):
    """Refuse (InputError) to listen beyond loopback without a token, or with a short one."""
    if is_loopback(host):
        return
    where = f"{host or '0.0.0.0'}" + (f":{port}" if port else "")
    if not token:
        raise InputError(f"FAILURE_HTTP_ADDR={where} is not loopback and FAILURE_API_TOKEN is not set: set a token "
                         "(e.g. `openssl rand -hex 32`) or listen on 127.0.0.1")
    if len(token) < MIN_EXPOSED_TOKEN_CHARS:
        raise InputError(f"FAILURE_HTTP_ADDR={where} is not loopback and FAILURE_API_TOKEN has {len(token)} "
                         f"characters: a token that guards a network address needs at least "
                         f"{MIN_EXPOSED_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)")


def check_fields(body, types, required=()):
    """The body's fields, checked against ``types`` (null counts as absent); unknown fields are errors."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", f"the body must be a JSON object, not {_json_type(body)}")
    unknown = sorted(set(body) - set(types))
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(map(repr, unknown))}: allowed are {', '.join(types)}", field=unknown[0])
    for name in required:
        if body.get(name) is None:
            raise ApiError(400, "bad_request", f"field {name!r} is required", field=name)
    body = dict(body)
    for name, value in body.items():
        wanted = types[name]
        if wanted is int and isinstance(value, float) and value.is_integer():
            body[name] = value = int(value)  # JSON Schema's "integer": 5.0 is the number 5
        if value is not None and (not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))):
            raise ApiError(400, "bad_request", f"field {name!r} must be {_TYPE_NAMES[wanted]}, "
                           f"not {_json_type(value)}", field=name)
    return {name: value for name, value in body.items() if value is not None}


def _json_type(value):
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _object(pairs):
    """A JSON object, refusing a key given twice (the last would win silently, and a check may read the first)."""
    value = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"key {key[:100]!r} is given twice: send it once")
        value[key] = item
    return value


def _storable(value, keep=("payload",)):
    """``value`` (a parsed body) with each lone surrogate escape in its strings read as U+FFFD, as every other
    intake stores it (a JavaScript reporter's JSON.stringify sends them); a top-level ``keep`` field stays as sent,
    for intake to refuse (a payload is a retry's arguments: it is not changed)."""
    if isinstance(value, dict):
        return {without_surrogates(k): v if k in keep else _storable(v, ()) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(item, ()) for item in value]
    return without_surrogates(value) if isinstance(value, str) else value


def _finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is too large")
    return value


class _Server(HTTPServer):
    """Accepts on one thread; each admitted connection gets a thread of its own, at most ``slots.limit``."""

    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self):
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall start-up.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    stopping = False
    wake_reader = None  # the read end of a socket pair: stop() writes a byte to end the loop at once

    def serve_until_stopped(self):
        """``serve_forever`` without its poll: ``ApiServer.stop`` wakes the loop at once (a stop waited
        up to a poll interval; an idle loop woke ten times a second for nothing)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self.wake_reader, selectors.EVENT_READ)
            while not self.stopping:
                for key, _ in selector.select():
                    if key.fileobj is self and not self.stopping:
                        self._handle_request_noblock()

    def process_request(self, request, client_address):
        connection = self.slots.admit(request)
        if connection is None:
            self.slots.refuse(request)
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve, args=(connection, client_address), name="http-conn",
                         daemon=True).start()

    def _serve(self, connection, client_address):
        try:
            self.finish_request(connection, client_address)
        except Exception:
            self.handle_error(connection.sock, client_address)
        finally:
            self.slots.release(connection)
            self.shutdown_request(connection.sock)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away, or its connection was reclaimed
            log.debug("HTTP connection from %s ended: %s", client_address[0], exc)
        else:
            log.error("HTTP connection from %s failed", client_address[0], exc_info=exc)


class _Server6(_Server):
    address_family = socket.AF_INET6


class ApiServer:
    """The HTTP API on one address, served from a thread named ``http-api`` (one more thread per connection)."""

    def __init__(self, host, port, backend, token=None, max_connections=None, deadlines=Deadlines()):
        self.host, self.backend, self.token = host, backend, token or None
        self.hosts = Hosts(host, self.token)
        self._requested_port = port
        if max_connections is None:
            max_connections = getattr(backend.settings, "http_max_connections", DEFAULT_MAX_CONNECTIONS)
        self.max_connections, self.deadlines = max_connections, deadlines
        self._server = self._thread = None

    def start(self):
        server_class = _Server6 if ":" in self.host else _Server
        try:
            self._server = server_class((self.host, self._requested_port), _Handler)
        except OSError as exc:
            raise FailuredError(_cannot_listen(self.host, self._requested_port, exc)) from None
        self._server.api = self
        limit = connection_cap(self.max_connections)
        if limit < self.max_connections:
            log.warning("HTTP API: FAILURE_HTTP_MAX_CONNECTIONS=%d is over half the open-file limit; allowing %d "
                        "(raise LimitNOFILE to allow more)", self.max_connections, limit)
        self._server.slots = Slots(limit, self.deadlines)
        self._server.session_keepers = threading.BoundedSemaphore(SESSION_KEEPERS)
        self.openapi = importlib.resources.files("failured").joinpath("openapi.json").read_bytes()
        self.console = Console(self.backend, self.token, self.hosts)
        self._server.wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._server.serve_until_stopped, name="http-api", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self):
        return self._server.server_address[1]

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self):
        if self._server is not None and not self._server.stopping:
            self._server.stopping = True
            self._wake_writer.send(b"\0")
            self._thread.join(timeout=5)
            self._server.server_close()
            self._server.wake_reader.close()
            self._wake_writer.close()

    # -- the endpoints: (handler, match) -> (status, JSON-able data) ---------------

    def post_failure(self, handler, match):
        fields = check_fields(handler.json_body(), FAILURE_FIELDS, required=("task_type", "error"))
        _check_task_type(fields["task_type"])
        return 201, self.backend.report_failure(fields.pop("task_type"), fields.pop("error"), **fields)

    def post_success(self, handler, match):
        fields = check_fields(handler.json_body(), SUCCESS_FIELDS, required=("task_type",))
        _check_task_type(fields["task_type"])
        count = fields.get("count", 1)
        if not 1 <= count <= MAX_SUCCESS_COUNT:
            raise ApiError(400, "bad_request", f"field 'count' must be from 1 to {MAX_SUCCESS_COUNT}", field="count")
        return 200, self.backend.report_success(fields["task_type"], count)

    def get_task(self, handler, match):
        return 200, self.backend.task(int(match.group(1)))

    def post_recover(self, handler, match):
        fields = check_fields(handler.json_body(optional=True), RECOVER_FIELDS)
        return 200, self.backend.recover(int(match.group(1)), fields.get("force", False))

    def post_label(self, handler, match):
        fields = check_fields(handler.json_body(), LABEL_FIELDS, required=("category",))
        if len(fields["category"]) > 200 or len(fields.get("note") or "") > MAX_NOTE_CHARS:
            raise ApiError(400, "bad_request", f"category is at most 200 characters, note at most {MAX_NOTE_CHARS}",
                           field="note" if len(fields["category"]) <= 200 else "category")
        return 200, self.backend.label(int(match.group(1)), fields["category"], fields.get("note"))

    def get_tasks(self, handler, match):
        task_filter = build_filter(**_list_query(urlsplit(handler.path).query))
        check_categories(task_filter.categories, self.backend.config(), self.backend.store)  # 409 unknown_category
        return 200, self.backend.tasks(task_filter)

    def post_requeue(self, handler, match):
        fields = check_fields(handler.json_body(), REQUEUE_FIELDS)
        statuses = _strings(fields, "status") or None
        for status in statuses or ():
            if status not in REQUEUE_STATUSES:
                raise ApiError(400, "bad_request", f"status {status[:40]!r} cannot be requeued: use "
                               f"{', '.join(REQUEUE_STATUSES)}", field="status")
        since = since_seconds(fields.get("since"))
        limit, after_id = _requeue_limit(fields.get("limit", REQUEUE_PAGE)), _requeue_cursor(fields.get("cursor"))
        requeued, skipped, cursor = self.backend.requeue(
            fields.get("dry_run", False), limit, after_id, category=fields.get("category"),
            task_type=fields.get("type"), statuses=statuses, since_seconds=since)
        return 200, {"dry_run": fields.get("dry_run", False), "requeued": [_task_line(t) for t in requeued],
                     "skipped": [{**_task_line(t), "reason": why} for t, why in skipped],
                     "next_cursor": None if cursor is None else str(cursor)}

    def post_resolve(self, handler, match):
        fields = check_fields(handler.json_body(), RESOLVE_FIELDS, required=("task_ids",))
        ids = [int(i) if isinstance(i, float) and i.is_integer() else i for i in fields["task_ids"]]  # 5.0 is 5
        if not 1 <= len(ids) <= MAX_RESOLVE_IDS or not all(type(i) is int and 1 <= i < 10**18 for i in ids):
            raise ApiError(400, "bad_request", f"field 'task_ids' must hold 1 to {MAX_RESOLVE_IDS} task ids "
                           "(whole numbers from 1)", field="task_ids")
        if len(fields.get("note") or "") > MAX_NOTE_CHARS:
            raise ApiError(400, "bad_request", f"note is at most {MAX_NOTE_CHARS} characters", field="note")
        resolved, refused = self.backend.resolve(list(dict.fromkeys(ids)), fields.get("note"))
        return 200, {"resolved": [_task_line(t) for t in resolved],
                     "refused": [{"task_id": i, "reason": why} for i, why in refused]}

    def console_page(self, handler, match):
        return self.console.handle(handler, match.group(1) or "/")

    def get_root(self, handler, match):
        """A browser pointed at the daemon's address finds the console."""
        return 302, (b"", "text/plain"), (("Location", "/ui/"),)

    def get_status(self, handler, match):
        return 200, self.backend.status()

    def get_openapi(self, handler, match):
        return 200, (self.openapi, "application/json")

    def get_health(self, handler, match):
        ok, loops, *facts = self.backend.health()  # facts: e.g. {"disk_full": True}
        facts = facts[0] if facts else {}
        if ok:
            return 200, {"ok": True, "loops": loops, **facts}
        dead = ", ".join(name for name, alive in loops.items() if not alive)
        detail = f"not alive: {dead}" if dead else ", ".join(name for name, on in facts.items() if on) or "unknown"
        return 503, {"ok": False, "error": "unhealthy", "detail": detail, "loops": loops, **facts}

    def get_metrics(self, handler, match):
        return 200, self.backend.metrics()


# path pattern -> {method: ApiServer method name}
ROUTES = [(re.compile(path), methods) for path, methods in (
    (r"/v1/failures", {"POST": "post_failure"}),
    (r"/v1/successes", {"POST": "post_success"}),
    (r"/v1/tasks", {"GET": "get_tasks"}),
    (r"/v1/tasks/requeue", {"POST": "post_requeue"}),
    (r"/v1/tasks/resolve", {"POST": "post_resolve"}),
    (r"/v1/tasks/(\d{1,18})", {"GET": "get_task"}),
    (r"/v1/tasks/(\d{1,18})/recover", {"POST": "post_recover"}),
    (r"/v1/tasks/(\d{1,18})/label", {"POST": "post_label"}),
    (r"/v1/status", {"GET": "get_status"}),
    (r"/v1/openapi\.json", {"GET": "get_openapi"}),
    (r"/healthz", {"GET": "get_health"}),
    (r"/metrics", {"GET": "get_metrics"}),
    (r"/ui(/.*)?", {"GET": "console_page", "POST": "console_page"}),
    (r"/", {"GET": "get_root"}),
)]


def _list_query(query):
    """GET /v1/tasks's query string as build_filter's arguments; unknown or repeated single parameters are errors."""
    values = read_fields(query, MAX_QUERY_FIELDS)
    unknown = sorted(set(values) - set(LIST_PARAMETERS))
    if unknown:
        raise ApiError(400, "bad_request", f"unknown parameter {unknown[0][:40]!r}: allowed are "
                       f"{', '.join(LIST_PARAMETERS)}", field=unknown[0][:40])
    arguments = {}
    for name, repeatable in LIST_PARAMETERS.items():
        given = values.get(name, [])
        if len(given) > 1 and not repeatable:
            raise ApiError(400, "bad_request", f"parameter {name!r} is given {len(given)} times: give it once",
                           field=name)
        key = {"status": "statuses", "category": "categories", "type": "task_types"}.get(name, name)
        arguments[key] = tuple(given) if repeatable else (given[0] if given else None)
    return arguments


def _strings(fields, name):
    values = fields.get(name) or []
    if not all(isinstance(v, str) for v in values):
        raise ApiError(400, "bad_request", f"field {name!r} must be an array of strings", field=name)
    return values


def _requeue_limit(limit):
    """A requeue's page size: one answer, and one hold of the write lock, stays bounded."""
    if not 1 <= limit <= REQUEUE_PAGE:
        raise ApiError(400, "bad_request", f"field 'limit' must be from 1 to {REQUEUE_PAGE}: page through more "
                       "matches with cursor (each answer's next_cursor)", field="limit")
    return limit


def _requeue_cursor(cursor):
    """The task id a requeue page continues after (the previous answer's next_cursor), or None."""
    if cursor is None:
        return None
    text = cursor.strip()  # as GET /v1/tasks's cursor: the pattern's "$" also matches before a final newline
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ApiError(400, "bad_request", f"cursor {text[:40]!r} is not one this server gave: pass next_cursor "
                       "as it came", field="cursor")
    return int(text)


def _task_line(task):
    return {"task_id": task.id, "task_type": task.task_type, "status": task.status, "category": task.category}


def _check_json_type(content_type, empty=False):
    media, _, parameters = (content_type or "").partition(";")
    charset = parameters.strip().lower().replace(" ", "")
    if media.strip().lower() != "application/json" or charset not in ("", "charset=utf-8", 'charset="utf-8"'):
        fix = "send no Content-Type with an empty body, or" if empty else "send"
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {content_type or '(none)'!r}: {fix} application/json (UTF-8)")


def _check_task_type(value):
    """The intake's rule for task types (check_task_type), in the API's words."""
    try:
        check_task_type(value)
    except InputError as exc:
        if len(value) > MAX_TASK_TYPE_CHARS:
            reason = f"must be at most {MAX_TASK_TYPE_CHARS} characters"
        elif not value.strip():
            reason = "must not be empty or only spaces"
        else:
            reason = f"is refused: {exc}"
        raise ApiError(400, "bad_request", f"field 'task_type' {reason}", field="task_type") from None


class _Handler(BaseHTTPRequestHandler):
    """One connection: its requests one after another (keep-alive), each read within its deadlines."""

    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length
    default_request_version = "HTTP/1.0"  # what an answer before the version was read (HTTP/2.0: 505) is written in
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them

    def setup(self):
        # self.request is the Connection the server admitted: reads go through its deadlines.
        self.slot, self.connection = self.request, self.request.sock
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = io.BufferedReader(self.slot)
        self.wfile = socketserver._SocketWriter(self.connection)

    def handle_one_request(self):
        self._body_read = True  # nothing to drain for an answer sent before a request line was read
        if not self.server.slots.enter(self.slot, IDLE):
            self.close_connection = True
            return
        try:
            super().handle_one_request()
        finally:
            self._after_request()

    keeps_session = False  # this connection's thread holds one of the server's SESSION_KEEPERS

    def _after_request(self):
        if not self.keeps_session and not self.close_connection:
            self.keeps_session = self.server.session_keepers.acquire(blocking=False)
        if not self.keeps_session:
            self.server.api.backend.store.end_thread_session()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.keeps_session:
                self.keeps_session = False
                self.server.session_keepers.release()
                self.server.api.backend.store.end_thread_session()

    def __getattr__(self, name):
        # Every method reaches the router, which answers 405 with Allow (not the standard library's 501).
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def _handle(self):
        self._body_read = False
        api = self.server.api
        if not self.server.slots.enter(self.slot, BUSY):  # reclaimed at the cap before its request was read
            self.close_connection = True
            return
        try:
            # http.server reads the request line as Latin-1: a query's raw UTF-8 (not percent-encoded) came back
            # in errors as mojibake ("Ù¡" for "١"). Every character it gives is a byte, so this is lossless.
            self.path = self.path.encode("latin-1").decode("utf-8", "replace")
            self._check_framing()
            self._check_host(api.hosts)
            path = urlsplit(self.path).path
            if path.startswith("/v1/"):
                self._authorize(api.token)
                self._check_origin(api.hosts)
            match, methods = next(((m, methods) for pattern, methods in ROUTES if (m := pattern.fullmatch(path))),
                                  (None, None))
            if match is None:
                raise ApiError(404, "not_found", f"no such path: {path}")
            if self.command not in methods:
                allow = ", ".join(methods)
                raise ApiError(405, "method_not_allowed", f"{self.command} {path}: use {allow}",
                               headers=(("Allow", allow),))
            status, data, *headers = getattr(api, methods[self.command])(self, match)  # headers: the console's
            return self._send(status, data, *headers)
        except ApiError as exc:
            error = exc
        except TaskNotFound as exc:
            error = ApiError(404, "not_found", str(exc))
        except UnknownCategory as exc:  # valid request, but not in the active configuration
            error = ApiError(409, "unknown_category", str(exc))
        except InputError as exc:
            error = ApiError(400, "bad_request", str(exc))
        except RefusedError as exc:
            error = ApiError(409, "conflict", str(exc))
        except StoreFullError as exc:
            error = ApiError(507, "disk_full", str(exc))
        except StoreError as exc:
            error = ApiError(503, "unavailable", str(exc))
        except Exception:
            log.exception("HTTP %s %s failed", self.command, self.path)
            error = ApiError(500, "internal", "see the daemon log")
        data = {"error": error.code, "detail": error.detail, **({"field": error.field} if error.field else {})}
        self._send(error.status, data, error.headers)

    def _check_framing(self):
        """Refuse a request whose body length is ambiguous (a request-smuggling shape), or that gives two different
        values of a header a check reads (the first had won, silently: the checks and a proxy may read others)."""
        for name in ("Content-Length", *SINGLE_HEADERS):
            values = {value.strip() for value in self.headers.get_all(name, ())}
            if len(values) > 1:
                self.close_connection = True
                raise ApiError(400, "bad_request", f"{len(values)} different {name} headers: send one")

    def _check_host(self, hosts):
        """Without a token, a name other than loopback's is a page whose DNS name was rebound to us; a request
        target in absolute form names the host it is for in place of Host (RFC 9112 3.2.2)."""
        target = urlsplit(self.path) if self.path.lower().startswith(("http://", "https://")) else None
        if refusal := hosts.host_refusal(target.netloc if target else self.headers.get("Host")):
            raise ApiError(421, "misdirected_request", refusal)

    def parse_request(self):
        """The standard library answers HTTP/0.9 without a status line: a client could not tell 201 from 400, so
        anything older than HTTP/1.0 is refused (505), in a 1.0 answer it can read."""
        if not super().parse_request():
            return False
        if self.request_version in ("HTTP/1.0", "HTTP/1.1") and len(self.requestline.split()) == 3:
            return True  # a request line of two words is HTTP/0.9's, whatever version the default says
        self.request_version = "HTTP/1.0"
        self.send_error(505, "HTTP/1.0 or HTTP/1.1 only")
        return False

    def _check_origin(self, hosts):
        """Without a token, a /v1 request from another web page is refused: a form there posts with no preflight."""
        if hosts.any_name:
            return  # the token: no page elsewhere can send it
        if refusal := hosts.origin_refusal(self.headers.get("Origin"), self.headers.get("Host")):
            raise ApiError(403, "forbidden", refusal)

    def _authorize(self, token):
        if token is None:
            return
        header = self.headers.get("Authorization")
        if header is None:
            raise ApiError(401, "unauthorized", "missing token: send Authorization: Bearer $FAILURE_API_TOKEN",
                           headers=(("WWW-Authenticate", 'Bearer realm="failured"'),))
        scheme, _, given = header.strip().partition(" ")
        # Header text is latin-1 as received: back to the client's bytes, compared in constant time.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("latin-1", "replace"),
                                                                 token.encode("utf-8")):
            raise ApiError(401, "unauthorized", "wrong token",
                           headers=(("WWW-Authenticate", 'Bearer realm="failured", error="invalid_token"'),))

    def _length(self):
        """The Content-Length as a number, or None when there is none."""
        length = self.headers.get("Content-Length")
        if length is not None and not (length.strip().isascii() and length.strip().isdigit()):
            raise ApiError(400, "bad_request", f"Content-Length {length!r} is not a number")
        return None if length is None else int(length)

    def json_body(self, optional=False):
        """The request body as parsed JSON; an empty optional body is {}."""
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "length_required", "chunked bodies are not accepted: send a Content-Length")
        length = self._length()
        if length is None and not optional:
            raise ApiError(411, "length_required", "a Content-Length header is required")
        if length is not None and length > MAX_BODY_BYTES:
            raise ApiError(413, "payload_too_large", f"the body is {length} bytes: at most {MAX_BODY_BYTES}")
        content_type = self.headers.get("Content-Type")
        # An empty optional body's type is checked too: a form posted from another site has a form's type.
        if length or content_type is not None or not optional:
            _check_json_type(content_type, empty=optional and not length)
        if not length and optional:
            self._body_read = True
            return {}
        body = self._read_body(length)
        try:
            text = body.decode("utf-8")
            value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                               parse_int=json_int, object_pairs_hook=_object)
            if "\\u" in text:  # a lone surrogate is a valid JSON escape but not storable text
                value = _storable(value)
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_request", f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "bad_request", "the body is nested too deeply") from None
        return value

    def _read_body(self, length):
        """Exactly ``length`` bytes, within the body deadline; a shorter body is a 400 (and the connection ends)."""
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = None
        self._body_read = True
        if body is not None and len(body) == length:
            return body
        self.close_connection = True
        if body is None:
            raise ApiError(400, "bad_request", f"the body did not arrive within "
                           f"{self.server.slots.deadlines.body:g} s: it is shorter than its Content-Length {length}?")
        raise ApiError(400, "bad_request", f"the body ended after {len(body)} of {length} bytes")

    def _send(self, status, data, headers=(), reason=None):
        if isinstance(data, tuple):  # (bytes, content type) as it is
            body, content_type = data
        else:
            body, content_type = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8"), "application/json"
        linger = not self._keeps_connection(status)
        self.close_connection = self.close_connection or linger
        self.connection.settimeout(self.server.slots.deadlines.write)
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if linger:
            self._linger()

    def _keeps_connection(self, status):
        """Whether the connection can go on after this answer. A body the answer did not need is read first, but
        never an unauthorized client's: it would hold a slot for the body's whole deadline (300 connections
        sending a head and no body kept /healthz answering 503 with no token at all)."""
        if status == 401 and not self._body_read and ("Transfer-Encoding" in self.headers
                                                      or self.headers.get("Content-Length", "0").strip() != "0"):
            return False
        return self._discard_unread_body()

    def _discard_unread_body(self):
        """Read a body the answer did not need, so the connection can go on; False when it cannot be."""
        if self._body_read:
            return True
        try:
            length = self._length() or 0
        except ApiError:
            return False
        if "Transfer-Encoding" in self.headers or length > MAX_BODY_BYTES:
            return False
        try:
            return len(self.rfile.read(length)) == length
        except TimeoutError:
            return False

    def _linger(self):
        # The client may still be sending the body we refused: closing at once would reset the connection
        # and could destroy our answer before it is read. Drop what comes, briefly (nginx's lingering close).
        self.server.slots.enter(self.slot, IDLE)  # answered: a slot the cap may take back while it drains
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            deadline, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
            while left > 0 and time.monotonic() < deadline and (chunk := self.connection.recv(65536)):
                left -= len(chunk)
        except OSError:
            pass

    def version_string(self):
        return "failured"

    def send_error(self, code, message=None, explain=None):
        """Errors the standard library answers itself (bad request line, headers too long, unknown method)."""
        self.close_connection, self._body_read = True, True
        try:
            slug = HTTPStatus(code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            slug = "error"
        self._send(code, {"error": slug, "detail": message or explain or slug}, reason=message)

    def log_message(self, format, *args):
        # The request line and status only: headers (Authorization) are never logged.
        log.debug("%s %s", self.address_string(), format % args)
