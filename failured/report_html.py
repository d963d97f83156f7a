"""The analysis report as one self-contained HTML page: inline CSS and SVG, no scripts.

Every key figure sits in an element ``data-figure="NAME"`` whose text is the
report's value exactly (``str()`` of the number), or "—" when the report has
no value for it ("unknown" or null), so a test or a script can read the page
back and compare it with the JSON. A missing figure says why next to it and is
never coloured as good.
"""

import math
import zlib
from datetime import datetime
from html import escape

from .errors import InputError
from .notify.messages import TEXTS as MESSAGE_TEXTS

# One colour per category, the same in every chart (colour-blind friendly, Tableau 10).
PALETTE = {
    "recoverable_network": "#4e79a7",
    "recoverable_temporary": "#59a14f",
    "recoverable_system": "#76b7b2",
    "unrecoverable_data": "#e15759",
    "unrecoverable_business": "#f28e2b",
    "unrecoverable_config": "#b07aa1",
    "unknown": "#9d9d9d",
}
FALLBACK_COLOURS = ("#edc948", "#ff9da7", "#9c755f", "#86bcb6", "#d37295", "#bab0ac")
TASK_TYPE_COLOUR = "#5b6c8f"
NO_VALUE = "—"
# Fonts that hold Chinese glyphs on Linux (fonts-noto-cjk, fonts-wqy-microhei), macOS and Windows; without
# one of them a server renders the page's Chinese as boxes.
FONT_STACK = ('system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","Source Han Sans SC","Noto Sans SC",'
              '"WenQuanYi Micro Hei","PingFang SC","Hiragino Sans GB","Microsoft YaHei",sans-serif')

TEXT = {
    "zh": {
        "html_lang": "zh-CN", "title": "failured 失败模式分析", "period": "分析周期",
        "generated": "生成于", "total": "失败总数", "change": "较上一周期", "recovery": "自动恢复率",
        "mean": "平均恢复耗时", "p90": "P90 恢复耗时", "retries": "每次恢复的重试次数",
        "daily": "每日失败（按类别）", "categories": "类别分布", "task_types": "任务类型",
        "insights": "结论与建议", "fingerprints": "高频错误指纹", "unknowns": "未识别的错误模板", "disagreements": "人工标注与自动分类不一致",
        "decided": "failured 的判断", "labelled": "人工标注",
        "thresholds": "阈值检查", "failures": "失败数", "date": "日期 (UTC)", "count": "次数",
        "share": "占比", "category": "类别", "template": "模板", "first_seen": "首次出现",
        "last_seen": "最近出现", "sample_task": "示例任务", "samples": "样例",
        "pattern": "建议规则", "verified": "已验证", "unverified": "未验证", "name": "检查项",
        "key": "范围", "value": "当前值", "limit": "阈值", "status": "状态", "breached": "超限",
        "ok": "正常", "none": "无数据", "previous": "上一周期", "error": "报告生成失败",
        "task_type": "任务类型", "window": "（最近{minutes:g}分钟）",
        "no_previous": "上一周期没有失败，无从比较", "no_retries": "本周期没有结束的重试",
        "no_recoveries": "本周期没有任务恢复", "no_successes": "窗口内没有上报成功次数",
        "no_retries_window": "窗口内没有结束的重试",
    },
    "en": {
        "html_lang": "en", "title": "failured failure analysis", "period": "Period",
        "generated": "generated", "total": "Failures", "change": "vs previous period",
        "recovery": "Recovery rate", "mean": "Mean time to recovery", "p90": "P90 time to recovery",
        "retries": "Retries per recovery", "daily": "Failures per day by category",
        "categories": "Categories", "task_types": "Task types", "insights": "Insights",
        "fingerprints": "Top error fingerprints", "unknowns": "Unrecognised error templates",
        "disagreements": "Where operators' labels differ from failured", "decided": "failured decided",
        "labelled": "operators said",
        "thresholds": "Threshold checks", "failures": "failures", "date": "date (UTC)",
        "count": "Count", "share": "Share", "category": "Category", "template": "Template",
        "first_seen": "First seen", "last_seen": "Last seen", "sample_task": "Sample task",
        "samples": "Samples", "pattern": "Suggested pattern", "verified": "verified",
        "unverified": "not verified", "name": "Check", "key": "Scope", "value": "Value",
        "limit": "Limit", "status": "Status", "breached": "BREACHED", "ok": "ok",
        "none": "No data", "previous": "previous period", "error": "The report could not be built",
        "task_type": "Task type", "window": " (last {minutes:g} min)",
        "no_previous": "no failures in the previous period to compare with",
        "no_retries": "no retries finished in this period", "no_recoveries": "no task recovered in this period",
        "no_successes": "no successes reported in the window", "no_retries_window": "no retries finished in the window",
    },
}

