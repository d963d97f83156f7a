"""The fast paths of ``failured classify --json -`` write exactly what the general ones wrote.

Each JSON line is formatted field by field (failured/cli.py's ``_json_line``): it must be the
text ``json.JSONEncoder(ensure_ascii=False, default=str).encode(result.to_dict())`` gives, on
every corpus message (as written and with its line breaks escaped, as the command reads a
traceback) and on results with the unusual values the general encoder handles.
"""

import json
import math
from pathlib import Path

import pytest

from failured import corpus
from failured.classify import Classification
from failured.cli import _json_line
from failured.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "config"
encode = json.JSONEncoder(ensure_ascii=False, default=str).encode


@pytest.fixture(scope="module")
def classifier():
    return load_config(CONFIG).classifier


def test_every_corpus_result_is_written_as_the_encoder_writes_it(classifier):
    messages = [message for _, _, _, message in corpus.read_corpus()]
    messages += [message.replace("\n", "\\n") for message in messages if "\n" in message]
    messages += ['quote " backslash \\ tab \t nul \0 bell \x07 line \u2028 emoji 😀 中文']
    results = [classifier.classify(message) for message in messages]
    assert sum(result.confidence is not None for result in results) > 10  # model answers: floats written too
    assert [result for result in results if _json_line(result) != encode(result.to_dict()) + "\n"] == []


FIELDS = dict(category="c", label="标签", action="retry", matched_by="pattern", pattern=None, fingerprint="ab",
              template="t <num>", error_type=None, message="m", suggestion="", confidence=None)


@pytest.mark.parametrize("changes", [
    {}, {"confidence": 0.9}, {"confidence": 1e-7}, {"confidence": 1.0}, {"confidence": math.nan},
    {"confidence": math.inf}, {"confidence": 1}, {"pattern": "x\"y", "error_type": "E\\rr"}, {"label": None},
    {"message": 5}, {"suggestion": ["a"]},
], ids=repr)
def test_unusual_values_are_written_as_the_encoder_writes_them(changes):
    result = Classification.of(**{**FIELDS, **changes})
    assert _json_line(result) == encode(result.to_dict()) + "\n"


def test_a_result_built_in_another_field_order_keeps_its_order():
    result = Classification.of(**dict(reversed(list(FIELDS.items()))))
    assert _json_line(result) == encode(result.to_dict()) + "\n"
