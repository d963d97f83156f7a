"""Classification stages, priority and fingerprints on a small, known ruleset."""

import json
import re
from pathlib import Path

import pytest

from failured.config import load_config
from failured.fingerprint import fingerprint, template_of


@pytest.fixture
def classifier(config_dir):
    """The rule stages alone: the learned fallback is off (tests/test_model.py covers it)."""
    (config_dir / "failured.toml").write_text("[model]\nenabled = false\n", encoding="utf-8")
    return load_config(config_dir).classifier


def test_what_no_rule_decides_goes_to_the_model_when_it_is_sure(config_dir):
    result = load_config(config_dir).classifier.classify("read from upstream stalled", "other.lib.ReadTimeout")
    assert (result.category, result.matched_by) == ("recoverable_network", "model")
    assert result.confidence >= 0.8


def test_the_model_defers_when_it_gives_unknown_a_real_chance(config_dir):
    # A programming error looks like many categories: even where another one ranks first, the
    # model defers while it gives "unknown" more than its own guard (max_unknown) allows.
    from types import SimpleNamespace

    from failured.model import Prediction

    classifier = load_config(config_dir).classifier
    prediction = classifier.model.predict("IllegalStateException: connection pool closed")
    assert prediction.unknown > classifier.model.max_unknown  # which category ranks first moves with the corpus
    result = classifier.classify_uncached("connection pool closed", "IllegalStateException")
    assert (result.category, result.matched_by, result.confidence) == ("unknown", "none", None)
    guard = classifier.model.max_unknown
    for unknown, answer in ((guard + 0.01, ("unknown", "none")), (guard, ("recoverable_network", "model"))):
        ranked_first = Prediction("recoverable_network", 0.6, unknown)  # "network" first either way
        classifier.model = SimpleNamespace(predict=lambda text, p=ranked_first: p, max_unknown=guard)
        result = classifier.classify_uncached("connection pool closed", "IllegalStateException")
        assert (result.category, result.matched_by) == answer


@pytest.mark.parametrize("message, error_type, category, matched_by, matched", [
    ("[NETWORK] Connection timeout: API服务器连接超时", None, "recoverable_network", "tag", "NETWORK"),
    ("[data] Validation failed: 快递单号格式不正确", None, "unrecoverable_data", "tag", "DATA"),
    ("[NOPE] malformed json in body", None, "unrecoverable_data", "pattern", "malformed.*json"),
    ("something", "requests.exceptions.ReadTimeout", "recoverable_network", "exception_type", "requests.exceptions.ReadTimeout"),
    ("something", "ReadTimeout", "recoverable_network", "exception_type", "ReadTimeout"),
    ("something", "other.lib.ReadTimeout", "unknown", "none", None),
    ("json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)", None, "unrecoverable_data", "exception_type", "json.decoder.JSONDecodeError"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\nConnectTimeout: boom", None, "recoverable_network", "exception_type", "ConnectTimeout"),
    ("数据库连接超时", None, "recoverable_network", "pattern", "连接.*超时"),
    ("CONNECTION REFUSED by peer", None, "recoverable_network", "pattern", "connection.*refused"),
    ("order not found after validation failed", None, "unrecoverable_data", "pattern", "validation.*failed"),
    ("订单不存在", None, "unrecoverable_business", "pattern", "不存在"),
    ("the weather is nice", None, "unknown", "none", None),
    ("", None, "unknown", "none", None),
])
def test_stages_and_priority(classifier, message, error_type, category, matched_by, matched):
    result = classifier.classify(message, error_type)
    assert (result.category, result.matched_by, result.pattern) == (category, matched_by, matched)


def test_tag_beats_exception_type_beats_pattern(classifier):
    assert classifier.classify("[BUSINESS] malformed json", "ConnectTimeout").category == "unrecoverable_business"
    assert classifier.classify("malformed json", "ConnectTimeout").category == "recoverable_network"


def test_structured_json_error_is_unpacked(classifier):
    text = json.dumps({"error_type": "ConnectTimeout", "error_message": "upstream gone", "context": {"a": 1}})
    result = classifier.classify(text)
    assert (result.category, result.error_type, result.message) == ("recoverable_network", "ConnectTimeout", "upstream gone")
    result = classifier.classify("Exception: " + json.dumps({"error_type": "X", "error_message": "malformed json!"}))
    assert result.category == "unrecoverable_data"


def test_result_carries_label_action_and_suggestion_in_the_language(config_dir):
    zh = load_config(config_dir, "zh").classifier.classify("connection timeout")
    en = load_config(config_dir, "en").classifier.classify("connection timeout")
    assert (zh.label, zh.action, zh.suggestion) == ("可恢复网络错误", "retry", "检查网络")
    assert (en.label, en.suggestion) == ("Recoverable network error", "Check the network")


def test_pathological_pattern_and_input_stay_linear(tmp_path):
    from conftest import write_config
    import time

    directory = write_config(tmp_path / "c", """
[[category]]
name = "evil"
action = "notify_admin"
priority = 1
patterns = ['(a+)+$', '(x+x+)+y']
""")
    classifier = load_config(directory).classifier
    start = time.perf_counter()
    result = classifier.classify("x" * 50_000 + "!" + "a" * 50_000)
    assert time.perf_counter() - start < 1.0  # Python's re would take longer than the universe exists
    assert result.category == "evil"


@pytest.mark.parametrize("a, b", [
    ("order 12345 not found", "order 987 not found"),
    ("订单12345不存在", "订单6789不存在"),
    ("connect to 10.0.0.5:5432 failed", "connect to 192.168.1.20:6432 failed"),
    ("GET https://api.a.com/x?id=1 timed out", "GET https://api.b.cn/y/z timed out"),
    ("tracking number SF1234567890 invalid", "tracking number YT9876543210 invalid"),
    ("request 550e8400-e29b-41d4-a716-446655440000 failed", "request 6ba7b810-9dad-11d1-80b4-00c04fd430c8 failed"),
    ("open /var/lib/app/a.json: permission denied", "open /srv/data/b/c.json: permission denied"),
    ("object at 0x7f3a2c1d0e50 broke", "object at 0x55aa00 broke"),
    ("key 'order_id' missing", 'key "user" missing'),
    ("host db1.internal.lan unreachable", "host cache.prod.example.com unreachable"),
])
def test_same_error_with_other_values_has_the_same_fingerprint(a, b):
    assert fingerprint(a) == fingerprint(b)


def test_different_errors_have_different_fingerprints():
    assert fingerprint("order 1 not found")[1] != fingerprint("order 1 cancelled")[1]


def test_template_keeps_the_words_and_marks_the_values():
    assert template_of("订单12345不存在") == "订单<num>不存在"
    assert template_of("open /var/lib/x.json: permission denied") == "open <path>: permission denied"


def test_stack_frames_do_not_decide_the_category(classifier):
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/malformed_json_connection_timeout.py", line 12, in run\n'
        "    check(validation_failed=True)\n"
        "RuntimeError: 订单不存在"
    )
    result = classifier.classify(traceback)
    assert (result.category, result.pattern) == ("unrecoverable_business", "不存在")


