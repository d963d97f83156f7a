"""The words people read in notifications, in Chinese (default) or English."""

from ..clock import iso

MAX_ERROR_CHARS = 300

TEXTS = {
    "zh": {
        "task_title": "[failured] {label}: {task_type} #{task_id}",
        "exhausted_title": "[failured] 重试次数已用完: {task_type} #{task_id}",
        "manual_title": "[failured] 任务类型 {task_type} 没有配置重试处理器，需要人工处理",
        "breaker_open_title": "[failured] 熔断: {task_type} 连续 {failures} 次重试失败，暂停 {cooldown} 秒",
        "breaker_closed_title": "[failured] 熔断恢复: {task_type} 重试已恢复",
        "category": "分类", "task_type": "任务类型", "task": "任务", "error": "错误",
        "attempts": "已重试", "suggestion": "建议", "time": "时间", "inspect": "查看",
        "manual_body": "可恢复的失败任务无法自动重试：请在 failured.toml 中为 {task_type} 配置 handler，然后执行 `failured requeue --type {task_type} --status manual`。",
    },
    "en": {
        "task_title": "[failured] {label}: {task_type} #{task_id}",
        "exhausted_title": "[failured] Retries used up: {task_type} #{task_id}",
        "manual_title": "[failured] Task type {task_type} has no retry handler: needs a person",
        "breaker_open_title": "[failured] Breaker open: {task_type} failed {failures} retries in a row, pausing {cooldown}s",
        "breaker_closed_title": "[failured] Breaker closed: {task_type} retries resumed",
        "category": "Category", "task_type": "Task type", "task": "Task", "error": "Error",
        "attempts": "Retries", "suggestion": "Suggestion", "time": "Time", "inspect": "Inspect",
        "manual_body": "Recoverable failures cannot be retried automatically: configure a handler for {task_type} in failured.toml, then run `failured requeue --type {task_type} --status manual`.",
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
    title = words[title_key].format(label=label, task_type=task.task_type, task_id=task.id)
    ref = f" (ref {task.ref})" if task.ref else ""
    lines = [
        f"**{title}**",
        f"- {words['category']}: {label} (`{category.name}`)",
        f"- {words['task_type']}: {task.task_type}",
        f"- {words['task']}: #{task.id}{ref}",
        f"- {words['error']}: {shorten(task.error_message)}",
    ]
    if attempts is not None:
        lines.append(f"- {words['attempts']}: {attempts}" + (f"/{limit}" if limit else ""))
    suggestion = category.suggestion_in(lang)
    if suggestion:
        lines.append(f"- {words['suggestion']}: {suggestion}")
    lines.append(f"- {words['time']}: {iso(now)}")
    if audience == "admin":
        lines.append(f"- {words['inspect']}: `failured show {task.id}`")
    return title, "\n".join(lines)


def manual_message(lang, task_type):
    words = TEXTS[lang]
    title = words["manual_title"].format(task_type=task_type)
    return title, f"**{title}**\n\n" + words["manual_body"].format(task_type=task_type)


def breaker_message(lang, task_type, opened, failures=0, cooldown=0):
    words = TEXTS[lang]
    key = "breaker_open_title" if opened else "breaker_closed_title"
    title = words[key].format(task_type=task_type, failures=failures, cooldown=f"{cooldown:g}")
    return title, f"**{title}**"
