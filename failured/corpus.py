"""The labelled corpus that ships with failured: real error messages, each with its category and source.

``failured/data/corpus.tsv`` has four tab-separated columns: ``category``,
``error_type`` (may be empty), ``source`` (the library, vendor or project the
message came from: cross-validation keeps a source's messages together) and
``message``, in which a newline is written as a literal backslash-n. The
learned fallback trains on it at run time, the tests and benchmarks score
against it, and ``failured labels export`` writes the same format.
"""

import csv
import functools
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
        category, error_type, source, message = fields
        rows.append((category, error_type or None, source, message.replace("\\n", "\n")))
    return rows


@functools.lru_cache(maxsize=1)
def read_corpus(path=PATH):
    """The shipped corpus as a tuple of rows (read once per process)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return tuple(parse(handle))


def format_row(category, error_type, source, message):
    """One corpus line (no newline at the end): tabs and newlines in values are flattened."""
    def clean(value):
        return (value or "").replace("\t", " ").replace("\r", "").replace("\n", "\\n")
    return "\t".join(clean(v) for v in (category, error_type, source, message))
