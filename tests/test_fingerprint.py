"""Fingerprints: linear time on hostile input, class names are not hosts, numbers replaced whole;
the compiled passes (failured/_speedups.c) replace exactly as Python's re does."""

import functools
import os
import random
import re
import time

import pytest

from failured import corpus, fingerprint as fingerprints
from failured.classify import exception_type_in
from failured.fingerprint import _NATIVE_NAMES, _REPLACEMENTS, NATIVE_PASSES, PYTHON_PASSES, fingerprint, template_of

# Each took a backtracking engine from 12 s to over 3 minutes at 64 KiB; linear code takes milliseconds.
HOSTILE = ["a-" * 32768, "A" + "a" * 65535, "Aa" * 32768, "a." * 32768, "a@" * 32768, "-1" * 32768,
           "a1-" * 21845, "a------" * 9362, "x.com." * 10922, "/a" * 32768, "a:\\" * 21845, "[:" * 32768,
           "é-" * 32768, "'" * 65536, "0x" * 32768, "<1" * 32768]

# Generous: the old code needed 0.7 s at 8 KiB and 99 s at 64 KiB, linear code well under 0.1 s here.
BUDGET_SECONDS = 10.0


needs_native = pytest.mark.skipif(NATIVE_PASSES is None, reason="failured._speedups is not built (no C compiler "
                                                                  "at install): only the Python passes run")
PASS_SETS = [pytest.param(PYTHON_PASSES, id="python"), pytest.param(NATIVE_PASSES, id="native", marks=needs_native)]


@pytest.mark.skipif(not os.environ.get("FAILURED_REQUIRE_SPEEDUPS"),
                    reason="FAILURED_REQUIRE_SPEEDUPS is not set: the compiled code may be absent")
def test_the_compiled_code_is_built_where_it_is_required():
    """The extension is optional at install: where CI sets FAILURED_REQUIRE_SPEEDUPS, a build that
    failed quietly fails here instead of leaving the comparisons skipped."""
    assert NATIVE_PASSES is not None, "failured._speedups did not build or import: see pip's build output"


@pytest.fixture(params=PASS_SETS)
def passes(request, monkeypatch):
    """Template with this set of passes (the compiled ones, or re's where the extension is not built)."""
    monkeypatch.setattr(fingerprints, "_PASSES", request.param)
    return request.param


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:6]))
def test_fingerprint_and_exception_type_stay_linear_on_hostile_input(text, passes):
    started = time.monotonic()
    fingerprint(text)
    exception_type_in(text)
    assert time.monotonic() - started < BUDGET_SECONDS


@pytest.mark.parametrize("message, template", [
    ("java.net.SocketTimeoutException: Read timed out", "java.net.SocketTimeoutException: Read timed out"),
    ("java.io.IOException: No space left on device", "java.io.IOException: No space left on device"),
    ("javax.net.ssl.SSLHandshakeException: handshake_failure", "javax.net.ssl.SSLHandshakeException: handshake_failure"),
    ("connect to api.example.com:443 failed", "connect to <host> failed"),
    ("order_12 failed", "order_<num> failed"),
    ("data type float64, utf8", "data type float64, utf8"),
    ("位置 10-20 位", "位置 <num>-<num> 位"),
    ("订单12345不存在", "订单<num>不存在"),
    # beside a Chinese character an id starts and ends as beside a space (to \b it is a word character)
    ("运单号SF1234567890不存在", "运单号<id>不存在"),
    ("顺丰下单失败，订单号：ORD20240518001已存在", "顺丰下单失败，订单号：<id>已存在"),
    ("用户abc不存在", "用户abc不存在"),  # a word, not an id
])
def test_class_names_are_not_hosts_and_numbers_are_replaced_whole(message, template):
    assert template_of(message) == template


def test_order_numbers_share_a_fingerprint():
    assert fingerprint("order_12 failed")[1] == fingerprint("order_98 failed")[1]


def test_a_lone_surrogate_is_kept_and_does_not_crash_the_re2_passes():
    # A JSON "\\ud800" decodes to a lone surrogate; RE2 reads it as bytes that match nothing.
    assert template_of("GET http://api.example.com/x failed at host db.example.com \ud800 id 12") == \
        "GET <url> failed at host <host> \ud800 id <num>"


