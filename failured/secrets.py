"""Secrets failured knows: the configuration's ``${NAME}`` values, channel keys and the API token.

Every error text is masked with them before it is stored, so a handler that
prints ``$DINGTALK_SECRET`` or a reporter that pastes a token leaks nothing
into the database, the API, reports or notifications.
"""

import functools
import os

from .notify.channels.base import ENV_REF, mask
from .rules import read_config_bytes

MIN_SECRET_CHARS = 4


def known_secrets(snapshot, settings):
    """The secret values in force: the snapshot's and the API token."""
    token = getattr(settings, "api_token", None)
    return tuple(snapshot.secrets) + ((token,) if token else ())


def masked(text, secrets):
    """``text`` with every secret as ``***`` (None stays None)."""
    return mask(text, secrets) if text else text


def referenced_secrets(files, environ=os.environ):
    """Values of the environment variables the files name as ``${NAME}``."""
    values = []
    for path in files:
        try:
            text = read_config_bytes(path).decode("utf-8", "replace")
        except OSError:
            continue
        values += [environ[name] for name in ENV_REF.findall(text)
                   if len(environ.get(name, "")) >= MIN_SECRET_CHARS]
    return values


@functools.lru_cache(maxsize=8)
def reporter_secrets(config_dir):
    """What a reporting process can mask on its own: the ``${NAME}`` values of the config it can read."""
    from .config import config_files  # config pulls in the classifier: only when a reporter needs it

    try:
        return tuple(dict.fromkeys(referenced_secrets(config_files(config_dir))))
    except OSError:
        return ()
