"""The learned fallback: its threshold, the labels hook, and retraining on reload without a gap."""

import shutil
import threading
from pathlib import Path

import pytest

from conftest import wait_for, write_config
from failured import model as learner
from failured.classify import Classifier, learned_fallback
from failured.config import load_config
from failured.errors import ConfigErrors
from failured.rules import load_ruleset
from failured.watcher import ConfigWatcher

REPO = Path(__file__).resolve().parent.parent

TOY = [("recoverable_network", "socket reset by peer while reading"),
       ("recoverable_network", "peer reset the socket"),
       ("unrecoverable_business", "the parcel was returned to sender"),
       ("unrecoverable_business", "parcel returned to the sender by the courier")] * 3


def test_model_predicts_with_a_probability():
    trained = learner.train(TOY)
    network = trained.predict("socket reset by the peer")
    assert network.category == "recoverable_network" and 0.5 < network.confidence <= 1
    assert abs(sum(trained.probabilities("anything at all")) - 1) < 1e-9


def test_model_needs_two_categories():
    assert learner.train(TOY[:2]) is None


def _classifier(config_dir, min_confidence, examples=TOY):
    return Classifier(load_ruleset(config_dir), model=learner.train(examples), min_confidence=min_confidence)


def test_model_acts_only_above_the_threshold(config_dir):
    message = "parcel returned to sender"  # no pattern of the small ruleset matches
    confident = _classifier(config_dir, 0.5).classify(message)
    assert (confident.category, confident.matched_by) == ("unrecoverable_business", "model")
    assert confident.pattern == f"confidence {confident.confidence:.2f}" and confident.confidence >= 0.5
    assert confident.to_dict()["confidence"] == confident.confidence
    doubtful = _classifier(config_dir, 0.9).classify("lorem ipsum dolor")  # nothing like either category
    assert (doubtful.category, doubtful.matched_by, doubtful.confidence) == ("unknown", "none", None)


def test_rules_decide_before_the_model(config_dir):
    result = _classifier(config_dir, 0.01).classify("connection refused by peer")
    assert result.matched_by == "pattern"