# Why a reason, per threshold whose value can be unknown.
UNKNOWN_THRESHOLD_REASONS = {"failure_rate_percent": "no_successes", "recovery_rate_percent": "no_retries_window"}

CSS = f"\nbody{{font-family:{FONT_STACK};" + """
margin:0 auto;max-width:1100px;padding:24px;color:#222;background:#fafafa;line-height:1.45}
h1{margin:0 0 4px;font-size:26px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;flex:1 1 130px}
.card .v{font-size:26px;font-weight:600}.card .l{color:#666;font-size:13px}.card .v.none{color:#888}
.why{color:#888;font-size:12px;font-weight:400;white-space:normal}
td.cat,td.cat code{white-space:nowrap}td ul{margin:0;padding-left:18px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px}
th,td{border:1px solid #e3e3e3;padding:5px 8px;text-align:left;vertical-align:top}th{background:#f0f0f0}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}td.bar{width:45%}
code{white-space:pre-wrap;word-break:break-all;font-size:13px;background:#f3f3f3;padding:1px 3px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.legend span{margin-right:14px;font-size:13px;white-space:nowrap}.chart{background:#fff;border:1px solid #ddd}
tr.breached td{background:#fde2e2;font-weight:600}.bad{color:#c62828}.good{color:#2e7d32}.none{color:#888}
"""


def render_html(report: dict, lang: str = "zh") -> str:
    """The whole page for one report dict; the same dict always gives the same text."""
    if lang not in TEXT:
        raise InputError(f"report language {lang!r} is not supported: use 'zh' or 'en'")
    t = TEXT[lang]
    if report.get("success") is False:
        body = f"<h1>{_e(t['title'])}</h1><p class=\"bad\">{_e(t['error'])}: {_e(report.get('error', ''))}</p>"
    else:
        order = category_order(report)
        body = "".join([
            _header(report, t),
            _section(t["daily"], _daily_chart(report, t, order) + _legend(report, order)),
            _section(t["categories"], _category_bars(report, t, order)),
            _section(t["task_types"], _task_type_bars(report, t)),
            _section(t["insights"], _insights(report, t)),
            _section(t["fingerprints"], _fingerprints(report, t)),
            _section(t["unknowns"], _unknowns(report, t)),
            _section(t["disagreements"], _disagreements(report, t)),
            _section(_thresholds_title(report, t), _thresholds(report, t, lang)),
        ])
    return (f'<!DOCTYPE html>\n<html lang="{t["html_lang"]}">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{_e(t["title"])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n')


def colour(category: str) -> str:
    """The fixed colour of a category; one not in the palette gets a stable fallback."""
    if category in PALETTE:
        return PALETTE[category]
    return FALLBACK_COLOURS[zlib.crc32(category.encode("utf-8")) % len(FALLBACK_COLOURS)]


def category_order(report: dict) -> list:
    """Categories by count (largest first, then name), then any seen only in the daily series."""
    dist = report.get("category_distribution") or {}
    order = sorted(dist, key=lambda c: (-_count(dist[c]), c))
    daily = {c for day in report.get("daily_failures") or [] for c in day.get("by_category") or {}}
    return order + sorted(daily - set(order))


def known(value) -> bool:
    """True when the report has a value for a figure ("unknown" and null are not values)."""
    return value is not None and value != "unknown"


def figure_text(value) -> str:
    """How a figure's value is written inside its data-figure element."""
    return str(value) if known(value) else NO_VALUE


def _e(value) -> str:
    return escape(str(value), quote=True)


def _count(value) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _fig(name, value, tag="span") -> str:
    return f'<{tag} data-figure="{_e(name)}">{_e(figure_text(value))}</{tag}>'


