"""Both reports over a known history built with an injected clock: every number, both languages."""

import json

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured import reports
from failured.analysis import analysis_report
from failured.config import load_config
from failured.engine import Engine
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.report_html import render_html
from failured.rules import re2_options
from failured.settings import Settings
from failured.suggest import suggest
from test_report_html import Page, expected_figures

HANDLER = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\n'
SEED_PROCESSING_FIELDS = {"success", "message", "total_processed", "stats", "results", "processed_at"}
SEED_RESULT_FIELDS = {"task_id", "category", "action_taken", "success", "message", "retry_delay"}
SEED_ANALYSIS_FIELDS = {"success", "analysis_period", "total_failures", "category_distribution",
                        "task_type_failures", "insights"}


@pytest.fixture
def history(store, clock, tmp_path):
    """10 failures this week, 2 the week before; one recovery after 10 s, one exhausted, one waiting."""
    config = write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER)
    snapshot = load_config(config)
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="t")
    record_failure(store, "sync", "connection timeout", clock=clock)
    record_failure(store, "receipt", "malformed json", clock=clock)
    engine.handle_new()
    clock.advance(8 * 86400)
    ids = {}
    ids["recovers"] = record_failure(store, "sync", "connection timeout to 10.0.0.1", clock=clock)
    ids["exhausts"] = record_failure(store, "sync", "connection refused", clock=clock)
    ids["waits"] = record_failure(store, "sync", "connection timeout to 10.0.0.2", clock=clock)
    ids["data"] = [record_failure(store, "receipt", f"malformed json at byte {i}", clock=clock) for i in (1, 2)]
    ids["business"] = record_failure(store, "sync", "订单不存在", clock=clock)
    ids["step"] = [record_failure(store, "sync", f"assertion failed in step {i}", clock=clock) for i in (1, 2, 3)]
    ids["index_error"] = record_failure(store, "sync", "IndexError: list index out of range at row 7", clock=clock)
    engine.handle_new()
    clock.advance(10)
    engine.finish(engine.claim(ids["recovers"]), Outcome(True))
    for _ in range(3):
        engine.finish(engine.claim(ids["exhausts"]), Outcome(False, "connection refused"))
        clock.advance(10)
    clock.advance(60)
    return snapshot, ids


def test_processing_report_has_the_seed_fields_and_every_decision(store, clock, history):
    snapshot, ids = history
    report = reports.processing_report(store, clock.now(), "zh")
    assert set(report) == SEED_PROCESSING_FIELDS | {"results_omitted", "summary"}
    assert set(report["stats"]) == {"scanned", "analyzed", "recovered", "notified", "errors"}
    assert report["success"] is True and report["message"] == "失败任务处理完成"
    assert report["processed_at"] == "2023-11-22T22:15:00Z"
    results = {r["task_id"]: r for r in report["results"]}
    assert all(set(r) == SEED_RESULT_FIELDS for r in report["results"])
    assert len(results) == report["total_processed"] == 12
    assert results[ids["recovers"]] == {"task_id": ids["recovers"], "category": "recoverable_network",
                                        "action_taken": "auto_recovery", "success": True,
                                        "message": "任务已在第1次重试后恢复", "retry_delay": None}
    assert results[ids["waits"]]["message"] == "任务将在0.05秒后重试" and results[ids["waits"]]["retry_delay"] == 0.05
    assert results[ids["exhausts"]]["action_taken"] == "notify_admin" and results[ids["exhausts"]]["success"] is False
    assert results[ids["business"]]["action_taken"] == "notify_user"
    assert results[ids["data"][0]]["message"] == "已通知管理员"
    assert report["stats"] == {"scanned": 12, "analyzed": 12, "recovered": 1, "notified": 9, "errors": []}
    assert report["results_omitted"] == 0
    assert report["summary"] == {
        "by_category": {"recoverable_network": 4, "unknown": 4, "unrecoverable_data": 3, "unrecoverable_business": 1},
        "by_task_type": {"sync": 9, "receipt": 3},
        "by_decision": {"notified": 8, "retry_scheduled": 2, "exhausted": 1, "recovered": 1}}


