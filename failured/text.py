"""Text both stores can hold, whatever a reporter, a handler or a command line sends."""

import json
import re
import shlex

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value):
    """Any str/bytes -> valid UTF-8 text both stores hold: bad bytes, lone surrogates and NUL become U+FFFD
    (PostgreSQL's text cannot hold U+0000; SQLite would, and the two must store the same text)."""
    return _valid_utf8(value).replace("\x00", "\ufffd")


def without_surrogates(text):
    """``text`` with each lone surrogate (a JSON ``\\ud800`` escape) as U+FFFD; nothing else changed."""
    return _SURROGATE.sub("\ufffd", text)


def _valid_utf8(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # undecodable bytes smuggled in as surrogates (os.fsdecode, sys.argv)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


# What a terminal, a log or a chat client acts on rather than shows (C0 and C1 controls, DEL, line and paragraph
# separators) and what reorders the text after it (bidirectional overrides), as a regex character class: a
# reporter's ANSI sequence could clear the operator's screen, retitle the window, forge a line or hide text.
CONTROL_CHARACTERS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_TERMINAL_CONTROL = re.compile(f"(?![\t\n])[{CONTROL_CHARACTERS}]")  # tabs and line breaks print as they are


def clipped(text, limit):
    """``text`` cut to ``limit`` characters, the cut marked with "…" (None and shorter texts as they are)."""
    return text if text is None or len(text) <= limit else text[:limit - 1] + "…"


def printable(text):
    """``text`` as a terminal should show it: each control character as a visible escape (``\\x1b``)."""
    return _TERMINAL_CONTROL.sub(_escaped, text)


def quoted(text):
    """``text`` (a pattern) in single quotes as it is written, to be copied back into a file: no doubled
    backslashes as repr() writes them, only control characters escaped."""
    return "'" + printable(text).replace("\n", "\\n").replace("\t", "\\t") + "'"


def shell_word(value):
    """``value`` as one word of a shell command failured suggests: quoted when a shell would split it or act
    on it (a reporter's task type ``x;reboot`` must not run ``reboot`` when the command is pasted)."""
    return shlex.quote(str(value))


_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(name):
    """``name`` as one key of a TOML table header: bare when TOML allows it, else a quoted string."""
    return name if _TOML_BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _escaped(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