def test_model_settings_in_failured_toml(tmp_path):
    directory = write_config(tmp_path / "c", main="[model]\nmin_confidence = 0.95\n")
    assert load_config(directory).classifier.min_confidence == 0.95
    directory = write_config(tmp_path / "d", main="[model]\nenabled = false\n")
    assert load_config(directory).classifier.model is None
    bad = write_config(tmp_path / "e", main="[model]\nmin_confidence = 2\nsize = 3\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(bad)
    assert {e.key for e in caught.value.errors} == {"model.min_confidence", "model.size"}


def test_labels_passed_to_load_config_are_trained_on(tmp_path):
    directory = write_config(tmp_path / "c", main="[model]\nmin_confidence = 0.5\n")
    # words no corpus message has: what the model knows of them, the labels taught it
    message = "zq-7 glorp vexit frambulated"
    labels = [("unrecoverable_data", None, f"zq-7 glorp vexit frambulated on unit {i}") for i in range(40)]
    before = load_config(directory).classifier.classify(message)
    after = load_config(directory, labels=labels).classifier.classify(message)
    assert before.category != "unrecoverable_data"
    assert (after.category, after.matched_by) == ("unrecoverable_data", "model")


def test_training_is_cached_per_category_set_and_labels():
    names = frozenset({"recoverable_network", "unrecoverable_data"})
    assert learned_fallback(names) is learned_fallback(names)
    assert learned_fallback(names, (("unrecoverable_data", None, "x y z"),)) is not learned_fallback(names)


def test_reload_retrains_without_a_gap_in_classification(tmp_path):
    """While a reload builds (and trains) the next snapshot, classification goes on with the last good one."""
    directory = tmp_path / "config"
    shutil.copytree(REPO / "config", directory)
    watcher = ConfigWatcher(directory, debounce=0.05).start()
    stop, answers, failures = threading.Event(), [], []

    def classify_all_the_time():
        while not stop.is_set():
            try:
                answers.append(watcher.current.classifier.classify("订单12345不存在").category)
            except Exception as exc:  # any gap would show up here
                failures.append(exc)

    worker = threading.Thread(target=classify_all_the_time)
    worker.start()
    try:
        first = watcher.current
        assert first.classifier.model is not None
        (directory / "failured.toml").write_text(
            (directory / "failured.toml").read_text(encoding="utf-8") + "\n[model]\nmin_confidence = 0.9\n",
            encoding="utf-8")
        assert wait_for(lambda: watcher.current is not first, timeout=60)
        assert watcher.current.classifier.min_confidence == 0.9
        assert watcher.current.classifier.model is not None
        count = len(answers)
        assert wait_for(lambda: len(answers) > count + 10, timeout=10)
    finally:
        stop.set()
        worker.join(timeout=10)
        watcher.stop()
    assert not failures and set(answers) == {"unrecoverable_business"}


def test_a_ruleset_too_large_for_one_re2_set_still_loads_and_answers(tmp_path):
    """One RE2 set of these 20 patterns outgrows RE2's memory budget; the matcher splits them."""
    directory = tmp_path / "c"
    (directory / "patterns").mkdir(parents=True)
    (directory / "patterns" / "10-small.toml").write_text(
        '[[category]]\nname = "a"\naction = "notify_admin"\npriority = 1\npatterns = [\'small\']\n', encoding="utf-8")
    huge = ", ".join(f"'x{i}[^z]{{1,1000}}y[^q]{{1,1000}}z'" for i in range(20))  # each fine, together too big
    (directory / "patterns" / "20-huge.toml").write_text(
        f'[[category]]\nname = "b"\naction = "notify_admin"\npriority = 2\npatterns = [{huge}]\n', encoding="utf-8")
    classifier = load_config(directory).classifier
    assert classifier.classify("a small problem").category == "a"
    assert classifier.classify("x17 then y and z").category == "b"


def test_identifiers_are_read_as_words():
    assert learner.identifier_words("asyncpg.exceptions.TooManyConnectionsError: sorry") == [
        "asyncpg", "exceptions", "too", "many", "connections", "error"]
    assert learner.spell_identifiers('{"info":"ACCESS_TOO_FREQUENT"} HTTPServerError plain') == (
        '{"info":"access too frequent"} http server error plain')


def test_prediction_carries_the_probability_of_unknown():
    trained = learner.train(TOY + [("unknown", "something odd happened")] * 3)
    prediction = trained.predict("something odd happened")
    assert prediction.category == "unknown" and prediction.unknown == prediction.confidence
    assert learner.train(TOY).predict("socket reset").unknown == 0.0


def test_training_is_deterministic_and_the_cached_state_predicts_the_same():
    examples = TOY + [("unknown", "NullPointerException at Foo.bar")] * 3
    first, second = learner.train(examples), learner.train(examples)
    rebuilt = learner.TextModel.from_state(first.state())
    for text in ("socket reset by the peer", "parcel returned", "NullPointerException", "无法连接"):
        assert first.probabilities(text) == second.probabilities(text) == rebuilt.probabilities(text)


def test_model_carries_its_guard_against_programming_errors():
    trained = learner.train(TOY + [("unknown", "NullPointerException at Foo.bar")] * 3)
    assert trained.max_unknown == learner.MAX_UNKNOWN and 0 < trained.max_unknown < 1
    assert trained.predict("NullPointerException at Baz.qux").unknown > trained.max_unknown


def _reference_scores(fitted, text):
    """The model's scores written plainly from its state: the rows summed column by column."""
    classes, weights, bias, _ = fitted.state()
    buckets = learner.features(learner.with_concepts(text))
    rows = [weights[b] for b in buckets if b in weights]
    sums = [sum(row[k] for row in rows) for k in range(len(classes))]
    scale = 1.0 / (max(1, len(buckets)) ** 0.5)
    return [b + scale * s for b, s in zip(bias, sums)]


def test_packed_rows_score_exactly_as_the_plain_sums():
    examples = TOY + [("unknown", "NullPointerException at Foo.bar"), ("unknown", "无法连接 数据库")] * 3
    fitted = learner.train(examples)
    texts = [text for _, text in examples] + ["", "never seen words", "socket reset 无法连接", "x" * 3000]
    for text in texts:
        assert fitted.scores(text) == _reference_scores(fitted, text)  # same additions in the same order
    assert learner.TextModel.from_state(fitted.state()).state() == fitted.state()
    packed = learner.TextModel.from_packed_state(fitted.packed_state())
    assert packed.state() == fitted.state()
    assert all(packed.scores(text) == fitted.scores(text) for text in texts)


def test_an_ngram_only_one_message_has_keeps_no_row_unless_a_label_has_it():
    """Rare n-grams are left out of the trained model, but an operator's label teaches even its one-off words."""
    label = "zorbulated quintax"  # words no other example has
    examples = TOY + [("unrecoverable_business", label)]
    plain, kept = learner.train(examples), learner.train(examples, keep=[label])
    assert len(kept._table) > len(plain._table)
    assert kept.probabilities(label)[kept.classes.index("unrecoverable_business")] \
        > plain.probabilities(label)[plain.classes.index("unrecoverable_business")]
