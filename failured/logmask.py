"""Log lines never carry secrets: the formatter masks every secret the config uses.

Masking at the formatter catches everything — our lines, tracebacks, and
third-party debug output such as urllib3 printing a robot URL with its token.
"""

import logging
import sys
import time

from .notify.channels import mask

_secrets = lambda: ()  # noqa: E731 - replaced by the daemon with its snapshot's secrets


def use_secrets(provider):
    """``provider()`` returns the secret strings in force (read on every line: reloads take effect)."""
    global _secrets
    _secrets = provider


class MaskingFormatter(logging.Formatter):
    """Secrets masked; times in UTC, marked so (``2024-03-18T06:02:11.532Z``), as ``show``, the reports and the
    database give them: a log line is compared with them, whatever zone the server is set to."""

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def format(self, record):
        return mask(super().format(record), _secrets())


# peewee's DEBUG lines are every statement with its parameters (about 120 a second from an idle daemon, the
# stored texts among them): FAILURE_LOG_LEVEL=DEBUG leaves it at INFO. (urllib3's request lines stay: they say
# what a webhook was sent, and the formatter masks their secrets.)
QUIET_LIBRARIES = ("peewee",)


def setup(level):
    """Log to stderr (journald under systemd), secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
