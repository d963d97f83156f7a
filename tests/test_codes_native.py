"""The code extractors' compiled finders (failured/_speedups.c) find exactly what their expressions find.

Each finder against its Python expression on every corpus message (as written and with its
line breaks escaped, as ``classify --json -`` reads a traceback) and on generated text built
from the pieces each expression decides on: keywords in every case (and the non-ASCII letters
re.IGNORECASE folds onto ASCII ones), separators, quotes, digit runs of every length,
Unicode digits and spaces. Then the whole code stage answers alike with either set.
"""

import random
from pathlib import Path

import pytest
from recorded import assert_same_answers

from failured import codes, corpus
from failured.codes import _speedups as speedups
from failured.codes import NATIVE_FINDERS, PYTHON_FINDERS, CodeMatcher, load_code_tables
from failured.rules import load_ruleset

CONFIG = Path(__file__).resolve().parent.parent / "config"

pytestmark = pytest.mark.skipif(NATIVE_FINDERS is None, reason="failured._speedups is not built (no C compiler at "
                                                                "install): only the Python expressions run")

PIECES = [
    "a", "an", "A", "Z", "E", "EA", "W", "WSAE", "0", "9", "12", "123", "1234", "-", "_", ".", ":", "=", " ", "  ", "\t",
    "\n", "\u3000", "é", "٣", "中", "(", ")", ",", "[", "]", '"', "'", "`", "ı", "İ", "K", "ſ",
    # HTTP
    "HTTP/1.1 ", "http/2 ", "HTTP/1.", "hTtP", "status", "STATUS", "ſtatus", "status code", "status_code", "statuscode",
    "Status-Code", "http_status", "http error", "http-code", "httpcode", "response code", "response_code", "error",
    "Error code", "error_code", "code", "code:", '"code": ', '"error": {', '"meta": {', "}", "returned", "received",
    "got", "with", "resulted in", "Resulted In", "client", "Client", "server", "SERVER", "Error", "errors", "codes",
    "500", "503", "404", "200", "4040", "50.3",
    # SQLSTATE
    "SQLSTATE", "sqlstate", "SQL STATE", "SQL state", "Sql State:", "08006", "HY000", "57P01",
    "ERROR 1062 (", "12345 (", "(23000)", "(28P01)", "(build)", "PostgresException", "postgresexception: ",
    " (0x80004005)", " (0x8000400)", "23505:", "P0001:",
    # errno
    "[Errno", "[Errno ", "[WinError ", "errno", "errno=", "errno: ", "os error ", "Error(", "IOError(", "XError(-",
    "ECONNREFUSED", "EAGAIN", "WSAECONNRESET", "E" + "A" * 20,
    # gRPC
    "code = ", "code=", "StatusCode.", 'StatusCode="', "StatusRuntimeException", "StatusException", "RpcException",
    "RpcError", ": ", " - ", '"status"', '"status": "', "UNAVAILABLE", "DEADLINE_EXCEEDED", "NotFound", "Unavailable",
    "14 ", "ABCD", "A_B_C",
    # tokens
    "x.y", "a-b", "Throttling.User", "a.", "b-",
]


def generated_texts(count, seed):
    rng = random.Random(seed)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 16))) for _ in range(count)]
    return texts + ["".join(rng.choice(PIECES) for _ in range(rng.randint(100, 400))) for _ in range(count // 300)]


@pytest.fixture(scope="module")
def corpus_texts():
    messages = [message for _, _, _, message in corpus.read_corpus()]
    return messages + [message.replace("\n", "\\n") for message in messages if "\n" in message]


@pytest.mark.parametrize("name", sorted(PYTHON_FINDERS))
def test_each_compiled_finder_finds_what_its_expression_finds(name, corpus_texts):
    python, native = PYTHON_FINDERS[name], NATIVE_FINDERS[name]
    texts = corpus_texts + generated_texts(30000, seed=sorted(PYTHON_FINDERS).index(name))
    assert_same_answers(f"finder[{name}]", texts, lambda text: list(native(text)), lambda text: list(python(text)))


def test_known_tokens_keeps_what_the_token_extractor_yields_that_is_known(corpus_texts):
    ruleset = load_ruleset(CONFIG)
    tables = load_code_tables(CONFIG, frozenset(c.name for c in ruleset.categories))
    known = {value for table in tables if table.kind == "token" for value in [*table.codes, *table.aliases]}
    known |= {"x", "a-b", "Throttling", "Throttling.User", "a.b", "x.y"}
    texts = corpus_texts + generated_texts(30000, seed=7) + ["a.b.c x.y.z", "Throttling.User.", "x..y a.-b", "é.x"]
    assert [text for text in texts if speedups.known_tokens(text, known)
            != [value for value in codes.extract_tokens(text) if value in known]] == []


def test_the_code_stage_answers_alike_with_either_finders(corpus_texts, monkeypatch):
    ruleset = load_ruleset(CONFIG)
    tables = load_code_tables(CONFIG, frozenset(c.name for c in ruleset.categories))
    texts = corpus_texts + generated_texts(3000, seed=99)
    native = CodeMatcher(tables)  # a matcher each: each keeps its last message's values
    with monkeypatch.context() as patched:
        patched.setattr(codes, "_FINDERS", PYTHON_FINDERS)
        python = CodeMatcher(tables)  # with the value gates a matcher of the Python finders keeps

    def with_python_finders(text):
        with monkeypatch.context() as patched:
            patched.setattr(codes, "_FINDERS", PYTHON_FINDERS)
            return _named(python.match(text))
    hits = assert_same_answers("code_stage_finders", texts, lambda text: _named(native.match(text)), with_python_finders)
    assert sum(hit is not None for hit in hits) > 5000  # the comparison has teeth (7,970 of 32,613 texts in session 10)


def _named(hit):
    """A code stage's hit with its table by name (a table's repr is its address)."""
    return hit and (hit[0].name, hit[1], hit[2])


# Each expression's own traps, 64 KiB long: linear code takes milliseconds.
HOSTILE = ["[Errno " * 9362, "errno " * 10922, "HTTP/1 " * 9362, "status code " * 5461, "sqlstate " * 7281,
           "StatusCode." * 5957, "code=" * 13107, "returned " * 7281, "E" * 65536, "1" * 65536, "a." * 32768, "a-" * 32768]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:8]))
def test_the_compiled_finders_stay_linear_on_hostile_input(text):
    import time

    started = time.monotonic()
    for find in NATIVE_FINDERS.values():
        list(find(text))
    assert time.monotonic() - started < 10.0  # generous: linear code takes milliseconds here


def test_blank_lines_before_a_status_are_crossed_once_and_found_alike():
    """Each line start of a run of blank lines once scanned the whole run again (quadratic: 1 MB of line breaks
    took 199 s); the same statuses are found."""
    import time

    python, native = PYTHON_FINDERS["http"], NATIVE_FINDERS["http"]
    for text in ["\n" * 500 + "404 Not Found", "\n \n\t\n" * 200 + "  [503] busy\n\n502: bad gateway", "\n" * 300]:
        assert list(native(text)) == list(python(text))
    started = time.monotonic()
    assert list(native("\n" * 400_000 + "503 Service Unavailable")) != []
    assert time.monotonic() - started < 10.0  # generous: linear code takes milliseconds here, the old scan 30 s


def test_a_model_table_width_too_large_for_memory_is_refused_not_a_crash():
    from array import array

    from failured import _speedups

    with pytest.raises(ValueError, match="width must be positive"):
        _speedups.column_sums(array("i", [0]), b"", [], 2 ** 62)  # its row size wrapped to 0: a division by zero