def test_frames_are_used_when_nothing_else_matches(classifier):
    text = "Exception in thread main\n\tat com.shop.MalformedJsonHandler.run(Handler.java:10)"
    assert classifier.classify(text).category == "unrecoverable_data"


@pytest.mark.parametrize("message, expected", [
    ("ActiveRecord::RecordNotFound: Couldn't find Order", "ActiveRecord::RecordNotFound"),
    ("Illuminate\\Database\\QueryException: SQLSTATE[HY000]", "Illuminate\\Database\\QueryException"),
    ("FATAL: too many clients", None),
])
def test_exception_type_is_read_from_ruby_php_and_python_prefixes(message, expected):
    from failured.classify import exception_type_in

    assert exception_type_in(message) == expected


def test_identifiers_are_spelled_out_when_nothing_else_decides():
    from failured.classify import Classifier
    from failured.rules import load_ruleset

    ruleset = load_ruleset(Path(__file__).resolve().parent.parent / "config")
    message = '{"status":"0","info":"ACCESS_TOO_FREQUENT"}'  # "too frequent" is a pattern; the underscores hide it
    assert Classifier(ruleset, stages=("pattern",)).rules_only(message, None) is None
    found = Classifier(ruleset, stages=("pattern", "spelled")).rules_only(message, None)
    assert (found[0].name, found[1]) == ("recoverable_temporary", "pattern")
    typed = Classifier(ruleset, stages=("pattern", "spelled")).rules_only("sorry", "asyncpg.TooManyConnectionsError")
    assert typed[0].name == "recoverable_temporary"  # "too many connections", from the class name


def test_spelling_out_a_64_kib_identifier_stays_fast():
    import time

    classifier = load_config(Path(__file__).resolve().parent.parent / "config").classifier
    messages = ["A" + "aB" * 32_768, "x_" * 32_768, "Ab." * 21_845, "é" * 65_536]
    start = time.perf_counter()
    for message in messages:
        classifier.classify_uncached(message)
    assert time.perf_counter() - start < 2.0


@pytest.mark.skipif(__import__("failured.classify").classify._compiled_spell_identifiers is None,
                    reason="failured._speedups is not built (no C compiler at install)")
