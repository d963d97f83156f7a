"""Error fingerprints: the message with its variable parts replaced, hashed.

Two failures with the same fingerprint are "the same error" for analysis and
for notification dedup, whatever order id, host or line number they carry.
"""

import hashlib
import re

MAX_TEMPLATE_CHARS = 500

_TLDS = "com|net|org|io|cn|co|dev|app|cloud|ai|info|biz|me|us|uk|de|jp|hk|tw|gov|edu|local|internal|lan"

# Order matters: a URL holds a host and a path, a path may hold numbers.
_REPLACEMENTS = [
    (r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)\]]+", "<url>"),
    (r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", "<email>"),
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<uuid>"),
    (r"'[^'\n]{1,200}'|\"[^\"\n]{1,200}\"|“[^”\n]{1,200}”|‘[^’\n]{1,200}’", "<str>"),
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<ip>"),
    (r"\[[0-9a-fA-F:]*:[0-9a-fA-F:]+\](?::\d+)?", "<ip>"),
    (r"(?:\b[A-Za-z]:\\|(?<![\w.])/)(?:[\w.@~+-]+[/\\])+[\w.@~+-]*(?:\?\S*)?", "<path>"),
    (rf"\b(?:[a-z0-9-]+\.)+(?:{_TLDS})(?::\d+)?\b|\blocalhost(?::\d+)?\b", "<host>"),
    (r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", "<hex>"),
    (r"\b(?=(?:[A-Za-z_-]*\d){3})(?=[\w-]*[A-Za-z])[A-Za-z0-9_-]{6,}\b", "<id>"),
    (r"(?<![A-Za-z_<])[-+]?\d+(?:\.\d+)?", "<num>"),
    (r"\s+", " "),
]
_COMPILED = [(re.compile(pattern), placeholder) for pattern, placeholder in _REPLACEMENTS]


def template_of(message):
    """The message with numbers, ids, hex, UUIDs, quoted values, hosts, URLs and paths replaced."""
    text = message
    for pattern, placeholder in _COMPILED:
        text = pattern.sub(placeholder, text)
    return text.strip()[:MAX_TEMPLATE_CHARS]


def fingerprint_of(template):
    """A short stable hash of a template."""
    return hashlib.sha1(template.encode("utf-8")).hexdigest()[:16]


def fingerprint(message):
    """(template, fingerprint) of an error message."""
    template = template_of(message)
    return template, fingerprint_of(template)
