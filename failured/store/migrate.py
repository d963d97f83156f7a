"""Moving up: copy a SQLite database into an empty PostgreSQL one (``failured migrate-store``).

Every table of the schema is copied with its ids (a derived counter table is rebuilt on the target
instead, when the schema marks it ``derived``), in batches, inside ONE PostgreSQL transaction: the
target gets the whole copy or nothing. Before that transaction a marker row is committed
(``daemon_state`` key ``migrate_store``), and the copy's transaction deletes it (a copy that fails
with an error deletes it too, after its rollback). A target that still carries the marker is a copy
that was killed or lost its server half-way, and is refused with the way to clear it, as is a
target that holds any row at all: a second run never doubles a first. The source is read in one
snapshot while its daemon lock is held: a running daemon on it is refused (its later writes would be
lost), and no daemon can start on it during the copy.
"""

import json
import os
import time
from dataclasses import dataclass, field

from ..clock import iso
from ..errors import InputError, StoreError
from ._peewee import pw
from .database import MOVED_KEY, PostgresStore, Store, StoreOpenError, check_url, is_url, mask_url
from .schema import MODELS, SchemaInfo

BATCH_ROWS = 5000  # read from SQLite and handed to COPY this many rows at a time
MARKER_KEY = "migrate_store"  # daemon_state: a copy into this database started and has not committed
DONE_KEY = "migrated_from"  # daemon_state: where the data came from, and when


class MigrationRefused(InputError):
    """migrate-store will not copy: the source or target is not as it must be (exit 2, nothing written)."""


@dataclass
class Migration:
    """What a finished copy did: rows per table, how long, and what reached the source meanwhile."""

    source: str
    target: str  # the URL with its password masked
    tables: dict = field(default_factory=dict)  # table -> {"rows": n, "how": "copied" | "rebuilt"}
    late: dict = field(default_factory=dict)  # table -> rows the source gained during the copy (not copied)
    seconds: float = 0.0


def copied_models():
    """The models whose rows move: every table the schema has except the schema version (the target's own)."""
    return [model for model in pw.sort_models(MODELS) if model is not SchemaInfo]


def _derived(model):
    return bool(getattr(model._meta, "derived", False))


def _rebuilder():
    """The schema's way to refill derived counter tables (None when it has none)."""
    from . import aggregates

    return getattr(aggregates, "rebuild_counters", None)


def _quoted(name):
    return '"' + name.replace('"', '""') + '"'


def _columns(model):
    return [f.column_name for f in model._meta.sorted_fields]


def clear_command(target):
    """The psql line that empties every failured table of the target (keeping the tables and the schema)."""
    tables = ", ".join(model._meta.table_name for model in copied_models())
    return f"psql '{target}' -c 'TRUNCATE {tables} RESTART IDENTITY CASCADE'"


def migrate(source_path, target_url, clock=time.time, progress=None):
    """Copy the SQLite database at ``source_path`` into the empty PostgreSQL database at ``target_url``.

    Returns a Migration. Raises MigrationRefused (nothing written) when the source is not a SQLite
    database, its daemon runs, or the target is not empty or holds a marker; an error during the copy
    rolls all of it back (the marker goes too: the next try starts afresh).
    ``progress(table, rows)`` is called after each batch.
    """
    if is_url(source_path):
        raise MigrationRefused(f"the source must be a SQLite database, not {mask_url(source_path)}: "
                               "migrate-store copies SQLite into PostgreSQL")
    if not is_url(target_url):
        raise MigrationRefused(f"--to must be a postgresql:// URL, not {target_url!r}")
    try:
        check_url(target_url)
    except StoreOpenError as exc:
        raise MigrationRefused(f"--to: {exc}") from None
    started = time.monotonic()
    source = _open_source(source_path)
    try:
        _lock_source(source)
        target = PostgresStore(target_url).open(create=True)
        try:
            _lock_target(target)
            _check_empty(target)
            target.set_state(MARKER_KEY, f"copying {source} (pid {os.getpid()}) since {iso(clock())}", clock())
            result = Migration(source=str(source), target=str(target))
            try:
                snapshot = _copy(source, target, result, clock, progress)
            except BaseException:  # an error, or Ctrl-C: the copy rolled back, the target is as empty as before
                _drop_marker(target)
                raise
            result.late = _late_rows(source, snapshot)
            # Reporters still pointed at the file are refused from now on, saying where the database went.
            with source.transaction():  # plain SQL: the models are bound to the target while it is open
                source.execute("INSERT OR REPLACE INTO daemon_state (key, value, updated_at) VALUES (?, ?, ?)",
                               (MOVED_KEY, json.dumps({"to": str(target), "at": iso(clock())}), source.time(clock())))
        finally:
            target.close()
    finally:
        source.close()
    result.seconds = time.monotonic() - started
    return result


def _open_source(path):
    """The SQLite source, migrated to this failured's schema (as its next daemon start would)."""
    try:
        return Store(path).open(create=False)
    except StoreError as exc:  # not a database, unreadable: the wrong file named, exit 2
        raise MigrationRefused(f"cannot copy from {path}: {exc}") from None


def _lock_source(source):
    """Hold the source's daemon lock for the copy: a running daemon is refused, none starts meanwhile."""
    try:
        source.take_daemon_lock()
    except StoreError as exc:
        raise MigrationRefused(f"{exc}. A daemon writing after the copy would lose those writes: "
                               "stop it (systemctl stop failured), then run migrate-store again") from None


