"""Validation of pattern files and failured.toml: every problem names file, key and reason."""

import pytest

from conftest import SMALL_PATTERNS, write_config
from failured.config import load_config
from failured.errors import ConfigErrors
from failured.rules import load_ruleset


def errors_of(directory):
    with pytest.raises(ConfigErrors) as info:
        load_config(directory)
    return info.value.errors


def test_small_config_loads_in_priority_order(config_dir):
    ruleset = load_ruleset(config_dir)
    assert [c.name for c in ruleset.categories] == ["unrecoverable_data", "unrecoverable_business", "recoverable_network"]
    network = ruleset.by_name["recoverable_network"]
    assert network.retry.delays == (0.05, 0.1, 0.2) and network.retry.max_attempts == 3


def test_later_file_extends_lists_and_overrides_named_settings(config_dir):
    (config_dir / "patterns" / "50-local.toml").write_text(
        '[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout"]\n'
        'retry = { max_attempts = 9 }\nlabel = "网络"\n', encoding="utf-8")
    network = load_ruleset(config_dir).by_name["recoverable_network"]
    assert [p.text for p in network.patterns][-1] == "gateway.*timeout"
    assert len(network.patterns) == 4
    assert network.retry.max_attempts == 9 and network.retry.delays == (0.05, 0.1, 0.2)
    assert network.label == "网络"
    assert network.files[-1].endswith("50-local.toml")


def test_replace_true_replaces_the_lists(config_dir):
    (config_dir / "patterns" / "50-local.toml").write_text(
        '[[category]]\nname = "recoverable_network"\nreplace = true\npatterns = ["only.*this"]\n', encoding="utf-8")
    network = load_ruleset(config_dir).by_name["recoverable_network"]
    assert [p.text for p in network.patterns] == ["only.*this"]


def test_new_name_is_a_custom_category(config_dir):
    (config_dir / "patterns" / "60-custom.toml").write_text(
        '[[category]]\nname = "custom_business_error"\naction = "notify_user"\npriority = 5\n'
        "patterns = ['custom.*business.*error']\n", encoding="utf-8")
    snapshot = load_config(config_dir)
    assert snapshot.classifier.classify("a custom business error here").category == "custom_business_error"


@pytest.mark.parametrize("text, key, reason", [
    ("[[category]\nname = 1", None, "TOML syntax error"),
    ('[[category]]\nname = "x"\naction = "retry"\npriority = 1\nretry = { delays = [] }\nfoo = 1\n',
     'category "x".foo', "unknown key"),
    ('[[category]]\nname = "x"\naction = "explode"\npriority = 1\n', 'category "x".action', "unknown action 'explode'"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = "high"\n', 'category "x".priority', "must be a whole number"),
    ('[[category]]\nname = "x"\naction = "retry"\npriority = 1\nretry = { delays = [] }\n', 'category "x".retry.delays', "is empty"),
    ('[[category]]\nname = "x"\naction = "retry"\npriority = 1\nretry = { delays = [5, -1] }\n', 'category "x".retry.delays[1]', "a delay is 0 to 31536000 seconds"),
    # a delay past the year 9999 stopped all intake (every decision of a batch failed)
    ('[[category]]\nname = "x"\naction = "retry"\npriority = 1\nretry = { delays = [1e12] }\n', 'category "x".retry.delays[0]', "is 1000000000000.0: a delay is 0 to 31536000 seconds (365 days)"),
    ('[[category]]\nname = "x"\naction = "retry"\npriority = 1\nretry = { delays = [nan] }\n', 'category "x".retry.delays[0]', "a delay is 0 to"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["a(?=b)"]\n', 'category "x".patterns[0]', "RE2 cannot compile it: invalid perl operator: (?="),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["(unclosed"]\n', 'category "x".patterns[0]', "missing )"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = [".*"]\n', 'category "x".patterns[0]', "matches the empty string"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["."]\n', 'category "x".patterns[0]', "a catch-all such as"),
    # RE2's \\w and \\b are ASCII: they miss a Chinese probe but match every English message
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["\\\\w"]\n', 'category "x".patterns[0]', "a catch-all such as"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["\\\\b"]\n', 'category "x".patterns[0]', "a catch-all such as"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["[一-龥]"]\n', 'category "x".patterns[0]', "a catch-all such as"),
    # the hint on lookaround only where RE2 refused one
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\npatterns = ["gizmo(melted"]\n', 'category "x".patterns[0]', "missing ): gizmo(melted"),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 30\n', 'category "x".priority', 'also used by "recoverable_network"'),
    ('[[category]]\nname = "x"\naction = "notify_user"\npriority = 1\ntags = ["NETWORK"]\n', 'category "recoverable_network".tags', "tag [NETWORK] is also a tag of \"x\""),
    ('[[category]]\nname = "x"\naction = "retry"\npriority = 1\n', 'category "x".retry.delays', 'action "retry" needs'),
    ('[[category]]\nname = "unknown"\npatterns = ["zzz"]\n', 'category "unknown".patterns', "cannot have patterns"),
    # a misspelt name is not a new category missing its action and priority
    ('[[category]]\nname = "unrecoverable_busines"\npatterns = ["zzz"]\n', 'category "unrecoverable_busines".name',
     'no category is named "unrecoverable_busines": did you mean "unrecoverable_business"?'),
    ('[[category]]\nname = "gizmo_faults"\npatterns = ["zzz"]\n', 'category "gizmo_faults".action', "a new category needs action"),
])
def test_bad_pattern_file_names_file_key_and_reason(config_dir, text, key, reason):
    (config_dir / "patterns" / "70-bad.toml").write_text(text, encoding="utf-8")
    errors = errors_of(config_dir)
    match = [e for e in errors if e.key == key or (key is None and e.key is None)]
    assert match, [str(e) for e in errors]
    assert any(reason in e.reason for e in match), [str(e) for e in match]


def test_all_errors_are_reported_in_one_pass(config_dir):
    (config_dir / "patterns" / "70-bad.toml").write_text(
        '[[category]]\nname = "x"\naction = "nope"\npriority = 1\npatterns = ["(a", "b(?<=c)"]\n', encoding="utf-8")
    assert len(errors_of(config_dir)) == 3


@pytest.mark.parametrize("main, key, reason", [
    ("[breaker]\nfailures = 0\n", "breaker.failures", "at least 1"),
    ("[breaker]\nfailurs = 3\n", "breaker.failurs", "unknown key"),
    ("[tasks]\n", "tasks", "unknown top-level key"),
    ("[task_types.sync]\nretyr = 1\n", "task_types.sync.retyr", "unknown key"),
    ("[task_types.sync.retry_by_category.no_such]\ndelays = [1]\n", "task_types.sync.retry_by_category.no_such", "no category named"),
    ('[task_types.sync.handler]\nkind = "carrier-pigeon"\n', "task_types.sync.handler.kind", ""),
])
def test_bad_main_file_names_key_and_reason(tmp_path, main, key, reason):
    directory = write_config(tmp_path / "c", SMALL_PATTERNS, main)
    errors = errors_of(directory)
    assert any(e.key == key and reason in e.reason and e.path.endswith("failured.toml") for e in errors), [str(e) for e in errors]


def test_missing_patterns_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    errors = errors_of(tmp_path / "empty")
    assert "no pattern files" in errors[0].reason
