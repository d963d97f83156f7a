"""Error fingerprints: the message with its variable parts replaced, hashed.

Two failures with the same fingerprint are "the same error" for analysis and
for notification dedup, whatever order id, host or line number they carry.

A template costs time linear in the message whatever a reporter sends. The
replacements whose patterns start with a run that may cross word boundaries
(URLs, e-mails, hosts, ids) run on RE2: Python's backtracking engine spent
99 s on ``"a-" * 32768`` with them. The others cannot backtrack further than
one word and stay on Python's ``re``, which is many times faster per match.
A pass whose required literal ("://", "@", ".") is absent is skipped, the RE2
passes run on the UTF-8 bytes through RE2's own matcher (its Python ``sub`` costs
tens of microseconds a match), and a long message is templated from a head
ending at a line break or a space when that head alone fills the template: no
replacement crosses a line break, and only a quoted value crosses a space, so
a head cut at a space is used only when no quote near its end opened a value
that could close past it; a long one-line message (a traceback joined with
literal "\\n") then costs its head, not 8 KiB. The ``re`` passes run as
equivalent patterns that begin with their first character, so the engine
skips straight to where a match can start, and the id pass runs only on a
text holding a run with three digits and a letter. The templates are those of
the plain passes over the whole text (tests/test_classify_equivalence.py
compares the two). Where the package's C extension (failured/_speedups.c) is built, the
uuid, quoted-value, IPv4, Windows path, host, hex, id and number passes run there
instead: the same replacements (the host pass as RE2 makes it), written out as one
linear scan each (tests/test_fingerprint.py compares each with its pattern).
"""

import functools
import hashlib
import re

import re2

# the compiled passes; without them (no compiler at install, or a stale build) Python's re gives the same
from .speedups import speedups as _speedups

MAX_TEMPLATE_CHARS = 500
# The template keeps its first 500 characters; replacing placeholders rarely shrinks
# 8 KiB below that, so reading further would cost time and change nothing.
MAX_INPUT_CHARS = 8192

_TLDS = "com|net|org|io|cn|co|dev|app|cloud|ai|info|biz|me|us|uk|de|jp|hk|tw|gov|edu|local|internal|lan"


_NO_DIGITS = str.maketrans("", "", "0123456789")


def _hex_or_keep(match):
    text = match.group()  # ASCII hex digits only: both a digit and a letter unless all of one kind
    if text.startswith("0x") or not (text.isdigit() or text.isalpha()):
        return "<hex>"
    return text


def _id_or_keep(match):
    text = match.group()  # ASCII letters, digits, "_" and "-"
    if text.isalpha():  # most words: no digit at all
        return text
    letters = text.translate(_NO_DIGITS)
    return "<id>" if len(text) - len(letters) >= 3 and letters.strip("_-") else text


def _host_or_keep(match):
    # "java.net.SocketTimeoutException" and "java.io.File" are class names, not hosts.
    return match.group() if match.group("more") else "<host>"


