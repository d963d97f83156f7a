"""The SQLite store: peewee models, the one place for pragmas and transactions, migrations, views.

Times are UTC, stored as SQLite's own text form ('YYYY-MM-DD HH:MM:SS.mmm') so
``sqlite3`` shows and compares them directly; in Python they are epoch floats.
"""

import os
import sqlite3
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import peewee as pw

from .clock import from_db_time, to_db_time
from .errors import InputError, StoreError, StoreFullError

SCHEMA_VERSION = 2

# Task statuses. "new" waits for the daemon; the last five are final.
NEW, SCHEDULED, RUNNING = "new", "scheduled", "running"
RECOVERED, NOTIFIED, EXHAUSTED, MANUAL, RESOLVED = "recovered", "notified", "exhausted", "manual", "resolved"
FINAL_STATUSES = (RECOVERED, NOTIFIED, EXHAUSTED, MANUAL, RESOLVED)

# Below this much free space SQLite's next page or WAL frame may not fit: the daemon treats
# the disk as full before a write fails half-way, and `status` says so.
DISK_FLOOR_BYTES = 256 * 1024

OPEN_RETRY_SECONDS = 0.05  # between tries to open a database another process is creating

# Writers wait this long for the lock before SQLite gives up; several
# reporting processes plus the daemon must never see "database is locked".
BUSY_TIMEOUT_SECONDS = 30
EAGER_POLL_SECONDS = 0.0005  # eager_transaction: how often a waiting writer asks for the lock again

PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", BUSY_TIMEOUT_SECONDS * 1000),
)


class UtcTimeField(pw.Field):
    """Epoch seconds in Python, SQLite datetime text in the file."""

    field_type = "DATETIME"

    def db_value(self, value):
        return to_db_time(value) if isinstance(value, (int, float)) else value

    def python_value(self, value):
        return from_db_time(value)


class BaseModel(pw.Model):
    class Meta:
        database = None  # bound to the Store's database at open time
        legacy_table_names = False


class Task(BaseModel):
    task_type = pw.TextField()
    ref = pw.TextField(null=True)
    source = pw.TextField()
    status = pw.TextField(default=NEW)
    category = pw.TextField(null=True)
    matched_by = pw.TextField(null=True)
    matched_pattern = pw.TextField(null=True)
    error_type = pw.TextField(null=True)
    error_message = pw.TextField()
    error_template = pw.TextField(null=True)
    fingerprint = pw.TextField(null=True)
    payload = pw.TextField(null=True)  # JSON object
    handler = pw.TextField(null=True)  # JSON: a task's own handler (failured exec)
    attempts = pw.IntegerField(default=0)  # retries started so far
    max_attempts = pw.IntegerField(null=True)
    next_retry_at = UtcTimeField(null=True)
    lease_owner = pw.TextField(null=True)
    lease_until = UtcTimeField(null=True)
    handler_pid = pw.IntegerField(null=True)
    note = pw.TextField(null=True)
    created_at = UtcTimeField()
    updated_at = UtcTimeField()
    finished_at = UtcTimeField(null=True)

    class Meta:
        table_name = "tasks"
        indexes = (
            (("status", "next_retry_at"), False),
            # Covering index for reports: a period's aggregates never touch the wide rows.
            (("created_at", "category", "task_type", "status", "fingerprint", "attempts", "finished_at"), False),
            (("category", "created_at"), False),
            (("task_type", "created_at"), False),
            (("fingerprint",), False),
            # Recovery rate over tasks that finished in a window (reports and thresholds).
            (("finished_at", "category", "status", "attempts", "created_at"), False),
        )


class TaskEvent(BaseModel):
    task = pw.ForeignKeyField(Task, backref="events", on_delete="CASCADE", column_name="task_id")
    at = UtcTimeField()
    event = pw.TextField()
    status = pw.TextField()
    category = pw.TextField(null=True)
    attempt = pw.IntegerField(null=True)
    delay_seconds = pw.FloatField(null=True)
    error_message = pw.TextField(null=True)
    detail = pw.TextField(null=True)

    class Meta:
        table_name = "task_events"
        indexes = ((("task", "id"), False), (("at",), False))


