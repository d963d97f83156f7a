"""Where the error begins in a log line: past the head a logging framework writes before it.

``2024-03-18 14:02:11,532 ERROR [celery.app.trace] ValueError: …`` is a ``ValueError`` to read, not a
date, a level and a logger: a failure copied from a log names its exception type after the head, and
the words of the head (a thread, a logger, a file and line) are noise to the patterns and the model.

A head is read only where a line starts as a log record does: a timestamp (ISO 8601, ``2024/03/18``,
``11-Mar-2020``, syslog's ``Mar 18 14:02:11 host prog[12]:``, a time of day), glog's ``E0318
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
"""

import re

MAX_HEAD = 300  # no log head is longer than this
MAX_PARTS = 12

_LEVELS = "ERROR|ERR|FATAL|CRITICAL|CRIT|SEVERE|ALERT|EMERG|WARN|WARNING|NOTICE|INFO|DEBUG|TRACE"
_ZH_LEVELS = "严重|错误|警告|信息"  # JUL's and Tomcat's levels in Chinese
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_WEEKDAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_TIME = (r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,:]\d{1,9})?(?:\s?[AaPp][Mm])?"
         r"(?:\s?(?:Z|[+-]\d{2}:?\d{2}|[A-Z]{1,4}T|UTC|GMT|MSK))?(?:\s\d{4}(?=\]))?")
_DATE = (r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}|\d{1,2}-" + _MONTH + r"-\d{4}"
         r"|(?:" + _WEEKDAY + r",?\s)?" + _MONTH + r"\s{1,2}\d{1,2}(?:,?\s\d{4})?"
         r"|\d{1,2}\s" + _MONTH + r"(?:\s\d{4})?)")
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
    r"[IWEDFC](?=\s\|)",  # capnslog's level
    r"-{2,3}(?=\s)",  # Spring Boot's ---
    # a Java logger and its method before the message, as Tomcat writes them (a lower-case name of 3+ parts)
    _NOT_AN_EXCEPTION + r"[a-z][\w$-]{0,59}(?:\.[\w$-]{1,60}){2,12}(?=\s)",
]))
_SEPARATOR = re.compile(r"[\s|:,>\]-]*")


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
    """``text`` from where its error begins (``error_start``); the whole text where it has no log head."""
    start = error_start(text)
    return text[start:] if start else text
