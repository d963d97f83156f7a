"""Code tables (``config/codes/*.toml``): the codes an error carries, mapped to categories.

Most real errors carry a code from a finite, documented table: an HTTP status,
an SMTP reply, an errno, a SQLSTATE, a gRPC status, a vendor's errcode. Each
table file names the *kind* of code it holds (which fixed extractor finds
candidates in a message), a ``priority`` (the lowest-numbered table that
recognises a code wins), ``codes`` (code -> category), optionally ``aliases``
(another spelling the extractor finds -> one of its codes: errno numbers for
names) and ``texts`` (a literal phrase searched in the message -> one of its
codes: reason phrases, strerror texts and their translations). Files merge
by table name in file-name order, so an operator's
``config/codes/50-local.toml`` extends or overrides a shipped table. A table
marked ``early`` (a vendor's exact codes, decisive phrases) is looked up before
the exception type and the patterns; the others after the patterns.

Every extractor is a fixed regular expression without nested repetition (the
hottest also written out as one scan in failured/_speedups.c, where it is built),
and the operator-written parts (``texts``, ``when``) run on RE2, after one
Hyperscan scan of them all has named the candidates (failured/matcher.py): a
code lookup is linear in the message length.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import re2
from re2 import _re2

# the compiled finders; without them (no compiler at install, or a stale build) these expressions give the same values
from .speedups import speedups as _speedups

from .errors import ConfigError, ConfigErrors
from .matcher import PatternSet, PatternTooLarge, encode
from .rules import check_type, pattern_problem, re2_options, read_toml, toml_files
from .text import quoted

TABLE_KEYS = {"name", "kind", "priority", "keys", "when", "codes", "aliases", "texts", "replace", "early"}
MAX_SCAN_CHARS = 4000  # codes sit near the start of a message or its last lines
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_VERBATIM = {"token", "keyed", "http", "smtp"}  # extractors whose values are substrings of the text
MAX_NEEDLES = 16  # up to this many codes, a table first checks that one occurs in the text
# Up to this many known values, an extractor whose values are pieces of the text (not
# "token": hundreds of names) first checks that one of them occurs at all: one scan for a
# literal alternation costs a few µs where the extractor's own expression costs tens.
MAX_GATE_VALUES = 200
MAX_LIVE_PLANS = 256  # plans kept per set of gate hits (each a tuple of at most every table)


def _camel_to_upper_snake(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


_HTTP = re.compile(
    r"HTTP/\d(?:\.\d)?\s+(\d{3})\b"
    r"|\b(?:status(?:[ _-]?code)?|statuscode|http(?:[ _-]?(?:status|error|code))?|response[ _-]?code"
    r"|error[ _-]?code|error|code)[\"']?\s*[:=]?\s*[\"'(\[]?\s*(\d{3})(?![\d.])"
    r"|\b(?:returned|received|got|with|resulted in)\s+(?:an?\s+)?[`'\"]?(?:http\s+)?(?:status\s+)?(?:code\s+)?(\d{3})(?![\d.])"
    r"|\b(\d{3})\s+(?:Client|Server)\s+Error\b"
    r"|^\s*\[?(\d{3})\]?[\s:]",
    re.IGNORECASE | re.MULTILINE,
)
_SMTP_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![.\d])")
_SMTP_REPLY = re.compile(r"(?:^|[\s(\[:;,'\"])([245]\d\d)(?=[ -,]|$)", re.MULTILINE)
_ERRNO = re.compile(
    r"\[Errno\s+(-?\d+)\]|\berrno\s*[=:]?\s*(-?\d+)|\bos error (\d+)|\b[A-Z]\w*Error\((-?\d+),"
    r"|\[(WinError\s+\d+)\]|\b(E[A-Z][A-Z0-9_]{1,18}|WSAE[A-Z]{2,18})\b"
)
_SQLSTATE = re.compile(
    r"\bSQL\s?STATE\s*[\[:=]?\s*\[?\s*([0-9A-Z]{5})\b|\bSQL state\s*[:=]?\s*\[?([0-9A-Z]{5})\b"
    r"|\b[0-9]{4,5} \(((?=[A-Z]{0,4}[0-9])[0-9A-Z]{5})\)"  # MySQL: "ERROR 1062 (23000): Duplicate entry"
    r"|\bPostgresException(?: \(0x[0-9A-F]{8}\))?: ((?=[A-Z]{0,4}[0-9])[0-9A-Z]{5}):",  # Npgsql: "...: 23505: ..."
    re.IGNORECASE,
)
_GRPC = re.compile(
    r"\bcode\s*=\s*([A-Z][A-Za-z]{3,})\b|StatusCode\.([A-Z_]{5,})\b|StatusCode=\"([A-Za-z]{5,})\""
    r"|\b\d{1,2} ([A-Z][A-Z_]{4,})\b|(?:StatusRuntimeException|StatusException|RpcException|RpcError)\W{1,3}([A-Z][A-Z_]{4,})\b"
    r"|\"status\"\s*:\s*\"([A-Z][A-Z_]{4,})\"|^([A-Z][A-Z_]{4,}):",
    re.MULTILINE,
)
_TOKEN = re.compile(r"[A-Za-z][\w.\-]*\w")


def _groups(pattern, text):
    for match in pattern.finditer(text):
        value = next((g for g in match.groups() if g), None)
        if value:
            yield value


# A JSON ``"code": 502`` is a vendor's own code as often as an HTTP status
# ({"code":502,"msg":"Merchant disabled"}): it counts as a status only inside an
# ``"error": {...}`` or ``"meta": {...}`` envelope (Google APIs, AfterShip), where
# the field carries the HTTP status by definition; elsewhere only keys spelled as
# a status (status, status_code, http_code, ...) or the reason phrase do.
_JSON_CODE_KEY = re.compile(r"[\"']code[\"']\s*:", re.IGNORECASE)
_STATUS_ENVELOPE = re.compile(r"[\"'](?:error|meta)[\"']\s*:\s*\{[^{}]{0,200}$", re.IGNORECASE)


def _starts_and_groups(pattern, text):
    for match in pattern.finditer(text):
        value = next((g for g in match.groups() if g), None)
        if value:
            yield match.start(), value


def extract_http(text):
    for start, value in _FINDERS["http"](text):
        if start > 0 and _JSON_CODE_KEY.match(text, start - 1) and not _STATUS_ENVELOPE.search(text, 0, start - 1):
            continue
        yield value


def extract_smtp(text):
    yield from _groups(_SMTP_ENHANCED, text)  # an enhanced code says more than its reply code
    yield from _groups(_SMTP_REPLY, text)


_SPACES = re.compile(r"\s+")


def extract_errno(text):
    for value in _FINDERS["errno"](text):
        yield _SPACES.sub(" ", value) if value.startswith("WinError") else value  # the only one with a space


def extract_sqlstate(text):
    for value in _FINDERS["sqlstate"](text):
        value = value.upper()
        yield value
        yield value[:2]  # the class: "08" connection exception, "23" integrity...


def extract_grpc(text):
    for value in _FINDERS["grpc"](text):
        yield value if value.isupper() else _camel_to_upper_snake(value)


def extract_tokens(text):
    tokens = _FINDERS["token"](text)
    if "." not in text:
        return tokens
    # "Throttling.User" is also a "Throttling"
    return [value for token in tokens for value in ((token, token.split(".", 1)[0]) if "." in token else (token,))]


# What the extractors' expressions find, in order: each match's first non-empty group (for
# HTTP with where the match starts), every token. failured/_speedups.c finds the same in one
# scan each where it is built (tests/test_codes_native.py compares the two).
PYTHON_FINDERS = {"http": lambda text: _starts_and_groups(_HTTP, text), "errno": lambda text: _groups(_ERRNO, text),
                  "sqlstate": lambda text: _groups(_SQLSTATE, text), "grpc": lambda text: _groups(_GRPC, text),
                  "token": _TOKEN.findall}
NATIVE_FINDERS = None if _speedups is None else {
    "http": _speedups.http_statuses, "errno": _speedups.errno_values, "sqlstate": _speedups.sqlstate_values,
    "grpc": _speedups.grpc_values, "token": _speedups.tokens}
_FINDERS = NATIVE_FINDERS or PYTHON_FINDERS

EXTRACTORS = {
    "http": extract_http,
    "smtp": extract_smtp,
    "errno": extract_errno,
    "sqlstate": extract_sqlstate,
    "grpc": extract_grpc,
    "token": extract_tokens,
    "keyed": None,  # built per table from its ``keys``
}


def keyed_extractor(keys):
    """Values written after one of ``keys``: JSON, key=value, key: value, and XML (CDATA too)."""
    names = "|".join(re.escape(k) for k in keys)
    pattern = re.compile(rf"(?<![\w.])[\"']?(?:{names})[\"']?\s*[:=]\s*[\"']?(-?[\w.\-]+)"
                         rf"|<(?:{names})>(?:<!\[CDATA\[)?\s*(-?[\w.\-]+)")
    return lambda text: _groups(pattern, text)


@dataclass(frozen=True)
class CodeTable:
    """One merged table: where its codes are found and what each means."""

    name: str
    kind: str
    priority: int
    codes: dict  # code -> category name
    aliases: dict = field(default_factory=dict)  # other spelling -> code
    texts: dict = field(default_factory=dict)  # literal phrase -> code
    keys: tuple = ()
    when: str | None = None
    files: tuple = ()
    early: bool = False  # looked up before the patterns: a vendor's exact code beats generic wording


def _parse_table(document, path, errors):
    """One file's settings, validated; None when unusable."""
    for name in sorted(set(document) - TABLE_KEYS):
        errors.append(ConfigError(path, name, f"unknown key: use one of {', '.join(sorted(TABLE_KEYS))}"))
    out = {"file": str(path), "name": document.get("name", Path(path).stem.split("-", 1)[-1])}
    if not check_type(out["name"], str, path, "name", errors, "a string"):
        return None
    if "kind" in document and check_type(document["kind"], str, path, "kind", errors, "a string"):
        if document["kind"] not in EXTRACTORS:
            errors.append(ConfigError(path, "kind", f"unknown kind {document['kind']!r}: use one of "
                                                    f"{', '.join(EXTRACTORS)}"))
        out["kind"] = document["kind"]
    if "priority" in document and check_type(document["priority"], int, path, "priority", errors, "a whole number"):
        out["priority"] = document["priority"]
    if "replace" in document and check_type(document["replace"], bool, path, "replace", errors, "true or false"):
        out["replace"] = document["replace"]
    if "early" in document and check_type(document["early"], bool, path, "early", errors, "true or false"):
        out["early"] = document["early"]
    if "keys" in document and check_type(document["keys"], list, path, "keys", errors, "a list of strings"):
        keys = [k for i, k in enumerate(document["keys"])
                if check_type(k, str, path, f"keys[{i}]", errors, "a string") and k.strip()]
        if not keys:
            errors.append(ConfigError(path, "keys", "is empty: name the keys the codes follow, e.g. [\"errcode\"]"))
        out["keys"] = keys
    if "when" in document and check_type(document["when"], str, path, "when", errors, "an RE2 pattern"):
        problem = pattern_problem(document["when"])
        if problem:
            errors.append(ConfigError(path, "when", f"pattern {quoted(document['when'])} {problem}"))
        out["when"] = document["when"]
    for section in ("codes", "aliases", "texts"):
        table = document.get(section, {})
        if not check_type(table, dict, path, section, errors, "a table of \"code\" = \"...\""):
            continue
        values = {}
        for key, value in table.items():
            if not check_type(value, str, path, f"{section}.{key}", errors, "a string"):
                continue
            if not key.strip():
                errors.append(ConfigError(path, f"{section}.{key!r}", "is empty: it would match everything"))
                continue
            values[str(key)] = value
        out[section] = values
    return out