class Notification(BaseModel):
    task = pw.ForeignKeyField(Task, null=True, on_delete="SET NULL", column_name="task_id")
    created_at = UtcTimeField()
    audience = pw.TextField()  # admin | user
    kind = pw.TextField()  # task | exhausted | manual | breaker | config | threshold | digest
    category = pw.TextField(null=True)
    task_type = pw.TextField(null=True)
    fingerprint = pw.TextField(null=True)
    title = pw.TextField()
    body = pw.TextField()
    status = pw.TextField(default="pending")  # pending | sent | merged | suppressed | failed
    channel = pw.TextField(null=True)
    attempts = pw.IntegerField(default=0)
    next_attempt_at = UtcTimeField(null=True)
    sent_at = UtcTimeField(null=True)
    merged_into = pw.IntegerField(null=True)
    last_error = pw.TextField(null=True)

    class Meta:
        table_name = "notifications"
        indexes = ((("status", "next_attempt_at"), False), (("created_at",), False))


class SuccessCount(BaseModel):
    """Successful runs per task type and hour, for the failure-rate threshold."""

    task_type = pw.TextField()
    hour = pw.TextField()  # 'YYYY-MM-DD HH:00:00' UTC
    count = pw.IntegerField(default=0)

    class Meta:
        table_name = "success_counts"
        primary_key = pw.CompositeKey("task_type", "hour")


class Breaker(BaseModel):
    """Circuit breaker state per task type (survives restarts)."""

    task_type = pw.TextField(primary_key=True)
    state = pw.TextField(default="closed")  # closed | open | half_open
    consecutive_failures = pw.IntegerField(default=0)
    open_until = UtcTimeField(null=True)
    updated_at = UtcTimeField()

    class Meta:
        table_name = "breakers"


class DaemonState(BaseModel):
    """Small key/value facts: heartbeat, last scan, active config, last report cut-off."""

    key = pw.TextField(primary_key=True)
    value = pw.TextField()
    updated_at = UtcTimeField()

    class Meta:
        table_name = "daemon_state"


class Label(BaseModel):
    """An operator's word on why a task failed: corrects its course and teaches the model."""

    task = pw.ForeignKeyField(Task, null=True, on_delete="SET NULL", column_name="task_id")
    labelled_at = UtcTimeField()
    category = pw.TextField()  # what the operator says it is
    decided = pw.TextField(null=True)  # what failured had decided
    error_type = pw.TextField(null=True)
    message = pw.TextField()  # the error text, kept when the task itself is purged
    note = pw.TextField(null=True)

    class Meta:
        table_name = "labels"
        indexes = ((("labelled_at",), False),)


MODELS = (Task, TaskEvent, Notification, SuccessCount, Breaker, DaemonState, Label)

VIEWS = {
    "pending_retries": """
        SELECT id, task_type, ref, category, attempts, max_attempts, next_retry_at,
               substr(error_message, 1, 120) AS error
        FROM tasks WHERE status = 'scheduled' ORDER BY next_retry_at""",
    "failures_last_24h": """
        SELECT category, task_type, count(*) AS failures,
               sum(status = 'recovered') AS recovered, max(created_at) AS last_seen
        FROM tasks WHERE created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 day')
        GROUP BY category, task_type ORDER BY failures DESC""",
    "open_tasks": """
        SELECT id, task_type, ref, status, category, attempts, next_retry_at, created_at,
               substr(error_message, 1, 120) AS error
        FROM tasks WHERE status IN ('new', 'scheduled', 'running') ORDER BY id""",
    "task_history": """
        SELECT e.task_id, e.at, e.event, e.status, e.category, e.attempt, e.delay_seconds,
               substr(e.error_message, 1, 120) AS error
        FROM task_events e ORDER BY e.task_id, e.id""",
}

# version -> SQL statements (or callables taking the database) that bring a database from
# version-1 up to it. A fresh database is created at SCHEMA_VERSION directly from the models.
MIGRATIONS = {
    2: [lambda db: db.create_tables([Label], safe=True),
        'CREATE INDEX IF NOT EXISTS "tasks_finished_at_category_status_attempts_created_at" '
        'ON "tasks" ("finished_at", "category", "status", "attempts", "created_at")'],
}


class MissingStoreError(InputError):
    """A command that only reads was pointed at a database that does not exist."""

    def __init__(self, path):
        super().__init__(f"no database at {path}; is FAILURE_DB right? "
                         "(commands that only read never create one)")