def _figure(name, value, unit="", why="") -> str:
    """A figure with its unit, or "—" with the reason there is none."""
    if known(value):
        return _fig(name, value) + unit
    return _fig(name, value) + (f'<div class="why">{_e(why)}</div>' if why else "")


def _section(title, content) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{content}\n</section>\n"


def _label(report, category) -> str:
    return (report.get("category_labels") or {}).get(category) or category


def _when(stamp) -> str:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(stamp)


def _none(t) -> str:
    return f'<p class="none">{_e(t["none"])}</p>'


def _table(heads, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _header(report, t) -> str:
    recovery = report.get("recovery") or {}
    previous = report.get("previous_period") or {}
    change = previous.get("change_percent")
    previous_total = f'{_e(t["previous"])}: {_fig("previous_total_failures", previous.get("total_failures"))}'
    rate, mean, p90, retries = (recovery.get(k) for k in ("rate_percent", "mean_seconds_to_recovery",
                                                          "p90_seconds_to_recovery", "retries_per_recovery"))
    sign = "+" if known(change) and _count(change) > 0 else ""
    html = "".join([
        _card(_e(t["total"]), "total_failures", report.get("total_failures", 0)),
        _card(f'{_e(t["change"])} ({previous_total})', "change_percent", change, "%", t["no_previous"],
              _tone(change), sign),
        _card(_e(t["recovery"]), "recovery_rate_percent", rate, "%", t["no_retries"]),
        _card(_e(t["mean"]), "mean_seconds_to_recovery", mean, " s", t["no_recoveries"]),
        _card(_e(t["p90"]), "p90_seconds_to_recovery", p90, " s", t["no_recoveries"]),
        _card(_e(t["retries"]), "retries_per_recovery", retries, "", t["no_recoveries"]),
    ])
    period = (f'{_e(t["period"])}: {_e(report.get("analysis_period", ""))} · '
              f'{_e(_when(report.get("period_start")))} – {_e(_when(report.get("period_end")))} · '
              f'{_e(t["generated"])} {_e(_when(report.get("generated_at")))}')
    return (f'<header>\n<h1>{_e(t["title"])}</h1>\n<div class="sub">{period}</div>\n'
            f'<div class="cards">{html}</div>\n</header>\n')


def _card(label, name, value, unit="", why="", tone="", sign="") -> str:
    """One key figure with its unit, or "—" in grey with the reason it has no value."""
    if known(value):
        shown, reason = f"{sign}{_fig(name, value)}{unit}", ""
    else:
        shown, reason, tone = _fig(name, value), f'<div class="why">{_e(why)}</div>', "none"
    return f'<div class="card"><div class="v {tone}">{shown}</div><div class="l">{label}</div>{reason}</div>'


def _tone(change) -> str:
    """More failures than before is bad, fewer is good; no change or no comparison is neither."""
    if not known(change) or not _count(change):
        return ""
    return "bad" if _count(change) > 0 else "good"


def _nice_step(top) -> int:
    """The smallest 1-2-5 step that splits 0..top into at most five ticks."""
    steps = (f * 10**k for k in range(12) for f in (1, 2, 5))
    return next(step for step in steps if math.ceil(top / step) <= 5)


# The daily chart's geometry, in SVG user units (the SVG scales to the page width).
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 900, 300, 48, 12, 22, 46
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def _daily_chart(report, t, order) -> str:
    days = report.get("daily_failures") or []
    if not days:
        return _none(t)
    highest = max([_count(d.get("total")) for d in days] + [1])
    step = _nice_step(highest)
    y_max = step * math.ceil(highest / step)
    slot = PLOT_W / len(days)
    every = math.ceil(len(days) / 14)  # keep date labels from overlapping on long periods
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="{_e(t["daily"])}" font-size="11" font-family="inherit">', _axes(t, y_max, step)]
    for i, day in enumerate(days):
        parts.append(_day_column(report, order, day, LEFT + i * slot, slot, y_max, labelled=i % every == 0))
    return "\n".join(parts) + "</svg>"


def _y(value, y_max) -> float:
    return TOP + PLOT_H - value / y_max * PLOT_H


def _axes(t, y_max, step) -> str:
    ticks = "".join(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_y(v, y_max):.1f}" y2="{_y(v, y_max):.1f}" '
                    f'stroke="#e5e5e5"/><text x="{LEFT - 6}" y="{_y(v, y_max) + 4:.1f}" text-anchor="end" '
                    f'fill="#555">{v}</text>' for v in range(0, int(y_max) + 1, step))
    return (f'{ticks}<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H}" stroke="#888"/>'
            f'<text x="{LEFT + PLOT_W / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" fill="#555">{_e(t["date"])}'
            f'</text><text transform="translate(13 {TOP + PLOT_H / 2:.1f}) rotate(-90)" text-anchor="middle" '
            f'fill="#555">{_e(t["failures"])}</text>')


