"""The fast classification path gives the answers of a straightforward one on every corpus message.

The reference matches each pattern with its own RE2 search (RE2's matcher
itself, without the Python wrapper's per-call cost) and takes the lowest
priority (then the first listed), and templates with the replacement passes
applied one after the other through RE2's and Python's ``sub`` on the whole
text: the code as it was before Hyperscan, the byte-level RE2 passes, the compiled
passes (failured/_speedups.c, where built) and the head-only template (cut at a line
break or a space). Its code finders, identifier speller, frame filter and exception type
reader are the Python ones, where the fast path uses the compiled ones. The reference runs where no record
vouches for its answers on these very inputs (tests/recorded.py).
"""

import contextlib
import random
from pathlib import Path

import pytest
from re2 import _re2
from recorded import assert_same_answers

from failured import classify, codes, corpus, fingerprint as fingerprints, model
from failured.classify import Classifier
from failured.codes import PYTHON_FINDERS, CodeMatcher
from failured.config import load_config
from failured.fingerprint import (_COMPILED, MAX_INPUT_CHARS, MAX_TEMPLATE_CHARS, NATIVE_PASSES, PYTHON_PASSES,
                                  template_of)
from failured.rules import re2_options

CONFIG = Path(__file__).resolve().parent.parent / "config"
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED


def reference_template(message):
    text = message[:MAX_INPUT_CHARS]
    for literal, pattern, replacement in _COMPILED:
        if literal is None or literal in text:
            text = pattern.sub(replacement, text)
    return text.strip()[:MAX_TEMPLATE_CHARS]


