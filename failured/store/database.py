"""The store's connection: SQLite (a file, the default) or PostgreSQL (a URL), transactions, migrations.

The one place for the connection's settings (SQLite's pragmas, PostgreSQL's time zone), for
transactions, for the schema version and for the few words the two dialects say differently.
Statements are written once, with ``?`` placeholders; ``Store.sql`` turns them into the
driver's own.
"""

import errno
import fcntl
import json
import logging
import os
import re
import sqlite3
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from ..clock import to_db_time
from ..errors import FailuredError, InputError, StoreError, StoreFullError, StoreReadOnlyError
from ..secrets import database_secrets
from ._peewee import Psycopg3Adapter, pw
from .schema import (MIGRATIONS, MODELS, SCHEMA_VERSION, TIME_TYPE, DaemonState, Label, SchemaInfo,
                     create_counters, views)

log = logging.getLogger("failured.store")

# Below this much free space SQLite's next page or WAL frame may not fit: the daemon treats
# the disk as full before a write fails half-way, and `status` says so.
DISK_FLOOR_BYTES = 256 * 1024

OPEN_RETRY_SECONDS = 0.05  # between tries to open a database another process is creating

# Writers wait this long for the lock before SQLite gives up; several
# reporting processes plus the daemon must never see "database is locked".
BUSY_TIMEOUT_SECONDS = 30
EAGER_POLL_SECONDS = 0.0005  # eager_transaction: how often a waiting writer asks for the lock again
CONNECT_TIMEOUT_SECONDS = 10  # PostgreSQL: an unreachable server is an error at start, not a hang

# A commit that finds this many pages in the WAL copies them into the database file itself (a
# checkpoint: milliseconds, and two fsyncs). The running daemon checkpoints far sooner from a thread of
# its own (Store.checkpoint), so a reporter's commit never pays for it; without a daemon this bounds
# the WAL at 16 MB. (SQLite's default, 1,000 pages, is reached every ~70 reports: ~190 µs a report on average.)
WAL_AUTOCHECKPOINT_PAGES = 4000

# A WAL file is reused, not shrunk: one that a flood grew (readers kept every checkpoint from restarting it) would
# keep its size, a GB beside the database, until a clean stop. SQLite cuts it back to this when it restarts, and
# the daemon's checkpoint truncates it once it is past this (Store.checkpoint).
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# A truncating checkpoint holds new writers back while it waits for readers to leave the WAL: this long at most.
TRUNCATE_WAIT_MS = 50

PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", BUSY_TIMEOUT_SECONDS * 1000),
    ("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES),
    ("journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES),
)
READ_ONLY_PRAGMAS = (("busy_timeout", BUSY_TIMEOUT_SECONDS * 1000),)  # switching to WAL would be a write

# What SQLite says when it cannot open a file for writing, or create the -wal and -shm files beside it: a full
# disk ("disk I/O error" growing the -shm) and a read-only filesystem ("unable to open database file") among others.
_OPEN_WRITE_FAILURES = ("disk i/o error", "unable to open database file", "readonly database", "disk is full")

URL_PREFIXES = ("postgresql://", "postgres://")
# PostgreSQL advisory locks (per database) are keyed (what, schema): a failured in another schema of the
# same database is another store. "fail" + 0: the daemon's; + 1: a migration's.
DAEMON_LOCK_KEY, MIGRATION_LOCK_KEY = 0x6661696C, 0x6661696D
_LOCK_SQL = "SELECT {function}(%s, hashtext(current_schema()))"
# The planner guesses a million groups where a report has a few thousand; with this much room it hashes
# them in memory (using only what the real groups need) instead of sorting every row by text.
REPORT_WORK_MEM = "256MB"
# A daemon's statement that waits this long for a lock (a table an administrator locked, say) gives up: an error
# its loops survive and retry at their next step, well inside systemd's WatchdogSec. Only waits for a lock are
# cut, never a long statement; migrate-store and the commands wait as long as it takes.
DAEMON_LOCK_TIMEOUT_MS = 5000


def is_url(location):
    return str(location).startswith(URL_PREFIXES)


_URL_PASSWORD = re.compile(r"^(postgres(?:ql)?://[^:/@]*:)[^@]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")  # libpq takes them as parameters too


def mask_url(url):
    """The URL with its passwords (if any) as ***: what every message and log line shows."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", str(url)))


class StoreOpenError(StoreError):
    """The database cannot be used at all (unreachable, refused, of a newer schema): a start-up error, exit 2."""

    exit_code = 2


class OlderSchemaError(StoreOpenError):
    """A command that does not create the database found an older schema while a daemon of the older failured
    runs on it: migrating it under that daemon would make the daemon's own reporters refuse it."""

    def __init__(self, store, version):
        super().__init__(f"database {store} has schema version {version}, older than this failured "
                         f"({SCHEMA_VERSION}), and a daemon of the older failured is running on it: upgrade and "
                         "restart the daemon first (it migrates the database at start), and its reporters with it")


class StoreUnavailableError(StoreError):
    """The PostgreSQL server stopped answering while failured ran; the next statement connects again."""


MOVED_KEY = "moved_to"  # daemon_state of a SQLite database migrate-store copied: {"to": masked URL, "at"}


class StoreMovedError(StoreError):
    """The SQLite database was moved into PostgreSQL by ``migrate-store``."""

    def __init__(self, path, moved):
        self.moved = moved
        super().__init__(f"database {path} was moved into {moved.get('to')} by migrate-store at {moved.get('at')}: "
                         "set FAILURE_DB to that URL here too (the SQLite file is kept only as a backup; to use it "
                         f"again, sqlite3 {path} \"DELETE FROM daemon_state WHERE key = '{MOVED_KEY}'\")")


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
        if ("database or disk is full" in text or "disk i/o error" in text and "full" in text
                or "no space left on device" in text):
            return StoreFullError(path)
        if "readonly database" in text or "read-only" in text and "database" in text:
            return StoreReadOnlyError(path, cause)
    return None


class Store:
    """One SQLite file. ``dialect`` names the SQL it speaks; PostgresStore is the other."""

    dialect = "sqlite"
    created = False  # True when open() made a new database
    read_only = None  # opened read-only: the StoreError that says why (a full disk, a read-only filesystem)
    driver_errors = (sqlite3.DatabaseError,)
    secrets = ()  # a file has no password
    # SQLite uses an index it should not for some aggregates; a unary + on a column keeps it off (see aggregates).
    no_index = "+"

    def __init__(self, path):
        self.path = Path(path)
        self._sql = {}
        self._lock_file = None
        self._use_database(str(self.path), PRAGMAS)

    def _use_database(self, name, pragmas, **connect):
        self.db = pw.SqliteDatabase(
            name,
            pragmas=pragmas,
            timeout=BUSY_TIMEOUT_SECONDS,
            lock_type="IMMEDIATE",  # take the write lock at BEGIN: no deadlock on upgrade
            check_same_thread=False,
            field_types={TIME_TYPE: "DATETIME"},
            **connect,
        )
        # Older callers (and tests) still query the models without a database of their own: they
        # reach the store opened last. The store's own statements always name their database.
        self.db.bind(MODELS, bind_refs=False, bind_backrefs=False)

    def __str__(self):
        return str(self.path)

    # -- the dialect's words -------------------------------------------------

    def sql(self, text):
        """``text`` with the driver's placeholders (SQLite takes ``?`` as written)."""
        return text

    @property
    def statement_errors(self):
        """What a failed statement raises here: the driver's error, or peewee's wrapping of it."""
        return (pw.DatabaseError, *self.driver_errors)

    def execute(self, text, params=()):
        return self.db.execute_sql(self.sql(text), params)

    def rows(self, text, *params):
        return self.execute(text, params).fetchall()

    def scalar(self, text, *params):
        return self.execute(text, params).fetchone()[0]

    def executemany(self, text, rows):
        """Run ``text`` once per row (in the caller's transaction); returns the rows changed."""
        return self.db.cursor().executemany(self.sql(text), rows).rowcount

    def insert_id(self, text, params):
        """Run an INSERT; returns the new row's id."""
        return self.db.execute_sql(self.sql(text), params).lastrowid

    @staticmethod
    def time(epoch):
        """An epoch as a statement's parameter (both stores read this text as a UTC time)."""
        return to_db_time(epoch)

    @staticmethod
    def seconds_between(start, end):
        """SQL for the seconds (a real number) from time column ``start`` to ``end``."""
        return f"((julianday({end}) - julianday({start})) * 86400.0)"

    @staticmethod
    def day_key(column):
        """SQL for a cheap grouping key of the UTC day of a time column; ``day_name`` makes it 'YYYY-MM-DD'."""
        return f"substr({column}, 1, 10)"

    @staticmethod
    def day_name(key):
        return key

    @contextmanager
    def big_read(self):
        """Around a report's aggregate queries. SQLite reads without a transaction (BEGIN would take the
        write lock for the whole report): each query sees its own snapshot."""
        yield

    # -- opening --------------------------------------------------------------

    def open(self, create=True):
        """Create (only when ``create``) or migrate the schema; returns self.

        A database that cannot be written (a full disk, a read-only file or filesystem) is a StoreError that
        says so. Without ``create`` (the commands that do not record anything new) it is opened read-only
        then, where SQLite can read it so: ``status``, ``list`` and ``show`` work, and a write says why not.
        """
        if not self._exists():
            if not create:
                raise MissingStoreError(self.path)
            self.created = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.created:
                self._create_file()
            self._connect_and_migrate(create)
        except (pw.DatabaseError, sqlite3.DatabaseError, OSError, StoreError) as exc:
            self.close()
            error = self._open_error(exc)
            if create or not isinstance(error, (StoreFullError, StoreReadOnlyError)):
                raise error from None
            self._open_read_only(error)
        self.refuse_if_moved()
        return self

    def refuse_if_moved(self):
        """A SQLite database ``migrate-store`` copied into PostgreSQL is read and written by no daemon any more:
        a reporter still pointed at it had written there without a word, and its failures were never handled.
        Asked at open, and by a worker's reporter before each write (it may have opened it before the move)."""
        moved = self.get_state(MOVED_KEY)
        if moved:
            self.close()
            raise StoreMovedError(self.path, json.loads(moved))

    def _exists(self):
        try:
            return self.path.exists()
        except PermissionError:  # a directory on the way this user may not enter: a traceback had said so
            raise StoreReadOnlyError(self.path, "this user may not enter its directory",
                                     "run as a user of the database's group (usermod -aG failured USER, then "
                                     "log in again), or set FAILURE_DB to a database this user may use") from None

    def _create_file(self):
        """Create the empty file SQLite makes its database of, with the mode the umask allows: SQLite creates one
        0644 whatever the umask, so the group the service's unit lets write (UMask=0007) could not; its -wal and
        -shm files take the database's mode."""
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))

    def _open_error(self, exc):
        """The StoreError a failed open means: a full disk or a read-only filesystem named as such (SQLite says
        "disk I/O error" or "unable to open database file" when it cannot create the -shm or -wal file)."""
        if isinstance(exc, StoreError):  # the schema's version: said already
            return exc
        text = str(exc).lower()
        if any(words in text for words in _OPEN_WRITE_FAILURES):
            if self._filesystem_read_only():
                return StoreReadOnlyError(self.path, f"its filesystem is mounted read-only; {exc}",
                                          "remount it read-write, or set FAILURE_DB to a database on another one")
            free = self.free_bytes()
            if free is not None and free < DISK_FLOOR_BYTES:
                return StoreFullError(self.path, f"{exc}; {free:,} bytes free on its filesystem")
            if not all(os.access(p, os.W_OK) for p in (self.path, self.path.parent) if p.exists()):
                return StoreReadOnlyError(self.path, str(exc))
            for side in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):  # another user's, left by a reporter
                if side.exists() and not os.access(side, os.R_OK | os.W_OK):
                    return StoreReadOnlyError(self.path, f"{side} is not this user's to write ({exc})",
                                              f"let the database's group write it (chmod g+rw {side}), or remove "
                                              "it once no process has the database open")
        return translate_error(self.path, exc) or StoreError(f"cannot open database {self.path}: {exc}")

    def _filesystem_read_only(self):
        try:
            return bool(os.statvfs(self.path.absolute().parent).f_flag & os.ST_RDONLY)
        except OSError:
            return False

    def _open_read_only(self, why):
        """Open the database for reading only; ``why`` (a StoreError) is what a write says then, and what is
        raised when even reading is not possible.

        ``mode=ro`` reads what a running or crashed daemon left in the WAL, but needs the -shm file (or to
        create it). ``immutable`` needs nothing beside the file, and ignores the WAL: only where the WAL holds
        nothing (a daemon stopped cleanly removes it) does the file alone hold every commit.
        """
        modes = ["mode=ro"]
        wal = Path(f"{self.path}-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            modes.append("immutable=1")
        for mode in modes:
            self._use_database(f"{self.path.absolute().as_uri()}?{mode}", READ_ONLY_PRAGMAS, uri=True)
            try:
                self.db.connect()
                if self.schema_version() == SCHEMA_VERSION:  # an older one needs a migration: a write
                    self.read_only = why
                    return
            except (pw.DatabaseError, sqlite3.DatabaseError):
                pass
            self.close()
        raise why from None

    def _connect_and_migrate(self, create):
        """Connect and migrate, trying again while another process holds the lock.

        Two processes opening a brand-new file at once (a daemon and a reporter) race to
        switch it to WAL, and that switch answers "database is locked" at once instead of
        waiting in the busy handler: wait here as the busy timeout would.
        """
        deadline = time.monotonic() + self._lock_wait_seconds()
        while True:
            try:
                self.db.connect(reuse_if_open=True)
                self._migrate(create)
                return
            except (pw.OperationalError, sqlite3.OperationalError) as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                self.close()
                time.sleep(OPEN_RETRY_SECONDS)

    def close(self):
        self.release_daemon_lock()
        if not self.db.is_closed():
            self.db.close()

    def end_thread_session(self):
        """End the calling thread's own database session, if it holds one outside a transaction. A SQLite
        connection is a file handle: kept."""

    # -- transactions -----------------------------------------------------------

    def _translated(self, exc):
        known = translate_error(self.path, exc)
        if self.read_only is not None and isinstance(known, StoreReadOnlyError):
            return self.read_only  # opened read-only: why (a full disk says "disk full", not "read-only")
        return known

    @contextmanager
    def transaction(self):
        """A write transaction (BEGIN IMMEDIATE ... COMMIT on SQLite, rolled back on error).

        A full disk or a read-only file comes out as a StoreError that says so.
        """
        try:
            with self.db.atomic():
                yield
        except self.statement_errors as exc:
            known = self._translated(exc)
            if known is None:
                raise
            raise known from None

    @contextmanager
    def savepoint(self):
        """``transaction()`` nested in one, in plain SQL: peewee's savepoint (a uuid name,
        several objects) cost a fifth of writing a decision. Store errors come out as StoreErrors."""
        cursor = self.db.cursor()
        cursor.execute("SAVEPOINT nested")
        try:
            yield
        except BaseException as exc:
            try:
                cursor.execute("ROLLBACK TO SAVEPOINT nested")
                cursor.execute("RELEASE SAVEPOINT nested")
            except self.driver_errors:
                pass  # SQLite already rolled the whole transaction back (disk full): the outer one says so
            known = self._translated(exc) if isinstance(exc, self.driver_errors) else None
            if known is not None:
                raise known from None
            raise
        cursor.execute("RELEASE SAVEPOINT nested")

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
            known = self._translated(exc)
            if known is None:
                raise
            raise known from None

    def _begin_eagerly(self):
        """BEGIN IMMEDIATE, polling for the lock (gives up as busy_timeout does); returns peewee's
        record of the open transaction, so a nested ``transaction()`` becomes a savepoint."""
        connection = self.db.connection()
        deadline = time.monotonic() + self._lock_wait_seconds()
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
            connection.execute(f"PRAGMA busy_timeout = {int(self._lock_wait_seconds() * 1000)}")
        transaction = self.db.transaction()
        self.db.push_transaction(transaction)  # as transaction.__enter__ does after its own BEGIN
        return transaction

    def _lock_wait_seconds(self):
        """This database's own lock timeout (a worker's reporter sets a short one), BUSY_TIMEOUT_SECONDS by default."""
        return getattr(self.db, "_timeout", BUSY_TIMEOUT_SECONDS)

    # -- schema -------------------------------------------------------------------

    def create_tables(self, models):
        for model in pw.sort_models(models):
            pw.SchemaManager(model, self.db).create_all(safe=True)

    def _table_exists(self, name):
        return self.db.table_exists(name)

    def schema_version(self):
        """The database's schema version (0: an empty database)."""
        return self.db.execute_sql("PRAGMA user_version").fetchone()[0]

    def _write_version(self, version):
        self.create_tables([SchemaInfo])  # a database from before schema_info gains it at its next open
        self.db.execute_sql("DELETE FROM schema_info")
        self.execute("INSERT INTO schema_info (version) VALUES (?)", (version,))
        self.db.execute_sql(f"PRAGMA user_version = {version}")

    def _migrate(self, create=True):
        """Bring the schema to this failured's version. The version is read first without a transaction: a
        current database (every open but the first after an upgrade) takes no write lock, so commands that only
        read never wait behind a writer. Without ``create`` an older schema is not migrated under a running
        daemon (OlderSchemaError)."""
        version = self._known_version(self.schema_version())
        if version == SCHEMA_VERSION and self._table_exists(SchemaInfo._meta.table_name):
            return
        if version and not create and self._daemon_running():
            raise OlderSchemaError(self, version)
        with self.db.atomic():
            self._lock_schema()
            version = self._known_version(self.schema_version())  # another process may have migrated meanwhile
            self._upgrade(version)
        if 0 < version < SCHEMA_VERSION:
            # Once, on stderr for a CLI command (its log handler), in the log for the daemon.
            log.warning("migrated database %s from schema %d to %d", self, version, SCHEMA_VERSION)

    def _known_version(self, version):
        """``version``, or the StoreError that says why no failured can use it."""
        if version < 0:
            raise StoreError(f"database {self} has schema version {version}, which no failured "
                             "writes: it was edited by hand; restore it from a backup")
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"database {self} has schema version {version}, newer than this "
                f"failured ({SCHEMA_VERSION}): upgrade failured or use another FAILURE_DB"
            )
        return version

    def _upgrade(self, version):
        """Create or migrate the schema from ``version`` (in the caller's write transaction)."""
        if version == 0:
            self.create_tables(MODELS)
            create_counters(self)  # the triggers that keep task_counts and failure_counts
        else:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    statement(self) if callable(statement) else self.db.execute_sql(statement)
        if version != SCHEMA_VERSION:
            self._create_views()
            self._create_extras()
            self._write_version(SCHEMA_VERSION)
        elif not self._table_exists(SchemaInfo._meta.table_name):
            self._write_version(SCHEMA_VERSION)

    def _daemon_running(self):
        """Whether a daemon (or migrate-store) holds this database's daemon lock."""
        return self.daemon_lock_held()

    def _lock_schema(self):
        """Nothing on SQLite: the migration's BEGIN IMMEDIATE holds the write lock."""

    def _create_extras(self):
        """What only one dialect has (none on SQLite)."""

    def _create_views(self):
        for name, select in views(self.dialect).items():
            self.db.execute_sql(f"DROP VIEW IF EXISTS {name}")
            self.db.execute_sql(f"CREATE VIEW {name} AS {select}")

    # -- one daemon per database ------------------------------------------------

    def take_daemon_lock(self, exclusive=True):
        """Hold this database's daemon lock until ``close``; StoreError when another daemon holds it (a SQLite
        database has one daemon: the lock is always its alone)."""
        path = self._lock_path()
        try:
            self._lock_file = open(path, "a+")
        except OSError as exc:
            raise self._lock_file_error(path, exc) from None
        try:
            _flock_soon(self._lock_file)
        except BlockingIOError:
            self._lock_file.seek(0)
            other = self._lock_file.read().strip() or "?"
            self._lock_file.close()
            self._lock_file = None
            raise StoreError(f"another failured daemon (pid {other}) is running on {self}: "
                             "stop it first, or set FAILURE_DB to another database") from None
        self._lock_file.truncate(0)
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def _lock_file_error(self, path, exc):
        """The one-line StoreError for a lock file that cannot be opened for writing (a read-only filesystem, a
        lock file or directory the daemon's user may not write: left by root, say)."""
        if exc.errno == errno.EROFS or self._filesystem_read_only():
            return StoreReadOnlyError(self.path, f"its filesystem is mounted read-only: cannot create the lock "
                                      f"file {path}", "remount it read-write, or set FAILURE_DB to a database on "
                                      "another one")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StoreReadOnlyError(self.path, f"cannot open its lock file {path}: permission denied",
                                      "the daemon's user needs write access to the lock file and its directory "
                                      "(one left by root: chown it to that user)")
        return StoreError(f"cannot open the lock file {path} of database {self}: {exc.strerror or exc}")

    def _lock_path(self):
        """The lock file beside the database file itself: a database reached through a symbolic link has the one
        lock its daemon holds, whatever path a second daemon names it by."""
        return f"{os.path.realpath(self.path)}.lock"

    def keep_daemon_lock(self):
        """Take the lock again when its file was removed or replaced (an operator clearing a "stale" lock at 3 a.m.:
        a second daemon could then start beside this one); True when it did. A StoreError when another process holds
        the new file's lock."""
        if self._lock_file is None or self._holds_lock_file():
            return False
        held, self._lock_file = self._lock_file, None
        try:
            self.take_daemon_lock()
        except StoreError as exc:
            self._lock_file = held  # still ours; the next heartbeat looks again
            raise StoreError(f"the lock file {self._lock_path()} was removed, and {exc}") from None
        held.close()
        return True

    def _holds_lock_file(self):
        try:
            there = os.stat(self._lock_path())
        except OSError:
            return False
        ours = os.fstat(self._lock_file.fileno())
        return (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino)

    def daemon_lock_held(self):
        """True while a process (a daemon, migrate-store) holds this database's daemon lock; read-only: it
        creates nothing, and works on a full disk."""
        try:
            fd = os.open(self._lock_path(), os.O_RDONLY)
        except OSError:
            return False  # no lock file: no daemon ever ran here, or it cannot be read
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock this call took
        return False

    def release_daemon_lock(self):
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- small key/value state ---------------------------------------------------

    def set_state(self, key, value, now):
        with self.transaction():
            self.put_state(key, value, now)

    def put_state(self, key, value, now):
        """``set_state`` inside the caller's transaction."""
        (DaemonState.insert(key=key, value=value, updated_at=now).bind(self.db)
         .on_conflict(conflict_target=[DaemonState.key],
                      update={DaemonState.value: value, DaemonState.updated_at: self.time(now)})
         .execute())

    def delete_state(self, key):
        with self.transaction():
            self.execute("DELETE FROM daemon_state WHERE key = ?", (key,))

    def get_state(self, key, default=None):
        row = self.execute("SELECT value FROM daemon_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def states(self, prefix):
        """{key: value} of the state rows whose key starts with ``prefix``."""
        query = DaemonState.select(DaemonState.key, DaemonState.value).where(DaemonState.key.startswith(prefix))
        return dict(query.bind(self.db).tuples())

    def free_bytes(self):
        """Free bytes on the database's filesystem (None where it cannot be told)."""
        try:
            info = os.statvfs(self.path.absolute().parent)
        except OSError:
            return None
        return info.f_bavail * info.f_frsize

    def checkpoint(self):
        """Copy the pages committed to the WAL into the database file, without waiting for or blocking
        any writer (PASSIVE); returns how many WAL pages there were. The daemon calls it often from a
        thread of its own, so the WAL stays short and no writer's commit runs a checkpoint.

        A WAL grown past JOURNAL_SIZE_LIMIT_BYTES is truncated once that copy left nothing behind (the daemon
        is idle enough: no writer outran it)."""
        _, pages, copied = self.db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages == copied and self._wal_bytes() > JOURNAL_SIZE_LIMIT_BYTES:
            self._truncate_wal()
        return pages

    def _wal_bytes(self):
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0

    def _truncate_wal(self):
        """TRUNCATE checkpoint: waits at most TRUNCATE_WAIT_MS for readers still in the WAL (new writers wait
        meanwhile), and gives up when they stay; the next checkpoint tries again."""
        connection = self.db.connection()
        connection.execute(f"PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}")
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(self._lock_wait_seconds() * 1000)}")

    def data_version(self):
        """A number that changes when another connection commits (PRAGMA data_version, per thread):
        a poll that costs no I/O, so the daemon notices a report within milliseconds."""
        return self.db.execute_sql("PRAGMA data_version").fetchone()[0]

    # -- operators' labels ------------------------------------------------

    def add_label(self, task, category, now, note=None):
        """Record a label for ``task`` (call inside a transaction with the course change)."""
        return (Label.insert(task=task.id, labelled_at=now, category=category, decided=task.category,
                             error_type=task.error_type, message=task.error_message, note=note)
                .bind(self.db).execute())

    def labelled_examples(self):
        """[(category, error_type, message)] of every label, oldest first: the model's extra training."""
        return list(Label.select(Label.category, Label.error_type, Label.message).order_by(Label.id)
                    .bind(self.db).tuples())

    def label_disagreements(self, start, end):
        """[(decided, labelled, count)] of labels given in [start, end) that said otherwise, most first."""
        query = (Label.select(Label.decided, Label.category, pw.fn.COUNT(Label.id))
                 .where(Label.labelled_at >= start, Label.labelled_at < end,
                        (Label.decided.is_null()) | (Label.decided != Label.category))
                 .group_by(Label.decided, Label.category)
                 .order_by(pw.fn.COUNT(Label.id).desc(), Label.decided, Label.category))
        return [(decided or "unclassified", labelled, count)
                for decided, labelled, count in query.bind(self.db).tuples()]

    def label_count(self):
        return self.scalar("SELECT count(*) FROM labels")

    def labels(self):
        """Every label with its task id, oldest first, as dicts (for export)."""
        return list(Label.select().order_by(Label.id).bind(self.db).dicts())