def test_the_compiled_speller_spells_as_the_model_does():
    """classify spells identifiers with failured/_speedups.c: the same text as model.spell_identifiers."""
    import random

    from failured import corpus, model
    from failured.classify import _compiled_spell_identifiers

    rng = random.Random(6)
    pieces = ["a", "b", "A", "B", "Z", "HTTP", "Server", "ABc", "aB", "1", "23", "_", ".", "$", "-", " ", "é", "中", "\n",
              "Ab", "abC", "ACCESS_TOO_FREQUENT", "TooManyConnectionsError", "x.Y", "٣", "ǅ", "İ"]
    texts = [message for _, _, _, message in corpus.read_corpus()]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 20))) for _ in range(30000)]
    assert [text for text in texts if _compiled_spell_identifiers(text) != model.spell_identifiers(text)] == []


@pytest.mark.skipif(__import__("failured.classify").classify._compiled_without_frames is None,
                    reason="failured._speedups is not built (no C compiler at install)")
def test_the_compiled_frame_filter_keeps_the_lines_python_keeps():
    import random

    from failured import corpus
    from failured.classify import _compiled_without_frames, python_without_frames

    rng = random.Random(7)
    pieces = ["  File \"/srv/a.py\", line 3, in f", "    x = f()", "    ", "  at com.x.Y(Y.java:1)", "  at ", "\tat x", "at x",
              "... 12 more", "  ... 3 more", "... ٣ more", "...  more", "goroutine 7 [running]:", "goroutine x [",
              "main.go:12", "x.go:", ".go:٣", "Traceback (most recent call last):", "Traceback (most", "ValueError: bad",
              "\u3000File \"x\"", " ", "é", "\r\n", "\r", "\n", "\x0b", "\x1c", "\u2028", "\u0085", "File \""]
    texts = [message for _, _, _, message in corpus.read_corpus()]
    texts += ["\n".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(20000)]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(20000)]
    assert [text for text in texts if _compiled_without_frames(text) != python_without_frames(text)] == []


def test_a_result_is_the_frozen_dataclass_its_fields_make(classifier):
    import dataclasses

    from failured.classify import Classification

    result = classifier.classify_uncached("psycopg2.OperationalError: could not connect to server: Connection refused")
    same = Classification(**result.to_dict())
    assert (result, hash(result), repr(result)) == (same, hash(same), repr(same))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.category = "other"


@pytest.mark.skipif(__import__("failured.classify").classify._compiled_exception_type_in is None,
                    reason="failured._speedups is not built (no C compiler at install)")
def test_the_compiled_exception_type_reader_reads_what_python_reads():
    import random

    from failured import corpus
    from failured.classify import _compiled_exception_type_in, python_exception_type_in

    rng = random.Random(8)
    pieces = ["a", "A", "Z", "_", ".", "::", ":", "\\", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\u3000", "é", "É", "٣", "1",
              "Error", "pkg", "Mod", "x", "ValueError", "Traceback (most recent call last)",
              "Traceback (most recent call last):\n", ": ", ":\n", "\u2028", "ǅ", "İ"]
    texts = [message for _, _, _, message in corpus.read_corpus()]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 16))) for _ in range(40000)]
    texts += ["x" * 295 + "".join(rng.choice(pieces) for _ in range(10)) for _ in range(2000)]  # around the 300-char head
    texts += ["A" * rng.randint(290, 310) + ": x" for _ in range(200)] + ["a." * 150 + "Error: x"]
    assert [text for text in texts if _compiled_exception_type_in(text) != python_exception_type_in(text)] == []


@pytest.fixture(scope="module")
def shipped():
    return load_config(Path(__file__).resolve().parent.parent / "config").classifier


@pytest.mark.parametrize("message", [
    "requests.exceptions.ConnectionError: ('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))",
    "Read timed out. (read timeout=30)",
    "HTTP 503 Service Unavailable",
    "psycopg2.OperationalError: could not connect to server: Connection refused",
    "订单不存在",
    "malformed JSON payload",
])
@pytest.mark.parametrize("size", [300, 3000])
def test_an_attached_blob_does_not_change_what_a_message_is(shipped, message, size):
    """A response body or a payload dumped as base64 after the error: random text once read as a configuration
    error at 0.99 and overruled the rule (no retry for a reset connection). The model reads it as one token."""
    import base64
    import random

    rng = random.Random(size)
    blob = base64.b64encode(bytes(rng.getrandbits(8) for _ in range(size))).decode()
    plain = shipped.classify_uncached(message)
    attached = shipped.classify_uncached(f"{message} body={blob}")
    assert attached.category == plain.category, attached.pattern


