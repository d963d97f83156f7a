"""The error inside a program's own words: ``Task sync_orders failed: <error>``, ``同步订单失败：<error>``.

An application that catches an error often reports it after words of its own that name no cause
(``Error syncing leases: …``, ``Handling "App\\Message\\SyncOrder" failed: …``). Those words are the
words of a failure that names no cause, so they pull the model towards ``unknown``. ``classify`` reads
the text after such a prefix only when nothing decided the whole message (see ``Classifier``): a
prefix is the first line up to its first ``: `` or ``：``, and it must speak of a failure. Linear: one
bounded search in the first line.
"""

import re

MAX_PREFIX = 300  # a wrapper's own words fit in a line's first 300 characters
_END = re.compile(r": |：")
_FAILURE_WORD = re.compile(r"fail|error|exception|unable|could not|couldn't|cannot|can't|失败|异常|错误|出错|报错",
                           re.IGNORECASE)


def wrapped_error(text):
    """The text after a wrapper's prefix (the first line's first ``: `` or ``：``, the words before it naming a
    failure), or None where ``text`` has no such prefix or nothing after it."""
    head = text[:MAX_PREFIX]
    line_end = head.find("\n")
    if line_end >= 0:
        head = head[:line_end]
    end = _END.search(head)
    if end is None or not _FAILURE_WORD.search(head, 0, end.start()):
        return None
    inner = text[end.end():].strip()
    return inner or None
