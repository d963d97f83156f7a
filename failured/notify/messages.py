"""The words people read in notifications, in Chinese (default) or English.

Whatever a reporter sent (task type, ref, error) goes through ``inert`` on its way in: robots render these
texts as markdown, and a reporter must not be able to write failured's lines, links or mentions.
"""

from ..classify import error_summary
from ..clock import iso
from ..text import shell_word
from .channels.mail import REFUSED_ADVICE
from .channels.base import UNSET_VARIABLE_ADVICE
from .channels.robots import DINGTALK_REJECTED, WECOM_REJECTED
from .health import DEFAULT_ADVICE
from .inert import inert

MAX_ERROR_CHARS = 300

TEXTS = {
    "zh": {
        "task_title": "[failured] {label}: {task_type} #{task_id}",
        "exhausted_title": "[failured] 重试次数已用完: {task_type} #{task_id}",
        "exhausted_advice": "不会再自动重试：排查原因后执行 `failured recover {task_id} --force` 再试一次，"
                            "或处理完后执行 `failured resolve {task_id}`",
        "manual_title": "[failured] 任务类型 {task_type} 没有配置重试处理器，需要人工处理",
        "breaker_open_title": "[failured] 熔断: {task_type} 连续 {failures} 次重试失败，暂停 {cooldown} 秒",
        "breaker_closed_title": "[failured] 熔断恢复: {task_type} 重试已恢复",
        "category": "分类", "task_type": "任务类型", "task": "任务", "error": "错误",
        "attempts": "已重试", "suggestion": "建议", "time": "时间", "inspect": "查看",
        "threshold_title": "[failured] 告警阈值：{what} = {value}（阈值 {limit:g}）",
        "floor_title": "[failured] 告警阈值：{what} = {value}（下限 {limit:g}）",
        "floor_body": "最近 {minutes:g} 分钟内低于下限；同一告警每个窗口只发送一次。",
        "threshold_body": "最近 {minutes:g} 分钟内超过阈值；同一告警每个窗口只发送一次。",
        "thresholds": {
            "failure_rate_percent": "{key} 失败率 %", "consecutive_recovery_failures": "{key} 连续恢复失败次数",
            "notification_delay_minutes": "通道 {key} 通知延迟（分钟）", "unknown_errors": "未知错误数",
            "recovery_rate_percent": "自动恢复成功率 %", "recent_failures": "最近失败任务数",
        },
        "repeat": "同类错误 ×{count}（{span}内）", "repeat_tasks": "同类任务", "seconds": "{n:g} 秒", "minutes": "{n:g} 分钟",
        "digest_title": "[failured] 汇总：{count} 条通知",
        "digest_intro": "通知过多，已合并为一条汇总（机器人每分钟最多 20 条）。",
        "by_category": "按分类", "by_task_type": "按任务类型", "first": "最早的 {n} 条",
        "see_rest": "查看全部", "others": "其余 {kinds} 种：{count}",
        "alerts": "运维告警", "more_alerts": "另有 {count} 条告警",
        "manual_body": "可恢复的失败任务无法自动重试：请在 failured.toml 中为 {task_type} 配置 handler，然后执行 `failured requeue --type {type_word} --status manual`。",
        "paused_title": "[failured] 通道 {channel} 已暂停：其配置无法使用",
        "paused_body": "修改该通道的配置后自动恢复发送；在此之前通知保留在发件箱中。",
        "unconfigured_title": "[failured] 通道 {channel} 已不在配置中：{count} 条通知等待它恢复",
        "unconfigured_body": "通道恢复配置（同名）后自动发送；{hours:g} 小时内仍未恢复的通知将放弃。",
        "undeliverable_title": "[failured] 通道 {channel} 无法发送通知 #{id}，已放弃",
        "notification": "通知", "channel": "通道",
        "undeliverable_body": "该通知被拒绝 {attempts} 次（只拒绝这一条，该通道的其他通知照常发送）。"
                              "处理原因后，可在控制台的发件箱中重新发送。",
    },
    "en": {
        "task_title": "[failured] {label}: {task_type} #{task_id}",
        "exhausted_title": "[failured] Retries used up: {task_type} #{task_id}",
        "exhausted_advice": "no more automatic retries: fix the cause, then `failured recover {task_id} --force` to "
                            "try once more, or `failured resolve {task_id}` once it is dealt with",
        "manual_title": "[failured] Task type {task_type} has no retry handler: needs a person",
        "breaker_open_title": "[failured] Breaker open: {task_type} failed {failures} retries in a row, pausing {cooldown}s",
        "breaker_closed_title": "[failured] Breaker closed: {task_type} retries resumed",
        "category": "Category", "task_type": "Task type", "task": "Task", "error": "Error",
        "attempts": "Retries", "suggestion": "Suggestion", "time": "Time", "inspect": "Inspect",
        "threshold_title": "[failured] Alert threshold: {what} = {value} (limit {limit:g})",
        "floor_title": "[failured] Alert threshold: {what} = {value} (at least {limit:g} expected)",
        "floor_body": "Below its floor within the last {minutes:g} minutes; the same alert is sent once per window.",
        "threshold_body": "Breached within the last {minutes:g} minutes; the same alert is sent once per window.",
        "thresholds": {
            "failure_rate_percent": "{key} failure rate %", "consecutive_recovery_failures": "{key} failed recoveries in a row",
            "notification_delay_minutes": "channel {key} notification delay (min)", "unknown_errors": "unknown errors",
            "recovery_rate_percent": "automatic recovery rate %", "recent_failures": "recent failures",
        },
        "repeat": "Same error ×{count} (within {span})", "repeat_tasks": "Also in", "seconds": "{n:g} s", "minutes": "{n:g} min",
        "digest_title": "[failured] Digest: {count} notifications",
        "digest_intro": "Too many notifications at once; merged into one digest (robots take at most 20 a minute).",
        "by_category": "By category", "by_task_type": "By task type", "first": "First {n}",
        "see_rest": "See them all", "others": "{kinds} more: {count}",
        "alerts": "Alerts", "more_alerts": "{count} more alerts",
        "manual_body": "Recoverable failures cannot be retried automatically: configure a handler for {task_type} in failured.toml, then run `failured requeue --type {type_word} --status manual`.",
        "paused_title": "[failured] Channel {channel} paused: its configuration does not work",
        "paused_body": "It sends again once its config changes; until then its notifications wait in the outbox.",
        "unconfigured_title": "[failured] Channel {channel} is no longer configured: {count} notifications wait for it",
        "unconfigured_body": "They go out once a channel of that name is configured again; those still waiting after "
                             "{hours:g} h are given up.",
        "undeliverable_title": "[failured] Channel {channel} cannot deliver notification #{id}: given up",
        "notification": "Notification", "channel": "Channel",
        "undeliverable_body": "It was refused {attempts} times (this one alone: the channel's other notifications "
                              "went out). Once the cause is fixed, send it again from the console's outbox.",
    },
}


