"""The daemons sharing a database: their rows, heartbeats and liveness, and the advisory locks of PostgreSQL.

A daemon is alive while it holds its own advisory lock (PostgreSQL frees it the moment the daemon's
session ends: a kill -9 is seen at once) and its heartbeat is fresh (a stopped or cut-off daemon keeps
its session a while, but not its heartbeat). Heartbeats are the database server's time: one clock
for every host.

Lock keys are (what, which) pairs of int4 in the schema's own space, as database.py's are.
"""

import json

from .schema import epoch

# Keys of the advisory locks (pg_try_advisory_lock(int4, int4)); the second half names the schema or the thing.
_LEADER_KEY = "1717658990, hashtext(current_schema())"  # "fain" + the schema
_MEMBER_KEY = "hashtext('failured-member:' || current_schema())"
_CHANNEL_KEY = "hashtext('failured-channel:' || current_schema())"


def register(store, name, host, pid, now):
    """A row for this daemon (or its old one, same name, renewed); returns its id."""
    with store.transaction():
        store.execute("DELETE FROM daemons WHERE name = ?", (name,))
        return store.insert_id("INSERT INTO daemons (name, host, pid, started_at, heartbeat_at, leader) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (name, host, pid, store.time(now), store.time(now), False))


def beat(connection, member_id, leader, runs):
    """Write a heartbeat (server time) on ``connection`` (a psycopg connection in autocommit);
    False when the row is gone (an operator removed it: the daemon registers again)."""
    cursor = connection.execute("UPDATE daemons SET heartbeat_at = clock_timestamp(), leader = %s, runs = %s "
                                "WHERE id = %s", (leader, json.dumps(runs, sort_keys=True), member_id))
    return cursor.rowcount == 1


def stopped(store, member_id, now):
    """A daemon that stopped cleanly: not alive, not leading; its row stays for ``status`` until forgotten."""
    with store.transaction():
        store.execute("UPDATE daemons SET stopped_at = ?, leader = ? WHERE id = ?", (store.time(now), False, member_id))


def forget_stopped(store, before):
    """Delete the rows of daemons that stopped or went silent before ``before``; returns how many."""
    with store.transaction():
        return store.execute("DELETE FROM daemons WHERE coalesce(stopped_at, heartbeat_at) < ?",
                             (store.time(before),)).rowcount


# -- liveness ---------------------------------------------------------------------------

def hold_member_lock(connection, member_id):
    """Take this daemon's own lock on its session (held until the session ends). It waits: another daemon
    asking whether this one lives holds the lock for an instant (see ``_lock_free``)."""
    connection.execute(f"SELECT pg_advisory_lock({_MEMBER_KEY}, %s)", (member_id,))


def _lock_free(store, member_id):
    """True when no session holds the daemon's lock: its session has ended."""
    taken = store.scalar(f"SELECT pg_try_advisory_lock({_MEMBER_KEY}, ?)", member_id)
    if taken:
        store.scalar(f"SELECT pg_advisory_unlock({_MEMBER_KEY}, ?)", member_id)
    return bool(taken)


def members(store, stale_seconds, own_id=None):
    """Every daemon row as a dict, with ``alive`` (see the module's docstring), ``lock_free`` (its heartbeat is
    fresh but its session is gone: killed, or cut off for a moment) and ``heartbeat_age``."""
    rows = store.rows(f"SELECT id, name, host, pid, started_at, heartbeat_at, leader, runs, stopped_at, "
                      f"{store.seconds_between('heartbeat_at', _server_now(store))} FROM daemons ORDER BY id")
    found = []
    for member_id, name, host, pid, started, beat_at, leader, runs, stopped_at, age in rows:
        fresh = stopped_at is None and age <= stale_seconds
        lock_free = fresh and store.dialect == "postgresql" and member_id != own_id and _lock_free(store, member_id)
        alive = fresh and not lock_free
        found.append({"id": member_id, "name": name, "host": host, "pid": pid, "started": epoch(started),
                      "heartbeat": epoch(beat_at), "heartbeat_age": round(age, 3), "leader": bool(leader) and alive,
                      "runs": json.loads(runs) if runs else {}, "stopped": epoch(stopped_at), "alive": alive,
                      "lock_free": lock_free})
    return found


def _server_now(store):
    return "clock_timestamp()" if store.dialect == "postgresql" else "strftime('%Y-%m-%d %H:%M:%f', 'now')"


# -- leadership and channels (PostgreSQL) -------------------------------------------------

def try_leader(connection):
    """Try to become the leader on ``connection``'s session; True when it holds the lock (it may already)."""
    return connection.execute(f"SELECT pg_try_advisory_lock({_LEADER_KEY})").fetchone()[0]


def release_leader(connection):
    connection.execute(f"SELECT pg_advisory_unlock({_LEADER_KEY})")


def try_channel(connection, channel):
    """Try to take a channel's delivery on ``connection``'s session: one daemon delivers a channel at a time."""
    return connection.execute(f"SELECT pg_try_advisory_lock({_CHANNEL_KEY}, hashtext(%s))", (channel,)).fetchone()[0]


def holds_channel_lock(connection, channel):
    """Whether ``connection``'s session still holds ``channel``'s lock (a session the server ended lost it)."""
    return connection.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
        f" AND objsubid = 2 AND classid = ({_CHANNEL_KEY})::oid AND objid = hashtext(%s)::oid)",
        (channel,)).fetchone()[0]


def release_channel(connection, channel):
    connection.execute(f"SELECT pg_advisory_unlock({_CHANNEL_KEY}, hashtext(%s))", (channel,))


# -- waking the daemons (PostgreSQL LISTEN/NOTIFY) ---------------------------------------------

WAKE_CHANNEL = "failured_wake"  # the payload is the schema, so a failured in another schema sleeps on


def wake_daemons(store):
    """Wake every daemon of this database when the caller's transaction commits (a failure reported, a retry
    moved earlier); nothing on SQLite, where the daemon notices a commit by PRAGMA data_version."""
    if store.dialect == "postgresql":
        store.execute(f"SELECT pg_notify('{WAKE_CHANNEL}', current_schema())")


def listen(connection):
    """Subscribe ``connection`` (autocommit) to the wake-ups; returns the schema whose wake-ups are ours."""
    connection.execute(f"LISTEN {WAKE_CHANNEL}")
    return connection.execute("SELECT current_schema()").fetchone()[0]


# -- shared one-off facts ------------------------------------------------------------------

def claim_state(store, key, value, now):
    """Set daemon_state ``key`` to ``value`` unless it holds it already; True for the one caller that set it.

    What several daemons must do once between them ("the admins are told once per task type", "one
    analysis report per slot") claims its key here, in the transaction of the work it guards.
    """
    return store.execute("INSERT INTO daemon_state (key, value, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at "
                         "WHERE daemon_state.value <> excluded.value", (key, value, store.time(now))).rowcount == 1


def swap_state(store, key, expected, value, now):
    """Set daemon_state ``key`` to ``value`` if it still holds ``expected`` (None: no row yet); True when it did.

    Two daemons that read the same value and act on it (two leaders for the instant the lead moves) both
    try; the second's update finds the first's value and changes nothing, so it knows to drop its work.
    """
    if expected is None:
        return store.execute("INSERT INTO daemon_state (key, value, updated_at) VALUES (?, ?, ?) "
                             "ON CONFLICT (key) DO NOTHING", (key, value, store.time(now))).rowcount == 1
    return store.execute("UPDATE daemon_state SET value = ?, updated_at = ? WHERE key = ? AND value = ?",
                         (value, store.time(now), key, expected)).rowcount == 1
