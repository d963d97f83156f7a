"""The tables (peewee models), the operators' views and the migrations, for SQLite and PostgreSQL alike.

Times are UTC. SQLite keeps them as its own datetime text ('YYYY-MM-DD HH:MM:SS.mmm'),
PostgreSQL as ``timestamptz``; both compare and sort them as times, and in Python they are
epoch floats either way (``UtcTimeField`` and ``epoch`` convert).
"""

from datetime import datetime

from ..clock import from_db_time, to_db_time
from ..states import OPEN_STATUSES, BreakerState, NotificationStatus, TaskStatus, sql_list
from ._peewee import pw
from .counters import analyze_index, create_counters

# The version is kept in the schema_info table, which both stores have; SQLite keeps it in
# PRAGMA user_version too (where failured has always read it there).
SCHEMA_VERSION = 6
TIME_TYPE = "UTCTIME"  # the field type of UtcTimeField; each store maps it (see database.FIELD_TYPES)


def epoch(value):
    """A time as the database returns it (SQLite text, PostgreSQL datetime) -> epoch seconds; None stays None."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    return from_db_time(value)


class UtcTimeField(pw.Field):
    """Epoch seconds in Python; SQLite datetime text or PostgreSQL timestamptz in the database."""

    field_type = TIME_TYPE

    def db_value(self, value):
        # The text form is bound as it is: PostgreSQL reads it as a timestamptz in the session's UTC.
        return to_db_time(value) if isinstance(value, (int, float)) else value

    def python_value(self, value):
        return epoch(value)


class BaseModel(pw.Model):
    class Meta:
        database = None  # the store's queries bind their database; Store.open binds it for older callers too
        legacy_table_names = False


class Task(BaseModel):
    task_type = pw.TextField()
    ref = pw.TextField(null=True)
    source = pw.TextField()
    status = pw.TextField(default=TaskStatus.NEW)
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
            (("task_type", "created_at"), False),
        )


# Indexes whose first column a new task has no value for (it is classified, then finished, later): only
# the rows that have one are in them, so a report writes three index entries fewer (they are added by the
# decision, written for many tasks in one transaction). Every query that uses them compares that column
# (=, <, >=), which tells both planners the row has a value.
_PARTIAL_TASK_INDEXES = (
    # The console's unknown errors of the last days: an index-only group by fingerprint.
    (Task.category, Task.created_at, Task.fingerprint),
    (Task.fingerprint,),
    # Recovery rate over tasks that finished in a window (reports and thresholds).
    (Task.finished_at, Task.category, Task.status, Task.attempts, Task.created_at),
)
for _columns in _PARTIAL_TASK_INDEXES:
    Task.add_index(*_columns, where=_columns[0].is_null(False))


# PostgreSQL: the writing transaction's id, which the processing report's watermark follows (see aggregates).
XACT_DEFAULT = "pg_current_xact_id()::text::bigint"


class XactField(pw.BigIntegerField):
    """The id of the transaction that wrote the row, filled by PostgreSQL itself; NULL on SQLite (there, one
    writer at a time commits ids in order and the report follows the id)."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        # The store that keeps times as timestamptz is PostgreSQL (database.py maps the type per store).
        if (ctx.state.field_types or {}).get(TIME_TYPE) == "TIMESTAMPTZ":
            node.nodes.append(pw.SQL(f"DEFAULT ({XACT_DEFAULT})"))
        return node


class TaskEvent(BaseModel):
    # No index of its own: (task_id, id) below serves every lookup by task, one index less per event written.
    task = pw.ForeignKeyField(Task, backref="events", on_delete="CASCADE", column_name="task_id", index=False)
    at = UtcTimeField()
    event = pw.TextField()
    status = pw.TextField()
    category = pw.TextField(null=True)
    attempt = pw.IntegerField(null=True)
    delay_seconds = pw.FloatField(null=True)
    error_message = pw.TextField(null=True)
    detail = pw.TextField(null=True)
    xact = XactField(null=True)

    class Meta:
        table_name = "task_events"
        indexes = ((("task", "id"), False), (("at",), False))