def _merge(base, update):
    merged = dict(base)
    for name, value in update.items():
        if name in ("codes", "aliases", "texts"):
            merged[name] = dict(value) if update.get("replace") else {**base.get(name, {}), **value}
        elif name not in ("file", "replace"):
            merged[name] = value
    merged["files"] = base.get("files", []) + [update["file"]]
    return merged


def _build_table(settings, category_names, errors):
    path = settings["files"][-1]
    where = f'table "{settings["name"]}"'
    for required in ("kind", "priority"):
        if required not in settings:
            errors.append(ConfigError(path, f"{where}.{required}", f"missing: a code table needs {required}"))
    if settings.get("kind") == "keyed" and not settings.get("keys"):
        errors.append(ConfigError(path, f"{where}.keys", 'missing: kind "keyed" needs keys = ["errcode", ...]'))
    codes = settings.get("codes", {})
    for code, category in codes.items():
        if category_names is not None and category not in category_names:
            errors.append(ConfigError(path, f"{where}.codes.{code}", f"no category named {category!r}: use one of "
                                                                     f"{', '.join(sorted(category_names))}"))
    for section in ("aliases", "texts"):
        for text, code in settings.get(section, {}).items():
            if code not in codes:
                errors.append(ConfigError(path, f"{where}.{section}.{text}", f"code {code!r} is not in the table's codes"))
    return CodeTable(name=settings["name"], kind=settings.get("kind", "token"), priority=settings.get("priority", 0),
                     codes=codes, aliases=settings.get("aliases", {}), texts=settings.get("texts", {}),
                     keys=tuple(settings.get("keys", ())),
                     when=settings.get("when"), files=tuple(dict.fromkeys(settings["files"])),
                     early=settings.get("early", False))


