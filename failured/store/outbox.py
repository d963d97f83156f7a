"""Notification rows: the outbox every message passes through, and the questions asked of it."""


from ..states import NotificationStatus
from ._peewee import pw
from .schema import Notification, epoch
from .tasks import stamp

PENDING, FAILED = NotificationStatus.PENDING, NotificationStatus.FAILED

_INSERT = ("INSERT INTO notifications (task_id, created_at, audience, kind, category, task_type, fingerprint, title,"
           " body, status, channel, attempts, next_attempt_at)"
           f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{PENDING}', ?, 0, ?)")


def insert_pending(store, now, task_id, audience, kind, category, task_type, fingerprint, title, body, channels):
    """One pending row per channel, due now (in the caller's transaction); returns how many."""
    when = stamp(now)
    rows = [(task_id, when, audience, kind, category, task_type, fingerprint, title, body, channel, when)
            for channel in channels]
    if rows:
        store.executemany(_INSERT, rows)
    return len(rows)


def last_errors(store):
    """[(channel, its newest row's last error)] of the channels that have one."""
    return store.rows("SELECT channel, last_error FROM notifications WHERE id IN (SELECT max(id) FROM notifications "
                      "WHERE last_error IS NOT NULL GROUP BY channel)")


def oldest_deliverable(store, now):
    """[(channel, epoch)]: per channel, since when its longest-waiting pending row could have gone out.

    A row never tried (no ``last_error``) could go out from its ``next_attempt_at`` (its creation, or the end of
    the dedup hold or digest slot it was held for), and one still held (due after ``now``) is not counted; a row
    tried and not delivered has waited since its creation."""
    since = pw.Case(None, [(Notification.last_error.is_null(), Notification.next_attempt_at)], Notification.created_at)
    query = (Notification.select(Notification.channel, pw.fn.MIN(since))
             .where(Notification.status == PENDING,
                    Notification.last_error.is_null(False) | (Notification.next_attempt_at <= now))
             .group_by(Notification.channel))
    return [(channel, epoch(oldest)) for channel, oldest in query.bind(store.db).tuples()]


def outbox_counts(store=None):
    """[(channel, status, count)] of the notification outbox."""
    query = (Notification.select(Notification.channel, Notification.status, pw.fn.COUNT(Notification.id))
             .group_by(Notification.channel, Notification.status))
    return list((query.bind(store.db) if store else query).tuples())


def outbox_rows(statuses, channel=None, limit=100, store=None):
    """Notifications in ``statuses`` (newest first), optionally of one channel, as dicts."""
    query = Notification.select(Notification.id, Notification.task, Notification.created_at, Notification.channel,
                                Notification.status, Notification.kind, Notification.title, Notification.attempts,
                                Notification.next_attempt_at, Notification.last_error)
    query = query.where(Notification.status.in_(list(statuses)))
    if channel:
        query = query.where(Notification.channel == channel)
    query = query.order_by(Notification.id.desc()).limit(limit)
    return list((query.bind(store.db) if store else query).dicts())


def send_again(store, notification_id, now):
    """A failed notification back to pending, due now, its tries counted afresh; False when it is not failed."""
    with store.transaction():
        return store.execute(f"UPDATE notifications SET status = '{PENDING}', attempts = 0, next_attempt_at = ? "
                             f"WHERE id = ? AND status = '{FAILED}'", (stamp(now), notification_id)).rowcount == 1


# -- the dispatcher's lanes -----------------------------------------------------------------

def channels_with_pending(store):
    """Names of the channels that have pending rows."""
    query = Notification.select(Notification.channel).distinct().where(Notification.status == PENDING)
    return {row.channel for row in query.bind(store.db) if row.channel}


def pending_count(store, channel):
    """How many rows of ``channel`` wait to be sent."""
    return (Notification.select().where(Notification.channel == channel, Notification.status == PENDING)
            .bind(store.db).count())


def sent_since(store, channel, since):
    """[Notification (sent_at, fingerprint, task_type, category, audience, kind)] a channel sent since ``since``,
    oldest first."""
    return list(Notification.select(Notification.sent_at, Notification.fingerprint, Notification.task_type,
                                    Notification.category, Notification.audience, Notification.kind)
                .where(Notification.channel == channel, Notification.status == NotificationStatus.SENT,
                       Notification.sent_at >= since)
                .order_by(Notification.sent_at).bind(store.db))


def sent_any_since(store, channel, since):
    """Whether the channel sent any notification at or after ``since``."""
    return (Notification.select(Notification.id)
            .where(Notification.channel == channel, Notification.status == NotificationStatus.SENT,
                   Notification.sent_at >= since)
            .bind(store.db).exists())


def due_rows(store, channel, now, limit=None):
    """A channel's pending rows due by ``now``, oldest first. Oldest first cannot starve the others: a row the
    channel refused on its own is set aside on its own ``next_attempt_at`` and the lane goes on past it;
    only a channel-wide failure pauses the channel (in the lane, not here)."""
    query = (Notification.select().where(Notification.channel == channel, Notification.status == PENDING,
                                         Notification.next_attempt_at <= now).order_by(Notification.id))
    return list((query.limit(limit) if limit else query).bind(store.db))


def waiting_rows(store, channel):
    """Every pending row of a channel, held ones included."""
    return list(Notification.select().where(Notification.channel == channel, Notification.status == PENDING)
                .order_by(Notification.id).bind(store.db))


def waiting_repeats(store, channel, same, kinds):
    """Every pending row of a channel that is the ``same`` error (fingerprint, task type, category, audience), of
    ``kinds``, oldest first: one error's repeats, however many passes it took to read them. The first is whole; of
    the others, which a "×N" message stands for, only the id, the times (from when it is late) and task are read
    (a storm's tens of thousands stay small; the task, for the message's list of the other tasks)."""
    fingerprint, task_type, category, audience = same
    where = (Notification.channel == channel, Notification.status == PENDING, Notification.fingerprint == fingerprint,
             Notification.task_type == task_type, _is(Notification.category, category),
             Notification.audience == audience, Notification.kind.in_(list(kinds)))
    rows = list(Notification.select(Notification.id, Notification.created_at, Notification.next_attempt_at,
                                    Notification.last_error, Notification.task_id).where(*where)
                .order_by(Notification.id).bind(store.db))
    if rows:
        rows[0] = Notification.select().where(Notification.id == rows[0].id).bind(store.db).get()
    return rows


def _is(column, value):
    """``column`` equals ``value``, NULL included (a notice may have no category)."""
    return column.is_null() if value is None else column == value


def postponed_rows(store, channel, after, created_by):
    """[(id, next attempt)] of a channel's pending rows created by ``created_by`` and due after ``after``."""
    return [(row.id, row.next_attempt_at) for row in
            Notification.select(Notification.id, Notification.next_attempt_at)
            .where(Notification.channel == channel, Notification.status == PENDING,
                   Notification.next_attempt_at > after, Notification.created_at <= created_by).bind(store.db)]


def record_send(store, channel, at, notification_id=None):
    """Note a message ``channel`` is about to send (its own transaction): the robot's minute, shared.
    Returns the record's id (``send_ended`` moves it to when the send ended)."""
    with store.transaction():
        return store.insert_id("INSERT INTO channel_sends (channel, at, notification_id) VALUES (?, ?, ?)",
                               (channel, store.time(at), notification_id))


def send_ended(store, send_id, at):
    """The send ended at ``at``: the robot counted it no later, so the window counts it from then."""
    with store.transaction():
        store.execute("UPDATE channel_sends SET at = ? WHERE id = ?", (store.time(at), send_id))


def sends_since(store, channel, since):
    """Wall times of the messages ``channel`` sent (or began to) since ``since``, oldest first."""
    return [epoch(at) for (at,) in store.rows("SELECT at FROM channel_sends WHERE channel = ? AND at >= ? ORDER BY at",
                                               channel, store.time(since))]


def test_sends_since(store, channel, since):
    """[(record id, wall time)] of the test messages (``failured notify-test``) ``channel`` sent since ``since``."""
    return [(send_id, epoch(at)) for send_id, at in store.rows(
        "SELECT id, at FROM channel_sends WHERE channel = ? AND at >= ? AND notification_id IS NULL",
        channel, store.time(since))]


def forget_sends(store, channel, before):
    """Drop a channel's send records older than ``before`` (the window never looks that far back)."""
    with store.transaction():
        store.execute("DELETE FROM channel_sends WHERE channel = ? AND at < ?", (channel, store.time(before)))


def update_rows(store, ids, **fields):
    """Set ``fields`` on the rows with these ids (in the caller's transaction)."""
    ids = list(ids)
    for start in range(0, len(ids), 500):
        Notification.update(**fields).where(Notification.id.in_(ids[start:start + 500])).bind(store.db).execute()


def expire_pending(store, channel, created_before, gave_up_note, never_reason):
    """A channel's pending rows created before ``created_before`` fail: those that were tried keep their last
    error plus ``gave_up_note``, the others get ``never_reason``. Returns how many rows failed."""
    old = (Notification.channel == channel) & (Notification.status == PENDING) & (
        Notification.created_at < created_before)
    gave_up = (Notification.update(status=FAILED, last_error=Notification.last_error.concat(gave_up_note))
               .where(old, Notification.last_error.is_null(False)).bind(store.db).execute())
    never = Notification.update(status=FAILED, last_error=never_reason).where(old).bind(store.db).execute()
    return gave_up + never


def end_pending(store, channel, status, reason):
    """Every pending row of a channel ends in ``status`` with ``reason``; returns how many."""
    return (Notification.update(status=status, last_error=reason)
            .where(Notification.channel == channel, Notification.status == PENDING).bind(store.db).execute())


MERGING_KINDS = ("digest", "repeat")  # rows that stand for others merged into them


def merged_under(store, ids):
    """(every row merged into the rows ``ids``, however deep, that stands for no other, the ids of those that do):
    what an unsent digest or "×N" row carries. Only the columns a digest reads."""
    leaves, containers, level = [], [], list(ids)
    while level:
        below = []
        for start in range(0, len(level), 500):
            below.extend(Notification.select(Notification.id, Notification.kind, Notification.category,
                                             Notification.task_type, Notification.title, Notification.audience)
                         .where(Notification.merged_into.in_(level[start:start + 500])).bind(store.db))
        level = [row.id for row in below if row.kind in MERGING_KINDS]
        containers += level
        leaves += [row for row in below if row.kind not in MERGING_KINDS]
    return leaves, containers


def merge_rows(store, ids, now, channel, audience, kind, category, task_type, fingerprint, text, oldest):
    """A pending row standing for the rows ``ids``, which become merged into it; ``text(row id)`` gives its
    (title, body); its ``created_at`` is ``oldest``, since when the first of them could have gone out (a delay, and
    the retry horizon, count from there). Returns the new row (in the caller's transaction)."""
    row_id = (Notification.insert(created_at=oldest, audience=audience, kind=kind, category=category,
                                  task_type=task_type, fingerprint=fingerprint, title="", body="", status=PENDING,
                                  channel=channel, next_attempt_at=now).bind(store.db).execute())
    title, body = text(row_id)
    update_rows(store, [row_id], title=title, body=body)
    update_rows(store, ids, status=NotificationStatus.MERGED, merged_into=row_id)
    return Notification.select().where(Notification.id == row_id).bind(store.db).get()
