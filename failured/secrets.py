"""Secrets: ``${NAME}`` expansion from the environment, the values failured knows, and masking.

Every error text is masked with the known values before it is stored, so a
handler that prints ``$DINGTALK_SECRET`` or a reporter that pastes a token
leaks nothing into the database, the API, reports or notifications. This
module imports nothing heavy: every reporting process loads it.
"""

import functools
import os
import re
import string
import urllib.parse

from .rules import read_config_bytes

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MIN_SECRET_CHARS = 4  # shorter values ("1", "no") would garble the text if masked
# Credentials a text gives that are also masked wherever else it repeats them: each is a pass over the text,
# so a bounded number keeps a hostile text of thousands of "key=..." linear (each one given is masked anyway).
MAX_SPREAD = 16
# Credential shapes are searched in the text lower-cased (every offset staying the same) by
# patterns that begin with a literal: Python's engine then skips in C to the next place one could start, where
# a case-blind pattern is tried at every position (a long traceback's mask cost seven times as much).
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _on_its_own(word):
    """``word`` where no letter, digit or _ comes before it (key, not monkey), still beginning with a literal."""
    return f"{word[0]}(?<![a-z0-9_]{word[0]}){word[1:]}"


# How a credential's name ends: a credential word after any prefix (client_secret, aws_secret_access_key,
# PGPASSWORD, X-Api-Key, refresh_token; not max_tokens), a "pass" after a word's end (DB_PASS, not bypass), or one
# of the short names on its own (not monkey). The short names (a Go validator's "Key: 'User.Name'", a Kafka
# record's "key: '1'") name a credential only in the plainest forms.
_LONG_NAME_END = ("(?:secret[_-]?key|secret|password|passwd|pwd|token|api[_-]?key|access[_-]?key|private[_-]?key|"
                  "app[_-]?key|credentials?|p(?<![a-z0-9]p)ass)")
_SHORT_NAME = "(?:" + "|".join(map(_on_its_own, ("key", "signature", "sign", "sig", "auth"))) + ")"
_NAME_END = f"(?:{_LONG_NAME_END}|{_SHORT_NAME})"
# A token's shape: a digit or one of ._~+/=-, or 20 characters ("password: yes" and "token: expired" are words).
_TOKEN_SHAPE = r"(?=[a-z0-9._~+/=-]*[0-9._~+/=-]|[a-z0-9._~+/=-]{20})"
_TOKEN = _TOKEN_SHAPE + r"[a-z0-9._~+/=-]{6,}"
_WHOLE_TOKEN = re.compile(rf"{_TOKEN}\Z")
# In a spaced assignment a value needs a digit: a source line's "api_key = os.environ['API_KEY']" names no secret.
_SECRET_WITH_A_DIGIT = r"(?=[a-z0-9._~+/=-]*[0-9])[a-z0-9._~+/=-]{6,}(?![\[(])"


def _quoted(group):
    """A value between two of the same quote (left in place), as group ``group``: "can't grant" is no value."""
    return rf"(?P<{group}_quote>[\"'])(?P<{group}>[^\"'\n]{{1,512}})(?P={group}_quote)"


# The schemes whose credential after "Authorization:" is one word (the scheme itself is shown), and those whose
# credential is a list of parameters (the rest of the line is masked).
_ONE_WORD_SCHEMES = ("bearer|basic|token|negotiate|ntlm|apikey|api-key|api_key|sharedkey|sharedkeylite|ssws|key|"
                     "sso-key|jwt|splunk|geniekey|mac|hoba|mutual|scram-sha-1|scram-sha-256|vapid|dsn")
