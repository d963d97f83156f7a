"""failured._speedups's model functions give what the model's Python code gives, bit for bit: column_sums,
features (the same set in the same order), and feature_order / feature_probabilities (the
same order, sums and probabilities without building the set), and the training step (the same weights).

(The fingerprint's compiled passes are compared with re in tests/test_fingerprint.py.)
"""

import random
import struct
from array import array
from pathlib import Path

import pytest
from recorded import assert_same_answers

from failured import corpus, model
from failured.classify import model_text
from failured.config import load_config

# ImportError as well as ModuleNotFoundError: the model falls back on its Python code for either.
speedups = pytest.importorskip("failured._speedups", reason="failured._speedups is not built (no C compiler at install)",
                               exc_type=ImportError)


# The model's Python code, which the compiled functions must match exactly.
python_column_sums = model.python_column_sums
python_features = model.python_features


@pytest.fixture(scope="module")
def trained():
    """The shipped model (from the model cache when it is there) and what it reads of each corpus message."""
    learned = load_config(Path(__file__).resolve().parent.parent / "config").classifier.model
    return learned, [model_text(message, error_type) for _, error_type, _, message in corpus.read_corpus()]


def test_the_model_rows_of_every_corpus_message_sum_as_in_python(trained):
    """Each corpus message's features summed by the compiled code and by the Python code (the features
    themselves are compared below)."""
    learned, texts = trained
    width = len(learned.classes)
    rows = learned._slots, learned._table
    assert_same_answers("model_rows", texts, lambda text: speedups.column_sums(*rows, speedups.features(text), width),
                        lambda text: python_column_sums(*rows, python_features(text), width))
    for case in (set(), {0}, set(range(0, model.BUCKETS, 997))):
        assert speedups.column_sums(*rows, case, width) == python_column_sums(*rows, case, width)


def test_values_where_the_order_and_compensation_matter_sum_as_in_python():
    rng = random.Random(8)
    width = 3
    values = [1e16, 1.0, -1e16, 0.1, -0.0, 1e-38, 3.5, -2.25, float("inf"), 3e38]  # the table holds 4-byte floats
    table = b"".join(struct.pack("3f", *(rng.choice(values) for _ in range(width))) for _ in range(64))
    slots = array("i", [*range(64), *[-1] * 8])  # the last 8 buckets have no row
    rng.shuffle(slots)
    for _ in range(2000):
        buckets = rng.sample(range(len(slots)), rng.randint(0, 20))
        expected = python_column_sums(slots, table, buckets, width)
        got = speedups.column_sums(slots, table, buckets, width)
        assert [repr(value) for value in got] == [repr(value) for value in expected], buckets


def test_a_table_of_the_wrong_size_or_a_slot_past_it_is_refused():
    with pytest.raises(ValueError, match="the table has 4 bytes, not whole rows of 8"):
        speedups.column_sums(array("i", [0]), b"\0" * 4, [0], 2)
    with pytest.raises(IndexError, match="bucket 1 points at row 1 of a table of 1"):
        speedups.column_sums(array("i", [0, 1]), b"\0" * 8, [1], 2)
    with pytest.raises(TypeError, match="slots must be an array"):
        speedups.column_sums(array("l", [0]), b"\0" * 8, [0], 2)


def test_features_are_the_models_set_in_the_models_order(trained):
    """The same buckets, iterating in the same order (the column sums add in it)."""
    _, texts = trained
    rng = random.Random(9)
    pieces = ["a", "b", "A", "Z", "HTTP", "Server", "0x", "0X1F", "deadbeefdeadbeef", "DEADBEEFDEADBEEF", "12", "1234567",
              "٣٣٣٣٣٣٣", "_", ".", "$", "-", " ", "é", "İ", "ß", "中文", "錯誤", "\uf900", "ab", "x1", "\n", "ǅ",
              "TooManyConnectionsError", "ACCESS_TOO_FREQUENT", "\ud800"]
    texts = texts + ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(20000)]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(300, 900))) for _ in range(100)]
    assert_same_answers("features", texts, lambda text: list(speedups.features(text)),
                        lambda text: list(python_features(text)))


# feature_order and feature_probabilities lay the features out as CPython's set does
# (failured/_speedups.c's IntSet) instead of building the set: its order decides the sums' bits.
PIECES = ["a", "b", "A", "Z", "HTTP", "Server", "0x", "0X1F", "deadbeefdeadbeef", "12", "1234567", "٣٣٣٣٣٣٣", "_", ".",
          "$", "-", " ", "é", "İ", "ß", "中文", "錯誤", "\uf900", "ab", "x1", "\n", "ǅ", "TooManyConnectionsError",
          "ACCESS_TOO_FREQUENT", "\ud800", "timeout", "connection refused", "rate_limit.Exceeded"]


def generated(count, seed, longest=30):
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, longest))) for _ in range(count)]


@pytest.fixture(scope="module")
def many_texts(trained):
    _, texts = trained
    escaped = [text.replace("\n", "\\n") for text in texts if "\n" in text]  # as classify --json - reads a traceback
    return texts + escaped + generated(20000, seed=10) + generated(200, seed=11, longest=900)


