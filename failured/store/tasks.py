"""Task rows: intake, the conditional updates of the life cycle, their events, leases and the retry heap's rows.

Every function takes the store first and runs inside the caller's transaction unless it
says otherwise. The hot paths are plain SQL: peewee's query building would cost more than
the database itself there.
"""

import functools
import json
import time

from ..clock import to_db_time
from ..states import TaskStatus
from .members import WAKE_CHANNEL
from .schema import SuccessCount, Task, UtcTimeField, epoch

NEW, SCHEDULED, RUNNING, RECOVERED = TaskStatus.NEW, TaskStatus.SCHEDULED, TaskStatus.RUNNING, TaskStatus.RECOVERED

TASK_COLUMNS = [field.column_name for field in Task._meta.sorted_fields]
_TIME_COLUMNS = {f.column_name for f in Task._meta.sorted_fields if isinstance(f, UtcTimeField)}

_INSERT_TASK = (
    "INSERT INTO tasks (task_type, ref, source, status, error_type, error_message, payload, handler,"
    " attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
)
_INSERT_REPORTED = "INSERT INTO task_events (task_id, at, event, status, error_message) VALUES (?, ?, 'reported', ?, ?)"
_INSERT_EVENT = ("INSERT INTO task_events (task_id, at, event, status, category, attempt, delay_seconds,"
                 " error_message, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SELECT_TASK = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE id = ?"
_SELECT_NEW = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE status = '{NEW}'{{}} ORDER BY id LIMIT ?"
_SELECT_SCHEDULED = f"SELECT id, next_retry_at, task_type FROM tasks WHERE status = '{SCHEDULED}'"
CLAIM = (f"UPDATE tasks SET status = '{RUNNING}', attempts = ?, lease_owner = ?, lease_until = ?, updated_at = ?,"
         f" handler_pid = NULL WHERE id = ? AND status = '{SCHEDULED}' AND next_retry_at = ?")
RECOVER = (f"UPDATE tasks SET status = '{RECOVERED}', finished_at = ?, updated_at = ?, lease_owner = NULL,"
           " lease_until = NULL, handler_pid = NULL, next_retry_at = NULL"
           f" WHERE id = ? AND status = '{RUNNING}' AND lease_owner = ?")
_MASK_REPORTED = "UPDATE task_events SET error_message = ? WHERE task_id = ? AND event = 'reported'"

# The same few instants are written several times per transaction (updated_at, the event's
# time, finished_at); formatting them was the daemon's largest single cost in a flood.
stamp = functools.lru_cache(maxsize=1024)(to_db_time)
# A task's created_at and updated_at are often one instant.
_epoch_text = functools.lru_cache(maxsize=4096)(epoch)


def _epoch(value):
    return _epoch_text(value) if isinstance(value, str) else epoch(value)


# -- intake -------------------------------------------------------------------

_INSERT_TASK_AND_EVENT = (  # PostgreSQL: both rows in one statement, so a report is one round trip
    f"WITH task AS ({_INSERT_TASK} RETURNING id, created_at, error_message),"
    " event AS (INSERT INTO task_events (task_id, at, event, status, error_message)"
    f" SELECT id, created_at, 'reported', '{NEW}', error_message FROM task RETURNING task_id)"
    " SELECT task_id FROM event")
# ... and the daemons' wake-up (store.members.wake_daemons), sent when it commits
_INSERT_TASK_EVENT_AND_WAKE = (
    _INSERT_TASK_AND_EVENT + f", LATERAL (SELECT pg_notify('{WAKE_CHANNEL}', current_schema())) AS wake")
# A process's reports wake the daemons at most this often: a NOTIFY costs the server a third of a report
# (and every daemon a sweep), and a daemon woken by one report decides every report committed by then;
# one that came just after is seen by the daemons' own look for new tasks (every 10 ms) instead.
WAKE_EVERY_SECONDS = 0.005


def insert_task(store, task_type, ref, source, error_type, message, payload, handler, now):
    """A new task and its ``reported`` event, in one transaction (or the caller's); returns its id."""
    created = to_db_time(now)
    values = (task_type, ref, source, NEW, error_type, message, payload, handler, created, created)
    if store.dialect != "sqlite":
        sql, moment = _INSERT_TASK_AND_EVENT, time.monotonic()
        if moment - store.woke_at >= WAKE_EVERY_SECONDS:
            sql, store.woke_at = _INSERT_TASK_EVENT_AND_WAKE, moment
        return store.scalar(sql, *values)  # one statement is one transaction
    with store.eager_transaction():  # beside a busy daemon: see eager_transaction
        task_id = store.insert_id(_INSERT_TASK, values)
        store.execute(_INSERT_REPORTED, (task_id, created, NEW, message))
    return task_id


def success_hour(epoch):
    """The UTC hour ``epoch`` falls in, as success_counts.hour holds it."""
    return time.strftime("%Y-%m-%d %H:00:00", time.gmtime(epoch))


def add_successes(store, task_type, count, now):
    """Add ``count`` to this hour's tally of successful runs."""
    (SuccessCount.insert(task_type=task_type, hour=success_hour(now), count=count).bind(store.db)
     .on_conflict(conflict_target=[SuccessCount.task_type, SuccessCount.hour],
                  update={SuccessCount.count: SuccessCount.count + count})
     .execute())


def stored_error(store, task_id):
    """(task type, error type, error text) of one task, or None."""
    return store.execute("SELECT task_type, error_type, error_message FROM tasks WHERE id = ?", (task_id,)).fetchone()


# -- events --------------------------------------------------------------------

# json.dumps(detail, ensure_ascii=False), without building an encoder each call (json.dumps does for any
# but its default options): an event's detail is written once per transition.
_detail_json = json.JSONEncoder(ensure_ascii=False).encode


def event_row(task_id, now, event, status, category=None, attempt=None, delay=None, error=None, **detail):
    """The parameters of the task_events row ``add_event`` writes (to write many at once)."""
    return (task_id, stamp(now), event, status, category, attempt, delay, error,
            _detail_json(detail) if detail else None)


def add_event(store, task_id, now, event, status, category=None, attempt=None, delay=None, error=None, **detail):
    """One audited event of a task."""
    store.execute(_INSERT_EVENT, event_row(task_id, now, event, status, category, attempt, delay, error, **detail))


def add_events(store, rows):
    """Insert many ``event_row``s at once (on SQLite a statement per ROWS_PER_STATEMENT: see _run_many)."""
    if not rows:
        return
    if store.dialect != "sqlite":
        store.executemany(_INSERT_EVENT, rows)
        return
    for piece in _pieces(rows, ROWS_PER_STATEMENT):
        store.execute(_events_text(len(piece)), [value for row in piece for value in row])


@functools.cache  # one per power of two up to ROWS_PER_STATEMENT
def _events_text(count):
    columns, _, row = _INSERT_EVENT.partition(" VALUES ")
    return f"{columns} VALUES {', '.join([row] * count)}"


def _chunks(rows):
    """``rows`` by ROWS_PER_STATEMENT, each chunk padded with its last row to a power of two: a few statement
    texts, which the driver keeps prepared (a repeated row changes nothing twice)."""
    chunks = []
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        chunks.append(chunk + chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk)))
    return chunks


