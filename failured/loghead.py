"""Where the error begins in a log line: past the head a logging framework writes before it.

``2024-03-18 14:02:11,532 ERROR [celery.app.trace] ValueError: …`` is a ``ValueError`` to read, not a
date, a level and a logger: a failure copied from a log names its exception type after the head, and
the words of the head (a thread, a logger, a file and line) are noise to the patterns and the model.

A head is read only where a line starts as a log record does: a timestamp (ISO 8601, ``2024/03/18``,
``11-Mar-2020``, syslog's ``Mar 18 14:02:11 host prog[12]:``, a time of day, ``2024年03月18日``), glog's ``E0318
14:02:11.532104 2231 file.go:88]``, logfmt's ``time=… level=…``, logrus's ``WARN[0000]``, Ruby's ``F,
[…]``, a level in brackets (``[ERROR]``) or followed by a colon (``ERROR:``, ``FATAL:``), npm's ``npm
ERR!``, or docker compose's ``web-1 | ``. After such a start, the parts logging formats put there
(levels, brackets, pids, ``---``, a logger's dotted name, a source file and line, ``key=value``
fields) are read past too, one after the other; after a level alone, only what cannot be the message's
own (timestamps, brackets, levels, loggers, source lines), so that ``[ERROR] 1045`` keeps its number.
Celery's ``Task name[id] raised unexpected:`` is read past wherever the head ends. A name that reads as
an exception type (``…Error``, ``…Exception``, a module ``….exceptions.…``) is where the error begins,
never part of the head; so is a bracket that holds an errno (``[Errno 111]``), and MySQL's ``ERROR 1045
(28000):`` is the message's own. Every expression is anchored and bounded, and at most ``MAX_PARTS``
parts are read within the first ``MAX_HEAD`` characters: constant time whatever the message.

A JSON log record (an object with a log level: zap, pino, structlog, logstash's encoder, Serilog…) has its head
in its other fields: it is read as its error field and its message (``record_text``), in linear time.
"""

import json
import re

MAX_HEAD = 300  # no log head is longer than this
MAX_PARTS = 12

_LEVELS = "ERROR|ERR|FATAL|CRITICAL|CRIT|SEVERE|ALERT|EMERG|WARN|WARNING|NOTICE|INFO|DEBUG|TRACE"
_ZH_LEVELS = "严重|错误|警告|信息"  # JUL's and Tomcat's levels in Chinese
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_WEEKDAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_TIME = (r"(?:上午|下午)?\d{1,2}:\d{2}(?::\d{2})?(?:[.,:]\d{1,9})?(?:\s?(?:[AaPp][Mm]|上午|下午))?"
         r"(?:\s?(?:Z|[+-]\d{2}:?\d{2}|[A-Z]{1,4}T|UTC|GMT|MSK))?(?:\s\d{4}(?=\]))?")
_ZH_MONTH = r"(?:十[一二]?|[一二三四五六七八九])月"  # JUL's dates on a Chinese system: 三月 18, 2024
_DATE = (r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}|\d{1,2}-" + _MONTH + r"-\d{4}"
         r"|(?:" + _WEEKDAY + r",?\s)?" + _MONTH + r"\s{1,2}\d{1,2}(?:,?\s\d{4})?"
         r"|\d{1,2}\s" + _MONTH + r"(?:\s\d{4})?"
         r"|\d{4}年\d{1,2}月\d{1,2}日|" + _ZH_MONTH + r"\s\d{1,2},\s\d{4})")
_STAMP = r"\[?(?:" + _DATE + r"(?:,?[T\s]" + _TIME + r")?|" + _TIME + r")\]?(?=[\s|:\]-]|$)"
_BRACKETED_LEVEL = r"\[\s?(?:" + _LEVELS + "|" + _LEVELS.lower() + r")\s{0,4}\]"
_GLOG = r"[IWEF]\d{4}\s\d{2}:\d{2}:\d{2}\.\d{6}\s{1,9}\d{1,9}\s[\w./-]{1,120}:\d{1,6}\]"
_PYTHON_DEFAULT = r"(?:ERROR|WARNING|CRITICAL|INFO|DEBUG):[\w.-]{1,100}:"  # logging's basicConfig: ERROR:root:

