"""Secrets failured knows: the configuration's ``${NAME}`` values, channel keys and the API token.

Every error text is masked with them before it is stored, so a handler that
prints ``$DINGTALK_SECRET`` or a reporter that pastes a token leaks nothing
into the database, the API, reports or notifications.
"""

from .notify.channels.base import mask


def known_secrets(snapshot, settings):
    """The secret values in force: the snapshot's and the API token."""
    token = getattr(settings, "api_token", None)
    return tuple(snapshot.secrets) + ((token,) if token else ())


def masked(text, secrets):
    """``text`` with every secret as ``***`` (None stays None)."""
    return mask(text, secrets) if text else text
