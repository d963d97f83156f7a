"""The config directory as one validated snapshot: pattern rules plus ``failured.toml``.

A snapshot is immutable; a reload builds a new one and the daemon swaps one
reference, so a half-written file is never seen by a running classification.
"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import modelcache
from .classify import Classifier
from .codes import code_files, load_code_tables
from .model import ModelNotLoaded, parse_settings as parse_model_settings
from .errors import ConfigError, ConfigErrors
from .handlers import parse_handler, unset_variables
from .notify.channels import LogChannel, parse_channel, secret_values
from .notify.routing import LOG_CHANNEL, parse_routes
from .thresholds import Thresholds
from .training import train_apart
from .secrets import referenced_secrets
from .rules import check_type, load_ruleset, parse_retry, pattern_files, read_config_bytes, read_toml

MAIN_FILE = "failured.toml"
TOP_KEYS = {"breaker", "task_types", "channels", "routes", "notify", "thresholds", "model"}
BREAKER_KEYS = {"failures", "cooldown_seconds"}
TASK_TYPE_KEYS = {"handler", "retry", "retry_by_category"}


@dataclass(frozen=True)
class BreakerConfig:
    """Open a task type's breaker after ``failures`` consecutive failed retries."""

    failures: int = 5
    cooldown_seconds: float = 300.0


@dataclass(frozen=True)
class NotifyConfig:
    """How the dispatcher delivers: dedup window, retry horizon, digest size, first retry wait."""

    dedup_window_seconds: float = 600.0
    max_retry_hours: float = 24.0
    digest_entries: int = 5
    digest_interval_seconds: float = 10.0
    retry_backoff_seconds: float = 5.0  # the wait after a failed send; it doubles per failure, up to 10 minutes


NOTIFY_KEYS = {f for f in NotifyConfig.__dataclass_fields__}


@dataclass(frozen=True)
class TaskTypeConfig:
    name: str
    handler: object = None  # handlers.HandlerSpec
    retry: dict = field(default_factory=dict)  # overrides for every category
    retry_by_category: dict = field(default_factory=dict)  # category -> overrides


@dataclass(frozen=True)
class Snapshot:
    ruleset: object
    classifier: Classifier
    task_types: dict
    breaker: BreakerConfig
    files: tuple
    digest: str
    channels: dict = field(default_factory=dict)  # name -> notify.channels.Channel (log included)
    routes: tuple = ()
    notify: NotifyConfig = NotifyConfig()
    thresholds: object = None  # thresholds.Thresholds
    secrets: tuple = ()  # values of the ${NAME}s the files use, and channel secrets: masked everywhere

    def task_type(self, name):
        return self.task_types.get(name) or TaskTypeConfig(name)


def unreadable_dirs(config_dir):
    """ConfigErrors for the config directory, or its patterns/ or codes/, that this process may not list: an
    unreadable directory had been a traceback, or read as empty (24 code tables dropped without a word, and
    "no pattern files" for a directory full of them)."""
    errors = []
    for directory in (Path(config_dir), Path(config_dir, "patterns"), Path(config_dir, "codes")):
        try:
            os.listdir(directory)
        except PermissionError:
            errors.append(ConfigError(directory, None, f"cannot be read by this user (uid {os.getuid()}): let "
                                                       "it read and enter the directory (chmod o+rx, or chgrp "
                                                       "to the service's group and chmod g+rx)"))
        except OSError:  # missing (patterns/ is reported as such below), or not a directory
            continue
    return errors


_CONFIG_DIRS = ("patterns", "codes")


def ignored_files(config_dir):
    """Notes on files an operator may think are read but are not: a pattern file at the top level or in a
    misspelt directory, a ``.TOML`` or ``.tml`` name, a hidden file (an editor's lock file)."""
    config_dir = Path(config_dir)
    notes = []
    for path in sorted(config_dir.iterdir()) if config_dir.is_dir() else ():
        lowered = path.name.lower()
        if path.is_dir() and path.name not in _CONFIG_DIRS and lowered.rstrip("s") in ("pattern", "code"):
            notes.append(f"{path}: not read: the directories read are patterns/ and codes/")
        elif path.is_file() and lowered.endswith((".toml", ".tml")) and path.name != MAIN_FILE:
            notes.append(f"{path}: not read: pattern files go in patterns/, code tables in codes/")
    for directory in _CONFIG_DIRS:
        inside = config_dir / directory
        for path in sorted(inside.iterdir()) if inside.is_dir() else ():
            if path.name.startswith("."):
                if path.name.endswith(".toml"):
                    notes.append(f"{path}: not read: a hidden file (an editor's lock file or a copy's metadata)")
            elif path.name.lower().endswith((".toml", ".tml")) and not path.name.endswith(".toml"):
                notes.append(f"{path}: not read: only names ending in .toml are")
    return notes


def empty_files(paths):
    """Notes on the files among ``paths`` that are empty: valid, and holding nothing (a running daemon that read
    one with content waits for it to have content again, as for a save still being written)."""
    notes = []
    for path in map(Path, paths):
        try:
            if path.is_file() and path.stat().st_size == 0:
                notes.append(f"{path}: empty: it adds nothing (a running daemon that read it with content waits "
                             "for it to have content again; to drop a file, delete it)")
        except OSError:
            pass
    return notes