def code_files(config_dir):
    """The code table files of a config directory, in the order they merge."""
    return toml_files(Path(config_dir, "codes"))


def load_code_tables(config_dir, category_names=None):
    """Read and validate ``config_dir/codes/*.toml`` (none is fine); raise ConfigErrors listing every problem."""
    errors, merged = [], {}
    for path in code_files(config_dir):
        document = read_toml(path, errors)
        if document is None:
            continue
        settings = _parse_table(document, path, errors)
        if settings is not None:
            merged[settings["name"]] = _merge(merged.get(settings["name"], {"files": []}), settings)
    tables = [_build_table(settings, category_names, errors) for settings in merged.values()]
    if errors:
        raise ConfigErrors(errors)
    return tuple(sorted(tables, key=lambda t: (t.priority, t.name)))


def _raw_re2(pattern, table, key):
    """``pattern`` compiled below the re2 module's wrapper, whose pure-Python search costs ~15 µs a call.

    The code stage runs a dozen of these per message on the bytes of the text,
    encoded once; ``_first_span`` gives the byte span of the first match.
    """
    compiled = _re2.RE2(pattern.encode(), re2_options())
    if not compiled.ok():
        raise ConfigErrors([ConfigError(table.files[-1], key, f"RE2 cannot compile it ({compiled.error().decode(errors='replace')}): "
                                                              "split the table or simplify the pattern")])
    return compiled


