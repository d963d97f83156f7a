"""Where a worker-side integration delivers to: the daemon's HTTP API, or the store directly.

Both take the same two records, as written in the spool:
``{"kind": "failure", "task_type", "error", "error_type", "payload", "ref"}`` and
``{"kind": "success", "task_type", "count"}``. ``send`` raises ``DeliveryError``
when the record was not taken; ``permanent`` means sending it again cannot help.
"""

import os
import threading

import requests
import peewee as pw

from .. import intake
from ..errors import FailuredError, InputError, RefusedError
from ..store import PRAGMAS, Store


class DeliveryError(FailuredError):
    """A record was not delivered; ``permanent`` when retrying it is pointless (e.g. HTTP 400)."""

    def __init__(self, message, permanent=False):
        self.permanent = permanent
        super().__init__(message)


class HttpTarget:
    """``POST /v1/failures`` and ``/v1/successes`` on failured's HTTP API."""

    def __init__(self, url, token=None, timeout=2.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()  # a requests.Session per thread (and so per forked process)

    def describe(self):
        return self.url

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None or getattr(self._local, "pid", None) != os.getpid():
            session = self._local.session = requests.Session()
            self._local.pid = os.getpid()
        return session

    def _post(self, path, body):
        try:
            resp = self._session().post(self.url + path, json=body, headers=self._headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise DeliveryError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None
        if 200 <= resp.status_code < 300:
            return resp.json()
        detail = resp.text[:300].strip()
        # 4xx other than auth/rate: the record itself is refused, and would be refused forever.
        permanent = 400 <= resp.status_code < 500 and resp.status_code not in (401, 403, 404, 408, 429)
        raise DeliveryError(f"{self.url}{path}: HTTP {resp.status_code}: {detail}", permanent)

    def send(self, record):
        if record["kind"] == "success":
            self._post("/v1/successes", {"task_type": record["task_type"], "count": record["count"]})
            return None
        body = {k: record[k] for k in ("task_type", "error", "error_type", "payload", "ref") if record.get(k) is not None}
        return self._post("/v1/failures", body).get("task_id")

    def recover(self, task_id, force=False):
        """``POST /v1/tasks/ID/recover``: the API's ``failured recover``."""
        try:
            resp = self._session().post(f"{self.url}/v1/tasks/{int(task_id)}/recover", json={"force": bool(force)},
                                        headers=self._headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise DeliveryError(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 200:
            return resp.json()
        detail = _detail(resp)
        if resp.status_code == 409:
            raise RefusedError(detail)
        if resp.status_code == 404:
            raise InputError(detail)
        raise DeliveryError(f"{self.url}: HTTP {resp.status_code}: {detail}")


def _detail(resp):
    try:
        return resp.json().get("detail") or resp.text[:300]
    except ValueError:
        return resp.text[:300]


class StoreTarget:
    """The SQLite store itself, for workers on the daemon's machine (they share ``FAILURE_DB``).

    A write waits at most ``timeout`` for SQLite's lock (not the daemon's usual 30 s):
    the worker must not be held up; a write that gave up was rolled back, so spooling
    it and sending it again later cannot double it.
    """

    def __init__(self, db_path, timeout=2.0):
        self.path = str(db_path)
        self.timeout = timeout
        self._store = None
        self._pid = None
        self._lock = threading.Lock()

    def describe(self):
        return self.path

    def store(self):
        with self._lock:
            if self._store is None or self._pid != os.getpid():
                store = Store(self.path)
                pragmas = [(k, int(self.timeout * 1000) if k == "busy_timeout" else v) for k, v in PRAGMAS]
                store.db.init(self.path, pragmas=pragmas, timeout=self.timeout, check_same_thread=False)
                store.open(create=False)  # a missing database is an error: the daemon creates it
                self._store, self._pid = store, os.getpid()
            return self._store

    def send(self, record):
        try:
            store = self.store()  # a missing or unreadable database: not yet, rather than never
        except (FailuredError, pw.DatabaseError, OSError) as exc:
            raise DeliveryError(f"{self.path}: {exc}") from None
        try:
            if record["kind"] == "success":
                intake.record_success(store, record["task_type"], record["count"])
                return None
            return intake.record_failure(store, record["task_type"], record["error"],
                                         error_type=record.get("error_type"), payload=record.get("payload"),
                                         ref=record.get("ref"), source="python")
        except InputError as exc:
            raise DeliveryError(f"{self.path}: {exc}", permanent=True) from None
        except (FailuredError, pw.DatabaseError, OSError) as exc:
            with self._lock:
                self._store = None  # reopen next time: the file may have been replaced
            raise DeliveryError(f"{self.path}: {exc}") from None