def _pieces(rows, most):
    """``rows`` in pieces of a power of two rows, ``most`` (a power of two) at the largest: a few statement
    texts, which the driver keeps prepared (``_chunks`` pads instead, where a repeated row is harmless)."""
    start = 0
    while start < len(rows):
        size = min(most, _power_of_two_within(len(rows) - start))
        yield rows[start:start + size]
        start += size


def _power_of_two_within(count):
    """The largest power of two not above ``count`` (``count`` >= 1)."""
    return 1 << count.bit_length() - 1


def mask_reported_error(store, task_id, error):
    """The first event keeps the reported text: replace it with the masked one too."""
    store.execute(_MASK_REPORTED, (error, task_id))


# -- the conditional update ---------------------------------------------------------

_UPDATE_SQL = {}
_UPDATE_COLUMNS = {}  # the other way round


def update_statement(task_id, expected_status, fields):
    """(sql, parameters) of ``update_task``, to be run later (prepared before the write lock)."""
    columns = tuple(sorted(fields))
    sql = _UPDATE_SQL.get(columns)
    if sql is None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        sql = f"UPDATE tasks SET {assignments} WHERE id = ? AND status = ?"
        _UPDATE_COLUMNS[sql] = columns  # first: a statement another thread finds is known there
        _UPDATE_SQL[columns] = sql
    values = [stamp(fields[c]) if c in _TIME_COLUMNS and isinstance(fields[c], (int, float)) else fields[c]
              for c in columns]
    return sql, (*values, task_id, expected_status)


