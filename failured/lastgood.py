"""The last good configuration, kept so that a daemon restarted on a broken directory still runs.

Every snapshot the daemon loads from its config directory is also written, file for file, into
the cache directory (the model's: FAILURE_MODEL_CACHE, systemd's CacheDirectory=, else
~/.cache/failured), one file per config directory. A start whose directory does not validate
runs on that copy instead, and says so (log, admin alert, ``failured status``); the next good
edit replaces it as a reload would. With FAILURE_MODEL_CACHE=off there is no copy, and such a
start fails as it always did.
"""

import contextlib
import hashlib
import logging
import marshal
import tempfile
from pathlib import Path, PurePosixPath

from .config import digest_of
from .modelcache import cache_dir, write_cache_file
from .rules import read_config_bytes

log = logging.getLogger(__name__)
KEEP_FILES = 8  # copies of other config directories (tests, staging) beyond this many are removed


def _copy_path(config_dir, directory):
    key = hashlib.sha256(str(Path(config_dir).absolute()).encode()).hexdigest()[:16]
    return directory / f"last-good-config-{key}.marshal"


def save(snapshot, config_dir, now):
    """Keep ``snapshot``'s files as the last good copy of ``config_dir`` (nothing when a file changed since the
    snapshot read it: the reload that follows keeps that one)."""
    directory = cache_dir()
    if directory is None:
        return
    root = Path(config_dir)
    try:
        contents = [(path, read_config_bytes(path)) for path in snapshot.files]
        if digest_of(contents) != snapshot.digest:
            return
        files = {Path(path).relative_to(root).as_posix(): data for path, data in contents}
        copy = {"config_dir": str(root.absolute()), "saved_at": now, "files": files}
        write_cache_file(_copy_path(root, directory), marshal.dumps(copy), "last-good-config-*.marshal", KEEP_FILES)
    except (OSError, ValueError) as exc:  # a read-only cache, a file gone: the copy is a spare, not a duty
        log.warning("config %s: last good copy not kept: %s", config_dir, exc)


@contextlib.contextmanager
def restored(config_dir, directory=None):
    """Yields (a temporary directory holding the last good copy of ``config_dir``, when it was saved), or None
    when there is no copy; the directory is removed afterwards. ``directory``: the cache to look in (default this
    process's)."""
    directory = Path(directory) if directory else cache_dir()
    copy = _read(_copy_path(config_dir, directory)) if directory is not None else None
    if copy is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="failured-last-good-") as temporary:
        for name, data in copy["files"].items():
            target = Path(temporary, *PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        yield Path(temporary), copy["saved_at"]


def holds(config_dir, name, directory=None):
    """Whether the last good copy of ``config_dir`` has a file ``name`` (relative, as ``failured.toml``)."""
    directory = Path(directory) if directory else cache_dir()
    copy = _read(_copy_path(config_dir, directory)) if directory is not None else None
    return copy is not None and name in copy["files"]


def _read(path):
    try:
        copy = marshal.loads(path.read_bytes())
        names = copy["files"]
        if all(_plain_name(name) and isinstance(data, bytes) for name, data in names.items()):
            return copy
        log.warning("last good config copy %s names a file outside its directory: ignored", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, EOFError, TypeError, KeyError) as exc:
        log.warning("last good config copy %s unreadable: %s", path, exc)
    return None


def _plain_name(name):
    parts = PurePosixPath(name).parts
    return isinstance(name, str) and bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts
