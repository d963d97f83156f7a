"""The aggregate questions reports, analysis, thresholds, status and metrics ask: answered in SQL.

Every query reads indexed columns and returns a few hundred rows at most, so a million
failures aggregate in seconds. Times come back as epoch seconds.
"""

from ..states import BreakerState, NotificationStatus, TaskStatus
from .counters import counted_status, hour_key, recovery_ended
from .schema import epoch

RECOVERED, NEW, SCHEDULED, RUNNING = TaskStatus.RECOVERED, TaskStatus.NEW, TaskStatus.SCHEDULED, TaskStatus.RUNNING
END_OF_TIME = "9999-12-31 23:59:59.999"  # a whole DB time: a short one would compare as a number


def _marks(values):
    return ", ".join("?" * len(values))


# -- the processing report -------------------------------------------------------------

def newest_event_id(store):
    return store.scalar("SELECT coalesce(max(id), 0) FROM task_events")


# -- the processing report's watermark -------------------------------------------------------
#
# A report covers the events after the previous report's cut, up to its own. On SQLite one writer
# commits at a time, so ids commit in order: the cut is the newest id. On PostgreSQL an event with a
# smaller id can commit after one with a larger (several daemons, or two threads of one): a cut on
# the id would skip it for good. There the cut is the oldest transaction still running that writes to
# this schema: every transaction before it has committed, rolled back or writes elsewhere, so the
# events with ``xact`` below it are all there is of them, and each falls in exactly one report's
# [since, cut). Transactions of other schemas and other applications on the same server (a long report
# query, a session left idle in a transaction) do not hold the cut back. Rows written before ``xact``
# existed (NULL) are reached by id, as before.

# The in-progress transactions (as 32-bit xids) holding a lock on a relation of this schema: a
# transaction that writes here has taken one with its first write, and keeps it to its end.
_SCHEMA_WRITERS = """
    SELECT DISTINCT x.transactionid::text::bigint FROM pg_locks AS r
    JOIN pg_class AS c ON c.oid = r.relation AND c.relnamespace = current_schema()::regnamespace
    JOIN pg_locks AS x ON x.pid = r.pid AND x.locktype = 'transactionid' AND x.granted
    WHERE r.locktype = 'relation' AND r.pid != pg_backend_pid()"""


def event_cut(store):
    """The report's cut now: ``(id cut, transaction cut)``; the transaction cut is None on SQLite."""
    if store.dialect != "postgresql":
        return newest_event_id(store), None
    # The snapshot first: a transaction that starts after it gets a larger xid (and larger event ids).
    xmax, running = store.execute(
        "SELECT pg_snapshot_xmax(s)::text::bigint, array(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x)"
        " FROM pg_current_snapshot() AS s").fetchone()
    # Then which of those still write here: one that ended meanwhile is visible to the reads that follow.
    writers = {xid for xid, in store.rows(_SCHEMA_WRITERS)}
    pending = [xact for xact in running or () if xact % 2 ** 32 in writers]
    return newest_event_id(store), min(pending, default=xmax)


def _event_window(since, upto):
    """SQL and parameters for the events in (``since``, ``upto``], cuts as ``event_cut`` gives them."""
    (since_id, since_xact), (upto_id, upto_xact) = since, upto
    if upto_xact is None:
        return "id > ? AND id <= ?", (since_id, upto_id)
    return ("(xact >= ? AND xact < ? OR xact IS NULL AND id > ? AND id <= ?)",
            (since_xact or 0, upto_xact, since_id, upto_id))


def newest_decisions(store, since, upto, events, limit):
    """[(task id, event, category, delay, attempt, detail)]: each task's newest of ``events`` after the cut
    ``since`` up to the cut ``upto`` (``event_cut``; plain ids on SQLite), for the ``limit`` tasks decided
    last, newest first."""
    latest, params = _latest_decisions(since, upto, events)
    return store.rows(f"SELECT task_id, event, category, delay_seconds, attempt, detail FROM {latest} "
                      "ORDER BY id DESC LIMIT ?", *params, limit)


def decision_summary(store, since, upto, events):
    """[(category, task type, event, tasks)]: every task's newest decision in that window (as
    ``newest_decisions``, none left out), counted by what it was and by what the task is."""
    latest, params = _latest_decisions(since, upto, events)
    return store.rows(f"""
        SELECT coalesce(latest.category, 'unclassified'), tasks.task_type, latest.event, count(*)
        FROM {latest} JOIN tasks ON tasks.id = latest.task_id
        GROUP BY 1, 2, 3""", *params)


def _latest_decisions(since, upto, events):
    """A subquery (AS latest) of each task's newest of ``events`` in the window, with its parameters."""
    window, params = _event_window(*_cuts(since, upto))
    return (f"""(SELECT * FROM (
                    SELECT id, task_id, event, category, delay_seconds, attempt, detail,
                           row_number() OVER (PARTITION BY task_id ORDER BY id DESC) AS newest
                    FROM task_events WHERE {window} AND event IN ({_marks(events)})) AS decided
                WHERE newest = 1) AS latest""", (*params, *events))


def decision_counts(store, since, upto):
    """(tasks with events, analysed, recovered, notified) in the events after the cut ``since`` up to ``upto``."""
    window, params = _event_window(*_cuts(since, upto))
    return store.execute(f"""
        SELECT count(DISTINCT task_id),
               count(DISTINCT CASE WHEN event IN ('retry_scheduled', 'notified', 'exhausted', 'manual')
                                   THEN task_id END),
               count(DISTINCT CASE WHEN event = 'recovered' THEN task_id END),
               count(DISTINCT CASE WHEN event IN ('notified', 'exhausted', 'manual') THEN task_id END)
        FROM task_events WHERE {window}""", params).fetchone()


def _cuts(*cuts):
    """Cuts as (id, xact) pairs: a plain id (older callers, SQLite) has no transaction cut."""
    return [cut if isinstance(cut, tuple) else (cut, None) for cut in cuts]


def stuck_new(store, before, limit=100):
    """Ids of tasks still new that were created before ``before``."""
    return [row[0] for row in store.rows(f"SELECT id FROM tasks WHERE status = '{NEW}' AND created_at < ? "
                                         "ORDER BY id LIMIT ?", store.time(before), limit)]


# -- the analysis ---------------------------------------------------------------------

def period_groups(store):
    """The grouping of ``period_scan`` (PostgreSQL keeps statistics on exactly these expressions)."""
    return (store.day_key("created_at"), "coalesce(category, 'unclassified')", "task_type", "status", "fingerprint")


def period_scan(store, start, end):
    """One index-only pass over [start, end): [(day 'YYYY-MM-DD', category, task type, status, fingerprint,
    count, attempts, first created, last created, newest id)], times as epochs."""
    rows = store.rows(f"""
        SELECT {', '.join(period_groups(store))},
               count(*), sum(attempts), min(created_at), max(created_at), max(id)
        FROM tasks WHERE created_at >= ? AND created_at < ? GROUP BY 1, 2, 3, 4, 5""",
                      store.time(start), store.time(end))
    return [(store.day_name(row[0]), *row[1:7], epoch(row[7]), epoch(row[8]), row[9]) for row in rows]


def failures_by_category(store, start, end):
    """{category: failures created in [start, end)}."""
    return dict(store.rows("""SELECT coalesce(category, 'unclassified'), count(*) FROM tasks
                              WHERE created_at >= ? AND created_at < ? GROUP BY 1""",
                           store.time(start), store.time(end)))


def recovery_histogram(store, start, end, category_prefix):
    """[(whole seconds, recoveries, their exact seconds summed)] of tasks of the categories starting with
    ``category_prefix`` that recovered in [start, end), by seconds from report to recovery."""
    seconds = store.seconds_between("created_at", "finished_at")
    plus = store.no_index  # see recovery_by_category
    # Sorted here: without ORDER BY the database hashes the groups instead of sorting every recovery.
    return sorted(store.rows(f"""
        SELECT CAST(round(d) AS INTEGER) AS s, count(*), sum(d) FROM (
            SELECT {seconds} AS d FROM tasks
            WHERE finished_at >= ? AND finished_at < ? AND category LIKE ? AND {plus}status = ?) AS recoveries
        GROUP BY 1""", store.time(start), store.time(end), category_prefix + "%", RECOVERED))


def newest_template(store, fingerprint):
    row = store.execute("SELECT error_template FROM tasks WHERE fingerprint = ? ORDER BY id DESC LIMIT 1",
                        (fingerprint,)).fetchone()
    return row[0] if row else None


def distinct_samples(store, fingerprint, scan, limit):
    """The newest distinct messages of one fingerprint, among its ``scan`` newest tasks."""
    return [row[0] for row in store.rows("""
        SELECT error_message FROM (SELECT id, error_message FROM tasks WHERE fingerprint = ?
                                   ORDER BY id DESC LIMIT ?) AS newest
        GROUP BY error_message ORDER BY max(id) DESC LIMIT ?""", fingerprint, scan, limit)]


def category_messages(store, category, start, end, limit):
    """The newest ``limit`` error texts of one category created in [start, end)."""
    return [row[0] for row in store.rows("SELECT error_message FROM tasks WHERE category = ? AND created_at >= ? "
                                         "AND created_at < ? ORDER BY created_at DESC LIMIT ?",
                                         category, store.time(start), store.time(end), limit)]


# -- thresholds and health ---------------------------------------------------------------

def recovery_rows(store, start, end, category_prefix, ended):
    """[(category, recovered, finished, retries of the recovered)] of tasks of the categories starting with
    ``category_prefix`` that ran a retry and whose retries ended (status in ``ended``) in [start, end)."""
    plus = store.no_index
    # On SQLite the unary + keep the planner off the status and category indexes, which would fetch every
    # row from the table: every column here is in the covering (created_at, ...) index, and scanning it is
    # several times faster. An index led by finished_at would let this read only the period.
    return store.rows(f"""
        SELECT category, sum(CASE WHEN status = ? THEN 1 ELSE 0 END), count(*),
               sum(CASE WHEN status = ? THEN attempts ELSE 0 END)
        FROM tasks WHERE finished_at >= ? AND finished_at < ? AND category LIKE ?
              AND attempts > 0 AND {plus}status IN ({_marks(ended)}) GROUP BY {plus}category ORDER BY 1""",
                      RECOVERED, RECOVERED, store.time(start),
                      END_OF_TIME if end is None else store.time(end), category_prefix + "%", *ended)


def failures_by_task_type(store, since):
    return dict(store.rows("SELECT task_type, count(*) FROM tasks WHERE created_at >= ? GROUP BY task_type",
                           store.time(since)))


def successes_by_task_type(store, since):
    """{task type: successful runs} in the hours from the one ``since`` falls in."""
    since_hour = store.time(since)[:13] + ":00:00"
    return dict(store.rows("SELECT task_type, sum(count) FROM success_counts WHERE hour >= ? GROUP BY task_type",
                           since_hour))


def breaker_streaks(store):
    """[(task type, failed retries in a row)]."""
    return store.rows("SELECT task_type, consecutive_failures FROM breakers")


def unknown_count(store, since):
    return store.scalar("SELECT count(*) FROM tasks WHERE created_at >= ? AND category = 'unknown'",
                        store.time(since))


# -- status and metrics -------------------------------------------------------------------

