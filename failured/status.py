"""``failured status``: what the daemon is doing, read from the store (works from any process).

Healthy means: the daemon's heartbeat is fresh, the database's disk has room,
every notification channel delivered its last message, no rejected config
reload stands, and no alert threshold is breached. Each way of being unhealthy
is one line in ``problems``.
"""

import json

from .clock import iso
from .members import STALE_SECONDS
from .store import DISK_FLOOR_BYTES, aggregates, outbox
from .store import members as member_rows
from .thresholds import evaluate

STALE_HEARTBEAT_SECONDS = 15  # three missed beats (the daemon writes one every 5 s)
NEXT_RETRIES = 5
CHANNEL_KEY_PREFIX = "channel:"  # daemon_state rows the dispatcher writes: {"ok", "error", "at"}
REPORTS_FAILING = "reports_failing"  # daemon_state: {"at", "error"} of a report file the daemon could not write
CONFIG_WAITING = "config_waiting"  # daemon_state: {"files", "since"} while a reload waits for an emptied file


def _when(epoch):
    return iso(epoch) if epoch is not None else None


def _epoch_state(store, key):
    value = store.get_state(key)  # "1795626134.585" (the heartbeat adds " pid=N")
    return float(value.split()[0]) if value else None


def daemon_status(store, now, members=()):
    """Alive while the heartbeat is fresh; a daemon that stopped cleanly has deleted its heartbeat. A daemon
    that cannot write its heartbeat (a full disk) is alive still while it holds the database's daemon lock
    (SQLite: its lock file), and ``heartbeat_stale`` says so: restarting it would not help. On PostgreSQL the
    daemons' own rows (``members``, see ``daemons``) decide: one is alive while its row is (a daemon just
    started has its row before its first shared heartbeat; one killed loses it at once, while the shared
    heartbeat it wrote would look fresh for STALE_HEARTBEAT_SECONDS more)."""
    shared = _epoch_state(store, "heartbeat")
    living = [m["heartbeat_age_seconds"] for m in members if m["alive"]]
    ages = living or ([] if shared is None else [now - shared])
    age = round(min(ages), 1) if ages else None
    beat = None if age is None else now - age
    if store.dialect == "postgresql":  # the rows say at once (a killed daemon's lock frees); the shared beat lags
        # 15 s, and one migrate-store copied from SQLite is the SQLite daemon's: no row, no daemon
        fresh = alive = bool(living)
    else:
        fresh = age is not None and age <= STALE_HEARTBEAT_SECONDS
        alive = fresh or store.daemon_lock_held() is True
    return {"alive": alive, "heartbeat_stale": alive and not fresh, "heartbeat_age_seconds": age,
            "heartbeat": _when(beat), "last_scan": _when(_epoch_state(store, "last_scan")),
            "last_analysis": _when(_epoch_state(store, "last_analysis"))}


def daemons(store):
    """The daemons sharing the database (rows only on PostgreSQL): name, host, pid, alive, leader, what each
    delivers; a daemon gone for a day is forgotten."""
    return [{"name": m["name"], "host": m["host"], "pid": m["pid"], "alive": m["alive"], "leader": m["leader"],
             "heartbeat": _when(m["heartbeat"]), "heartbeat_age_seconds": m["heartbeat_age"],
             "started": _when(m["started"]), "stopped": _when(m["stopped"]),
             "channels": m["runs"].get("channels", []), "config": m["runs"].get("config")}
            for m in member_rows.members(store, STALE_SECONDS)]


def leader_config_dir(members):
    """The configuration directory the leading daemon runs on (its thresholds are the ones checked), or None."""
    return next(((m["config"] or {}).get("dir") for m in members if m["leader"] and m["config"]), None)


def config_divergence(members):
    """A problem line when the living daemons run on different configurations, else None."""
    by_digest = {}
    for m in members:
        if m["alive"] and m["config"]:
            by_digest.setdefault(m["config"]["digest"], []).append(f'{m["name"]} ({m["config"]["dir"]})')
    if len(by_digest) < 2:
        return None
    listed = "; ".join(", ".join(names) for names in by_digest.values())
    return (f"daemons run different configurations: {listed} — each handles, routes and notifies the tasks it "
            "takes by its own, and the leader's thresholds decide alerts: give every daemon the same files")


def channel_health(store, configured=None):
    """Each channel's last delivery outcome, as the dispatcher records it: {name: {ok, error, at}}.

    ``configured``: the channel names in force; a row left by a channel since removed is ignored.
    """
    health = {}
    for key, value in store.states(CHANNEL_KEY_PREFIX).items():
        name = key[len(CHANNEL_KEY_PREFIX):]
        if configured is not None and name not in configured:
            continue
        try:
            outcome = json.loads(value)
        except ValueError:
            outcome = {"ok": False, "error": f"unreadable state {value!r}", "at": None}
        health[name] = outcome
    return health