def shorten(text, limit=MAX_ERROR_CHARS):
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_message(lang, kind, audience, task, category, now, attempts=None, limit=None):
    """(title, markdown body) for a notification about one task."""
    words = TEXTS[lang]
    title_key = {"exhausted": "exhausted_title"}.get(kind, "task_title")
    label = category.label_in(lang)
    task_type = inert(task.task_type)
    title = words[title_key].format(label=label, task_type=task_type, task_id=task.id)
    ref = f" (ref {inert(task.ref)})" if task.ref else ""
    lines = [
        f"**{title}**",
        f"- {words['category']}: {label} (`{category.name}`)",
        f"- {words['task_type']}: {task_type}",
        f"- {words['task']}: #{task.id}{ref}",
        f"- {words['error']}: {inert(error_summary(task.error_message), MAX_ERROR_CHARS)}",
    ]
    if attempts is not None:
        lines.append(f"- {words['attempts']}: {attempts}" + (f"/{limit}" if limit else ""))
    # The category's suggestion says the task is retried: after the last retry that is no longer so.
    suggestion = words["exhausted_advice"].format(task_id=task.id) if kind == "exhausted" else category.suggestion_in(lang)
    if suggestion:
        lines.append(f"- {words['suggestion']}: {suggestion}")
    lines.append(f"- {words['time']}: {iso(now)}")
    if audience == "admin":
        lines.append(f"- {words['inspect']}: `failured show {task.id}`")
    return title, "\n".join(lines)


def manual_message(lang, task_type, first=None):
    """(title, body) of the one notice for a task type whose recoverable failures wait in manual: the ``first``
    task's id, ref and error, and how to list the others (they are not notified one by one)."""
    words = TEXTS[lang]
    task_type = inert(task_type)
    type_word = shell_word(task_type)  # pasted into a shell: a task type "x;reboot" must stay one word
    title = words["manual_title"].format(task_type=task_type)
    lines = [f"**{title}**", "", words["manual_body"].format(task_type=task_type, type_word=type_word)]
    if first is not None:
        ref = f" (ref {inert(first.ref)})" if first.ref else ""
        lines += ["", f"- {words['task']}: #{first.id}{ref}",
                  f"- {words['error']}: {inert(error_summary(first.error_message), MAX_ERROR_CHARS)}",
                  f"- {words['inspect']}: `failured show {first.id}`, "
                  f"`failured list --status manual --type {type_word}`"]
    return title, "\n".join(lines)


