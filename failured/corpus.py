r"""The labelled corpus that ships with failured: real error messages, each with its category and source.

``failured/data/corpus.tsv`` has four tab-separated columns: ``category``,
``error_type`` (may be empty), ``source`` (the library, vendor or project the
message came from: cross-validation keeps a source's messages together) and
``message``, in which a newline is written as a literal backslash-n, and a
backslash that would otherwise read as part of one (before ``n``, another
backslash, a newline or the end) as two backslashes; any other backslash is
itself (``GuzzleHttp\Exception``). The
learned fallback trains on it at run time, the tests and benchmarks score
against it, and ``failured labels export`` writes the same format.
"""

import csv
import functools
import re
from pathlib import Path

PATH = Path(__file__).resolve().parent / "data" / "corpus.tsv"
COLUMNS = ["category", "error_type", "source", "message"]


def parse(lines):
    """Rows ``(category, error_type or None, source, message)`` of a corpus file's lines (header first)."""
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader)
    if header != COLUMNS:
        raise ValueError(f"corpus header must be {COLUMNS}, not {header}")
    rows = []
    for line_number, fields in enumerate(reader, start=2):
        if len(fields) != len(COLUMNS):
            raise ValueError(f"line {line_number}: expected {len(COLUMNS)} tab-separated fields, got {len(fields)}")
        category, error_type, source, message = map(unescaped, fields)
        rows.append((category, error_type or None, source, message))
    return rows


_ESCAPE = re.compile(r"\\([\\n])")
_NEEDS_DOUBLING = re.compile(r"\\(?=[\\n\n]|\Z)")


def unescaped(text):
    """A corpus field (or a line of ``classify -``) as the text it stands for: ``\\n`` a newline, ``\\\\`` one
    backslash."""
    return _ESCAPE.sub(_unescaped_one, text)


def _unescaped_one(match):
    return "\n" if match.group(1) == "n" else "\\"


def _escaped(message):
    """``message`` as the corpus writes it: what parse() reads back unchanged (tabs and carriage returns aside)."""
    return _NEEDS_DOUBLING.sub(r"\\\\", message).replace("\n", "\\n")


@functools.lru_cache(maxsize=1)
def read_corpus(path=PATH):
    """The shipped corpus as a tuple of rows (read once per process)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return tuple(parse(handle))


def format_row(category, error_type, source, message):
    """One corpus line (no newline at the end): a tab in a value is a space, a carriage return is dropped."""
    def clean(value):
        return _escaped((value or "").replace("\t", " ").replace("\r", ""))
    return "\t".join(clean(v) for v in (category, error_type, source, message))
