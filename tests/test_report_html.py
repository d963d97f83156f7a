"""The HTML report: self-contained, escaped, and its data-figure values equal the report dict's."""

import copy
import json
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest

from failured.errors import InputError
from failured.report_html import CSS, colour, render_html

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
        "insights": ["主要失败原因是可恢复网络错误，占比44.4%", "有71.1%的失败是可自动恢复的"],
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
    """Every data-figure the page must carry, with the text it must hold: str() of the dict's value, or "—"."""
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
    return {name: "—" if value in (None, "unknown") else str(value) for name, value in figures.items()}


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

    png = tmp_path / "page.png"  # one Chromium run both dumps the DOM and takes the screenshot
    dom = Page(chromium("--dump-dom", f"--screenshot={png}", "--window-size=1200,2000", html_path.as_uri()))
    assert dom.figures == expected_figures(json.loads(json_path.read_text(encoding="utf-8")))
    assert not dom.attrs_of("script")

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 2000)  # IHDR width, height
    assert len(data) > 10_000, "a blank page compresses to a few KB"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_figure_without_a_value_is_a_dash_with_its_reason_and_never_coloured_good(lang):
    html = render_html(empty_report(), lang)
    page = Page(html)
    for name in ("change_percent", "recovery_rate_percent", "mean_seconds_to_recovery", "p90_seconds_to_recovery",
                 "retries_per_recovery"):
        assert page.figures[name] == "—"
    cards = [div for div in html.split('<div class="card">')[1:]]
    values = ["".join(Page(card.split('<div class="l">')[0]).text) for card in cards]
    assert values == ["0", "—", "—", "—", "—", "—"]  # no "unknown%", no "— s"
    text = "".join(page.text)
    reasons = {"zh": ["上一周期没有失败", "本周期没有结束的重试", "本周期没有任务恢复"],
               "en": ["no failures in the previous period", "no retries finished in this period",
                      "no task recovered in this period"]}[lang]
    assert all(reason in text for reason in reasons)
    assert not [a for a in page.attrs_of("div") if "good" in (a.get("class") or "").split()]
    assert not [a for a in page.attrs_of("span") if "good" in (a.get("class") or "").split()]


def test_unknown_rates_in_tables_are_a_dash_with_the_reason():
    page = Page(render_html(full_report(), "en"))
    assert page.figures["recovery:recoverable_temporary"] == page.figures["threshold:failure_rate_percent:sync"] == "—"
    cells = [cell.split("</td>")[0] for cell in render_html(full_report(), "en").split('<td class="n">')[1:]]
    assert not [cell for cell in cells if "unknown" in "".join(Page(cell).text)]
    text = "".join(page.text)
    assert "no successes reported in the window" in text and "no retries finished in this period" in text


def test_threshold_table_names_its_window_and_each_check_in_words():
    report = full_report() | {"thresholds_window_minutes": 60.0}
    zh, en = "".join(Page(render_html(report)).text), "".join(Page(render_html(report, "en")).text)
    assert "阈值检查（最近60分钟）" in zh and "未知错误数" in zh
    assert "Threshold checks (last 60 min)" in en and "unknown errors" in en


def test_unknown_template_samples_are_shown_once_each():
    report = full_report()
    report["unknown_templates"][0]["samples"] = ["the moon is in the wrong phase 3"] * 3 + ["the moon 4"]
    html = render_html(report)
    assert html.count("<li><code>the moon is in the wrong phase 3</code></li>") == 1
    assert "<li><code>the moon 4</code></li>" in html


CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei")


def test_font_stack_names_common_cjk_fonts_before_the_generic_family():
    stack = CSS.split("font-family:", 1)[1].split(";", 1)[0]
    families = [name.strip().strip('"') for name in stack.split(",")]
    assert families[-1] == "sans-serif"
    assert set(CJK_FONTS) <= set(families[:-1])


def test_chromium_draws_the_pages_chinese_as_glyphs_not_boxes(chromium, tmp_path):
    # Two different characters in the report's own font stack: a missing font draws both as the same box.
    shots = []
    for char in ("失", "败"):
        page = tmp_path / f"{char}.html"
        page.write_text(f'<!DOCTYPE html><meta charset="utf-8"><style>{CSS}body{{font-size:64px}}</style>'
                        f'<body>{char}</body>', encoding="utf-8")
        png = tmp_path / f"{char}.png"
        chromium(f"--screenshot={png}", "--window-size=400,200", page.as_uri())  # tiny windows draw oddly
        shots.append(png.read_bytes())
    assert shots[0] != shots[1], "Chinese renders as boxes: install a CJK font (Debian: apt-get install fonts-noto-cjk)"


LINE_COUNTER = """<script>
const section = [...document.querySelectorAll("section")].find(s => s.querySelector("h2").textContent === TITLE);
const lines = [...section.querySelectorAll("tr")].slice(1).map(row => {
  const range = document.createRange();
  range.selectNodeContents(row.cells[1].lastChild);  // the label's text
  return new Set([...range.getClientRects()].map(rect => Math.round(rect.top))).size;
});
document.body.setAttribute("data-lines", JSON.stringify(lines));
</script>"""


def test_chromium_keeps_each_category_label_on_one_line_in_the_fingerprint_table(chromium, tmp_path):
    report = full_report()
    long_template = ("HTTPSConnectionPool(host='<host>', port=<num>): Max retries exceeded with url: "
                     "/api/v1/tracking/<num>?carrier=<hex>&expand=events (Caused by ConnectTimeoutError("
                     "'Connection to <host> timed out. (connect timeout=<num>)'))")
    report["top_fingerprints"] = [dict(report["top_fingerprints"][0], fingerprint=f"{n:016x}", template=long_template,
                                       category=category)
                                  for n, category in enumerate(report["category_labels"])]
    html = render_html(report).replace("</body>", LINE_COUNTER.replace("TITLE", '"高频错误指纹"') + "</body>")
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    body = Page(chromium("--window-size=1000,1400", "--dump-dom", page.as_uri())).attrs_of("body")[0]
    assert json.loads(body["data-lines"]) == [1] * len(report["category_labels"])
