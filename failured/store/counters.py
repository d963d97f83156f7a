"""The counter tables' triggers: task_counts, failure_counts and recovery_counts kept exact by the database.

Every insert, status/category change and delete of a task moves its counts in the writer's own
transaction, so the console and ``failured status`` read a few rows whatever the tasks table holds.
SQLite updates one row a key in place (one writer at a time); PostgreSQL appends delta rows that readers
sum and ``aggregates.compact_counters`` folds.
"""

from ..states import FINAL_STATUSES, TaskStatus, sql_list

_RECOVERED = f"'{TaskStatus.RECOVERED}'"


def counted_status(row):
    """SQL: the status ``row`` counts under in task_counts. A running task counts as scheduled, so a retry's
    claim (scheduled -> running) and a failed retry (running -> scheduled) write no counter row: the few
    running rows are counted live by ``aggregates.tasks_by_status``."""
    return (f"CASE WHEN {row}.status = '{TaskStatus.RUNNING}' THEN '{TaskStatus.SCHEDULED}'"
            f" ELSE {row}.status END")


def hour_key(dialect, column):
    """SQL: the UTC hour of a time column as 'YYYY-MM-DD HH' (failure_counts.hour)."""
    if dialect == "sqlite":
        return f"substr({column}, 1, 13)"
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"


def _count_steps(table, key, key_of, no_category):
    """The steps of a table counting tasks by (``key``, category): ``key_of(dialect, row)`` is the SQL of a
    task's key, ``no_category`` the category an unclassified task counts under."""
    def steps(dialect, old, new):
        moves = []
        if old:
            moves.append(f"UPDATE {table} SET count = count - 1 WHERE {key} = {key_of(dialect, old)}"
                         f" AND category = coalesce({old}.category, '{no_category}')")
        if new:
            moves.append(f"INSERT INTO {table} ({key}, category, count) VALUES ({key_of(dialect, new)},"
                         f" coalesce({new}.category, '{no_category}'), 1) ON CONFLICT ({key}, category)"
                         f" DO UPDATE SET count = {table}.count + 1")
        return moves
    return steps


_task_count_steps = _count_steps("task_counts", "status", lambda dialect, row: counted_status(row), "-")
_failure_count_steps = _count_steps("failure_counts", "hour",
                                    lambda dialect, row: hour_key(dialect, f"{row}.created_at"), "unclassified")


def _recovery_count_steps(dialect, old, new):
    return [_recovery_step(dialect, row, sign) for row, sign in ((old, "-"), (new, "+")) if row]


# Each counter table, the task columns its keys and values read, and the steps that move a task's counts
# (``old``/``new``: 'OLD'/'NEW' or None). An UPDATE changing none of a table's columns leaves it alone.
_TABLES = {"task_counts": (("status", "category"), _task_count_steps),
           "failure_counts": (("created_at", "category"), _failure_count_steps),
           "recovery_counts": (("status", "category", "finished_at", "attempts"), _recovery_count_steps)}


def _changed(table, old, new, distinct="IS NOT"):
    """SQL: an UPDATE moved ``table``'s counts (task_counts: its counted status, not running <-> scheduled)."""
    columns = [c for c in _TABLES[table][0] if not (table == "task_counts" and c == "status")]
    changes = [f"{old}.{c} {distinct} {new}.{c}" for c in columns]
    if table == "task_counts":
        changes.insert(0, f"({counted_status(old)}) {distinct} ({counted_status(new)})")
    return " OR ".join(changes)


def _counter_steps(dialect, old, new):
    """SQL statements (in a trigger body) that move one task's counts in every counter table."""
    steps = [step for _, build in _TABLES.values() for step in build(dialect, old, new)]
    if old and not new:  # housekeeping's deletes: an emptied counter row goes too (the tables stay small)
        steps.append("DELETE FROM task_counts WHERE count = 0")
        steps.append(f"DELETE FROM failure_counts WHERE hour = {hour_key(dialect, 'OLD.created_at')} AND count = 0")
        steps.append(f"DELETE FROM recovery_counts WHERE hour = {hour_key(dialect, 'OLD.finished_at')} AND ended = 0")
    return steps


def _sqlite_update_triggers():
    """One UPDATE trigger per counter table, firing only when that table's columns change: a retry's
    claim and finish move task_counts (and a final state recovery_counts), nothing else."""
    triggers = {}
    for table, (columns, build) in _TABLES.items():
        when = _changed(table, "OLD", "NEW")
        if table == "recovery_counts":
            when = f"({when}) AND (({recovery_ended('OLD')}) OR ({recovery_ended('NEW')}))"
        triggers[f"update_{table}"] = (f"AFTER UPDATE OF {', '.join(columns)} ON tasks WHEN {when}",
                                       build("sqlite", "OLD", "NEW"))
    return triggers


def recovery_ended(row):
    """SQL: ``row`` (a table alias, OLD or NEW) counts in recovery_counts."""
    return (f"{row}.status IN ({sql_list(FINAL_STATUSES)}) AND {row}.attempts > 0"
            f" AND {row}.finished_at IS NOT NULL AND {row}.category IS NOT NULL")


def _recovery_step(dialect, row, sign):
    recovered = f"CASE WHEN {row}.status = {_RECOVERED} THEN 1 ELSE 0 END"
    retries = f"CASE WHEN {row}.status = {_RECOVERED} THEN {row}.attempts ELSE 0 END"
    hour = hour_key(dialect, f"{row}.finished_at")
    if sign == "-":
        return (f"UPDATE recovery_counts SET ended = ended - 1, recovered = recovered - ({recovered}),"
                f" retries = retries - ({retries}) WHERE hour = {hour} AND category = {row}.category"
                f" AND {recovery_ended(row)}")
    return (f"INSERT INTO recovery_counts (hour, category, ended, recovered, retries)"
            f" SELECT {hour}, {row}.category, 1, {recovered}, {retries} WHERE {recovery_ended(row)}"
            f" ON CONFLICT (hour, category) DO UPDATE SET ended = recovery_counts.ended + 1,"
            f" recovered = recovery_counts.recovered + excluded.recovered,"
            f" retries = recovery_counts.retries + excluded.retries")


