"""Text both stores can hold, whatever a reporter, a handler or a command line sends."""

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value):
    """Any str/bytes -> valid UTF-8 text both stores hold: bad bytes, lone surrogates and NUL become U+FFFD
    (PostgreSQL's text cannot hold U+0000; SQLite would, and the two must store the same text)."""
    return _valid_utf8(value).replace("\x00", "\ufffd")


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
