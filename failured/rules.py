"""Pattern files (``config/patterns/*.toml``) -> a validated, frozen ruleset of categories.

Files merge in name order: a category named again extends its lists
(``patterns``, ``exception_types``, ``tags``) and overrides the settings it
names; ``replace = true`` replaces the lists instead. Every problem is
collected with its file and key, so one run of ``check-config`` shows them all.
"""

import difflib
import functools
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import re2

from .errors import ConfigError, ConfigErrors
from .text import quoted

ACTIONS = ("retry", "notify_admin", "notify_user")
UNKNOWN = "unknown"
LIST_KEYS = ("patterns", "exception_types", "tags")
SCALAR_KEYS = ("label", "label_en", "action", "priority", "suggestion", "suggestion_en")
CATEGORY_KEYS = {"name", "replace", "retry", "firm", *LIST_KEYS, *SCALAR_KEYS}
RETRY_KEYS = {"delays", "max_attempts", "jitter"}
# The longest a retry may wait: the database keeps times to the year 9999, and a delay of 1e12 seconds made
# every decision of an intake batch fail, so one task type's setting stopped all intake.
MAX_RETRY_DELAY = 365 * 86400
MAX_PATTERN_CHARS = 2000


@dataclass(frozen=True)
class RetryPolicy:
    """Delays in seconds between attempts; past the list the last one doubles."""

    delays: tuple
    max_attempts: int | None = None  # None: FAILURE_MAX_RECOVERY_ATTEMPTS
    jitter: float = 0.0  # fraction of each delay, spread both ways


@dataclass(frozen=True)
class Pattern:
    text: str
    file: str
    firm: bool = False  # its table says ``firm = true``: the learned model never overrules it


@dataclass(frozen=True)
class Category:
    name: str
    label: str
    label_en: str
    action: str
    priority: int
    retry: RetryPolicy | None = None
    exception_types: tuple = ()
    tags: tuple = ()
    patterns: tuple = ()  # of Pattern
    suggestion: str = ""
    suggestion_en: str = ""
    files: tuple = ()

    def label_in(self, lang):
        return self.label_en if lang == "en" and self.label_en else self.label

    def suggestion_in(self, lang):
        return self.suggestion_en if lang == "en" and self.suggestion_en else self.suggestion


DEFAULT_UNKNOWN = Category(
    name=UNKNOWN, label="未知错误", label_en="Unknown error", action="notify_admin",
    priority=1_000_000, suggestion="查看错误详情，必要时为其添加匹配规则",
    suggestion_en="Read the error and add a pattern for it if it recurs",
)


@dataclass(frozen=True)
class Ruleset:
    """Categories in priority order (lowest number first) plus the ``unknown`` fallback."""

    categories: tuple
    unknown: Category = DEFAULT_UNKNOWN
    files: tuple = ()
    by_name: dict = field(default_factory=dict, compare=False)
    overrides: tuple = ()  # "what a later file replaced" notes, for check-config

    def category(self, name):
        return self.unknown if name == UNKNOWN else self.by_name.get(name)


