"""Where a worker-side integration delivers to: the daemon's HTTP API, or the store directly.

Both take the same two records, as written in the spool:
``{"kind": "failure", "task_type", "error", "error_type", "payload", "ref"}`` and
``{"kind": "success", "task_type", "count"}``. ``send`` raises ``DeliveryError``
when the record was not taken; ``permanent`` means sending it again cannot help.
``send_many`` takes a batch for the spool's ``drain``: it returns one outcome
(``SENT``, or ``REJECTED`` when refused for good) per record taken, oldest first,
and the error that stopped it, if any.
"""

import json
import logging
import os
import select
import threading
from functools import partial
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from urllib.parse import urlsplit

from .. import intake
from ..errors import FailuredError, InputError, RefusedError
from ..store import PRAGMAS, Store, is_url, mask_url, open_store
from ..store._peewee import pw  # without psycopg: a worker on SQLite never loads it
from .protocol import json_bytes
from .spool import REJECTED, SENT

log = logging.getLogger(__name__)


class DeliveryError(FailuredError):
    """A record was not delivered; ``permanent`` when retrying it is pointless (e.g. HTTP 400)."""

    def __init__(self, message, permanent=False):
        self.permanent = permanent
        self.message = message
        super().__init__(message, permanent)


def malformed(record):
    """Why a spooled record cannot be sent as it is (a file edited or damaged by hand), or None."""
    if not isinstance(record, dict) or record.get("kind") not in ("failure", "success"):
        return "not a failure or success record"
    if not isinstance(record.get("task_type"), str):
        return "no task_type"
    if record["kind"] == "failure" and not isinstance(record.get("error"), str):
        return "no error text"
    if record["kind"] == "success" and (isinstance(record.get("count"), bool) or not isinstance(record.get("count"), int)):
        return "no count"
    return None


def _refused(record, exc):
    kind = record.get("task_type") if isinstance(record, dict) else None
    log.error("failured refused a %s report (%s); kept as .rejected in the spool", kind, exc)
    return REJECTED


class HttpTarget:
    """``POST /v1/failures`` and ``/v1/successes`` on failured's HTTP API.

    Plain ``http.client`` on a kept-alive connection per thread: the sender shares the
    worker's interpreter, and ``requests`` spent about four times the CPU per report.
    """

    batch = 5  # one request each; between batches the sender makes slots, and a shutdown may stop

    def __init__(self, url, token=None, timeout=2.0):
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"failured's API URL {self.url[:200]!r} is not http://HOST:PORT or https://HOST:PORT")
        self._connect = partial(HTTPSConnection if parts.scheme == "https" else HTTPConnection,
                                parts.hostname, parts.port, timeout=timeout)
        self._prefix = parts.path
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()  # a connection per thread (and so per forked process)

    def describe(self):
        return self.url

    def identity(self):
        """Which failured this is, for the spool a worker keeps for it."""
        return f"http {self.url}"

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self._local.pid != os.getpid() or _dropped(conn)):
            conn.close()  # the server closed it while idle (or it is the parent's, before a fork)
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect()
            self._local.pid = os.getpid()
        return conn

    def _post(self, path, body):
        """(status, parsed JSON body or None, text for errors); transport errors are DeliveryErrors."""
        conn = self._connection()
        try:
            conn.request("POST", self._prefix + path, body=json_bytes(body), headers=self._headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, HTTPException) as exc:
            conn.close()
            self._local.conn = None
            raise DeliveryError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None
        if resp.will_close:
            conn.close()
            self._local.conn = None
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        return resp.status, data, text

    def _deliver(self, path, body):
        status, data, text = self._post(path, body)
        if 200 <= status < 300:
            return data if isinstance(data, dict) else {}
        # 4xx other than auth/rate: the record itself is refused, and would be refused forever.
        permanent = 400 <= status < 500 and status not in (401, 403, 404, 408, 429)
        raise DeliveryError(f"{self.url}{path}: HTTP {status}: {_detail(data, text)}", permanent)

    def send(self, record):
        if record["kind"] == "success":
            self._deliver("/v1/successes", {"task_type": record["task_type"], "count": record["count"]})
            return None
        body = {k: record[k] for k in ("task_type", "error", "error_type", "payload", "ref") if record.get(k) is not None}
        return self._deliver("/v1/failures", body).get("task_id")

    def send_many(self, records):
        outcomes = []
        for record in records:
            problem = malformed(record)
            if problem:
                outcomes.append(_refused(record, problem))
                continue
            try:
                self.send(record)
                outcomes.append(SENT)
            except DeliveryError as exc:
                if not exc.permanent:
                    return outcomes, exc
                outcomes.append(_refused(record, exc))
        return outcomes, None

    def recover(self, task_id, force=False):
        """``POST /v1/tasks/ID/recover``: the API's ``failured recover``."""
        status, data, text = self._post(f"/v1/tasks/{int(task_id)}/recover", {"force": bool(force)})
        if status == 200 and isinstance(data, dict):
            return data
        detail = _detail(data, text)
        if status == 409:
            raise RefusedError(detail)
        if status == 404:
            raise InputError(detail)
        raise DeliveryError(f"{self.url}: HTTP {status}: {detail}")


