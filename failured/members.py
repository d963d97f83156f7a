"""Membership: which daemons share the database, which one leads, which one delivers each channel.

On PostgreSQL any number of daemons share one database. Each has a row in ``daemons`` and a session
of its own (``Membership``) on which it holds three kinds of advisory lock:

- its own lock, while it lives: when its session ends (kill -9, a crash, a lost host) PostgreSQL
  frees it at once, and once it has not come back for LOCK_GRACE_SECONDS the others take its leases
  back (``living_owners``): a session the server dropped under a living daemon (a failover,
  ``pg_terminate_backend``) is back within a heartbeat, and its retries still run;
- the leader's lock: the one daemon holding it runs the scheduled jobs (scan, analysis, thresholds,
  housekeeping); the others try for it every heartbeat, so it moves within a heartbeat of its
  holder's death;
- a channel's lock: one daemon at a time delivers a channel, so its rate window, repeats and
  digests stay one channel's, however many daemons there are (the window itself is in the
  database: ``channel_sends``).

A heartbeat thread writes the row every ``heartbeat_seconds`` (server time) and tries for the
leadership. On SQLite there is one daemon (the file lock says so): ``SoloMembership`` leads and
delivers everything.
"""

import logging
import os
import socket
import threading

from .store import members as rows

log = logging.getLogger("failured.members")

HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 10.0  # a daemon whose heartbeat is older is gone even if its session lingers (a frozen host)
# A daemon whose session ended is gone only once it has not come back for this long, as seen from here: a living
# daemon whose session the server dropped connects again within a heartbeat or two (and registers anew), while
# its retries run on. Taken back sooner, they would run twice at once.
LOCK_GRACE_SECONDS = 3.0
LISTEN_POLL_SECONDS = 0.5  # the wake listener looks this often whether the daemon stops
FORGET_SECONDS = 86400.0  # rows of daemons gone this long leave ``status``


class SoloMembership:
    """The one daemon of a SQLite database: always the leader, the deliverer of every channel."""

    shared = False
    member_id = None

    def __init__(self, name=None):
        self.name = name

    def start(self):
        return self

    def is_leader(self):
        return True

    def holds_channel(self, channel):
        return True

    def still_holds(self, channel):
        return True

    def listen(self, on_wake):
        return None  # SQLite: the daemon notices commits by PRAGMA data_version

    def stop(self):
        pass


