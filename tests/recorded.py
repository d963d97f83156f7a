"""Whole-corpus comparisons with a slow reference, kept short by a record of what the reference answered.

Several tests compare a fast path with a straightforward reference on every corpus message; the references
(a search per pattern, the model's Python code) took some eight CPU-minutes of the suite. A reference's
answers depend only on what ``input_key`` covers: the cases themselves, the package's source and data, the
shipped configuration, the test file that holds the reference (and this one, and conftest.py), and the
versions of Python and RE2.
``tests/data/reference-answers.json`` keeps, for each comparison, that key and a digest of the reference's
answers. Where the key is the same and the fast path's answers have that digest, they are the answers the
reference gave on these very inputs, and the comparison passes without running it again. Anything else (a
changed source, another RE2, a fast path that answers otherwise) runs the reference on every case, as it
always ran, and the test names the cases whose answers differ.

``FAILURED_RECORD_REFERENCES=1`` makes a comparison that ran its reference and agreed record it (the README's
"Recording the references"); a clean checkout of a commit whose records were refreshed runs no reference.
"""

import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RECORDS = TESTS / "data" / "reference-answers.json"
RECORD_ENV = "FAILURED_RECORD_REFERENCES"
SHARED_FILES = ("recorded.py", "conftest.py")  # with the calling test file, where the references live


def assert_same_answers(name, cases, fast, reference):
    """``fast(case) == reference(case)`` for every case, the reference run only where no record vouches for it.

    Answers are compared by ``repr`` (floats bit for bit). Returns the fast path's answers.
    """
    got = [fast(case) for case in cases]
    digest = answers_digest(got)
    key = input_key(cases, Path(sys._getframe(1).f_globals["__file__"]))
    record = read_records().get(name)
    if record == {"key": key, "answers": digest}:
        return got
    expected = [reference(case) for case in cases]
    differences = [(case, answer, wanted) for case, answer, wanted in zip(cases, got, expected)
                   if repr(answer) != repr(wanted)]
    assert differences == [], f"{len(differences)} of {len(cases)} cases differ; the first: {differences[:3]!r}"
    if os.environ.get(RECORD_ENV) == "1":
        write_record(name, {"key": key, "answers": digest})  # the same reprs: the reference's digest too
    else:  # the suite's warnings summary says which records to refresh
        why = "none recorded" if record is None else "recorded for other inputs" if record["key"] != key else \
            "recorded answers differ in their repr"
        warnings.warn(f"{name}: the reference ran ({why}): refresh with {RECORD_ENV}=1 (README)", stacklevel=2)
    return got


def answers_digest(answers):
    digest = hashlib.sha256()
    for answer in answers:
        digest.update(repr(answer).encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def input_key(cases, test_file):
    """A digest of ``cases``, of the test file that holds the reference and of everything else its answers
    depend on."""
    key = hashlib.sha256(_environment_digest().encode())
    key.update(hashlib.sha256(test_file.read_bytes()).digest())
    key.update(answers_digest(cases).encode())
    return key.hexdigest()


@functools.cache
def _environment_digest():
    digest = hashlib.sha256()
    files = [path for folder in (REPO / "failured", REPO / "config") for path in sorted(folder.rglob("*"))
             if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".so", ".pyd")]
    files += [TESTS / name for name in SHARED_FILES]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    versions = [sys.version, platform.machine(), importlib.metadata.version("google-re2")]
    digest.update(repr(versions).encode())
    return digest.hexdigest()


def read_records():
    try:
        return json.loads(RECORDS.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def write_record(name, record):
    """Add ``record`` under ``name``; pytest-xdist's workers record at once, one at a time under a lock."""
    with open(RECORDS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = read_records()
        records[name] = record
        RECORDS.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n", encoding="utf-8")