class _PostgresDatabase(pw.PostgresqlDatabase):
    """peewee's PostgreSQL database, every session in UTC (timestamptz columns read and print as UTC).

    Commits do not wait for their WAL flush (synchronous_commit off), as SQLite's WAL with
    synchronous=NORMAL does not: a server crash may lose the last fraction of a second of commits,
    never consistency. A report then costs a round trip, not a disk flush.
    """

    psycopg2_adapter = psycopg3_adapter = Psycopg3Adapter  # whichever peewee picks: psycopg is ours to load
    location = "PostgreSQL"  # the masked URL, for messages
    lock_timeout_ms = 0  # every session's lock_timeout (0: wait for ever); a daemon's store sets its own

    def cursor(self, named_cursor=None):
        """A cursor, connecting afresh when the server dropped this thread's session (a restart, a
        failover, an administrator) — but never in the middle of a transaction, which is lost with it."""
        state = self._state
        if not state.closed and state.conn.closed:
            if state.transactions:
                raise StoreUnavailableError(f"lost the connection to {self.location} in a transaction")
            state.reset()
        try:
            return super().cursor(named_cursor)
        except pw.OperationalError as exc:
            raise StoreUnavailableError(f"cannot reach {self.location}: {_first_line(exc, self.database)}") from None

    def execute_sql(self, sql, params=None):
        try:
            return super().execute_sql(sql, params)
        except (pw.OperationalError, pw.InterfaceError) as exc:
            if self._state.conn is not None and not self._state.conn.closed:
                raise  # a statement failed, the session lives on
            raise StoreUnavailableError(f"lost the connection to {self.location}: "
                                        f"{_first_line(exc, self.database)}") from None

    def begin(self, isolation_level=None):
        """BEGIN; on a session the server dropped while it idled (the first statement learns of it), once
        more on a fresh one: nothing had started yet."""
        try:
            super().begin(isolation_level)
        except pw.OperationalError as exc:
            if self._state.conn is None or not self._state.conn.closed:
                raise
            try:
                super().begin(isolation_level)  # cursor() connects afresh
            except pw.OperationalError:
                raise StoreUnavailableError(f"lost the connection to {self.location}: "
                                            f"{_first_line(exc, self.database)}") from None

    def rollback(self):
        if self._state.conn is not None and self._state.conn.closed:
            return  # nothing to roll back on a dead session (the server did): the cause goes on up
        super().rollback()

    def _connect(self):
        connection = super()._connect()
        connection.execute("SET TIME ZONE 'UTC'")
        connection.execute("SET synchronous_commit = off")
        if self.lock_timeout_ms:
            connection.execute(f"SET lock_timeout = {int(self.lock_timeout_ms)}")
        return connection

    def limit_lock_waits(self, milliseconds):
        """Every session from now on (each thread has its own), and this thread's open one, waits at most
        ``milliseconds`` for a lock."""
        self.lock_timeout_ms = milliseconds
        if not self.is_closed():
            self.execute_sql(f"SET lock_timeout = {int(milliseconds)}")