def _opaque_folded_by_callback(text):
    """The opaque-token pass as it was written first: every long run, then a Python call counting its digits."""
    def folded(match):
        token = match.group(0)
        return " 0x " if sum(c.isdigit() for c in token) >= 3 else token
    return re.sub(r"[A-Za-z0-9+/=_-]{24,}", folded, text)


def _opaque_tricky_texts():
    import random

    from failured import corpus

    rng = random.Random(11)
    # Runs around 24 characters with around 3 digits, other scripts' digits (which \d and isdigit take), the run's
    # punctuation and what ends a run.
    pieces = ["a", "Z", "0", "7", "9", "+", "/", "=", "_", "-", "ab12", "x" * 10, "1" * 3, "٣", "１", "²", "é", "中", " ",
              ".", ":", "\n", "\x0b", "\ud800", "550e8400-e29b-41d4-a716-446655440000", "eyJhbGciOiJIUzI1NiJ9"]
    texts = [message for _, _, _, message in corpus.read_corpus()]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(40000)]
    for length in (22, 23, 24, 25, 200):
        for digits in (0, 2, 3, 4):
            run = "".join(rng.choice("abcXYZ+/=_-") for _ in range(length - digits)) + "5" * digits
            texts += [run, f"k={run}!", f"中{run}中", run + "٣٣٣", "é" + "".join(rng.sample(run, len(run)))]
    return texts + ["", "a" * 100_000 + "1" * 3, ("a" * 23 + " ") * 2000]


def test_opaque_tokens_fold_as_the_callback_folded_them():
    from failured.classify import python_opaque_folded

    texts = _opaque_tricky_texts()
    assert [text for text in texts if python_opaque_folded(text) != _opaque_folded_by_callback(text)] == []


@pytest.mark.skipif(__import__("failured.classify").classify._compiled_opaque_folded is None,
                    reason="failured._speedups is not built (no C compiler at install)")
def test_the_compiled_opaque_pass_folds_what_python_folds():
    from failured.classify import _compiled_opaque_folded, opaque_folded, python_opaque_folded

    assert opaque_folded is _compiled_opaque_folded
    texts = _opaque_tricky_texts()
    assert [text for text in texts if _compiled_opaque_folded(text) != python_opaque_folded(text)] == []
    assert [text for text in texts if _compiled_opaque_folded(text) != _opaque_folded_by_callback(text)] == []


def test_folding_a_long_run_with_too_few_digits_stays_linear():
    import time

    from failured.classify import opaque_folded, python_opaque_folded

    text = "a" * 200_000 + "12"  # no token starts inside a run: each position would read the rest of the run again
    start = time.perf_counter()
    assert python_opaque_folded(text) == opaque_folded(text) == text
    assert time.perf_counter() - start < 2.0


def _model_text_tricky_cases():
    import random

    from failured import corpus

    rng = random.Random(13)
    inner = json.dumps({"error_message": "Connection refused", "error_type": "socket.error"})
    pieces = ['{"error_message": "x"}', json.dumps({"error_message": inner}), '{"error_type": " ", "error_message": "y"}',
              "Traceback (most recent call last):\n", '  File "/srv/a.py", line 3, in f\n', "    x = f()\n",
              "ValueError: bad", "  at com.x.Y(Y.java:1)\n", "main.go:12\n", "token=eyJhbGciOiJIUzI1NiJ9abc123def456",
              " ", "\n", "{", "}", "é", "中", "\ud800", "[NET] "]
    cases = [(message, error_type) for _, error_type, _, message in corpus.read_corpus()]
    cases += [(json.dumps({"error_message": message, "error_type": error_type or ""}), None) for message, error_type in cases[:300]]
    cases += [("".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))), rng.choice([None, "", " ", "KeyError"]))
              for _ in range(20000)]
    return cases + [(inner, None), (json.dumps({"error_message": inner}), "RuntimeError"), ("", None), ("  ", "")]


def test_the_model_reads_the_text_model_text_makes_from_the_work_the_rules_did():
    """The classifier hands the model the unpacked message, type and core it already has (read_model_text): the
    text is model_text's, also for a JSON error inside a JSON error's message."""
    from failured.classify import exception_type_in, model_text, read_model_text, unpack, without_frames

    differences = []
    for given, given_type in _model_text_tricky_cases():
        message, error_type = unpack(given, given_type)  # as Classifier._classify_text reads it
        error_type = error_type or exception_type_in(message)
        core = without_frames(message) if "\n" in message else message
        if read_model_text(message, core, error_type) != model_text(message, error_type):
            differences.append((given, given_type))
    assert differences == []
