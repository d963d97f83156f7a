"""Why did a task fail? Tag, early code tables, exception type, patterns, code tables, then the model.

After the tag, every stage reads the message past its log line's head (loghead.py): a failure copied
from a log is read from where its error begins.

Within each rule stage the category with the lowest priority number (or the
lowest-numbered code table) wins; a last rule stage runs the patterns over the
message with its identifiers spelled out as words. When every rule stage says
nothing, the model may answer, but only above its confidence threshold and
while it gives ``unknown`` little chance; otherwise the task is ``unknown``.
Matching is linear in the message length whatever the patterns are (Hyperscan
finds candidates, RE2 decides: see ``matcher``): no operator-written pattern
can make the daemon hang.
"""

import functools
import json
import re
from dataclasses import dataclass


from . import corpus, model as learner
from .codes import CodeMatcher, describe as describe_code
from .errors import ConfigError, ConfigErrors
from .fingerprint import fingerprint
from .loghead import without_log_head
from .matcher import PatternSet, PatternTooLarge
from .rules import UNKNOWN
from .speedups import compiled
from .text import clean_text, quoted
from .wrapper import wrapped_error

# Compiled (failured/_speedups.c): model.spell_identifiers, python_without_frames, python_exception_type_in and
# python_opaque_folded; each on its own, so that an extension built before one was added keeps the others.
_compiled_exception_type_in, _compiled_opaque_folded, _compiled_spell_identifiers, _compiled_without_frames = (
    compiled("exception_type_in", "opaque_pass", "spell_identifiers", "without_frames"))

_TAG = re.compile(r"^\s*\[([^\W\d][\w-]*)\]\s*")
# "pkg.mod.SomeError: message" — the last dotted part must look like a class name.
# "pkg.mod.SomeError: message", also Ruby "Mod::Error:" and PHP "Ns\\Error:".
# Possessive runs and a bounded head keep this linear: "[A-Z]\w*[a-z]\w*" backtracked
# for 198 s on one 64 KiB word. The "has a lower-case letter" test is done in Python.
_TYPE_PREFIX = re.compile(r"^\s*+((?:[A-Za-z_]\w*+(?:\.|::|\\))*+[A-Z]\w*+)\s*+:(?:\s|$)")
_LOWER = re.compile(r"[a-z]")
MAX_TYPE_HEAD = 300  # no exception class name is longer than this
_NAME_PARTS = re.compile(r"\.|::|\\")
# Stack frames name files, functions and source lines: words like "json" or "timeout"
# there are noise, not the cause. Python "File ..." frames (and their source line),
# Java/Node "at ..." frames, Go "file.go:12" lines and goroutine headers.
_FRAME = re.compile(r'^\s+File "|^\s+at \S|^\s*\.\.\. \d+ more|^goroutine \d+ \[|\.go:\d+|^Traceback \(most recent')
_TRACEBACK = "Traceback (most recent call last)"
# An opaque token: base64, a JWT's parts, a key or a signature, a UUID; 24 characters or more, three digits or more.
# Read as n-grams, a few hundred bytes of one outweighed every word around it (random strings resemble the keys and
# signatures of configuration errors: "Connection reset by peer" with a response body attached read as a
# configuration error at 0.99, over the rule). The model reads it as one "0x", as it reads a hex id.
# A whole run of the characters, its digits counted ahead: ``re.sub`` with no Python call per token. The
# look-behind starts no try inside a run (each would read the rest of the run again); only ASCII digits count
# (``\d`` takes any script's).
_OPAQUE = re.compile(r"(?<![A-Za-z0-9+/=_-])(?=(?:[A-Za-z+/=_-]*+[0-9]){3})[A-Za-z0-9+/=_-]{24,}")
CACHE_SIZE = 4096
CACHE_MAX_CHARS = 2048  # 4096 entries of at most 2 KiB: the cache never passes ~16 MB
# Rule stages after the tag, in order. Patterns come before code tables: a pattern
# is written for a wording and is more specific than the code the same message
# carries (measured with bench/generalize.py; see the README). "spelled" runs the
# patterns once more over the message with its identifiers spelled out as words
# ("ACCESS_TOO_FREQUENT", "TooManyConnectionsError"): only when nothing else decided.
# "early_code" looks up the tables marked ``early = true`` (vendors' own codes, which
# say exactly what failed, and decisive phrases) first, before the exception type;
# "code" looks up the other tables after the patterns.
RULE_STAGES = ("early_code", "exception_type", "pattern", "code", "spelled")
# The model's own thresholds (learner.DEFAULT_MIN_CONFIDENCE, and ``max_unknown``: it
# defers when it gives "unknown" more than that) are tuned with it; see failured/model.py.
MIN_CONFIDENCE = learner.DEFAULT_MIN_CONFIDENCE
OVERRULE_NEVER = 1.0  # a Classifier's default: the rules have the last word (the daemon passes [model]'s setting)
SPELL_MAX_CHARS = 4000  # identifiers that say what failed sit near the start
# The error inside a program's words (wrapper.py) is read where nothing decided the whole message and the model
# gives unknown less than this: a programming error's own "…failed: …" stays unknown. Measured with
# bench/generalize.py (the README): 0.3 read too few wrapped messages, 0.7 cost unknown's recall.
WRAPPED_MAX_UNKNOWN = 0.5
WRAPPERS_READ = 2  # "Handling X failed: 2 handlers failed. First failure is: <error>"
_spell_identifiers = _compiled_spell_identifiers or learner.spell_identifiers


