"""Error fingerprints: the message with its variable parts replaced, hashed.

Two failures with the same fingerprint are "the same error" for analysis and
for notification dedup, whatever order id, host or line number they carry.

A template costs time linear in the message whatever a reporter sends. The
replacements whose patterns start with a run that may cross word boundaries
(URLs, e-mails, hosts, ids) run on RE2: Python's backtracking engine spent
99 s on ``"a-" * 32768`` with them. The others cannot backtrack further than
one word and stay on Python's ``re``, which is many times faster per match.
A pass whose required literal ("://", "@", ".") is absent is skipped.
"""

import hashlib
import re

import re2

MAX_TEMPLATE_CHARS = 500
# The template keeps its first 500 characters; replacing placeholders rarely shrinks
# 8 KiB below that, so reading further would cost time and change nothing.
MAX_INPUT_CHARS = 8192

_TLDS = "com|net|org|io|cn|co|dev|app|cloud|ai|info|biz|me|us|uk|de|jp|hk|tw|gov|edu|local|internal|lan"


def _hex_or_keep(match):
    text = match.group()
    if text.startswith("0x") or (any(c.isdigit() for c in text) and any(c.isalpha() for c in text)):
        return "<hex>"
    return text


def _id_or_keep(match):
    text = match.group()
    digits = sum(c.isdigit() for c in text)
    return "<id>" if digits >= 3 and any(c.isalpha() for c in text) else text


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


def template_of(message):
    """The message with numbers, ids, hex, UUIDs, quoted values, hosts, URLs and paths replaced."""
    text = message[:MAX_INPUT_CHARS]
    for literal, pattern, replacement in _COMPILED:
        if literal is None or literal in text:
            text = pattern.sub(replacement, text)
    return text.strip()[:MAX_TEMPLATE_CHARS]


def fingerprint_of(template):
    """A short stable hash of a template."""
    return hashlib.sha1(template.encode("utf-8")).hexdigest()[:16]


def fingerprint(message):
    """(template, fingerprint) of an error message."""
    template = template_of(message)
    return template, fingerprint_of(template)