# A log record's first part, after which every part below may follow.
_STRONG_START = re.compile("|".join([
    r"(?:" + _WEEKDAY + r"\s)?" + _MONTH + r"\s{1,2}\d{1,2}\s\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?\s[\w.-]{1,64}"
    r"\s[\w./-]{1,64}(?:\[\d{1,9}\])?:",  # syslog and journald: Mar 18 14:02:11 host prog[12]:
    r"\[\d{4}-\d{2}-\d{2}\s" + _TIME + r":\s(?:" + _LEVELS + r")/[\w-]{1,60}\]",  # Celery's worker log
    r"\[\d{4}-\d{2}-\d{2}T" + _TIME + r"\s{1,2}(?:" + _LEVELS + r")\s{1,2}[\w:]{1,120}\]",  # Rust's env_logger
    r"\[Nest\]\s{1,9}\d{1,9}\s{1,9}-\s",  # NestJS
    r"[DIWEFA],\s\[\d{4}-\d{2}-\d{2}T" + _TIME + r"\s#\d{1,9}\]",  # Ruby's Logger
    r"(?:PANI|FATA|ERRO|WARN|INFO|DEBU|TRAC)\[[^\]\s]{1,40}\]",  # logrus on a terminal
    _STAMP,
    _GLOG,
    r"(?:time|ts|level|lvl)=(?:\"[^\"\n]{0,80}\"|[^\s\"]{1,80})(?=\s)",  # logfmt
    _PYTHON_DEFAULT,
    r"[\w.-]{1,64}\s{1,40}\|\s",  # docker compose: web-1    | …
]))
# A level alone starts a head; after it only the parts that cannot be the message's own.
_WEAK_START = re.compile("|".join([
    _BRACKETED_LEVEL,
    r"(?:" + _LEVELS + r"):(?=\s)",  # ERROR: / FATAL: (not MySQL's "ERROR 1045 (28000):")
    r"(?:" + _LEVELS + r")(?=\s{2}|\t)",  # zap's console: ERROR<tab>
    r"npm (?:ERR!|WARN|error|warn)\s",
    r"log4j:(?:ERROR|WARN)\s",
    r"[VDIWEF]/[\w.-]{1,40}(?:\(\s{0,5}\d{1,9}\))?:\s",  # Android's logcat: W/stderr:
]))
_BARE_LEVEL = re.compile(r"(?:" + _LEVELS + r")(?=\s)")  # a start only before a timestamp or a bracket
_STAMP_NEXT = re.compile(_STAMP + r"|\[")
_CELERY = re.compile(r"Task [\w.:-]{1,200}\[[\w-]{1,64}\] (?:raised unexpected|INTERNAL ERROR): ")

# A logger's or a process's name, followed by the separator formats put after it (or by a level); never an
# exception type.
_NOT_AN_EXCEPTION = (r"(?![\w$.:-]*(?:Error|Exception|Exc|Fault|Failure|Warning|Interrupt|Exit"
                     r"|\.exceptions?\.|\.errors?\.|\.exc\.))")
_SEPARATED = r"\s(?:-|:|\|)\s|\s{2,}:|\s?\||\[\d{1,9}\]:|\s{1,9}(?:" + _LEVELS + r")\b"
_NAME = (_NOT_AN_EXCEPTION
         + r"(?:[A-Za-z_][\w$-]{0,59}(?:(?:\.|::)[\w$-]{1,60}){0,12}(?:\[\d{1,9}\])?(?::\d{1,6})?"
         + r"(?=" + _SEPARATED + r")"
         # before a bare ": " only a name of lower-case parts (celery.app.trace, a Rust module): an exception's
         # last part is a class name (PG::ConnectionBad: …)
         + r"|[a-z_][\w$-]{0,59}(?:(?:\.|::)[a-z_][\w$-]{0,59}){1,12}(?::\d{1,6})?(?=:\s))")