def test_a_report_of_events_another_process_reported_meanwhile_is_dropped(store, clock, history, monkeypatch):
    """Two leaders for the instant the lead moves: the one that moves the watermark second writes nothing."""
    real = reports.aggregates.decision_counts

    def the_other_leader_reports_first(*args):
        monkeypatch.setattr(reports.aggregates, "decision_counts", real)
        assert reports.processing_report(store, clock.now())["total_processed"] > 0
        return real(*args)

    monkeypatch.setattr(reports.aggregates, "decision_counts", the_other_leader_reports_first)
    assert reports.processing_report(store, clock.now()) is None
    assert reports.processing_report(store, clock.now())["total_processed"] == 0  # nothing was left behind


def test_a_report_that_cannot_be_written_leaves_its_events_to_the_next_one(store, clock, history, tmp_path):
    """A report directory that is a file (or a full disk) fails the write before the watermark moves."""
    blocked = tmp_path / "reports-is-a-file"
    blocked.write_text("")
    with pytest.raises(NotADirectoryError):
        reports.write_processing_report(store, blocked, clock.now(), "en")
    path, report = reports.write_processing_report(store, tmp_path / "reports", clock.now(), "en")
    assert report["total_processed"] == 12 and json.loads(path.read_text())["total_processed"] == 12
    assert reports.write_processing_report(store, tmp_path / "reports", clock.now())[1]["total_processed"] == 0


def test_next_processing_report_covers_only_what_came_after(store, clock, history):
    reports.processing_report(store, clock.now())
    assert reports.processing_report(store, clock.now())["total_processed"] == 0
    record_failure(store, "sync", "x", clock=clock)
    clock.advance(61)
    later = reports.processing_report(store, clock.now(), "en")
    assert later["success"] is False and later["stats"]["errors"] == ["task 13 not classified after 60s"]
    assert later["message"] == "Failed task processing finished, with 1 problem(s) to look at (stats.errors)"


def test_analysis_report_numbers(store, clock, history):
    snapshot, ids = history
    report = analysis_report(store, snapshot, clock.now(), 7, "zh")
    assert SEED_ANALYSIS_FIELDS <= set(report)
    assert report["analysis_period"] == "7天" and report["total_failures"] == 10
    assert report["category_distribution"] == {"unknown": 4, "recoverable_network": 3, "unrecoverable_data": 2,
                                               "unrecoverable_business": 1}
    assert list(report["category_distribution"]) == ["unknown", "recoverable_network", "unrecoverable_data",
                                                     "unrecoverable_business"]
    assert report["task_type_failures"] == {"sync": 8, "receipt": 2}
    assert report["recovery"] == {
        "rate_percent": 50.0,
        "by_category": {"recoverable_network": {"recovered": 1, "finished": 2, "rate_percent": 50.0}},
        "mean_seconds_to_recovery": 10.0, "p90_seconds_to_recovery": 10.0, "retries_per_recovery": 1.0}
    assert report["previous_period"] == {"total_failures": 2, "change_percent": 400.0,
                                         "category_distribution": {"recoverable_network": 1, "unrecoverable_data": 1}}
    days = report["daily_failures"]
    assert len(days) == 8 and sum(d["total"] for d in days) == 10  # 7 x 24 h spans 8 calendar days
    assert days[-1] == {"date": "2023-11-22", "total": 10, "by_category": {
        "recoverable_network": 3, "unknown": 4, "unrecoverable_business": 1, "unrecoverable_data": 2}}
    top = report["top_fingerprints"][0]
    assert (top["template"], top["count"], top["category"], top["sample_task_id"]) == (
        "assertion failed in step <num>", 3, "unknown", ids["step"][-1])
    assert top["first_seen"] == top["last_seen"] == "2023-11-22T22:13:20Z"