def config_files(config_dir):
    main = Path(config_dir, MAIN_FILE)
    try:
        has_main = main.exists()
    except PermissionError:  # a directory this user may not enter: load_config says so (unreadable_dirs)
        has_main = False
    return ([main] if has_main else []) + pattern_files(config_dir) + code_files(config_dir)


def content_digest(files):
    """A hash of the files' names and bytes: an unchanged directory is not reloaded."""
    return digest_of((path, _bytes_or_marker(path)) for path in files)


def digest_of(contents):
    """``content_digest`` of ``[(path, bytes)]`` already read."""
    digest = hashlib.sha256()
    for path, data in contents:
        digest.update(str(path).encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def _bytes_or_marker(path):
    try:
        return read_config_bytes(path)
    except OSError:
        return b"<unreadable>"


def _parse_breaker(table, path, errors):
    if not check_type(table, dict, path, "breaker", errors, "a table"):
        return BreakerConfig()
    for name in sorted(set(table) - BREAKER_KEYS):
        errors.append(ConfigError(path, f"breaker.{name}", f"unknown key: use one of {', '.join(sorted(BREAKER_KEYS))}"))
    values = {}
    if "failures" in table and check_type(table["failures"], int, path, "breaker.failures", errors, "a whole number"):
        if table["failures"] < 1:
            errors.append(ConfigError(path, "breaker.failures", "must be at least 1"))
        values["failures"] = table["failures"]
    if "cooldown_seconds" in table and check_type(table["cooldown_seconds"], (int, float), path,
                                                   "breaker.cooldown_seconds", errors, "a number of seconds"):
        if table["cooldown_seconds"] <= 0:
            errors.append(ConfigError(path, "breaker.cooldown_seconds", "must be greater than 0"))
        values["cooldown_seconds"] = float(table["cooldown_seconds"])
    return BreakerConfig(**values)


def _parse_numbers(table, dataclass_type, path, key, errors):
    """A table of positive numbers onto a dataclass of defaults (notify, thresholds)."""
    if not check_type(table, dict, path, key, errors, "a table"):
        return dataclass_type()
    allowed = dataclass_type.__dataclass_fields__
    values = {}
    for name, value in table.items():
        if name not in allowed:
            errors.append(ConfigError(path, f"{key}.{name}", f"unknown key: use one of {', '.join(sorted(allowed))}"))
            continue
        expected = int if allowed[name].type in (int, "int") else (int, float)
        if check_type(value, expected, path, f"{key}.{name}", errors, "a positive number"):
            if value <= 0:
                errors.append(ConfigError(path, f"{key}.{name}", f"is {value}: must be greater than 0"))
            values[name] = value
    return dataclass_type(**values)


def _parse_channels(tables, path, errors, log_dir):
    channels = {LOG_CHANNEL: LogChannel(LOG_CHANNEL, log_dir)}
    if not check_type(tables, dict, path, "channels", errors, "a table of [channels.NAME] tables"):
        return channels
    for name, table in tables.items():
        if name == LOG_CHANNEL:
            errors.append(ConfigError(path, f"channels.{name}", "the log channel is built in and always on: "
                                                               "give your channel another name"))
            continue
        try:
            channels[name] = parse_channel(name, table, path, f"channels.{name}", log_dir=log_dir)
        except ConfigError as exc:
            errors.append(exc)
    return channels


def _parse_task_type(name, table, path, errors):
    key = f"task_types.{name}"
    if not check_type(table, dict, path, key, errors, "a table"):
        return TaskTypeConfig(name)
    for unknown in sorted(set(table) - TASK_TYPE_KEYS):
        errors.append(ConfigError(path, f"{key}.{unknown}", f"unknown key: use one of {', '.join(sorted(TASK_TYPE_KEYS))}"))
    handler = None
    if "handler" in table:
        try:
            handler = parse_handler(table["handler"], path, f"{key}.handler")
        except ConfigError as exc:
            errors.append(exc)
    retry = parse_retry(table["retry"], path, f"{key}.retry", errors) if "retry" in table else {}
    by_category = {}
    overrides = table.get("retry_by_category", {})
    if check_type(overrides, dict, path, f"{key}.retry_by_category", errors, "a table of category = { delays = [...] }"):
        for category, policy in overrides.items():
            by_category[category] = parse_retry(policy, path, f"{key}.retry_by_category.{category}", errors)
    return TaskTypeConfig(name, handler, retry, by_category)


def unset_variable_problems(snapshot, config_dir, environ=os.environ):
    """ConfigErrors for each ``${NAME}`` a task type's handler or a channel uses that this environment does not set.

    Not fatal to the daemon (only that handler's retries fail, or that channel's sends, each saying which
    variable); ``check-config`` reports them, to be run with the service's environment.
    """
    main = Path(config_dir, MAIN_FILE)
    used = [(f"task_types.{name}.handler.{field}", variable)
            for name, task_type in snapshot.task_types.items() if task_type.handler is not None
            for field, variable in unset_variables(task_type.handler, environ)]
    used += [(f"channels.{name}.{field}", variable) for name, channel in snapshot.channels.items()
             for field, variable in channel.unset_variables(environ)]
    return [ConfigError(main, key, f"${{{variable}}} is not set in this environment: set it where the daemon "
                        "runs (systemd EnvironmentFile=), and run check-config with that environment")
            for key, variable in used]


def _check_categories_named(task_types, ruleset, path, errors):
    for config in task_types.values():
        for category in config.retry_by_category:
            if ruleset.category(category) is None:
                errors.append(ConfigError(path, f"task_types.{config.name}.retry_by_category.{category}",
                                          f"no category named {category!r}: use one of "
                                          f"{', '.join(c.name for c in ruleset.categories)}"))


def _checked(errors, build, *args):
    """``build(*args)``, or None with its ConfigErrors added to ``errors``."""
    try:
        return build(*args)
    except ConfigErrors as exc:
        errors.extend(exc.errors)
        return None


def _classifier(ruleset, tables, lang, model_settings, labels, model):
    names = frozenset(c.name for c in ruleset.categories)
    if not model_settings.enabled:
        learned = None
    elif model:
        learned = modelcache.trained(names, labels, lambda: train_apart(names, labels))
    else:
        learned = ModelNotLoaded()
    return Classifier(ruleset, lang, tables, learned, model_settings.min_confidence,
                      overrule_confidence=model_settings.overrule_confidence)


def _not_a_config_dir(config_dir):
    if config_dir.exists():
        return "not a directory: give the config directory (FAILURE_CONFIG_DIR), or create one with 'failured init DIR'"
    return (f"no such directory (looked at {config_dir.absolute()}): run failured where its config/ is, set "
            f"FAILURE_CONFIG_DIR, or create it with 'failured init {config_dir}'")


def load_config(config_dir, lang="zh", log_dir="logs", labels=(), model=True):
    """Validate the whole directory; return a Snapshot or raise ConfigErrors listing every problem.

    ``labels``: operators' labelled examples ``[(category, error_type or None, message), ...]``,
    trained on with the shipped corpus (unless the model cache holds that model, the caller's thread waits
    while a child process trains it: training.py). ``model``: False for a caller that never classifies
    (the snapshot's classifier then has a ModelNotLoaded).
    """
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise ConfigErrors([ConfigError(config_dir, None, _not_a_config_dir(config_dir))])
    if unreadable := unreadable_dirs(config_dir):
        raise ConfigErrors(unreadable)
    # Hashed before anything is read: a file changed while the snapshot builds (a model's training takes
    # seconds) leaves the snapshot's digest behind the directory's, so the next look reloads it.
    files = config_files(config_dir)
    digest = content_digest(files)
    errors = []
    classifier = None
    main = config_dir / MAIN_FILE
    if main.is_symlink() and not main.exists():
        errors.append(ConfigError(main, None, f"a link to {os.readlink(main)}, which does not exist: point it at "
                                              "the file, or remove it to run on every default"))
    document = read_toml(main, errors) if main.exists() else {}
    document = document or {}
    model_settings = parse_model_settings(document.get("model", {}), main, errors)
    ruleset = _checked(errors, load_ruleset, config_dir)
    # The code tables are checked whatever the patterns' state: every problem in one pass (their categories'
    # names only against patterns that load).
    tables = _checked(errors, load_code_tables, config_dir, ruleset and frozenset(c.name for c in ruleset.categories))
    if ruleset is not None and tables is not None:
        classifier = _checked(errors, _classifier, ruleset, tables, lang, model_settings, tuple(map(tuple, labels)),
                              model)
    for name in sorted(set(document) - TOP_KEYS):
        errors.append(ConfigError(main, name, f"unknown top-level key: use one of {', '.join(sorted(TOP_KEYS))}"))
    breaker = _parse_breaker(document.get("breaker", {}), main, errors)
    task_types = {}
    if check_type(document.get("task_types", {}), dict, main, "task_types", errors, "a table"):
        for name, table in document.get("task_types", {}).items():
            task_types[name] = _parse_task_type(name, table, main, errors)
    if ruleset is not None:
        _check_categories_named(task_types, ruleset, main, errors)
    channels = _parse_channels(document.get("channels", {}), main, errors, log_dir)
    category_names = None if ruleset is None else {c.name for c in ruleset.categories} | {"unknown"}
    routes = parse_routes(document.get("routes", []), channels, category_names, main, errors)
    notify = _parse_numbers(document.get("notify", {}), NotifyConfig, main, "notify", errors)
    thresholds = _parse_numbers(document.get("thresholds", {}), Thresholds, main, "thresholds", errors)
    if errors:
        raise ConfigErrors(errors)
    secrets = tuple(dict.fromkeys([*referenced_secrets(files), *secret_values(channels.values())]))
    return Snapshot(ruleset, classifier, task_types, breaker, tuple(str(f) for f in files), digest,
                    channels, routes, notify, thresholds, secrets)
