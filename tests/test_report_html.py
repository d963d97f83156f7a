"""The HTML report: self-contained, escaped, and its data-figure values equal the report dict's."""

import copy
import json
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest

from failured.errors import InputError
from failured.report_html import colour, render_html

HOSTILE = "<script>alert(1)</script> \"quoted\" 'single' & <b>bold</b>"


def day(date, **by_category):
    return {"date": date, "total": sum(by_category.values()), "by_category": by_category}


def full_report():
    return {
        "success": True,
        "analysis_period": "7天",
        "period_start": "2026-11-18T17:00:00Z",
        "period_end": "2026-11-25T17:00:00Z",
        "generated_at": "2026-11-25T17:00:03Z",
        "total_failures": 45,
        "category_distribution": {"recoverable_network": 20, "recoverable_temporary": 12,
                                  "unrecoverable_data": 8, "unknown": 5},
        "category_labels": {"recoverable_network": "可恢复网络错误", "recoverable_temporary": "可恢复临时错误",
                            "unrecoverable_data": "不可恢复数据错误", "unknown": "未知错误"},
        "task_type_failures": {"tracking_update": 25, "receipt_generation": 15, "screenshot_capture": 5},
        "insights": ["主要失败原因是recoverable_network，占比44.4%", "有71.1%的失败是可自动恢复的"],
        "daily_failures": [
            day("2026-11-19", recoverable_network=3, unknown=2),
            day("2026-11-20", recoverable_network=4, recoverable_temporary=5),
            day("2026-11-21"),
            day("2026-11-22", recoverable_network=6, unrecoverable_data=6),
            day("2026-11-23", recoverable_network=4, recoverable_temporary=3),
            day("2026-11-24", recoverable_temporary=4, unknown=2),
            day("2026-11-25", recoverable_network=3, unrecoverable_data=2, unknown=1),
        ],
        "recovery": {"rate_percent": 71.1,
                     "by_category": {"recoverable_network": {"recovered": 8, "finished": 10, "rate_percent": 80.0},
                                     "recoverable_temporary": {"recovered": 0, "finished": 0,
                                                               "rate_percent": "unknown"}},
                     "mean_seconds_to_recovery": 123.4, "p90_seconds_to_recovery": 300.0,
                     "retries_per_recovery": 1.7},
        "top_fingerprints": [{"fingerprint": "a1b2c3d4e5f60718", "template": "connection to <host> timed out after <num>s",
                              "category": "recoverable_network", "count": 17, "first_seen": "2026-11-19T02:00:00Z",
                              "last_seen": "2026-11-25T11:00:00Z", "sample_task_id": 42}],
        "previous_period": {"total_failures": 30, "change_percent": 50.0, "category_distribution": {}},
        "thresholds": [{"name": "unknown_errors", "key": "all", "value": 12, "limit": 10, "breached": True},
                       {"name": "failure_rate_percent", "key": "sync", "value": "unknown", "limit": 20.0,
                        "breached": False}],
        "unknown_templates": [{"fingerprint": "0f0e0d0c0b0a0908", "template": "the moon is in the wrong phase <num>",
                               "count": 4, "samples": ["the moon is in the wrong phase 3"],
                               "suggested_pattern": "the\\s+moon\\s+is\\s+in\\s+the\\s+wrong\\s+phase",
                               "pattern_verified": True}],
    }


def empty_report():
    return {
        "success": True, "analysis_period": "7 days",
        "period_start": "2026-11-18T17:00:00Z", "period_end": "2026-11-25T17:00:00Z",
        "generated_at": "2026-11-25T17:00:03Z", "total_failures": 0,
        "category_distribution": {}, "category_labels": {}, "task_type_failures": {}, "insights": [],
        "daily_failures": [day(f"2026-11-{d}") for d in range(19, 26)],
        "recovery": {"rate_percent": "unknown", "by_category": {}, "mean_seconds_to_recovery": "unknown",
                     "p90_seconds_to_recovery": "unknown", "retries_per_recovery": "unknown"},
        "top_fingerprints": [], "previous_period": {"total_failures": 0, "change_percent": "unknown",
                                                    "category_distribution": {}},
        "thresholds": [], "unknown_templates": [],
    }