_COMMON_PARTS = "|".join([
    _STAMP,
    r"\[\s{0,20}(?!Errno\b|WinError\b|errno\b)[^\]\s]{0,80}\s{0,20}\]",  # [thread], [logger], [ERROR/MainProcess]
    r"\[pid\s\d{1,9}(?::tid\s\d{1,20})?\]",  # Apache's [pid 1226]
    r"\{{1,2}[\w./-]{1,100}:\d{1,6}\}{1,2}",  # Airflow's {taskinstance.py:1401}
    _PYTHON_DEFAULT,
    r"(?:" + _LEVELS + "|" + _ZH_LEVELS + r")\b",
    r"(?:error|fatal|critical|warning|warn)(?=\s*(?:\||\s-\s|:\s))",  # winston's "- error:" (not JS's Error:)
    r"[\w.-]{1,60}\.(?:ERROR|CRITICAL|ALERT|EMERGENCY|WARNING|NOTICE|INFO|DEBUG):",  # Monolog: production.ERROR:
    _GLOG,
    r"[\w./-]{1,150}\.(?:go|py|java|js|ts|rb|php|cs|rs|c|cc|cpp|kt|scala):\d{1,6}(?=[\s:\]])",  # file:line
    r"\d{1,9}#\d{1,9}:",  # nginx's pid#tid:
    r"[\w.]{1,150}:[\w<>]{1,80}:\d{1,6}(?=\s-\s)",  # loguru's module:function:line -
    r"\*\d{1,12}(?=\s)",  # nginx's connection number
    _NAME,
])
_WEAK_PART = re.compile(_COMMON_PARTS)
_PART = re.compile("|".join([
    _COMMON_PARTS,
    r"\((?!Errno\b|errno\b)[\w.:/-]{1,40}\)",  # (7646), (main)
    r"(?:time|ts|level|lvl|caller|logger|pid|tid|thread|host|hostname|service|app)=(?:\"[^\"\n]{0,80}\"|[^\s\"]{1,80})",
    r"(?:msg|message)=(?=\")",  # logfmt's message key (its value is the message)
    r"@?\d{1,3}(?:\.\d{1,3}){3}(?=\s)",  # a host's address
    r"\d{1,9}:?(?=[\s|])",  # a pid
    r"TID-\w{1,40}",  # Sidekiq's thread
    r"(?:PID|TID|pid|tid):\d{1,20}",
    # JUL's method after its class (SimpleFormatter: "…StandardWrapperValve invoke" then "SEVERE: …")
    r"[a-z]\w{0,60}(?=\s{1,4}(?:SEVERE|WARNING|INFO|" + _ZH_LEVELS + r"):)",
    r"[IWEDFC](?=\s\|)",  # capnslog's level
    r"-{2,3}(?=\s)",  # Spring Boot's ---
    # a Java logger and its method before the message, as Tomcat writes them (a lower-case name of 3+ parts)
    _NOT_AN_EXCEPTION + r"[a-z][\w$-]{0,59}(?:\.[\w$-]{1,60}){2,12}(?=\s)",
]))
_SEPARATOR = re.compile(r"[\s|:,>\]-]*")

# A JSON log record's keys, each kind's spellings in the order they are read.
_LEVEL_KEYS = ("level", "levelname", "severity", "@l", "log.level", "lvl", "loglevel", "log_level")
_LEVEL_NAMES = frozenset(_LEVELS.lower().split("|")) | {"information", "verbose", "panic", "dpanic", "emergency"}
_MESSAGE_KEYS = ("msg", "message", "@m", "@mt", "event", "@message")
# zap's "stacktrace" holds only the frames (its "error" says what failed): never read for the error.
_ERROR_KEYS = ("exception", "exc_info", "@x", "stack_trace", "err", "error")
_STREAMS = ("stderr", "stdout")
_OBJECT_OPENS, _OBJECT_CLOSES = re.compile(r"\s{0,64}\{"), re.compile(r"\}\s*\Z")  # looked at before any parse
_TRACEBACK = "Traceback (most recent call last)"


