"""The web console at /ui/ on the API's address: routing, login, sessions, CSRF and security headers.

Same rules as the API: with FAILURE_API_TOKEN set a person logs in with the token; without one
the server only listens on loopback and a session starts by itself. Every POST carries the
session's CSRF token and an Origin naming this server (web.hosts); the session cookie is HttpOnly
and SameSite=Strict. Pages are read from the store; actions go through the Backend, as the API's do.
"""

import hmac
import importlib.resources
import logging
import re
from urllib.parse import urlsplit

from .. import listing
from .. import store as store_module
from ..errors import ConfigNotWritable, FailuredError, InputError, TaskNotFound
from ..httplimits import read_fields
from ..manual import check_categories
from . import data, pages, workbench
from .hosts import Hosts
from .session import Sessions, cookie_header, cookie_value, csrf_ok, expired_cookie_header
from .texts import texts

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS, MAX_QUERY_FIELDS = 50, 100
HTML = "text/html; charset=utf-8"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "same-origin"), ("X-Frame-Options", "DENY"), ("Cache-Control", "no-store"))
_TASK = re.compile(r"/tasks/(\d{1,18})")
_TASK_ACTION = re.compile(r"/tasks/(\d{1,18})/(recover|resolve|label)")
_RESEND = re.compile(r"/notifications/(\d{1,18})/resend")
_STATIC = re.compile(r"/static/([a-z]+\.(?:css|js))")
log = logging.getLogger("failured.console")


