"""Report files: the processing report after each scan, writing and expiring report files.

The processing report has the classic fields (success, message, stats, results). It covers every task
event since the previous report (a watermark: ``task_events.id`` on SQLite, the
writing transaction on PostgreSQL, where events can commit out of id order; see
``aggregates.event_cut``), so the immediate handling between scans is reported
too, not only the scan's own work, and each decision exactly once.
"""

import calendar
import contextlib
import itertools
import json
import os
import time
from pathlib import Path

from .clock import iso
from .store import aggregates
from .store.members import swap_state

PROCESSING, ANALYSIS = "failure_processing", "failure_analysis"
WATERMARK_KEY = "processing_report_event_id"
XACT_WATERMARK_KEY = "processing_report_xact"  # PostgreSQL: the transaction cut of the previous report
# The events that end a decision about a task, and what the processing report calls them.
DECISIONS = ("retry_scheduled", "recovered", "notified", "exhausted", "manual", "lease_expired")
STUCK_NEW_SECONDS = 60
# A flood decides hundreds of thousands of tasks between two scans: ``results`` lists the tasks decided last,
# this many at most (``results_omitted`` counts the others); the totals and ``summary`` count every task.
RESULTS_LIMIT = 1000

WORDS = {
    "zh": {
        "done": "失败任务处理完成",
        "done_errors": "失败任务处理完成，但有{count}个问题需要处理（见 stats.errors）",
        "retry_scheduled": "任务将在{delay}秒后重试",
        "recovered": "任务已在第{attempt}次重试后恢复",
        "notified_admin": "已通知管理员",
        "notified_user": "已通知用户",
        "exhausted": "重试{attempt}次后仍失败，已通知管理员",
        "manual": "没有配置重试处理器，需要人工处理",
        "lease_expired": "中断的重试已重新排期",
        "stuck": "任务 {task_id} 超过 {seconds} 秒仍未被分类",
    },
    "en": {
        "done": "Failed task processing finished",
        "done_errors": "Failed task processing finished, with {count} problem(s) to look at (stats.errors)",
        "retry_scheduled": "Task will be retried in {delay}s",
        "recovered": "Task recovered on retry {attempt}",
        "notified_admin": "Admins notified",
        "notified_user": "User notified",
        "exhausted": "Still failing after {attempt} retries; admins notified",
        "manual": "No retry handler configured; needs a person",
        "lease_expired": "Interrupted retry rescheduled",
        "stuck": "task {task_id} not classified after {seconds}s",
    },
}


WRITTEN_IN_KEY = "reports_written_in"  # daemon_state: where the daemon that wrote the last processing report writes