_PARAMETER_SCHEMES = "digest|oauth|aws4-hmac-sha256|hmac-sha256|hmac|signature"
# A credential's shape after a scheme: a digit or a symbol ("token does not have access" is words).
_CREDENTIAL_SHAPE = r"(?=[^\s\"',;]*[0-9._~+/=:-])"
# Each shape's named group that matched is the value masked. Every part is bounded: linear on any text.
_CREDENTIAL_SHAPES = tuple(map(re.compile, (
    # After a credential's name (one pattern: each more costs a pass over the text): whatever the value in
    # ``name=value`` (a query, a command line, an environment), a JSON or Python dict's quoted key's value, and a
    # token's shape in ``Name: value`` (a header, a YAML or log field); after a long name also a quoted value in
    # ``name="value"``, ``name = 'value'`` and ``Name: "value"``, and one with a digit in ``name = value`` (a
    # source line a traceback quotes).
    (rf"(?:(?P<long_name>{_LONG_NAME_END})|{_SHORT_NAME})"
     rf"(?:=(?P<given>[^&\s'\"<>(),;]+)|[\"']\s{{0,8}}:\s{{0,8}}[\"'](?P<quoted>[^\"'\n]{{1,512}})(?=[\"'])"
     rf"|:[ \t]{{0,8}}(?P<field>{_TOKEN})"
     rf"|(?(long_name)(?:[ \t]{{0,8}}=[ \t]{{0,8}}{_quoted('assigned')}|(?:[ \t]{{1,8}}=[ \t]{{0,8}}|=[ \t]{{1,8}})"
     rf"(?P<spaced>{_SECRET_WITH_A_DIGIT})|:[ \t]{{0,8}}{_quoted('quotedfield')})|(?!)))"),
    # ``--name value``: a quoted value or a token's shape. The name starts with a letter or digit, and a run of
    # dashes is tried once: a megabyte of "--" cost a second here (forty tries at every dash).
    (rf"--(?<!---)(?=[a-z0-9])[a-z0-9-]{{0,40}}?{_NAME_END}[ \t]{{1,8}}(?:{_quoted('quotedvalue')}"
     rf"|(?P<value>{_TOKEN}))"),
    # A URL's password (scheme://user:PASSWORD@host): whatever the value.
    r"://[^\s:/@'\"<>]{0,128}:(?P<value>[^\s@/'\"<>]{1,256})@",
    # After "Authorization:" (a header; a JSON or dict key) a credential, its scheme shown; after a bare
    # "Bearer"/"Basic" a token's shape only ("Basic authentication failed" is an error's words, not a secret).
    (rf"(?:authorization[\"']?[ \t]{{0,8}}[:=][ \t]{{0,8}}[\"']?(?:(?:{_PARAMETER_SCHEMES})[ \t]+"
     rf"(?P<parameters>[^\r\n]{{1,1024}})|(?:{_ONE_WORD_SCHEMES})[ \t]+{_CREDENTIAL_SHAPE}"
     rf"(?P<credential>[^\s\"',;]{{4,2048}})|{_TOKEN_SHAPE}(?P<bare>[a-z0-9._~+/=-]{{8,2048}}))"
     rf"|{_on_its_own('bearer')}\s+{_TOKEN_SHAPE}(?P<bearer>[a-z0-9._~+/=-]{{8,}})"
     rf"|{_on_its_own('basic')}\s+{_TOKEN_SHAPE}(?P<basic>[a-z0-9._~+/=-]{{8,}}))"),
    # A command line's password: curl's "-u user:password" (or --user), and mysql's "-pPASSWORD" (attached, quoted
    # or not; all digits is "-P3306", a port, as the text is searched lower-cased).
    r"-(?<![^\s]-)(?:u|-user)[ \t=]{0,8}['\"]?[^\s:'\"]{1,128}:(?P<value>[^\s'\"]{1,256})",
    (r"(?:mysql|mariadb)[a-z-]{0,12}[ \t][^\n]{0,200}?(?<=[ \t])-p"
     r"(?:'(?P<single>[^'\n]{1,256})(?=')|\"(?P<double>[^\"\n]{1,256})(?=\")|(?![0-9]+\b)(?P<value>[^\s'\"]{1,256}))"),
    # A cookie header's value (name=value pairs; Set-Cookie's too): a session is a credential. "cookie: invalid
    # format" stays.
    r"cookie[\"']?[ \t]{0,8}:[ \t]{0,8}[\"']?(?P<value>[^\s=;\"']{1,256}=[^\r\n\"']{0,4096})",
)))


