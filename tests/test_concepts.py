"""Concepts: one idea in English and Chinese, so what the model learns in one wording carries to the other."""

from failured import model as learner
from failured.concepts import CONCEPTS, concepts_in


def test_english_and_chinese_spellings_name_the_same_concepts():
    assert concepts_in("requests.exceptions.ReadTimeout: connection timed out") == ["timeout", "connect"]
    assert concepts_in("连接超时，请稍后重试") == ["timeout", "connect", "retrylater"]
    assert concepts_in("Insufficient balance in account") == concepts_in("账户余额不足") == ["balance", "insufficient",
                                                                                          "account"]


def test_english_spellings_match_at_a_word_start_only():
    assert "throttling" not in CONCEPTS and concepts_in("request throttled") == ["ratelimit"]
    assert concepts_in("imports exported") == []  # "port" inside words is not a port
    assert concepts_in("") == []


def test_what_the_model_learns_in_english_carries_to_chinese():
    english = ([("recoverable_network", f"socket to host db{i} timed out after {i} s") for i in range(20)]
               + [("unrecoverable_business", f"order {i} rejected: insufficient balance") for i in range(20)])
    trained = learner.train(english)
    assert trained.predict("连接超时").category == "recoverable_network"
    assert trained.predict("账户余额不足").category == "unrecoverable_business"


def test_a_megabyte_of_hostile_text_is_read_in_one_pass():
    # RE2 (no backtracking): one pass whatever the text; the model reads only the head anyway
    assert concepts_in(("超时 余额 timeout " * 50000) + "a" * 200_000) == ["timeout", "balance"]