def _lock_target(target):
    try:
        target.take_daemon_lock(exclusive=True)  # alone: a daemon starting meanwhile would find a half-filled database
    except StoreError:
        raise MigrationRefused(f"a failured daemon or another migrate-store is using {target}: "
                               "stop it, or wait for the other copy to finish") from None


def _check_empty(target):
    marker = target.get_state(MARKER_KEY)
    if marker is not None:
        raise MigrationRefused(
            f"{target} holds an unfinished copy ({marker}): an earlier migrate-store was killed or lost "
            "its server (interrupted). Its transaction was rolled back; clear the marker and any rows with: "
            f"{clear_command(target)} -- then run migrate-store again")
    counts = {model._meta.table_name: target.scalar(f"SELECT count(*) FROM {_quoted(model._meta.table_name)}")
              for model in copied_models()}
    filled = {table: count for table, count in counts.items() if count}
    if filled:
        listed = ", ".join(f"{table} {count}" for table, count in filled.items())
        raise MigrationRefused(
            f"{target} is not empty ({listed} rows): migrate-store copies only into an empty database. "
            f"Point --to at a new database or schema, or empty this one with: {clear_command(target)}")


def _drop_marker(target):
    """Remove the marker after a copy that failed and rolled back; when even that fails (the server went
    away), the marker stays and the next try is refused with the way to clear it."""
    try:
        target.delete_state(MARKER_KEY)
    except (StoreError, pw.DatabaseError, *target.driver_errors):
        pass  # the next try says how to clear it


def _copy(source, target, result, clock, progress):
    """The copy itself, in one target transaction over one source snapshot; returns the source's counts."""
    connection = source.db.connection()
    connection.execute("BEGIN")  # deferred: a read snapshot (WAL), reporters keep writing beside it
    try:
        counts = {model._meta.table_name: connection.execute(
            f"SELECT count(*) FROM {_quoted(model._meta.table_name)}").fetchone()[0] for model in copied_models()}
        with target.transaction():
            cursor = target.db.cursor()
            derived = [model for model in copied_models() if _derived(model) and _rebuilder() is not None]
            copied = [model for model in copied_models() if model not in derived]
            for model in copied:
                rows = _copy_table(connection, cursor, model, progress)
                result.tables[model._meta.table_name] = {"rows": rows, "how": "copied"}
            _set_sequences(target, cursor)
            if derived:
                _rebuilder()(target)
            target.execute("DELETE FROM daemon_state WHERE key = ?", (MARKER_KEY,))
            for model in copied_models():
                table = model._meta.table_name
                have = target.scalar(f"SELECT count(*) FROM {_quoted(table)}")
                if model in derived:
                    result.tables[table] = {"rows": have, "how": "rebuilt"}
                elif have != counts[table]:
                    raise StoreError(f"table {table}: {have} rows in {target} after the copy, "
                                     f"{counts[table]} in {source}: nothing was kept, try again")
            target.put_state(DONE_KEY, f"{source} on {iso(clock())}", clock())
    finally:
        connection.execute("ROLLBACK")  # the snapshot only read
    return counts


def _copy_table(connection, cursor, model, progress):
    """COPY one table's rows (ids and times as SQLite holds them: PostgreSQL reads its UTC text).

    The rows arrive as the source's triggers left them, so the target's own (the counters') stay quiet
    meanwhile, as in a data-only restore; the derived tables are rebuilt once at the end."""
    table, columns = _quoted(model._meta.table_name), _columns(model)
    listed = ", ".join(_quoted(column) for column in columns)
    order = ", ".join(_quoted(f.column_name) for f in _key_fields(model))
    rows = connection.execute(f"SELECT {listed} FROM {table} ORDER BY {order}")
    copied = 0
    cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")  # until the end of this table's copy
    indexes = _drop_indexes(cursor, model._meta.table_name)
    with cursor.copy(f"COPY {table} ({listed}) FROM STDIN") as copy:
        while batch := rows.fetchmany(BATCH_ROWS):
            for row in batch:
                copy.write_row(row)
            copied += len(batch)
            if progress:
                progress(model._meta.table_name, copied)
    for definition in indexes:
        cursor.execute(definition)
    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    return copied


def _drop_indexes(cursor, table):
    """Drop the table's secondary indexes (not those of its keys); returns their CREATE statements.

    Built once over the copied rows they cost a fraction of keeping them up to date row by row
    (on a million rows, most of the copy's time)."""
    cursor.execute("SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                   "WHERE i.indrelid = to_regclass(%s) AND NOT EXISTS "
                   "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)", (_quoted(table),))
    found = cursor.fetchall()
    for name, _ in found:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _, definition in found]


def _key_fields(model):
    key = model._meta.primary_key
    if isinstance(key, pw.CompositeKey):
        return [model._meta.fields[name] for name in key.field_names]
    return [key]


def _set_sequences(target, cursor):
    """Each serial id's sequence past the largest id copied, so new rows never collide with old ones."""
    for model in copied_models():
        key = model._meta.primary_key
        if isinstance(key, pw.AutoField):
            table, column = model._meta.table_name, key.column_name
            cursor.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({_quoted(column)}), 0) + 1, "
                           f"false) FROM {_quoted(table)}", (table, column))


def _late_rows(source, snapshot):
    """{table: rows} the source gained while it was copied (reporters that still wrote to it)."""
    late = {}
    for model in copied_models():
        table = model._meta.table_name
        now = source.scalar(f"SELECT count(*) FROM {_quoted(table)}")
        if now != snapshot[table]:
            late[table] = now - snapshot[table]
    return late