def tasks_by_status(store):
    """[(status, category or '-', count)], from the counters (a few dozen rows whatever the table holds).

    The counters hold running tasks under scheduled (a claim writes no counter row); the running rows, as
    few as retries run at once, are counted live through the status index and moved back, in the same
    statement (one snapshot: a claim committing meanwhile moves nothing)."""
    return sorted(store.rows(
        f"WITH r AS (SELECT coalesce(category, '-') AS category, count(*) AS n FROM tasks"
        f" WHERE status = '{RUNNING}' GROUP BY 1)"
        # CAST: count(*) is a bigint, so PostgreSQL's sum over the union would be a numeric (a Decimal)
        f" SELECT status, category, CAST(sum(count) AS BIGINT) FROM (SELECT status, category, count FROM task_counts"
        f" UNION ALL SELECT '{SCHEDULED}', category, -n FROM r UNION ALL SELECT '{RUNNING}', category, n FROM r) AS c"
        f" GROUP BY 1, 2 HAVING sum(count) > 0"))


def failures_by_hour(store, start_hour):
    """[(hour 'YYYY-MM-DD HH', category or 'unclassified', count)] of tasks reported from ``start_hour`` on."""
    return store.rows("SELECT hour, category, sum(count) FROM failure_counts WHERE hour >= ? GROUP BY 1, 2"
                      " HAVING sum(count) > 0", start_hour)


_RECOVERY_GROUPS = (
    "{insert}SELECT {hour}, category, count(*), sum(CASE WHEN status = '{recovered}' THEN 1 ELSE 0 END),"
    " sum(CASE WHEN status = '{recovered}' THEN attempts ELSE 0 END) FROM tasks AS t WHERE {ended} GROUP BY 1, 2")


def recoveries_since(store, start_hour, category_prefix):
    """[(category, recovered, ended, retries of the recovered)] of tasks of the categories starting with
    ``category_prefix`` whose retries ended from ``start_hour`` ('YYYY-MM-DD HH') on, from recovery_counts."""
    return store.rows("SELECT category, sum(recovered), sum(ended), sum(retries) FROM recovery_counts"
                      " WHERE hour >= ? AND category LIKE ? GROUP BY category ORDER BY 1", start_hour,
                      category_prefix + "%")


def failures_since(store, start):
    """{category or 'unclassified': tasks reported from the hour ``start`` (epoch) falls in}, from failure_counts."""
    totals = {}
    for _, category, count in failures_by_hour(store, store.time(start)[:13]):
        totals[category] = totals.get(category, 0) + count
    return totals


_COMPACT = {"task_counts": ("status, category", "sum(count)", "sum(count)"),
            "failure_counts": ("hour, category", "sum(count)", "sum(count)"),
            "recovery_counts": ("hour, category", "sum(ended), sum(recovered), sum(retries)", "sum(ended)")}
_COMPACT_COLUMNS = {"task_counts": "count", "failure_counts": "count", "recovery_counts": "ended, recovered, retries"}


def compact_counters(store):
    """PostgreSQL: fold the counters' delta rows into one row a key (readers sum either way; this keeps what
    they sum small). Safe beside writers and other compactions: a statement only folds the rows it deleted.
    Nothing to do on SQLite, whose triggers update one row a key in place. Returns the rows folded."""
    if store.dialect == "sqlite":
        return 0
    folded = 0
    with store.transaction():
        if not store.scalar("SELECT pg_try_advisory_xact_lock(hashtext('failured counters'),"
                            " hashtext(current_schema()))"):
            return 0  # another session is folding them right now
        for table, (key, sums, having) in _COMPACT.items():
            folded += store.scalar(f"""
                WITH gone AS (DELETE FROM {table} RETURNING *),
                     kept AS (INSERT INTO {table} ({key}, {_COMPACT_COLUMNS[table]})
                              SELECT {key}, {sums} FROM gone GROUP BY 1, 2 HAVING {having} != 0)
                SELECT count(*) FROM gone""")
    return folded


