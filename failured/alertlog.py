"""JSON-line files people ``tail -f``: ``admin_alerts.log`` and ``user_notifications.log``.

Each line is opened, appended and closed, so logrotate (move or copytruncate)
needs no signal: the next line goes to the new file.
"""

import json
import threading
from pathlib import Path

from .clock import iso

FILES = {"admin": "admin_alerts.log", "user": "user_notifications.log"}

_lock = threading.Lock()


def append_line(log_dir, audience, record, now):
    """Append one JSON object, with its UTC time, to the audience's log file."""
    path = Path(log_dir) / FILES[audience]
    line = json.dumps({"time": iso(now), **record}, ensure_ascii=False, default=str)
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return path
