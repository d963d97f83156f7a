"""JSON-line files people ``tail -f``: ``admin_alerts.log`` and ``user_notifications.log``.

Each line is opened, appended and closed, so logrotate (move or copytruncate)
needs no signal: the next line goes to the new file. A line is whole or absent:
it is written with one ``write`` on an ``O_APPEND`` descriptor, and a short write
(a full disk) is cut back off, so a reader never meets half a JSON object.
"""

import errno
import json
import os
import threading
from pathlib import Path

from .clock import iso

FILES = {"admin": "admin_alerts.log", "user": "user_notifications.log"}

_lock = threading.Lock()  # one writer at a time within the daemon: a cut-back never cuts a neighbour


def append_line(log_dir, audience, record, now):
    """Append one JSON object, with its UTC time, to the audience's log file; raises OSError if it cannot."""
    path = Path(log_dir) / FILES[audience]
    line = json.dumps({"time": iso(now), **record}, ensure_ascii=False, default=str)
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        append_whole(path, (line + "\n").encode("utf-8"))
    return path


def append_whole(path, data):
    """Append ``data`` (one or more whole lines) in one write, or leave the file as it was and raise OSError."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # an earlier crash left half a line: ours starts on its own line
        written = os.write(fd, data)
        if written < len(data):
            end = os.lseek(fd, 0, os.SEEK_END)
            os.ftruncate(fd, end - written)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: only {written} of {len(data)} bytes "
                                        "fitted; the line was taken back", str(path))
    finally:
        os.close(fd)
