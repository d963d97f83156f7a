"""The pattern matcher: Hyperscan candidates confirmed by RE2, a compiled-database cache, RE2 while compiling."""

import logging
import time

import pytest

from failured import matcher
from failured.matcher import PatternSet, loosen

needs_hyperscan = pytest.mark.skipif(matcher.hyperscan is None, reason="Hyperscan is not installed here")


def test_long_bounded_repeats_are_loosened_outside_classes_and_escapes():
    assert loosen(r"open .{0,200}?: no such file") == r"open .{0,}?: no such file"
    assert loosen(r"a{2,9}b[x{0,50}]\{1,20}c{3,40}") == r"a{2,9}b[x{0,50}]\{1,20}c{3,}"
    assert loosen(r"\Qa{1,20}\E") == r"\Qa{1,20}\E"


@needs_hyperscan
@pytest.mark.parametrize("patterns, text, expected", [
    (["foo.{0,12}bar"], "foo 1234567890123 bar", None),  # Hyperscan's loosened candidate, refused by RE2
    (["foo.{0,12}bar"], "FOO 12 BAR", 0),
    (["x$", "x"], "x\n", 1),  # PCRE's "$" also matches before a final newline, RE2's does not
    (["a\\Sb"], "a\x0bb", 0),  # RE2's \S takes the vertical tab, PCRE's does not
    (["\\p{Lu}x"], "ax", 0),  # RE2 folds the case of \p{Lu}, Hyperscan does not
    (["(?U)a+b"], "aab", 0),  # Hyperscan cannot compile (?U): RE2 checks it on every message
    (["timeout", "refused", "time"], "connection refused after timeout", 0),
    (["time", "timeout", "refused"], "connection refused", 2),
])
def test_answers_are_re2s_whatever_hyperscan_reports(tmp_path, patterns, text, expected):
    ranks = list(range(len(patterns)))
    fast = PatternSet(patterns, ranks, cache_dir=tmp_path, background=False)
    slow = PatternSet(patterns, ranks, engine="re2")
    assert (fast.engine, slow.engine) == ("hyperscan", "re2")
    assert fast.best(text) == slow.best(text) == expected


def test_the_lowest_rank_wins_then_the_first_listed():
    patterns = PatternSet(["a", "b", "c"], [5, 1, 1], engine="re2")
    assert patterns.best("abc") == 1
    assert patterns.best("ac") == 2
    assert patterns.best("zzz") is None


@needs_hyperscan
def test_a_pattern_hyperscan_refuses_is_named_in_the_log(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="failured.matcher")
    patterns = PatternSet(["(?U)a+b", "timeout"], [1, 2], describe=lambda i: f'p.toml, category "c{i}"',
                          cache_dir=tmp_path, background=False)
    assert patterns.best("aab timeout") == 0
    assert "'(?U)a+b' (p.toml, category \"c0\"): Hyperscan cannot compile it" in caplog.text
    caplog.clear()
    cached = PatternSet(["(?U)a+b", "timeout"], [1, 2], cache_dir=tmp_path)  # said again on every start
    assert cached.engine == "hyperscan" and "'(?U)a+b'" in caplog.text and cached.best("timeout") == 1


@needs_hyperscan
def test_the_compiled_database_is_cached_and_reloaded(tmp_path):
    texts, ranks = ["connection.{0,40}refused", "disk full"], [1, 2]
    PatternSet(texts, ranks, cache_dir=tmp_path, background=False)
    assert len(list(tmp_path.glob("patterns-*.hs"))) == 1
    started = time.monotonic()
    again = PatternSet(texts, ranks, cache_dir=tmp_path)  # from the cache: no compile thread needed
    assert again.engine == "hyperscan" and again.wait_ready(timeout=0)
    assert time.monotonic() - started < 5
    assert again.best("Connection was refused") == 0


@needs_hyperscan
def test_a_corrupt_cache_file_is_compiled_again(tmp_path):
    texts = ["disk full"]
    first = PatternSet(texts, [1], cache_dir=tmp_path, background=False)
    path = next(tmp_path.glob("patterns-*.hs"))
    path.write_bytes(b"\nnot a database")
    again = PatternSet(texts, [1], cache_dir=tmp_path, background=False)
    assert first.engine == again.engine == "hyperscan" and again.best("the disk full") == 0


def test_re2_serves_while_hyperscan_compiles(tmp_path):
    patterns = PatternSet(["socket.{0,300}timeout", "refused"], [1, 2], cache_dir=tmp_path)
    assert patterns.best("socket read timeout") == 0  # answers at once, whichever engine
    assert patterns.wait_ready(timeout=300)
    assert patterns.best("socket read timeout") == 0


@pytest.mark.parametrize("engine", [None, "re2"])
def test_matching_stays_linear_on_hostile_text(tmp_path, engine):
    patterns = PatternSet([r"(?:a|a)*b.{0,200}c", r"(\w+\s?)*$x", "[a-z]+@[a-z]+\\.com"], [1, 2, 3],
                          engine=engine, cache_dir=tmp_path, background=False)
    for text in ["a" * 65536, "a-" * 32768, "a@" * 32768, "ab" * 32768 + "!"]:
        started = time.monotonic()
        patterns.best(text)
        assert time.monotonic() - started < 10


def test_a_lone_surrogate_does_not_crash_matching(tmp_path):
    patterns = PatternSet(["timeout"], [1], cache_dir=tmp_path, background=False)
    assert patterns.best("read \ud800 timeout") == 0


@needs_hyperscan
def test_candidates_name_every_pattern_that_matches(tmp_path):
    """What the code tables' gate reads: a superset of the patterns RE2 matches, with either engine."""
    from re2 import _re2

    from failured.rules import re2_options

    patterns = ["foo.{0,12}bar", "x$", "a\\Sb", "\\p{Lu}x", "(?U)a+b", "timeout", "(?i)smtp|mail|\\b[245]\\.\\d{1,3}\\b",
                "连接中断", "\\bZeile kaputt\\b"]
    texts = ["foo 1234567890123 bar", "FOO 12 BAR", "x\n", "a\x0bb", "ax", "aab", "connection TIMEOUT", "5.1.1 mail",
             "网关：连接中断", "die ZEILE KAPUTT", "nothing here", ""]
    each = [_re2.RE2(pattern.encode(), re2_options()) for pattern in patterns]
    fast = PatternSet(patterns, range(len(patterns)), cache_dir=tmp_path, background=False)
    slow = PatternSet(patterns, range(len(patterns)), engine="re2")
    for text in texts:
        data = text.encode()
        matching = {i for i, one in enumerate(each) if one.Match(_re2.RE2.Anchor.UNANCHORED, data, 0, len(data))[0][0] >= 0}
        assert matching <= set(fast.candidates(text, data)), text
        assert matching <= set(slow.candidates(text, data)), text