def problems(daemon, health, config, breached, free=None, read_only=None, reports_failing=None):
    """Why the system is unhealthy, one short line each (empty when healthy).

    ``read_only``: the store could only be opened read-only, and this error says why. ``reports_failing``: when
    and why the daemon last failed to write a report file, if none was written since.
    """
    found = []
    if free is not None and free < DISK_FLOOR_BYTES:
        found.append(f"disk full: {free:,} bytes free where the database is; new work waits until space is freed")
    elif read_only is not None:  # a full disk is said just above
        found.append(f"{read_only}; nothing new can be recorded")
    if not daemon["alive"]:
        found.append("daemon not running" if daemon["heartbeat"] is None
                     else f"daemon not running: last heartbeat {daemon['heartbeat']}")
    elif daemon["heartbeat_stale"]:
        why = ("see the problem above: restarting it will not help" if found else
               "another process holding SQLite's write lock (a VACUUM, a sqlite3 shell in a transaction) stops it "
               "writing; if none does, it is hung: restart it (systemctl restart failured)")
        found.append(f"daemon running but not writing: last heartbeat {daemon['heartbeat'] or '-'} (it holds the "
                     f"database's lock; {why})")
    for name, outcome in sorted(health.items()):
        if outcome.get("paused"):  # its words say it is paused, why and what to fix
            found.append(f"channel {name} since {outcome.get('at') or '?'}: {outcome.get('error')}")
        elif not outcome.get("ok"):
            found.append(f"channel {name} cannot deliver since {outcome.get('at') or '?'}: {outcome.get('error')}")
    if config["last_rejected"]:
        rejected = config["last_rejected"]
        first = (rejected.get("errors") or ["?"])[0]
        if rejected.get("last_good_saved_at"):
            found.append(f"config invalid at start ({rejected.get('at')}): {first} (running on the last good "
                         f"configuration, kept at {rejected['last_good_saved_at']}; the next good edit replaces it)")
        else:
            found.append(f"config reload rejected at {rejected.get('at')}: {first} "
                         "(the previous configuration is still in force)")
    if config.get("waiting"):
        waiting = config["waiting"]
        found.append(f"config reload waits since {waiting.get('since')}: {', '.join(waiting.get('files') or [])} "
                     "emptied (a save still being written?); the active configuration stays until it has content "
                     "again (to drop a file, delete it)")
    if reports_failing:
        found.append(f"report files not written since {reports_failing.get('at')}: {reports_failing.get('error')} "
                     "(the next scan writes what they missed once the directory takes files again)")
    for check in breached:
        key = "(all task types)" if check["key"] == "all" else check["key"]
        found.append(f"threshold breached: {check['name']} {key} = {check['value']} (limit {check['limit']})")
    return found


def config_status(store):
    active, rejected = store.get_state("config"), store.get_state("config_rejected")
    waiting = store.get_state(CONFIG_WAITING)
    return {"active": json.loads(active) if active else None, "waiting": json.loads(waiting) if waiting else None,
            "last_rejected": json.loads(rejected) if rejected else None}


def collect(store, snapshot, now, members=None):
    """Everything ``failured status`` shows, as plain data. ``members``: ``daemons(store)``, when the caller has it."""
    tasks = {}
    for status, category, count in aggregates.tasks_by_status(store):
        tasks.setdefault(status, {})[category] = count
    next_retries = [{"task_id": i, "task_type": t, "category": c, "due": _when(d)}
                    for i, t, c, d in aggregates.next_retries(store, NEXT_RETRIES)]
    channels = {}
    for channel, pending, oldest in aggregates.pending_notifications(store):
        channels[channel] = {"pending": pending, "oldest_pending": _when(oldest), "last_error": None}
    for channel, error in outbox.last_errors(store):
        channels.setdefault(channel, {"pending": 0, "oldest_pending": None})["last_error"] = error
    health = channel_health(store, set(snapshot.channels) if snapshot else None)
    for channel, outcome in health.items():
        channels.setdefault(channel, {"pending": 0, "oldest_pending": None, "last_error": None})["delivering"] = \
            bool(outcome.get("ok"))
    # An open breaker whose cool-down has passed stays open until its type's next retry probes: "cooled", not open
    # until a time already gone (the retry that exhausted a task may have opened it, and none may come soon).
    breakers = [{"task_type": task_type, "state": "cooled" if state == "open" and until is not None and until <= now
                 else state, "consecutive_failures": failures, "open_until": _when(until)}
                for task_type, state, failures, until in aggregates.breakers_not_closed(store)]
    thresholds = [c.to_dict() for c in evaluate(store, now, snapshot.thresholds)] if snapshot else []
    members = daemons(store) if members is None else members
    daemon = daemon_status(store, now, members)
    breached = [t for t in thresholds if t["breached"]]
    config = config_status(store)
    free = store.free_bytes()
    failing = store.get_state(REPORTS_FAILING)
    found = problems(daemon, health, config, breached, free, store.read_only, json.loads(failing) if failing else None)
    if divergence := config_divergence(members):
        found.append(divergence)
    return {
        "healthy": not found,
        "disk_free_bytes": free,
        "problems": found,
        "daemon": daemon,
        "tasks": {"total": sum(sum(c.values()) for c in tasks.values()), "by_status": tasks},
        "next_retries": next_retries,
        "breakers_open": breakers,
        "notifications": channels,
        "config": config,
        "thresholds_breached": breached,
        **({"daemons": members} if members else {}),  # several daemons on PostgreSQL
    }