class Console:
    """One per API server; request threads share it (the session table has its own lock)."""

    def __init__(self, backend, token=None, hosts=None):
        self.backend, self.token = backend, token or None
        self.hosts = hosts or Hosts("", self.token)
        self.sessions = Sessions()
        self.t = texts(getattr(backend.settings, "lang", "zh"))
        self.lang = getattr(backend.settings, "lang", "zh")

    def handle(self, handler, path):
        """(status, (body, content type), headers) for one request below /ui."""
        if handler.command == "GET" and (static := _STATIC.fullmatch(path)):
            return self._static(static.group(1))
        session = self.sessions.get(cookie_value(handler.headers.get("Cookie")))
        try:
            if path == "/login":
                return self._login(handler, session)
            return self._session_page(handler, path, session)
        except InputError as exc:  # a form or query the console will not read (too long, too many fields)
            return self._page(pages.message(self.t, self.t["refused"], str(exc), session), 400)

    def _session_page(self, handler, path, session):
        started = None
        if session is None:
            if self.token is not None:
                return self._redirect("/ui/login")
            session = started = self.sessions.create()  # loopback without a token: no login, but CSRF all the same
        if handler.command == "POST":
            answer = self._post(handler, path, session)
        else:
            answer = self._get(handler, path, session)
        return answer if started is None else (*answer[:2], (*answer[2], cookie_header(started)))

    # -- answers --------------------------------------------------------------------

    def _page(self, html, status=200, headers=()):
        return status, (html.encode("utf-8"), HTML), (*SECURITY_HEADERS, *headers)

    def _redirect(self, location, headers=()):
        return 303, (b"", HTML), (*SECURITY_HEADERS, ("Location", location), *headers)

    def _static(self, name):
        resource = importlib.resources.files("failured.web").joinpath("static", name)
        if not resource.is_file():
            return self._page(pages.message(self.t, self.t["not_found"], name), 404)
        suffix = name[name.rindex("."):]
        return 200, (resource.read_bytes(), STATIC_TYPES[suffix]), (
            ("Cache-Control", "max-age=300"), ("X-Content-Type-Options", "nosniff"))

    def _login(self, handler, session):
        if self.token is None or session is not None:
            return self._redirect("/ui/")
        if handler.command != "POST":
            return self._page(pages.login(self.t))
        given = self._form(handler).get("token", "")
        if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
            return self._page(pages.login(self.t, self.t["wrong_token"]), 401)
        return self._redirect("/ui/", (cookie_header(self.sessions.create()),))

    # -- reading pages ----------------------------------------------------------------

    def _get(self, handler, path, session):
        try:
            query = read_fields(urlsplit(handler.path).query, MAX_QUERY_FIELDS)
            if path in ("/", ""):
                return self._page(self._overview(session))
            if path == "/tasks":
                return self._tasks_page(session, query)
            if task := _TASK.fullmatch(path):
                data_ = self.backend.task(int(task.group(1)))
                return self._page(pages.task(self.t, session, data_, self._categories()))
            if path == "/unknown":
                return self._page(self._unknown(session, query))
            if path == "/notifications":
                channel = _one(query, "channel") or None
                counts, rows = data.outbox(self.backend.store, channel)
                return self._page(pages.notifications(self.t, session, counts, rows, channel))
        except TaskNotFound as exc:
            return self._page(pages.message(self.t, self.t["not_found"], str(exc), session), 404)
        except InputError as exc:
            return self._page(pages.message(self.t, self.t["refused"], str(exc), session), 400)
        return self._page(pages.message(self.t, self.t["not_found"], path, session), 404)

    def _overview(self, session):
        now = self.backend.clock.now()
        status = self.backend.status()
        hourly = data.failure_series(self.backend.store, now, 24, data.HOUR, 13)
        daily = data.failure_series(self.backend.store, now, 7, data.DAY, 10)
        counts = data.outbox_counts(self.backend.store)
        return pages.overview(self.t, session, status, hourly, daily, data.recovery_rate(self.backend.store, now),
                              dict(self._categories()), counts)

    def _tasks_page(self, session, query):
        """The task list; a filter it cannot read is said above the form, kept as typed, to be corrected."""
        wanted = {"status": query.get("status", []), "category": [c for c in query.get("category", []) if c],
                  "type": _one(query, "type"), "since": _one(query, "since"), "grep": _one(query, "grep"),
                  "cursor": _one(query, "cursor")}
        try:
            task_filter = listing.build_filter(wanted["status"], wanted["category"],
                                               [wanted["type"]] if wanted["type"] else [], wanted["since"] or None,
                                               wanted["grep"] or None, None, wanted["cursor"] or None)
            check_categories(task_filter.categories, self.backend.config(), self.backend.store)  # a typo: say so
            rows, cursor = listing.list_page(task_filter, self.backend.clock.now(), self.backend.store)
        except InputError as exc:
            html = pages.tasks(self.t, session, wanted, [], None, self._categories(), f'{self.t["refused"]}: {exc}')
            return self._page(html, 400)
        return self._page(pages.tasks(self.t, session, wanted, rows, cursor, self._categories()))

    def _unknown(self, session, query):
        days = workbench.check_days(_one(query, "days"))
        now = self.backend.clock.now()
        categories = self._categories()
        bench = {"pattern": _one(query, "pattern"),
                 "category": _one(query, "category") or next((c for c, _ in categories if c != "unknown"), "")}
        self._pattern_category(bench["category"])
        result = (workbench.preview(self.backend.store, bench["pattern"], bench["category"], days, now)
                  if bench["pattern"] else None)
        templates = data.unknown_templates(self.backend.store, now, days)
        return pages.unknown(self.t, session, templates, days, bench, result, categories, self._writes_off())

    def _writes_off(self):
        """Why the workbench cannot save now (switched off, or a config directory it cannot write), or None."""
        settings = self.backend.settings
        if not settings.console_pattern_writes:
            return self.t["writes_off"]
        return workbench.write_problem(settings.config_dir)

    def _pattern_category(self, category):
        """Refuse (InputError) a category the workbench cannot write a pattern for: one the active configuration
        lacks (a new one needs its action and priority, written by hand), or unknown."""
        names = [name for name, _ in self._categories() if name != "unknown"]
        if category not in names:
            raise InputError(f"no category named {category[:60]!r} to write a pattern for: choose one of "
                             f"{', '.join(names)}")

    def _categories(self):
        """[(name, label)] of the active configuration, unknown last."""
        ruleset = self.backend.config().ruleset
        return [(c.name, c.label_in(self.lang)) for c in (*ruleset.categories, ruleset.unknown)]

    # -- actions ------------------------------------------------------------------------

    def _post(self, handler, path, session):
        form = self._form(handler)
        # Without a token, the Host was checked (api._check_host) and the Origin must name an allowed host too.
        foreign = self.hosts.origin_refusal(handler.headers.get("Origin"), handler.headers.get("Host"))
        if foreign or not csrf_ok(session, form.get("csrf")):
            return self._page(pages.message(self.t, self.t["refused"], foreign or self.t["csrf"], session), 403)
        if path == "/logout":
            self.sessions.drop(session.id)
            return self._redirect("/ui/login" if self.token else "/ui/", (expired_cookie_header(),))
        try:
            back = self._act(path, form, session)
        except ConfigNotWritable as exc:
            return self._save_failed(exc, form, session)
        if back is None:
            return self._page(pages.message(self.t, self.t["not_found"], path, session), 404)
        return self._redirect(back)

    def _act(self, path, form, session):
        """Where to go back to after one action (None: no such action); the outcome is a flash message there."""
        try:
            if action := _TASK_ACTION.fullmatch(path):
                task_id, verb = int(action.group(1)), action.group(2)
                self._task_action(task_id, verb, form, session)
                return f"/ui/tasks/{task_id}"
            if resend := _RESEND.fullmatch(path):
                ok = store_module.send_again(self.backend.store, int(resend.group(1)), self.backend.clock.now())
                self.backend.wake()
                session.flash.append(("ok", self.t["sent_again"].format(id=resend.group(1))) if ok else
                                     ("bad", self.t["not_failed"].format(id=resend.group(1))))
                return "/ui/notifications"
            if path == "/unknown/save":
                return self._save_pattern(form, session)
        except ConfigNotWritable:
            raise  # not a refusal of what was asked: _post answers with the workbench and how to fix it
        except FailuredError as exc:
            session.flash.append(("bad", f'{self.t["refused"]}: {exc}'))
            return f"/ui/tasks/{action.group(1)}" if action else "/ui/unknown"
        return None

    def _task_action(self, task_id, verb, form, session):
        note = (form.get("note") or "").strip()[:2000] or None
        if verb == "recover":
            self.backend.recover(task_id, form.get("force") == "1")
            session.flash.append(("ok", self.t["recovered_now"]))
        elif verb == "resolve":
            resolved, refused = self.backend.resolve([task_id], note)
            session.flash.append(("ok", self.t["resolved_now"]) if resolved else ("bad", refused[0][1]))
        else:
            category = form.get("category", "")
            if not category:
                raise InputError("choose the task's right category before labelling it")
            self.backend.label(task_id, category, note)  # a finished task keeps its course: the label teaches
            shown = dict(self._categories()).get(category, category)
            session.flash.append(("ok", self.t["labelled"].format(category=f"{shown} ({category})")))

    def _save_pattern(self, form, session):
        days = workbench.check_days(form.get("days"))
        if not self.backend.settings.console_pattern_writes:
            session.flash.append(("bad", self.t["writes_off"]))
        else:  # a directory it cannot write is found by trying: _save_failed says so, as the page did
            settings = self.backend.settings
            self._pattern_category(form.get("category", ""))
            path = workbench.save(settings.config_dir, form.get("category", ""), form.get("pattern", ""),
                                  self.backend.clock.now(), settings.lang, settings.log_dir)
            session.flash.append(("ok", self.t["saved"].format(file=path.name)))
        return f"/ui/unknown?days={days}"

    def _save_failed(self, exc, form, session):
        """The workbench again, its pattern kept, saying why the file could not be written. It is the host's
        to fix, not a bug: one log line, no traceback."""
        log.error("console: pattern not saved: %s", exc)
        session.flash.append(("bad", str(exc)))
        query = {name: [form.get(name, "")] for name in ("pattern", "category", "days")}
        return self._page(self._unknown(session, query), 503)

    def _form(self, handler):
        """The url-encoded form body (at most MAX_FORM_BYTES) as {name: last value}."""
        length = handler._length()
        if length is None or length > MAX_FORM_BYTES:
            raise InputError(f"a form needs a Content-Length of at most {MAX_FORM_BYTES} bytes")
        body = handler._read_body(length) if length else b""
        handler._body_read = True
        fields = read_fields(body.decode("utf-8", "replace"), MAX_FORM_FIELDS, "the form")
        return {name: values[-1] for name, values in fields.items()}


def _one(query, name):
    values = query.get(name) or [""]
    return values[-1].strip()
