"""Which of a ruleset's patterns matches a text first: Hyperscan finds candidates, RE2 decides.

RE2's ``Set`` builds its DFA lazily, and every new request id or host in a
message makes new states: on real traffic it ran at about 5,000 messages a
second. Hyperscan compiles the whole set ahead of time and scans at hundreds
of thousands a second, but compiling bounded repeats (``.{0,200}``) in UTF-8
takes seconds per pattern and some patterns are "too large". So Hyperscan runs
in *prefilter* mode on the patterns with their long bounded repeats loosened
to unbounded ones (a superset: it may report a pattern that does not match,
never miss one that does), and RE2 confirms each candidate in rank order: the
answer is exactly RE2's, and both engines are linear in the text.

The compiled database is cached on disk under a hash of the patterns and is
compiled in a background thread (Hyperscan releases the GIL), by a child process
for a large set (compiling.py: the compiler's memory is not the daemon's): until it is
ready, or where Hyperscan is not installed or refuses a pattern, RE2 serves
(the refused patterns are logged with file, category and reason). RE2's sets
hold the loosened patterns too, and each candidate is confirmed the same way:
a set of loosened patterns compiles in a third of the time (a reload serves
sooner) and the answer is still exactly RE2's.
"""

import hashlib
import json
import logging
import re
import threading
from pathlib import Path

import re2

from .modelcache import cache_dir as model_cache_dir, touch, write_cache_file
from .rules import re2_options

try:  # an optional speed-up: RE2 alone gives the same answers
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform's wheels
    hyperscan = None

log = logging.getLogger("failured.matcher")

KEEP_DATABASES = 16  # compiled databases of older rulesets are removed beyond this many (two a snapshot:
# its patterns and its code tables' gate)
RE2_SET_SIZE = 64  # patterns per RE2 set: compiling one holds the GIL for some 30 ms
# Sets of at least this many patterns are compiled in a child process (compiling.py): the shipped set takes
# about 2 s and leaves some 30 MB resident in the process that compiled it; a child's start (0.2 s) is not
# worth it for the few patterns of a small or test configuration.
COMPILE_APART_FROM = 64
HS_FLAGS = 0 if hyperscan is None else (hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_UTF8
                                        | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_PREFILTER)
LOOSEN_FROM = 10  # bounded repeats with an upper bound at least this large become unbounded for Hyperscan
_BOUNDED = re.compile(r"\\.|\[\^?\]?(?:\\.|\[:\w+:\]|[^\]\\])*\]|\{(\d+),(\d+)\}")
_UNANCHORED = re2._Anchor.UNANCHORED
# Texts Hyperscan may read differently from RE2: PCRE's \S and [^\s] exclude the vertical
# tab, RE2's include it; invalid UTF-8 is undefined for Hyperscan. RE2 alone reads these.
_RE2_ONLY_CHARS = "\x0b"


def loosen(pattern):
    """``pattern`` with its long bounded repeats unbounded: ``.{0,200}`` -> ``.{0,}`` (matches a superset)."""
    if "\\Q" in pattern:  # quoted literal text: leave it whole
        return pattern

    def replace(match):
        if match.group(2) is None or int(match.group(2)) < LOOSEN_FROM:
            return match.group()
        return "{%s,}" % match.group(1)
    return _BOUNDED.sub(replace, pattern)


def encode(text):
    """(UTF-8 bytes of ``text``, True); a lone surrogate (from a JSON ``\\ud800``) becomes "?" and False."""
    try:
        return text.encode("utf-8"), True
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace"), False


def _compile_one(text):
    one = re2._re2.Set(_UNANCHORED, re2_options())
    one.Add(text.encode("utf-8"))
    one.Compile()
    return one