def re2_options():
    """Case-insensitive, UTF-8, and silent: RE2 must not write parse errors to our stderr."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = 64 << 20  # room for a few thousand patterns in one Set
    return options


@functools.lru_cache(maxsize=4096)  # a reload compiles only the patterns it has not seen: 0.3 ms each
def pattern_problem(text):
    """Why RE2 refuses ``text`` as a pattern, or None when it is usable."""
    if not text.strip():
        return "is empty: it would match every message"
    if len(text) > MAX_PATTERN_CHARS:
        return f"is {len(text)} characters long: at most {MAX_PATTERN_CHARS}"
    try:
        compiled = re2.compile(text, options=re2_options())
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        lookaround = "perl operator" in reason or "escape sequence: \\" in reason and reason[-1:].isdigit()
        hint = " (RE2 has no lookaround or backreferences)" if lookaround else ""
        return f"RE2 cannot compile it: {reason}{hint}"
    if compiled.search("") is not None:
        return "matches the empty string, so it would match every message"
    if any(all(compiled.search(probe) is not None for probe in probes) for probes in UNRELATED_MESSAGES):
        return "matches every one of several unrelated messages (a catch-all such as '.' or '\\w'): it would decide " \
               "every failure"
    return None


# Messages with nothing in common, English and Chinese apart: a pattern that matches all of one set (".", "[^!]",
# "(?s).+", or "\w" and "\b", which RE2 reads as ASCII) says nothing of a cause.
UNRELATED_MESSAGES = (("x", "0", "frobnicator exploded in bay 7", "Connection timed out"),
                      ("中", "订单12345不存在", "数据库连接失败"))


MAX_CONFIG_FILE_BYTES = 4 * 1024 * 1024  # 25 times the shipped config: a bigger file is a mistake


class NotARegularFile(OSError):
    """A config path that is a FIFO, a device or a directory, or too large: never read it."""


def read_config_bytes(path, limit=MAX_CONFIG_FILE_BYTES):
    """The bytes of a regular file of at most ``limit`` bytes; NotARegularFile otherwise.

    Opened non-blocking and checked on the open descriptor: a FIFO dropped into the
    config directory would otherwise block the reader (and the daemon) forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile("not a regular file (a FIFO, device or directory): "
                                  "only regular files are read; remove it or move it out of the config directory")
        if info.st_size > limit:
            raise NotARegularFile(f"{info.st_size:,} bytes, more than the {limit:,} a config file may have")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise NotARegularFile(f"more than the {limit:,} bytes a config file may have")
        return data
    finally:
        os.close(fd)


def read_toml(path, errors):
    try:
        data = read_config_bytes(path)
        return tomllib.loads(data.decode("utf-8-sig"))  # a byte-order mark (Windows' editors write one) is no error
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        errors.append(ConfigError(path, None, f"not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}): save the "
                                              "file as UTF-8 (a GBK file: iconv -f gbk -t utf-8)"))
    except NotARegularFile as exc:
        errors.append(ConfigError(path, None, str(exc)))
    except tomllib.TOMLDecodeError as exc:
        errors.append(ConfigError(path, None, f"TOML syntax error: {exc}"))
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        errors.append(ConfigError(path, None, "arrays or inline tables nested too deeply to read: "
                                              "no failured setting nests more than a few levels"))
    except OSError as exc:
        errors.append(ConfigError(path, None, f"cannot read file: {exc}"))
    return None


def check_type(value, expected, path, key, errors, what):
    if isinstance(value, bool) and expected is not bool:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        errors.append(ConfigError(path, key, f"must be {what}, not {type(value).__name__} {value!r}"))
    return ok


def parse_retry(table, path, key, errors):
    """Validate a retry table; returns a dict of the keys it names (merging happens later)."""
    if not check_type(table, dict, path, key, errors, "a table such as { delays = [30, 60], max_attempts = 3 }"):
        return {}
    out = {}
    for name in sorted(set(table) - RETRY_KEYS):
        errors.append(ConfigError(path, f"{key}.{name}", f"unknown key: use one of {', '.join(sorted(RETRY_KEYS))}"))
    if "delays" in table:
        delays = table["delays"]
        if check_type(delays, list, path, f"{key}.delays", errors, "a list of seconds"):
            if not delays:
                errors.append(ConfigError(path, f"{key}.delays", "is empty: give at least one delay in seconds"))
            for i, delay in enumerate(delays):
                if not check_type(delay, (int, float), path, f"{key}.delays[{i}]", errors, "a number of seconds"):
                    continue
                if not 0 <= delay <= MAX_RETRY_DELAY:  # NaN fails too
                    errors.append(ConfigError(path, f"{key}.delays[{i}]", f"is {delay}: a delay is 0 to "
                                              f"{MAX_RETRY_DELAY} seconds (365 days)"))
            out["delays"] = tuple(float(d) for d in delays if isinstance(d, (int, float)) and not isinstance(d, bool))
    if "max_attempts" in table:
        value = table["max_attempts"]
        if check_type(value, int, path, f"{key}.max_attempts", errors, "a whole number"):
            if value < 1:
                errors.append(ConfigError(path, f"{key}.max_attempts", f"is {value}: must be at least 1"))
            out["max_attempts"] = value
    if "jitter" in table:
        value = table["jitter"]
        if check_type(value, (int, float), path, f"{key}.jitter", errors, "a fraction between 0 and 1"):
            if not 0 <= value <= 1:
                errors.append(ConfigError(path, f"{key}.jitter", f"is {value}: must be between 0 and 1"))
            out["jitter"] = float(value)
    return out