def test_a_long_traceback_templates_from_its_head_as_from_the_whole_text():
    frames = "".join(f'  File "/srv/app/m{i}.py", line {i}, in run\n' for i in range(200))
    message = f"Traceback (most recent call last):\n{frames}ValueError: bad 'x' at localhost"
    template = template_of(message)
    assert template.startswith("Traceback (most recent call last): File <str>, line <num>, in run File <str>")
    assert len(template) == 500


# Pieces around what each compiled pass decides: word boundaries (Unicode letters and digits
# too), signs, hex of both cases, dotted quads, ports, quotes and their limits, Windows paths.
PIECES = ["a", "Z", "0", "9", "12", "123", "1234", "-", "+", "_", ".", ":", "<", "x", "0x", "é", "٣", "中", " ", "\n",
          "'", '"', "“", "”", "‘", "’", "deadbeef", "DEADBEEF", "abcdef12", "1.2.3.4", "10.0.0.1:80",
          "255.255.255.2555", "12345678-1234-1234-1234-123456789abc", "²", "Ⅷ", "_1", "ab-", "\u0660\u0661", "𝟘",
          "C:\\", "\\", "c:\\a\\", "a\\b", "~", "@", "/", "w" * 199, "\ud800", "：", "号SF", "ORD2024"]


def generated_texts(count, seed=3):
    rng = random.Random(seed)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25))) for _ in range(count)]
    return texts + ["".join(rng.choice(PIECES) for _ in range(rng.randint(100, 600))) for _ in range(count // 200)]


HOST_PIECES = ["a", "b", "x-", "-", "_", "A", "1", "12", ".", "..", ":", ":80", ":8080a", "com", "co", "cool", "cloud",
               "local", "localhost", "internal", "lan", "uk", "io", "ai", "info", " ", "é", "中", "\n", ".x", ".X", "._",
               ".1", "java.net.Socket", "api.example.com", "db-1.prod.internal:5432", "\ud800", "/", "@"]


@needs_native
@pytest.mark.parametrize("name", sorted(_NATIVE_NAMES.values()))
def test_each_compiled_pass_replaces_as_its_pattern_does(name):
    """Each C pass against its pattern as written in _REPLACEMENTS, run by its engine (re, or RE2
    for the host pass, through the pass fingerprint.py runs where the extension is not built)."""
    index = next(i for i, entry in enumerate(_REPLACEMENTS) if _NATIVE_NAMES.get(entry[2]) == name)
    engine, _, pattern, replacement = _REPLACEMENTS[index]
    native = NATIVE_PASSES[index][1]
    reference = PYTHON_PASSES[index][1] if engine is not re else functools.partial(re.compile(pattern).sub, replacement)
    texts = [message for _, _, _, message in corpus.read_corpus()] + generated_texts(20000)
    if name == "host_pass":
        rng = random.Random(9)
        texts += ["".join(rng.choice(HOST_PIECES) for _ in range(rng.randint(1, 20))) for _ in range(20000)]
    assert [text for text in texts if native(text) != reference(text)] == []


@needs_native
def test_the_compiled_passes_template_every_corpus_message_as_the_python_ones(monkeypatch):
    messages = [message for _, _, _, message in corpus.read_corpus()] + generated_texts(2000, seed=4)
    native = [template_of(message) for message in messages]
    monkeypatch.setattr(fingerprints, "_PASSES", PYTHON_PASSES)
    assert [template_of(message) for message in messages] == native


@pytest.mark.skipif(NATIVE_PASSES is None, reason="failured._speedups is not built: only the Python code runs")
def test_the_compiled_head_quote_check_decides_as_the_python_one():
    """_quoted_in_head: the quoted pass on a head cut at a space, or None when a quote near its end may
    open a value that closes past the cut; compiled and Python alike on heads of every corpus message
    and on generated text dense in quotes near the end."""
    from failured._speedups import quoted_in_head

    messages = [message for _, _, _, message in corpus.read_corpus()]
    heads = [message[:cut] for message in messages for cut in (len(message), len(message) // 2, 250, 203, 202, 201)]
    rng = random.Random(21)
    pieces = ["'", '"', "“", "”", "‘", "’", "a", "bc", " ", "\n", "x" * 150, "é", "中"]
    heads += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(30000)]
    reach = fingerprints._STR_REACH
    assert [head for head in heads if quoted_in_head(head, reach) != fingerprints.python_quoted_in_head(head)] == []
