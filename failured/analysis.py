"""The failure-pattern analysis report: the classic fields and what an operator needs to act.

Everything is aggregated in SQL over indexed columns; Python only shapes the
few hundred rows that come back, so a million failures analyse in seconds.
"""

import time

from .clock import iso
from .store import aggregates
from .suggest import suggest
from .thresholds import (RECOVERABLE_PREFIX, UNKNOWN, evaluate, recovery_below_target,
                         recovery_by_category, recovery_total)

TOP_FINGERPRINTS = 10
TOP_UNKNOWN = 20
SAMPLES = 3
SAMPLE_SCAN = 500  # newest rows of a fingerprint searched for distinct samples
OTHER_SAMPLES = 200  # per category, to check a suggested pattern steals nothing
RECOVERABLE = RECOVERABLE_PREFIX
DAY = 86400

WORDS = {
    "zh": {
        "period": "{days}天",
        "main": "主要失败原因是{category}，占比{share:.1f}%",
        "recoverable": "有{share:.1f}%的失败是可自动恢复的",
        "advice": "建议{suggestion}",
        "rate_low": "自动恢复成功率为{rate:.1f}%，低于{limit:g}%的目标",
        "change": "失败数比上一周期{direction}{change:.1f}%",
        "up": "增加", "down": "减少",
        "unknown": "有{count}类未知错误（共{total}次），报告中附有可直接使用的匹配规则建议",
        "unknown_top": "有{count}类未知错误（共{total}次），报告中附有最常见的{shown}类可直接使用的匹配规则建议",
        "none": "最近{days}天没有失败任务",
        "headline": "{period}：{total}个失败任务",
    },
    "en": {
        "period": "{days} days",
        "main": "The main failure cause is {category}, {share:.1f}% of failures",
        "recoverable": "{share:.1f}% of failures are automatically recoverable",
        "advice": "Advice: {suggestion}",
        "rate_low": "Automatic recovery rate is {rate:.1f}%, below the {limit:g}% target",
        "change": "Failures {direction} {change:.1f}% against the previous period",
        "up": "rose", "down": "fell",
        "unknown": "{count} kinds of unknown error ({total} failures); the report suggests a pattern for each",
        "unknown_top": "{count} kinds of unknown error ({total} failures); the report suggests a pattern for the {shown} "
                       "most frequent",
        "none": "No failures in the last {days} days",
        "headline": "{period}: {total} failures",
    },
}


def _sum_by(rows, key):
    totals = {}
    for row in rows:
        name = key(row)
        totals[name] = totals.get(name, 0) + row[5]
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def _recovery(store, start, end):
    """The recovery rate (overall and per category) and how long recoveries took, for retries ended in the period."""
    by_category = recovery_by_category(store, start, end)
    total = recovery_total(by_category)
    mean, p90 = _time_to_recovery(store, start, end)
    return {
        "rate_percent": total.rate_percent,
        "by_category": {c: {"recovered": r.recovered, "finished": r.finished, "rate_percent": r.rate_percent}
                        for c, r in by_category.items()},
        "mean_seconds_to_recovery": mean,
        "p90_seconds_to_recovery": p90,
        "retries_per_recovery": round(total.retries / total.recovered, 2) if total.recovered else None,
    }


def _time_to_recovery(store, start, end):
    """Mean (exact) and p90 (to the second, from a histogram: no sort of every duration)."""
    histogram = aggregates.recovery_histogram(store, start, end, RECOVERABLE)
    total = sum(count for _, count, _ in histogram)
    if not total:
        return None, None
    mean = sum(seconds for _, _, seconds in histogram) / total
    rank, seen = 0.9 * total, 0
    for seconds, count, _ in histogram:
        seen += count
        if seen >= rank:
            return round(mean, 1), float(seconds)
    return round(mean, 1), float(histogram[-1][0])


def _daily(rows, start_epoch, end_epoch):
    found = {}
    for row in rows:
        day, category, count = row[0], row[1], row[5]
        by_category = found.setdefault(day, {})
        by_category[category] = by_category.get(category, 0) + count
    days = []
    day = start_epoch - start_epoch % DAY
    while day < end_epoch:
        name = time.strftime("%Y-%m-%d", time.gmtime(day))
        by_category = dict(sorted(found.get(name, {}).items()))
        days.append({"date": name, "total": sum(by_category.values()), "by_category": by_category})
        day += DAY
    return days


def _by_fingerprint(rows, only_category=None):
    """fingerprint -> [count, category with most, first seen, last seen, newest task id]."""
    errors = {}
    for _, category, _, _, fp, count, _, first, last, newest in rows:
        if fp is None or (only_category and category != only_category):
            continue
        entry = errors.setdefault(fp, {"count": 0, "categories": {}, "first": first, "last": last, "sample": newest})
        entry["count"] += count
        entry["categories"][category] = entry["categories"].get(category, 0) + count
        entry["first"], entry["last"] = min(entry["first"], first), max(entry["last"], last)
        entry["sample"] = max(entry["sample"], newest)
    return sorted(errors.items(), key=lambda item: (-item[1]["count"], item[0]))


