"""The pattern workbench: what an RE2 pattern would match among recent tasks, and saving it as a pattern file.

A pattern is checked with the classifier's own RE2 options; a file is validated by loading
a copy of the whole config directory with it (failured.config.load_config) before it is
written, so the daemon's hot reload never sees a file the console made that it would reject.
"""

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import re2

from .. import store as store_module
from ..config import load_config
from ..errors import ConfigErrors, ConfigNotWritable, InputError, RefusedError
from ..rules import UNKNOWN, pattern_problem, re2_options

DAY = 86400
SCANNED = 2000  # newest unknown and classified messages a preview looks at (the page says when there are more)
UNCLASSIFIED = "unclassified"  # failure_counts' word for a task not yet classified
SHOWN = 20
MAX_DAYS = 90
# CPU a preview may take: RE2 is linear, but a pattern such as ".{1000}x.{1000}y" costs about a second on a 60 KB
# message, and 4,000 of them would have held a request for an hour. What is left is not looked at (the page says so).
PREVIEW_SECONDS = 2.0


def check_days(text, default=7):
    try:
        days = int(text) if text else default
    except ValueError:
        raise InputError(f"days {str(text)[:20]!r} is not a whole number") from None
    if not 1 <= days <= MAX_DAYS:
        raise InputError(f"days must be from 1 to {MAX_DAYS}")
    return days


def write_problem(config_dir):
    """Why Save cannot work (the directory pattern files go to is not writable by this process), or None."""
    patterns = Path(config_dir) / "patterns"
    directory = patterns if patterns.is_dir() else Path(config_dir)  # save() makes a missing patterns/
    return None if os.access(directory, os.W_OK) else str(ConfigNotWritable(directory, "no write access"))


def preview(store, pattern, category, days, now):
    """{"problem"} for an unusable pattern, else the unknown tasks it matches and the classified ones it takes."""
    problem = pattern_problem(pattern)
    if problem:
        return {"problem": f"pattern {problem}"}
    compiled = re2.compile(pattern, options=re2_options())
    start = now - days * DAY
    deadline = time.monotonic() + PREVIEW_SECONDS
    unknown, matched = _matching(store_module.recent_messages(start, True, SCANNED, store=store), compiled, deadline)
    classified, stolen = _matching(store_module.recent_messages(start, False, SCANNED, store=store), compiled,
                                   deadline, lambda row: row[2] != category)
    totals = store_module.aggregates.failures_since(store, start)
    unknown_total = totals.get(UNKNOWN, 0)
    classified_total = sum(n for name, n in totals.items() if name not in (UNKNOWN, UNCLASSIFIED))
    # The totals count from the hour ``start`` falls in: never say fewer than were scanned.
    return {"problem": None, "matched": matched[:SHOWN], "matched_count": len(matched), "unknown_count": len(unknown),
            "stolen": stolen[:SHOWN], "stolen_count": len(stolen), "classified_count": len(classified),
            "unknown_total": max(unknown_total, len(unknown)), "classified_total": max(classified_total, len(classified))}


def _matching(rows, compiled, deadline, wanted=lambda row: True):
    """(the rows looked at before ``deadline``, those of them ``wanted`` keeps whose message ``compiled`` finds)."""
    looked, found = [], []
    for row in rows:
        if time.monotonic() >= deadline:
            break
        looked.append(row)
        if wanted(row) and compiled.search(row[3]):
            found.append(row)
    return looked, found


def file_text(category, pattern, now):
    # A JSON string is a valid TOML basic string (the same escapes), whatever the pattern holds.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    # firm: the operator saw what the pattern matches before saving it, so the learned model does not overrule it.
    return (f"# Written by the failured console at {stamp}.\n[[category]]\nname = {json.dumps(category)}\nfirm = true\n"
            f"patterns = [{json.dumps(pattern, ensure_ascii=False)}]\n")


def save(config_dir, category, pattern, now, lang="zh", log_dir="logs"):
    """Write ``pattern`` for ``category`` as a new file in ``config_dir/patterns``; returns its path.

    InputError for a pattern RE2 refuses or an unknown category, RefusedError when the directory
    with the new file would not load, ConfigNotWritable when the file cannot be written.
    """
    problem = pattern_problem(pattern)
    if problem:
        raise InputError(f"pattern {problem}")
    if category == UNKNOWN:
        raise InputError("unknown is what matches nothing: choose another category")
    config_dir = Path(config_dir)
    name = f"60-console-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}.toml"
    text = file_text(category, pattern, now)
    _validate(config_dir, name, text, category, lang, log_dir)
    target = config_dir / "patterns" / name
    partial = target.with_name(f".{name}.partial")  # not *.toml: the loader never reads a half-written file
    try:
        target.parent.mkdir(exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a directory that refused the rename may refuse this too
            partial.unlink(missing_ok=True)
        raise ConfigNotWritable(target, exc.strerror or exc) from None
    return target


def _validate(config_dir, name, text, category, lang, log_dir):
    with tempfile.TemporaryDirectory(prefix="failured-console-") as scratch:
        trial = Path(scratch) / "config"
        try:
            shutil.copytree(config_dir, trial, symlinks=False, ignore=shutil.ignore_patterns(".*"))
            (trial / "patterns").mkdir(exist_ok=True)
            (trial / "patterns" / name).write_text(text, encoding="utf-8")
        except OSError as exc:  # e.g. a file in the config directory this process cannot read
            raise RefusedError(f"cannot check the pattern on a copy of {config_dir}: "
                               f"{str(exc).replace(str(trial), str(config_dir))}") from None
        try:
            snapshot = load_config(trial, lang, log_dir, model=False)
        except ConfigErrors as exc:
            raise RefusedError("; ".join(str(e).replace(str(trial), str(config_dir)) for e in exc.errors)) from None
        if category not in snapshot.ruleset.by_name:
            raise InputError(f"no category named {category!r} in the configuration")