# Only rows that have a transaction id (PostgreSQL's): on SQLite every xact is NULL and no event write touches it.
TaskEvent.add_index(TaskEvent.xact, where=TaskEvent.xact.is_null(False))


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
    status = pw.TextField(default=NotificationStatus.PENDING)  # a NotificationStatus
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
    hour = pw.TextField()  # 'YYYY-MM-DD HH:00:00' UTC, text in both stores
    count = pw.IntegerField(default=0)

    class Meta:
        table_name = "success_counts"
        primary_key = pw.CompositeKey("task_type", "hour")


class Breaker(BaseModel):
    """Circuit breaker state per task type (survives restarts)."""

    task_type = pw.TextField(primary_key=True)
    state = pw.TextField(default=BreakerState.CLOSED)  # a BreakerState
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


class Member(BaseModel):
    """One daemon using this database (several share a PostgreSQL one). ``name`` is what its leases carry
    (``tasks.lease_owner``); ``heartbeat_at`` is the database server's time, one clock for every host."""

    name = pw.TextField(unique=True)
    host = pw.TextField()
    pid = pw.IntegerField()
    started_at = UtcTimeField()
    heartbeat_at = UtcTimeField()
    leader = pw.BooleanField(default=False)
    runs = pw.TextField(null=True)  # JSON: what it runs besides retries (the leader's jobs, the channels it delivers)
    stopped_at = UtcTimeField(null=True)

    class Meta:
        table_name = "daemons"


class ChannelSend(BaseModel):
    """A message a rate-limited channel sent, written before it goes out: the robot's sliding minute, read by
    whichever daemon delivers the channel next (a send cut short by a crash still counts)."""

    channel = pw.TextField()
    at = UtcTimeField()  # the sending daemon's wall clock (hosts keep theirs in step with NTP)
    notification_id = pw.IntegerField(null=True)

    class Meta:
        table_name = "channel_sends"
        indexes = ((("channel", "at"), False),)


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


class SchemaInfo(BaseModel):
    """One row: the schema version of this database (both stores)."""

    version = pw.IntegerField()

    class Meta:
        table_name = "schema_info"


class TaskCount(BaseModel):
    """Tasks per status and category now (category '-' before the task is classified).

    Kept exact by triggers on tasks (see ``counter_triggers``), in the same transaction as the write that
    changes a task: the console and ``failured status`` read a few rows, not the table.
    """

    status = pw.TextField()
    category = pw.TextField()
    count = pw.IntegerField(default=0)

    class Meta:
        table_name = "task_counts"
        derived = True  # rebuilt from the tasks, never copied (aggregates.rebuild_counters)
        primary_key = pw.CompositeKey("status", "category")


class FailureCount(BaseModel):
    """Tasks per hour they were reported ('YYYY-MM-DD HH' UTC) and their category now ('unclassified' before
    the task is classified). Kept by the same triggers; a day is the sum of its hours."""

    hour = pw.TextField()
    category = pw.TextField()
    count = pw.IntegerField(default=0)

    class Meta:
        table_name = "failure_counts"
        derived = True  # rebuilt from the tasks, never copied (aggregates.rebuild_counters)
        primary_key = pw.CompositeKey("hour", "category")


class RecoveryCount(BaseModel):
    """Tasks whose retries ended (a final status, at least one retry run) per hour of ``finished_at`` and
    category: how many, how many recovered, and the retries the recovered ones took. The recovery rate of
    the last days reads these rows (kept by the same triggers) instead of every task that finished."""

    hour = pw.TextField()
    category = pw.TextField()
    ended = pw.IntegerField(default=0)
    recovered = pw.IntegerField(default=0)
    retries = pw.IntegerField(default=0)

    class Meta:
        table_name = "recovery_counts"
        derived = True  # rebuilt from the tasks, never copied (aggregates.rebuild_counters)
        primary_key = pw.CompositeKey("hour", "category")


MODELS = (Task, TaskEvent, Notification, SuccessCount, Breaker, DaemonState, Label, SchemaInfo, TaskCount, FailureCount,
          RecoveryCount, Member, ChannelSend)
COUNTERS = (TaskCount, FailureCount, RecoveryCount)

_SCHEDULED, _RECOVERED = f"'{TaskStatus.SCHEDULED}'", f"'{TaskStatus.RECOVERED}'"