def render(status):
    """A few lines for a person at a terminal."""
    daemon = status["daemon"]
    lines = [f"failured: {'healthy' if status['healthy'] else 'UNHEALTHY'}"]
    lines += [f"  problem: {problem}" for problem in status["problems"]]
    lines.append(f"daemon: {_daemon_words(daemon)}"
                 f", last scan {daemon['last_scan'] or '-'}, last analysis {daemon['last_analysis'] or '-'}")
    for member in status.get("daemons", []):  # several daemons (PostgreSQL): each under the daemon line
        lines.append(f"  daemon {member['name']}: " + _member_words(member))
    lines.append(f"tasks: {status['tasks']['total']}")
    for state, categories in sorted(status["tasks"]["by_status"].items()):
        detail = ", ".join(f"{'not classified yet' if c == '-' else c} {n}"
                           for c, n in sorted(categories.items(), key=lambda i: -i[1]))
        lines.append(f"  {state:<10} {sum(categories.values()):>7}  ({detail})")
    held = {b["task_type"]: b["open_until"] for b in status["breakers_open"] if b["state"] == "open"}
    for retry in status["next_retries"]:
        until = held.get(retry["task_type"])
        wait = f" (its type's breaker holds it until {until})" if until and until > (retry["due"] or "") else ""
        lines.append(f"next retry: task {retry['task_id']} {retry['task_type']} at {retry['due']}{wait}")
    for breaker in status["breakers_open"]:
        if breaker["state"] == "cooled":
            lines.append(f"breaker cooled down: {breaker['task_type']} (the next retry of this type probes)")
        else:
            lines.append(f"breaker {breaker['state']}: {breaker['task_type']} until {breaker['open_until']}")
    for channel, info in sorted(status["notifications"].items()):
        delivering = {True: "delivering, ", False: "NOT delivering, "}.get(info.get("delivering"), "")
        lines.append(f"channel {channel}: {delivering}{info['pending']} pending"
                     + (f", oldest {info['oldest_pending']}" if info["oldest_pending"] else "")
                     + (f", last error: {info['last_error']}" if _error_current(info) else ""))
    config = status["config"]
    if config["active"]:
        lines.append(f"config: {len(config['active']['files'])} files, loaded {config['active']['loaded_at']}")
    return "\n".join(lines)


def _error_current(info):
    """Whether a channel's last error still says something: not once it delivers again with nothing waiting
    (the row it was written on went out later; the JSON keeps it)."""
    return bool(info["last_error"]) and not (info.get("delivering") is True and not info["pending"])


def _member_words(member):
    if not member["alive"]:
        return f"gone (last heartbeat {member['heartbeat']})"
    runs = ["leader (scan, analysis, thresholds, housekeeping)"] if member["leader"] else []
    if member["channels"]:
        runs.append("delivers " + ", ".join(member["channels"]))
    return "alive, retries" + "".join(f", {words}" for words in runs)


def _daemon_words(daemon):
    if daemon["heartbeat_stale"]:
        return f"alive, NOT writing (holds the database's lock; last heartbeat {daemon['heartbeat'] or '-'})"
    if daemon["alive"]:
        return f"alive (heartbeat {daemon['heartbeat_age_seconds']:g}s ago)"
    if daemon["heartbeat"] is None:
        return "NOT running (no heartbeat: stopped cleanly, or never started on this database)"
    return f"NOT running (last heartbeat {daemon['heartbeat']}, {daemon['heartbeat_age_seconds']:g}s ago)"