def breaker_message(lang, task_type, opened, failures=0, cooldown=0, task_id=None, error=None):
    """(title, body) of a breaker's opening (``failures`` in a row, the latest ``task_id``'s, which failed with
    ``error``) or closing."""
    words = TEXTS[lang]
    key = "breaker_open_title" if opened else "breaker_closed_title"
    title = words[key].format(task_type=inert(task_type), failures=failures, cooldown=f"{cooldown:g}")
    lines = [f"**{title}**"]
    if task_id is not None:
        lines.append(f"- {words['task']}: #{task_id}" + (f" (`failured show {task_id}`)" if opened else ""))
    if opened and error:  # what the people reading it fix first: the failure itself, as one reads it
        lines.append(f"- {words['error']}: {inert(error_summary(error), MAX_ERROR_CHARS)}")
    return title, "\n".join(lines)


def repeat_message(lang, rows, window_seconds):
    """The first of several same-error notifications, with their count."""
    words = TEXTS[lang]
    # "20 秒", "5 分钟": a window that is not whole minutes is said in seconds, not as 0.333333 minutes
    span = (words["minutes"].format(n=window_seconds / 60) if window_seconds % 60 == 0
            else words["seconds"].format(n=window_seconds))
    note = words["repeat"].format(count=len(rows), span=span)
    first = rows[0]
    title = f"{first.title} — {note}"
    # The first's body under the repeat's own title (a robot would show both, one above the other), and the others
    others = [f"#{row.task_id}" for row in rows[1:] if row.task_id is not None]
    lines = [f"**{title}**", *first.body.split("\n")[1:], f"- {note}"]
    if others:
        lines.append(f"- {words['repeat_tasks']}: {', '.join(others[:REPEAT_IDS])}" + (" …" if len(others) > REPEAT_IDS else ""))
    return title, "\n".join(lines)


REPEAT_IDS = 10  # the other tasks a repeat names