def _day_column(report, order, day, x, slot, y_max, labelled) -> str:
    """One day's stacked bar (categories in legend order, bottom up), its total above, its date below."""
    date, by_category, base, parts = day.get("date"), day.get("by_category") or {}, TOP + PLOT_H, []
    for category in (c for c in order if _count(by_category.get(c))):
        value = by_category[category]
        height = value / y_max * PLOT_H
        base -= height
        parts.append(f'<rect x="{x + slot * 0.15:.1f}" y="{base:.1f}" width="{slot * 0.7:.1f}" height="{height:.1f}" '
                     f'fill="{colour(category)}" data-value="{_e(value)}" data-category="{_e(category)}" '
                     f'data-date="{_e(date)}"><title>{_e(date)} {_e(_label(report, category))}: {_e(value)}</title>'
                     f'</rect>')
    centre = x + slot / 2
    parts.append(f'<text x="{centre:.1f}" y="{_y(_count(day.get("total")), y_max) - 4:.1f}" text-anchor="middle" '
                 f'fill="#222" data-figure="day:{_e(date)}">{_e(figure_text(day.get("total")))}</text>')
    if labelled:
        parts.append(f'<text x="{centre:.1f}" y="{TOP + PLOT_H + 16}" text-anchor="middle" fill="#555">'
                     f'{_e(str(date or "")[5:])}</text>')
    return "".join(parts)


def _legend(report, order) -> str:
    items = "".join(f'<span><i class="sw" style="background:{colour(c)}"></i>{_e(_label(report, c))}</span>'
                    for c in order)
    return f'<div class="legend">{items}</div>' if order else ""


def _bar(value, largest, fill) -> str:
    width = 100 * _count(value) / largest if largest else 0
    return (f'<td class="bar"><svg viewBox="0 0 100 12" width="100%" height="14" preserveAspectRatio="none" '
            f'><rect width="{width:.2f}" height="12" fill="{fill}" '
            f'data-value="{_e(value)}"/></svg></td>')


def _share(value, total) -> str:
    return f"{100 * _count(value) / total:.1f}%" if _count(total) else "—"


def _category_bars(report, t, order) -> str:
    dist = report.get("category_distribution") or {}
    if not dist:
        return _none(t)
    total, largest = report.get("total_failures", 0), max(_count(v) for v in dist.values())
    by_recovery = (report.get("recovery") or {}).get("by_category") or {}
    rows = []
    for c in (c for c in order if c in dist):
        rate_cell = (_figure(f"recovery:{c}", by_recovery[c].get("rate_percent"), "%", t["no_retries"])
                     if c in by_recovery else NO_VALUE)
        rows.append(f'<tr><td class="cat"><i class="sw" style="background:{colour(c)}"></i>{_e(_label(report, c))} '
                    f'<code>{_e(c)}</code></td>{_bar(dist[c], largest, colour(c))}'
                    f'<td class="n">{_fig(f"category:{c}", dist[c])}</td><td class="n">{_share(dist[c], total)}</td>'
                    f'<td class="n">{rate_cell}</td></tr>')
    return _table([t["category"], "", t["count"], t["share"], t["recovery"]], rows)


def _task_type_bars(report, t) -> str:
    types = report.get("task_type_failures") or {}
    if not types:
        return _none(t)
    total, largest = report.get("total_failures", 0), max(_count(v) for v in types.values())
    rows = [f'<tr><td><code>{_e(name)}</code></td>{_bar(n, largest, TASK_TYPE_COLOUR)}'
            f'<td class="n">{_fig(f"task_type:{name}", n)}</td><td class="n">{_share(n, total)}</td></tr>'
            for name, n in sorted(types.items(), key=lambda kv: (-_count(kv[1]), kv[0]))]
    return _table([t["task_type"], "", t["count"], t["share"]], rows)


