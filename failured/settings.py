"""Process-wide settings from the environment (and a ``.env`` file), validated once at start."""

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

DEFAULT_DB = "data/failured.db"
DEFAULT_CONFIG_DIR = "config"
DEFAULT_LOG_DIR = "logs"
DEFAULT_REPORT_DIR = "reports"
DEFAULT_HTTP_ADDR = "127.0.0.1:8649"

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
LANGUAGES = ("zh", "en")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    """Every ``FAILURE_*`` variable, with its default; the README lists them."""

    db: Path | str = Path(DEFAULT_DB)  # a SQLite path, or a postgresql:// URL (kept as text)
    config_dir: Path = Path(DEFAULT_CONFIG_DIR)
    log_dir: Path = Path(DEFAULT_LOG_DIR)
    report_dir: Path = Path(DEFAULT_REPORT_DIR)
    recovery_enabled: bool = True
    notification_enabled: bool = True
    scan_interval_minutes: float = 30.0
    analysis_interval_hours: float = 6.0
    analysis_days: int = 7
    max_recovery_attempts: int = 3
    retry_concurrency: int = 4
    retention_days: int = 90
    report_retention_days: int = 30
    shutdown_grace_seconds: float = 30.0
    poll_seconds: float = 0.5
    lang: str = "zh"
    log_level: str = "INFO"
    http_addr: str = DEFAULT_HTTP_ADDR
    http_max_connections: int = 256  # API connections open at once; far below the open-file limit
    console_pattern_writes: bool = True  # the console may save pattern files into the config directory
    model_cache: str = ""  # empty: systemd's CacheDirectory, else ~/.cache/failured (read by modelcache)
    api_token: str | None = field(default=None, repr=False)  # a secret: never printed
    given: frozenset = field(default=frozenset(), repr=False)  # the variables set (environment or .env)


# env name -> (Settings attribute, parser name, meaning); the parser checks the value and its range.
# ``failured run --help`` and the README's table are made from / checked against this one list.
_VARIABLES = {
    "FAILURE_DB": ("db", "db", "SQLite database path, or a postgresql:// URL"),
    "FAILURE_CONFIG_DIR": ("config_dir", "path", "config directory (watched)"),
    "FAILURE_LOG_DIR": ("log_dir", "path", "admin_alerts.log, user_notifications.log"),
    "FAILURE_REPORT_DIR": ("report_dir", "path", "JSON and HTML reports"),
    "FAILURE_RECOVERY_ENABLED": ("recovery_enabled", "bool", "run automatic retries"),
    "FAILURE_NOTIFICATION_ENABLED": ("notification_enabled", "bool", "send notifications"),
    "FAILURE_SCAN_INTERVAL_MINUTES": ("scan_interval_minutes", "positive_float", "reconciliation scan"),
    "FAILURE_ANALYSIS_INTERVAL_HOURS": ("analysis_interval_hours", "positive_float", "analysis slot"),
    "FAILURE_ANALYSIS_DAYS": ("analysis_days", "positive_int", "period an analysis covers"),
    "FAILURE_MAX_RECOVERY_ATTEMPTS": ("max_recovery_attempts", "positive_int",
                                      "attempt limit for a category that names none"),
    "FAILURE_RETRY_CONCURRENCY": ("retry_concurrency", "positive_int", "retries running at once"),
    "FAILURE_RETENTION_DAYS": ("retention_days", "positive_int", "history kept in the database"),
    "FAILURE_REPORT_RETENTION_DAYS": ("report_retention_days", "positive_int", "report files kept"),
    "FAILURE_SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", "non_negative_float",
                                       "how long a stop waits for running retries"),
    "FAILURE_POLL_SECONDS": ("poll_seconds", "positive_float", "how often the daemon looks for new tasks"),
    "FAILURE_LANG": ("lang", "lang", "zh or en, for labels, suggestions and messages"),
    "FAILURE_LOG_LEVEL": ("log_level", "log_level", "DEBUG, INFO, WARNING, ERROR"),
    "FAILURE_HTTP_ADDR": ("http_addr", "text", "HTTP API and /metrics; off disables it"),
    "FAILURE_HTTP_MAX_CONNECTIONS": ("http_max_connections", "positive_int",
                                     "HTTP API connections open at once; beyond it idle ones close, then 503"),
    "FAILURE_CONSOLE_PATTERN_WRITES": ("console_pattern_writes", "bool",
                                       "the web console may save pattern files into the config directory"),
    "FAILURE_MODEL_CACHE": ("model_cache", "text", "where the trained model and the last good config are kept "
                            "(unset: systemd's CacheDirectory, else ~/.cache/failured); off: neither is kept"),
    "FAILURE_API_TOKEN": ("api_token", "secret",
                          "bearer token for /v1/; required to listen on anything but loopback, and then at least "
                          "16 characters"),
}


def variables():
    """(name, default as text, meaning) of every ``FAILURE_*`` variable, in the documented order."""
    defaults = Settings()
    rows = []
    for name, (attribute, kind, meaning) in _VARIABLES.items():
        value = getattr(defaults, attribute)
        if kind == "secret" or value is None or value == "":
            default = "unset"
        elif kind == "bool":
            default = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            default = f"{value:g}"
        else:
            default = str(value)
        rows.append((name, default, meaning))
    return rows