def _number(value):
    """30.0 -> 30, 0.25 -> 0.25: delays read as people write them."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(value, 3)


def _result(lang, task_id, event, category, delay, attempt, detail):
    words = WORDS[lang]
    audience = (json.loads(detail) if detail else {}).get("audience", "admin")
    action, success, retry_delay = "auto_recovery", True, None
    if event == "retry_scheduled":
        retry_delay = _number(delay)
        message = words["retry_scheduled"].format(delay=retry_delay)
    elif event == "recovered":
        message = words["recovered"].format(attempt=attempt)
    elif event == "notified":
        action = "notify_user" if audience == "user" else "notify_admin"
        message = words[f"notified_{'user' if audience == 'user' else 'admin'}"]
    elif event == "exhausted":
        action, success = "notify_admin", False
        message = words["exhausted"].format(attempt=attempt)
    elif event == "manual":
        action, success = "manual", False
        message = words["manual"]
    else:  # lease_expired
        retry_delay = 0
        message = words["lease_expired"]
    return {"task_id": task_id, "category": category, "action_taken": action, "success": success,
            "message": message, "retry_delay": retry_delay}


def write_processing_report(store, report_dir, now, lang="zh"):
    """Write the processing report, then move the watermark past its events: a report that cannot be written (a
    full disk, a report directory that is a file) raises and leaves its events to the next one. Returns (path,
    report), or (None, None) when another process reported these events meanwhile."""
    written = []
    report = processing_report(store, now, lang,
                               publish=lambda made: written.append(write_report(report_dir, PROCESSING, made, now)))
    return (written[0], report) if report is not None else (None, None)


def processing_report(store, now, lang="zh", scan_errors=(), advance=True, publish=None):
    """The processing report over the events since the previous one; None when another process moved the
    watermark past them meanwhile (it reports them: a report never repeats another's events). ``publish`` is
    called with the report inside the transaction that moves the watermark: if it raises, the watermark stays."""
    upto = aggregates.event_cut(store)
    watermark = store.get_state(WATERMARK_KEY)
    since = (int(watermark or 0), int(store.get_state(XACT_WATERMARK_KEY, "0")))
    with store.big_read():  # one snapshot (PostgreSQL): the summary counts the same decisions the results list
        latest = aggregates.newest_decisions(store, since, upto, DECISIONS, RESULTS_LIMIT)
        summary = _summary(aggregates.decision_summary(store, since, upto, DECISIONS))
    scanned, analyzed, recovered, notified = aggregates.decision_counts(store, since, upto)
    stuck = aggregates.stuck_new(store, now - STUCK_NEW_SECONDS)
    errors = list(scan_errors) + [WORDS[lang]["stuck"].format(task_id=task_id, seconds=STUCK_NEW_SECONDS)
                                  for task_id in stuck]
    results = [_result(lang, *row) for row in latest]
    total = sum(summary["by_decision"].values())
    report = {
        "success": not errors,
        "message": WORDS[lang]["done_errors"].format(count=len(errors)) if errors else WORDS[lang]["done"],
        "total_processed": total,
        "stats": {"scanned": scanned, "analyzed": analyzed, "recovered": recovered, "notified": notified,
                  "errors": errors},
        "results": results,
        "results_omitted": total - len(results),
        "summary": summary,
        "processed_at": iso(now),
    }
    if advance:
        with store.transaction():
            if not swap_state(store, WATERMARK_KEY, watermark, str(upto[0]), now):
                return None  # another process reported these events just now (the lead was moving)
            if upto[1] is not None:
                store.put_state(XACT_WATERMARK_KEY, str(upto[1]), now)
            if publish is not None:
                publish(report)
    return report


def _summary(rows):
    """{by_category, by_task_type, by_decision: {name: tasks}}, most first, from decision_summary's rows."""
    counts = {"by_category": {}, "by_task_type": {}, "by_decision": {}}
    for category, task_type, event, tasks in rows:
        for kind, name in (("by_category", category), ("by_task_type", task_type), ("by_decision", event)):
            counts[kind][name] = counts[kind].get(name, 0) + tasks
    return {kind: dict(sorted(named.items(), key=lambda item: (-item[1], item[0]))) for kind, named in counts.items()}


def report_path(report_dir, kind, now):
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now))
    return Path(report_dir) / kind / f"{kind}_{stamp}.json"


def write_report(report_dir, kind, report, now, html=None):
    """Write the JSON (and its HTML view) atomically, under a name no other report has; returns the JSON path."""
    path = report_path(report_dir, kind, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = _write_new(path, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    if html is not None:
        _write_atomic(path.with_suffix(".html"), html)
    return path


def _write_new(path, text):
    """Write ``text`` whole as ``path``, or as ``<stem>_2``, ``_3``… when a report of the same second has the
    name (a scan from the CLI while the daemon's runs): linked into place, so no report replaces another."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_or_remove(temp, text)
    try:
        for number in itertools.count(1):
            candidate = path if number == 1 else path.with_name(f"{path.stem}_{number}{path.suffix}")
            try:
                os.link(temp, candidate)  # fails if the name is taken, whoever took it
                return candidate
            except FileExistsError:
                continue
            except OSError:  # a filesystem without hard links: check, then rename
                if candidate.exists():
                    continue
                os.replace(temp, candidate)
                return candidate
    finally:
        temp.unlink(missing_ok=True)


def _write_atomic(path, text):
    # A reader (or a `tail`) never sees half a report: write aside, then rename.
    temp = path.with_name(f".{path.name}.tmp")
    _write_or_remove(temp, text)
    os.replace(temp, path)


def _write_or_remove(temp, text):
    """Write ``temp`` whole, or leave no part of it (a full disk had left an empty file at every scan)."""
    try:
        temp.write_text(text, encoding="utf-8")
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _stamp_of(path, kind):
    """The UTC time in a report's file name (not its mtime: a copied file keeps its age)."""
    try:
        return calendar.timegm(time.strptime(path.stem[len(kind) + 1:][:15], "%Y%m%d_%H%M%S"))  # "_2" aside
    except ValueError:
        return None


def purge_reports(report_dir, now, retention_days):
    """Delete report files older than the retention; returns how many went."""
    cutoff = now - retention_days * 86400
    removed = 0
    for kind in (PROCESSING, ANALYSIS):
        for path in Path(report_dir, kind).glob(f"{kind}_*.*"):
            stamp = _stamp_of(path, kind)
            if stamp is not None and stamp < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