def test_the_compiled_layout_iterates_as_the_models_set(many_texts):
    assert_same_answers("feature_order", many_texts, speedups.feature_order, lambda text: list(python_features(text)))


@pytest.mark.parametrize("shard", range(4))  # a minute of one core whole: pytest-xdist's workers share it
def test_feature_probabilities_are_the_models_probabilities_bit_for_bit(trained, many_texts, monkeypatch, shard):
    learned, _ = trained
    texts = many_texts[shard::4]
    monkeypatch.setattr(model, "features", python_features)
    monkeypatch.setattr(model, "_column_sums", python_column_sums)
    assert_same_answers(f"feature_probabilities[{shard}]", texts,
                        lambda text: list(speedups.feature_probabilities(learned._slots, learned._table,
                                                                         model.with_concepts(text), learned._bias)),
                        lambda text: list(learned.probabilities(text)))


def test_the_word_layout_cache_starting_again_changes_nothing(trained):
    """More distinct words than the compiled cache keeps (16,384): it is emptied and refilled on the way."""
    rng = random.Random(12)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(40000)]
    texts = [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)] * 2
    assert [text for text in texts if speedups.feature_order(text) != list(python_features(text))] == []


def test_feature_probabilities_refuse_a_table_of_the_wrong_size():
    with pytest.raises(ValueError, match="has 4 bytes, not whole rows of 8"):
        speedups.feature_probabilities(array("i", [0]) * model.BUCKETS, b"\0" * 4, "timeout", (0.0, 0.0))


def test_the_compiled_training_step_learns_the_same_weights_bit_for_bit(monkeypatch):
    """Training on a slice of the corpus (and on texts with one class only in some rows) with the compiled
    Adam step and with the Python one: the same model state, every weight the same double."""
    rows = [(category, model_text(message, error_type)) for category, error_type, _, message in corpus.read_corpus()]
    sample = rows[::20] + [("unknown", "NullPointerException at Foo.bar")] * 5
    monkeypatch.setattr(model, "EPOCHS", 2)  # 82 steps of each: the Python step is slow, one step shows the same
    monkeypatch.setattr(model, "MIN_STEPS", 0)

    def trained_with(step):
        def state(rows):
            monkeypatch.setattr(model, "_compiled_step", step)
            return model.train(rows).state()
        return state
    assert_same_answers("training_step", [sample], trained_with(model._compiled_step), trained_with(None))


def _adam_step(batch, weights, first=None, second=None, marks=None, n=2):
    first = first if first is not None else array("d", [0.0]) * len(weights)
    second = second if second is not None else array("d", [0.0]) * len(weights)
    marks = marks if marks is not None else array("i", [-1]) * (len(weights) // n)
    speedups.adam_batch(batch, weights, first, second, marks, n, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.001)
    return marks


def test_the_training_step_refuses_tables_that_do_not_fit():
    one = [(0, array("i", [0]), 1.0)]
    with pytest.raises(ValueError, match="2 doubles per slot"):
        _adam_step(one, array("d", [0.0]), marks=array("i", [-1]))
    with pytest.raises(ValueError, match="at least one example"):
        _adam_step([], array("d", [0.0, 0.0]))
    with pytest.raises(ValueError, match="slot 1 out of range"):
        _adam_step([(0, array("i", [1]), 1.0)], array("d", [0.0, 0.0]))
    with pytest.raises(ValueError, match="target 2 out of range"):
        _adam_step([(2, array("i", [0]), 1.0)], array("d", [0.0, 0.0]))
    with pytest.raises(TypeError, match="an example must be"):
        _adam_step([(0, array("i", [0]))], array("d", [0.0, 0.0]))
    with pytest.raises(TypeError, match="bytes-like object is required"):
        _adam_step([(0, [0], 1.0)], array("d", [0.0, 0.0]))
    with pytest.raises(TypeError, match="slots must be an array"):
        _adam_step([(0, array("d", [0.0]), 1.0)], array("d", [0.0, 0.0]))
    with pytest.raises(TypeError, match="weights must be an array"):
        _adam_step(one, array("f", [0.0, 0.0]))
    with pytest.raises(BufferError):  # read-only: the step writes the weights in place
        _adam_step(one, bytes(16))
    weights = array("d", [0.0, 0.0, 0.0, 0.0])
    marks = _adam_step([(0, array("i", [0]), 1.0), (1, array("i", [0, 1]), 0.5)], weights)
    assert weights[0] > 0 > weights[1] and weights[2] < 0 < weights[3]  # each target's weight rose
    assert list(marks) == [-1, -1]  # left as found


def test_the_training_step_answers_the_same_whatever_its_marks_held():
    """``marks`` is scratch space: a caller's stale or hostile values must neither change the step nor crash it."""
    batch = [(0, array("i", [0, 3]), 0.7), (1, array("i", [3, 1]), 0.5), (2, array("i", [2]), 1.0)]
    results = []
    for marks in ([-1] * 4, [0, 0, 1, 2], [50_000_000, -7, 3, 2 ** 31 - 1]):
        weights = array("d", [0.1 * i for i in range(12)])
        _adam_step(batch, weights, marks=array("i", marks), n=3)
        results.append(list(weights))
    assert results[0] == results[1] == results[2]
