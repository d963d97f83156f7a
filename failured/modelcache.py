"""The trained fallback model kept on disk, so a process that loads the config does not train again.

Training on the shipped corpus costs a few CPU-seconds; every ``failured
run``, ``check-config`` or ``classify`` used to pay it. The cache key covers
everything the model depends on (this Python, the model's code, the corpus,
the category set and the labels), so a stale model is never used. Values are
stored with ``marshal`` (plain data, no code runs on load) in a directory only
its owner can write; any problem with the cache just means training again.
"""

import hashlib
import logging
import marshal
import os
import sys
import tempfile
from pathlib import Path

from . import corpus, model

log = logging.getLogger("failured.model")

CACHE_ENV = "FAILURE_MODEL_CACHE"  # a directory, or "off"
KEEP_FILES = 8  # older models (other label sets) are removed beyond this many


def cache_dir(environ=os.environ):
    """FAILURE_MODEL_CACHE, else systemd's CacheDirectory=, else the user's cache directory; None when off."""
    chosen = environ.get(CACHE_ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen)
    if environ.get("CACHE_DIRECTORY"):
        return Path(environ["CACHE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "failured"


def cache_key(category_names, labels):
    digest = hashlib.sha256(sys.version.encode())
    for module in ("model.py", "concepts.py", "classify.py", "corpus.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    shipped = corpus.PATH.read_bytes()
    digest.update(shipped)
    digest.update(repr(sorted(learned_categories(category_names, labels, shipped))).encode())
    digest.update(repr(tuple(labels)).encode())
    return digest.hexdigest()[:24]


def learned_categories(category_names, labels, shipped):
    """The categories of ``category_names`` the model learns: those with an example in the corpus (its bytes,
    ``shipped``) or among the labels. A custom category nothing exemplifies yet trains the same model as the
    configuration without it, so adding one to ``config/`` reuses the cached model instead of training again."""
    labelled = {category for category, *_ in labels}
    return {name for name in category_names if name in labelled or b"\n%s\t" % name.encode() in shipped}


def trained(category_names, labels, train):
    """The model for these categories and labels: from the cache, or ``train()`` and cached."""
    directory = cache_dir()
    if directory is None:
        log.info("training the classification model (FAILURE_MODEL_CACHE=off: every start trains; about 10 CPU-s)")
        return train()
    try:
        path = directory / f"model-{cache_key(category_names, labels)}.marshal"
        found = _load(path)
    except (OSError, ValueError, EOFError, TypeError):
        found, path = None, None
    if found is not None:
        return found
    # Said before the wait: a first `failured classify` would otherwise sit silent for seconds.
    log.info("training the classification model: none cached for this corpus and these labels in %s yet "
             "(about 10 CPU-s; cached, so later starts with the same labels load it)", directory)
    fitted = train()
    if fitted is not None and path is not None:
        _store(directory, path, fitted)
    return fitted


# The file this process loaded last, as (path, device, inode, size), and its model: a reload
# that changed only patterns or code tables shares the model instead of unpacking the file
# again (a tenth of a second). Not the modification time: every load touches it, in other
# processes too. A rewritten file is a new inode (written aside, then renamed over), and the
# key in its name covers everything the model depends on. One only, the one serving anyway.
_last = (None, None)


def _load(path):
    global _last
    if not path.exists():
        return None
    stamp, found = _last
    now = _stamp(path)
    if stamp != now:
        found = model.TextModel.from_packed_state(marshal.loads(path.read_bytes()))
    touch(path)
    _last = (now, found)
    return found


def _stamp(path):
    info = path.stat()
    return str(path), info.st_dev, info.st_ino, info.st_size


def touch(path):
    """Mark a cached file as just used: pruning keeps the most recently used, so a model
    (or compiled pattern database) in use is not evicted by a run of others written after it."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves


def _store(directory, path, fitted):
    try:
        write_cache_file(path, marshal.dumps(fitted.packed_state()), "model-*.marshal", KEEP_FILES)
    except (OSError, ValueError) as exc:
        log.debug("model cache %s not written: %s", directory, exc)


def write_cache_file(path, data, kind, keep):
    """Write ``data`` as ``path`` in a cache directory (created only its owner may enter), whole or not at
    all, then remove the least recently used files matching the glob ``kind`` beyond ``keep`` (see touch).
    Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".cache-", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)
    files = sorted(path.parent.glob(kind), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)