def test_insights_in_both_languages(store, clock, history):
    snapshot, _ = history
    zh = analysis_report(store, snapshot, clock.now(), 7, "zh")["insights"]
    assert zh == ["主要失败原因是未知错误，占比40.0%", "有30.0%的失败是可自动恢复的",
                  "建议查看错误详情，必要时为其添加匹配规则", "建议检查网络", "自动恢复成功率为50.0%，低于80%的目标",
                  "失败数比上一周期增加400.0%", "有2类未知错误（共4次），报告中附有可直接使用的匹配规则建议"]
    en_snapshot = load_config(snapshot.files[0].rsplit("/", 1)[0], "en")
    en = analysis_report(store, en_snapshot, clock.now(), 7, "en")
    assert en["analysis_period"] == "7 days"
    assert en["insights"][:2] == ["The main failure cause is Unknown error, 40.0% of failures",
                                  "30.0% of failures are automatically recoverable"]
    assert "Advice: Check the network" in en["insights"]


def test_insights_name_categories_by_their_label_never_by_key(store, clock, history):
    snapshot, _ = history
    for _ in range(10):
        record_failure(store, "sync", "connection timeout", clock=clock)
    Engine(store, Settings(), clock, lambda: snapshot, owner="t").handle_new()
    clock.advance(1)
    for lang, label in (("zh", "可恢复网络错误"), ("en", "Recoverable network error")):
        report = analysis_report(store, load_config(snapshot.files[0].rsplit("/", 1)[0], lang), clock.now(), 7, lang)
        assert label in report["insights"][0]
        keys = set(report["category_distribution"]) - ({"unknown"} if lang == "en" else set())  # a word in English
        assert not any(key in insight for insight in report["insights"] for key in keys)


def test_unknown_template_samples_are_distinct(store, clock, history):
    snapshot, _ = history
    for message in ("assertion failed in step 1", "assertion failed in step 1", "assertion failed in step 2", "assertion failed in step 2"):
        record_failure(store, "sync", message, clock=clock)
    Engine(store, Settings(), clock, lambda: snapshot, owner="t").handle_new()
    clock.advance(1)
    templates = {t["template"]: t for t in analysis_report(store, snapshot, clock.now(), 7)["unknown_templates"]}
    assert templates["assertion failed in step <num>"]["samples"] == ["assertion failed in step 2", "assertion failed in step 1",
                                                               "assertion failed in step 3"]
    index_error = "IndexError: list index out of range at row"
    assert templates[f"{index_error} <num>"]["samples"] == [f"{index_error} 7"]


def test_manual_tasks_are_no_failed_recoveries_for_the_insight_nor_the_threshold(store, clock, tmp_path):
    # No handler: recoverable failures go to `manual` without a single retry.
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS))
    for i in range(3):
        record_failure(store, "sync", f"connection timeout {i}", clock=clock)
    Engine(store, Settings(), clock, lambda: snapshot, owner="t").handle_new()
    clock.advance(1)
    report = analysis_report(store, snapshot, clock.now(), 7)
    check = next(c for c in report["thresholds"] if c["name"] == "recovery_rate_percent")
    assert report["recovery"]["rate_percent"] == check["value"] == "unknown" and not check["breached"]
    assert not any("自动恢复成功率" in insight for insight in report["insights"])
    assert report["recovery"]["by_category"] == {}


def test_recovery_insight_and_threshold_agree_over_the_same_period(store, clock, tmp_path):
    snapshot = load_config(write_config(tmp_path / "cfg", SMALL_PATTERNS, HANDLER))
    engine = Engine(store, Settings(), clock, lambda: snapshot, owner="t")
    failing = record_failure(store, "sync", "connection refused", clock=clock)
    engine.handle_new()
    for _ in range(3):
        clock.advance(1)
        engine.finish(engine.claim(failing), Outcome(False, "connection refused"))
    report = analysis_report(store, snapshot, clock.now() + 1, 7)
    check = next(c for c in report["thresholds"] if c["name"] == "recovery_rate_percent")
    assert report["recovery"]["rate_percent"] == check["value"] == 0.0 and check["breached"]
    assert "自动恢复成功率为0.0%，低于80%的目标" in report["insights"]
    assert report["thresholds_window_minutes"] == 60.0