@dataclass(frozen=True)
class Classification:
    category: str
    label: str
    action: str
    matched_by: str  # tag | exception_type | pattern | code | model | none
    pattern: str | None  # the tag, exception type, pattern or "table code" that matched; for model, "confidence 0.93"
    fingerprint: str
    template: str
    error_type: str | None
    message: str
    suggestion: str
    confidence: float | None = None  # the model's probability when matched_by is "model"

    def to_dict(self):
        return dict(self.__dict__)  # flat fields only: asdict's deep copy cost more than classifying

    @classmethod
    def of(cls, **fields):
        """``Classification(**fields)`` (every field named) without the frozen ``__init__``'s
        ``object.__setattr__`` per field: the same object, built in half the time."""
        made = object.__new__(cls)
        made.__dict__.update(fields)
        return made


def unpack(message, error_type=None):
    """The seed's structured errors: a JSON object with error_type / error_message, or plain text."""
    text = message.strip()
    start = text.find("{")
    if 0 <= start <= 80 and text.endswith("}"):
        try:
            data = json.loads(text[start:])
        except (ValueError, RecursionError):  # a hostile reporter can nest JSON 20,000 deep
            data = None
        if isinstance(data, dict) and isinstance(data.get("error_message"), str):
            embedded_type = data.get("error_type")
            if isinstance(embedded_type, str) and embedded_type.strip():
                error_type = error_type or embedded_type.strip()
            return data["error_message"], error_type
    return message, error_type


def python_without_frames(message):
    """The message minus stack-frame lines (and each Python frame's source line).

    ``without_frames`` is this function compiled where failured/_speedups.c is built
    (tests/test_classify.py compares the two).
    """
    kept, skip_source = [], False
    for line in message.splitlines():
        if skip_source and line.startswith("    "):
            skip_source = False
            continue
        skip_source = line.lstrip().startswith('File "')
        if not _FRAME.search(line):
            kept.append(line)
    return "\n".join(kept)


without_frames = _compiled_without_frames or python_without_frames


def python_exception_type_in(message):
    """The exception class named at the start of the message, or on a traceback's last line.

    ``exception_type_in`` is this function compiled where failured/_speedups.c is built
    (tests/test_classify.py compares the two).
    """
    text = message
    if _TRACEBACK in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    match = _TYPE_PREFIX.match(text[:MAX_TYPE_HEAD])
    if match is None:
        return None
    name = match.group(1)
    return name if _LOWER.search(_NAME_PARTS.split(name)[-1], 1) else None


exception_type_in = _compiled_exception_type_in or python_exception_type_in


def model_text(message, error_type=None):
    """What the learned model reads: the unpacked message without its stack frames and opaque tokens, after
    its type.

    The model trains on the corpus's messages as they were written, log heads and all; ``classify`` gives it
    a message past its log head (loghead.py). Trained on messages past their heads, it lost 0.6 points of
    set 19 over four visiting orders (sets 16-18 unchanged): a head's words, spread over every category,
    teach it what not to weigh."""
    message, error_type = unpack(message or "", error_type)
    error_type = error_type or exception_type_in(message)
    core = opaque_folded(core_of(message))
    return f"{error_type}: {core}" if error_type else core


