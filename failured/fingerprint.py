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
ending at a line break when that head alone fills the template: no replacement
crosses a line break, so the result is the same as templating the whole text.
"""

import hashlib
import re

import re2

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
    (re, None, r"\b[A-Za-z0-9_-]{6,}\b", _id_or_keep),  # greedy to the run's end: never rescans
    # A number is replaced whole, never its tail: "order_12" -> "order_<num>", "utf8" stays.
    (re, None, r"(?<![A-Za-z0-9<])[-+]?\d+(?:\.\d+)?", "<num>"),
    (re, None, r"\s+", " "),
]
_COMPILED = [(literal, engine.compile(pattern), replacement)
             for engine, literal, pattern, replacement in _REPLACEMENTS]
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
            (lambda text, pattern=pattern, replacement=replacement: pattern.sub(replacement, text)))
           for (engine, literal, _, replacement), (_, pattern, _) in zip(_REPLACEMENTS, _COMPILED)]


def _replaced(text, whole=True):
    """``text`` through every pass but the last; None when ``text`` is a head and the host pass needs the rest."""
    for number, (literal, replace) in enumerate(_PASSES[:_WHITESPACE_PASS]):
        if literal is None or literal in text:
            text = replace(text)
        elif number == _HOST_PASS and not whole and "localhost" in text:
            return None  # "localhost" is replaced only when a "." is left somewhere in the whole text
    return text


def template_of(message):
    """The message with numbers, ids, hex, UUIDs, quoted values, hosts, URLs and paths replaced."""
    text = message[:MAX_INPUT_CHARS]
    if len(text) > HEAD_CHARS:
        cut = text.find("\n", HEAD_CHARS) + 1
        if 0 < cut < len(text):
            head = _replaced(text[:cut], whole=False)
            if head is not None:
                head = _squeezed(head)
                if len(head) > MAX_TEMPLATE_CHARS:
                    return head[:MAX_TEMPLATE_CHARS]
    return _squeezed(_replaced(text))[:MAX_TEMPLATE_CHARS]


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
