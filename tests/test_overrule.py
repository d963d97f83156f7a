"""The model overruling a rule: when it disagrees at ``[model] overrule_confidence`` or more (never a tag)."""

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured import model as learner
from failured.classify import Classifier
from failured.codes import load_code_tables
from failured.config import load_config
from failured.errors import ConfigErrors
from failured.rules import load_ruleset

# A small model that has learned "cancel not allowed" as business, connection failures as network and
# programming errors as unknown: real training, on made-up but real-shaped messages.
EXAMPLES = ([("unrecoverable_business", f"order {i} cancel not allowed: order already captured") for i in range(30)]
            + [("recoverable_network", f"connection refused by host db{i} port 5432") for i in range(30)]
            + [("unknown", f"NullPointerException at com.shop.Service.run line {i}") for i in range(30)])
# The small ruleset's pattern 'connection.*timeout' calls this network; the model has seen only business in it.
DISPUTED = "connection pool timeout ignored; order 77 cancel not allowed: order already captured"


@pytest.fixture(scope="module")
def trained():
    return learner.train(EXAMPLES)


@pytest.fixture
def ruleset(tmp_path):
    return load_ruleset(write_config(tmp_path / "config", SMALL_PATTERNS))


def test_a_sure_model_overrules_the_rule_and_says_what_it_overruled(ruleset, trained):
    prediction = trained.predict(DISPUTED)
    assert prediction.category == "unrecoverable_business" and prediction.confidence >= 0.9  # the premise
    result = Classifier(ruleset, model=trained, overrule_confidence=0.9).classify(DISPUTED)
    assert (result.category, result.matched_by) == ("unrecoverable_business", "model")
    assert result.pattern.startswith(f"confidence {result.confidence:.2f}, over pattern ")
    assert "connection.*timeout" in result.pattern
    assert result.confidence >= 0.9


def test_below_the_setting_or_with_overruling_off_the_rule_stands(ruleset, trained):
    confidence = trained.predict(DISPUTED).confidence
    for setting in (min(1.0, confidence + 0.001), 1.0):
        result = Classifier(ruleset, model=trained, overrule_confidence=setting).classify(DISPUTED)
        assert (result.category, result.matched_by) == ("recoverable_network", "pattern"), setting
    assert Classifier(ruleset, model=trained).classify(DISPUTED).matched_by == "pattern"  # the class's default: off


def test_a_tag_is_never_overruled_and_agreement_keeps_the_rule(ruleset, trained):
    tagged = Classifier(ruleset, model=trained, overrule_confidence=0.5).classify(f"[NETWORK] {DISPUTED}")
    assert (tagged.category, tagged.matched_by) == ("recoverable_network", "tag")
    agreed = Classifier(ruleset, model=trained, overrule_confidence=0.5).classify(
        "connection timeout: connection refused by host db3 port 5432")
    assert (agreed.category, agreed.matched_by) == ("recoverable_network", "pattern")


def test_an_early_code_is_never_overruled(tmp_path, ruleset, trained):
    # A decisive phrase means the same whatever surrounds it: the model, sure of business here, leaves it be.
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "10-local.toml").write_text(
        'kind = "token"\npriority = 10\nearly = true\n[codes]\n"pool-wait" = "recoverable_network"\n'
        '[texts]\n"connection pool timeout" = "pool-wait"\n', encoding="utf-8")
    tables = load_code_tables(tmp_path, frozenset(c.name for c in ruleset.categories))
    assert trained.predict(DISPUTED).confidence >= 0.9  # the premise: sure enough to overrule
    result = Classifier(ruleset, code_tables=tables, model=trained, overrule_confidence=0.5).classify(DISPUTED)
    assert (result.category, result.matched_by, result.pattern) == ("recoverable_network", "code", "local pool-wait")
    assert result.confidence is None
    late = Classifier(ruleset, code_tables=tables, model=trained, overrule_confidence=0.5,
                      stages=("exception_type", "pattern", "code"))
    assert late.classify(DISPUTED).matched_by == "model"  # a late pattern is overruled as before


def test_a_model_sure_of_unknown_overrules_too_a_programming_error_goes_to_the_admins(ruleset, trained):
    bug = "NullPointerException at com.shop.Service.run line 7 after connection timeout"
    assert trained.predict(bug).category == "unknown"  # the premise; the pattern 'connection.*timeout' says network
    result = Classifier(ruleset, model=trained, overrule_confidence=0.9).classify(bug)
    assert (result.category, result.matched_by) == ("unknown", "model")
    assert result.pattern.startswith("confidence 1.00, over pattern ")
    kept = Classifier(ruleset, model=trained, overrule_confidence=1.0).classify(bug)
    assert (kept.category, kept.matched_by) == ("recoverable_network", "pattern")


def test_the_setting_is_read_from_failured_toml_and_checked(tmp_path):
    good = load_config(write_config(tmp_path / "good", SMALL_PATTERNS, "[model]\noverrule_confidence = 0.95\n"))
    assert good.classifier.overrule_confidence == 0.95
    shipped_default = load_config(write_config(tmp_path / "default", SMALL_PATTERNS))
    assert shipped_default.classifier.overrule_confidence == learner.DEFAULT_OVERRULE_CONFIDENCE
    with pytest.raises(ConfigErrors) as caught:
        load_config(write_config(tmp_path / "bad", SMALL_PATTERNS, "[model]\noverrule_confidence = 1.5\n"))
    text = str(caught.value)
    assert "model.overrule_confidence" in text and "1.5" in text and "at most 1" in text


def test_a_category_the_model_never_learned_is_never_overruled(tmp_path, trained):
    custom = SMALL_PATTERNS + """
[[category]]
name = "order_locked"
label = "订单锁定"
label_en = "Order locked"
action = "notify_user"
priority = 5
patterns = ['cancel not allowed']
"""
    ruleset = load_ruleset(write_config(tmp_path / "custom", custom))
    result = Classifier(ruleset, model=trained, overrule_confidence=0.5).classify(DISPUTED)
    assert (result.category, result.matched_by) == ("order_locked", "pattern")


def test_a_firm_pattern_is_never_overruled_and_the_others_still_are(tmp_path, trained):
    # An operator's own file, as the console's workbench writes it: the same pattern, firm.
    firm = SMALL_PATTERNS + """
[[category]]
name = "recoverable_network"
firm = true
patterns = ['pool timeout']
"""
    ruleset = load_ruleset(write_config(tmp_path / "firm", firm))
    classifier = Classifier(ruleset, model=trained, overrule_confidence=0.5)
    assert [p.text for p in ruleset.by_name["recoverable_network"].patterns if p.firm] == ["pool timeout"]
    text = "pool timeout; order 77 cancel not allowed: order already captured"
    prediction = trained.predict(text)
    assert prediction.category == "unrecoverable_business" and prediction.confidence >= 0.5  # the premise
    result = classifier.classify(text)
    assert (result.category, result.matched_by, result.pattern) == ("recoverable_network", "pattern", "pool timeout")
    assert classifier.classify(DISPUTED).matched_by == "model"  # 'connection.*timeout' is not firm: overruled


def test_firm_must_be_true_or_false(tmp_path):
    bad = SMALL_PATTERNS + '\n[[category]]\nname = "recoverable_network"\nfirm = "yes"\npatterns = [\'x\']\n'
    with pytest.raises(ConfigErrors) as caught:
        load_ruleset(write_config(tmp_path / "bad", bad))
    assert "firm" in str(caught.value) and "true or false" in str(caught.value)
