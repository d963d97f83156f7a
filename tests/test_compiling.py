"""A large pattern set's Hyperscan database is compiled in a child process (failured/compiling.py): the same
answers as RE2, the refused patterns named as before, and compiled here when the child cannot run."""

import logging
import sys

import pytest

from failured import compiling, matcher
from failured.matcher import COMPILE_APART_FROM, PatternSet

pytestmark = pytest.mark.skipif(matcher.hyperscan is None, reason="Hyperscan is not installed here")

PATTERNS = ([f"error code {n}\\b" for n in range(COMPILE_APART_FROM)]
            + ["(?U)a+b",  # Hyperscan cannot compile it: RE2 checks it on every message
               "\\p{Lu}x",  # Hyperscan folds \p{...} unlike RE2: RE2 alone
               "connection .{0,40}refused"])
TEXTS = ["error code 7 from upstream", "error code 70", "aab", "ax", "connection to db-1 was refused", "fine"]


def expected():
    slow = PatternSet(PATTERNS, list(range(len(PATTERNS))), engine="re2")
    return [slow.best(text) for text in TEXTS]


def test_a_large_set_is_compiled_in_a_child_with_the_same_answers(tmp_path, monkeypatch, caplog):
    def not_here(patterns):
        raise AssertionError("compiled in the daemon's own process")

    monkeypatch.setattr(compiling, "compile_database", not_here)  # the child has its own, untouched
    caplog.set_level(logging.WARNING, logger="failured.matcher")
    fast = PatternSet(PATTERNS, list(range(len(PATTERNS))), cache_dir=tmp_path, background=False)
    assert fast.engine == "hyperscan"
    assert [fast.best(text) for text in TEXTS] == expected() == [7, None, 64, 65, 66, None]
    assert "(?U)a+b" in caplog.text and "Unicode classes" in caplog.text  # refused in the child, named here
    assert list(tmp_path.glob("patterns-*.hs"))  # and cached as before


def test_a_child_that_cannot_start_or_fails_leaves_compiling_to_this_process(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="failured.matcher")
    for n, (executable, reason) in enumerate((("/nonexistent/python3", "FileNotFoundError"),
                                              ("/bin/false", "exit status 1"))):
        monkeypatch.setattr(sys, "executable", executable)
        fast = PatternSet(PATTERNS, list(range(len(PATTERNS))), cache_dir=tmp_path / str(n), background=False)
        assert fast.engine == "hyperscan"
        assert [fast.best(text) for text in TEXTS] == expected()
        assert f"compiling the patterns in a child process failed ({reason}" in caplog.text


def test_a_small_set_is_compiled_here(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")  # a child would fail and say so
    caplog.set_level(logging.WARNING, logger="failured.matcher")
    fast = PatternSet(["timeout", "refused"], [0, 1], cache_dir=tmp_path, background=False)
    assert fast.engine == "hyperscan" and fast.best("connection refused") == 1
    assert "child process" not in caplog.text