def _counts(values):
    counts = {}
    for value in values:
        counts[value or "-"] = counts.get(value or "-", 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _query_command(db_path):
    """The shell command that queries the database: sqlite3 on a file; psql on a URL (shown masked, quoted:
    a URL may carry ``?`` and ``&``)."""
    client = "psql" if str(db_path).startswith(("postgresql://", "postgres://")) else "sqlite3"
    return f"{client} {shell_word(db_path)}" + (" -c" if client == "psql" else "")


def digest_message(lang, rows, entries, db_path, digest_id, label=lambda name: name):
    """One summary of many notifications: counts by category (by ``label``, the category's name in ``lang``) and
    task type, the first few, where the rest are."""
    words = TEXTS[lang]
    title = words["digest_title"].format(count=len(rows))
    lines = [f"**{title}**", "", words["digest_intro"]]
    alerts = [row for row in rows if row.category is None]
    if alerts:  # a breaker, a threshold, a refused config (no category): first, by their titles, never as a count
        lines += ["", f"**{words['alerts']}**"] + [f"- {shorten(row.title, 120)}" for row in alerts[:DIGEST_COUNTS]]
        if len(alerts) > DIGEST_COUNTS:
            lines.append("- " + words["more_alerts"].format(count=len(alerts) - DIGEST_COUNTS))
    tasks = [row for row in rows if row.category is not None]
    if tasks:
        lines += ["", f"**{words['by_category']}**"]
        lines += _count_lines(words, _counts(inert(label(row.category)) for row in tasks))
        lines += ["", f"**{words['by_task_type']}**"]
        lines += _count_lines(words, _counts(inert(row.task_type) for row in tasks))
    lines += ["", f"**{words['first'].format(n=min(entries, len(rows)))}**"]
    lines += [f"- {shorten(row.title, 120)}" for row in rows[:entries]]
    if rows[0].audience != "user":  # the admins can query the database; the users' group cannot
        lines += ["", f"{words['see_rest']}: `{_query_command(db_path)} \"SELECT task_id, title FROM notifications "
                      f"WHERE merged_into = {digest_id}\"`"]
    return title, "\n".join(lines)


DIGEST_COUNTS = 10  # lines of counts (and of alerts) a digest lists: a robot cuts a long message, and the rest must fit


def _count_lines(words, counts):
    """The first DIGEST_COUNTS counts as lines, and one line for the others."""
    lines = [f"- {name}: {count}" for name, count in counts[:DIGEST_COUNTS]]
    others = counts[DIGEST_COUNTS:]
    if others:
        lines.append("- " + words["others"].format(kinds=len(others), count=sum(count for _, count in others)))
    return lines


FLOORS = ("recovery_rate_percent",)  # thresholds that alert when the value falls under the limit


def threshold_message(lang, check, window_minutes):
    words = TEXTS[lang]
    what = words["thresholds"][check.name].format(key=inert(check.key))  # a task type, or a channel
    kind = "floor" if check.name in FLOORS else "threshold"  # a floor is breached from below
    title = words[f"{kind}_title"].format(what=what, value=check.value, limit=check.limit)
    return title, f"**{title}**\n\n" + words[f"{kind}_body"].format(minutes=window_minutes)


# What to fix on a paused channel, in Chinese: the channels give it in English (the log and `status` say it so).
ADVICE_ZH = {
    DINGTALK_REJECTED[310000]: "钉钉安全校验未通过（加签、时间戳、关键词或 IP 白名单）：请修改配置中该通道的 secret 或关键词，或机器人的安全设置",
    DINGTALK_REJECTED[300001]: "钉钉拒绝了机器人的 access_token（填错了，或机器人已被移除）：请修改配置中该通道的 access_token",
    WECOM_REJECTED[93000]: "企业微信拒绝了 webhook key（填错了，或机器人已被移除）：请修改配置中该通道的 key",
    REFUSED_ADVICE: "邮件服务器拒绝了我们：请修改配置中该通道的用户名、密码、发件人或收件人（或其 ssl/starttls 设置）",
    DEFAULT_ADVICE: "请修改配置中该通道的设置",
    UNSET_VARIABLE_ADVICE: "请在守护进程的环境中设置该变量（systemd 单元的 EnvironmentFile，或启动它的 shell），然后重启守护进程："
                           "环境变量只在启动时读取",
}


def advice_in(lang, advice):
    """A channel's advice in ``lang`` (as given where no translation is known)."""
    return ADVICE_ZH.get(advice, advice) if lang == "zh" else advice


def paused_message(lang, channel, describe, error, advice):
    """(title, body) of the admin alert about a channel paused until its configuration changes (the receiver
    refused its credentials, or a variable it names is not set)."""
    words = TEXTS[lang]
    title = words["paused_title"].format(channel=channel)
    lines = [f"**{title}**", f"- {describe}", f"- {words['error']}: {shorten(error)}", f"- {advice_in(lang, advice)}",
             "", words["paused_body"]]
    return title, "\n".join(lines)


def unconfigured_message(lang, channel, count, hours):
    """(title, body) of the admin alert about a channel taken out of the configuration while rows wait for it."""
    words = TEXTS[lang]
    title = words["unconfigured_title"].format(channel=channel, count=count)
    return title, "\n".join([f"**{title}**", "", words["unconfigured_body"].format(hours=hours)])


def undeliverable_message(lang, channel, describe, row, error, attempts):
    """(title, body) of the admin notice about an outbox row a channel refused on its own until it was given
    up. The row's title and the receiver's answer may carry reporter text: both inert."""
    words = TEXTS[lang]
    title = words["undeliverable_title"].format(channel=channel, id=row.id)
    task = f" ({words['task']} #{row.task_id})" if row.task_id else ""
    lines = [f"**{title}**", f"- {words['channel']}: {describe}",
             f"- {words['notification']}: #{row.id} {inert(row.title, 120)}{task}",
             f"- {words['error']}: {inert(error, MAX_ERROR_CHARS)}", "",
             words["undeliverable_body"].format(attempts=attempts)]
    return title, "\n".join(lines)


def disk_full_message(lang, reason):
    """The alert sent straight to the admin channels when the database's disk is full (no outbox row can be written)."""
    if lang == "zh":
        title = "[failured] 磁盘已满：暂停接收新任务"
        body = f"**{title}**\n\n{shorten(reason)}\n\n释放磁盘空间后 failured 会自动恢复，无需重启。"
    else:
        title = "[failured] Disk full: new work paused"
        body = f"**{title}**\n\n{shorten(reason)}\n\nfailured carries on by itself once space is freed; no restart needed."
    return title, body