def _dropped(conn):
    """True when an idle kept-alive connection was closed by the server (its socket reads as ready)."""
    if conn.sock is None:
        return False  # not connected yet: request() connects
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))


def _detail(data, text):
    if isinstance(data, dict) and data.get("detail"):
        return str(data["detail"])[:300]
    return text[:300].strip()


class StoreTarget:
    """The store itself, for workers that reach the daemon's database (they share ``FAILURE_DB``):
    a SQLite file on the daemon's machine, or a ``postgresql://`` URL.

    On SQLite a write waits at most ``timeout`` for the lock (not the daemon's usual 30 s):
    the worker must not be held up; a write that gave up was rolled back, so spooling
    it and sending it again later cannot double it. A batch is one transaction.
    A URL's password never shows: ``describe()`` and every error name ``mask_url(...)``.
    """

    batch = 200

    def __init__(self, db_path, timeout=2.0):
        self._location = str(db_path)
        self.path = mask_url(self._location)  # what messages show
        self.timeout = timeout
        self._store = None
        self._pid = None
        self._lock = threading.Lock()
        self._errors = (FailuredError, pw.DatabaseError, OSError)
        if is_url(self._location):
            try:
                import psycopg  # its errors come straight from the cursors of some of the store's writes
            except ImportError:
                pass  # opening says so, as a DeliveryError
            else:
                self._errors += (psycopg.Error,)

    def describe(self):
        return self.path

    @property
    def location(self):
        """FAILURE_DB as given: a SQLite path or a URL (with its password: never shown)."""
        return self._location

    def identity(self):
        """Which failured this is, for the spool a worker keeps for it (hashed there: the password never shows)."""
        return f"store {self._location if is_url(self._location) else os.path.abspath(self._location)}"

    def store(self):
        with self._lock:
            if self._store is None or self._pid != os.getpid():
                self._store, self._pid = self._opened(), os.getpid()
            return self._store

    def _opened(self):
        """The store, opened without creating it (a missing database is an error: the daemon creates it)."""
        if is_url(self._location):
            return open_store(self._location, create=False)
        store = Store(self._location)
        pragmas = [(k, int(self.timeout * 1000) if k == "busy_timeout" else v) for k, v in PRAGMAS]
        store.db.init(self._location, pragmas=pragmas, timeout=self.timeout, check_same_thread=False)
        return store.open(create=False)

    def _error(self, exc, permanent=False):
        """A DeliveryError naming the masked location, the password taken out of the driver's words too."""
        text, password = str(exc), urlsplit(self._location).password if is_url(self._location) else None
        if password:
            text = text.replace(password, "***")
        return DeliveryError(f"{self.path}: {mask_url(text)}", permanent)

    def open(self):
        """The store, ready to write to; a DeliveryError (of Celery's and pickle's liking) when it is not."""
        try:
            store = self.store()  # a missing or unreadable database: not yet, rather than never
            if not is_url(self._location):
                # migrate-store may have moved it since this worker opened it: every write would be lost
                store.refuse_if_moved()
            return store
        except self._errors as exc:
            with self._lock:
                self._store = None  # a moved store was closed: opening again says so too
            raise self._error(exc) from None

    def _failed(self, exc):
        with self._lock:
            self._store = None  # reopen next time: the file may have been replaced
        return self._error(exc)

    @staticmethod
    def _write(store, record):
        if record["kind"] == "success":
            intake.record_success(store, record["task_type"], record["count"])
            return None
        return intake.record_failure(store, record["task_type"], record["error"],
                                     error_type=record.get("error_type"), payload=record.get("payload"),
                                     ref=record.get("ref"), source="python")

    def send(self, record):
        store = self.open()
        try:
            return self._write(store, record)
        except InputError as exc:
            raise self._error(exc, permanent=True) from None
        except self._errors as exc:
            raise self._failed(exc) from None

    def send_many(self, records):
        """All of ``records`` in one transaction (each in a savepoint of its own), or none of them."""
        try:
            store = self.open()
        except DeliveryError as exc:
            return [], exc
        outcomes = []
        try:
            with store.eager_transaction():
                for record in records:
                    problem = malformed(record)
                    if problem:
                        outcomes.append(_refused(record, problem))
                        continue
                    try:
                        self._write(store, record)
                        outcomes.append(SENT)
                    except InputError as exc:
                        outcomes.append(_refused(record, exc))
        except self._errors as exc:
            return [], self._failed(exc)
        return outcomes, None