def _texts_pattern(table):
    """One alternation of a table's phrases, the longest first, each a whole word at its word ends."""
    parts = []
    for text in sorted(table.texts, key=len, reverse=True):
        literal = re2.escape(text)
        if re.match(r"\w", text, re.ASCII):
            literal = r"\b" + literal
        if re.search(r"\w$", text, re.ASCII):
            literal += r"\b"
        parts.append(literal)
    return "|".join(parts)


def _first_span(compiled, data):
    start, end = compiled.Match(_UNANCHORED, data, 0, len(data))[0]
    return None if start < 0 else (start, end)


class CodeMatcher:
    """The compiled code stage of a snapshot: which table recognises a code in a message, first."""

    def __init__(self, tables, gate=True, engine=None):
        """``gate=False`` searches every ``when`` and ``texts`` on its own (same answers; tests compare the two).
        ``engine``: the gate's, as for the patterns (None: Hyperscan where installed, "re2")."""
        self.tables = tables
        self._when = [_raw_re2(t.when, t, "when") if t.when else None for t in tables]
        self._texts = [self._compile_texts(t) for t in tables]
        self._gate = self._compile_gate(tables, engine) if gate else None
        # Tables of the same kind (and keys) share one extraction per message; each table
        # answers through ``found``: every spelling its extractor may yield whose alias
        # target (or itself) is one of its codes -> that code.
        extractors, plan = {}, []
        for i, table in enumerate(tables):
            source = ("keyed", table.keys) if table.kind == "keyed" else table.kind
            if source not in extractors:
                extractors[source] = (len(extractors),
                                      keyed_extractor(table.keys) if table.kind == "keyed" else EXTRACTORS[table.kind])
            found = {code: code for code in table.codes if code not in table.aliases}
            found.update((alias, code) for alias, code in table.aliases.items() if code in table.codes)
            # These extractors yield pieces of the text as they are: a table with a few
            # codes cannot answer unless one of them occurs in the text.
            needles = tuple(found) if table.kind in _VERBATIM and len(found) <= MAX_NEEDLES else None
            plan.append((table, extractors[source][0], found, needles, self._when[i],
                         self._gate[1][i] if self._gate is not None else -1, self._texts[i],
                         self._gate[2][i] if self._gate is not None else -1))
        self._extractors = [extract for _, extract in extractors.values()]
        # A keyed extractor finds nothing unless one of its keys occurs in the text.
        self._keys = [source[1] if isinstance(source, tuple) else None for source in extractors]
        # Per extractor, every value some table of it knows: a message's values are
        # filtered through it once (in order), and each table then looks through the few left.
        self._known = [set() for _ in self._extractors]
        for _, source, found, *_ in plan:
            self._known[source].update(found)
        kinds = [source[0] if isinstance(source, tuple) else source for source in extractors]
        self._value_gates = [
            re.compile("|".join(map(re.escape, sorted(known, key=len, reverse=True))))
            if kind in _VERBATIM and kind != "token" and 0 < len(known) <= MAX_GATE_VALUES else None
            for kind, known in zip(kinds, self._known)]
        # The known values of each extractor's finds, in order: tokens filtered in one compiled scan.
        self._known_values = [self._known_values_of(kind, extract, known)
                              for kind, extract, known in zip(kinds, self._extractors, self._known)]
        if NATIVE_FINDERS is not None and _FINDERS is NATIVE_FINDERS:  # a compiled finder costs less than its gate
            self._value_gates = [None if kind in NATIVE_FINDERS else gate for kind, gate in zip(kinds, self._value_gates)]
        self._plans = {early: tuple(entry for entry in plan if early is None or entry[0].early == early)
                       for early in (None, True, False)}
        self._live_plans = {}  # (early, gate hits) -> the plan without the tables whose ``when`` the gate ruled out
        self._last = None  # (text, data, gate hits, values) of the last message: its early and late lookups share them

    def _values(self, source, text):
        """The values extractor ``source`` finds in ``text`` that some table knows, in order."""
        keys = self._keys[source]
        if keys is not None and not any(map(text.__contains__, keys)):
            return []
        gate = self._value_gates[source]
        if gate is not None and gate.search(text) is None:
            return []  # none of the values it knows occurs: nothing it finds can be known
        return self._known_values[source](text)

    @staticmethod
    def _known_values_of(kind, extract, known):
        """``text`` -> ``[value for value in extract(text) if value in known]``: with the compiled finders, the
        tokens in one scan, and an extractor whose finder finds nothing (most messages) answered without its
        Python wrapper."""
        if NATIVE_FINDERS is None or _FINDERS is not NATIVE_FINDERS:
            return lambda text: list(filter(known.__contains__, extract(text)))
        if kind == "token" and hasattr(_speedups, "known_tokens"):
            return lambda text: _speedups.known_tokens(text, known)
        find = NATIVE_FINDERS.get(kind)
        if find is None:
            return lambda text: list(filter(known.__contains__, extract(text)))
        return lambda text: list(filter(known.__contains__, extract(text))) if find(text) else []

    def _live_plan(self, early, hits):
        """The plan of ``early`` less the tables with a ``when`` that is not among the gate's ``hits``.

        Most messages wake no ``when``: their lookups skip those tables without looking at each.
        The plans are kept per set of hits (a few dozen sets in practice; started again past
        MAX_LIVE_PLANS).
        """
        key = (early, hits)
        live = self._live_plans.get(key)
        if live is None:
            live = tuple(entry for entry in self._plans[early] if entry[4] is None or entry[5] < 0 or entry[5] in hits)
            if len(self._live_plans) >= MAX_LIVE_PLANS:
                self._live_plans = {}
            self._live_plans[key] = live
        return live

    @staticmethod
    def _compile_gate(tables, engine=None):
        """Every table's ``when`` and ``texts`` in one pattern set: one scan says which of them may match.

        Returns ``(set, when_ids, text_ids)`` with -1 for a part a table does not have, or None
        if the set cannot be built (each part is then searched on its own). The set names
        candidates (Hyperscan, with RE2 serving until it is compiled, as for the patterns): a
        candidate ``when`` is then searched on its own, as a candidate ``texts`` always is.
        """
        patterns, owners, when_ids, text_ids = [], [], [], []
        for table in tables:
            for part, pattern, ids in (("when", table.when, when_ids),
                                       ("texts", _texts_pattern(table) if table.texts else None, text_ids)):
                ids.append(len(patterns) if pattern else -1)
                if pattern:
                    patterns.append(pattern)
                    owners.append(f'{table.files[-1]}, table "{table.name}" {part}')
        try:
            gate = PatternSet(patterns, range(len(patterns)), describe=owners.__getitem__, engine=engine)
        except PatternTooLarge:
            return None
        return gate, when_ids, text_ids

    def wait_ready(self, timeout=None):
        """Block until the gate's fast engine serves (or RE2 alone will); True when so."""
        return self._gate is None or self._gate[0].wait_ready(timeout)

    @staticmethod
    def _compile_texts(table):
        if not table.texts:
            return None
        lowered = {text.lower(): code for text, code in table.texts.items()}
        return _raw_re2(_texts_pattern(table), table, "texts"), lowered

    def match(self, text, early=None):
        """``(table, code, category)`` of the first table that knows a code in ``text``, or None.

        ``early``: True looks only in the tables marked ``early``, False only in
        the others, None in all.
        """
        text = text[:MAX_SCAN_CHARS] if len(text) <= 2 * MAX_SCAN_CHARS else text[:MAX_SCAN_CHARS] + text[-MAX_SCAN_CHARS:]
        last = self._last
        if last is not None and last[0] == text:
            _, data, hits, extracted = last
        else:
            data = encode(text)[0]  # what RE2 reads (a lone surrogate as "?", never an exception)
            hits = None
            if self._gate is not None:
                hits = frozenset(self._gate[0].candidates(text, data))
            extracted = [None] * len(self._extractors)  # filled as tables need them (same values whoever fills)
            self._last = (text, data, hits, extracted)  # one reference swap: safe between threads
        # when_id / text_id: the table's entries in the gate set, -1 where it has none (or no gate was built);
        # the gate names candidates: a candidate "when" is searched as a "when" outside it is
        plan = self._plans[early] if hits is None else self._live_plan(early, hits)
        for table, source, found, needles, when, when_id, texts, text_id in plan:
            if when is not None and _first_span(when, data) is None:
                continue  # a "when" not among the gate's hits is not in ``plan``
            if found and (needles is None or any(map(text.__contains__, needles))):
                values = extracted[source]
                if values is None:
                    values = extracted[source] = self._values(source, text)
                value = next(filter(found.__contains__, values), None) if values else None
                if value is not None:
                    code = found[value]
                    return table, code, table.codes[code]
            if texts is not None and (text_id < 0 or text_id in hits):
                span = _first_span(texts[0], data)
                if span is not None:
                    code = texts[1].get(data[span[0]:span[1]].decode(errors="replace").lower())
                    if code is not None:
                        return table, code, table.codes[code]
        return None


def describe(table, code):
    """How the classifier names a code hit in ``pattern``: ``http 503``, ``errno ENOSPC``."""
    return f"{table.name} {code}"