# A key by its vendor's published prefix, wherever it stands (an SDK quotes it back: "Invalid API Key provided:
# sk_live_..."): Stripe's secret, restricted and webhook keys, OpenAI-style "sk-", GitHub, GitLab, Slack, Google
# API keys, AWS access key ids and JSON web tokens; and a Slack webhook's path. Each is searched only in a text
# that holds one of its prefixes: most hold none, and these patterns alone tripled the cost of masking a typical
# error.
_GATED_SHAPES = (
    (("k_live_", "k_test_", "whsec_", "sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox",
      "akia", "asia", "aiza", "eyj"), re.compile(
        r"(?<![a-z0-9_-])(?P<value>[sr]k_(?:live|test)_[a-z0-9]{6,}|whsec_[a-z0-9]{16,}|sk-[a-z0-9_-]{20,}|"
        r"gh[pousr]_[a-z0-9]{30,}|github_pat_[a-z0-9_]{30,}|glpat-[a-z0-9_-]{20,}|xox[abprs]-[a-z0-9-]{10,}|"
        r"a[ks]ia[0-9a-z]{16}(?![0-9a-z])|aiza[0-9a-z_-]{35}|eyj[a-z0-9_-]{8,}\.eyj[a-z0-9_-]{8,}\.[a-z0-9_-]{0,2048})")),
    (("hooks.slack.com/",), re.compile(r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<value>[a-z0-9/]{8,})")),
    (("sshpass",), re.compile(r"sshpass[ \t]{1,8}-p[ \t]{0,8}(?P<value>[^\s'\"]{1,256})")),
    # SQL's "CREATE USER app IDENTIFIED BY 'password'" (not alembic's "revision identified by 'ae1027a6acf'").
    (("identified",), re.compile(r"(?:user|role|login)[ \t][^\n;]{0,160}?identified[ \t]{1,8}by[ \t]{1,8}"
                                 r"'(?P<value>[^'\n]{1,256})(?=')")),
)
_PEM_KEY_OPENS = "private key-----"  # -----BEGIN [RSA |EC |OPENSSH |ENCRYPTED ]PRIVATE KEY-----
_PEM_KEY_CLOSES = "-----end"


def _private_key_spans(lowered):
    """The body of each PEM private key block (to its END line, or the text's end when cut): one pass of
    str.find, however many blocks a hostile text opens."""
    at = lowered.find(_PEM_KEY_OPENS)
    while at >= 0:
        start = at + len(_PEM_KEY_OPENS)
        end = lowered.find(_PEM_KEY_CLOSES, start)
        end = len(lowered) if end < 0 else end
        if end > start:
            yield start, end
        at = lowered.find(_PEM_KEY_OPENS, end)


def expand_env(value: str) -> str:
    """Replace each ``${NAME}`` with ``os.environ[NAME]``; raise KeyError(NAME) if unset."""

    def sub(match):
        return os.environ[match.group(1)]  # KeyError(NAME) when unset

    return ENV_REF.sub(sub, value)


MASK = "***"


def mask(text, secrets, fill=MASK):
    """``text`` with each secret (at least 4 characters) and each credential-looking value (a query's or a
    command line's ``password=``, a header's ``X-Api-Key:``, a URL's password, a bearer token, a quoted
    ``"password"`` key's) as ``***``; a token-shaped one wherever else in the text it appears too (an API key
    given as ``api_key=`` and quoted again in "invalid api key ..."; ``auth=none`` leaves other "none"s be)."""
    if not text:
        return text
    text = _replaced_everywhere(text, secrets, fill)
    spans = sorted(_credential_spans(text))
    if not spans:
        return text
    shown = [text[start:end] for start, end in spans]
    return _replaced_everywhere(_spans_replaced(text, spans, lambda length: fill), _spreading(shown), fill)


def _spans_replaced(text, spans, fill):
    """``text`` with each of the sorted ``spans`` (overlapping ones merged) as ``fill(its length)``."""
    parts, done = [], 0
    for start, end in spans:
        if end > done:
            parts += [text[done:max(start, done)], fill(end - max(start, done))]
            done = end
    return "".join(parts) + text[done:]


def _spreading(shown):
    """The credentials shown that are masked wherever else they appear: token-shaped ones, the first
    MAX_SPREAD."""
    tokens = dict.fromkeys(value for value in shown if _WHOLE_TOKEN.match(value.translate(_ASCII_LOWER)))
    return list(tokens)[:MAX_SPREAD]


def _credential_spans(text):
    lowered = text.lower()
    if len(lowered) != len(text):  # a letter that lowers to two (İ): offsets would shift; translate is 20x slower
        lowered = text.translate(_ASCII_LOWER)
    shapes = _CREDENTIAL_SHAPES + tuple(shape for prefixes, shape in _GATED_SHAPES
                                        if any(prefix in lowered for prefix in prefixes))
    yield from (match.span(match.lastgroup) for shape in shapes for match in shape.finditer(lowered))
    yield from _private_key_spans(lowered)


# What requests leaves unquoted when it re-quotes a URL (requests.utils.requote_uri): a secret put into a URL
# comes back in its errors quoted this way ("a b%2F" as "a%20b%2F").
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def _variants(secret):
    """How a secret may come back: as given, percent-quoted three ways, and each lower-cased (a host name is) and
    upper-cased (an error that shouts)."""
    quoted = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
              urllib.parse.quote(secret, safe=_URL_SAFE)}
    return quoted | {variant.lower() for variant in quoted} | {variant.upper() for variant in quoted}


def _replaced_everywhere(text, secrets, fill=MASK):
    variants = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            variants |= _variants(secret)
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, fill)
    return text


_BLANKED = re.compile("\0+")  # an argument's masked characters, blanked to keep every offset


def masked_argv(argv):
    """A command's arguments as shown (they stay stored as given: a retry runs them): each masked, and a value
    one argument names a credential for (``--password hunter22``, ``PGPASSWORD=x``) masked where it stands
    and, token-shaped, in every other argument. Linear in the arguments' length."""
    joined = " ".join(argv)  # as a shell would show them: "--password" and its value side by side
    spans = sorted(_credential_spans(joined))
    tokens = _spreading([joined[start:end] for start, end in spans])
    blanked = _spans_replaced(joined, spans, lambda length: "\0" * length)  # no argument holds a NUL: offsets stay
    shown, at = [], 0
    for arg in argv:
        piece = _BLANKED.sub("***", blanked[at:at + len(arg)])
        at += len(arg) + 1
        shown.append(_replaced_everywhere(mask(piece, ()), tokens))
    return shown


def known_secrets(snapshot, settings):
    """The secret values in force: the snapshot's, the API token and the database's passwords."""
    token = getattr(settings, "api_token", None)
    return tuple(snapshot.secrets) + ((token,) if token else ()) + database_secrets(getattr(settings, "db", ""))


def database_secrets(location, environ=os.environ):
    """The passwords a process connects to ``location`` with: the URL's, and for PostgreSQL libpq's PGPASSWORD."""
    found = database_passwords(location)
    password = environ.get("PGPASSWORD", "")
    if "://" in str(location or "") and len(password) >= MIN_SECRET_CHARS:
        found += (password,)
    return found


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