def _top_fingerprints(store, rows):
    return [{"fingerprint": fp, "template": aggregates.newest_template(store, fp),
             "category": max(e["categories"].items(), key=lambda item: item[1])[0], "count": e["count"],
             "first_seen": iso(e["first"]), "last_seen": iso(e["last"]), "sample_task_id": e["sample"]}
            for fp, e in _by_fingerprint(rows)[:TOP_FINGERPRINTS]]


def _unknown_templates(store, unknown_groups, categories, start, end):
    groups = unknown_groups[:TOP_UNKNOWN]
    if not groups:
        return []
    others = [message for category in categories if category not in ("unknown", "unclassified")
              for message in aggregates.category_messages(store, category, start, end, OTHER_SAMPLES)]
    templates = []
    for fingerprint, entry in groups:
        template = aggregates.newest_template(store, fingerprint)
        # The newest distinct messages (a storm repeats one line: show it once).
        samples = aggregates.distinct_samples(store, fingerprint, SAMPLE_SCAN, SAMPLES)
        pattern, verified = suggest(template, samples, others)
        templates.append({"fingerprint": fingerprint, "template": template, "count": entry["count"],
                          "samples": samples, "suggested_pattern": pattern, "pattern_verified": verified})
    return templates


def _labels(snapshot, categories, lang):
    """Each category's label in the report language; a category the rules no longer know keeps its name."""
    found = {name: snapshot.ruleset.category(name) for name in categories}
    return {name: category.label_in(lang) if category else name for name, category in found.items()}


def _insights(lang, days, total, categories, labels, snapshot, recovery, previous_total, unknown_kinds, unknown,
              limits):
    words = WORDS[lang]
    if not total:
        return [words["none"].format(days=days)]
    top, top_count = next(iter(categories.items()))
    insights = [words["main"].format(category=labels[top], share=100.0 * top_count / total)]
    recoverable = sum(n for c, n in categories.items() if c.startswith(RECOVERABLE))
    insights.append(words["recoverable"].format(share=100.0 * recoverable / total))
    for name, count in list(categories.items())[:2]:
        category = snapshot.ruleset.category(name)
        if category is not None and category.suggestion_in(lang) and count / total >= 0.2:
            suggestion = category.suggestion_in(lang)
            insights.append(words["advice"].format(suggestion=suggestion.removeprefix("建议")))
    rate = recovery["rate_percent"]
    if recovery_below_target(rate, limits):
        insights.append(words["rate_low"].format(rate=rate, limit=limits.recovery_rate_percent))
    if previous_total:
        change = 100.0 * (total - previous_total) / previous_total
        if abs(change) >= 10:
            insights.append(words["change"].format(direction=words["up" if change > 0 else "down"], change=abs(change)))
    if unknown:  # the report lists the TOP_UNKNOWN most frequent; the insight counts them all
        wording = words["unknown" if unknown_kinds == len(unknown) else "unknown_top"]
        insights.append(wording.format(count=unknown_kinds, total=categories.get("unknown", 0), shown=len(unknown)))
    return insights


def headline(report, lang):
    """The report's first line for a terminal: its period and failure count, in the report's language."""
    return WORDS[lang]["headline"].format(period=report["analysis_period"], total=report["total_failures"])


def analysis_report(store, snapshot, now, days=7, lang="zh"):
    """The analysis report over the ``days`` before ``now`` (and the same span before, for the change)."""
    with store.big_read():
        return _analysis_report(store, snapshot, now, days, lang)


def _analysis_report(store, snapshot, now, days, lang):
    start_epoch = now - days * DAY
    rows = aggregates.period_scan(store, start_epoch, now)
    categories = _sum_by(rows, lambda row: row[1])
    total = sum(categories.values())
    previous = aggregates.failures_by_category(store, start_epoch - days * DAY, start_epoch)
    previous_total = sum(previous.values())
    recovery = _recovery(store, start_epoch, now)
    unknown_groups = _by_fingerprint(rows, "unknown")
    unknown = _unknown_templates(store, unknown_groups, categories, start_epoch, now)
    labels = _labels(snapshot, categories, lang)
    return {
        "success": True,
        "analysis_period": WORDS[lang]["period"].format(days=days),
        "period_start": iso(start_epoch),
        "period_end": iso(now),
        "generated_at": iso(now),
        "total_failures": total,
        "category_distribution": categories,
        "category_labels": labels,
        "task_type_failures": _sum_by(rows, lambda row: row[2]),
        "insights": _insights(lang, days, total, categories, labels, snapshot, recovery, previous_total,
                              len(unknown_groups), unknown, snapshot.thresholds),
        "daily_failures": _daily(rows, start_epoch, now),
        "recovery": recovery,
        "top_fingerprints": _top_fingerprints(store, rows),
        "previous_period": {"total_failures": previous_total,
                            "change_percent": (round(100.0 * (total - previous_total) / previous_total, 1)
                                               if previous_total else UNKNOWN),
                            "category_distribution": dict(sorted(previous.items(), key=lambda i: (-i[1], i[0])))},
        "thresholds": [check.to_dict() for check in evaluate(store, now, snapshot.thresholds)],
        "thresholds_window_minutes": snapshot.thresholds.window_minutes,
        "unknown_templates": unknown,
        # Where operators corrected failured: the rules' weak spots, by category pair.
        "label_disagreements": [{"decided": decided, "labelled": labelled, "count": count}
                                for decided, labelled, count in store.label_disagreements(start_epoch, now)],
    }
