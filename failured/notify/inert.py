"""Reporter text made harmless in a message: one line, and no markdown of its own.

DingTalk and WeCom robots render a markdown subset: headings, quotes, bold and italics, links, images,
lists, ``<font>`` tags; WeCom also code spans and ``<@userid>`` mentions that ping a member. Neither
documents backslash escapes, and DingTalk lists no code span, so neither escaping nor quoting can be
trusted to hold. What holds on any renderer: a syntax cannot form without the character that starts it.
Each such character in a reporter's text becomes its full-width twin (the form Chinese text writes it in,
so it still reads naturally), and ``://``, ``www.`` and ``mailto:`` become ``：//``, ``www．`` and ``mailto：`` so
that chat clients do not turn an address into a link. failured's own markup is written around the text and keeps working.
"""

import re
import unicodedata

# < > HTML (<font>, <@userid>) and quotes; [ ] links (and, after "!", images); * _ ~ emphasis and
# strikethrough; # headings; ` code. "(" and "!" start nothing without "[", so "(ref 7)" stays as it is.
_SYNTAX_TWINS = {ord(c): chr(ord(c) + 0xFEE0) for c in "<>[]*~#`"}  # U+FF01..FF5E: full-width ASCII
# "_" only where it could open or close emphasis: sync_orders, a task type people type, keeps its own.
_EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
# A list marker where the text starts a line (a digest's "- {task type}: N") would nest a list.
_LEADING_LIST_MARKER = re.compile(r"\A(?:[-+]|\d+[.)])(?=\s|\Z)")
_MARKER_TWINS = {ord(c): chr(ord(c) + 0xFEE0) for c in "-+.)"}
# What clients and GFM link without "://": "www.host" and "mailto:address".
_AUTOLINK = re.compile(r"(?i)\bwww\.|\bmailto:")
_INVISIBLE = ("Cc", "Cf")  # control characters; bidi overrides and zero-width marks that hide or reorder text


def one_line(text):
    """``text`` on one line: every run of whitespace (newlines too) one space, control and invisible
    format characters dropped."""
    text = "".join(c for c in str(text or "") if c.isspace() or unicodedata.category(c) not in _INVISIBLE)
    return " ".join(text.split())


def inert(text, limit=None):
    """Reporter text as plain words in markdown: one line, cut to ``limit`` characters, no character left
    that starts markdown, HTML or a mention. Making inert text inert again changes nothing."""
    text = one_line(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    text = _LEADING_LIST_MARKER.sub(lambda m: m.group().translate(_MARKER_TWINS), text)
    text = text.translate(_SYNTAX_TWINS)
    return _AUTOLINK.sub(_defused, _EDGE_UNDERSCORE.sub("＿", text).replace("://", "：//"))


def _defused(match):
    """``www.`` and ``mailto:`` as chat clients do not link them (their full-width dot and colon)."""
    return match.group().replace(".", "．").replace(":", "：")