def error_start(text):
    """Where the error itself begins in ``text``: past a log record's head, else 0."""
    head = text[:MAX_HEAD]
    position = len(head) - len(head.lstrip())
    start, parts = _record_start(head, position)
    if start is None:
        celery = _CELERY.match(head, position)
        position = celery.end() if celery else 0
    else:
        position = _past_parts(head, _SEPARATOR.match(head, start).end(), parts)
    return position if position < len(text) and text[position:].strip() else 0


def _record_start(head, position):
    """(where the first part of a log record's head ends, the parts that may follow it), or (None, None)."""
    for starts, parts in ((_STRONG_START, _PART), (_WEAK_START, _WEAK_PART)):
        start = starts.match(head, position)
        if start:
            return start.end(), parts
    bare = _BARE_LEVEL.match(head, position)
    if bare and _STAMP_NEXT.match(head, _SEPARATOR.match(head, bare.end()).end()):
        return bare.end(), _WEAK_PART
    return None, None


def _past_parts(head, position, parts):
    """Where the head's parts end from ``position`` on (a timestamp read makes every part readable)."""
    for _ in range(MAX_PARTS):
        celery = _CELERY.match(head, position)
        if celery:
            return celery.end()
        part = parts.match(head, position)
        if part is None or part.end() == position:
            break
        if parts is _WEAK_PART and _STRONG_START.match(head, position):
            parts = _PART
        position = _SEPARATOR.match(head, part.end()).end()
    return position


def without_log_head(text):
    """``text`` from where its error begins (``error_start``), a JSON log record read as its error and message
    (``record_text``); the whole text where it has neither."""
    start = error_start(text)
    rest = text[start:] if start else text
    record = record_text(rest)
    if record is None:
        return rest
    start = error_start(record)  # a container's record holds the program's own line, head and all
    return record[start:] if start else record


def record_text(text):
    """What a JSON log record says went wrong: its error (a stack trace, or an error's type and message), then its
    message on a line of its own (a Python traceback after it, so that its last line stays last); None where
    ``text`` is not a JSON object with a log level, or holds neither.

    zap, logrus, slog, zerolog, pino, bunyan, winston, structlog, python-json-logger, logstash-logback-encoder,
    Serilog's compact JSON, ECS and Google Cloud's structured logging name the same few things a few ways;
    Docker's json-file driver wraps a container's own line as ``log``.
    """
    if not _OBJECT_OPENS.match(text) or not _OBJECT_CLOSES.search(text, max(0, len(text) - 64)):
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # a hostile reporter can nest JSON 20,000 deep
        return None
    if not isinstance(record, dict):
        return None
    if not _is_level(_first(record, _LEVEL_KEYS)):
        line = record.get("log")
        return _text_of(line) if record.get("stream") in _STREAMS else None
    message = _text_of(_first(record, _MESSAGE_KEYS))
    error = _error_of(_first(record, _ERROR_KEYS) or {key[6:]: value for key, value in record.items()
                                                          if key.startswith("error.")})
    if not error or (message and error in message):
        return message
    if not message or message in error:
        return error
    return f"{message}\n{error}" if _TRACEBACK in error else f"{error}\n{message}"


def _first(record, keys):
    return next((record[key] for key in keys if record.get(key) not in (None, "", {}, [])), None)


def _is_level(value):
    if isinstance(value, str):
        return value.strip().lower() in _LEVEL_NAMES
    return type(value) is int and value in (10, 20, 30, 40, 50, 60)  # pino's and bunyan's numbers


def _text_of(value):
    return (value.strip() or None) if isinstance(value, str) else None


def _error_of(value):
    """An error field as text: a string as it is; an object by its stack trace, else its type and message, else
    as JSON; nothing where it is empty."""
    if isinstance(value, bool) or value is None:  # "error": false says nothing went wrong there
        return None
    if not isinstance(value, dict):
        return _text_of(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not value:
        return None
    stack = _text_of(_first(value, ("stack", "stack_trace", "stacktrace")))
    if stack:
        return stack
    kind, message = _text_of(_first(value, ("type", "name", "kind", "class"))), _text_of(_first(value, _MESSAGE_KEYS))
    if message:
        return f"{kind}: {message}" if kind else message
    return json.dumps(value, ensure_ascii=False)