def views(dialect):
    """{name: SELECT} of the operators' views (``sqlite3`` / ``psql``), in the dialect's words."""
    day_ago = ("strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 day')" if dialect == "sqlite"
               else "now() - interval '1 day'")
    return {
        "pending_retries": f"""
            SELECT id, task_type, ref, category, attempts, max_attempts, next_retry_at,
                   substr(error_message, 1, 120) AS error
            FROM tasks WHERE status = {_SCHEDULED} ORDER BY next_retry_at""",
        "failures_last_24h": f"""
            SELECT category, task_type, count(*) AS failures,
                   sum(CASE WHEN status = {_RECOVERED} THEN 1 ELSE 0 END) AS recovered, max(created_at) AS last_seen
            FROM tasks WHERE created_at >= {day_ago}
            GROUP BY category, task_type ORDER BY failures DESC""",
        "open_tasks": f"""
            SELECT id, task_type, ref, status, category, attempts, next_retry_at, created_at,
                   substr(error_message, 1, 120) AS error
            FROM tasks WHERE status IN ({sql_list(OPEN_STATUSES)}) ORDER BY id""",
        "task_history": """
            SELECT e.task_id, e.at, e.event, e.status, e.category, e.attempt, e.delay_seconds,
                   substr(e.error_message, 1, 120) AS error
            FROM task_events e ORDER BY e.task_id, e.id""",
    }


def _partial_task_indexes(store):
    """Schema 6: the tasks' indexes of ``_PARTIAL_TASK_INDEXES`` rebuilt without the rows that have no value."""
    for columns in _PARTIAL_TASK_INDEXES:
        names = [column.column_name for column in columns]
        index = "tasks_" + "_".join(names)  # peewee's name for it, as the models create it
        quoted = ", ".join(f'"{name}"' for name in names)
        store.db.execute_sql(f'DROP INDEX IF EXISTS "{index}"')
        store.db.execute_sql(f'CREATE INDEX "{index}" ON "tasks" ({quoted}) WHERE "{names[0]}" IS NOT NULL')
        analyze_index(store, index)


def _add_event_xact(store):
    """task_events.xact: NULL on the rows already there (the report reaches them by id), filled from now on."""
    if "xact" not in {column.name for column in store.db.get_columns("task_events")}:
        store.db.execute_sql('ALTER TABLE "task_events" ADD COLUMN "xact" BIGINT')
    if store.dialect == "postgresql":
        store.db.execute_sql(f'ALTER TABLE "task_events" ALTER COLUMN "xact" SET DEFAULT ({XACT_DEFAULT})')
    store.db.execute_sql('CREATE INDEX IF NOT EXISTS "task_events_xact" ON "task_events" ("xact") WHERE "xact" IS NOT NULL')


# version -> steps (SQL text, or callables taking the Store) that bring a database from version-1
# up to it. A fresh database is created at SCHEMA_VERSION directly from the models. Every step
# runs on either store: SQL here is written in the words both understand.
MIGRATIONS = {
    2: [lambda store: store.create_tables([Label]),
        'CREATE INDEX IF NOT EXISTS "tasks_finished_at_category_status_attempts_created_at" '
        'ON "tasks" ("finished_at", "category", "status", "attempts", "created_at")'],
    3: [create_counters,
        ('CREATE INDEX IF NOT EXISTS "tasks_category_created_at_fingerprint" '
         'ON "tasks" ("category", "created_at", "fingerprint")'),
        'DROP INDEX IF EXISTS "tasks_category_created_at"',
        lambda store: analyze_index(store, "tasks_category_created_at_fingerprint")],
    # task_counts counts running tasks as scheduled: the new triggers, and the counts refilled that way.
    4: [create_counters],
    # Several daemons on one PostgreSQL: their membership, the robots' shared minute, the report's transaction ids.
    5: [lambda store: store.create_tables([Member, ChannelSend]), _add_event_xact,
        'DROP INDEX IF EXISTS "task_events_task_id"'],  # (task_id, id) serves every lookup by task
    # A report writes no entry in the indexes of what a new task does not have yet.
    6: [_partial_task_indexes],
}