class PatternSet:
    """Patterns with ranks; ``best(text)`` is the index of the lowest-ranked pattern found in ``text``.

    ``describe(i)`` names pattern ``i`` in a log line (file and category).
    ``engine``: None (Hyperscan when installed, else RE2) or "re2". ``cache_dir``: where compiled
    databases are kept (default: the model's cache directory; none when that is off).
    Thread-safe: built once, then only read (each thread scans with its own scratch).
    """

    def __init__(self, patterns, ranks, describe=str, engine=None, cache_dir=None, background=True):
        self.patterns = tuple(patterns)
        self._order = sorted(range(len(self.patterns)), key=lambda i: (ranks[i], i))
        self._rank = {i: position for position, i in enumerate(self._order)}
        self._describe = describe
        self._one = [None] * len(self.patterns)  # pattern index -> one-pattern RE2 set, made on first use
        self._set = None
        self._hs = None  # (database, scratch, indices RE2 alone checks), set once when ready
        self._local = threading.local()
        self._ready = threading.Event()
        self.engine = "re2"
        if not self.patterns or hyperscan is None or engine == "re2":
            self._ready.set()
            self._re2_set()
            return
        self._cache_dir = cache_dir
        self._key = self._cache_key()
        if not self._load_cached():
            self._re2_set()  # serves until the database is ready
            if background:
                threading.Thread(target=self._build, name="hyperscan-compile", daemon=True).start()
            else:
                self._build()

    def wait_ready(self, timeout=None):
        """Block until the fast engine serves (or it is known that RE2 alone will); True when so."""
        return self._ready.wait(timeout)

    def best(self, text):
        """Index of the lowest-ranked pattern that matches ``text``, or None."""
        if not self.patterns:
            return None
        data, clean = encode(text)
        found = self.candidates(text, data, clean)
        return self._confirmed(found, data) if found else None

    def candidates(self, text, data, clean=True):
        """Indices of the patterns that may match ``text`` (``data``: its UTF-8 bytes, ``clean``: as
        ``encode`` says): every one that matches, and maybe others (their loosened forms match)."""
        if not self.patterns:
            return []
        hs = self._hs
        if hs is None or not clean or _RE2_ONLY_CHARS in text:
            return self._re2_set().Match(data)
        database, scratch, always = hs
        found = list(always)
        local = getattr(self._local, "scratch", None)
        if local is None or local[0] is not database:
            local = self._local.scratch = (database, scratch.clone())
        database.scan(data, match_event_handler=_collect, context=found, scratch=local[1])
        return found

    def _confirmed(self, candidates, data):
        """The lowest-ranked of ``candidates`` (indices of loosened patterns found) that RE2 matches exactly."""
        for index in sorted(candidates, key=self._rank.__getitem__):
            one = self._one[index]
            if one is None:
                one = self._one[index] = _compile_one(self.patterns[index])
            if one.Match(data):
                return index
        return None

    def _re2_set(self):
        if self._set is None:
            self._set = _Re2Sets([loosen(text) for text in self.patterns], range(len(self.patterns)))
        return self._set

    # Hyperscan --------------------------------------------------------------

    def _cache_key(self):
        digest = hashlib.sha256(f"2 {hyperscan.__version__} {HS_FLAGS} {LOOSEN_FROM}".encode())
        for text in self.patterns:
            digest.update(text.encode("utf-8", "replace") + b"\0")
        return digest.hexdigest()[:24]

    def _cache_path(self):
        directory = self._cache_dir if self._cache_dir is not None else model_cache_dir()
        return None if directory is None else Path(directory) / f"patterns-{self._key}.hs"

    def _load_cached(self):
        try:
            path = self._cache_path()
            if path is None or not path.exists():
                return False
            blob = path.read_bytes()
            header, _, serialized = blob.partition(b"\n")
            refused = [(int(index), str(reason)) for index, reason in json.loads(header)]
            database = hyperscan.loadb(serialized, hyperscan.HS_MODE_BLOCK)
            self._serve(database, refused)
            touch(path)
            return True
        except (OSError, ValueError, TypeError, hyperscan.error) as exc:
            log.info("compiled pattern database not usable, compiling again: %s", exc)
            return False

    def _build(self):
        try:
            if len(self.patterns) >= COMPILE_APART_FROM:
                from .compiling import compile_apart  # the child imports this module
                database, refused = compile_apart(self.patterns)
            else:
                database, refused = compile_database(self.patterns)
            self._serve(database, refused)
            self._store(database, refused)
        except Exception:  # never let the fast path's failure stop RE2 from serving
            log.exception("Hyperscan could not compile the patterns: RE2 alone matches them")
        finally:
            self._ready.set()

    def _serve(self, database, refused):
        for index, reason in refused:
            log.warning("pattern %r (%s): %s; RE2 checks it on every message",
                        self.patterns[index], self._describe(index), reason)
        always = tuple(index for index, _ in refused)
        if database is None:
            database, scratch = _NoDatabase(), None
        else:
            scratch = hyperscan.Scratch(database)
        self._hs = (database, scratch if scratch is not None else _NoScratch(), always)
        self.engine = "hyperscan"
        self._ready.set()

    def _store(self, database, refused):
        path = self._cache_path()
        if path is None or isinstance(database, _NoDatabase) or database is None:
            return
        try:
            blob = json.dumps(refused).encode() + b"\n" + hyperscan.dumpb(database)
            write_cache_file(path, blob, "patterns-*.hs", KEEP_DATABASES)
        except OSError as exc:
            log.info("cannot cache the compiled pattern database in %s: %s", path.parent, exc)