MAX_ANALYSIS_DAYS = 3660  # ten years: also the most `analyze --days` takes
# The largest value each number may take, in its own unit: past these, times overflowed the database's range or
# Python's (FAILURE_RETENTION_DAYS=99999999 looped on "year -271764 is out of range", FAILURE_POLL_SECONDS=1e308
# failed every poll).
_MAXIMUM = {
    "FAILURE_SCAN_INTERVAL_MINUTES": 7 * 24 * 60,  # a week
    "FAILURE_ANALYSIS_INTERVAL_HOURS": 31 * 24,  # a month
    "FAILURE_ANALYSIS_DAYS": MAX_ANALYSIS_DAYS,
    "FAILURE_MAX_RECOVERY_ATTEMPTS": 1000,
    "FAILURE_RETRY_CONCURRENCY": 1024,
    "FAILURE_RETENTION_DAYS": 36600,  # a hundred years
    "FAILURE_REPORT_RETENTION_DAYS": 36600,
    "FAILURE_SHUTDOWN_GRACE_SECONDS": 86400,  # a day
    "FAILURE_POLL_SECONDS": 3600,
    "FAILURE_HTTP_MAX_CONNECTIONS": 65536,
}


def _parse(kind, name, raw):
    value = raw.strip()
    if kind == "text":
        return value
    if kind == "secret":
        return value or None
    if kind == "db" and value.startswith(("postgresql://", "postgres://")):
        return value
    if kind == "db" and "://" in value:  # a path would have been made of it: ./mysql:/x/y, and a new database there
        scheme = value.split("://", 1)[0]
        raise InputError(f"{name} has the scheme {scheme!r}: failured stores in SQLite (a file path) or PostgreSQL "
                         "(postgresql://user@host:5432/dbname, no driver suffix such as +psycopg)")
    if kind in ("path", "db"):
        if not value:
            raise InputError(f"{name} is empty: set it to a path or unset it")
        return Path(value)
    if kind == "bool":
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise InputError(f"{name}={raw!r} is not a boolean: use true or false")
    if kind in ("positive_int", "positive_float", "non_negative_float"):
        number_type = int if kind == "positive_int" else float
        try:
            number = number_type(value)
        except ValueError:
            raise InputError(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(number):
            raise InputError(f"{name}={raw!r} is not a finite number")
        if number < 0 or (number == 0 and kind != "non_negative_float"):
            raise InputError(f"{name}={raw!r} must be greater than 0")
        if number > _MAXIMUM.get(name, math.inf):
            raise InputError(f"{name}={raw!r} is more than {_MAXIMUM[name]:,}, the most it may be")
        return number
    if kind == "lang":
        if value.lower() not in LANGUAGES:
            raise InputError(f"{name}={raw!r} is not a language: use zh or en")
        return value.lower()
    if kind == "log_level":
        if value.upper() not in LOG_LEVELS:
            raise InputError(f"{name}={raw!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
        return value.upper()
    raise AssertionError(kind)


# FAILURE_* variables read elsewhere: the Celery integration's, and the test suite's.
OTHER_VARIABLES = ("FAILURE_API_URL", "FAILURE_SPOOL_DIR", "FAILURE_TEST_POSTGRES_URL")


def misspelt_variables(environ=None):
    """One line for each FAILURE_* variable that failured reads nowhere but whose name is close to one it does
    (``FAILURE_API_TOKN``): it had been ignored without a word, the daemon open to anyone on loopback."""
    environ = os.environ if environ is None else environ
    known = [*_VARIABLES, *OTHER_VARIABLES]
    lines = []
    for name in sorted(n for n in environ if n.startswith("FAILURE_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            lines.append(f"{name} is not a failured variable and is ignored: did you mean {close[0]}?")
    return lines


def load_settings(environ=None, dotenv_path=".env"):
    """Build the settings from ``environ`` (default: the process environment plus ``.env``).

    Variables already in the environment win over the ``.env`` file, as with
    systemd's ``EnvironmentFile=`` followed by ``Environment=``.
    """
    from_dotenv = set()
    if environ is None:
        environ = dict(os.environ)
        if dotenv_path and Path(dotenv_path).is_file():
            from dotenv import dotenv_values

            for key, value in dotenv_values(dotenv_path).items():
                if value is not None and key not in environ:
                    environ[key] = value
                    from_dotenv.add(key)
    values = {}
    for name, (attribute, kind, _meaning) in _VARIABLES.items():
        if name in environ:
            try:
                values[attribute] = _parse(kind, name, environ[name])
            except InputError as exc:
                if name not in from_dotenv:
                    raise
                # A .env in the working directory is easy to forget: say where the value came from.
                raise InputError(f"{exc} (set in {Path(dotenv_path).resolve()}: fix or remove that line)") from None
    return Settings(**values, given=frozenset(name for name in _VARIABLES if name in environ))