def check_url(url):
    """Refuse (StoreOpenError), before any connection, a URL every connection would fail on, or one naming no
    database (libpq's defaults would pick one: failured's tables in a database shared with everything else)."""
    import psycopg

    shown = mask_url(url)
    try:
        options = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreOpenError(f"cannot open database {shown}: {_first_line(exc, url)}") from None
    if not options.get("dbname") and not os.environ.get("PGDATABASE"):
        raise StoreOpenError(f"database URL {shown} names no database: say which one, e.g. "
                             "postgresql://failured@db.internal/failured (libpq's defaults would pick one)")
    timeout = options.get("connect_timeout")
    if timeout is not None and not str(timeout).strip().lstrip("-").isdigit():
        raise StoreOpenError(f"database URL {shown}: connect_timeout={timeout!r} is not a whole number of seconds")


class PostgresStore(Store):
    """A PostgreSQL database, through peewee and psycopg 3. ``path`` is the URL with its password masked."""

    dialect = "postgresql"
    no_index = ""
    woke_at = float("-inf")  # (monotonic) when a report of this process last woke the daemons: see tasks.insert_task

    def __init__(self, url):
        try:
            import psycopg  # only a PostgreSQL store needs the driver
        except ImportError:
            raise StoreOpenError(f"cannot open database {mask_url(url)}: the PostgreSQL driver (psycopg 3) is not "
                                 "installed: pip install 'failured[postgresql]' in failured's environment") from None

        self.url = "postgresql://" + str(url).split("://", 1)[1]
        self.path = mask_url(self.url)
        check_url(self.url)
        self.secrets = database_secrets(self.url)  # masked in what a report stores, whoever reports it
        self.driver_errors = (psycopg.Error,)
        self.db = _PostgresDatabase(self.url, prefer_psycopg3=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                    field_types={TIME_TYPE: "TIMESTAMPTZ"}, autorollback=False,
                                    application_name=f"failured:{os.getpid()}")  # pg_stat_activity tells whose
        self.db.location = self.path
        self._sql = {}
        self._lock_connection = None
        self._lock_wanted = False  # taken once (a daemon): keep_daemon_lock takes it again until it holds it
        self.db.bind(MODELS, bind_refs=False, bind_backrefs=False)

    def __str__(self):
        return self.path

    def sql(self, text):
        converted = self._sql.get(text)
        if converted is None:
            # No statement of the store has a literal % or ?: every value is a parameter.
            converted = self._sql[text] = text.replace("%", "%%").replace("?", "%s")
        return converted

    def executemany(self, text, rows):
        cursor = self.db.cursor()
        cursor.executemany(self.sql(text), rows)
        return cursor.rowcount

    def insert_id(self, text, params):
        return self.db.execute_sql(self.sql(text + " RETURNING id"), params).fetchone()[0]  # no lastrowid here

    @staticmethod
    def seconds_between(start, end):
        return f"date_part('epoch', {end} - {start})"  # a float: extract() would compute in numeric

    @staticmethod
    def day_key(column):
        return f"({column} AT TIME ZONE 'UTC')::date"  # a date hashes fast (to_char's text did not)

    @staticmethod
    def day_name(key):
        return key.isoformat()

    @contextmanager
    def big_read(self):
        """One read-only snapshot for a report's queries, with the room to aggregate a million rows in memory
        (a hash, not a sort of text keys to disk) and no JIT compilation (it costs more than it saves here)."""
        outermost = not self.db.transaction_depth()
        with self.db.atomic():
            if outermost:  # inside a caller's transaction it would make that one read-only too
                self.db.execute_sql("SET TRANSACTION READ ONLY")
            self.db.execute_sql(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")
            self.db.execute_sql("SET LOCAL jit = off")
            yield

    def open(self, create=True):
        try:
            self.db.connect(reuse_if_open=True)
            if not create and not self._table_exists("tasks"):
                raise MissingStoreError(self.path)
            self._migrate(create)
        except (StoreError, MissingStoreError):
            self.close()
            raise
        except self.statement_errors as exc:
            self.close()
            known = self._translated(exc)
            if known is not None:
                raise known from None
            raise StoreOpenError(f"cannot open database {self.path}: {_first_line(exc, self.url)}") from None
        return self

    def end_thread_session(self):
        """A server session is the server's (max_connections): one a thread no longer needs goes back."""
        if not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()

    def _translated(self, exc):
        return translate_error(self.path, exc)

    @contextmanager
    def eager_transaction(self):
        """PostgreSQL's writers wait on row locks, not on one file lock: a plain transaction."""
        with self.transaction():
            yield

    def _create_extras(self):
        """Statistics on the analysis' grouping, so the planner expects a few thousand groups, not a million,
        and hashes them in parallel (ANALYZE, which autovacuum runs, fills them)."""
        from .aggregates import period_groups

        self.db.execute_sql(f"CREATE STATISTICS IF NOT EXISTS tasks_period_groups (ndistinct) "
                            f"ON {', '.join(f'({column})' for column in period_groups(self))} FROM tasks")

    def _lock_schema(self):
        """Two processes opening a new database at once: the second waits for the first's tables."""
        self.db.execute_sql(_LOCK_SQL.format(function="pg_advisory_xact_lock"), (MIGRATION_LOCK_KEY,))

    def _table_exists(self, name):
        return self.db.execute_sql("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def schema_version(self):
        if not self._table_exists(SchemaInfo._meta.table_name):
            return 0
        return self.db.execute_sql("SELECT coalesce(max(version), 0) FROM schema_info").fetchone()[0]

    def _write_version(self, version):
        self.create_tables([SchemaInfo])
        self.db.execute_sql("DELETE FROM schema_info")
        self.db.execute_sql("INSERT INTO schema_info (version) VALUES (%s)", (version,))

    def take_daemon_lock(self, exclusive=False):
        """The daemon lock, on a connection of its own, held until ``close``. Daemons take it shared: any number
        of them share the database (see members.py), and a failured from before that, which takes it alone,
        cannot start beside them, nor they beside it. ``migrate-store`` takes it alone: no daemon starts on a
        database while it is being filled."""
        import psycopg

        try:
            connection = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                         application_name=f"failured-lock:{os.getpid()}")
        except psycopg.Error as exc:
            raise StoreOpenError(f"cannot open database {self.path}: {_first_line(exc, self.url)}") from None
        function = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
        if not connection.execute(_LOCK_SQL.format(function=function), (DAEMON_LOCK_KEY,)).fetchone()[0]:
            connection.close()
            if exclusive:
                raise StoreError(f"a failured daemon or migrate-store is using {self.path}: stop it first")
            raise StoreError(f"a failured daemon of an older version (one daemon per database), or migrate-store, "
                             f"is using {self.path}: stop it or let it finish first, or set FAILURE_DB to another "
                             "database")
        self._lock_connection = connection
        self._lock_wanted = not exclusive
        if not exclusive:  # a daemon: its loops must not hang on a lock (migrate-store, alone, waits)
            self.db.limit_lock_waits(DAEMON_LOCK_TIMEOUT_MS)

    def keep_daemon_lock(self):
        """Take the shared daemon lock again when the server dropped its session (the lock went with it), so
        that an older failured still cannot start beside this one; True when it did. Called from the daemon's
        heartbeat; a StoreError when it cannot (the next heartbeat tries again)."""
        if not self._lock_wanted or self._lock_connection is not None and self._lock_alive():
            return False
        self._lock_connection = None
        self.take_daemon_lock()
        return True

    def daemon_lock_held(self):
        """None: daemons share the lock here, and their liveness is their heartbeats' (members.py)."""
        return None

    def _daemon_running(self):
        """Whether any daemon (shared) or migrate-store (alone) holds the daemon lock: taken alone for an
        instant, it is refused while either does."""
        free = self.db.execute_sql(_LOCK_SQL.format(function="pg_try_advisory_lock"), (DAEMON_LOCK_KEY,)).fetchone()[0]
        if free:
            self.db.execute_sql("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (DAEMON_LOCK_KEY,))
        return not free

    def _lock_alive(self):
        if self._lock_connection.closed:
            return False
        try:
            self._lock_connection.execute("SELECT 1")
            return True
        except Exception:
            self._lock_connection.close()
            return False

    def release_daemon_lock(self):
        self._lock_wanted = False
        if self._lock_connection is not None:
            try:  # unlocked before this returns: the server frees a closed session's locks a moment later
                self._lock_connection.execute("SELECT pg_advisory_unlock_all()")
            except Exception:  # a session already gone has no lock left to free
                pass
            self._lock_connection.close()
            self._lock_connection = None

    def free_bytes(self):
        return None  # the server's disk is the server's to watch

    def checkpoint(self):
        """Nothing: the server checkpoints its own WAL."""
        return 0

    def data_version(self):
        """The newest task id: changes when a failure is reported (the daemon's sweep finds the rest)."""
        return self.db.execute_sql("SELECT coalesce(max(id), 0) FROM tasks").fetchone()[0]


LOCK_PATIENCE_SECONDS = 0.2  # `failured status` tests the lock by holding it shared for an instant


def _flock_soon(handle):
    """The exclusive lock, waiting out a prober's instant (daemon_lock_held); BlockingIOError when held longer."""
    deadline = time.monotonic() + LOCK_PATIENCE_SECONDS
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _first_line(exc, url):
    """A driver error's first line, with the URL's password masked wherever it appears."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = re.match(r"^postgres(?:ql)?://[^:/@]*:([^@]*)@", url)
    if password and password.group(1):
        text = text.replace(password.group(1), "***")
    return mask_url(text)


def moved_into(path):
    """Where ``migrate-store`` moved the SQLite database at ``path`` (its masked URL), or None: not moved, or not
    there any more."""
    try:
        Store(path).open(create=False).close()
    except StoreMovedError as moved:
        return moved.moved.get("to")
    except (FailuredError, OSError, pw.DatabaseError):
        pass
    return None


def refuse_if_a_daemon_runs(location):
    """StoreError naming the running daemon's pid when one holds this SQLite database's lock; creates nothing, opens
    no database (PostgreSQL: daemons share it)."""
    if is_url(location):
        return
    store = Store(location)
    if store.daemon_lock_held():
        store.take_daemon_lock()  # refused: it names the daemon's pid
        store.release_daemon_lock()  # it ended in the instant between


def open_store(location, create=True):
    """Open (creating when ``create``, migrating) the database at ``location``: a SQLite path, or a
    ``postgresql://`` URL. ``store.created`` says if a SQLite file is new."""
    if is_url(location):
        return PostgresStore(location).open(create)
    return Store(location).open(create)