def test_unknown_templates_come_with_a_pattern_that_keeps_its_promise(store, clock, history, tmp_path):
    import re2

    snapshot, _ = history
    report = analysis_report(store, snapshot, clock.now(), 7)
    templates = {t["template"]: t for t in report["unknown_templates"]}
    assert set(templates) == {"assertion failed in step <num>", "IndexError: list index out of range at row <num>"}
    step = templates["assertion failed in step <num>"]
    assert step["count"] == 3 and len(step["samples"]) == 3 and step["pattern_verified"]
    pattern = re2.compile(step["suggested_pattern"], options=re2_options())
    assert all(pattern.search(s) for s in step["samples"])
    others = [r[0] for r in store.db.execute_sql("SELECT error_message FROM tasks WHERE category != 'unknown'")]
    assert not any(pattern.search(s) for s in others)
    # pasted into a pattern file, it classifies the samples
    config = write_config(tmp_path / "with-suggestion", SMALL_PATTERNS + f"""
[[category]]
name = "failed_step"
action = "notify_admin"
priority = 5
patterns = [{json.dumps(step['suggested_pattern'])}]
""")
    assert load_config(config).classifier.classify(step["samples"][0]).category == "failed_step"


def test_suggestion_tightens_when_the_loose_pattern_would_steal():
    pattern, verified = suggest("disk <num> is full of cats", ["disk 3 is full of cats"],
                                ["the box is full of cats and dogs", "disk 9 is full"])
    assert verified and pattern == r"disk.*is\s+full\s+of\s+cats"
    assert suggest("<num>", ["5"], []) == (None, False)


def test_a_suggestion_never_keys_on_the_mask_a_secret_was_replaced_by():
    sample = "psql: FATAL: password authentication failed, PGPASSWORD=*** user app"
    pattern, verified = suggest("psql: FATAL: password authentication failed, PGPASSWORD=*** user <str>", [sample], [])
    assert verified and r"\*" not in pattern and pattern == r"psql:\s+FATAL:\s+password\s+authentication\s+failed,\s+PGPASSWORD="


def test_html_figures_equal_the_json(store, clock, history):
    snapshot, _ = history
    report = json.loads(json.dumps(analysis_report(store, snapshot, clock.now(), 7)))
    assert Page(render_html(report)).figures == expected_figures(report)


def test_files_are_named_by_time_and_expire_after_retention(store, clock, history, tmp_path):
    snapshot, _ = history
    path = reports.write_report(tmp_path / "reports", reports.ANALYSIS, {"x": 1}, clock.now(), "<html></html>")
    assert path.name == "failure_analysis_20231122_221500.json" and path.with_suffix(".html").exists()
    old = reports.write_report(tmp_path / "reports", reports.PROCESSING, {}, clock.now() - 31 * 86400)
    assert reports.purge_reports(tmp_path / "reports", clock.now(), 30) == 1
    assert not old.exists() and path.exists()


def test_two_reports_of_the_same_second_both_stay_and_both_expire(clock, tmp_path):
    # A scan from the command line in the second the daemon's scan ran: neither replaces the other.
    made = [reports.write_report(tmp_path / "reports", reports.PROCESSING, {"n": n}, clock.now()) for n in range(3)]
    assert [p.name for p in made] == ["failure_processing_20231114_221320.json",
                                      "failure_processing_20231114_221320_2.json",
                                      "failure_processing_20231114_221320_3.json"]
    assert [json.loads(p.read_text())["n"] for p in made] == [0, 1, 2]
    assert not list((tmp_path / "reports" / reports.PROCESSING).glob(".*"))  # no temporary file left
    assert reports.purge_reports(tmp_path / "reports", clock.now() + 31 * 86400, 30) == 3


def test_the_unknown_insight_counts_every_unknown_not_only_the_templates_listed(store, clock, history, monkeypatch):
    import failured.analysis as analysis_module

    monkeypatch.setattr(analysis_module, "TOP_UNKNOWN", 1)  # the report lists one template of the two
    snapshot, _ = history
    report = analysis_report(store, snapshot, clock.now(), 7, "zh")
    assert len(report["unknown_templates"]) == 1 and report["category_distribution"]["unknown"] == 4
    assert report["insights"][-1] == "有2类未知错误（共4次），报告中附有最常见的1类可直接使用的匹配规则建议"
