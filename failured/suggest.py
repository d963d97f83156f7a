"""A pattern for an ``unknown`` error template, ready to paste into a pattern file.

Its promise, checked with the same RE2 options the classifier uses: it
compiles, matches every sample of its template, and matches no sample of any
other category.
"""

import re

import re2

from .rules import pattern_problem, re2_options

# The fingerprint's placeholders, and the mask a secret was replaced by: neither is the error's own wording.
_PLACEHOLDER = re.compile(r"<(?:num|str|id|hex|uuid|ip|host|url|path|email)>|\*\*\*")
_META = re.compile(r"([\\.^$|?*+()\[\]{}])")
MIN_CHUNK = 3


def _literal(chunk):
    """A template chunk as an RE2 literal: metacharacters escaped, any run of spaces as \\s+."""
    return r"\s+".join(_META.sub(r"\\\1", word) for word in chunk.split())


def candidates(template):
    """Patterns from loose to strict: the longest literal run, the runs in order, the whole template."""
    chunks = [c.strip() for c in _PLACEHOLDER.split(template) if c.strip()]
    if not chunks:
        return []
    useful = [c for c in chunks if len(c) >= MIN_CHUNK] or chunks
    ordered = ".*".join(_literal(c) for c in useful)
    whole = "".join(_literal(c) if not _PLACEHOLDER.fullmatch(c) else ".+?"
                    for c in re.split(f"({_PLACEHOLDER.pattern})", template) if c.strip())
    longest = _literal(max(useful, key=len))
    return list(dict.fromkeys([longest, ordered, whole]))


def suggest(template, samples, other_samples):
    """(pattern, verified): the loosest candidate that keeps the promise, else (None, False)."""
    options = re2_options()
    for pattern in candidates(template):
        if pattern_problem(pattern):
            continue
        compiled = re2.compile(pattern, options=options)
        if all(compiled.search(s) for s in samples) and not any(compiled.search(s) for s in other_samples):
            return pattern, True
    return None, False