def compile_database(patterns):
    """(Hyperscan database or None, [(index, reason)] of the patterns RE2 alone checks) of ``patterns``."""
    indices, refused = [], []
    for index, text in enumerate(patterns):
        if "\\p" in text or "\\P" in text:
            refused.append((index, "Hyperscan folds the case of Unicode classes (\\p{...}) unlike RE2"))
        else:
            indices.append(index)
    try:
        database = _database(patterns, indices) if indices else None
    except hyperscan.error:
        accepted = _compilable(patterns, indices, refused)
        database = _database(patterns, accepted) if accepted else None
    return database, sorted(refused)


def _compilable(patterns, indices, refused):
    """The patterns of ``indices`` Hyperscan compiles; the others go to ``refused``, named in the log.

    Halving finds a few refused patterns among thousands in a few dozen compiles.
    """
    try:
        _database(patterns, indices)
        return indices
    except hyperscan.error as exc:
        if len(indices) == 1:
            refused.append((indices[0], f"Hyperscan cannot compile it ({exc})"))
            return []
    middle = len(indices) // 2
    return _compilable(patterns, indices[:middle], refused) + _compilable(patterns, indices[middle:], refused)


def _database(patterns, indices):
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(expressions=[loosen(patterns[i]).encode("utf-8") for i in indices],
                     ids=list(indices), elements=len(indices), flags=[HS_FLAGS] * len(indices))
    return database


class PatternTooLarge(MemoryError):
    """One pattern alone exceeds RE2's memory budget (``index``: its position in the patterns)."""

    def __init__(self, index):
        super().__init__(f"RE2 ran out of memory compiling pattern {index}")
        self.index = index


class _Re2Sets:
    """RE2 sets over ``patterns``, ``RE2_SET_SIZE`` at most in each, halved again past RE2's memory budget.

    RE2 holds the GIL while it compiles a set: small sets keep other threads classifying.
    """

    def __init__(self, patterns, indices):
        self._parts = []
        indices = list(indices)
        for start in range(0, len(indices), RE2_SET_SIZE):
            self._add(patterns, indices[start:start + RE2_SET_SIZE])

    def _add(self, patterns, indices):
        compiled = re2._re2.Set(_UNANCHORED, re2_options())
        for index in indices:
            compiled.Add(patterns[index].encode("utf-8"))
        if compiled.Compile():
            self._parts.append((compiled, indices))
        elif len(indices) == 1:
            raise PatternTooLarge(indices[0])
        else:
            middle = len(indices) // 2
            self._add(patterns, indices[:middle])
            self._add(patterns, indices[middle:])

    def Match(self, data):  # noqa: N802 - RE2's name
        if len(self._parts) == 1:
            compiled, indices = self._parts[0]
            return [indices[i] for i in compiled.Match(data)]
        return [indices[i] for compiled, indices in self._parts for i in compiled.Match(data)]


def _collect(index, start, end, flags, found):
    found.append(index)


class _NoScratch:
    def clone(self):
        return None


class _NoDatabase:
    """Every pattern refused by Hyperscan: only the RE2-checked ones are candidates."""

    def scan(self, data, match_event_handler, context, scratch):
        return None