def _parse_category(table, path, key, errors):
    """One ``[[category]]`` table -> a dict of the settings it names, validated."""
    for name in sorted(set(table) - CATEGORY_KEYS):
        errors.append(ConfigError(path, f"{key}.{name}", f"unknown key: use one of {', '.join(sorted(CATEGORY_KEYS))}"))
    out = {"file": str(path)}
    for name in ("label", "label_en", "suggestion", "suggestion_en"):
        if name in table and check_type(table[name], str, path, f"{key}.{name}", errors, "a string"):
            out[name] = table[name]
    if "action" in table and check_type(table["action"], str, path, f"{key}.action", errors, "a string"):
        if table["action"] not in ACTIONS:
            errors.append(ConfigError(path, f"{key}.action", f"unknown action {table['action']!r}: use one of {', '.join(ACTIONS)}"))
        out["action"] = table["action"]  # kept even when wrong: it is not also "missing"
    if "priority" in table and check_type(table["priority"], int, path, f"{key}.priority", errors, "a whole number"):
        out["priority"] = table["priority"]
    if "replace" in table and check_type(table["replace"], bool, path, f"{key}.replace", errors, "true or false"):
        out["replace"] = table["replace"]
    firm = False  # the model may overrule this table's patterns unless it says firm = true
    if "firm" in table and check_type(table["firm"], bool, path, f"{key}.firm", errors, "true or false"):
        firm = table["firm"]
    if "retry" in table:
        out["retry"] = parse_retry(table["retry"], path, f"{key}.retry", errors)
    for name in LIST_KEYS:
        if name in table and check_type(table[name], list, path, f"{key}.{name}", errors, "a list of strings"):
            items = []
            for i, item in enumerate(table[name]):
                if not check_type(item, str, path, f"{key}.{name}[{i}]", errors, "a string"):
                    continue
                if name == "patterns":
                    problem = pattern_problem(item)
                    if problem:
                        errors.append(ConfigError(path, f"{key}.{name}[{i}]", f"pattern {quoted(item)} {problem}"))
                        continue
                    items.append(Pattern(item, str(path), firm))
                elif name == "tags":
                    items.append(item.strip().strip("[]").upper())
                else:
                    items.append(item.strip())
            out[name] = items
    return out


def _merge(base, update, name, overrides):
    """Merge one file's settings for category ``name`` into what earlier files said; each setting an earlier
    file gave another value is noted in ``overrides`` (files merge in name order, so a local file that sorts
    before a shipped one loses its settings: check-config shows it)."""
    merged = dict(base)
    replace = update.get("replace", False)
    for key, value in update.items():
        if key in ("replace", "file"):
            continue
        if key in LIST_KEYS:
            merged[key] = list(value) if replace else _extend_unique(base.get(key, []), value)
            continue
        if key == "retry":
            value = {**base.get("retry", {}), **value}
        if key in base and base[key] != value:
            overrides.append(f'{update["file"]} replaces {key} of category "{name}" that '
                             f'{Path(base["files"][-1]).name} set (files merge in name order)')
        merged[key] = value
    if replace and base.get("files"):
        overrides.append(f'{update["file"]} replaces the lists of category "{name}" (replace = true)')
    merged["files"] = base.get("files", []) + [update["file"]]
    return merged


def _extend_unique(items, more):
    seen = set(items)
    return list(items) + [item for item in more if not (item in seen or seen.add(item))]