def update_task(store, task_id, expected_status, fields):
    """``UPDATE tasks SET fields WHERE id AND status``; True when it applied."""
    return store.execute(*update_statement(task_id, expected_status, fields)).rowcount == 1


def run_update(store, statement):
    """Run one prepared ``update_statement``; True when it applied."""
    return store.execute(*statement).rowcount == 1


# SQLite: many prepared ``update_statement``s sharing their columns as one statement per piece of a power of
# two rows (a few texts, which the driver keeps prepared). Each row carries its own values and its own
# condition (id and expected status, the last two of its parameters); the unary + keeps SQLite on the
# primary key. The counter triggers still fire once per row, as for the one-row statements.
_UPDATE_FROM = ("UPDATE tasks SET {assignments} FROM (VALUES {rows}) AS v"
                " WHERE tasks.id = v.column{id} AND +tasks.status = v.column{status}")
_SQLITE_MAX_PARAMETERS = 999  # the oldest SQLite's limit a statement


@functools.cache  # one per power of two a set of columns
def _updates_text(columns, count):
    width = len(columns) + 2
    assignments = ", ".join(f"{column} = v.column{n}" for n, column in enumerate(columns, 1))
    row = f"({', '.join('?' * width)})"
    return _UPDATE_FROM.format(assignments=assignments, rows=", ".join([row] * count), id=width - 1, status=width)


