"""failured._speedups.column_sums adds a message's rows as the model's Python code does, bit for bit.

(The fingerprint's compiled passes are compared with re in tests/test_fingerprint.py.)
"""

import random
import struct
from pathlib import Path

import pytest

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
    learned, texts = trained
    width = 2 * len(learned.classes)
    cases = [python_features(text) for text in texts] + [set(), {0}, set(range(0, model.BUCKETS, 997))]
    assert [case for case in cases if speedups.column_sums(learned._rows, case, width)
            != python_column_sums(learned._rows, case, width)] == []


def test_values_where_the_order_and_compensation_matter_sum_as_in_python():
    rng = random.Random(8)
    width = 3
    values = [1e16, 1.0, -1e16, 0.1, -0.0, 1e-300, 3.5, -2.25, float("inf"), 1e308]
    rows = [struct.pack("3d", *(rng.choice(values) for _ in range(width))) for _ in range(64)] + [b""] * 8
    for _ in range(2000):
        buckets = rng.sample(range(len(rows)), rng.randint(0, 20))
        expected, got = python_column_sums(rows, buckets, width), speedups.column_sums(rows, buckets, width)
        assert [repr(value) for value in got] == [repr(value) for value in expected], buckets


def test_a_row_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="bucket 0 has 8 bytes, not 16"):
        speedups.column_sums([b"\0" * 8], [0], 2)


def test_features_are_the_models_set_in_the_models_order(trained):
    """The same buckets, iterating in the same order (the column sums add in it)."""
    _, texts = trained
    rng = random.Random(9)
    pieces = ["a", "b", "A", "Z", "HTTP", "Server", "0x", "0X1F", "deadbeefdeadbeef", "DEADBEEFDEADBEEF", "12", "1234567",
              "٣٣٣٣٣٣٣", "_", ".", "$", "-", " ", "é", "İ", "ß", "中文", "錯誤", "\uf900", "ab", "x1", "\n", "ǅ",
              "TooManyConnectionsError", "ACCESS_TOO_FREQUENT", "\ud800"]
    texts = texts + ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(20000)]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(300, 900))) for _ in range(100)]
    assert [text for text in texts if list(speedups.features(text)) != list(python_features(text))] == []
