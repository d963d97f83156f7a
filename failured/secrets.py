"""Secrets: ``${NAME}`` expansion from the environment, the values failured knows, and masking.

Every error text is masked with the known values before it is stored, so a
handler that prints ``$DINGTALK_SECRET`` or a reporter that pastes a token
leaks nothing into the database, the API, reports or notifications. This
module imports nothing heavy: every reporting process loads it.
"""

import functools
import os
import re
import urllib.parse

from .rules import read_config_bytes

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MIN_SECRET_CHARS = 4  # shorter values ("1", "no") would garble the text if masked
# Query values that look like credentials are masked whatever their value.
_SECRET_PARAM = re.compile(r"(?i)(?<![A-Za-z0-9_])((?:access_token|api_?key|apikey|auth|key|sig|signature|sign|secret|"
                           r"token|password)=)[^&\s'\"<>()]+")
# A URL's password (scheme://user:PASSWORD@host), a bearer or basic credential, and a credential-named key's
# quoted value in JSON or a Python dict: masked whatever the value. Each part is bounded: linear on any text.
_URL_PASSWORD = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,15}://[^\s:/@'\"<>]{0,128}:)[^\s@/'\"<>]{1,256}@")
# After "Authorization:" any credential; after a bare "Bearer"/"Basic" only a token's shape (a digit or one of
# ._~+/=-, or 20 characters): "Basic authentication failed" is an error's words, not a secret.
_BEARER = re.compile(r"(?i)\b(authorization:\s*(?:bearer|basic|token)?\s*)[A-Za-z0-9._~+/=-]{8,}"
                     r"|\b((?:bearer|basic)\s+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-]|[A-Za-z0-9._~+/=-]{20})"
                     r"[A-Za-z0-9._~+/=-]{8,}")
_QUOTED_CREDENTIAL = re.compile(r"(?i)([\"'](?:password|passwd|secret|client_secret|api_?key|access_token|token)[\"']"
                                r"\s{0,8}:\s{0,8}[\"'])[^\"'\n]{1,512}(?=[\"'])")


def expand_env(value: str) -> str:
    """Replace each ``${NAME}`` with ``os.environ[NAME]``; raise KeyError(NAME) if unset."""

    def sub(match):
        return os.environ[match.group(1)]  # KeyError(NAME) when unset

    return ENV_REF.sub(sub, value)


def mask(text, secrets):
    """``text`` with each secret (at least 4 characters) and each credential-looking value (a query's, a URL's
    password, a bearer token, a quoted ``"password"`` key's) as ``***``."""
    if not text:
        return text
    variants = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            variants |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, "***")
    text = _URL_PASSWORD.sub(r"\1***@", _SECRET_PARAM.sub(r"\1***", text))
    return _QUOTED_CREDENTIAL.sub(r"\1***", _BEARER.sub(_masked_credential, text))


def _masked_credential(match):
    return f"{match.group(1) or match.group(2)}***"


def known_secrets(snapshot, settings):
    """The secret values in force: the snapshot's, the API token and the database URL's password."""
    token = getattr(settings, "api_token", None)
    return tuple(snapshot.secrets) + ((token,) if token else ()) + database_passwords(getattr(settings, "db", ""))


def database_passwords(location):
    """The passwords a ``postgresql://`` URL carries (in its user part or as a ``password`` parameter)."""
    location = str(location or "")
    if "://" not in location:
        return ()
    try:
        parts = urllib.parse.urlsplit(location)
        given = [parts.password] + urllib.parse.parse_qs(parts.query).get("password", [])
    except ValueError:  # not a URL failured could open either
        return ()
    return tuple(urllib.parse.unquote(value) for value in given if value)


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