# (engine, required literal or None, pattern, replacement). Order matters: a URL holds a
# host and a path, a path may hold numbers.
_REPLACEMENTS = [
    (re2, "://", r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)\]]+", "<url>"),
    (re2, "@", r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", "<email>"),
    (re, "-", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<uuid>"),
    (re, None, r"'[^'\n]{1,200}'|\"[^\"\n]{1,200}\"|“[^”\n]{1,200}”|‘[^’\n]{1,200}’", "<str>"),
    (re, ".", r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<ip>"),
    (re, "[", r"\[[0-9a-fA-F:]*:[0-9a-fA-F:]+\](?::\d+)?", "<ip>"),
    (re, ":\\", r"\b[A-Za-z]:\\(?:[\w.@~+-]+\\)+[\w.@~+-]*", "<path>"),
    (re, "/", r"(?<![\w.])/(?:[\w.@~+-]+/)+[\w.@~+-]*(?:\?\S*)?", "<path>"),
    (re2, ".", rf"\b(?:[a-z0-9-]+\.)+(?:{_TLDS})(?::\d+)?\b(?P<more>\.[A-Za-z_])?|\blocalhost(?::\d+)?\b(?P<x>)",
     _host_or_keep),
    (re, None, r"\b0x[0-9a-fA-F]+\b|\b[0-9a-f]{8,}\b", _hex_or_keep),
    # Greedy to the run's end: never rescans. Beside a Chinese character (a word character to \b, so
    # "运单号SF1234567890不存在" had no boundary) a run starts and ends as beside a space.
    (re, None, r"(?:\b|(?<=[^\x00-\x7f]))[A-Za-z0-9_-]{6,}(?:\b|(?=[^\x00-\x7f]))", _id_or_keep),
    # A number is replaced whole, never its tail: "order_12" -> "order_<num>", "utf8" stays.
    (re, None, r"(?<![A-Za-z0-9<])[-+]?\d+(?:\.\d+)?", "<num>"),
    (re, None, r"\s+", " "),
]
_COMPILED = [(literal, engine.compile(pattern), replacement)
             for engine, literal, pattern, replacement in _REPLACEMENTS]
# The same passes written so that Python's engine runs them faster: a pattern that starts
# with a character class lets it skip to the next possible first character, where one that
# starts with \b or a lookbehind is tried at every position (a third to a half of the
# pass). Each is the pattern above with the test before its first character moved after
# it: \b before a word character c is (?<!\w.) after c, and a lookbehind on the character
# before c looks two back. tests/test_classify_equivalence.py templates with the originals.
_FIRST_CHARACTER_FIRST = {
    _REPLACEMENTS[2][2]: r"[0-9a-fA-F](?<!\w.)[0-9a-fA-F]{7}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
    _REPLACEMENTS[4][2]: r"\d(?<!\w.)\d{0,2}(?:\.\d{1,3}){3}(?::\d+)?\b",
    _REPLACEMENTS[6][2]: r"[A-Za-z](?<!\w.):\\(?:[\w.@~+-]+\\)+[\w.@~+-]*",
    _REPLACEMENTS[7][2]: r"/(?<![\w.]/)(?:[\w.@~+-]+/)+[\w.@~+-]*(?:\?\S*)?",
    _REPLACEMENTS[9][2]: r"[0-9a-f](?<!\w.)(?:(?<=0)x[0-9a-fA-F]+\b|[0-9a-f]{7,}\b)",
    _REPLACEMENTS[11][2]: r"[-+\d](?<![A-Za-z0-9<].)(?:(?<=\d)\d*|\d+)(?:\.\d+)?",
}
# The quoted-value pass, the only one that crosses a space: the characters that open a value,
# and how far one reaches (its quote, up to 200 characters, its quote).
_STR_PASS = next(number for number, entry in enumerate(_REPLACEMENTS) if entry[3] == "<str>")
_OPENING_QUOTES = "'\"“‘"
_STR_REACH = 202
_CUT = re.compile(r"[ \n]")
# The host pass's "localhost" alternative needs no ".": whether it is skipped depends on the whole text.
_HOST_PASS = next(number for number, entry in enumerate(_REPLACEMENTS) if entry[3] is _host_or_keep)
_WHITESPACE_PASS = len(_REPLACEMENTS) - 1  # the only pass that crosses line breaks
HEAD_CHARS = 1024  # a long message is first templated from its lines up to about here


class _Re2Pass:
    """An RE2 replacement run on UTF-8 bytes with RE2's matcher: ``sub`` without the wrapper's per-match cost."""

    def __init__(self, pattern, replacement):
        self._regexp = re2._re2.RE2(pattern.pattern.encode(), pattern.options)
        self._more = pattern.groupindex.get("more")
        self._replacement = None if callable(replacement) else replacement.encode()

    def sub(self, text):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: RE2 reads it as bytes that match nothing
            data = text.encode("utf-8", "surrogatepass")
        pieces, done, end = [], 0, len(data)
        while True:
            spans = self._regexp.Match(_UNANCHORED, data, done, end)
            start, stop = spans[0]
            if start < 0:
                break
            pieces.append(data[done:start])
            if self._replacement is not None:
                pieces.append(self._replacement)
            else:  # the host pass: a dotted class name followed by ".Name" is kept
                pieces.append(data[start:stop] if spans[self._more][0] >= 0 else b"<host>")
            done = stop
        if not pieces:
            return text
        pieces.append(data[done:])
        return b"".join(pieces).decode("utf-8", "surrogatepass")


_UNANCHORED = re2._Anchor.UNANCHORED
_PASSES = [(literal, _Re2Pass(pattern, replacement).sub if engine is re2 else
            functools.partial(re.compile(_FIRST_CHARACTER_FIRST.get(text, text)).sub, replacement))
           for (engine, literal, text, replacement), (_, pattern, _) in zip(_REPLACEMENTS, _COMPILED)]
# The id pass calls Python for every word of six characters or more, and replaces one
# only if it holds three digits and a letter: a text with no run of word characters
# holding both (four messages in five) is left as it is. The check tries each run once,
# from its start: linear.
_ID_PASS = next(number for number, entry in enumerate(_REPLACEMENTS) if entry[3] is _id_or_keep)
_MAY_HOLD_AN_ID = re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*?[A-Za-z])(?:[A-Za-z_-]*+[0-9]){3}").search


def _only_if_an_id_may_be(replace):
    return lambda text: replace(text) if _MAY_HOLD_AN_ID(text) else text


_PASSES[_ID_PASS] = (_PASSES[_ID_PASS][0], _only_if_an_id_may_be(_PASSES[_ID_PASS][1]))
PYTHON_PASSES = tuple(_PASSES)  # every pass on re / RE2: what runs where the extension is not built
# Pattern -> the C function that makes the same replacement in one scan.
_NATIVE_NAMES = {_REPLACEMENTS[number][2]: name for number, name in (
    (2, "uuid_pass"), (3, "quoted_pass"), (4, "ip_pass"), (6, "windows_path_pass"), (8, "host_pass"), (9, "hex_pass"),
    (10, "id_pass"), (11, "number_pass"))}
NATIVE_PASSES = None if _speedups is None else tuple(
    (literal, getattr(_speedups, _NATIVE_NAMES[text])) if text in _NATIVE_NAMES else (literal, replace)
    for (_, _, text, _), (literal, replace) in zip(_REPLACEMENTS, PYTHON_PASSES))
_PASSES = NATIVE_PASSES or PYTHON_PASSES


def _replaced(text, whole=True, at_space=False):
    """``text`` through every pass but the last; None when ``text`` is a head that may template
    differently from the whole: the host pass needs the rest, or (``at_space``: the head ends
    at a space) a quoted value may run past its end."""
    for number, (literal, replace) in enumerate(_PASSES[:_WHITESPACE_PASS]):
        if at_space and number == _STR_PASS:
            text = _quoted_in_head(text)
            if text is None:
                return None
        elif literal is None or literal in text:
            text = replace(text)
        elif number == _HOST_PASS and not whole and "localhost" in text:
            return None  # "localhost" is replaced only when a "." is left somewhere in the whole text
    return text


def python_quoted_in_head(text):
    """The quoted-value pass on a head ending at a space, or None when its result may differ in the whole.

    A value that crosses the cut opens at a quote within its reach of the end that no
    value found in the head took: with no such quote, every match (and every failed
    attempt) is decided inside the head, exactly as in the whole text. ``_quoted_in_head``
    is this function compiled where failured/_speedups.c is built (tests/test_fingerprint.py).
    """
    pattern = _COMPILED[_STR_PASS][1]
    pieces, done, window = [], 0, len(text) - _STR_REACH
    for match in pattern.finditer(text):
        start, end = match.span()
        if done < start and window < start and any(map(text[max(done, window):start].__contains__,
                                                        _OPENING_QUOTES)):
            return None
        pieces.append(text[done:start])
        pieces.append("<str>")
        done = end
    if any(map(text[max(done, window):].__contains__, _OPENING_QUOTES)):
        return None
    pieces.append(text[done:])
    return "".join(pieces)


_compiled_quoted_in_head = getattr(_speedups, "quoted_in_head", None)  # None: not built (or built before it)


def _quoted_in_head(text):
    if _PASSES is NATIVE_PASSES and _compiled_quoted_in_head is not None:  # the compiled passes, and this with them
        return _compiled_quoted_in_head(text, _STR_REACH)
    return python_quoted_in_head(text)


def template_of(message):
    """The message with numbers, ids, hex, UUIDs, quoted values, hosts, URLs and paths replaced."""
    text = message[:MAX_INPUT_CHARS]
    if len(text) > HEAD_CHARS:
        head = _head_template(text)
        if head is not None:
            return head
    return _squeezed(_replaced(text))[:MAX_TEMPLATE_CHARS]


def _head_template(text):
    """The template of a long ``text`` from its head alone, or None when the head cannot tell.

    The head ends at the first line break or space past ``HEAD_CHARS``; a head cut at a
    space that may template differently gives way to one cut at the next line break.
    """
    found = _CUT.search(text, HEAD_CHARS)
    if found is None or found.end() >= len(text):
        return None
    cut = found.end()
    head = _replaced(text[:cut], whole=False, at_space=found.group() == " ")
    if head is None and found.group() == " ":
        cut = text.find("\n", cut) + 1
        if not 0 < cut < len(text):
            return None
        head = _replaced(text[:cut], whole=False)
    if head is None:
        return None
    head = _squeezed(head)
    return head[:MAX_TEMPLATE_CHARS] if len(head) > MAX_TEMPLATE_CHARS else None


def _squeezed(text):
    # The last pass then strip(): str.split() splits on exactly what re's \s matches (str.isspace).
    return " ".join(text.split())


def fingerprint_of(template):
    """A short stable hash of a template."""
    return hashlib.sha1(template.encode("utf-8")).hexdigest()[:16]


def fingerprint(message):
    """(template, fingerprint) of an error message."""
    template = template_of(message)
    return template, fingerprint_of(template)