def run_updates_at_once(store, statements):
    """SQLite: run prepared ``update_statement``s of distinct tasks as a few statements, in a savepoint; True
    when every one applied. False when not (then nothing changed) or on PostgreSQL: the caller runs them one
    by one, to learn which moved meanwhile or which cannot be written."""
    if store.dialect != "sqlite" or len({params[-2] for _, params in statements}) < len(statements):
        return False
    groups = {}
    for sql, params in statements:
        groups.setdefault(_UPDATE_COLUMNS[sql], []).append(params)
    cursor = store.db.cursor()
    cursor.execute("SAVEPOINT updates")
    try:
        changed = 0
        for columns, group in groups.items():
            most = min(ROWS_PER_STATEMENT, _power_of_two_within(_SQLITE_MAX_PARAMETERS // (len(columns) + 2)))
            for piece in _pieces(group, most):
                changed += store.execute(_updates_text(columns, len(piece)),
                                         [value for params in piece for value in params]).rowcount
    except store.statement_errors as failed:
        try:
            _undo(cursor, "updates")
        except store.driver_errors:
            raise failed from None  # SQLite ended the whole transaction (a full disk): nothing to run one by one
        return False  # one by one, the row that cannot be written is found and set aside
    if changed == len(statements):
        cursor.execute("RELEASE SAVEPOINT updates")
        return True
    _undo(cursor, "updates")
    return False


def _undo(cursor, savepoint):
    cursor.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
    cursor.execute(f"RELEASE SAVEPOINT {savepoint}")


# PostgreSQL runs CLAIM/RECOVER for a whole batch, and the events of the rows that applied, as one
# statement: one round trip, and the counter trigger (a statement-level one) fires once per batch instead
# of once per row. The parameters are those of the one-row statement and of its event row, in the same
# order, passed as one array per column (unnest): the statement's text is the same for any batch, so the
# driver parses and prepares it once. RETURNING tells which rows applied. ``run_together`` runs the
# outcomes and the claims of a retry timer's step as one statement, its own transaction.
_BATCHED = {
    CLAIM: (("attempt", "int"), ("owner", "text"), ("lease_until", "timestamptz"), ("now", "timestamptz"),
            ("id", "bigint"), ("due", "timestamptz")),
    RECOVER: (("now", "timestamptz"), ("updated", "timestamptz"), ("id", "bigint"), ("owner", "text")),
}
_ID_AT = {sql: [name for name, _ in columns].index("id") for sql, columns in _BATCHED.items()}
# The columns of ``event_row`` after its task id (the update's id is the event's task).
_EVENT_ARRAYS = (("e_at", "timestamptz"), ("e_event", "text"), ("e_status", "text"), ("e_category", "text"),
                 ("e_attempt", "int"), ("e_delay", "float8"), ("e_error", "text"), ("e_detail", "text"))
# Each part names its rows {v} (the unnested parameters) and the ids it changed {done}.
_BATCHED_SQL = {
    # A row another daemon is claiming right now is skipped (SKIP LOCKED), not waited for: it is theirs.
    CLAIM: ("{v}_free AS (SELECT t.id FROM tasks AS t JOIN {v} ON t.id = {v}.id"
            f" WHERE t.status = '{SCHEDULED}' AND t.next_retry_at = {{v}}.due FOR UPDATE OF t SKIP LOCKED),"
            f" {{done}} AS (UPDATE tasks AS t SET status = '{RUNNING}', attempts = {{v}}.attempt,"
            " lease_owner = {v}.owner, lease_until = {v}.lease_until, updated_at = {v}.now, handler_pid = NULL"
            " FROM {v} WHERE t.id = {v}.id AND t.id IN (SELECT id FROM {v}_free) RETURNING t.id)"),
    RECOVER: (f"{{done}} AS (UPDATE tasks AS t SET status = '{RECOVERED}', finished_at = {{v}}.now,"
              " updated_at = {v}.updated, lease_owner = NULL, lease_until = NULL, handler_pid = NULL,"
              " next_retry_at = NULL FROM {v}"
              f" WHERE t.id = {{v}}.id AND t.status = '{RUNNING}' AND t.lease_owner = {{v}}.owner RETURNING t.id)"),
}
_TOGETHER_SQL = {}


def _batch_ctes(sql, n):
    """Batch ``n`` of ``sql``: its CTEs (the unnested rows v{n}, the update done{n}) and the SELECT of the
    event rows of the rows it changed."""
    v, done, columns = f"v{n}", f"done{n}", (*_BATCHED[sql], *_EVENT_ARRAYS)
    ctes = [(f"{v} AS (SELECT * FROM unnest({', '.join(f'?::{kind}[]' for _, kind in columns)})"
             f" AS u({', '.join(name for name, _ in columns)}))"), _BATCHED_SQL[sql].format(v=v, done=done)]
    events = (f"SELECT {v}.id, {', '.join(f'{v}.{name}' for name, _ in _EVENT_ARRAYS)}"
              f" FROM {v} JOIN {done} ON {done}.id = {v}.id")
    return ctes, events


def _insert_events_cte(selects):
    return ("events AS (INSERT INTO task_events (task_id, at, event, status, category, attempt,"
            f" delay_seconds, error_message, detail) {' UNION ALL '.join(selects)})")


def _batch_arrays(prepared):
    """The parameters of a batch: one array per column of the update and of its event row (task id left out)."""
    return [list(column) for column in zip(*(update + event[1:] for _, update, event in prepared))]


def _together_text(sqls):
    """The one statement that runs the batched ``sqls`` (in order) and inserts their events."""
    text = _TOGETHER_SQL.get(sqls)
    if text is None:
        ctes, events, results = [], [], []
        for n, sql in enumerate(sqls):
            batch, selected = _batch_ctes(sql, n)
            ctes += batch
            events.append(selected)
            results.append(f"SELECT {n}, id FROM done{n}")
        ctes.append(_insert_events_cte(events))
        text = _TOGETHER_SQL[sqls] = f"WITH {', '.join(ctes)} {' UNION ALL '.join(results)}"
    return text


def _run_batched(store, parts):
    """PostgreSQL: for each (sql, prepared) of ``parts``, the items whose rows one statement changed."""
    arrays = []
    for _, prepared in parts:
        arrays += _batch_arrays(prepared)
    changed = [set() for _ in parts]
    for n, task_id in store.rows(_together_text(tuple(sql for sql, _ in parts)), *arrays):
        changed[n].add(task_id)
    return [[item for item, params, _ in prepared if params[_ID_AT[sql]] in ids]
            for (sql, prepared), ids in zip(parts, changed)]


# PostgreSQL: claims that read nothing first. The retry heap knows a due retry's id and due time; the
# statement itself checks the row (still scheduled at that time, give or take the millisecond the stored
# text keeps, a handler of its task type and none of its own), counts the attempt, leases it for its task
# type's lease and writes its ``retry_started`` event, and returns the whole row: the timer's step is one
# round trip, outcomes included. A retry it leaves (one with a handler of its own, or one that moved) is
# for ``run_prepared``'s CLAIM, which reads the row first.
_CLAIM_READING_NOTHING = (
    "c_v AS (SELECT * FROM unnest(?::bigint[], ?::timestamptz[]) AS u(id, due)),"
    " c_kinds AS (SELECT * FROM unnest(?::text[], ?::float8[]) AS k(task_type, lease)),"
    " c_free AS (SELECT t.id, c_kinds.lease FROM tasks AS t JOIN c_v ON t.id = c_v.id"
    " JOIN c_kinds ON c_kinds.task_type = t.task_type"
    f" WHERE t.status = '{SCHEDULED}' AND t.handler IS NULL AND CASE WHEN c_v.due IS NULL"
    " THEN t.next_retry_at <= ?::timestamptz + interval '1 millisecond'"
    " ELSE t.next_retry_at > c_v.due - interval '1 millisecond' AND t.next_retry_at < c_v.due + interval '1 millisecond'"
    " END FOR UPDATE OF t SKIP LOCKED),"
    f" c_done AS (UPDATE tasks AS t SET status = '{RUNNING}', attempts = t.attempts + 1, lease_owner = ?,"
    " lease_until = ?::timestamptz + c_free.lease * interval '1 second', updated_at = ?::timestamptz,"
    " handler_pid = NULL FROM c_free WHERE t.id = c_free.id RETURNING t.*)"
)
_CLAIM_EVENTS = (f"SELECT id, ?::timestamptz, 'retry_started', '{RUNNING}', category, attempts, NULL::float8,"
                 " NULL::text, NULL::text FROM c_done")
_SETTLE_SQL = {}


def _settle_text(recovering):
    """The statement of ``settle_at_once``; with ``recovering``, RECOVER's batch first."""
    text = _SETTLE_SQL.get(recovering)
    if text is None:
        ctes, events = [], [_CLAIM_EVENTS]
        results = [f"SELECT 1, {', '.join(f'c_done.{column}' for column in TASK_COLUMNS)} FROM c_done"]
        if recovering:
            ctes, selected = _batch_ctes(RECOVER, 0)
            events.insert(0, selected)
            results.append(f"SELECT 0, id{', NULL' * (len(TASK_COLUMNS) - 1)} FROM done0")
        ctes.append(_CLAIM_READING_NOTHING)
        ctes.append(_insert_events_cte(events))
        text = _SETTLE_SQL[recovering] = f"WITH {', '.join(ctes)} {' UNION ALL '.join(results)}"
    return text


def settle_at_once(store, finishes, due, owner, now, leases):
    """PostgreSQL: RECOVER's ``finishes`` (as ``run_prepared``) and the claim of the ``due`` retries, [(id,
    expected due or None)], leased to ``owner`` for ``leases[task type]`` seconds, in one statement (its own
    transaction); returns (the claimed tasks, running, their attempt counted; the ids RECOVER changed)."""
    params = _batch_arrays(finishes) if finishes else []
    kinds = sorted(leases.items())
    params += [[task_id for task_id, _ in due], [None if at is None else stamp(at) for _, at in due],
               [name for name, _ in kinds], [lease for _, lease in kinds],
               stamp(now), owner, stamp(now), stamp(now), stamp(now)]
    found = store.rows(_settle_text(bool(finishes)), *params)
    return [_task_of(row[1:]) for row in found if row[0] == 1], {row[1] for row in found if row[0] == 0}


def _batchable(store, sql, prepared):
    """CLAIM/RECOVER on PostgreSQL (from one row up: the batched CLAIM skips rows another daemon locked),
    each task once."""
    if store.dialect != "postgresql" or sql not in _BATCHED:
        return False
    ids = [params[_ID_AT[sql]] for _, params, _ in prepared]
    return len(set(ids)) == len(ids)


def run_together(store, parts):
    """``run_prepared`` of each (sql, prepared) of ``parts``, in order, in one transaction of its own (or
    the caller's); returns the applied items of each. On PostgreSQL CLAIM and RECOVER batches are one
    statement together: one round trip, one transaction, no BEGIN or COMMIT of their own."""
    given = [(sql, prepared) for sql, prepared in parts if prepared]
    if given and all(_batchable(store, sql, prepared) for sql, prepared in given):
        applied = iter(_run_batched(store, given))
        return [next(applied) if prepared else [] for _, prepared in parts]
    with store.eager_transaction():
        return [run_prepared(store, sql, prepared) for sql, prepared in parts]


# SQLite: CLAIM and RECOVER of a batch as one statement (per ROWS_PER_STATEMENT rows sharing the values set).
# The driver lets go of the GIL around each step of a statement, and an executemany is a step per row: beside
# a busy thread (the intake classifying a flood) the retry timer then waited for the GIL again at every row.
# Each row's own condition is a row value; the unary + keeps SQLite on the primary key (the (status,
# next_retry_at) index would have it read every scheduled row). ``attempts + 1`` where the row still has the
# attempts it was read with is CLAIM's ``attempts = ?``.
ROWS_PER_STATEMENT = 64  # 9 parameters an event row: 576, below SQLite's oldest limit of 999 a statement
_CLAIM_MANY = (f"UPDATE tasks SET status = '{RUNNING}', attempts = attempts + 1, lease_owner = ?, lease_until = ?,"
               " updated_at = ?, handler_pid = NULL WHERE id IN ({ids})"
               f" AND +status = '{SCHEDULED}' AND (id, +next_retry_at, +attempts) IN (VALUES {{rows}})")
_RECOVER_MANY = (f"UPDATE tasks SET status = '{RECOVERED}', finished_at = ?, updated_at = ?, lease_owner = NULL,"
                 " lease_until = NULL, handler_pid = NULL, next_retry_at = NULL"
                 f" WHERE id IN ({{ids}}) AND +status = '{RUNNING}' AND lease_owner = ?")


@functools.cache  # two per power of two up to ROWS_PER_STATEMENT
def _many_text(sql, count):
    if sql == CLAIM:
        return _CLAIM_MANY.format(ids=", ".join("?" * count), rows=", ".join(["(?, ?, ?)"] * count))
    return _RECOVER_MANY.format(ids=", ".join("?" * count))


def _many_statement(sql, rows):
    """(text, parameters) of one statement that runs ``sql`` for each of ``rows`` (which share what it sets)."""
    if sql == CLAIM:  # (attempt, owner, lease_until, now, id, due)
        shared = rows[0][1:4]
        own = [value for attempt, *_, task_id, due in rows for value in (task_id, due, attempt - 1)]
        return _many_text(sql, len(rows)), (*shared, *(row[4] for row in rows), *own)
    now, updated, _, owner = rows[0]  # RECOVER: (now, updated, id, owner)
    return _many_text(sql, len(rows)), (now, updated, *(row[2] for row in rows), owner)


def _shared(sql, row):
    return row[1:4] if sql == CLAIM else (row[0], row[1], row[3])


def _run_many(store, sql, rows):
    """Run the conditional update ``sql`` for each row of parameters; returns how many rows it changed."""
    if store.dialect != "sqlite" or sql not in (CLAIM, RECOVER) or len({row[_ID_AT[sql]] for row in rows}) < len(rows):
        return store.executemany(sql, rows)
    groups = {}
    for row in rows:
        groups.setdefault(_shared(sql, row), []).append(row)
    return sum(store.execute(*_many_statement(sql, chunk)).rowcount
               for group in groups.values() for chunk in _chunks(group))


def run_prepared(store, sql, prepared):
    """Run a conditional update per (item, parameters, event row), then insert the events of those
    that applied; returns their items. One statement when every row applies (the usual case);
    otherwise that is undone and each row runs on its own, to learn which moved meanwhile.
    PostgreSQL runs the batch (and its events) as one statement that returns the rows it changed."""
    if not prepared:
        return []
    if _batchable(store, sql, prepared):
        return _run_batched(store, [(sql, prepared)])[0]
    if len(prepared) == 1:
        applied = prepared if store.execute(sql, prepared[0][1]).rowcount else []
        add_events(store, [event for _, _, event in applied])
        return [item for item, _, _ in applied]
    cursor = store.db.cursor()
    cursor.execute("SAVEPOINT prepared")
    if _run_many(store, sql, [params for _, params, _ in prepared]) == len(prepared):
        applied = prepared
    else:
        cursor.execute("ROLLBACK TO SAVEPOINT prepared")
        applied = [item for item in prepared if store.execute(sql, item[1]).rowcount]
    cursor.execute("RELEASE SAVEPOINT prepared")
    add_events(store, [event for _, _, event in applied])
    return [item for item, _, _ in applied]


def claim_params(attempt, owner, lease_until, now, task_id, due):
    """The parameters of CLAIM: running, leased to ``owner``, if still scheduled at ``due``."""
    return (attempt, owner, stamp(lease_until), stamp(now), task_id, stamp(due))


def recover_params(now, task_id, owner):
    """The parameters of RECOVER: the leased retry of ``owner`` succeeded."""
    return (stamp(now), stamp(now), task_id, owner)


# -- loading -----------------------------------------------------------------------

_TIME_AT = tuple((n, column) for n, column in enumerate(TASK_COLUMNS) if column in _TIME_COLUMNS)


def _task_of(row):
    """A Task of a row of TASK_COLUMNS, as ``Task(**values)`` makes it (every field set and dirty), without
    its per-field cost: a flood builds one per decision and per claim."""
    task = Task.__new__(Task)
    data = task.__data__ = dict(zip(TASK_COLUMNS, row))
    for n, column in _TIME_AT:
        if row[n] is not None:
            data[column] = _epoch(row[n])
    task._dirty = set(TASK_COLUMNS)
    task.__rel__ = {}
    return task


def load_task(store, task_id):
    """One task by id, or None."""
    row = store.execute(_SELECT_TASK, (task_id,)).fetchone()
    return None if row is None else _task_of(row)


def load_tasks(store, task_ids):
    """The tasks with these ids that exist, in one query."""
    if not task_ids:
        return []
    sql = f"{_SELECT_TASK[:-len('= ?')]}IN ({', '.join('?' * len(task_ids))})"
    return [_task_of(row) for row in store.execute(sql, tuple(task_ids)).fetchall()]


def load_new_tasks(store, limit, skip=(), claim=False):
    """Up to ``limit`` tasks nobody has handled yet, oldest first, except the ids in ``skip``.

    ``claim`` (PostgreSQL, inside the caller's transaction): lock them, skipping those another daemon
    has locked, so several daemons decide disjoint batches."""
    where = f" AND id NOT IN ({', '.join('?' * len(skip))})" if skip else ""
    sql = _SELECT_NEW.format(where)
    if claim and store.dialect == "postgresql":
        sql += " FOR UPDATE SKIP LOCKED"
    rows = store.execute(sql, (*skip, limit)).fetchall()
    return [_task_of(row) for row in rows]


def scheduled(store, now, due_before=None):
    """[(id, due, type)] of scheduled tasks (a row without a due time, edited by hand, is due ``now``)."""
    sql, params = _SELECT_SCHEDULED, ()
    if due_before is not None:
        sql, params = sql + " AND next_retry_at <= ?", (to_db_time(due_before),)
    return [(task_id, now if due is None else _epoch(due), task_type)
            for task_id, due, task_type in store.execute(sql, params).fetchall()]


def task_status(store, task_id):
    return store.scalar("SELECT status FROM tasks WHERE id = ?", task_id)


# -- leases ------------------------------------------------------------------------

def record_pid(store, task_id, owner, pid):
    store.execute("UPDATE tasks SET handler_pid = ? WHERE id = ? AND lease_owner = ?", (pid, task_id, owner))


def postpone(store, task_id, until, now, slack=0.0):
    """A scheduled retry moved to ``until``, unless already due within ``slack`` of it or later; True when it moved."""
    return store.execute(f"UPDATE tasks SET next_retry_at = ?, updated_at = ? WHERE id = ? AND status = '{SCHEDULED}'"
                         " AND next_retry_at < ?", (stamp(until), stamp(now), task_id, stamp(until - slack))).rowcount == 1


def running_tasks(store, owner=None, not_owner=None, lease_before=None, not_of_or_lease_before=None):
    """Running tasks: of ``owner``, of any owner but ``not_owner``, or whose lease ends before ``lease_before``;
    ``not_of_or_lease_before=(owners, time)``: of none of ``owners`` (the living daemons) or with a lease
    ending before."""
    sql, params = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE status = '{RUNNING}'", []
    if not_of_or_lease_before is not None and not_of_or_lease_before[0]:  # no living owner: every lease is free
        owners, before = not_of_or_lease_before
        sql += f" AND (lease_owner NOT IN ({', '.join('?' * len(owners))}) OR lease_owner IS NULL OR lease_until < ?)"
        params += [*owners, stamp(before)]
    if owner is not None:
        sql, params = sql + " AND lease_owner = ?", params + [owner]
    if not_owner is not None:
        sql, params = sql + " AND lease_owner != ?", params + [not_owner]
    if lease_before is not None:
        sql, params = sql + " AND lease_until < ?", params + [stamp(lease_before)]
    return [_task_of(row) for row in store.execute(sql + " ORDER BY id", tuple(params)).fetchall()]


def take_back(store, task_id, owner, now, uncount=False, due=None):
    """A running task of ``owner`` back to scheduled, due now or at ``due`` (``uncount``: its attempt not
    counted)."""
    attempts = ", attempts = attempts - 1" if uncount else ""
    whose, params = ("lease_owner IS NULL", ()) if owner is None else ("lease_owner = ?", (owner,))
    return store.execute(
        f"UPDATE tasks SET status = '{SCHEDULED}', next_retry_at = ?, lease_owner = NULL, lease_until = NULL,"
        f" handler_pid = NULL, updated_at = ?{attempts} WHERE id = ? AND status = '{RUNNING}' AND {whose}",
        (stamp(now if due is None else due), stamp(now), task_id, *params)).rowcount == 1


# -- manual control -------------------------------------------------------------------

def find_tasks(store, statuses, category=None, task_type=None, since=None, after_id=None, limit=None):
    """Tasks in ``statuses`` (of one category / task type, created since ``since``), by id: the first
    ``limit`` (None: all) with an id above ``after_id``."""
    sql = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE status IN ({', '.join('?' * len(statuses))})"
    params = list(statuses)
    for column, value in (("category", category), ("task_type", task_type)):
        if value:
            sql, params = sql + f" AND {column} = ?", params + [value]
    if since is not None:
        sql, params = sql + " AND created_at >= ?", params + [stamp(since)]
    if after_id is not None:
        sql, params = sql + " AND id > ?", params + [after_id]
    sql += " ORDER BY id"
    if limit is not None:
        sql, params = sql + " LIMIT ?", params + [limit]
    return [_task_of(row) for row in store.execute(sql, tuple(params)).fetchall()]


def schedule_now(store, task_id, expected_status, now, max_attempts):
    """A task scheduled for a retry now, unfinished; True when it was still in ``expected_status``."""
    return update_task(store, task_id, expected_status, {"status": SCHEDULED, "next_retry_at": now,
                                                         "max_attempts": max_attempts, "finished_at": None,
                                                         "updated_at": now})


def resolve_task(store, task_id, expected_status, now, note):
    """A task closed by hand; True when it was still in ``expected_status``."""
    return update_task(store, task_id, expected_status, {"status": TaskStatus.RESOLVED, "finished_at": now,
                                                         "next_retry_at": None, "updated_at": now, "note": note})


def task_history(store, task_id):
    """[(at epoch, event, status, category, attempt, delay, error, detail JSON)] of one task, oldest first."""
    return [(_epoch(at), *rest) for at, *rest in store.rows(
        "SELECT at, event, status, category, attempt, delay_seconds, error_message, detail FROM task_events "
        "WHERE task_id = ? ORDER BY id", task_id)]