def _build_category(name, settings, errors, names=()):
    path = settings["files"][-1]
    where = f'category "{name}"'
    missing = [key for key in ("action", "priority") if key not in settings and name != UNKNOWN]
    near = difflib.get_close_matches(name, [other for other in names if other != name], n=1, cutoff=0.8)
    if len(missing) == 2 and near:  # a name misspelt, not a category meant to be new
        errors.append(ConfigError(path, f"{where}.name", f'no category is named "{name}": did you mean "{near[0]}"? '
                                  "(a new category would need action and priority)"))
    else:
        errors += [ConfigError(path, f"{where}.{key}", f"missing: a new category needs {key}") for key in missing]
    if name == UNKNOWN:
        for listed in LIST_KEYS:
            if settings.get(listed):
                errors.append(ConfigError(path, f"{where}.{listed}", "unknown is what matches nothing: it cannot have patterns, tags or exception types"))
    action = settings.get("action", DEFAULT_UNKNOWN.action if name == UNKNOWN else "notify_admin")
    retry = None
    retry_settings = settings.get("retry")
    if action == "retry":
        if not retry_settings or "delays" not in retry_settings:
            errors.append(ConfigError(path, f"{where}.retry.delays", 'missing: action "retry" needs retry = { delays = [...] }'))
        else:
            retry = RetryPolicy(**retry_settings)
    return Category(
        name=name,
        label=settings.get("label", DEFAULT_UNKNOWN.label if name == UNKNOWN else name),
        label_en=settings.get("label_en", DEFAULT_UNKNOWN.label_en if name == UNKNOWN else name),
        action=action,
        priority=settings.get("priority", DEFAULT_UNKNOWN.priority),
        retry=retry,
        exception_types=tuple(settings.get("exception_types", ())),
        tags=tuple(settings.get("tags", ())),
        patterns=tuple(settings.get("patterns", ())),
        suggestion=settings.get("suggestion", DEFAULT_UNKNOWN.suggestion if name == UNKNOWN else ""),
        suggestion_en=settings.get("suggestion_en", DEFAULT_UNKNOWN.suggestion_en if name == UNKNOWN else ""),
        files=tuple(dict.fromkeys(settings["files"])),
    )


def _check_ambiguity(categories, errors):
    seen_priority, seen_tag = {}, {}
    for category in categories:
        where = f'category "{category.name}"'
        other = seen_priority.setdefault(category.priority, category)
        if other is not category:
            errors.append(ConfigError(category.files[-1], f"{where}.priority",
                                      f"priority {category.priority} is also used by \"{other.name}\": "
                                      "give each category its own priority so the order is clear"))
        for tag in category.tags:
            other = seen_tag.setdefault(tag, category)
            if other is not category:
                errors.append(ConfigError(category.files[-1], f"{where}.tags",
                                          f"tag [{tag}] is also a tag of \"{other.name}\": a tag must name one category"))


def toml_files(directory):
    """The ``*.toml`` files of ``directory`` in name order, without hidden ones: an editor's lock file
    (Emacs' ``.#name``, a dangling link) or macOS's ``._name`` copy is not configuration."""
    return sorted(path for path in Path(directory).glob("*.toml") if not path.name.startswith("."))


def pattern_files(config_dir):
    """The pattern files of a config directory, in the order they merge."""
    return toml_files(Path(config_dir, "patterns"))


def load_ruleset(config_dir):
    """Read and validate ``config_dir/patterns/*.toml``; raise ConfigErrors listing every problem."""
    errors = []
    files = pattern_files(config_dir)
    if not files:
        raise ConfigErrors([ConfigError(Path(config_dir, "patterns"), None,
                                        "no pattern files (*.toml): run 'failured init DIR' for a starter set")])
    merged, overrides = {}, []
    for path in files:
        document = read_toml(path, errors)
        if document is None:
            continue
        for name in sorted(set(document) - {"category"}):
            errors.append(ConfigError(path, name, "unknown top-level key: a pattern file holds [[category]] tables"))
        tables = document.get("category", [])
        if not check_type(tables, list, path, "category", errors, "an array of tables ([[category]])"):
            continue
        for i, table in enumerate(tables):
            key = f"category[{i}]"
            if not check_type(table, dict, path, key, errors, "a table"):
                continue
            name = table.get("name")
            if not isinstance(name, str) or not name.strip():
                errors.append(ConfigError(path, f"{key}.name", "missing: every [[category]] needs a name"))
                continue
            key = f'category "{name}"'
            settings = _parse_category(table, path, key, errors)
            merged[name] = _merge(merged.get(name, {"files": []}), settings, name, overrides)
    categories = [_build_category(name, settings, errors, merged) for name, settings in merged.items()]
    unknown = next((c for c in categories if c.name == UNKNOWN), DEFAULT_UNKNOWN)
    categories = sorted((c for c in categories if c.name != UNKNOWN), key=lambda c: c.priority)
    _check_ambiguity(categories, errors)
    if errors:
        raise ConfigErrors(errors)
    return Ruleset(categories=tuple(categories), unknown=unknown, files=tuple(str(f) for f in files),
                   by_name={c.name: c for c in categories}, overrides=tuple(overrides))