def core_of(message):
    """``message`` without its stack frames: what the rules and the model read."""
    return without_frames(message) if "\n" in message else message


def error_summary(message):
    """The error as one reads it first: a Python traceback's raised exception (its last block, frames dropped)
    rather than its first frames, which is all a one-line cut of the whole text would show."""
    at = message.rfind(_TRACEBACK)
    if at < 0:
        return message
    return core_of(message[at:]).strip() or message


def read_model_text(message, core, error_type):
    """``model_text(message, error_type)`` for a message already unpacked and past its log head, its type already
    read (``error_type or exception_type_in(message)``) and its frames already dropped (``core``): none of it done
    again.

    A message that unpacks once more (a JSON error inside the JSON error's message) goes the whole way
    (tests/test_classify.py compares the two).
    """
    if unpack(message, error_type)[0] is not message:
        return model_text(message, error_type)
    core = opaque_folded(core)
    return f"{error_type}: {core}" if error_type else core


def python_opaque_folded(text):
    """``text`` with each opaque token (``_OPAQUE``) made " 0x ".

    ``opaque_folded`` is this function compiled where failured/_speedups.c is built
    (tests/test_classify.py compares the two).
    """
    return _OPAQUE.sub(" 0x ", text)


opaque_folded = _compiled_opaque_folded or python_opaque_folded


@functools.lru_cache(maxsize=2)  # the model serving and the one a reload builds: a daemon's old label sets go
def learned_fallback(category_names, labels=()):
    """The model trained on the shipped corpus plus ``labels`` for these categories (cached per process).

    ``category_names``: a frozenset of the ruleset's categories; examples of other
    categories are left out (a ruleset without them cannot answer them).
    ``labels``: a tuple of ``(category, error_type or None, message)``, the operators'
    own corrections, which weigh like any corpus example.
    """
    allowed = set(category_names) | {UNKNOWN}
    labelled = [(c, model_text(m, e)) for c, e, m in labels if c in allowed]
    trained = learner.train(_corpus_examples(allowed) + labelled, keep=[text for _, text in labelled])
    learner.return_freed_memory()  # training's working memory is freed by now
    return trained


def _corpus_examples(allowed):
    return [(c, model_text(m, e)) for c, e, _, m in corpus.read_corpus() if c in allowed]


