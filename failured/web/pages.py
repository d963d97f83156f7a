"""The console's pages as HTML text. Every value that came from a task, a message or a person is escaped.

No inline script or style: the Content-Security-Policy allows only /ui/static/ files; the charts
are report_html's SVG (attributes only, no style).
"""

import json
from html import escape
from urllib.parse import urlencode

from ..clock import iso
from ..report_html import _daily_chart, category_order, colour  # the analysis report's chart, live
from ..listing import STATUSES
from ..states import TaskStatus
from ..text import clipped


def e(value):
    return escape("" if value is None else str(value), quote=True)


def when(epoch):
    """A stored time as the console shows it: UTC, and saying so."""
    return iso(epoch).replace("T", " ").replace("Z", " UTC") if isinstance(epoch, (int, float)) else ""


def state(t, name):
    """A task's, notification's or breaker's state in the console's language (the stored name where it has none)."""
    return t["states"].get(name, name)


def table(heads, rows, table_id=""):
    head = "".join(f"<th>{e(h)}</th>" for h in heads)
    ident = f' id="{e(table_id)}"' if table_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def section(title, content, ident=""):
    ident = f' id="{e(ident)}"' if ident else ""
    return f"<section{ident}><h2>{e(title)}</h2>{content}</section>"


def csrf_field(session):
    return f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'


def layout(t, title, body, session=None, active=None, show_nav=True, logout=True):
    nav = ""
    if show_nav:
        on = ' class="on"'
        links = "".join(f'<a href="/ui/{path}"{on if path == active else ""}>{e(t[key])}</a>'
                        for path, key in (("", "overview"), ("tasks", "tasks"), ("unknown", "unknown"),
                                          ("notifications", "notifications")))
        out = (f'<form method="post" action="/ui/logout" class="logout">{csrf_field(session)}'
               f'<button type="submit">{e(t["logout"])}</button></form>') if session and logout else ""
        nav = f'<nav>{links}</nav>{out}'
    flashes = "".join(f'<p class="flash {e(kind)}" role="status">{e(text)}</p>'
                      for kind, text in (session.flash if session else []))
    if session:
        session.flash.clear()
    return (f'<!DOCTYPE html>\n<html lang="{e(t["html_lang"])}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{e(title)} · {e(t["title"])}</title><link rel="stylesheet" href="/ui/static/console.css">'
            f'<script src="/ui/static/console.js" defer></script></head><body>'
            f'<header class="top"><a class="brand" href="/ui/">failured</a>{nav}</header>'
            f'<main><h1>{e(title)}</h1>{flashes}{body}</main></body></html>\n')


def login(t, error=None):
    problem = f'<p class="flash bad">{e(error)}</p>' if error else ""
    body = (f'{problem}<form method="post" action="/ui/login" class="stack" id="login">'
            f'<label>{e(t["token"])}<input type="password" name="token" autocomplete="current-password" '
            f'required autofocus></label><button type="submit">{e(t["login"])}</button></form>')
    return layout(t, t["login"], body, show_nav=False)


def message(t, title, text, session=None):
    return layout(t, title, f'<p class="flash bad">{e(text)}</p>', session)


# -- overview -----------------------------------------------------------------------

def chart(series, t, labels, title_key, axis_key):
    report = {"daily_failures": series, "category_labels": labels}
    order = category_order({"daily_failures": series})
    words = {"daily": t[title_key], "date": t[axis_key], "failures": t["failures"], "none": t["none"]}
    legend = "".join(f'<span><svg width="11" height="11" aria-hidden="true"><rect width="11" height="11" '
                     f'fill="{colour(c)}"/></svg> {e(labels.get(c, c))}</span>' for c in order)
    return f'{_daily_chart(report, words, order)}<div class="legend">{legend}</div>'


def overview(t, session, status, hourly, daily, rate, labels, outbox_counts):
    problems = status["problems"]
    health = (f'<p class="flash ok" id="health">{e(t["healthy"])}</p>' if not problems else
              f'<div class="flash bad" id="health"><b>{e(t["unhealthy"])}</b><ul>'
              + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul></div>")
    by_status = status["tasks"]["by_status"]
    rows = [f'<tr><td><a href="/ui/tasks?{e(urlencode({"status": s}))}" title="{e(s)}">{e(state(t, s))}</a></td><td>'
            f'<a href="/ui/tasks?{e(urlencode({"status": s, "category": c}))}">{e(labels.get(c, c))}</a></td>'
            f'<td class="n">{n}</td></tr>'
            for s in sorted(by_status) for c, n in sorted(by_status[s].items(), key=lambda i: -i[1])]
    rows.append(f'<tr><th colspan="2">{e(t["total"])}</th><td class="n" id="total">{status["tasks"]["total"]}</td></tr>')
    rate_text = f"{rate:g} %" if isinstance(rate, (int, float)) else f'— <span class="why">{e(t["no_recovery"])}</span>'
    cards = (f'<div class="cards"><div class="card"><div class="v">{status["tasks"]["total"]}</div>'
             f'<div class="l">{e(t["tasks"])}</div></div><div class="card"><div class="v" id="recovery-rate">{rate_text}'
             f'</div><div class="l">{e(t["recovery"])}</div></div></div>')
    body = "".join([
        health, cards,
        section(t["per_hour"], chart(hourly, t, labels, "per_hour", "hour")),
        section(t["per_day"], chart(daily, t, labels, "per_day", "date")),
        section(t["by_status"], table([t["status"], t["category"], t["count"]], rows, "by-status")),
        section(t["next_retries"], _next_retries(t, status["next_retries"], labels)),
        section(t["breakers"], _breakers(t, status["breakers_open"])),
        section(t["channels"], _channels(t, status["notifications"], outbox_counts)),
        section(t["config"], _config(t, status["config"])),
    ])
    return layout(t, t["overview"], body, session, "")


def _next_retries(t, retries, labels):
    if not retries:
        return f'<p class="none">{e(t["none"])}</p>'
    return table([t["task"], t["type"], t["category"], t["due"]],
                 [f'<tr><td><a href="/ui/tasks/{r["task_id"]}">{r["task_id"]}</a></td><td>{e(r["task_type"])}</td>'
                  f'<td>{e(labels.get(r["category"], r["category"]))}</td><td>{e(r["due"])}</td></tr>' for r in retries])


def _breakers(t, breakers):
    if not breakers:
        return f'<p class="none">{e(t["open_breakers"])}</p>'
    return table([t["type"], t["status"], t["attempts"], t["due"]],
                 [f'<tr><td>{e(b["task_type"])}</td><td>{e(state(t, b["state"]))}</td><td class="n">{b["consecutive_failures"]}'
                  f'</td><td>{e(b["open_until"])}</td></tr>' for b in breakers])


def _channels(t, channels, counts):
    names = sorted(set(channels) | set(counts))
    if not names:
        return f'<p class="none">{e(t["none"])}</p>'
    rows = []
    for name in names:
        info, by_status = channels.get(name, {}), counts.get(name, {})
        health = {True: t["delivering"], False: t["not_delivering"]}.get(info.get("delivering"), "")
        rows.append(f'<tr><td><a href="/ui/notifications?{e(urlencode({"channel": name}))}">{e(name)}</a></td>'
                    f'<td class="{"bad" if info.get("delivering") is False else ""}">{e(health)}</td>'
                    f'<td class="n">{by_status.get("pending", 0)}</td><td class="n">{by_status.get("failed", 0)}</td>'
                    f'<td>{e(info.get("last_error") or "")}</td></tr>')
    return table([t["channel"], t["status"], t["pending"], t["failed"], t["last_error"]], rows, "channels")


def _config(t, config):
    active, rejected = config.get("active") or {}, config.get("last_rejected")
    files = "".join(f"<li><code>{e(f)}</code></li>" for f in active.get("files", []))
    loaded = active.get("loaded_at", "—").replace("T", " ").replace("Z", " UTC")  # as when() shows a time
    text = (f'<p>{e(t["loaded_at"])} {e(loaded)} · {len(active.get("files", []))} '
            f'{e(t["files"])}</p><ul class="files">{files}</ul>')
    if rejected:
        errors = "".join(f"<li>{e(x)}</li>" for x in rejected.get("errors") or [])
        text += (f'<div class="flash bad" id="rejected"><b>{e(t["rejected"])}: {e(rejected.get("at"))}</b>'
                 f'<ul>{errors}</ul></div>')
    return text


# -- tasks --------------------------------------------------------------------------

def tasks(t, session, query, rows, next_cursor, categories, error=None):
    checks = "".join(f'<label class="chk"><input type="checkbox" name="status" value="{s}"'
                     f'{" checked" if s in query["status"] else ""}> {e(state(t, s))}</label>' for s in STATUSES)
    options = "".join(f'<option value="{e(c)}"{" selected" if c in query["category"] else ""}>{e(label)}</option>'
                      for c, label in categories)
    form = (f'<form method="get" action="/ui/tasks" class="filters" id="filters"><fieldset><legend>{e(t["status"])}'
            f'</legend>{checks}</fieldset><label>{e(t["category"])}<select name="category"><option value="">'
            f'{e(t["all"])}</option>{options}</select></label><label>{e(t["type"])}<input name="type" '
            f'value="{e(query["type"])}"></label><label>{e(t["since"])}<input name="since" value="{e(query["since"])}" '
            f'size="6"></label><label>{e(t["grep"])}<input type="search" name="grep" value="{e(query["grep"])}"></label>'
            f'<button type="submit">{e(t["filter"])}</button></form>')
    labels = dict(categories)  # a category by its label in the console's language (one taken out keeps its name)
    body = [f'<tr data-task-id="{r["id"]}"><td><a href="/ui/tasks/{r["id"]}">{r["id"]}</a></td>'
            f'<td>{e(when(r["created_at"]))}</td><td>{e(r["task_type"])}</td><td class="st {e(r["status"])}">'
            f'{e(state(t, r["status"]))}</td><td title="{e(r["category"])}">{e(labels.get(r["category"], r["category"]))}</td>'
            f'<td class="n">{r["attempts"]}</td><td class="err">{e(r["error"])}</td></tr>' for r in rows]
    listing = (table(["#", t["created"], t["type"], t["status"], t["category"], t["attempts"], t["error"]], body,
                     "task-table") if rows else f'<p class="none" id="no-tasks">{e(t["no_tasks"])}</p>')
    if error:
        listing = f'<p class="flash bad" id="filter-error">{e(error)}</p>'
    pages = ""
    if next_cursor:
        pages += f'<a id="next-page" href="/ui/tasks?{e(_query_string(query, next_cursor))}">{e(t["next_page"])} →</a>'
    if query.get("cursor"):
        pages += f' <a href="/ui/tasks?{e(_query_string(query, None))}">{e(t["first_page"])}</a>'
    return layout(t, t["tasks"], form + listing + f'<p class="pages">{pages}</p>', session, "tasks")


def _query_string(query, cursor):
    pairs = [("status", s) for s in query["status"]] + [("category", c) for c in query["category"]]
    pairs += [(k, query[k]) for k in ("type", "since", "grep") if query[k]]
    return urlencode(pairs + ([("cursor", cursor)] if cursor else []))


def task(t, session, data, categories):
    task_id = data["id"]
    facts = [(t["type"], data["task_type"]), (t["ref"], data["ref"]), (t["status"], state(t, data["status"])),
             (t["attempts"], f'{data["attempts"]} / {data["max_attempts"] or "—"}'),
             (t["next_retry"], when(data["next_retry_at"])), (t["created"], when(data["created_at"])),
             (t["note"], data["note"])]
    dl = "".join(f'<dt>{e(k)}</dt><dd id="task-{i}">{e(v)}</dd>' for i, (k, v) in enumerate(facts))
    pattern = data["matched_pattern"] or ""
    confidence = pattern.split(" ", 1)[1] if data["matched_by"] == "model" and pattern.startswith("confidence ") else ""
    labels = dict(categories)
    category = data["category"]
    shown_category = f'{labels[category]} ({category})' if category in labels else category
    classification = [(t["category"], shown_category), (t["matched_by"], data["matched_by"]),
                      (t["pattern"], "" if confidence else pattern), (t["confidence"], confidence),
                      (t["error_type"], data["error_type"]), (t["fingerprint"], data["fingerprint"]),
                      (t["template"], data["error_template"])]
    cl = "".join(f"<dt>{e(k)}</dt><dd><code>{e(v)}</code></dd>" for k, v in classification if v)
    events = [f'<tr><td>{e(when(ev["at"]))}</td><td>{e(ev["event"])}</td><td>{e(state(t, ev["status"]))}</td>'
              f'<td title="{e(ev["category"])}">{e(labels.get(ev["category"], ev["category"]))}</td>'
              f'<td class="n">{e(ev["attempt"])}</td><td class="err">'
              f'{e(clipped(ev["error"], EVENT_ERROR_CHARS))}{_detail(ev["detail"])}</td></tr>' for ev in data["events"]]
    # What failured decided and what one can do come before the error, which may be a traceback of pages
    # (it scrolls in its own box); an event's copy of it is clipped, the whole text being above.
    body = "".join([
        f'<dl class="facts" data-status="{e(data["status"])}" id="facts">{dl}</dl>',
        section(t["classification"], f'<dl class="facts">{cl}</dl>'),
        section(t["actions"], _actions(t, session, task_id, data, categories), "actions"),
        section(t["error"], f'<pre id="error-text">{e(data["error_message"])}</pre>'),
        section(t["events"], table([t["at"], t["event"], t["status"], t["category"], t["attempts"], t["error"]],
                                   events, "events")),
        section(t["payload"], f'<pre id="payload">{e(json.dumps(data["payload"], ensure_ascii=False, indent=2))}</pre>'),
    ] + ([section(t["handler"], f'<pre>{e(json.dumps(data["handler"], ensure_ascii=False, indent=2))}</pre>')]
         if data.get("handler") else []))
    return layout(t, f'{t["task"]} {task_id}', body, session, "tasks")


EVENT_ERROR_CHARS = 300  # of an event's error on the task page, whose whole error is shown above


def _detail(detail):
    return f'<div class="why">{e(json.dumps(detail, ensure_ascii=False))}</div>' if detail else ""


def _actions(t, session, task_id, data, categories):
    base = f"/ui/tasks/{task_id}"
    # Nothing chosen at first: a click on Label without a choice would teach the model the category as it stands.
    options = f'<option value="" selected disabled>{e(t["choose_category"])}</option>' + "".join(
        f'<option value="{e(c)}">{e(label)}{" ✓" if c == data["category"] else ""}</option>' for c, label in categories)
    return (f'<div class="actions"><form method="post" action="{base}/recover" id="recover-form">{csrf_field(session)}'
            f'<label class="chk"><input type="checkbox" name="force" value="1"> {e(t["force"])}</label>'
            f'<button type="submit" id="recover">{e(t["recover"])}</button></form>'
            + _resolve_form(t, session, base, data["status"]) +
            f'<form method="post" action="{base}/label" id="label-form">{csrf_field(session)}'
            f'<label>{e(t["category"])}<select name="category" required>{options}</select></label>'
            f'<label>{e(t["note"])}<input name="note" maxlength="2000"></label>'
            f'<button type="submit" id="label">{e(t["label"])}</button></form></div>')


def _resolve_form(t, session, base, status):
    """Resolve, offered only where it can be done: a recovered or resolved task is finished already."""
    if status in (TaskStatus.RECOVERED, TaskStatus.RESOLVED):
        return ""
    return (f'<form method="post" action="{base}/resolve" id="resolve-form">{csrf_field(session)}'
            f'<label>{e(t["note"])}<input name="note" maxlength="2000"></label>'
            f'<button type="submit" id="resolve">{e(t["resolve"])}</button></form>')


# -- unknown errors and the workbench ------------------------------------------------

def unknown(t, session, templates, days, bench, result, categories, writes_off=None):
    """The unknown templates and the workbench; ``writes_off`` is why Save is not offered (None: it is)."""
    rows = []
    for i, item in enumerate(templates):
        samples = "".join(f"<li><code>{e(s)}</code></li>" for s in item["samples"])
        use = (f'<a class="use" href="/ui/unknown?{e(urlencode({"days": days, "pattern": item["pattern"], "category": bench["category"]}))}#workbench">'
               f'{e(t["use"])}</a>') if item["pattern"] else ""
        rows.append(f'<tr data-fingerprint="{e(item["fingerprint"])}"><td class="n">{item["count"]}</td>'
                    f'<td><code>{e(item["template"])}</code><ul>{samples}</ul></td>'
                    f'<td><code>{e(item["pattern"] or "—")}</code> {use}</td></tr>')
    listing = table([t["count"], t["template"], t["suggested"]], rows, "templates") if rows else \
        f'<p class="none">{e(t["none"])}</p>'
    options = "".join(f'<option value="{e(c)}"{" selected" if c == bench["category"] else ""}>{e(label)}</option>'
                      for c, label in categories if c != "unknown")
    form = (f'<form method="get" action="/ui/unknown#workbench" class="stack" id="bench-form">'
            f'<label>RE2<input name="pattern" id="pattern" value="{e(bench["pattern"])}" maxlength="2000" '
            f'autocomplete="off" spellcheck="false"></label><label>{e(t["target"])}<select name="category" id="category">'
            f'{options}</select></label><label>{e(t["days"])}<input name="days" type="number" min="1" max="90" '
            f'value="{days}"></label><button type="submit" id="preview">{e(t["preview"])}</button></form>')
    off = f'<p class="flash" id="writes-off">{e(writes_off)}</p>' if writes_off else ""
    body = section(t["templates"], listing) + section(t["workbench"], off + form + _bench_result(
        t, session, bench, days, result, writes_off is None), "workbench")
    return layout(t, t["unknown"], body, session, "unknown")


def _bench_result(t, session, bench, days, result, writes_enabled):
    if result is None:
        return ""
    if result["problem"]:
        return f'<p class="flash bad" id="bench-problem">{e(t["invalid"])}: {e(result["problem"])}</p>'

    def rows(items):
        return [f'<tr><td><a href="/ui/tasks/{i}">{i}</a></td><td>{e(kind)}</td><td>{e(category)}</td>'
                f'<td class="err">{e(text[:300])}</td></tr>' for i, kind, category, text in items]
    heads = ["#", t["type"], t["category"], t["error"]]
    save = (f'<form method="post" action="/ui/unknown/save" id="save-form">{csrf_field(session)}'
            f'<input type="hidden" name="pattern" value="{e(bench["pattern"])}">'
            f'<input type="hidden" name="category" value="{e(bench["category"])}">'
            f'<input type="hidden" name="days" value="{days}">'
            f'<button type="submit" id="save">{e(t["save"])}</button></form>') if writes_enabled else ""
    def notes(shown, count, scanned, total):
        found = []
        if count > len(shown):
            found.append(t["first_of"].format(n=len(shown), total=count))
        if total > scanned:
            found.append(t["scanned_of"].format(n=scanned, total=total, days=days))
        return f'<p class="none">{e("; ".join(found))}</p>' if found else ""

    return (f'<div id="bench-result"><h3>{e(t["would_match"])}: <span id="matched-count">{result["matched_count"]}'
            f'</span> / {result["unknown_count"]}</h3>'
            + notes(result["matched"], result["matched_count"], result["unknown_count"], result["unknown_total"])
            + f'{table(heads, rows(result["matched"]), "matched")}'
            f'<h3>{e(t["would_steal"])}: <span id="stolen-count">{result["stolen_count"]}</span> / '
            f'{result["classified_count"]}</h3>'
            + notes(result["stolen"], result["stolen_count"], result["classified_count"], result["classified_total"])
            + f'{table(heads, rows(result["stolen"]), "stolen")}{save}</div>')


# -- notifications ----------------------------------------------------------------------

def notifications(t, session, counts, rows, channel):
    statuses = sorted({s for by in counts.values() for s in by})
    count_rows = [f'<tr><td><a href="/ui/notifications?{e(urlencode({"channel": name}))}">{e(name)}</a></td>'
                  + "".join(f'<td class="n">{by.get(s, 0)}</td>' for s in statuses) + "</tr>"
                  for name, by in sorted(counts.items())]
    outbox = table([t["channel"], *(state(t, s) for s in statuses)], count_rows, "outbox") if counts else f'<p class="none">{e(t["none"])}</p>'
    items = []
    for row in rows:
        again = (f'<form method="post" action="/ui/notifications/{row["id"]}/resend">{csrf_field(session)}'
                 f'<button type="submit" class="resend">{e(t["send_again"])}</button></form>'
                 if row["status"] == "failed" else "")
        task_link = f'<a href="/ui/tasks/{row["task"]}">{row["task"]}</a>' if row["task"] else ""
        items.append(f'<tr data-notification-id="{row["id"]}"><td>{row["id"]}</td><td>{e(when(row["created_at"]))}</td>'
                     f'<td>{e(row["channel"])}</td><td class="st {e(row["status"])}">{e(state(t, row["status"]))}</td>'
                     f'<td>{task_link}</td><td>{e(row["title"])}</td><td class="n">{row["attempts"]}</td>'
                     f'<td class="err">{e(row["last_error"])}</td><td>{again}</td></tr>')
    heads = ["#", t["created"], t["channel"], t["status"], t["task"], t["title_col"], t["attempts"], t["last_error"], ""]
    title = f'{t["failed"]} / {t["pending"]}' + (f" · {channel}" if channel else "")
    body = section(t["outbox"], outbox) + section(title, table(heads, items, "notification-rows") if items else
                                                  f'<p class="none">{e(t["none"])}</p>')
    return layout(t, t["notifications"], body, session, "notifications")