class Membership:
    """This daemon's place among the daemons sharing a PostgreSQL database (see the module's docstring)."""

    shared = True

    def __init__(self, store, clock, name, heartbeat_seconds=HEARTBEAT_SECONDS, stale_seconds=STALE_SECONDS,
                 on_leadership=None):
        self.store = store
        self.clock = clock
        self.name = name
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.on_leadership = on_leadership  # called with True / False when this daemon gains / loses the lead
        self.config = None  # {"digest", "dir"} of the configuration in force here, in every heartbeat
        self.member_id = None
        self._connection = None  # the membership session: its locks live and die with it
        self._lock = threading.Lock()  # the session is used by the heartbeat thread and the lanes
        self._leader = False
        self._free_since = {}  # member id -> when (monotonic) its lock was first seen free: see living_owners
        self._channels = set()
        self._stop = threading.Event()
        self._thread = None

    # -- life ---------------------------------------------------------------------

    def start(self):
        """Register, take this daemon's own lock, try for the lead, and start beating."""
        self._connect()
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="membership", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop beating, mark the row stopped and end the session (every lock goes with it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if self.member_id is not None:
                rows.stopped(self.store, self.member_id, self.clock.now())
        except Exception as exc:  # the database may be what stopped us
            log.warning("daemon row not marked stopped: %s", exc)
        with self._lock:
            self._close()
        self._set_leader(False)

    def _connect(self):
        import psycopg  # PostgreSQL only

        with self._lock:
            self._close()
            self._connection = psycopg.connect(self.store.url, autocommit=True,
                                               application_name=f"failured-members:{os.getpid()}")
            self._channels = set()
            self.member_id = rows.register(self.store, self.name, socket.gethostname(), os.getpid(), self.clock.now())
            rows.hold_member_lock(self._connection, self.member_id)
        self._leader_lost()

    def _close(self):
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
            self._connection = None
        self._channels = set()

    def _loop(self):
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self._beat()
            except Exception as exc:
                # A lost session took our locks: lead nothing, deliver nothing, until a new one holds them.
                log.warning("membership: %s; connecting again", exc)
                self._leader_lost()
                try:
                    self._connect()
                except Exception as again:
                    log.warning("membership: cannot connect yet: %s", again)

    def _beat(self):
        with self._lock:
            if self._connection is None or self._connection.closed:
                raise ConnectionError("the membership session is closed")
            leader = rows.try_leader(self._connection) if not self._leader else True
            runs = {"channels": sorted(self._channels), **({"config": self.config} if self.config else {})}
            if not rows.beat(self._connection, self.member_id, leader, runs):
                raise LookupError(f"daemon row {self.member_id} is gone")
        self._set_leader(leader)

    def _leader_lost(self):
        self._set_leader(False)

    def _set_leader(self, leader):
        if leader == self._leader:
            return
        self._leader = leader
        log.info("daemon %s %s the leader", self.name, "is now" if leader else "is no longer")
        if self.on_leadership is not None:
            try:
                self.on_leadership(leader)
            except Exception:
                log.exception("leadership change not handled")

    # -- questions ----------------------------------------------------------------

    def is_leader(self):
        return self._leader

    def holds_channel(self, channel):
        """True when this daemon delivers ``channel`` (taking it when no one does)."""
        with self._lock:
            if channel in self._channels:
                return True
            if self._connection is None or self._connection.closed:
                return False
            try:
                taken = rows.try_channel(self._connection, channel)
            except Exception as exc:
                log.warning("membership: channel %s not taken: %s", channel, exc)
                return False
            if taken:
                self._channels.add(channel)
            return taken

    def still_holds(self, channel):
        """Whether this daemon's session still holds ``channel``, asked before each send: a session the server
        ended (pg_terminate_backend, a failover) took its locks along, and another daemon may deliver by now,
        long before the heartbeat notices."""
        with self._lock:
            if channel not in self._channels:
                return False
            try:
                held = self._connection is not None and rows.holds_channel_lock(self._connection, channel)
            except Exception as exc:
                log.warning("membership: channel %s: the session's lock cannot be confirmed: %s", channel, exc)
                held = False
            if not held:
                self._channels.discard(channel)
            return held

    def living_owners(self):
        """Names of the daemons whose leases stand: alive, or whose session ended less than LOCK_GRACE_SECONDS
        ago (seen from here). A lease of anyone else (a daemon gone, stopped, frozen, or never in ``daemons``:
        a crashed SQLite daemon's, migrated) may be taken back."""
        now = self.clock.monotonic()
        found = rows.members(self.store, self.stale_seconds, self.member_id)
        self._free_since = {m["id"]: self._free_since.get(m["id"], now) for m in found if m["lock_free"]}
        return [m["name"] for m in found
                if m["alive"] or m["lock_free"] and now - self._free_since[m["id"]] < LOCK_GRACE_SECONDS]

    def members(self):
        return rows.members(self.store, self.stale_seconds, self.member_id)

    # -- wake-ups -----------------------------------------------------------------

    def listen(self, on_wake):
        """Call ``on_wake()`` whenever a process commits a wake-up (``store.members.wake_daemons``): a reported
        failure or a retry moved earlier reaches every daemon at once; the daemons' polling stays the fallback."""
        thread = threading.Thread(target=self._listen_loop, args=(on_wake,), name="wake-listener", daemon=True)
        thread.start()
        return thread

    def _listen_loop(self, on_wake):
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.store.url, autocommit=True,
                                     application_name=f"failured-listen:{os.getpid()}") as connection:
                    schema = rows.listen(connection)
                    on_wake()  # anything committed while no one listened is looked at now
                    while not self._stop.is_set():
                        for notice in connection.notifies(timeout=LISTEN_POLL_SECONDS):
                            if notice.payload == schema:
                                on_wake()
            except Exception as exc:
                log.warning("wake-ups: %s; polling until they are back", exc)
                self._stop.wait(self.heartbeat_seconds)


def membership_for(store, clock, name, **options):
    """The membership a daemon on ``store`` keeps: shared on PostgreSQL, solo on SQLite."""
    if store.dialect == "postgresql":
        return Membership(store, clock, name, **options)
    return SoloMembership(name)