class Classifier:
    """A compiled ruleset: build once per configuration snapshot, share between threads.

    ``engine="re2"`` matches the patterns without Hyperscan (same answers, slower on new traffic).
    """

    def __init__(self, ruleset, lang="zh", code_tables=(), model=None, min_confidence=MIN_CONFIDENCE,
                 stages=RULE_STAGES, engine=None, overrule_confidence=OVERRULE_NEVER):
        self.ruleset = ruleset
        self.lang = lang
        self.codes = CodeMatcher(code_tables, engine=engine)
        self.model = model
        self.min_confidence = min_confidence
        self.overrule_confidence = overrule_confidence
        self.stages = stages
        self._by_tag = {}
        self._by_type = {}  # last dotted part, lower-case -> [(priority, full name or None, category)]
        self._pattern_owner = []  # pattern index -> (priority, pattern text, category, file)
        self._firm_patterns = set()  # texts of patterns the model never overrules (their tables say firm = true)
        for category in ruleset.categories:
            self._index(category)
        try:
            self.patterns = PatternSet([owner[1] for owner in self._pattern_owner],
                                       [owner[0] for owner in self._pattern_owner],
                                       describe=self._describe_pattern, engine=engine)
        except PatternTooLarge as exc:
            _, text, category, path = self._pattern_owner[exc.index]
            raise ConfigErrors([ConfigError(path, f"category {category.name!r}",
                                            f"pattern {quoted(text)} is too large for RE2's memory budget: "
                                            "simplify it (smaller repetition counts, fewer alternatives)")]) from None
        # The API classifies a failure for its answer and the engine again a moment later,
        # and error storms repeat messages: a small cache halves the work. Results are frozen.
        self._cached = functools.lru_cache(maxsize=CACHE_SIZE)(self.classify_uncached)

    def classify(self, message, error_type=None, task_type=None):
        """Classify one error (cached for messages short enough that the cache stays small)."""
        if message is not None and len(message) > CACHE_MAX_CHARS:
            return self.classify_uncached(message, error_type, task_type)
        return self._cached(message, error_type, task_type)

    def _index(self, category):
        for tag in category.tags:
            self._by_tag.setdefault(tag.upper(), category)
        for name in category.exception_types:
            last = _NAME_PARTS.split(name)[-1].lower()
            full = name.lower() if last != name.lower() else None
            self._by_type.setdefault(last, []).append((category.priority, full, category))
        for pattern in category.patterns:
            self._pattern_owner.append((category.priority, pattern.text, category, pattern.file))
            if pattern.firm:
                self._firm_patterns.add(pattern.text)

    def _describe_pattern(self, index):
        _, _, category, path = self._pattern_owner[index]
        return f'{path}, category "{category.name}"'

    def classify_uncached(self, message, error_type=None, task_type=None):
        """Classify one error; ``task_type`` is accepted for symmetry and future per-type rules."""
        try:
            return self._classify_text(message, error_type)
        except UnicodeEncodeError:  # a lone surrogate (a command line's undecodable bytes): read as the store would hold it
            return self._classify_text(clean_text(message or ""), clean_text(error_type) if error_type else error_type)

    def _classify_text(self, message, error_type):
        message, error_type = unpack(message or "", error_type)
        found, confidence, error_type = self._decided(message, error_type, WRAPPERS_READ)
        category, stage, matched = found or (self.ruleset.unknown, "none", None)
        matched_by = "code" if stage == "early_code" else stage
        template, digest = fingerprint(message)
        return Classification.of(
            category=category.name, label=category.label_in(self.lang), action=category.action,
            matched_by=matched_by, pattern=matched, fingerprint=digest, template=template,
            error_type=error_type, message=message, suggestion=category.suggestion_in(self.lang),
            confidence=confidence,
        )

    def _decided(self, message, given_type, wrappers):
        """(found, the model's confidence or None, the error type read) for an unpacked message; ``found`` is
        None where nothing decides. Where nothing decides, the model gives ``unknown`` little chance and the
        message opens with a program's own words around a caught error (``wrapper.py``), the error inside them
        is read the same way, up to ``wrappers`` deep."""
        found = self._by_tag_stage(message)
        if found is not None:
            return found, None, given_type
        text = without_log_head(message)  # what the rules and the model read: a log line's error, not its head
        error_type = given_type or exception_type_in(text)
        core = core_of(text)  # once: a traceback costs
        found = self._rules_on(text, core, error_type)
        if found is not None:
            if self.overrule_confidence < 1:
                return (*self._overruled(found, text, core, error_type), error_type)
            return found, None, error_type
        found, confidence, unknown = self._by_model(text, core, error_type)
        if found is None and wrappers and unknown < WRAPPED_MAX_UNKNOWN and exception_type_in(text) is None:
            inner = wrapped_error(text)
            if inner is not None:
                inner, inner_type = unpack(inner, given_type)
                found, confidence, _ = self._decided(inner, inner_type, wrappers - 1)
        return found, confidence, error_type

    def rules_only(self, message, error_type):
        """The first rule stage (after the tag) that decides, as (category, matched_by, what), or None, for a
        message already unpacked and past its log head."""
        return self._rules_on(message, core_of(message), error_type)

    def _rules_on(self, message, core, error_type):
        """``rules_only`` given the message's ``core`` (without its stack frames)."""
        typed = f"{error_type}: {core}" if error_type else core  # what the code tables and the patterns read
        for stage in self.stages:
            if stage == "exception_type":
                found = self._by_type_stage(error_type)
            elif stage == "pattern":
                found = self._patterns_of(message, core, typed, error_type)
            elif stage == "spelled":
                found = self._spelled_patterns_of(typed)
            elif stage == "early_code":
                found = self._by_code_stage(typed, early=True, stage=stage)
            else:
                found = self._by_code_stage(typed, early=False if "early_code" in self.stages else None)
            if found is not None:
                return found
        return None

    def _by_code_stage(self, typed, early=None, stage="code"):
        hit = self.codes.match(typed, early)
        if hit is None:
            return None
        table, code, name = hit
        category = self.ruleset.category(name)
        return (category, stage, describe_code(table, code)) if category is not None else None

    def _by_model(self, message, core, error_type):
        """(the model's answer, its confidence, the probability it gives unknown) when it is confident enough,
        else (None, None, that probability): the task stays unknown. Without a model, unknown's probability is 1."""
        if self.model is None:
            return None, None, 1.0
        prediction = self.model.predict(read_model_text(message, core, error_type))
        category, confidence = self._acting(prediction, self.min_confidence)
        if category is None:
            return None, None, prediction.unknown
        return (category, "model", f"confidence {confidence:.2f}"), confidence, prediction.unknown

    def _overruled(self, found, message, core, error_type):
        """The model's answer instead of the rule's ``found`` when it disagrees at ``overrule_confidence`` or
        more: on messages from sources never seen, a rule written for other wording is wrong more often than
        a model that sure (the README's held-out figures). Else (found, None). A tag is never overruled, nor an
        early code (a decisive phrase or code means the same whatever wording surrounds it), nor a
        rule of a category the model has no examples of, nor a pattern whose table says ``firm = true`` (one that
        states a labelling decision, or an operator's that the console's workbench saved after showing what it
        matches). A model that sure of ``unknown`` overrules too: a programming error (a NullPointerException, a
        ClassCastException) whose trace holds a phrase some rule knows goes to the admins, not into retries."""
        if self.model is None or self.firm(found) or found[0].name not in self.model.classes:
            return found, None  # a category the model never learned (an operator's own) is not second-guessed
        category, confidence = self._model_says(message, core, error_type, self.overrule_confidence, to_unknown=True)
        if category is None or category is found[0]:
            return found, None
        _, stage, what = found
        return (category, "model", f"confidence {confidence:.2f}, over {stage} {quoted(what)}"), confidence

    def firm(self, found):
        """Whether the model may never overrule ``found`` (a rule stage's answer): an early code, or a pattern
        whose table says ``firm = true``."""
        return found[1] == "early_code" or (found[1] == "pattern" and found[2] in self._firm_patterns)

    def _model_says(self, message, core, error_type, at_least, to_unknown=False):
        """(category, rounded confidence) when the model names a category other than unknown with at least
        ``at_least`` and gives unknown no real chance (its ``max_unknown``), or, ``to_unknown``, names unknown
        itself with at least ``at_least``; else (None, None)."""
        if self.model is None:
            return None, None
        return self._acting(self.model.predict(read_model_text(message, core, error_type)), at_least, to_unknown)

    def _acting(self, prediction, at_least, to_unknown=False):
        """``_model_says`` of the model's ``prediction``."""
        category = self.ruleset.category(prediction.category)
        if category is None or prediction.confidence < at_least:
            return None, None
        if category is self.ruleset.unknown:
            return (category, round(prediction.confidence, 3)) if to_unknown else (None, None)
        if prediction.unknown > self.model.max_unknown:
            return None, None
        return category, round(prediction.confidence, 3)

    def _by_tag_stage(self, message):
        match = _TAG.match(message)
        if match:
            category = self._by_tag.get(match.group(1).upper())
            if category is not None:
                return category, "tag", match.group(1).upper()
        return None

    def _by_type_stage(self, error_type):
        if not error_type:
            return None
        given = error_type.strip().lower()
        last = _NAME_PARTS.split(given)[-1]
        if "::" in given or "\\" in given:
            # Ruby/PHP namespaces reuse short names (Mysql2::Error::ConnectionError is a
            # database error): only a listed full name decides, else the patterns do.
            candidates = [(p, c) for p, full, c in self._by_type.get(last, ()) if full == given]
        else:
            candidates = [(p, c) for p, full, c in self._by_type.get(last, ())
                          if full is None or full == given or given == last]
        if not candidates:
            return None
        priority, category = min(candidates, key=lambda pair: pair[0])
        return category, "exception_type", error_type.strip()

    def _patterns_of(self, message, core, typed, error_type):
        """Patterns on ``typed`` (the type, then ``core``: the message without its stack frames); on the whole
        text if that finds nothing."""
        found = self._by_pattern_stage(typed)
        if found is None and core != message:
            found = self._by_pattern_stage(f"{error_type}: {message}" if error_type else message)
        return found

    def _spelled_patterns_of(self, typed):
        """Patterns over ``typed`` (type, then core) with CamelCase/snake_case identifiers spelled out as words."""
        text = typed[:SPELL_MAX_CHARS]
        spelled = _spell_identifiers(text)
        return self._by_pattern_stage(spelled) if spelled != text else None

    def _by_pattern_stage(self, text):
        index = self.patterns.best(text)
        if index is None:
            return None
        _, pattern, category, _ = self._pattern_owner[index]
        return category, "pattern", pattern