class ReferenceClassifier(Classifier):
    """Every pattern searched on its own: the lowest (priority, position) that matches wins; every
    code table's ``when`` and ``texts`` too (no gate).

    ``seen`` records each text the pattern stage was given and the pattern it chose.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, engine="re2", **kwargs)
        self.codes = CodeMatcher(self.codes.tables, gate=False)  # each table's "when" and "texts" searched on its own
        self._each = [_re2.RE2(text.encode(), re2_options()) for _, text, _, _ in self._pattern_owner]
        self.seen = []

    def _by_pattern_stage(self, text):
        data = text.encode("utf-8", "replace")  # as the matcher reads a lone surrogate
        hits = [i for i, compiled in enumerate(self._each) if compiled.Match(_UNANCHORED, data, 0, len(data))[0][0] >= 0]
        best = min(hits, key=lambda i: (self._pattern_owner[i][0], i)) if hits else None
        self.seen.append((text, best))
        if best is None:
            return None
        _, pattern, category, _ = self._pattern_owner[best]
        return category, "pattern", pattern


@pytest.fixture(scope="module")
def shipped():
    snapshot = load_config(CONFIG)
    fast = snapshot.classifier
    assert fast.patterns.wait_ready(timeout=300) and fast.codes.wait_ready(timeout=300)
    parts = (fast.ruleset, fast.lang, fast.codes.tables, fast.model, fast.min_confidence)
    overruling = {"overrule_confidence": fast.overrule_confidence}  # the shipped setting, on every path
    return fast, Classifier(*parts, engine="re2", **overruling), ReferenceClassifier(*parts, **overruling)


def corpus_cases():
    return [(message, error_type) for _, error_type, _, message in corpus.read_corpus()]


@contextlib.contextmanager
def python_code_only():
    """The reference's own code: every fingerprint pass, code finder, the identifier speller, the
    frame filter and the exception type reader in Python (the compiled ones, failured/_speedups.c,
    are what the fast path brings)."""
    names = ("_spell_identifiers", "without_frames", "exception_type_in")
    saved = fingerprints._PASSES, codes._FINDERS, [getattr(classify, name) for name in names]
    fingerprints._PASSES, codes._FINDERS = PYTHON_PASSES, PYTHON_FINDERS
    for name, python in zip(names, (model.spell_identifiers, classify.python_without_frames,
                                    classify.python_exception_type_in)):
        setattr(classify, name, python)
    try:
        yield
    finally:
        fingerprints._PASSES, codes._FINDERS = saved[:2]
        for name, compiled in zip(names, saved[2]):
            setattr(classify, name, compiled)


class SeenPatterns:
    """A pattern set that records each text it was given and the pattern it chose, as ``seen`` holds them
    for the reference."""

    def __init__(self, patterns):
        self.patterns, self.seen = patterns, []

    def best(self, text):
        index = self.patterns.best(text)
        self.seen.append((text, index))
        return index

    def __getattr__(self, name):
        return getattr(self.patterns, name)


def answers_of(classifier, seen, template):
    """A case's whole answer: the classification, the template of its message and the texts the pattern stage
    was given with the pattern it chose for each."""
    def answer(case):
        seen.clear()
        found = classifier.classify_uncached(*case).to_dict()
        return found, template(found["message"]), list(seen)
    return answer


# The corpus is checked in shards, so that pytest-xdist's workers share it: whole, it was four and a half
# minutes of one core, the longest test by far, and the suite waited for it.
SHARDS = 8


@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_corpus_message_gets_the_reference_answer(shipped, shard):
    """The whole answer of the fast path, on every corpus message as written and (a traceback) as
    one line with its line breaks escaped, as ``classify --json -`` reads it; and RE2 alone (as
    while Hyperscan compiles) on every text the pattern stage was given.

    The reference runs where no record vouches for its answers (tests/recorded.py); RE2 alone always runs."""
    fast, re2_only, reference = shipped
    assert fast.patterns.engine in ("hyperscan", "re2")  # "re2" where Hyperscan cannot install
    assert re2_only.patterns.engine == "re2"
    cases = corpus_cases()
    assert len(cases) > 2000
    cases += [(message.replace("\n", "\\n"), error_type) for message, error_type in cases if "\n" in message]
    cases = cases[shard::SHARDS]
    fast.patterns = seeing = SeenPatterns(fast.patterns)
    try:
        answers = assert_same_answers(f"classify_equivalence[{shard}]", cases,
                                      answers_of(fast, seeing.seen, template_of), reference_answer(reference))
    finally:
        fast.patterns = seeing.patterns
    seen = [pair for _, _, pairs in answers for pair in pairs]
    assert sum(best is not None for _, best in seen) > len(cases) // 4  # the check has teeth
    assert [(text[:120], got, best) for text, best in seen if (got := re2_only.patterns.best(text)) != best] == []


def reference_answer(reference):
    answer = answers_of(reference, reference.seen, reference_template)

    def with_python_code(case):
        with python_code_only():
            return answer(case)
    return with_python_code


@pytest.mark.parametrize("passes", [
    pytest.param(PYTHON_PASSES, id="python"),
    pytest.param(NATIVE_PASSES, id="native", marks=pytest.mark.skipif(NATIVE_PASSES is None,
                                                                      reason="failured._speedups is not built")),
])
def test_varied_and_long_messages_template_like_the_reference(passes, monkeypatch):
    monkeypatch.setattr(fingerprints, "_PASSES", passes)
    rng = random.Random(12)
    real = [message for message, _ in corpus_cases()]
    pieces = ["localhost", ".com", "://", "0x1f", "\n", "   ", "'", '"', "-", "1234", "a1b2c3d4", "é", "中",
              "/srv/app/x.py", "C:\\a\\b", "[::1]:80", "10.0.0.1:5432", "user@example.com",
              # around the first-character-first passes: Unicode digits and word characters, signs, hex
              "٣", "é1234", "+1.5", "<7", "a/b/c", "./x/y", "deadbeef", "0xZZ", "é0123abcd", "_12ab34"]
    # Quotes with spaces inside, near where a long one-line message is cut (about 1,024 characters in).
    quoted = ["'a b'", '"q r s"', "“x y”", "‘p q’", "it's", '" ', " '", "“", "‘"]
    messages = []
    for _ in range(500):  # 1,500 messages, long tracebacks and long single lines among them
        head = rng.choice(real)
        frames = "".join(f'  File "/srv/app/m{rng.randint(1, 999)}.py", line {rng.randint(1, 3000)}, in f\n'
                         for _ in range(rng.randint(0, 60)))
        noise = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        messages.append(f"Traceback (most recent call last):\n{frames}{head} {noise}")
        messages.append(noise * rng.choice([1, 30]) + head)
        line = "".join(rng.choice(quoted) if rng.random() < 0.3 else "w" * rng.randint(1, 40) + " "
                       for _ in range(rng.randint(30, 90)))
        messages.append(f"Traceback (most recent call last):\\n{frames}{line}{head}".replace("\n", "\\n"))
    assert [template_of(m) for m in messages] == [reference_template(m) for m in messages]