def _causes(exc):
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def translate_error(path, exc):
    """The StoreError a database failure means for a person, or None when it is not one we name.

    A full disk makes SQLite roll back by itself, and the rollback that follows then
    fails with "cannot rollback - no transaction is active": the cause is further down.
    """
    for cause in _causes(exc):
        if isinstance(cause, StoreError):
            return cause
        text = str(cause).lower()
        if "database or disk is full" in text or "disk i/o error" in text and "full" in text:
            return StoreFullError(path)
        if "readonly database" in text or "read-only" in text and "database" in text:
            return StoreError(f"database {path} is read-only ({cause}): "
                              "check the permissions of the file and of its directory")
    return None


class Store:
    """One SQLite file. Models are bound to it when it opens."""

    created = False  # True when open() made a new database file

    def __init__(self, path):
        self.path = Path(path)
        self.db = pw.SqliteDatabase(
            str(self.path),
            pragmas=PRAGMAS,
            timeout=BUSY_TIMEOUT_SECONDS,
            lock_type="IMMEDIATE",  # take the write lock at BEGIN: no deadlock on upgrade
            check_same_thread=False,
        )
        self.db.bind(MODELS, bind_refs=False, bind_backrefs=False)

    def open(self, create=True):
        """Create (only when ``create``) or migrate the schema; returns self."""
        if not self.path.exists():
            if not create:
                raise MissingStoreError(self.path)
            self.created = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connect_and_migrate()
        except StoreError:
            raise
        except (pw.DatabaseError, sqlite3.DatabaseError, OSError) as exc:
            known = translate_error(self.path, exc)
            if known is not None:
                raise known from None
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        return self

    def _connect_and_migrate(self):
        """Connect and migrate, trying again while another process holds the lock.

        Two processes opening a brand-new file at once (a daemon and a reporter) race to
        switch it to WAL, and that switch answers "database is locked" at once instead of
        waiting in the busy handler: wait here as the busy timeout would.
        """
        # as long as this database's own lock timeout (a worker's reporter sets a short one)
        deadline = time.monotonic() + getattr(self.db, "_timeout", BUSY_TIMEOUT_SECONDS)
        while True:
            try:
                self.db.connect(reuse_if_open=True)
                self._migrate()
                return
            except (pw.OperationalError, sqlite3.OperationalError) as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                self.close()
                time.sleep(OPEN_RETRY_SECONDS)

    def close(self):
        if not self.db.is_closed():
            self.db.close()

    @contextmanager
    def transaction(self):
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error).

        A full disk or a read-only file comes out as a StoreError that says so.
        """
        try:
            with self.db.atomic():
                yield
        except (pw.DatabaseError, sqlite3.DatabaseError) as exc:
            known = translate_error(self.path, exc)
            if known is None:
                raise
            raise known from None

    @contextmanager
    def savepoint(self):
        """``transaction()`` nested in one, in plain SQL: peewee's savepoint (a uuid name,
        several objects) cost a fifth of writing a decision. Store errors come out as StoreErrors."""
        connection = self.db.connection()
        connection.execute("SAVEPOINT nested")
        try:
            yield
        except BaseException as exc:
            try:
                connection.execute("ROLLBACK TO nested")
                connection.execute("RELEASE nested")
            except sqlite3.DatabaseError:
                pass  # SQLite already rolled the whole transaction back (disk full): the outer one says so
            known = translate_error(self.path, exc) if isinstance(exc, sqlite3.DatabaseError) else None
            if known is not None:
                raise known from None
            raise
        connection.execute("RELEASE nested")

    @contextmanager
    def eager_transaction(self):
        """``transaction()``, but its BEGIN asks for the write lock every EAGER_POLL_SECONDS.

        SQLite's busy handler sleeps 1, 2, 5 ... up to 100 ms between tries and is not woken
        when the lock frees: beside a daemon that writes nearly back to back, a waiter that
        backs off that far starves (a reporter's single insert then takes 100s of ms).
        """
        if self.db.transaction_depth():
            with self.transaction():  # a savepoint: the lock is ours already
                yield
            return
        try:
            transaction = self._begin_eagerly()
            try:
                yield
            except BaseException:
                transaction.__exit__(*sys.exc_info())  # rolls back; the exception goes on
                raise
            transaction.__exit__(None, None, None)  # commits
        except (pw.DatabaseError, sqlite3.DatabaseError) as exc:
            known = translate_error(self.path, exc)
            if known is None:
                raise
            raise known from None

    def _begin_eagerly(self):
        """BEGIN IMMEDIATE, polling for the lock (gives up as busy_timeout does); returns peewee's
        record of the open transaction, so a nested ``transaction()`` becomes a savepoint."""
        connection = self.db.connection()
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    connection.execute("BEGIN IMMEDIATE")  # plain sqlite3: a refused try costs microseconds
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(EAGER_POLL_SECONDS)
        finally:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
        transaction = self.db.transaction()
        self.db.push_transaction(transaction)  # as transaction.__enter__ does after its own BEGIN
        return transaction

    def schema_version(self):
        return self.db.execute_sql("PRAGMA user_version").fetchone()[0]

    def _migrate(self):
        with self.db.atomic():
            version = self.schema_version()
            if version < 0:
                raise StoreError(f"database {self.path} has schema version {version}, which no failured "
                                 "writes: it was edited by hand; restore it from a backup")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"failured ({SCHEMA_VERSION}): upgrade failured or use another FAILURE_DB"
                )
            if version == 0:
                self.db.create_tables(MODELS, safe=True)
            else:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        statement(self.db) if callable(statement) else self.db.execute_sql(statement)
            if version != SCHEMA_VERSION:
                self._create_views()
                self.db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _create_views(self):
        for name, select in VIEWS.items():
            self.db.execute_sql(f"DROP VIEW IF EXISTS {name}")
            self.db.execute_sql(f"CREATE VIEW {name} AS {select}")

    # -- small key/value state -------------------------------------------

    def set_state(self, key, value, now):
        with self.transaction():
            DaemonState.replace(key=key, value=value, updated_at=now).execute()

    def free_bytes(self):
        """Free bytes on the database's filesystem (None where it cannot be told)."""
        try:
            info = os.statvfs(self.path.absolute().parent)
        except OSError:
            return None
        return info.f_bavail * info.f_frsize

    def states(self, prefix):
        """{key: value} of the state rows whose key starts with ``prefix``."""
        rows = DaemonState.select().where(DaemonState.key.startswith(prefix))
        return {row.key: row.value for row in rows}

    def data_version(self):
        """A number that changes when another connection commits (PRAGMA data_version, per thread):
        a poll that costs no I/O, so the daemon notices a report within milliseconds."""
        return self.db.execute_sql("PRAGMA data_version").fetchone()[0]

    # -- operators' labels ------------------------------------------------

    def add_label(self, task, category, now, note=None):
        """Record a label for ``task`` (call inside a transaction with the course change)."""
        return Label.create(task=task.id, labelled_at=now, category=category, decided=task.category,
                            error_type=task.error_type, message=task.error_message, note=note)

    def labelled_examples(self):
        """[(category, error_type, message)] of every label, oldest first: the model's extra training."""
        return list(Label.select(Label.category, Label.error_type, Label.message).order_by(Label.id).tuples())

    def label_disagreements(self, start, end):
        """[(decided, labelled, count)] of labels given in [start, end) that said otherwise, most first."""
        query = (Label.select(Label.decided, Label.category, pw.fn.COUNT(Label.id))
                 .where(Label.labelled_at >= start, Label.labelled_at < end,
                        (Label.decided.is_null()) | (Label.decided != Label.category))
                 .group_by(Label.decided, Label.category)
                 .order_by(pw.fn.COUNT(Label.id).desc(), Label.decided, Label.category))
        return [(decided or "unclassified", labelled, count) for decided, labelled, count in query.tuples()]

    def label_count(self):
        return Label.select().count()

    def labels(self):
        """Every label with its task id, oldest first, as dicts (for export)."""
        return list(Label.select().order_by(Label.id).dicts())

    def delete_state(self, key):
        with self.transaction():
            DaemonState.delete().where(DaemonState.key == key).execute()

    def get_state(self, key, default=None):
        row = DaemonState.get_or_none(DaemonState.key == key)
        return row.value if row else default


def open_store(path, create=True):
    """Open (creating when ``create``, migrating) the database at ``path``; ``store.created`` says if it is new."""
    return Store(path).open(create)


# -- listing and the console's questions (the operator's views of the store) ---------

LIST_LIMIT_MAX = 500
MAX_GREP_CHARS = 200
LIST_COLUMNS = (Task.id, Task.task_type, Task.ref, Task.status, Task.category, Task.matched_by, Task.error_type,
                Task.attempts, Task.max_attempts, Task.next_retry_at, Task.created_at, Task.updated_at,
                pw.fn.substr(Task.error_message, 1, 300).alias("error"))


def like_literal(text):
    r"""``text`` as a LIKE operand that matches it literally anywhere (``%``, ``_`` and ``\`` escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_tasks(statuses=(), categories=(), task_types=(), since_at=None, grep=None, before_id=None, limit=50):
    """Tasks newest first (by id, a stable order), at most ``limit``; ``before_id`` is the page cursor.

    ``grep`` is a literal, case-insensitive (ASCII) substring of the error text: SQL LIKE with its
    wildcards escaped, so a user's text is never a pattern and costs at most one scan.
    """
    query = Task.select(*LIST_COLUMNS)
    if statuses:
        query = query.where(Task.status.in_(list(statuses)))
    if categories:
        query = query.where(Task.category.in_(list(categories)))
    if task_types:
        query = query.where(Task.task_type.in_(list(task_types)))
    if since_at is not None:
        query = query.where(Task.created_at >= since_at)
    if grep:
        query = query.where(pw.SQL("error_message LIKE ? ESCAPE '\\'", (like_literal(grep[:MAX_GREP_CHARS]),)))
    if before_id is not None:
        query = query.where(Task.id < before_id)
    limit = max(1, min(int(limit), LIST_LIMIT_MAX + 1))  # one more tells a caller another page exists
    return list(query.order_by(Task.id.desc()).limit(limit).dicts())


def failures_by_period(start, width):
    """[(period, category, count)] of tasks created since ``start`` (epoch), per hour (width 13) or day (10)."""
    period = pw.fn.substr(Task.created_at, 1, width)
    category = pw.fn.coalesce(Task.category, "unclassified")
    return list(Task.select(period, category, pw.fn.COUNT(Task.id)).where(Task.created_at >= start)
                .group_by(period, category).tuples())


def unknown_groups(start, limit=20):
    """[(fingerprint, count, newest id)] of ``unknown`` tasks created since ``start``, most frequent first."""
    count = pw.fn.COUNT(Task.id)
    return list(Task.select(Task.fingerprint, count, pw.fn.MAX(Task.id))
                .where(Task.category == "unknown", Task.created_at >= start)
                .group_by(Task.fingerprint).order_by(count.desc(), Task.fingerprint).limit(limit).tuples())


def fingerprint_samples(fingerprint, limit=3, scan=500):
    """(template, [distinct newest messages]) of one fingerprint."""
    rows = list(Task.select(Task.error_template, Task.error_message).where(Task.fingerprint == fingerprint)
                .order_by(Task.id.desc()).limit(scan).tuples())
    samples = list(dict.fromkeys(message for _, message in rows))[:limit]
    return (rows[0][0] if rows else None), samples


def recent_messages(start, unknown, limit):
    """[(id, task_type, category, error text)] created since ``start``, newest first: the
    ``unknown`` ones, or (``unknown`` False) the classified ones."""
    query = Task.select(Task.id, Task.task_type, Task.category, Task.error_message).where(Task.created_at >= start)
    query = query.where(Task.category == "unknown") if unknown else query.where(
        Task.category.is_null(False), Task.category != "unknown")
    return list(query.order_by(Task.id.desc()).limit(limit).tuples())


def outbox_counts():
    """[(channel, status, count)] of the notification outbox."""
    return list(Notification.select(Notification.channel, Notification.status, pw.fn.COUNT(Notification.id))
                .group_by(Notification.channel, Notification.status).tuples())


def outbox_rows(statuses, channel=None, limit=100):
    """Notifications in ``statuses`` (newest first), optionally of one channel, as dicts."""
    query = Notification.select(Notification.id, Notification.task, Notification.created_at, Notification.channel,
                                Notification.status, Notification.kind, Notification.title, Notification.attempts,
                                Notification.next_attempt_at, Notification.last_error)
    query = query.where(Notification.status.in_(list(statuses)))
    if channel:
        query = query.where(Notification.channel == channel)
    return list(query.order_by(Notification.id.desc()).limit(limit).dicts())


def send_again(store, notification_id, now):
    """A failed notification back to pending, due now, its tries counted afresh; False when it is not failed."""
    with store.transaction():
        return bool(Notification.update(status="pending", attempts=0, next_attempt_at=now)
                    .where(Notification.id == notification_id, Notification.status == "failed").execute())