def hostile_report():
    report = full_report()
    report["category_distribution"][HOSTILE] = 1
    report["category_labels"][HOSTILE] = HOSTILE
    report["task_type_failures"][HOSTILE] = 1
    report["insights"].append(HOSTILE)
    report["daily_failures"][0]["by_category"][HOSTILE] = 1
    report["daily_failures"][0]["total"] += 1
    report["top_fingerprints"].append({"fingerprint": '"><script>x</script>', "template": HOSTILE,
                                       "category": HOSTILE, "count": 1, "first_seen": HOSTILE,
                                       "last_seen": HOSTILE, "sample_task_id": HOSTILE})
    report["unknown_templates"].append({"fingerprint": "f&f", "template": HOSTILE, "count": 2,
                                        "samples": [HOSTILE, "<img src=http://evil.example/x.png>"],
                                        "suggested_pattern": HOSTILE, "pattern_verified": False})
    report["thresholds"].append({"name": HOSTILE, "key": "<k>", "value": 1, "limit": 0, "breached": True})
    return report


def expected_figures(report):
    """Every data-figure the page must carry, with the text it must hold: str() of the dict's value."""
    recovery, previous = report["recovery"], report["previous_period"]
    figures = {
        "total_failures": report["total_failures"],
        "previous_total_failures": previous["total_failures"],
        "change_percent": previous["change_percent"],
        "recovery_rate_percent": recovery["rate_percent"],
        "mean_seconds_to_recovery": recovery["mean_seconds_to_recovery"],
        "p90_seconds_to_recovery": recovery["p90_seconds_to_recovery"],
        "retries_per_recovery": recovery["retries_per_recovery"],
    }
    figures.update({f"category:{c}": n for c, n in report["category_distribution"].items()})
    figures.update({f"recovery:{c}": r["rate_percent"] for c, r in recovery["by_category"].items()
                    if c in report["category_distribution"]})
    figures.update({f"task_type:{t}": n for t, n in report["task_type_failures"].items()})
    figures.update({f"day:{d['date']}": d["total"] for d in report["daily_failures"]})
    figures.update({f"fingerprint:{f['fingerprint']}": f["count"] for f in report["top_fingerprints"]})
    figures.update({f"unknown:{u['fingerprint']}": u["count"] for u in report["unknown_templates"]})
    figures.update({f"threshold:{c['name']}:{c['key']}": c["value"] for c in report["thresholds"]})
    return {name: str(value) for name, value in figures.items()}


VOID = {"meta", "br", "img", "link", "input", "hr"}


