"""Concepts: one idea in English and Chinese, so what the model learns in one wording carries to the other."""

import random
import threading

import pytest

from failured import concepts, corpus, model as learner, modelcache
from failured.classify import model_text
from failured.concepts import CONCEPTS, concepts_in, concepts_in_re2

needs_hyperscan = pytest.mark.skipif(concepts.hyperscan is None, reason="Hyperscan is not installed here")


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


# Pieces of text where Hyperscan's reading could part from RE2's: word characters and none around a spelling
# (digits, "_", Chinese, accented letters), case, the Kelvin sign and long s RE2 folds into "k" and "s",
# other letters that fold elsewhere (dotted and dotless i, sharp s, full-width letters), a Chinese spelling cut in
# half, the vertical tab, a lone surrogate (encoded as "?").
_PIECES = ["time", "TIMEOUT", "out", "port", "Port", "im", "x", "_", "9", "-", " ", "\n", "\x0b", ".", "中", "超",
           "超时", "余额", "不足", "é", "É", "İ", "ı", "ß", "ẞ", "\u212a", "K", "k", "ill", "ILLED", "\u017f", "s", "ql",
           "SQL", "ｔｉｍｅｏｕｔ", "\ud800", "utf-8", "e-mail", "x509", "api key", "apikey", "nil", "pay", "order", "连",
           "接", "\u8d85", "\x00", "\xff", "Ω", "ω", "\u2126"]


def _spelling_in_any_case(rng, spelling):
    return "".join(c.upper() if rng.random() < 0.5 else c for c in spelling)


def _tricky_texts(count, seed):
    rng = random.Random(seed)
    spellings = [s for spellings in CONCEPTS.values() for s in spellings]
    texts = []
    for _ in range(count):
        parts = [rng.choice(_PIECES) if rng.random() < 0.7 else _spelling_in_any_case(rng, rng.choice(spellings))
                 for _ in range(rng.randint(0, 12))]
        texts.append("".join(parts))
    return texts


@pytest.fixture(autouse=True, scope="module")
def hyperscan_ready():
    """Hyperscan compiles in the background (RE2 reads meanwhile): these tests compare it with RE2 once it serves."""
    assert concepts.wait_ready(timeout=60)


@needs_hyperscan
def test_hyperscan_is_what_reads_a_text_where_it_is_installed():
    assert concepts._HYPERSCAN.database is not None


@pytest.mark.parametrize("text, expected", [
    ("x\u212aILLED", ["killed"]),  # RE2 folds the Kelvin sign into "k", and sees a word boundary after the x
    (" \u212aILLED", []),  # ... but none between a space and the sign's first byte
    ("x\u017fql", ["database"]),  # the long s folds into "s"
    ("\u017fQL", []),
    ("killed by \u212a", ["killed"]),
    ("中timeout", ["timeout"]),  # bytes past ASCII are no word characters
    ("étimeout", ["timeout"]),
    ("_timeout 9timeout xtimeout", []),
    ("ＴＩＭＥＯＵＴ", []),  # full-width letters fold to full-width ones only
    ("超\ud800时", []),
    ("", []),
])
def test_unicode_case_folding_and_word_boundaries_read_as_re2_reads_them(text, expected):
    assert concepts_in(text) == concepts_in_re2(text) == expected


def test_every_tricky_text_names_the_concepts_the_re2_set_names():
    texts = _tricky_texts(30_000, seed=12)
    assert [t for t in texts if concepts_in(t) != concepts_in_re2(t)] == []


def test_every_corpus_message_names_the_concepts_the_re2_set_names():
    texts = [model_text(message, error_type)[:learner.MAX_CHARS] for _, error_type, _, message in corpus.read_corpus()]
    assert [t for t in texts if concepts_in(t) != concepts_in_re2(t)] == []


def test_a_long_text_names_the_concepts_the_re2_set_names():
    text = "x" * 100_000 + " 超时 " + "timeout" * 1000 + "\u212a" * 3 + " token"
    assert concepts_in(text) == concepts_in_re2(text) == ["timeout", "token"]
    assert concepts_in(text.replace("\u212a", "")) == ["timeout", "token"]


def test_threads_reading_at_once_each_read_their_own_text():
    texts = _tricky_texts(2000, seed=13)
    expected = [concepts_in_re2(t) for t in texts]
    wrong = []

    def read(offset):
        for text, names in zip(texts[offset:] + texts[:offset], expected[offset:] + expected[:offset]):
            if concepts_in(text) != names:
                wrong.append(text)

    threads = [threading.Thread(target=read, args=(n * 500,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@needs_hyperscan
def test_a_process_reads_the_compiled_spellings_from_the_cache_instead_of_compiling_them(tmp_path, monkeypatch):
    # compiling touches some 6 MB of Hyperscan's compiler that a daemon would hold for its whole life
    monkeypatch.setenv("FAILURE_MODEL_CACHE", str(tmp_path))
    first = concepts._cached_database(modelcache)
    assert [p.name for p in tmp_path.glob("concepts-*.hs")] == [f"concepts-{concepts._cache_key()}.hs"]

    def compile_again():
        raise AssertionError("compiled although the cache holds the database")

    monkeypatch.setattr(concepts, "_spellings_database", compile_again)
    second = concepts._cached_database(modelcache)
    assert second is not first
    text = "connection timed out: 余额不足"
    assert _scan(first, text) == _scan(second, text) == concepts_in_re2(text) != []


@needs_hyperscan
def test_a_cached_database_that_cannot_be_read_is_compiled_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILURE_MODEL_CACHE", str(tmp_path))
    (tmp_path / f"concepts-{concepts._cache_key()}.hs").write_bytes(b"not a database")
    database = concepts._cached_database(modelcache)
    assert _scan(database, "request timed out") == concepts_in_re2("request timed out") == ["timeout"]
    assert (tmp_path / f"concepts-{concepts._cache_key()}.hs").read_bytes() != b"not a database"


def _scan(database, text):
    """The concepts ``database`` finds in ``text``, read as concepts_in reads it."""
    found = set()
    database.scan(b" " + text.encode(), match_event_handler=concepts._collect, context=found,
                  scratch=concepts.hyperscan.Scratch(database))
    return [name for index, name in enumerate(CONCEPTS) if index in found]


@needs_hyperscan
def test_a_child_forked_while_the_database_compiles_compiles_its_own():
    # the child has no compiling thread: without its own it would read with RE2 for life
    import os
    import subprocess
    import sys

    probe = ("import os, time\n"
             "from failured import concepts\n"
             "concepts._HYPERSCAN.start()\n"
             "pid = os.fork()\n"
             "if pid == 0:\n"
             "    os._exit(0 if concepts.wait_ready(60) and concepts._HYPERSCAN.database is not None else 3)\n"
             "print(os.waitpid(pid, 0)[1] >> 8)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "FAILURE_MODEL_CACHE": "off"})
    assert result.stdout.strip() == "0", result.stdout + result.stderr