def rebuild_counters(store):
    """Refill task_counts and failure_counts from the tasks (the migration that creates them, and
    ``migrate-store`` after a copy). The triggers keep them exact from then on."""
    with store.transaction():
        store.execute("DELETE FROM task_counts")
        store.execute("DELETE FROM failure_counts")
        store.execute(f"INSERT INTO task_counts (status, category, count)"
                      f" SELECT {counted_status('t')}, coalesce(category, '-'), count(*) FROM tasks AS t GROUP BY 1, 2")
        hour = hour_key(store.dialect, "created_at")
        store.execute(f"INSERT INTO failure_counts (hour, category, count)"
                      f" SELECT {hour}, coalesce(category, 'unclassified'), count(*) FROM tasks GROUP BY 1, 2")
        store.execute("DELETE FROM recovery_counts")
        store.execute(_recovery_groups(store, hour_key(store.dialect, "finished_at"),
                                       "INSERT INTO recovery_counts (hour, category, ended, recovered, retries) "))


def counter_drift(store):
    """[(what, key..., counted, actual)] where a counter differs from a GROUP BY of the tasks (empty: exact)."""
    drift = []
    counted = {(s, c): n for s, c, n in tasks_by_status(store)}
    actual = {(s, c): n for s, c, n in store.rows(
        "SELECT status, coalesce(category, '-'), count(*) FROM tasks GROUP BY 1, 2")}
    drift += [("status", *key, counted.get(key), actual.get(key)) for key in sorted(set(counted) | set(actual))
              if counted.get(key) != actual.get(key)]
    hour = hour_key(store.dialect, "created_at")
    counted = {(h, c): n for h, c, n in failures_by_hour(store, "")}
    actual = {(h, c): n for h, c, n in store.rows(
        f"SELECT {hour}, coalesce(category, 'unclassified'), count(*) FROM tasks GROUP BY 1, 2")}
    drift += [("hour", *key, counted.get(key), actual.get(key)) for key in sorted(set(counted) | set(actual))
              if counted.get(key) != actual.get(key)]
    counted = {(h, c): (e, r, n) for h, c, e, r, n in store.rows(
        "SELECT hour, category, sum(ended), sum(recovered), sum(retries) FROM recovery_counts GROUP BY 1, 2"
        " HAVING sum(ended) != 0")}
    actual = {(h, c): (e, r, n) for h, c, e, r, n in store.rows(
        _recovery_groups(store, hour_key(store.dialect, "finished_at"), ""))}
    drift += [("recovery", *key, counted.get(key), actual.get(key)) for key in sorted(set(counted) | set(actual))
              if counted.get(key) != actual.get(key)]
    return drift


def _recovery_groups(store, hour, insert):
    return _RECOVERY_GROUPS.format(hour=hour, insert=insert, recovered=RECOVERED, ended=recovery_ended("t"))


def next_retries(store, limit):
    """[(id, task type, category, due epoch)] of the next scheduled retries."""
    return [(i, t, c, epoch(d)) for i, t, c, d in store.rows(
        f"SELECT id, task_type, category, next_retry_at FROM tasks WHERE status = '{SCHEDULED}' "
        "ORDER BY next_retry_at LIMIT ?", limit)]


def breakers_not_closed(store):
    """[(task type, state, consecutive failures, open until epoch)]."""
    return [(t, s, n, epoch(u)) for t, s, n, u in store.rows(
        "SELECT task_type, state, consecutive_failures, open_until FROM breakers WHERE state != ? ORDER BY task_type",
        BreakerState.CLOSED)]


def breakers_open_count(store):
    return store.scalar("SELECT count(*) FROM breakers WHERE state != ?", BreakerState.CLOSED)


def most_reported_task_types(store, limit):
    return [row[0] for row in store.rows(
        "SELECT task_type FROM tasks GROUP BY task_type ORDER BY count(*) DESC, task_type LIMIT ?", limit)]


def pending_notifications(store):
    """[(channel, pending rows, oldest created_at epoch)]."""
    return [(channel, count, epoch(oldest)) for channel, count, oldest in store.rows(
        "SELECT channel, count(*), min(created_at) FROM notifications WHERE status = ? GROUP BY channel",
        NotificationStatus.PENDING)]