class Page(HTMLParser):
    """What the tests read back: tags with attributes, data-figure texts, all text, the title."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.figures, self.text, self.title = [], {}, [], None
        self._open = []  # [tag, figure name or None, collected text]
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in VOID:
            self._open.append([tag, attrs.get("data-figure"), []])

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        names = [entry[0] for entry in self._open]
        if tag not in names:
            return
        while True:
            name, figure, text = self._open.pop()
            if figure is not None:
                assert figure not in self.figures, f"data-figure {figure!r} appears twice"
                self.figures[figure] = "".join(text)
            if name == "title" and self.title is None:  # the page's, which comes before any SVG <title>
                self.title = "".join(text)
            if name == tag:
                return

    def handle_data(self, data):
        self.text.append(data)
        for entry in self._open:
            entry[2].append(data)

    def attrs_of(self, tag):
        return [attrs for name, attrs in self.tags if name == tag]


def assert_self_contained(page):
    assert not page.attrs_of("script")
    assert not any(attrs.get(a, "").strip().lower().startswith(("http:", "https:", "//", "javascript:"))
                   for _, attrs in page.tags for a in ("src", "href", "action", "xlink:href"))
    assert not page.attrs_of("link") and not page.attrs_of("img") and not page.attrs_of("iframe")
    style = "".join(page.text)
    assert "@import" not in style and "@font-face" not in style and "url(" not in style


@pytest.mark.parametrize("make", [full_report, empty_report, hostile_report])
def test_every_figure_equals_the_report_value(make):
    report = make()
    page = Page(render_html(report))
    assert page.figures == expected_figures(report)


def test_page_is_self_contained_utf8_with_no_scripts_or_external_urls():
    html = render_html(hostile_report())
    page = Page(html)
    assert_self_contained(page)
    assert {"charset": "utf-8"} in page.attrs_of("meta")
    assert "http" not in html.replace("http://evil.example/x.png", "")


def test_hostile_strings_render_as_text_not_markup():
    html = render_html(hostile_report())
    page = Page(html)
    assert not page.attrs_of("script") and not page.attrs_of("img") and not page.attrs_of("b")
    text = "".join(page.text)
    assert text.count(HOSTILE) >= 8  # label, task type, insight, template, samples, pattern, threshold...
    assert "<img src=http://evil.example/x.png>" in text
    assert "&amp;" in html and "&quot;quoted&quot;" in html and "&lt;script&gt;" in html


def test_titles_and_lang_follow_the_language():
    zh, en = Page(render_html(full_report())), Page(render_html(full_report(), lang="en"))
    assert zh.attrs_of("html") == [{"lang": "zh-CN"}] and en.attrs_of("html") == [{"lang": "en"}]
    assert zh.title == "failured 失败模式分析"
    assert en.title == "failured failure analysis"
    assert "类别分布" in "".join(zh.text) and "Categories" in "".join(en.text)
    with pytest.raises(InputError):
        render_html(full_report(), lang="fr")


def test_stacked_bars_add_up_to_each_day_and_use_the_category_colour():
    report = full_report()
    rects = [a for a in Page(render_html(report)).attrs_of("rect") if "data-date" in a]
    for d in report["daily_failures"]:
        assert sum(int(a["data-value"]) for a in rects if a["data-date"] == d["date"]) == d["total"]
    assert all(a["fill"] == colour(a["data-category"]) for a in rects)
    assert colour("recoverable_network") != colour("unrecoverable_data")


def test_category_bars_use_the_same_colours_as_the_daily_chart():
    report = full_report()
    bars = [a for a in Page(render_html(report)).attrs_of("rect") if "data-date" not in a]
    fills = {a["data-value"]: a["fill"] for a in bars[:len(report["category_distribution"])]}
    assert fills == {str(n): colour(c) for c, n in report["category_distribution"].items()}


def test_same_report_gives_the_same_page_whatever_the_key_order():
    report = full_report()
    reordered = copy.deepcopy(report)
    reordered["category_distribution"] = dict(reversed(report["category_distribution"].items()))
    reordered["task_type_failures"] = dict(reversed(report["task_type_failures"].items()))
    assert render_html(report) == render_html(report) == render_html(reordered)
    assert render_html(report, "en") == render_html(json.loads(json.dumps(report)), "en")


def test_breached_thresholds_are_highlighted_and_patterns_are_code():
    page = Page(render_html(full_report()))
    assert [a.get("class") for a in page.attrs_of("tr") if a.get("class") in ("breached", "ok")] == ["breached", "ok"]
    assert "the\\s+moon\\s+is\\s+in\\s+the\\s+wrong\\s+phase" in render_html(full_report())


def test_sparse_and_failed_reports_render():
    assert "data-figure" in render_html({"success": True, "total_failures": 0})
    page = Page(render_html({"success": False, "error": HOSTILE}, lang="en"))
    assert HOSTILE in "".join(page.text) and not page.attrs_of("script")


# --- a real browser -------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium(tmp_path):
    """Runs headless Chromium with the flags this closed-network machine needs; returns its stdout."""
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if binary is None:
        pytest.skip("Chromium not installed: apt-get install chromium")

    def run(*args):
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    return run


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_chromium_renders_the_page_with_the_report_figures(chromium, tmp_path, lang):
    json_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    json_path.write_text(json.dumps(full_report(), ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(json.loads(json_path.read_text(encoding="utf-8")), lang), encoding="utf-8")

    dom = Page(chromium("--dump-dom", html_path.as_uri()))
    assert dom.figures == expected_figures(json.loads(json_path.read_text(encoding="utf-8")))
    assert not dom.attrs_of("script")

    png = tmp_path / "page.png"
    chromium(f"--screenshot={png}", "--window-size=1200,2000", html_path.as_uri())
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 2000)  # IHDR width, height
    assert len(data) > 10_000, "a blank page compresses to a few KB"