def _insights(report, t) -> str:
    items = report.get("insights") or []
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else _none(t)


def _fingerprints(report, t) -> str:
    items = report.get("top_fingerprints") or []
    rows = [f'<tr><td><code>{_e(f.get("template"))}</code><br><span class="sub">{_e(f.get("fingerprint"))}</span></td>'
            f'<td class="cat"><i class="sw" style="background:{colour(str(f.get("category")))}"></i>'
            f'{_e(_label(report, f.get("category")))}</td>'
            f'<td class="n">{_fig("fingerprint:" + str(f.get("fingerprint")), f.get("count"))}</td>'
            f'<td class="n">{_e(_when(f.get("first_seen")))}</td><td class="n">{_e(_when(f.get("last_seen")))}</td>'
            f'<td class="n">{_e(figure_text(f.get("sample_task_id")))}</td></tr>' for f in items]
    heads = [t["template"], t["category"], t["count"], t["first_seen"], t["last_seen"], t["sample_task"]]
    return _table(heads, rows) if rows else _none(t)


def _unknowns(report, t) -> str:
    rows = []
    for u in report.get("unknown_templates") or []:
        # Distinct samples only: reports written before the analysis de-duplicated them repeat one line.
        samples = "".join(f"<li><code>{_e(s)}</code></li>" for s in dict.fromkeys(u.get("samples") or []))
        pattern = f'<code>{_e(u["suggested_pattern"])}</code>' if u.get("suggested_pattern") else "—"
        verified = (f'<span class="good">✓ {_e(t["verified"])}</span>' if u.get("pattern_verified")
                    else f'<span class="bad">✗ {_e(t["unverified"])}</span>')
        rows.append(f'<tr><td><code>{_e(u.get("template"))}</code><br><span class="sub">{_e(u.get("fingerprint"))}'
                    f'</span></td><td class="n">{_fig("unknown:" + str(u.get("fingerprint")), u.get("count"))}</td>'
                    f'<td><ul>{samples}</ul></td><td>{pattern}<br>{verified}</td></tr>')
    return _table([t["template"], t["count"], t["samples"], t["pattern"]], rows) if rows else _none(t)


def _disagreements(report, t) -> str:
    rows = [f'<tr><td class="cat">{_e(_label(report, d.get("decided")))}</td>'
            f'<td class="cat">{_e(_label(report, d.get("labelled")))}</td>'
            f'<td class="n">{_fig("labels:" + str(d.get("decided")) + ">" + str(d.get("labelled")), d.get("count"))}'
            f'</td></tr>' for d in report.get("label_disagreements") or []]
    return _table([t["decided"], t["labelled"], t["count"]], rows) if rows else _none(t)


def _thresholds_title(report, t) -> str:
    """The section title names the window: the checks look at the last hour, not the whole period."""
    minutes = report.get("thresholds_window_minutes")
    return t["thresholds"] + t["window"].format(minutes=minutes) if _count(minutes) else t["thresholds"]


def _threshold_name(name, key, lang) -> str:
    """The check's name in words (as the alerts word it), with its code name below."""
    words = MESSAGE_TEXTS[lang]["thresholds"].get(str(name))
    said = f'{_e(words.format(key=key))}<br>' if words else ""
    return f'{said}<code>{_e(name)}</code>'


def _thresholds(report, t, lang) -> str:
    rows = []
    for c in report.get("thresholds") or []:
        name, key, value = c.get("name"), c.get("key"), c.get("value")
        why = t.get(UNKNOWN_THRESHOLD_REASONS.get(str(name), ""), "")
        rows.append(f'<tr class="{"breached" if c.get("breached") else "ok"}"><td>{_threshold_name(name, key, lang)}'
                    f'</td><td>{_e(key)}</td><td class="n">{_figure(f"threshold:{name}:{key}", value, "", why)}</td>'
                    f'<td class="n">{_e(figure_text(c.get("limit")))}</td>'
                    f'<td>{_e(t["breached"] if c.get("breached") else t["ok"])}</td></tr>')
    return _table([t["name"], t["key"], t["value"], t["limit"], t["status"]], rows) if rows else _none(t)