def counter_triggers(dialect):
    """[SQL] that (re)creates the triggers keeping task_counts and failure_counts exact on every insert,
    status/category change and delete of a task, in the writer's own transaction."""
    if dialect == "sqlite":
        bodies = {"insert": ("AFTER INSERT ON tasks", _counter_steps(dialect, None, "NEW")),
                  **_sqlite_update_triggers(),
                  "delete": ("AFTER DELETE ON tasks", _counter_steps(dialect, "OLD", None))}
        statements = ["DROP TRIGGER IF EXISTS tasks_counters_update"]  # one trigger for all tables, before
        for name, (when, steps) in bodies.items():
            statements.append(f"DROP TRIGGER IF EXISTS tasks_counters_{name}")
            statements.append(f"CREATE TRIGGER tasks_counters_{name} {when} BEGIN "
                              + "; ".join(steps) + "; END")
        return statements
    return _postgres_counter_triggers()


# PostgreSQL: every statement on tasks appends its counts as delta rows (one per key it changed, from the
# statement's transition tables), and readers sum them. Appending never waits on another writer's row lock:
# upserting a few hot counter rows would serialize concurrent reporters and let two multi-task transactions
# (a settle and a housekeeping batch, say) deadlock. compact_counters folds the deltas back to one row a key.
_PG_DELTAS = {
    "task_counts": ("status, category, count", "COUNTED({r}), coalesce({r}.category, '-'), {sign}count(*)", "TRUE"),
    "failure_counts": ("hour, category, count",
                       "HOUR({r}.created_at), coalesce({r}.category, 'unclassified'), {sign}count(*)", "TRUE"),
    "recovery_counts": ("hour, category, ended, recovered, retries",
                        ("HOUR({r}.finished_at), {r}.category, {sign}count(*),"
                         " {sign}sum(CASE WHEN {r}.status = 'recovered' THEN 1 ELSE 0 END),"
                         " {sign}sum(CASE WHEN {r}.status = 'recovered' THEN {r}.attempts ELSE 0 END)"), "ENDED"),
}


def _pg_delta(table, rows, sign, changed_only=False):
    columns, select, where = _PG_DELTAS[table]
    r = "r"
    select = select.format(r=r, sign=sign).replace(f"COUNTED({r})", counted_status(r))
    while "HOUR(" in select:  # HOUR(x) -> the hour key of x
        head, rest = select.split("HOUR(", 1)
        column, tail = rest.split(")", 1)
        select = head + hour_key("postgresql", column) + tail
    condition = recovery_ended(r) if where == "ENDED" else "TRUE"
    source = f"{rows} AS {r}"
    if changed_only:  # an UPDATE: only the rows whose counted columns changed
        other = "new_rows" if rows == "old_rows" else "old_rows"
        source += f" JOIN {other} AS o USING (id)"
        condition += f" AND ({_changed(table, r, 'o', 'IS DISTINCT FROM')})"
    return f"INSERT INTO {table} ({columns}) SELECT {select} FROM {source} WHERE {condition} GROUP BY 1, 2;"


def _postgres_counter_triggers():
    def deltas(rows, sign, changed_only=False):
        return " ".join(_pg_delta(table, rows, sign, changed_only) for table in _PG_DELTAS)

    function = f"""CREATE OR REPLACE FUNCTION failured_tasks_counters() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            IF TG_OP = 'INSERT' THEN {deltas("new_rows", "")}
            ELSIF TG_OP = 'DELETE' THEN {deltas("old_rows", "-")}
            ELSE {deltas("old_rows", "-", True)} {deltas("new_rows", "", True)}
            END IF;
            RETURN NULL;
        END $body$"""
    statements = [function]
    for table, pkey in (("task_counts", "task_counts_pkey"), ("failure_counts", "failure_counts_pkey"),
                        ("recovery_counts", "recovery_counts_pkey")):
        # Delta rows: many per key until compacted (an index on the key instead of the primary key).
        key = "status" if table == "task_counts" else "hour"
        statements += [f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {pkey}",
                       f"CREATE INDEX IF NOT EXISTS {table}_key ON {table} ({key}, category)"]
    for name, when, tables in (("insert", "INSERT", "NEW TABLE AS new_rows"),
                               ("update", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                               ("delete", "DELETE", "OLD TABLE AS old_rows")):
        statements += [f"DROP TRIGGER IF EXISTS tasks_counters_{name} ON tasks",
                       (f"CREATE TRIGGER tasks_counters_{name} AFTER {when} ON tasks REFERENCING {tables}"
                        " FOR EACH STATEMENT EXECUTE FUNCTION failured_tasks_counters()")]
    return statements


def create_counters(store):
    """The counter tables and their triggers, filled from the tasks there are (schema version 3)."""
    from .aggregates import rebuild_counters
    from .schema import COUNTERS

    store.create_tables(COUNTERS)
    for statement in counter_triggers(store.dialect):
        store.db.execute_sql(statement)
    rebuild_counters(store)


def analyze_index(store, index):
    """Statistics for a new index, so the planner weighs it as it weighs the others (SQLite: only where
    the database was analysed before; PostgreSQL samples the table)."""
    if store.dialect != "sqlite":
        store.db.execute_sql("ANALYZE tasks")
    elif store.db.table_exists("sqlite_stat1"):
        store.db.execute_sql(f'ANALYZE "{index}"')
